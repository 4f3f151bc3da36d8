# syntax=docker/dockerfile:1
# Build: the project installs its own toolchain parts (rust-src, bpf-linker).
# Layers from the slowest-changing down, so an edit of the agent's source
# rebuilds only the last one:
#   1. rust-src and bpf-linker (`cargo xtask setup --toolchain-only`), keyed
#      by xtask's source and the lockfile;
#   2. every dependency, compiled against stub crates of the workspace;
#   3. the agent itself, stripped.
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# The workspace's manifests, with empty targets where sources will go.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY agent/Cargo.toml agent/
COPY common/Cargo.toml common/
COPY tests/Cargo.toml tests/
COPY ebpf/Cargo.toml ebpf/Cargo.lock ebpf/rust-toolchain.toml ebpf/
RUN for f in agent/src/lib.rs agent/src/main.rs common/src/lib.rs tests/src/lib.rs \
             tests/src/bin/palisade-scenario.rs tests/src/bin/palisade-bench.rs \
             ebpf/src/lib.rs ebpf/src/main.rs; do \
      mkdir -p "$(dirname "$f")" && echo 'fn main() {}' > "$f"; \
    done

# 1. Toolchain parts.
COPY xtask xtask
RUN cargo xtask setup --toolchain-only

# 2. Dependencies (the stub agent has no build script, so no eBPF yet).
RUN cargo build --locked --release --package palisade-agent --bin palisade \
 && rm -rf target/release/.fingerprint/palisade-* target/release/deps/palisade*

# 3. The real sources; touched so that cargo never takes a stub's build for them.
COPY agent agent
COPY common common
COPY ebpf ebpf
COPY tests tests
RUN find agent common ebpf tests -name '*.rs' -exec touch {} + \
 && cargo build --locked --release --package palisade-agent --bin palisade \
 && strip target/release/palisade

# Run: a small Debian with nothing but the agent (its sh and mount serve the
# bpffs init container).
FROM debian:bookworm-slim
COPY --from=build /src/target/release/palisade /usr/local/bin/palisade
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["agent"]
