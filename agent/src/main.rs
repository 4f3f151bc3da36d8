//! `palisade`: the node agent and its command-line tools; installed as
//! `palisade-cni`, the chained CNI plugin (see `palisade_agent::cni`).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use palisade_agent::{
    config::FileConfig,
    daemon::{self, LogFormat},
    dataplane::{Datapath, PinPaths, paths::DEFAULT_ROOT},
    explain,
    flows::log::LogSettings,
    index::Index,
    model::Node,
    policy::dump,
    source::dir::DirSource,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "eBPF NetworkPolicy enforcement for Kubernetes nodes"
)]
struct Cli {
    /// Format of the agent's own logs (stderr).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PALISADE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// Print what the agent would program for a node (no kernel needed).
    Compile {
        /// Directory of YAML objects.
        #[arg(long)]
        source: PathBuf,
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[arg(long = "node-address")]
        node_addresses: Vec<IpAddr>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the denied (or allowed, or all) flows of the agent on this node.
    Flows {
        /// The observed allowed connections instead, one record per
        /// workload pair, port and direction, with counts.
        #[arg(long, conflicts_with = "all")]
        allowed: bool,
        /// The allowed connections, then the denied flows.
        #[arg(long)]
        all: bool,
        /// Keep printing new records as they come.
        #[arg(long, short)]
        follow: bool,
        /// Only flows with a pod of this namespace on either side.
        #[arg(long, short)]
        namespace: Option<String>,
        /// Only flows of this pod (`name` or `namespace/name`) on either side.
        #[arg(long)]
        pod: Option<String>,
        /// JSON lines, as the agent writes them.
        #[arg(long)]
        json: bool,
        /// The agent's --listen address.
        #[arg(long, default_value = palisade_agent::api::DEFAULT_LISTEN)]
        agent: String,
    },
    /// Propose NetworkPolicies (YAML) that allow exactly the observed
    /// connections: one per workload, isolating it both ways, DNS kept.
    Advise(AdviseArgs),
    /// Why a connection is allowed or denied: the policies selecting each
    /// side, the rule or isolation that decided, the profile's part, and
    /// whether the kernel maps give the same verdict. Asks the agent on
    /// this node, or (with --source) works offline on a directory of YAML.
    Explain {
        /// `NAMESPACE/POD`, an address, or `node` (the destination pod's node).
        from: String,
        /// `NAMESPACE/POD`, `svc:NAMESPACE/NAME`, or an address (a pod's, a Service frontend's, any).
        to: String,
        /// `PORT[/PROTO]`: a number or a container port name of the
        /// destination pod; PROTO tcp (default), udp or sctp.
        port: Option<String>,
        /// Offline: a directory of YAML objects, compiled as `palisade compile` does.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Offline: a node whose addresses are given (traffic from them to
        /// its own pods is always allowed).
        #[arg(long, env = "NODE_NAME", requires = "source")]
        node_name: Option<String>,
        #[arg(long = "node-address", requires = "node_name")]
        node_addresses: Vec<IpAddr>,
        /// Offline: agent settings (YAML), as the agent's --config.
        #[arg(long, requires = "source")]
        config: Option<PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The agent's --listen address.
        #[arg(long, default_value = palisade_agent::api::DEFAULT_LISTEN)]
        agent: String,
    },
    /// Remove every pinned program and map (enforcement stops).
    Uninstall {
        #[arg(long, default_value = DEFAULT_ROOT)]
        pin_root: PathBuf,
    },
}

#[derive(clap::Args)]
struct AdviseArgs {
    /// Observed flows, JSON lines or one JSON array (as `palisade flows
    /// --allowed --json` prints them); `-` reads stdin. Repeatable.
    #[arg(long)]
    from: Vec<String>,
    /// An agent's --listen address, read with `GET /flows/allowed`.
    /// Repeatable; without --from or --agent, the local agent.
    #[arg(long)]
    agent: Vec<String>,
    /// Only policies for workloads of this namespace.
    #[arg(long, short)]
    namespace: Option<String>,
    /// Annotate the policies `palisade.dev/mode: audit` (evaluated, not enforced).
    #[arg(long)]
    audit: bool,
    /// Namespace of the cluster resolver every policy keeps reaching (UDP and TCP 53).
    #[arg(long, default_value = "kube-system")]
    dns_namespace: String,
    /// Label (`key=value`, repeatable) of the resolver's pods.
    #[arg(long, value_parser = label, default_value = "k8s-app=kube-dns")]
    dns_selector: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    name_prefix: String,
    #[arg(long, default_value = "-least-privilege")]
    name_suffix: String,
}

fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: want key=value")),
    }
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Standalone mode: a directory of YAML objects (Namespaces, Pods with
    /// status.podIP and spec.nodeName, NetworkPolicies) is the cluster.
    /// Without it the agent watches the API server (in-cluster config or
    /// KUBECONFIG).
    #[arg(long)]
    source: Option<PathBuf>,
    /// This node's name; pods with this spec.nodeName are enforced here.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The node's own addresses (default: every address of this network namespace).
    #[arg(long = "node-address")]
    node_addresses: Vec<IpAddr>,
    /// Agent settings (YAML); flags below override it.
    #[arg(long, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_ROOT)]
    pin_root: PathBuf,
    /// Write the programmed revision and attachments here (JSON).
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Attach to every veth with one of these name prefixes (default: only
    /// the veths that carry a local pod's host route).
    #[arg(long = "interface-prefix")]
    interface_prefixes: Vec<String>,
    #[arg(long)]
    default_deny: Option<bool>,
    #[arg(long)]
    block_metadata: Option<bool>,
    /// Traffic of unknown addresses on attached veths (overrides the config's unknownPodTraffic).
    #[arg(long, value_enum)]
    unknown_pod_traffic: Option<palisade_agent::dataplane::UnknownEndpoint>,
    /// Format of deny records on stdout.
    #[arg(long, value_enum, default_value = "json")]
    deny_log: LogFormat,
    /// Also write deny records (JSON lines) to this file, rotated by size
    /// (5 old files kept as FILE.1 .. FILE.5).
    #[arg(long)]
    deny_log_file: Option<PathBuf>,
    #[arg(long, default_value = "10485760")]
    deny_log_file_max_bytes: u64,
    /// Seconds a flow must be quiet before its deny record is written.
    #[arg(long, default_value = "3")]
    deny_idle_secs: f64,
    /// Deny records per second and source namespace (token bucket rate;
    /// burst is 4x); all sources together get 8x.
    #[arg(long, default_value = "50")]
    deny_rate: f64,
    /// Local HTTP endpoint: /metrics, /healthz, /readyz, /status, /flows ("off" to disable).
    #[arg(long, default_value = palisade_agent::api::DEFAULT_LISTEN)]
    listen: String,
    /// Metrics and health only (/metrics, /healthz, /readyz), e.g.
    /// `[::]:9974` for Prometheus and the kubelet's probes (default: off).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Capacity of the policy map (default 1,048,576 entries).
    #[arg(long)]
    policy_map_size: Option<u32>,
    /// Capacity of the ipcache map (default 262,144 entries).
    #[arg(long)]
    ipcache_map_size: Option<u32>,
    /// Capacity of the conntrack map (default 262,144 flows; least recently
    /// used flows are evicted when full).
    #[arg(long)]
    conntrack_map_size: Option<u32>,
    /// New flows one pod may open per second (kernel budget, so that a
    /// flood cannot evict other pods' flows from the shared conntrack
    /// table; 0: no budget). Bursts of twice that are allowed.
    #[arg(long, default_value = "20000")]
    new_flow_rate: u32,
    /// Deny events one pod's veth may send to the agent per second (bursts
    /// of 4x; 0: no budget); the packets are denied and counted regardless.
    #[arg(long, default_value = "500")]
    deny_event_rate: u32,
    /// Record allowed new connections for `palisade flows --allowed` and
    /// `palisade advise` (pods of audit-mode policies and of Calico `Log`
    /// rules are observed regardless).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    observe_flows: bool,
    /// Allowed new flows one pod's veth may send to the agent per second
    /// (bursts of 5x; 0: no budget); past it they are counted, not sent.
    #[arg(long, default_value = "200")]
    observed_flow_rate: u32,
    /// Observed flow records kept (per workload pair, port and direction);
    /// past it new ones are counted as dropped.
    #[arg(long, default_value = "10000")]
    max_observed_flows: usize,
    /// Budget: estimated policy entries (peers x port prefixes) per policy
    /// (overrides the config's budgets.policyEntries; 0: no limit).
    #[arg(long)]
    max_policy_entries: Option<u64>,
    /// Budget: ipBlock CIDRs plus excepts per policy (budgets.policyCidrs).
    #[arg(long)]
    max_policy_cidrs: Option<u64>,
    /// Budget: estimated policy entries per namespace (budgets.namespaceEntries).
    #[arg(long)]
    max_namespace_entries: Option<u64>,
    /// Budget: ipBlock CIDRs plus excepts per namespace (budgets.namespaceCidrs).
    #[arg(long)]
    max_namespace_cidrs: Option<u64>,
    /// On a graceful stop: keep the programs enforcing the last state
    /// (fail closed, default) or remove them (fail open).
    #[arg(long, value_enum, default_value = "keep")]
    on_exit: daemon::OnExit,
    /// Where pod cgroups are looked for (default: the cgroup v2 mount).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Cut established flows that a policy change denies (overrides the
    /// config's revokeOnPolicyChange).
    #[arg(long)]
    revoke_on_policy_change: Option<bool>,
    /// How often the source and interfaces are checked, in milliseconds.
    #[arg(long, default_value = "200")]
    poll_ms: u64,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    Ok(match path {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    })
}

fn main() -> anyhow::Result<()> {
    if palisade_agent::cni::invoked_as_plugin() {
        // The CNI protocol owns stdout and the exit code; no runtime needed.
        std::process::exit(palisade_agent::cni::main());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(cli_main())
}

async fn cli_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Agent(a) => run_agent(*a).await,
        Command::Compile {
            source,
            node_name,
            node_addresses,
            config,
        } => compile(&source, node_name, node_addresses, config.as_ref()),
        Command::Flows {
            allowed,
            all,
            follow,
            namespace,
            pod,
            json,
            agent,
        } => {
            use palisade_agent::flows::client::{self, Which};
            let which = match (allowed, all) {
                (true, _) => Which::Allowed,
                (_, true) => Which::All,
                _ => Which::Denied,
            };
            client::run(
                &agent,
                which,
                follow,
                namespace.as_deref(),
                pod.as_deref(),
                json,
            )
            .await
        }
        Command::Advise(a) => advise(a).await,
        Command::Explain {
            from,
            to,
            port,
            source,
            node_name,
            node_addresses,
            config,
            json,
            agent,
        } => {
            let query = explain::Query {
                from: from.parse()?,
                to: to.parse()?,
                port: port.as_deref().map_or(Ok(Default::default()), str::parse)?,
            };
            let out = match source {
                Some(dir) => {
                    let node = node_name.map(|name| Node {
                        name,
                        addresses: node_addresses,
                        ..Node::default()
                    });
                    explain_offline(&dir, node, config.as_ref(), &query, json)?
                }
                None => explain::client::fetch(&agent, &query, json).await?,
            };
            print!("{out}");
            if json && !out.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Command::Uninstall { pin_root } => {
            Datapath::uninstall(&PinPaths::new(&pin_root))
                .with_context(|| format!("removing {}", pin_root.display()))?;
            eprintln!("removed {}", pin_root.display());
            Ok(())
        }
    }
}

async fn run_agent(mut a: AgentArgs) -> anyhow::Result<()> {
    let cfg = load_config(a.config.as_ref())?;
    let source = match a.source.take() {
        Some(dir) => daemon::SourceConfig::Dir(dir),
        None => daemon::SourceConfig::Kube(
            kube::Client::try_default()
                .await
                .context("connecting to the API server (in-cluster or KUBECONFIG); use --source DIR for standalone mode")?,
        ),
    };
    daemon::run(agent_options(a, cfg, source)?).await
}

/// The flags over the config file.
fn agent_options(
    a: AgentArgs,
    mut cfg: FileConfig,
    source: daemon::SourceConfig,
) -> anyhow::Result<daemon::Options> {
    if let Some(v) = a.default_deny {
        cfg.profile.default_deny = v;
    }
    if let Some(v) = a.block_metadata {
        cfg.profile.block_metadata = v;
    }
    let mut budgets = cfg.budgets;
    for (flag, value) in [
        (a.max_policy_entries, &mut budgets.policy_entries),
        (a.max_policy_cidrs, &mut budgets.policy_cidrs),
        (a.max_namespace_entries, &mut budgets.namespace_entries),
        (a.max_namespace_cidrs, &mut budgets.namespace_cidrs),
    ] {
        if let Some(v) = flag {
            *value = v;
        }
    }
    let mut prefixes = cfg.interface_prefixes.clone();
    prefixes.extend(a.interface_prefixes);
    Ok(daemon::Options {
        source,
        node_name: a.node_name,
        node_addresses: a.node_addresses,
        pins: PinPaths::new(a.pin_root),
        status_file: a.status_file,
        interface_prefixes: prefixes,
        unknown_endpoint: a.unknown_pod_traffic.unwrap_or(cfg.unknown_pod_traffic),
        map_sizes: palisade_agent::dataplane::MapSizes {
            policy: a.policy_map_size,
            ipcache: a.ipcache_map_size,
            conntrack: a.conntrack_map_size,
            budgets: palisade_agent::dataplane::Budgets {
                new_flows_per_sec: a.new_flow_rate,
                new_flow_burst: a.new_flow_rate.saturating_mul(2),
                deny_events_per_sec: a.deny_event_rate,
                deny_event_burst: a.deny_event_rate.saturating_mul(4),
                observed_flows_per_sec: a.observed_flow_rate,
                observed_flow_burst: a.observed_flow_rate.saturating_mul(5),
            },
        },
        profile: cfg.profile,
        deny_log: a.deny_log,
        log_settings: LogSettings {
            idle: Duration::from_secs_f64(a.deny_idle_secs),
            rate: a.deny_rate,
            burst: a.deny_rate * 4.0,
            total_rate: a.deny_rate * 8.0,
            total_burst: a.deny_rate * 32.0,
            ..Default::default()
        },
        poll: Duration::from_millis(a.poll_ms),
        cgroup_root: a.cgroup_root,
        deny_log_file: a.deny_log_file,
        on_exit: a.on_exit,
        deny_log_file_max_bytes: a.deny_log_file_max_bytes,
        revoke_on_policy_change: a
            .revoke_on_policy_change
            .unwrap_or(cfg.revoke_on_policy_change),
        observe_flows: a.observe_flows,
        max_observed_flows: a.max_observed_flows,
        budgets,
        metrics_listen: a.metrics_listen,
        listen: if a.listen == "off" {
            None
        } else {
            Some(
                a.listen
                    .parse()
                    .with_context(|| format!("--listen {}", a.listen))?,
            )
        },
    })
}

/// `palisade advise`: reads every source, then prints the advice.
async fn advise(a: AdviseArgs) -> anyhow::Result<()> {
    use palisade_agent::advise::{self, input};
    let mut agents = a.agent;
    if a.from.is_empty() && agents.is_empty() {
        agents.push(palisade_agent::api::DEFAULT_LISTEN.to_string());
    }
    let mut flows = Vec::new();
    for f in &a.from {
        let text = if f == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
        };
        flows.extend(input::parse_flows(f, &text)?);
    }
    for addr in &agents {
        let text = input::fetch_allowed(addr).await?;
        flows.extend(input::parse_flows(addr, &text)?);
    }
    if flows.is_empty() {
        eprintln!("no observed flows: nothing to advise");
    }
    let options = advise::Options {
        namespace: a.namespace,
        name_prefix: a.name_prefix,
        name_suffix: a.name_suffix,
        audit: a.audit,
        dns_namespace: a.dns_namespace,
        dns_selector: a.dns_selector.into_iter().collect(),
    };
    print!("{}", advise::advise(&flows, &options).to_yaml()?);
    Ok(())
}

/// `palisade compile`: what the agent would program, without a kernel.
fn compile(
    source: &std::path::Path,
    node_name: String,
    node_addresses: Vec<IpAddr>,
    config: Option<&PathBuf>,
) -> anyhow::Result<()> {
    let cfg = load_config(config)?;
    let index = read_source(source)?;
    let node = Node {
        name: node_name,
        addresses: node_addresses,
        ..Node::default()
    };
    let state = palisade_agent::policy::Compiler::default()
        .with_budgets(cfg.budgets)
        .compile(index.model(), &node, &cfg.profile);
    for r in state.rejected.values() {
        eprintln!("over budget: {r}");
    }
    print!("{}", dump::render(&state));
    Ok(())
}

/// The objects of a source directory in an index; rejected ones are named
/// on stderr and left out.
fn read_source(source: &std::path::Path) -> anyhow::Result<Index> {
    let snapshot = DirSource::new(source).read().context("reading source")?;
    for e in &snapshot.errors {
        eprintln!("rejected: {}", palisade_agent::error_chain::chain(&**e));
    }
    let mut index = Index::default();
    for o in &snapshot.objects {
        if let Err(e) = index.apply(o) {
            eprintln!("rejected: {}", palisade_agent::error_chain::chain(&e));
        }
    }
    Ok(index)
}

/// `palisade explain --source`: the model of a directory, checked against
/// the maps compiled for the node of each pod.
fn explain_offline(
    source: &std::path::Path,
    node: Option<Node>,
    config: Option<&PathBuf>,
    query: &explain::Query,
    json: bool,
) -> anyhow::Result<String> {
    let cfg = load_config(config)?;
    cfg.profile.validate()?;
    let index = read_source(source)?;
    let nodes: Vec<Node> = node.into_iter().collect();
    let compiled =
        explain::CompiledNodes::compile(index.model(), &cfg.profile, &nodes, cfg.budgets);
    let world = explain::World {
        model: index.model(),
        profile: &cfg.profile,
        nodes: &nodes,
        maps: Some(&compiled),
    };
    let e = explain::explain(&world, query)?;
    Ok(if json {
        serde_json::to_string_pretty(&e)?
    } else {
        explain::human(&e)
    })
}
