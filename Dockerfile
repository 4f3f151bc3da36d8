# syntax=docker/dockerfile:1
# Build: the project installs its own toolchain parts (rust-src, bpf-linker).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup component add rust-src \
 && cargo xtask setup \
 && cargo build --release --package palisade-agent --bin palisade

# Run: a small Debian with nothing but the agent.
FROM debian:bookworm-slim
COPY --from=build /src/target/release/palisade /usr/local/bin/palisade
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["agent"]
