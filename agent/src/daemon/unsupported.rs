//! A node whose kernel cannot enforce.

use tracing::{error, warn};

use crate::{api::Shared, dataplane::support, status::Status};

/// Says why once, stays up and not ready (so a rollout stops here and the
/// reason is on /readyz and in the status) until stopped, touching nothing
/// in the kernel.
pub(super) async fn idle(
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
