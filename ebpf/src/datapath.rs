//! The tc programs on a pod's host-side veth.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use palisade_common::{
    Addr, COUNTER_COUNT, Counter, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, DenyEvent, EVENTS_BYTES,
    EndpointValue, IDENTITY_ANY, IDENTITY_WORLD, IpcacheValue, MAX_CONNTRACK, MAX_ENDPOINTS,
    MAX_IPCACHE, MAX_POLICY, POLICY_PREFIX_FULL, PROTO_ANY, PROTO_TCP, PolicyKeyData, PolicyValue,
    Reason, ct_flags, endpoint_flags, ipcache_flags,
};

use crate::parse::{self, Flow, Icmp, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

#[map(name = "PALISADE_ENDPOINTS")]
static ENDPOINTS: aya_ebpf::maps::HashMap<Addr, EndpointValue> =
    aya_ebpf::maps::HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "PALISADE_IPCACHE")]
static IPCACHE: LpmTrie<Addr, IpcacheValue> = LpmTrie::pinned(MAX_IPCACHE, 0);

#[map(name = "PALISADE_POLICY")]
static POLICY: LpmTrie<PolicyKeyData, PolicyValue> = LpmTrie::pinned(MAX_POLICY, 0);

#[map(name = "PALISADE_CONNTRACK")]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map(name = "PALISADE_COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

#[map(name = "PALISADE_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// Load-time knob (patched by the agent): 1 drops IP traffic of addresses
/// that are not (yet) known endpoints on an attached veth. That closes the
/// start-up race of a new pod whose veth exists before the agent has its
/// address and policy; 0 passes such traffic.
#[unsafe(no_mangle)]
static UNKNOWN_ENDPOINT_DROP: u8 = 0;

#[inline(always)]
pub(crate) fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}

#[classifier]
pub fn palisade_from_pod(ctx: TcContext) -> i32 {
    judge(&ctx, DIR_EGRESS)
}

#[classifier]
pub fn palisade_to_pod(ctx: TcContext) -> i32 {
    judge(&ctx, DIR_INGRESS)
}

/// Malformed IP packets are dropped (and counted): a pod has no business
/// sending them and the stack would drop most of them anyway.
#[inline(always)]
fn judge(ctx: &TcContext, dir: u8) -> i32 {
    let flow = match parse::parse(ctx) {
        Parsed::NotIp => {
            count(Counter::NonIp);
            return TC_ACT_OK;
        }
        Parsed::Malformed => {
            count(Counter::Malformed);
            return TC_ACT_SHOT;
        }
        Parsed::Flow(flow) => flow,
    };
    if flow.icmp == Icmp::Control {
        count(Counter::IcmpControl);
        return TC_ACT_OK;
    }
    let (local, remote) = if dir == DIR_EGRESS {
        (&flow.saddr, &flow.daddr)
    } else {
        (&flow.daddr, &flow.saddr)
    };
    // SAFETY: the value is read once and copied.
    let Some(ep) = (unsafe { ENDPOINTS.get(local) }).copied() else {
        count(Counter::NotEndpoint);
        // SAFETY: a read of a load-time constant; volatile so it is not folded.
        return if unsafe { core::ptr::read_volatile(&UNKNOWN_ENDPOINT_DROP) } != 0 {
            TC_ACT_SHOT
        } else {
            TC_ACT_OK
        };
    };
    let now = unsafe { bpf_ktime_get_ns() };

    if track_existing(&flow, dir, now) {
        return TC_ACT_OK;
    }
    if flow.icmp == Icmp::Error {
        return match parse::inner_flow(ctx, &flow) {
            Ok(inner) if related(&inner, dir) => {
                count(Counter::IcmpRelated);
                TC_ACT_OK
            }
            _ => decide_new(&flow, dir, &ep, remote, now),
        };
    }
    decide_new(&flow, dir, &ep, remote, now)
}

#[inline(always)]
fn ct_key(flow: &Flow, dir: u8) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport_be: flow.sport.to_be_bytes(),
        dport_be: flow.dport.to_be_bytes(),
        proto: flow.proto,
        dir,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn reversed(key: &CtKey) -> CtKey {
    CtKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport_be: key.dport_be,
        dport_be: key.sport_be,
        proto: key.proto,
        dir: key.dir ^ 1,
        _pad: [0; 2],
    }
}

/// A packet of a known flow, in either direction: refresh it and pass.
#[inline(always)]
fn track_existing(flow: &Flow, dir: u8, now: u64) -> bool {
    let key = ct_key(flow, dir);
    if let Some(v) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup; racing updates of these
        // fields only lose a timestamp refresh or a flag, both harmless.
        unsafe { touch(&mut *v, flow, now, false) };
        count(Counter::CtHit);
        return true;
    }
    if let Some(v) = CONNTRACK.get_ptr_mut(reversed(&key)) {
        unsafe { touch(&mut *v, flow, now, true) };
        count(Counter::CtReply);
        return true;
    }
    false
}

#[inline(always)]
fn touch(v: &mut CtValue, flow: &Flow, now: u64, reply: bool) {
    // Refresh at most every ~1s so established traffic rarely writes.
    if now.wrapping_sub(v.last_seen_ns) > 1_000_000_000 {
        v.last_seen_ns = now;
    }
    let mut flags = v.flags;
    if reply {
        flags |= ct_flags::SEEN_REPLY;
    }
    if flow.proto == PROTO_TCP {
        if flow.tcp_flags & TCP_RST != 0 {
            flags |= ct_flags::RST;
        }
        if flow.tcp_flags & TCP_FIN != 0 {
            flags |= if reply {
                ct_flags::FIN_REPLY
            } else {
                ct_flags::FIN_FORWARD
            };
        }
    }
    if flags != v.flags {
        v.flags = flags;
        v.last_seen_ns = now;
    }
}

/// An ICMP error whose embedded packet belongs to a tracked flow. The
/// embedded packet travelled the other way, so it is looked up as sent.
#[inline(always)]
fn related(inner: &Flow, dir: u8) -> bool {
    let key = ct_key(inner, dir ^ 1);
    CONNTRACK.get_ptr(key).is_some() || CONNTRACK.get_ptr(reversed(&key)).is_some()
}

#[inline(always)]
fn identity_of(addr: &Addr) -> IpcacheValue {
    IPCACHE
        .get(Key::new(128, *addr))
        .copied()
        .unwrap_or(IpcacheValue {
            identity: IDENTITY_WORLD,
            flags: 0,
        })
}

#[inline(always)]
fn policy_lookup(ep: u32, dir: u8, proto: u8, identity: u32, port: u16) -> Option<u32> {
    POLICY
        .get(Key::new(
            POLICY_PREFIX_FULL,
            PolicyKeyData::new(ep, dir, proto, identity, port),
        ))
        .map(|v| v.rule)
}

/// Rules for this peer, then (if `any_peer`) rules for any peer. Each pair is
/// (this protocol and port) then (any protocol, any port).
#[inline(always)]
fn rule_for(
    ep: u32,
    dir: u8,
    proto: u8,
    identity: u32,
    port: u16,
    ports_known: bool,
    any_peer: bool,
) -> Option<u32> {
    if ports_known && let Some(r) = policy_lookup(ep, dir, proto, identity, port) {
        return Some(r);
    }
    if let Some(r) = policy_lookup(ep, dir, PROTO_ANY, identity, 0) {
        return Some(r);
    }
    if !any_peer {
        return None;
    }
    if ports_known && let Some(r) = policy_lookup(ep, dir, proto, IDENTITY_ANY, port) {
        return Some(r);
    }
    policy_lookup(ep, dir, PROTO_ANY, IDENTITY_ANY, 0)
}

const RULE_UNISOLATED: u32 = 0;
const RULE_HOST: u32 = u32::MAX;

/// Policy verdict for a packet at `dir` of endpoint `ep` with the given peer.
/// `port` is the local port for ingress, the remote port for egress.
#[inline(always)]
fn verdict(
    ep: &EndpointValue,
    dir: u8,
    proto: u8,
    peer: &IpcacheValue,
    port: u16,
    ports_known: bool,
) -> Result<u32, Reason> {
    let identity = peer.identity;
    let isolated_bit = if dir == DIR_INGRESS {
        endpoint_flags::INGRESS_ISOLATED
    } else {
        endpoint_flags::EGRESS_ISOLATED
    };
    // The metadata address opens only to a rule naming it exactly.
    if dir == DIR_EGRESS
        && peer.flags & ipcache_flags::METADATA != 0
        && ep.flags & endpoint_flags::BLOCK_METADATA != 0
    {
        return rule_for(ep.id, dir, proto, identity, port, ports_known, false)
            .ok_or(Reason::MetadataBlock);
    }
    if ep.flags & isolated_bit == 0 {
        return Ok(RULE_UNISOLATED);
    }
    if dir == DIR_INGRESS && peer.flags & ipcache_flags::HOST != 0 {
        count(Counter::HostAllowed);
        return Ok(RULE_HOST);
    }
    rule_for(ep.id, dir, proto, identity, port, ports_known, true).ok_or(Reason::Isolated)
}

#[inline(always)]
fn decide_new(flow: &Flow, dir: u8, ep: &EndpointValue, remote: &Addr, now: u64) -> i32 {
    let peer = identity_of(remote);
    let ports_known = !flow.later_fragment && flow.icmp == Icmp::None;
    if flow.later_fragment {
        count(Counter::Fragment);
    }
    // Policy ports are the server's: the local port on ingress, the remote on egress.
    let port = flow.dport;
    match verdict(ep, dir, flow.proto, &peer, port, ports_known) {
        Ok(rule) => {
            if !flow.later_fragment {
                open(flow, dir, rule, now, 0);
            }
            count(Counter::Allowed);
            count(if dir == DIR_INGRESS {
                Counter::AllowedIngress
            } else {
                Counter::AllowedEgress
            });
            TC_ACT_OK
        }
        Err(reason) => {
            // A TCP segment with no SYN and no tracked flow belongs to a
            // connection opened before enforcement (agent start, map
            // replacement). Adopt it when the current policy allows the
            // connection the other way round, i.e. this is its reply.
            if flow.proto == PROTO_TCP
                && flow.tcp_flags & TCP_SYN == 0
                && flow.tcp_flags & TCP_ACK != 0
                && reason == Reason::Isolated
            {
                let back = dir ^ 1;
                // Seen the other way round, the server's port is our source port.
                let back_port = flow.sport;
                if let Ok(rule) = verdict(ep, back, flow.proto, &peer, back_port, true) {
                    let rev = Flow {
                        saddr: flow.daddr,
                        daddr: flow.saddr,
                        sport: flow.dport,
                        dport: flow.sport,
                        ..*flow
                    };
                    open(
                        &rev,
                        back,
                        rule,
                        now,
                        ct_flags::ADOPTED | ct_flags::SEEN_REPLY,
                    );
                    count(Counter::Adopted);
                    return TC_ACT_OK;
                }
            }
            deny(flow, dir, ep, peer.identity, reason, now);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn open(flow: &Flow, dir: u8, rule: u32, now: u64, flags: u32) {
    let value = CtValue {
        last_seen_ns: now,
        created_ns: now,
        flags,
        rule,
    };
    if CONNTRACK.insert(ct_key(flow, dir), value, 0).is_err() {
        count(Counter::CtFull);
    } else {
        count(Counter::CtNew);
    }
}

#[inline(always)]
fn deny(flow: &Flow, dir: u8, ep: &EndpointValue, identity: u32, reason: Reason, now: u64) {
    count(Counter::Denied);
    count(if dir == DIR_INGRESS {
        Counter::DeniedIngress
    } else {
        Counter::DeniedEgress
    });
    if reason == Reason::MetadataBlock {
        count(Counter::MetadataBlocked);
    }
    let Some(mut entry) = EVENTS.reserve::<DenyEvent>(0) else {
        count(Counter::EventLost);
        return;
    };
    entry.write(DenyEvent {
        ts_ns: now,
        cgroup: 0,
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport_be: flow.sport.to_be_bytes(),
        dport_be: flow.dport.to_be_bytes(),
        endpoint: ep.id,
        identity,
        proto: flow.proto,
        dir,
        reason: reason as u8,
        from_cgroup: 0,
    });
    entry.submit(0);
}
