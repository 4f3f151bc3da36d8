//! The conntrack table's upkeep, on a thread of its own so that walking a
//! large table never stalls syncs or deny events: idle flows expire, and
//! after a sync every tracked flow is checked against what the kernel maps
//! now say, exactly as a packet would be judged ([`PinnedMaps`] is a
//! [`MapView`] over the pinned maps).
//!
//! A flow is dropped when its local endpoint is gone, is bound to another
//! veth than the one the flow was opened on, or another pod holds the
//! address (the kernel decides a tracked packet on its entry alone when it
//! comes on that veth, so this is what ends such flows), when
//! the peer's address changed hands, and when the current policy no longer
//! allows it (then a deny record says so): with revocation on, every flow is
//! judged again after a sync; with it off, only flows whose peer's identity
//! changed.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::Duration,
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use palisade_common::{
    Addr, CtKey, CtValue, EndpointValue, FlowEvent, IDENTITY_WORLD, IpcacheValue, MAP_ENDPOINTS,
    MAP_IPCACHE, MAP_POLICY, POLICY_PREFIX_FULL, PROTO_TCP, PROTO_UDP, PolicyKeyData, PolicyValue,
    Reason, ct_flags,
};
use tracing::{debug, info, warn};

use super::{PinPaths, wire};
use crate::policy::{
    Direction,
    sim::{self, MapView},
    state::{EndpointEntry, IpcacheEntry},
};

/// How often idle flows are looked for when nothing else happens.
pub const GC_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest time between two sweeps that syncs ask for.
const SWEEP_SPACING: Duration = Duration::from_millis(500);

/// How long a tracked flow may stay idle before it is forgotten.
pub fn timeout(key: &CtKey, v: &CtValue) -> Duration {
    let closing = v.flags & ct_flags::RST != 0
        || (v.flags & ct_flags::FIN_FORWARD != 0 && v.flags & ct_flags::FIN_REPLY != 0);
    match key.proto {
        _ if v.flags & ct_flags::REVOKED != 0 => Duration::from_secs(10),
        PROTO_TCP if closing => Duration::from_secs(10),
        PROTO_TCP if v.flags & ct_flags::SEEN_REPLY != 0 => Duration::from_secs(6 * 3600),
        PROTO_TCP => Duration::from_secs(60),
        PROTO_UDP if v.flags & ct_flags::SEEN_REPLY != 0 => Duration::from_secs(180),
        _ => Duration::from_secs(30),
    }
}

/// What a sync asks of the next pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Re-judge every flow by the current policy and cut what it denies.
    pub revoke: bool,
    /// Addresses now held by another pod (or by none): their flows go.
    pub reassigned: BTreeSet<IpAddr>,
}

impl Sweep {
    fn merge(&mut self, other: Sweep) {
        self.revoke |= other.revoke;
        self.reassigned.extend(other.reassigned);
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub expired: usize,
    pub stale: usize,
    pub revoked: usize,
    pub rejudged: usize,
}

/// Read-only handles on the pinned endpoint, ipcache and policy maps.
pub struct PinnedMaps {
    endpoints: HashMap<MapData, Addr, EndpointValue>,
    ipcache: LpmTrie<MapData, Addr, IpcacheValue>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
}

impl PinnedMaps {
    pub fn open(pins: &PinPaths) -> Result<Self, MapError> {
        let data = |name: &str| MapData::from_pin(pins.maps().join(name));
        Ok(Self {
            endpoints: HashMap::try_from(Map::HashMap(data(MAP_ENDPOINTS)?))?,
            ipcache: LpmTrie::try_from(Map::LpmTrie(data(MAP_IPCACHE)?))?,
            policy: LpmTrie::try_from(Map::LpmTrie(data(MAP_POLICY)?))?,
        })
    }
}

impl MapView for PinnedMaps {
    fn endpoint(&self, local: IpAddr) -> Option<EndpointEntry> {
        self.endpoints
            .get(&wire::addr(local), 0)
            .ok()
            .map(|v| EndpointEntry {
                id: v.id,
                flags: v.flags,
                ifindex: v.ifindex,
            })
    }

    fn ipcache(&self, addr: IpAddr) -> IpcacheEntry {
        let v = self
            .ipcache
            .get(&Key::new(128, wire::addr(addr)), 0)
            .unwrap_or(IpcacheValue {
                identity: IDENTITY_WORLD,
                flags: 0,
            });
        IpcacheEntry {
            identity: v.identity,
            flags: v.flags,
        }
    }

    fn policy(&self, ep: u32, dir: Direction, proto: u8, identity: u32, port: u16) -> Option<u32> {
        let key = Key::new(
            POLICY_PREFIX_FULL,
            PolicyKeyData::new(ep, dir.wire(), proto, identity, port),
        );
        self.policy.get(&key, 0).ok().map(|v| v.rule)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// One walk over the table: expiry always, the checks of `sweep` if given.
/// Revoked flows are handed to `revoked` as deny events.
pub fn pass(
    ct: &mut HashMap<MapData, CtKey, CtValue>,
    view: &impl MapView,
    sweep: Option<&Sweep>,
    mut revoked: impl FnMut(FlowEvent),
) -> PassReport {
    let now = monotonic_ns();
    let mut report = PassReport::default();
    let entries: Vec<(CtKey, CtValue)> = ct.iter().flatten().collect();
    for (k, v) in entries {
        if Duration::from_nanos(now.saturating_sub(v.last_seen_ns)) > timeout(&k, &v) {
            let _ = ct.remove(&k);
            report.expired += 1;
            continue;
        }
        let Some(sweep) = sweep else { continue };
        if v.flags & ct_flags::REVOKED != 0 {
            continue;
        }
        let (local, remote) = (wire::ip(&k.local), wire::ip(&k.remote));
        let bound = view
            .endpoint(local)
            .is_some_and(|e| e.id == v.endpoint && e.ifindex == v.ifindex);
        if !bound || sweep.reassigned.contains(&remote) || sweep.reassigned.contains(&local) {
            let _ = ct.remove(&k);
            report.stale += 1;
            continue;
        }
        // A flow is bound to the identity its peer had when it opened: a
        // peer that became someone else (relabelled, or another kind of
        // address) is judged again even when revocation is off.
        let peer = view.ipcache(remote);
        if !sweep.revoke && peer.identity == v.identity {
            continue;
        }
        report.rejudged += 1;
        // Judged as its opening packet was: the server's port is the local
        // one for a flow opened to the pod, the remote one for a flow it opened.
        let (dir, port) = if v.flags & ct_flags::OPENED_INGRESS != 0 {
            (Direction::Ingress, u16::from_be_bytes(k.lport_be))
        } else {
            (Direction::Egress, u16::from_be_bytes(k.rport_be))
        };
        if sim::judge(view, local, remote, dir, k.proto, port).allows() {
            continue;
        }
        // The kernel may have reopened the slot since it was read (a new
        // connection on the tuple): that one is judged by the next pass.
        let reopened = |cur: &CtValue| {
            cur.created_ns != v.created_ns
                || (cur.flags ^ v.flags) & (ct_flags::OPENED_INGRESS | ct_flags::REVOKED) != 0
        };
        let Ok(cur) = ct.get(&k, 0) else { continue };
        if reopened(&cur) {
            continue;
        }
        // A tombstone rather than a removal: a segment of the cut flow must
        // not be adopted mid-stream in the other direction (which a server
        // still sending would otherwise do, where its egress is open).
        let tombstone = CtValue {
            last_seen_ns: now,
            flags: cur.flags | ct_flags::REVOKED | ct_flags::RST,
            ..cur
        };
        let _ = ct.insert(k, tombstone, 0);
        report.revoked += 1;
        // The record names the flow as its opening packet went.
        let ((saddr, sport_be), (daddr, dport_be)) = if dir == Direction::Egress {
            ((k.local, k.lport_be), (k.remote, k.rport_be))
        } else {
            ((k.remote, k.rport_be), (k.local, k.lport_be))
        };
        revoked(FlowEvent {
            ts_ns: now,
            cgroup: 0,
            saddr,
            daddr,
            sport_be,
            dport_be,
            endpoint: v.endpoint,
            identity: peer.identity,
            proto: k.proto,
            dir: dir.wire(),
            reason: Reason::Revoked as u8,
            from_cgroup: 0,
        });
    }
    report
}

/// Runs passes until `sweeps` closes: one per batch of sweep requests (they
/// are coalesced), and one for expiry every [`GC_INTERVAL`] otherwise.
pub fn run(
    mut ct: HashMap<MapData, CtKey, CtValue>,
    view: PinnedMaps,
    sweeps: Receiver<Sweep>,
    revoked: tokio::sync::mpsc::Sender<FlowEvent>,
) {
    let mut last_pass: Option<std::time::Instant> = None;
    loop {
        let sweep = match sweeps.recv_timeout(GC_INTERVAL) {
            Ok(mut s) => {
                // Back-to-back syncs: one pass per SWEEP_SPACING at most, so
                // a busy source cannot keep this thread walking the table.
                if let Some(wait) = last_pass
                    .map(|t| SWEEP_SPACING.saturating_sub(t.elapsed()))
                    .filter(|w| !w.is_zero())
                {
                    std::thread::sleep(wait);
                }
                while let Ok(more) = sweeps.try_recv() {
                    s.merge(more);
                }
                Some(s)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        last_pass = Some(std::time::Instant::now());
        let mut lost = 0usize;
        let report = pass(&mut ct, &view, sweep.as_ref(), |ev| {
            if revoked.try_send(ev).is_err() {
                lost += 1;
            }
        });
        if lost > 0 {
            warn!(lost, "revoked-flow records dropped: the agent is behind");
        }
        if report.revoked > 0 || report.stale > 0 {
            info!(
                revoked = report.revoked,
                stale = report.stale,
                expired = report.expired,
                "conntrack sweep"
            );
        } else if report.expired > 0 || report.rejudged > 0 {
            debug!(?report, "conntrack pass");
        }
    }
}
