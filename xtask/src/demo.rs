//! `cargo xtask demo`: a three-tier application on network namespaces,
//! first open, then under least-privilege policies, with the reachability
//! matrices and the denied flows as the agent logs them.

use std::process::Command;

use crate::{
    exec::{build_binaries, root, status},
    setup,
};

#[derive(clap::Args, Default)]
pub(crate) struct Options {}

pub(crate) fn run(_: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options::default())?;
    let bin = build_binaries(false)?;
    let (agent, harness) = (bin.join("palisade"), bin.join("palisade-scenario"));
    println!(
        "\nPalisade demo: web -> back -> db, a DNS server and two hosts outside the cluster\n\
         (the internet at 203.0.113.10 and the cloud metadata service at 169.254.169.254),\n\
         each pod in its own network namespace, the real agent enforcing with eBPF on the\n\
         pods' veths. Every cell is a real TCP connection attempt.\n"
    );
    let st = status(
        Command::new(harness)
            .arg("--agent")
            .arg(agent)
            .arg("--show")
            .arg(root().join("tests/demo/three-tier.yaml"))
            .current_dir(root()),
    )?;
    std::process::exit(st.code().unwrap_or(1));
}
