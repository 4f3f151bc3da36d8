//! `cargo xtask bench [--quick] [--only SECTION [--update]]`: release builds, then `palisade-bench`,
//! which writes BENCHMARKS.md and bench.json at the workspace root.

use std::process::Command;

use crate::{
    exec::{build_binaries, exec, root},
    setup,
};

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// Under 5 minutes: shorter transfers, fewer repetitions.
    #[arg(long)]
    pub quick: bool,
    /// Run one section and print it, without writing the reports.
    #[arg(long, value_parser = ["engine", "enforce", "program", "datapath", "service"])]
    pub only: Option<String>,
    /// With `--only`: put the section into the last full run's reports.
    #[arg(long, requires = "only")]
    pub update: bool,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options::default())?;
    let dir = build_binaries(true)?;
    let mut cmd = Command::new(dir.join("palisade-bench"));
    cmd.env("PALISADE_AGENT", dir.join("palisade"))
        .arg("--out")
        .arg(root())
        .current_dir(root());
    if o.quick {
        cmd.arg("--quick");
    }
    if let Some(section) = &o.only {
        cmd.args(["--only", section]);
    }
    if o.update {
        cmd.arg("--update");
    }
    exec(&mut cmd)
}
