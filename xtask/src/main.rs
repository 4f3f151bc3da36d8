//! Project automation that cargo alone cannot do: `cargo xtask <command>`.

mod bench;
mod demo;
mod exec;
mod kind;
mod scenario;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and the tests need (idempotent).
    Setup(setup::Options),
    /// Setup, then every check and test; ends with `N passed, M failed`.
    Test(test::Options),
    /// Run scenario files end to end on network namespaces.
    Scenario(scenario::Options),
    /// Show Palisade at work on a three-tier application.
    Demo(demo::Options),
    /// Benchmarks: datapath cost against bare veth and nftables, engine scale.
    Bench(bench::Options),
    /// A local kind cluster with Palisade (needs Docker, kind, kubectl).
    Kind(kind::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(o) => setup::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Scenario(o) => scenario::run(&o),
        Command::Demo(o) => demo::run(&o),
        Command::Kind(o) => kind::run(&o),
        Command::Bench(o) => bench::run(&o),
    }
}
