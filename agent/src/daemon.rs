//! The agent's main loop: start what it needs (see `start`), then hand
//! each wake (a tick, a netlink change, deny events, source batches) to
//! the [`Agent`](agent::Agent) until a signal stops it.

mod agent;
mod backoff;
mod options;
mod start;
mod unsupported;

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use palisade_common::FlowEvent;
use tokio::io::unix::AsyncFdReadyMutGuard;
use tracing::{info, info_span};

use self::{
    agent::Agent,
    start::{open_kernel, serve_http, spawn_source},
};
pub use self::{
    agent::apply_batch,
    options::{OnExit, Options, SourceConfig},
};
pub use crate::flows::sink::LogFormat;
use crate::{
    api::Shared,
    dataplane::{Datapath, support},
};

/// Deny events read per wake of the event branch.
const EVENTS_PER_WAKE: usize = 4096;

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let span = info_span!("agent", node = %opts.node_name);
    let _enter = span.enter();
    opts.profile.validate()?;

    let shared = Arc::new(Shared::with_max_observed(opts.max_observed_flows));
    serve_http(&opts, &shared);
    let problems = support::assess(&support::probe(opts.pins.root()));
    if !problems.is_empty() {
        return unsupported::idle(&problems, &shared, opts.status_file.as_deref()).await;
    }
    let (kernel, mut wakes) = open_kernel(&opts, &shared)?;
    let mut source_rx = spawn_source(&opts);
    let mut agent = Agent::new(&opts, shared, kernel)?;

    let mut tick = tokio::time::interval(opts.poll);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wakes.netlink_changed.notified() => {}
            Some(ev) = wakes.revoked.recv() => {
                agent.on_events([ev]);
                continue;
            }
            guard = wakes.events.readable_mut() => {
                drain_ring(guard?, &mut agent);
                continue;
            }
            batch = source_rx.recv() => {
                let Some(batch) = batch else {
                    anyhow::bail!("the source stopped");
                };
                let queued = std::iter::from_fn(|| source_rx.try_recv().ok());
                agent.on_batch(std::iter::once(batch).chain(queued));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        agent.on_tick().await;
    }
    agent.stop();
    match opts.on_exit {
        OnExit::Keep => info!("stopping; pinned programs and maps keep enforcing"),
        OnExit::Remove => {
            drop(agent);
            Datapath::uninstall(&opts.pins).context("removing the datapath on exit")?;
            info!(
                "stopping; programs and maps removed (on-exit: remove), traffic is no longer judged"
            );
        }
    }
    Ok(())
}

/// A bounded batch per wake: under a flood the other branches (syncs,
/// signals) still get their turn.
fn drain_ring(mut guard: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>, agent: &mut Agent) {
    let ring = guard.get_inner_mut();
    let mut drained = 0;
    let events = std::iter::from_fn(|| {
        if drained == EVENTS_PER_WAKE {
            return None;
        }
        let item = ring.next()?;
        drained += 1;
        Some(FlowEvent::decode(&item))
    });
    agent.on_events(events.flatten());
    if drained < EVENTS_PER_WAKE {
        guard.clear_ready();
    }
}
