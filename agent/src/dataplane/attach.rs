//! Which veths get the programs, and keeping them attached as pods come
//! and go (see `interfaces` for why only these).

use std::collections::BTreeSet;

use tracing::{error, info, warn};

use crate::{
    dataplane::{
        Datapath,
        interfaces::{self, Interface},
    },
    error_chain::chain,
};

pub struct Attacher {
    prefixes: Vec<String>,
    /// Pins of older layout versions go once, after this version is
    /// attached everywhere.
    stale_removed: bool,
}

impl Attacher {
    /// `prefixes`: the interface name prefixes to attach to (bridge CNIs);
    /// none: the veths that carry a host route.
    pub fn new(prefixes: Vec<String>) -> Self {
        Self {
            prefixes,
            stale_removed: false,
        }
    }

    /// Attaches to new veths (before reporting ready for them) and forgets
    /// the pins of vanished ones; `routed`: the interfaces host routes
    /// point at.
    pub async fn reconcile(
        &mut self,
        dp: &mut Datapath,
        handle: &rtnetlink::Handle,
        routed: &BTreeSet<u32>,
    ) {
        let links = match interfaces::veths(handle, &[]).await {
            Ok(links) => links,
            Err(e) => {
                warn!(error = %e, "listing interfaces");
                return;
            }
        };
        // Pins go only with their device: a link the chained CNI plugin
        // made for a pod the agent does not know yet stays.
        let present: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
        dp.forget_missing(&present);
        let mut failed = false;
        for l in ours(links, &self.prefixes, routed) {
            if dp.attached().contains_key(&l.index) {
                continue;
            }
            match dp.attach(&l.name, l.index) {
                Ok(()) => info!(ifname = %l.name, "attached"),
                Err(e) => {
                    failed = true;
                    error!(ifname = %l.name, error = %chain(&e), "attach failed");
                }
            }
        }
        if !failed && !self.stale_removed {
            dp.remove_stale_versions();
            self.stale_removed = true;
        }
    }
}

/// The veths to attach to: those `prefixes` name or, without prefixes,
/// those that carry a host route: known pods' and new ones' (judged from
/// their first packet, by unknownPodTraffic, until their policy is
/// programmed). The node's uplink and other software's veths are none of
/// ours.
fn ours(mut links: Vec<Interface>, prefixes: &[String], routed: &BTreeSet<u32>) -> Vec<Interface> {
    links.retain(|l| interfaces::has_prefix(&l.name, prefixes));
    if prefixes.is_empty() {
        links.retain(|l| routed.contains(&l.index));
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Interface {
        Interface {
            index,
            name: name.into(),
        }
    }

    #[test]
    fn prefixes_name_the_veths_else_host_routes_do() {
        let links = vec![link(2, "eth0"), link(5, "cali1"), link(6, "veth9")];
        let routed = BTreeSet::from([6]);
        assert_eq!(
            ours(links.clone(), &["cali".into()], &routed),
            [link(5, "cali1")]
        );
        assert_eq!(ours(links, &[], &routed), [link(6, "veth9")]);
    }
}
