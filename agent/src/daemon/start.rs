//! What the daemon starts before its loop: the HTTP endpoints, the source,
//! and the datapath with its conntrack thread and netlink connections.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use palisade_common::FlowEvent;
use tokio::{io::unix::AsyncFd, sync::Notify};
use tracing::{error, info, warn};

use super::{Options, SourceConfig, agent::Kernel};
use crate::{
    api::{self, Shared},
    dataplane::{
        Datapath,
        conntrack::{self, PinnedMaps},
        kernel, link_events,
    },
    source::{self, Batch, dir::DirSource},
    sync::Syncer,
};

/// What wakes the loop besides the source, the tick and signals.
pub(super) struct Wakes {
    /// Flow events from the datapath (denials and observed allowed flows).
    pub events: AsyncFd<RingBuf<MapData>>,
    /// Flows the conntrack thread cut, as deny events.
    pub revoked: tokio::sync::mpsc::Receiver<FlowEvent>,
    /// Link, address and route changes.
    pub netlink_changed: Arc<Notify>,
}

/// Loads the datapath, adopting what a previous run pinned, and starts the
/// conntrack thread and the netlink connections.
pub(super) fn open_kernel(opts: &Options, shared: &Shared) -> anyhow::Result<(Kernel, Wakes)> {
    let mut dp = Datapath::open_sized(opts.pins.clone(), opts.unknown_endpoint, opts.map_sizes)
        .context("loading the datapath")?;
    let observed = dp.read_maps();
    info!(entries = observed.len(), "adopted pinned maps");
    // As the kernel holds them: --*-map-size, or the run that pinned them.
    shared
        .metrics
        .observe_capacities(&kernel::capacities(&opts.pins));
    let counters = dp.take_counters()?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so
    // the fd cannot be closed while registered.
    let events =
        unsafe { AsyncFd::register(dp.take_events()?) }.context("polling the event ring")?;
    let (sweeps, sweep_rx) = std::sync::mpsc::channel();
    let (revoked_tx, revoked) = tokio::sync::mpsc::channel::<FlowEvent>(4096);
    let ct = dp.take_conntrack()?;
    let view = PinnedMaps::open(dp.pins()).context("opening the pinned maps")?;
    std::thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || conntrack::run(ct, view, sweep_rx, revoked_tx))
        .context("starting the conntrack thread")?;
    let (conn, netlink, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    // Changes wake the loop at once; the tick stays as the safety net (and
    // the only way, should subscribing fail).
    let netlink_changed = link_events::subscribe().unwrap_or_else(|e| {
        warn!(error = %e, "no rtnetlink notifications; interfaces are found by polling only");
        Arc::default()
    });
    let syncer = Syncer::new(dp.kernel_maps()?, observed)
        .with_budgets(opts.budgets)
        .with_observation(opts.observe_flows);
    let kernel = Kernel {
        dp,
        syncer,
        counters,
        netlink,
        sweeps,
    };
    let wakes = Wakes {
        events,
        revoked,
        netlink_changed,
    };
    Ok((kernel, wakes))
}

pub(super) fn serve_http(opts: &Options, shared: &Arc<Shared>) {
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
}

pub(super) fn spawn_source(opts: &Options) -> tokio::sync::mpsc::Receiver<Batch> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(64);
    match &opts.source {
        SourceConfig::Dir(dir) => {
            tokio::spawn(source::dir::run(DirSource::new(dir), opts.poll, tx));
        }
        SourceConfig::Kube(client) => {
            tokio::spawn(source::kube::run(client.clone(), tx));
        }
    }
    rx
}
