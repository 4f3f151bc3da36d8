//! The agent's main loop in standalone mode: a directory is the cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use palisade_common::DenyEvent;
use tokio::io::unix::AsyncFd;
use tracing::{error, info, info_span, warn};

use crate::{
    api::{self, Shared},
    dataplane::{
        Datapath, PinPaths, cgroups,
        conntrack::{self, PinnedMaps, Sweep},
        counters, interfaces, kernel, link_events, support,
    },
    error_chain::chain,
    flows::{
        self,
        file::RotatingFile,
        log::{DenyLog, LogSettings, Record},
    },
    index::{Index, Kind},
    metrics::MapLabels,
    model::{Node, ObjectRef},
    policy::{DesiredState, Profile, state::HostNetworkBlock},
    source::{self, Batch, SourceEvent, dir::DirSource},
    status::Status,
    sync::Syncer,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub source: SourceConfig,
    pub node_name: String,
    /// Node addresses given explicitly; otherwise this namespace's addresses.
    pub node_addresses: Vec<IpAddr>,
    pub pins: PinPaths,
    pub status_file: Option<PathBuf>,
    pub interface_prefixes: Vec<String>,
    pub unknown_endpoint: crate::dataplane::UnknownEndpoint,
    pub map_sizes: crate::dataplane::MapSizes,
    pub profile: Profile,
    pub deny_log: LogFormat,
    pub log_settings: LogSettings,
    pub poll: Duration,
    /// Where to look for pod cgroups (default: the cgroup v2 mount).
    pub cgroup_root: Option<PathBuf>,
    /// Deny records also go to this file (JSON lines), rotated by size.
    pub deny_log_file: Option<PathBuf>,
    pub deny_log_file_max_bytes: u64,
    /// What a graceful stop leaves behind.
    pub on_exit: OnExit,
    /// The local HTTP endpoint (metrics, health, flows); `None`: off.
    pub listen: Option<std::net::SocketAddr>,
    /// Metrics and health only (for Prometheus and probes); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Cut established flows that a policy change denies (with a deny record).
    pub revoke_on_policy_change: bool,
    /// What one policy and one namespace may cost.
    pub budgets: crate::policy::Budgets,
}

fn emit(records: Vec<Record>, format: LogFormat, shared: &Shared, file: &mut Option<RotatingFile>) {
    for r in records {
        shared.publish(&r);
        if let Some(f) = file.as_mut()
            && let Err(e) = serde_json::to_string(&r)
                .map_err(std::io::Error::other)
                .and_then(|l| f.write_line(&l))
        {
            warn!(error = %e, "writing the deny log file");
        }
        match format {
            LogFormat::Json => match serde_json::to_string(&r) {
                Ok(line) => println!("{line}"),
                Err(e) => warn!(error = %e, "deny record not serializable"),
            },
            LogFormat::Text => println!("{}", r.human()),
        }
    }
}

/// Puts the metadata block on the cgroups of local hostNetwork pods that
/// need it and takes it off those that no longer do. A pod whose cgroup does
/// not exist yet is looked for again on the next pass.
fn reconcile_cgroups(
    dp: &mut Datapath,
    state: &DesiredState,
    root: Option<&std::path::Path>,
    attached: &mut BTreeMap<HostNetworkBlock, (PathBuf, u64)>,
) {
    let gone: Vec<HostNetworkBlock> = attached
        .keys()
        .filter(|b| !state.host_network_blocks.contains(b))
        .cloned()
        .collect();
    for b in gone {
        if let Some((path, ino)) = attached.remove(&b) {
            dp.detach_cgroup(ino);
            info!(pod = %b.pod, cgroup = %path.display(), "metadata block removed");
        }
    }
    let Some(root) = root else {
        if !state.host_network_blocks.is_empty() {
            warn!("no cgroup v2 mount: hostNetwork pods are not covered by the metadata block");
        }
        return;
    };
    for b in &state.host_network_blocks {
        if attached.contains_key(b) {
            continue;
        }
        let Some(path) = cgroups::find_pod_cgroup(root, &b.uid) else {
            continue;
        };
        match dp.attach_cgroup(&path) {
            Ok(ino) => {
                info!(pod = %b.pod, cgroup = %path.display(), "metadata block attached");
                attached.insert(b.clone(), (path, ino));
            }
            Err(e) => error!(pod = %b.pod, error = %chain(&e), "attaching the metadata block"),
        }
    }
}

/// What the agent leaves in the kernel when it stops gracefully (SIGTERM,
/// SIGINT). A crash or SIGKILL always leaves the pinned state enforcing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Fail closed: the last programmed policy keeps enforcing while the
    /// agent is away (restarts, upgrades).
    #[default]
    Keep,
    /// Fail open: detach and unpin everything; pods are unprotected until
    /// the agent is back.
    Remove,
}

/// Deny events read per wake of the event branch.
const EVENTS_PER_WAKE: usize = 4096;

const KINDS: [Kind; 5] = Kind::ALL;

/// Where the agent's objects come from.
#[derive(Clone)]
pub enum SourceConfig {
    /// Standalone: a directory of YAML objects.
    Dir(PathBuf),
    /// The API server.
    Kube(kube::Client),
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceConfig::Dir(d) => write!(f, "Dir({})", d.display()),
            SourceConfig::Kube(_) => f.write_str("Kube"),
        }
    }
}

/// Applies one batch of source events to the index (pure but for logs).
pub fn apply_batch(
    index: &mut Index,
    listed: &mut BTreeSet<Kind>,
    version: &mut String,
    batch: Batch,
) {
    for ev in batch {
        match ev {
            SourceEvent::Reset { kind, objects } => {
                for e in index.reset(kind, &objects) {
                    warn!(error = %chain(&e), "object rejected; its last good version stays in force");
                }
                listed.insert(kind);
            }
            SourceEvent::Apply(o) => {
                if let Err(e) = index.apply(&o) {
                    warn!(error = %chain(&e), "object rejected; its last good version stays in force");
                }
            }
            SourceEvent::Delete(key) => index.delete(&key),
            SourceEvent::Rejected(e) => warn!(error = %chain(&*e), "source object rejected"),
            SourceEvent::Version(v) => *version = v,
            SourceEvent::Trouble(e) => {
                warn!(error = %chain(&e), "source trouble; enforcement unchanged, retrying")
            }
        }
    }
}

/// Every pod address with the pod (and its uid) that holds it.
fn address_owners(model: &crate::model::Model) -> BTreeMap<IpAddr, (ObjectRef, String)> {
    model
        .pods
        .values()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, (p.key(), p.uid.clone()))))
        .collect()
}

/// Addresses whose holder differs between two snapshots (including ones
/// that appeared or vanished).
fn changed_owners<'a>(
    old: &'a BTreeMap<IpAddr, (ObjectRef, String)>,
    new: &'a BTreeMap<IpAddr, (ObjectRef, String)>,
) -> impl Iterator<Item = IpAddr> + 'a {
    let gone = old
        .iter()
        .filter(|(ip, o)| new.get(ip) != Some(o))
        .map(|(ip, _)| *ip);
    let came = new.keys().filter(|ip| !old.contains_key(ip)).copied();
    gone.chain(came)
}

/// Addresses of this node's pods that a veth carries.
fn local_pod_ips(model: &crate::model::Model, node: &str) -> BTreeSet<IpAddr> {
    model
        .pods
        .values()
        .filter(|p| p.node == node && !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .collect()
}

/// A kernel that cannot enforce: say why once, stay up and not ready (so a
/// rollout stops here and the reason is on /readyz and in the status)
/// until stopped, touching nothing in the kernel.
async fn unsupported(
    problems: &[support::Unsupported],
    shared: &Shared,
    status_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let why = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    error!(reason = %why, "this node cannot enforce NetworkPolicy; staying not ready");
    let status = Status {
        unsupported: Some(why),
        ..Status::default()
    };
    if let Some(path) = status_file
        && let Err(e) = status.write(path)
    {
        warn!(error = %e, path = %path.display(), "writing status");
    }
    if let Ok(mut s) = shared.status.write() {
        *s = status;
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    Ok(())
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let span = info_span!("agent", node = %opts.node_name);
    let _enter = span.enter();
    opts.profile.validate()?;

    let shared = Arc::new(Shared::new());
    for (addr, router, what) in [
        (
            opts.listen,
            api::router(shared.clone()),
            "/metrics, /healthz, /readyz, /status, /flows",
        ),
        (
            opts.metrics_listen,
            api::public_router(shared.clone()),
            "/metrics, /healthz, /readyz",
        ),
    ] {
        let Some(addr) = addr else { continue };
        tokio::spawn(async move {
            if let Err(e) = api::serve(addr, router).await {
                error!(%addr, error = %e, "HTTP endpoint failed");
            }
        });
        info!(%addr, "serving {what}");
    }
    let problems = support::assess(&support::probe(opts.pins.root()));
    if !problems.is_empty() {
        return unsupported(&problems, &shared, opts.status_file.as_deref()).await;
    }
    let mut dp = Datapath::open_sized(opts.pins.clone(), opts.unknown_endpoint, opts.map_sizes)
        .context("loading the datapath")?;
    let observed = dp.read_maps();
    info!(entries = observed.len(), "adopted pinned maps");
    // As the kernel holds them: --*-map-size, or the run that pinned them.
    for (name, cap) in kernel::capacities(&opts.pins) {
        shared
            .metrics
            .map_capacity
            .get_or_create(&MapLabels { map: name.into() })
            .set(i64::from(cap));
    }
    let counters = dp.take_counters()?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so
    // the fd cannot be closed while registered.
    let mut events =
        unsafe { AsyncFd::register(dp.take_events()?) }.context("polling the event ring")?;
    let (sweep_tx, sweep_rx) = std::sync::mpsc::channel::<Sweep>();
    let (revoked_tx, mut revoked_rx) = tokio::sync::mpsc::channel::<DenyEvent>(4096);
    {
        let ct = dp.take_conntrack()?;
        let view = PinnedMaps::open(dp.pins()).context("opening the pinned maps")?;
        std::thread::Builder::new()
            .name("conntrack".into())
            .spawn(move || conntrack::run(ct, view, sweep_rx, revoked_tx))
            .context("starting the conntrack thread")?;
    }
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    // Link, address and route changes wake the loop at once; the tick stays
    // as the safety net (and the only way, should subscribing fail).
    let netlink_changed = link_events::subscribe().unwrap_or_else(|e| {
        warn!(error = %e, "no rtnetlink notifications; interfaces are found by polling only");
        Arc::default()
    });

    let mut syncer = Syncer::new(dp.kernel_maps()?, observed).with_budgets(opts.budgets);
    let (source_tx, mut source_rx) = tokio::sync::mpsc::channel::<Batch>(64);
    match &opts.source {
        SourceConfig::Dir(dir) => {
            tokio::spawn(source::dir::run(DirSource::new(dir), opts.poll, source_tx));
        }
        SourceConfig::Kube(client) => {
            tokio::spawn(source::kube::run(client.clone(), source_tx));
        }
    }
    let mut index = Index::default();
    // Writes wait until every kind has been listed once.
    let mut listed: BTreeSet<Kind> = BTreeSet::new();
    let mut node = Node {
        name: opts.node_name.clone(),
        addresses: opts.node_addresses.clone(),
        interfaces: BTreeMap::new(),
    };
    // Who holds each pod address, to notice an address changing hands.
    let mut owners = address_owners(index.model());
    let mut reassigned: BTreeSet<IpAddr> = BTreeSet::new();
    let mut digest = String::new();
    let mut ready = false;
    let mut dirty = true;
    // After failed map writes (a full map), when to try again: backing off
    // so a map that stays full does not cost a sync every tick.
    let mut retry_at: Option<Instant> = None;
    let mut retry_backoff = Duration::from_millis(500);
    let mut last_sync_ops = 0;
    let mut changed_at: Option<Instant> = None;
    let mut last_metrics = Instant::now() - Duration::from_secs(60);
    let mut deny_log = DenyLog::new(&opts.node_name, opts.log_settings.clone());
    let mut deny_file = match &opts.deny_log_file {
        Some(p) => Some(
            RotatingFile::open(p, opts.deny_log_file_max_bytes, 5)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };
    let mut pods = flows::pods_by_ip(index.model());
    // The isolating policies' names per endpoint, shared by deny records.
    let mut names = flows::PolicyCache::default();

    let cgroup_root = opts.cgroup_root.clone().or_else(cgroups::cgroup2_root);
    // Pods whose cgroup carries the metadata block: pod -> cgroup inode.
    let mut blocked_cgroups: BTreeMap<HostNetworkBlock, (PathBuf, u64)> = BTreeMap::new();

    let mut tick = tokio::time::interval(opts.poll);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupted = false;
    let mut stale_removed = false;
    // Interfaces that host routes point at.
    let mut routed: BTreeSet<u32> = BTreeSet::new();

    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = netlink_changed.notified() => {}
            Some(ev) = revoked_rx.recv() => {
                if let Some(d) = flows::attribute(&ev, syncer.state(), &mut names, &pods) {
                    deny_log.observe(d, SystemTime::now());
                }
                continue;
            }
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let ring: &mut RingBuf<MapData> = guard.get_inner_mut();
                let now = SystemTime::now();
                // A bounded batch per wake: under a flood the other branches
                // (syncs, signals) still get their turn.
                let mut drained = 0;
                while drained < EVENTS_PER_WAKE {
                    let Some(item) = ring.next() else { break };
                    if let Some(d) = DenyEvent::decode(&item)
                        .and_then(|ev| flows::attribute(&ev, syncer.state(), &mut names, &pods))
                    {
                        deny_log.observe(d, now);
                    }
                    drained += 1;
                }
                if drained < EVENTS_PER_WAKE {
                    guard.clear_ready();
                }
                continue;
            }
            batch = source_rx.recv() => {
                let Some(batch) = batch else {
                    anyhow::bail!("the source stopped");
                };
                changed_at.get_or_insert_with(Instant::now);
                apply_batch(&mut index, &mut listed, &mut digest, batch);
                // Whatever else is queued goes into the same sync.
                while let Ok(more) = source_rx.try_recv() {
                    apply_batch(&mut index, &mut listed, &mut digest, more);
                }
                pods = flows::pods_by_ip(index.model());
                let now_owners = address_owners(index.model());
                reassigned.extend(changed_owners(&owners, &now_owners));
                owners = now_owners;
                dirty = true;
                // A change is programmed at once, backoff or not.
                retry_at = None;
            }
            _ = tokio::signal::ctrl_c() => { interrupted = true; }
            _ = sigterm.recv() => { interrupted = true; }
        }
        if interrupted {
            emit(
                deny_log.drain(SystemTime::now()),
                opts.deny_log,
                &shared,
                &mut deny_file,
            );
            match opts.on_exit {
                OnExit::Keep => info!("stopping; pinned programs and maps keep enforcing"),
                OnExit::Remove => {
                    drop(dp);
                    Datapath::uninstall(&opts.pins).context("removing the datapath on exit")?;
                    info!(
                        "stopping; programs and maps removed (on-exit: remove), traffic is no longer judged"
                    );
                }
            }
            return Ok(());
        }

        // Node addresses (unless given).
        if opts.node_addresses.is_empty() {
            match interfaces::local_addresses(&handle).await {
                Ok(addrs) if addrs != node.addresses => {
                    node.addresses = addrs;
                    dirty = true;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "listing node addresses"),
            }
        }

        // Which veth each local pod address is routed to (its binding); the
        // veths of host routes the API has not told of yet are a new pod's.
        let local_ips = local_pod_ips(index.model(), &node.name);
        match interfaces::host_routes(&handle).await {
            Ok(routes) => {
                routed = routes.values().copied().collect();
                let bound: BTreeMap<IpAddr, u32> = routes
                    .into_iter()
                    .filter(|(ip, _)| local_ips.contains(ip))
                    .collect();
                if bound != node.interfaces {
                    node.interfaces = bound;
                    dirty = true;
                }
            }
            Err(e) => warn!(error = %e, "listing routes"),
        }

        let retry_due = retry_at.is_none_or(|t| Instant::now() >= t);
        if dirty && listed.len() == KINDS.len() && retry_due {
            let report = syncer.sync(index.model(), &node, &opts.profile);
            names.clear();
            info!(
                revision = report.revision,
                ops = report.ops,
                failed = report.failed,
                compile_us = report.compile.as_micros() as u64,
                apply_us = report.apply.as_micros() as u64,
                since_change_us = changed_at.map(|t| t.elapsed().as_micros() as u64),
                "programmed"
            );
            dirty = report.failed > 0;
            if dirty {
                retry_at = Some(Instant::now() + retry_backoff);
                retry_backoff = (retry_backoff * 2).min(Duration::from_secs(30));
            } else {
                retry_at = None;
                retry_backoff = Duration::from_millis(500);
            }
            last_sync_ops = report.ops;
            if report.ops > 0 || !reassigned.is_empty() {
                let _ = sweep_tx.send(Sweep {
                    revoke: opts.revoke_on_policy_change,
                    reassigned: std::mem::take(&mut reassigned),
                });
            }
            ready = true;
            shared.metrics.sync_errors.inc_by(report.failed as u64);
            let live: BTreeSet<String> = syncer
                .state()
                .rules
                .values()
                .map(|r| r.origin.to_string())
                .chain(syncer.state().endpoint_info.values().flat_map(|i| {
                    i.ingress_isolated_by
                        .iter()
                        .chain(&i.egress_isolated_by)
                        .map(ToString::to_string)
                }))
                .collect();
            shared.metrics.forget_policies(|p| live.contains(p));
            shared.metrics.revision.set(report.revision as i64);
            shared.metrics.observe_rejections(syncer.state());
            if let Some(t) = changed_at.take() {
                shared
                    .metrics
                    .programming_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }

        // Interfaces: attach to new veths before reporting ready for them.
        match interfaces::veths(&handle, &[]).await {
            Ok(mut links) => {
                // Pins go only with their device: a link the chained CNI
                // plugin made for a pod the agent does not know yet stays.
                let present: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
                dp.forget_missing(&present);
                links.retain(|l| interfaces::has_prefix(&l.name, &opts.interface_prefixes));
                // Without prefixes, only the veths that carry a host route:
                // known pods' and new ones' (judged from their first packet,
                // by unknownPodTraffic, until their policy is programmed).
                // The node's uplink and other software's veths are none of
                // ours.
                if opts.interface_prefixes.is_empty() {
                    links.retain(|l| routed.contains(&l.index));
                }
                let mut failed = false;
                for l in links {
                    if !dp.attached().contains_key(&l.index) {
                        match dp.attach(&l.name, l.index) {
                            Ok(()) => info!(ifname = %l.name, "attached"),
                            Err(e) => {
                                failed = true;
                                error!(ifname = %l.name, error = %chain(&e), "attach failed");
                            }
                        }
                    }
                }
                if !failed && !stale_removed {
                    dp.remove_stale_versions();
                    stale_removed = true;
                }
            }
            Err(e) => warn!(error = %e, "listing interfaces"),
        }

        reconcile_cgroups(
            &mut dp,
            syncer.state(),
            cgroup_root.as_deref(),
            &mut blocked_cgroups,
        );

        emit(
            deny_log.flush(SystemTime::now()),
            opts.deny_log,
            &shared,
            &mut deny_file,
        );

        let status = Status {
            ready,
            revision: syncer.revision(),
            last_sync_ops,
            source_digest: digest.clone(),
            attached: dp.attached().values().cloned().collect(),
            cgroups: blocked_cgroups.keys().map(|b| b.pod.to_string()).collect(),
            cgroups_pending: syncer
                .state()
                .host_network_blocks
                .iter()
                .filter(|b| !blocked_cgroups.contains_key(b))
                .map(|b| b.pod.to_string())
                .collect(),
            endpoints: syncer.state().maps.endpoints.len(),
            map_entries: syncer.mirror().len(),
            rejected: index
                .rejected()
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect(),
            over_budget: syncer
                .state()
                .rejected
                .values()
                .map(ToString::to_string)
                .collect(),
            unsupported: None,
        };
        if let Some(path) = &opts.status_file
            && shared.status.read().map(|s| *s != status).unwrap_or(true)
            && let Err(e) = status.write(path)
        {
            warn!(error = %e, path = %path.display(), "writing status");
        }
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            last_metrics = Instant::now();
            shared.metrics.observe_datapath(&counters::read(&counters));
            let maps = syncer.mirror();
            for (name, n) in [
                ("endpoints", maps.endpoints.len()),
                ("ipcache", maps.ipcache.len()),
                ("policy", maps.policy.len()),
            ] {
                let l = MapLabels { map: name.into() };
                shared.metrics.map_entries.get_or_create(&l).set(n as i64);
            }
            shared
                .metrics
                .rejected_objects
                .set(index.rejected().len() as i64);
        }
        if let Ok(mut s) = shared.status.write() {
            *s = status;
        }
    }
}
