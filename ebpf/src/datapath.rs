//! The tc programs on a pod's host-side veth.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use palisade_common::{
    Addr, Budget, COUNTER_COUNT, Counter, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, EVENTS_BYTES,
    EndpointValue, FlowEvent, FragKey, IDENTITY_ANY, IDENTITY_WORLD, IpcacheValue, MAX_CONNTRACK,
    MAX_ENDPOINTS, MAX_FRAGMENTS, MAX_IFACES, MAX_IPCACHE, MAX_POLICY, POLICY_PREFIX_FULL,
    PROTO_ANY, PROTO_TCP, PolicyKeyData, PolicyValue, Reason, ct_flags, endpoint_flags,
    ipcache_flags, metadata_blocks,
};

use crate::parse::{self, Flow, Icmp, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Allowed: let the next program in the TCX chain (another tool's) have its
/// say; with none left the packet continues as usual.
pub(crate) const PASS: i32 = TC_ACT_UNSPEC;
pub(crate) const DROP: i32 = TC_ACT_SHOT;

#[map(name = "PALISADE_ENDPOINTS")]
static ENDPOINTS: HashMap<Addr, EndpointValue> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "PALISADE_IFACES")]
static IFACES: HashMap<u32, u32> = HashMap::pinned(MAX_IFACES, 0);

#[map(name = "PALISADE_IPCACHE")]
static IPCACHE: LpmTrie<Addr, IpcacheValue> = LpmTrie::pinned(MAX_IPCACHE, 0);

#[map(name = "PALISADE_POLICY")]
static POLICY: LpmTrie<PolicyKeyData, PolicyValue> = LpmTrie::pinned(MAX_POLICY, 0);

#[map(name = "PALISADE_CONNTRACK")]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map(name = "PALISADE_FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragKey, u32> = LruHashMap::pinned(MAX_FRAGMENTS, 0);

#[map(name = "PALISADE_BUDGETS")]
static BUDGETS: LruHashMap<u32, Budget> = LruHashMap::pinned(MAX_ENDPOINTS, 0);

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

/// Load-time knobs (patched by the agent): per endpoint, new flows and deny
/// events are spaced `*_INTERVAL_NS` apart on average with bursts of up to
/// `*_TOLERANCE_NS / *_INTERVAL_NS`. That keeps one pod's flood from
/// evicting other pods' flows from the shared conntrack table or crowding
/// their deny events out of the ring buffer. 0 disables a budget.
#[unsafe(no_mangle)]
static FLOW_INTERVAL_NS: u64 = 0;
#[unsafe(no_mangle)]
static FLOW_TOLERANCE_NS: u64 = 0;
#[unsafe(no_mangle)]
static EVENT_INTERVAL_NS: u64 = 0;
#[unsafe(no_mangle)]
static EVENT_TOLERANCE_NS: u64 = 0;

#[unsafe(no_mangle)]
static OBSERVE_INTERVAL_NS: u64 = 0;
#[unsafe(no_mangle)]
static OBSERVE_TOLERANCE_NS: u64 = 0;

/// What an endpoint's budget is spent on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spend {
    NewFlow,
    DenyEvent,
    Observation,
}

/// Whether one more `spend` fits the endpoint's budget (generic cell rate
/// algorithm: one timestamp a budget).
#[inline(always)]
fn within_budget(endpoint: u32, now: u64, spend: Spend) -> bool {
    // SAFETY: reads of load-time constants; volatile so they are not folded.
    let (interval, tolerance) = unsafe {
        match spend {
            Spend::NewFlow => (
                core::ptr::read_volatile(&FLOW_INTERVAL_NS),
                core::ptr::read_volatile(&FLOW_TOLERANCE_NS),
            ),
            Spend::DenyEvent => (
                core::ptr::read_volatile(&EVENT_INTERVAL_NS),
                core::ptr::read_volatile(&EVENT_TOLERANCE_NS),
            ),
            Spend::Observation => (
                core::ptr::read_volatile(&OBSERVE_INTERVAL_NS),
                core::ptr::read_volatile(&OBSERVE_TOLERANCE_NS),
            ),
        }
    };
    if interval == 0 {
        return true;
    }
    let Some(b) = BUDGETS.get_ptr_mut(endpoint) else {
        let next = now + interval;
        let fresh = Budget {
            flow_tat_ns: if spend == Spend::NewFlow { next } else { 0 },
            event_tat_ns: if spend == Spend::DenyEvent { next } else { 0 },
            observe_tat_ns: if spend == Spend::Observation { next } else { 0 },
        };
        let _ = BUDGETS.insert(endpoint, fresh, 0);
        return true;
    };
    // SAFETY: pointer from a successful lookup; a racing CPU may lose an
    // update, which admits a little more than the budget, never less.
    let tat = unsafe {
        match spend {
            Spend::NewFlow => &mut (*b).flow_tat_ns,
            Spend::DenyEvent => &mut (*b).event_tat_ns,
            Spend::Observation => &mut (*b).observe_tat_ns,
        }
    };
    let start = if *tat > now { *tat } else { now };
    if start - now > tolerance {
        return false;
    }
    *tat = start + interval;
    true
}

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
            return PASS;
        }
        Parsed::Malformed => {
            count(Counter::Malformed);
            return DROP;
        }
        Parsed::Flow(flow) => flow,
    };
    if flow.icmp == Icmp::Control || (flow.icmp == Icmp::ControlToPod && dir == DIR_INGRESS) {
        count(Counter::IcmpControl);
        return PASS;
    }
    let (local, remote) = if dir == DIR_EGRESS {
        (&flow.saddr, &flow.daddr)
    } else {
        (&flow.daddr, &flow.saddr)
    };
    // SAFETY: the context's skb pointer is valid for the program's duration.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The common case first: a packet of a flow opened on this very veth,
    // by or for the endpoint bound to it, decided on one lookup. An entry
    // is only ever made on the local address's own veth, so a forged
    // source (another pod's address) finds none here and goes on to the
    // endpoint check below.
    let key = ct_key(&flow, dir);
    let entry = CONNTRACK.get_ptr_mut(key);
    // SAFETY: pointer from a successful lookup; racing updates of its
    // fields only lose a timestamp refresh or a flag, both harmless.
    if let Some(v) = entry.map(|v| unsafe { &mut *v })
        && v.ifindex == ifindex
    {
        match track(v, &flow, dir) {
            Tracked::Pass => return PASS,
            Tracked::Revoked => {
                count(Counter::Denied);
                return DROP;
            }
            Tracked::Miss => {}
        }
    }
    // SAFETY: the value is read once and copied.
    let Some(ep) = (unsafe { ENDPOINTS.get(local) }).copied() else {
        // The veth of a known pod carries only that pod's addresses: anything
        // else on it is forged (or misrouted) and dropped.
        // SAFETY: the value is only tested for presence.
        if unsafe { IFACES.get(ifindex) }.is_some() {
            count(Counter::Spoofed);
            return DROP;
        }
        count(Counter::NotEndpoint);
        // SAFETY: a read of a load-time constant; volatile so it is not folded.
        return if unsafe { core::ptr::read_volatile(&UNKNOWN_ENDPOINT_DROP) } != 0 {
            DROP
        } else {
            PASS
        };
    };
    // Each endpoint is bound to its veth: another pod cannot send as it, nor
    // receive for it.
    if ep.ifindex != ifindex {
        count(Counter::Spoofed);
        return DROP;
    }
    if flow.later_fragment && follows_allowed_fragment(&flow, dir) {
        return PASS;
    }
    // SAFETY: plain helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // What a new flow may do with the slot its key names. One slot serves
    // both directions: a live flow opened the other way keeps it, so that
    // the sweeper goes on judging the flow by the way it was opened.
    let mut keep_entry = false;
    if let Some(v) = entry {
        // SAFETY: pointer from a successful lookup, read once.
        let v = unsafe { *v };
        if v.ifindex != ifindex {
            // Made on another veth: the address changed hands since.
            let _ = CONNTRACK.remove(key);
            count(Counter::CtStale);
        } else {
            let opened_other_way =
                (v.flags & ct_flags::OPENED_INGRESS != 0) != (dir == DIR_INGRESS);
            keep_entry = opened_other_way && v.flags & ct_flags::REVOKED == 0 && !closing(v.flags);
        }
    }
    if flow.icmp == Icmp::Error {
        return match parse::inner_flow(ctx, &flow) {
            Ok(inner) if related(&flow, &inner, dir, &ep) => {
                count(Counter::IcmpRelated);
                PASS
            }
            _ => decide_new(&flow, dir, &ep, remote, now, keep_entry),
        };
    }
    decide_new(&flow, dir, &ep, remote, now, keep_entry)
}

/// The flow's key from the local endpoint's side: the same for a packet
/// and its reply.
#[inline(always)]
pub(crate) fn ct_key(flow: &Flow, dir: u8) -> CtKey {
    let (local, remote, lport, rport) = if dir == DIR_EGRESS {
        (flow.saddr, flow.daddr, flow.sport, flow.dport)
    } else {
        (flow.daddr, flow.saddr, flow.dport, flow.sport)
    };
    CtKey {
        local,
        remote,
        lport_be: lport.to_be_bytes(),
        rport_be: rport.to_be_bytes(),
        proto: flow.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn frag_key(flow: &Flow, dir: u8) -> FragKey {
    FragKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        id_be: flow.frag_id.to_be_bytes(),
        proto: flow.proto,
        dir,
        _pad: [0; 2],
    }
}

/// The first fragment of this datagram passed: the rest follow it (they
/// carry no ports to judge).
#[inline(always)]
fn follows_allowed_fragment(flow: &Flow, dir: u8) -> bool {
    if FRAGMENTS.get_ptr(frag_key(flow, dir)).is_some() {
        count(Counter::Fragment);
        count(Counter::FragmentTracked);
        count(Counter::CtHit);
        return true;
    }
    false
}

#[inline(always)]
fn remember_fragment(flow: &Flow, dir: u8, rule: u32) {
    if flow.first_fragment {
        let _ = FRAGMENTS.insert(frag_key(flow, dir), rule, 0);
    }
}

/// A TCP segment that opens a connection (SYN without ACK).
#[inline(always)]
fn opens_connection(flow: &Flow) -> bool {
    flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn closing(flags: u32) -> bool {
    flags & ct_flags::RST != 0
        || (flags & ct_flags::FIN_FORWARD != 0 && flags & ct_flags::FIN_REPLY != 0)
}

enum Tracked {
    /// A packet of a live flow: passes.
    Pass,
    /// A packet of a flow the agent revoked: dropped, in both directions.
    Revoked,
    Miss,
}

/// A packet of a tracked flow of this veth's endpoint: refresh it and pass.
/// A SYN matches only a live entry it opened itself: never a reply, an
/// adopted entry or a closed or revoked one, so that it is judged by policy
/// like any new connection.
#[inline(always)]
fn track(v: &mut CtValue, flow: &Flow, dir: u8) -> Tracked {
    let syn = opens_connection(flow);
    let reply = (v.flags & ct_flags::OPENED_INGRESS != 0) != (dir == DIR_INGRESS);
    if v.flags & ct_flags::REVOKED != 0 {
        // Only a new connection the way the cut one went is judged afresh:
        // a SYN from the other side must not reopen the tuple for both.
        return if syn && !reply {
            Tracked::Miss
        } else {
            Tracked::Revoked
        };
    }
    if syn && (reply || v.flags & ct_flags::ADOPTED != 0 || closing(v.flags)) {
        return Tracked::Miss;
    }
    touch(v, flow, reply);
    remember_fragment(flow, dir, v.rule);
    count(if reply {
        Counter::CtReply
    } else {
        Counter::CtHit
    });
    Tracked::Pass
}

/// Jiffies between refreshes of a live flow's idle time: 0.25 s at
/// HZ=1000, 1 s at HZ=250, 2.5 s at HZ=100; far below the shortest idle
/// timeout of a live flow (the sweeper's).
const REFRESH_JIFFIES: u32 = 250;

/// The last tick in low 32 bits: one load (the verifier inlines the helper
/// on 64-bit JITs), where the nanosecond clocks are helper calls.
#[inline(always)]
fn jiffies() -> u32 {
    // SAFETY: plain helper without preconditions.
    unsafe { bpf_jiffies64() as u32 }
}

#[inline(always)]
fn touch(v: &mut CtValue, flow: &Flow, reply: bool) {
    let was_closing = closing(v.flags);
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
    let changed = flags != v.flags;
    if changed {
        v.flags = flags;
    }
    // A closing flow's short timeout runs from its first closing packet:
    // later packets (a peer that keeps sending) do not extend it.
    if was_closing {
        return;
    }
    let ticks = jiffies();
    // Established traffic writes its entry at most every REFRESH_JIFFIES.
    if changed || ticks.wrapping_sub(v.touched_jiffies) >= REFRESH_JIFFIES {
        // The coarse clock (the last tick) is enough for an idle time, and
        // costs a fraction of the exact one.
        // SAFETY: plain helper without preconditions.
        v.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
        v.touched_jiffies = ticks;
    }
}

/// An ICMP error about a tracked flow of this endpoint. The embedded packet
/// is one the endpoint itself sent (ingress) or received (egress), so its
/// local address must be the outer packet's: an error naming someone else's
/// flow is judged as a new packet.
#[inline(always)]
fn related(outer: &Flow, inner: &Flow, dir: u8, ep: &EndpointValue) -> bool {
    let bound = if dir == DIR_INGRESS {
        inner.saddr == outer.daddr
    } else {
        inner.daddr == outer.saddr
    };
    if !bound {
        return false;
    }
    // The embedded packet travelled the other way: its key from that side.
    // SAFETY: pointer from a successful lookup, read once.
    let v = CONNTRACK
        .get_ptr(ct_key(inner, dir ^ 1))
        .map(|v| unsafe { *v });
    v.is_some_and(|v| {
        v.endpoint == ep.id && v.ifindex == ep.ifindex && v.flags & ct_flags::REVOKED == 0
    })
}

#[inline(always)]
pub(crate) fn identity_of(addr: &Addr) -> IpcacheValue {
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
    // The metadata address opens only to a rule naming it exactly (DNS to
    // it, where left open, is judged below like any destination).
    if dir == DIR_EGRESS
        && ep.flags & endpoint_flags::BLOCK_METADATA != 0
        && metadata_blocks(peer.flags, proto, if ports_known { port } else { 0 })
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
    // A Service frontend stands for its backends: only the entries user
    // space computed from them apply, never a rule for any peer.
    let any_peer = peer.flags & ipcache_flags::SERVICE == 0;
    rule_for(ep.id, dir, proto, identity, port, ports_known, any_peer).ok_or(Reason::Isolated)
}

/// A packet no tracked flow accounts for, judged by policy in the direction
/// it travels. A TCP segment without SYN belongs to a connection opened
/// before enforcement (agent start, lost conntrack): it is adopted when
/// policy allows it as it is, never because the reverse direction would be
/// allowed (which would let a forged segment open what policy closes).
#[inline(always)]
fn decide_new(
    flow: &Flow,
    dir: u8,
    ep: &EndpointValue,
    remote: &Addr,
    now: u64,
    keep_entry: bool,
) -> i32 {
    let peer = identity_of(remote);
    let ports_known = !flow.later_fragment && flow.icmp == Icmp::None;
    if flow.later_fragment {
        count(Counter::Fragment);
    }
    // Policy ports are the server's: the local port on ingress, the remote on egress.
    let port = flow.dport;
    match verdict(ep, dir, flow.proto, &peer, port, ports_known) {
        Ok(_) if !flow.later_fragment && !within_budget(ep.id, now, Spend::NewFlow) => {
            // Over its budget of new flows: dropped before it can take a
            // conntrack entry from anyone else.
            count(Counter::RateLimited);
            DROP
        }
        Ok(rule) => {
            let mid_stream = flow.proto == PROTO_TCP && flow.tcp_flags & TCP_SYN == 0;
            if mid_stream {
                // A reset ends whatever it belonged to: nothing to track.
                if flow.tcp_flags & TCP_RST == 0 && !keep_entry {
                    open(flow, dir, ep, &peer, rule, now, ct_flags::ADOPTED);
                }
                count(Counter::Adopted);
            } else {
                if !flow.later_fragment {
                    if !keep_entry {
                        open(flow, dir, ep, &peer, rule, now, 0);
                    }
                    remember_fragment(flow, dir, rule);
                    observe(flow, dir, ep, peer.identity, now);
                }
                count(Counter::Allowed);
            }
            count(if dir == DIR_INGRESS {
                Counter::AllowedIngress
            } else {
                Counter::AllowedEgress
            });
            PASS
        }
        Err(reason) => {
            deny(flow, dir, ep, peer.identity, reason, now);
            DROP
        }
    }
}

#[inline(always)]
fn open(
    flow: &Flow,
    dir: u8,
    ep: &EndpointValue,
    peer: &IpcacheValue,
    rule: u32,
    now: u64,
    flags: u32,
) {
    let opened = if dir == DIR_INGRESS {
        ct_flags::OPENED_INGRESS
    } else {
        0
    };
    let value = CtValue {
        last_seen_ns: now,
        created_ns: now,
        flags: flags | opened,
        rule,
        endpoint: ep.id,
        identity: peer.identity,
        ifindex: ep.ifindex,
        touched_jiffies: jiffies(),
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
    if !within_budget(ep.id, now, Spend::DenyEvent) {
        count(Counter::EventBudget);
        return;
    }
    let _ = send_event(flow, dir, ep, identity, reason, now);
}

/// Sends an allowed new flow to user space, where the endpoint observes
/// its flows and the observation budget has room (else only counted).
#[inline(always)]
fn observe(flow: &Flow, dir: u8, ep: &EndpointValue, identity: u32, now: u64) {
    let bit = if dir == DIR_INGRESS {
        endpoint_flags::OBSERVE_INGRESS
    } else {
        endpoint_flags::OBSERVE_EGRESS
    };
    if ep.flags & bit == 0 {
        return;
    }
    if !within_budget(ep.id, now, Spend::Observation) {
        count(Counter::ObserveBudget);
        return;
    }
    if send_event(flow, dir, ep, identity, Reason::Observed, now) {
        count(Counter::Observed);
    }
}

/// Whether the event made it into the ring (else counted `event_lost`).
#[inline(always)]
fn send_event(
    flow: &Flow,
    dir: u8,
    ep: &EndpointValue,
    identity: u32,
    reason: Reason,
    now: u64,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Counter::EventLost);
        return false;
    };
    entry.write(FlowEvent {
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
    true
}
