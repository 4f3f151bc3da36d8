//! `cargo xtask kind up|load|deploy|down`: Palisade on a local kind cluster
//! (needs Docker, kind and kubectl on the machine; these CI machines have
//! none, so this path is for laptops).

use std::process::Command;

use anyhow::bail;

use crate::exec::{exec, root};

/// kindnetd releases from 2024 on enforce NetworkPolicy themselves
/// (kube-network-policies, fail-open); this one only routes.
const KINDNETD_NO_POLICY: &str = "docker.io/kindest/kindnetd:v20230809-80a64d96";
const CLUSTER: &str = "palisade";
const IMAGE: &str = "palisade:dev";

#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Create the cluster and neutralise kindnet's own policy enforcement.
    Up,
    /// Build the image and load it into the cluster's nodes.
    Load,
    /// Apply deploy/base and wait for the DaemonSet.
    Deploy,
    /// Delete the cluster.
    Down,
}

fn need(tool: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!("{tool} is not installed; the kind path needs docker, kind and kubectl");
    }
    Ok(())
}

fn kubectl() -> Command {
    let mut c = Command::new("kubectl");
    c.args(["--context", &format!("kind-{CLUSTER}")]);
    c
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    match o.action {
        Action::Up => {
            need("kind")?;
            need("kubectl")?;
            exec(
                Command::new("kind")
                    .args(["create", "cluster", "--name", CLUSTER, "--config"])
                    .arg(root().join("deploy/kind/cluster.yaml")),
            )?;
            exec(kubectl().args([
                "-n",
                "kube-system",
                "set",
                "image",
                "daemonset/kindnet",
                &format!("kindnet-cni={KINDNETD_NO_POLICY}"),
            ]))?;
            exec(kubectl().args([
                "-n",
                "kube-system",
                "rollout",
                "status",
                "daemonset/kindnet",
                "--timeout=180s",
            ]))
        }
        Action::Load => {
            need("docker")?;
            need("kind")?;
            exec(
                Command::new("docker")
                    .args(["build", "-t", IMAGE])
                    .arg(root()),
            )?;
            exec(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", CLUSTER]))
        }
        Action::Deploy => {
            need("kubectl")?;
            exec(
                kubectl()
                    .arg("apply")
                    .arg("-k")
                    .arg(root().join("deploy/base")),
            )?;
            exec(kubectl().args([
                "-n",
                "palisade-system",
                "rollout",
                "status",
                "daemonset/palisade",
                "--timeout=180s",
            ]))
        }
        Action::Down => {
            need("kind")?;
            exec(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]))
        }
    }
}
