//! `palisade-scenario FILE...`: runs scenario files end to end (see
//! shared/scenarios/FORMAT.md) and ends with `N passed, M failed`: on
//! network namespaces with a local agent (root), or with `--kube-context`
//! against a cluster where Palisade is deployed (kubectl).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use palisade_tests::{cluster, probe, runner, topology};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    hidden: Option<Hidden>,
    /// The palisade binary to run as the agent.
    #[arg(long, default_value = "target/debug/palisade")]
    agent: PathBuf,
    /// Seconds each probe may take.
    #[arg(long, default_value = "1")]
    probe_timeout: f64,
    #[arg(long, default_value = "128")]
    parallel: usize,
    /// Print every matrix and the denied flows (the demo).
    #[arg(long)]
    show: bool,
    /// Run against this kubectl context instead of network namespaces.
    #[arg(long)]
    kube_context: Option<String>,
    /// The deployed agent settings, the ConfigMap's `config.yaml`
    /// (scenario settings go on top of them).
    #[arg(long, default_value = "deploy/base/config.yaml")]
    agent_config: PathBuf,
    /// On a cluster: seconds a check waits for enforcement to catch up.
    #[arg(long, default_value = "15")]
    settle: f64,
    /// Run on this many nodes (pods that name no node are spread over them).
    #[arg(long)]
    nodes: Option<usize>,
    /// Probe every pod through a Service of its own (selector-less, with an
    /// EndpointSlice naming the pod, on ports that differ from the pod's).
    #[arg(long)]
    via_service: bool,
    /// Whether the agent's source gets Service and EndpointSlice objects.
    #[arg(
        long,
        value_enum,
        env = "PALISADE_E2E_SERVICE_OBJECTS",
        default_value = "auto"
    )]
    service_objects: runner::ServiceObjects,
    /// A CNI plugin (in /usr/lib/cni) chained after ptp; repeatable.
    #[arg(long = "cni-plugin")]
    cni_plugins: Vec<String>,
    files: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Hidden {
    /// Internal: one probe from a cgroup (hostNetwork pods).
    #[command(name = "__probe", hide = true)]
    Probe {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        cgroup: String,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        proto: String,
        #[arg(long)]
        timeout_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Hidden::Probe {
        netns,
        cgroup,
        to,
        proto,
        timeout_ms,
    }) = cli.hidden
    {
        let proto = probe::Proto::from_lower(&proto)?;
        let ok = probe::child_probe(
            &netns,
            &cgroup,
            to,
            proto,
            Duration::from_millis(timeout_ms),
        )?;
        std::process::exit(if ok { 0 } else { 1 });
    }
    if cli.files.is_empty() {
        anyhow::bail!("no scenario files given");
    }
    if let Some(context) = &cli.kube_context {
        let base_config = std::fs::read_to_string(&cli.agent_config)
            .with_context(|| format!("reading {}", cli.agent_config.display()))?;
        let opts = cluster::Options {
            context: context.clone(),
            probe_timeout: Duration::from_secs_f64(cli.probe_timeout),
            parallel: cli.parallel.min(16),
            settle: Duration::from_secs_f64(cli.settle),
            base_config,
            nodes: cli.nodes,
            via_service: cli.via_service,
        };
        return report(&cli.files, |f| cluster::run_file(f, &opts), || {});
    }
    ctrlc::set_handler(|| {
        eprintln!("interrupted: cleaning up");
        topology::cleanup_all();
        std::process::exit(130);
    })?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("scenarios need root (network namespaces, eBPF); run as root");
    }
    let opts = runner::Options {
        agent: cli
            .agent
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("agent binary {}: {e}", cli.agent.display()))?,
        probe_timeout: Duration::from_secs_f64(cli.probe_timeout),
        parallel: cli.parallel,
        show_denials: cli.show,
        show_matrices: cli.show,
        ready_timeout: Duration::from_secs(20),
        nodes: cli.nodes,
        via_service: cli.via_service,
        service_objects: cli.service_objects,
        extra_cni: cli.cni_plugins,
    };
    report(
        &cli.files,
        |f| runner::run_file(f, &opts),
        topology::cleanup_all,
    )
}

/// Runs each file, prints PASS/FAIL with the report, and ends with the
/// `N passed, M failed` line; exits 1 when any failed.
fn report(
    files: &[PathBuf],
    run: impl Fn(&std::path::Path) -> runner::Outcome,
    cleanup: impl Fn(),
) -> anyhow::Result<()> {
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        let t0 = std::time::Instant::now();
        let out = run(f);
        if out.passed {
            passed += 1;
            println!(
                "PASS {} ({} checks, {:.1}s)",
                out.name,
                out.checks,
                t0.elapsed().as_secs_f64()
            );
        } else {
            failed += 1;
            println!(
                "FAIL {} ({:.1}s)\n{}",
                out.name,
                t0.elapsed().as_secs_f64(),
                out.report
            );
        }
    }
    cleanup();
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
