//! `cargo xtask kind up|load|deploy|e2e|down`: Palisade on a local kind
//! cluster (needs Docker, kind and kubectl on the machine; these CI
//! machines have none, so this path is for laptops).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    exec::{cargo, exec, output, root, status},
    test::scenario_files,
};

/// kindnetd releases from 2024 on enforce NetworkPolicy themselves
/// (kube-network-policies, fail-open); this one only routes.
const KINDNETD_NO_POLICY: &str = "docker.io/kindest/kindnetd:v20230809-80a64d96";
const CLUSTER: &str = "palisade";
/// The image name in deploy/ (its tag is set per load, below).
const IMAGE: &str = "palisade";

/// A tag of its own for every `kind load`: with `IfNotPresent` a reused tag
/// would keep the image the nodes already have.
fn new_tag() -> anyhow::Result<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let rev =
        output(
            Command::new("git")
                .args(["-C"])
                .arg(root())
                .args(["rev-parse", "--short", "HEAD"]),
        )
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "nogit".into());
    Ok(format!("dev-{rev}-{secs}"))
}

/// Where `kind load` leaves the tag it loaded and `kind deploy` an overlay
/// of deploy/ that uses it.
fn kind_dir() -> PathBuf {
    root().join("target/kind")
}

/// The overlay `kind deploy` applies: deploy/ with the loaded tag.
fn overlay(tag: &str) -> String {
    format!(
        "# Written by cargo xtask kind deploy.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources: [../../deploy]\n\
         images:\n  - name: {IMAGE}\n    newTag: \"{tag}\"\n"
    )
}

#[derive(clap::Args)]
pub(crate) struct Options {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub(crate) enum Action {
    /// Create the cluster and neutralise kindnet's own policy enforcement.
    Up,
    /// Build the image under a new tag and load it into the cluster's nodes.
    Load,
    /// Apply deploy/ with the image `load` tagged, and wait for the DaemonSet.
    Deploy,
    /// Run the scenario files against the cluster (objects through the API
    /// server, probes with kubectl exec); with --netpol-suite, the upstream
    /// [sig-network] Netpol e2e tests as well.
    E2e(E2eOptions),
    /// Delete the cluster.
    Down,
}

#[derive(clap::Args)]
pub(crate) struct E2eOptions {
    /// Scenario files (default: the shared seeds and tests/scenarios).
    pub files: Vec<PathBuf>,
    /// Also run the upstream [sig-network] Netpol tests (e2e.test).
    #[arg(long)]
    pub netpol_suite: bool,
    /// The e2e.test binary to use (default: downloaded for the cluster's
    /// Kubernetes version into target/e2e/).
    #[arg(long)]
    pub e2e_test: Option<PathBuf>,
    /// Include the SCTP connectivity tests (the nodes need the sctp module).
    #[arg(long)]
    pub sctp: bool,
    /// Also run the ClusterNetworkPolicy conformance suite of
    /// kubernetes-sigs/network-policy-api (core and extended), from a clone
    /// of `--cnp-ref` in target/e2e/ (needs git, go and the internet).
    #[arg(long)]
    pub cnp_suite: bool,
    /// The network-policy-api release whose suite `--cnp-suite` runs.
    #[arg(long, default_value = CNP_REF)]
    pub cnp_ref: String,
}

/// The network-policy-api release Palisade implements.
const CNP_REF: &str = "v0.2.0";
/// Its conformance features Palisade supports: the standard ones and named
/// ports (`nodes` and `domainNames` peers are refused).
const CNP_FEATURES: &str = "ClusterNetworkPolicy,ClusterNetworkPolicyNamedPorts";

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

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    match &o.action {
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
            let image = format!("{IMAGE}:{}", new_tag()?);
            exec(
                Command::new("docker")
                    .args(["build", "-t", &image])
                    .arg(root()),
            )?;
            exec(Command::new("kind").args(["load", "docker-image", &image, "--name", CLUSTER]))?;
            std::fs::create_dir_all(kind_dir())?;
            std::fs::write(
                kind_dir().join("image-tag"),
                image.trim_start_matches(&format!("{IMAGE}:")),
            )?;
            Ok(())
        }
        Action::Deploy => {
            need("kubectl")?;
            let tag = std::fs::read_to_string(kind_dir().join("image-tag"))
                .context("no image loaded yet: cargo xtask kind load first")?;
            std::fs::write(kind_dir().join("kustomization.yaml"), overlay(tag.trim()))?;
            // Before the agent: it looks again for a missing CRD only every
            // minute.
            apply_crds()?;
            exec(kubectl().arg("apply").arg("-k").arg(kind_dir()))?;
            exec(kubectl().args([
                "-n",
                "palisade-system",
                "rollout",
                "status",
                "daemonset/palisade",
                "--timeout=180s",
            ]))
        }
        Action::E2e(e) => e2e(e),
        Action::Down => {
            need("kind")?;
            exec(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]))
        }
    }
}

fn e2e(o: &E2eOptions) -> anyhow::Result<()> {
    need("kubectl")?;
    output(kubectl().args(["get", "nodes"])).with_context(|| {
        format!("no reachable cluster kind-{CLUSTER}: cargo xtask kind up, load, deploy first")
    })?;
    exec(cargo().args([
        "build",
        "--package",
        "palisade-tests",
        "--bin",
        "palisade-scenario",
    ]))?;
    apply_crds()?;
    let files = if o.files.is_empty() {
        scenario_files()?
    } else {
        o.files.clone()
    };
    // Both ways the local suite runs them: direct, and every pod through a
    // Service of its own (real Services, the cluster's kube-proxy).
    let mut passed = true;
    for via_service in [false, true] {
        let mut cmd = Command::new(root().join("target/debug/palisade-scenario"));
        cmd.args(["--kube-context", &format!("kind-{CLUSTER}")])
            .arg("--agent-config")
            .arg(root().join("deploy/base/config.yaml"))
            .args(&files)
            .current_dir(root());
        if via_service {
            cmd.arg("--via-service");
        }
        passed &= status(&mut cmd)?.success();
    }
    if o.netpol_suite {
        netpol_suite(o)?;
    }
    if o.cnp_suite {
        passed &= cnp_suite(o)?;
    }
    if !passed {
        bail!("scenarios failed on the cluster");
    }
    Ok(())
}

/// target/e2e/, where the upstream suites run, and the cluster's
/// kubeconfig written there for them.
fn e2e_dir() -> anyhow::Result<(PathBuf, PathBuf)> {
    need("kind")?;
    let dir = root().join("target/e2e");
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        output(Command::new("kind").args(["get", "kubeconfig", "--name", CLUSTER]))?,
    )?;
    Ok((dir, kubeconfig))
}

/// The upstream NetworkPolicy conformance tests, as kube-network-policies
/// and Cilium run them on kind.
fn netpol_suite(o: &E2eOptions) -> anyhow::Result<()> {
    let (dir, kubeconfig) = e2e_dir()?;
    let e2e_test = match &o.e2e_test {
        Some(p) => p.clone(),
        None => download_e2e_test(&dir)?,
    };
    let mut skip = vec![r"\[Disruptive\]", r"\[Serial\]"];
    if !o.sctp {
        skip.push(r"\[Feature:SCTPConnectivity\]");
    }
    exec(
        Command::new(&e2e_test)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "--provider=local",
                r"--ginkgo.focus=\[sig-network\] Netpol",
                &format!("--ginkgo.skip={}", skip.join("|")),
                "--ginkgo.v",
                "--dump-logs-on-failure=false",
            ])
            .arg(format!("--report-dir={}", dir.display())),
    )
}

/// The ordered policy kinds the scenarios apply: stand-ins where the
/// projects are not installed (`kind deploy` applies them before the agent
/// starts, `kind e2e` again in case the cluster was deployed otherwise).
fn apply_crds() -> anyhow::Result<()> {
    let crds = root().join("deploy/kind/crds.yaml");
    exec(kubectl().arg("apply").arg("-f").arg(&crds))?;
    exec(
        kubectl()
            .args([
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "-f",
            ])
            .arg(&crds),
    )
}

/// The ClusterNetworkPolicy conformance suite (network-policy-api), with
/// upstream's CRD in place of the stand-in; whether it passed.
fn cnp_suite(o: &E2eOptions) -> anyhow::Result<bool> {
    need("git")?;
    need("go")?;
    let (dir, kubeconfig) = e2e_dir()?;
    let repo = dir.join(format!("network-policy-api-{}", o.cnp_ref));
    if !repo.exists() {
        // Cloned aside and renamed: an interrupted clone is not reused.
        let partial = dir.join(format!("network-policy-api-{}.partial", o.cnp_ref));
        let _ = std::fs::remove_dir_all(&partial);
        exec(
            Command::new("git")
                .args(["clone", "--depth", "1", "--branch", &o.cnp_ref])
                .arg("https://github.com/kubernetes-sigs/network-policy-api")
                .arg(&partial),
        )?;
        std::fs::rename(&partial, &repo)?;
    }
    exec(
        kubectl()
            .arg("apply")
            .arg("-k")
            .arg(repo.join("config/crd/standard")),
    )?;
    Ok(status(
        Command::new("go")
            .args([
                "test",
                "./conformance/",
                "-run",
                "TestConformance",
                "-v",
                "-timeout",
                "90m",
            ])
            .args(["-args", &format!("--supported-features={CNP_FEATURES}")])
            .env("KUBECONFIG", &kubeconfig)
            .current_dir(&repo),
    )?
    .success())
}

/// e2e.test of the cluster's own Kubernetes version, from the release
/// artifacts (needs the internet, as kind itself does).
fn download_e2e_test(dir: &Path) -> anyhow::Result<PathBuf> {
    need("curl")?;
    let version: serde_json::Value =
        serde_json::from_str(&output(Command::new("kubectl").args([
            "--context",
            &format!("kind-{CLUSTER}"),
            "version",
            "-o",
            "json",
        ]))?)?;
    let version = version["serverVersion"]["gitVersion"]
        .as_str()
        .context("kubectl version: no serverVersion.gitVersion")?
        .to_string();
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let target = dir.join(&version);
    let bin = target.join("kubernetes/test/bin/e2e.test");
    if !bin.exists() {
        std::fs::create_dir_all(&target)?;
        exec(Command::new("sh").args([
            "-c",
            &format!(
                "curl -fsSL https://dl.k8s.io/release/{version}/kubernetes-test-linux-{arch}.tar.gz | tar -xz -C '{}' kubernetes/test/bin/e2e.test",
                target.display()
            ),
        ]))?;
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_renders_deploy_with_the_loaded_tag() {
        let dir =
            std::env::temp_dir().join(format!("palisade-kind-overlay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let overlay_dir = dir.join("target/kind");
        std::fs::create_dir_all(&overlay_dir).expect("dir");
        // The overlay names ../../deploy: lay it out as in the repository.
        std::os::unix::fs::symlink(root().join("deploy"), dir.join("deploy")).expect("symlink");
        std::fs::write(overlay_dir.join("kustomization.yaml"), overlay("dev-abc-1"))
            .expect("write");
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&overlay_dir)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.expect("kubectl kustomize (kubectl is on the machine image)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.matches("image: palisade:dev-abc-1").count(),
            2,
            "{text}"
        );
    }
}
