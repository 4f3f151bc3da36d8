//! Wake-ups from rtnetlink notifications: links, addresses and routes (IPv4
//! and IPv6) changing in the agent's namespace, so a new pod's veth and host
//! route are noticed at once rather than at the next poll. The messages are
//! not interpreted: any of them means "look again" (the dumps in
//! `interfaces` stay the truth), and a burst coalesces into one wake-up.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::sync::Notify;
use tracing::warn;

const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// Subscribes (on the current tokio runtime) and returns what it notifies.
/// Fails only if the first subscription does; a socket that closes later
/// (e.g. ENOBUFS after an overflow) is reopened, with a wake-up, since
/// changes may have been missed.
pub fn subscribe() -> std::io::Result<Arc<Notify>> {
    let notify = Arc::new(Notify::new());
    let (conn, handle, mut messages) = rtnetlink::new_multicast_connection(&GROUPS)?;
    tokio::spawn(conn);
    let n = notify.clone();
    tokio::spawn(async move {
        let mut _handle = handle;
        loop {
            while messages.next().await.is_some() {
                n.notify_one();
            }
            warn!("rtnetlink notifications stopped; resubscribing (the poll goes on meanwhile)");
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match rtnetlink::new_multicast_connection(&GROUPS) {
                    Ok((conn, h, m)) => {
                        tokio::spawn(conn);
                        (_handle, messages) = (h, m);
                        n.notify_one();
                        break;
                    }
                    Err(e) => warn!(error = %e, "resubscribing to rtnetlink notifications"),
                }
            }
        }
    });
    Ok(notify)
}
