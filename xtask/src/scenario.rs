//! `cargo xtask scenario FILE...`: builds the agent and the harness, then
//! runs the scenario files (shared/scenarios/FORMAT.md) end to end.

use std::{path::PathBuf, process::Command};

use crate::exec::{build_binaries, status};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Scenario files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print every matrix and the denied flows.
    #[arg(long)]
    pub show: bool,
    /// Run on this many nodes (pods that name no node are spread over them).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Probe every pod through a Service of its own.
    #[arg(long)]
    pub via_service: bool,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let bin = build_binaries(false)?;
    let (agent, harness) = (bin.join("palisade"), bin.join("palisade-scenario"));
    let mut cmd = Command::new(harness);
    cmd.arg("--agent").arg(agent);
    if o.show {
        cmd.arg("--show");
    }
    if let Some(n) = o.nodes {
        cmd.arg("--nodes").arg(n.to_string());
    }
    if o.via_service {
        cmd.arg("--via-service");
    }
    cmd.args(&o.files);
    let st = status(&mut cmd)?;
    std::process::exit(st.code().unwrap_or(1));
}
