//! Map names, sizes and the key/value layouts stored in them.

/// Local endpoints (pods on this node), keyed by address.
pub const MAP_ENDPOINTS: &str = "PALISADE_ENDPOINTS";
/// Remote address -> identity, longest prefix wins.
pub const MAP_IPCACHE: &str = "PALISADE_IPCACHE";
/// (endpoint, direction, protocol, identity, port prefix) -> allowing rule.
pub const MAP_POLICY: &str = "PALISADE_POLICY";
/// Connection tracking: 5-tuple + direction of the opening packet.
pub const MAP_CONNTRACK: &str = "PALISADE_CONNTRACK";
/// Per-CPU datapath counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "PALISADE_COUNTERS";
/// Deny events for user space.
pub const MAP_EVENTS: &str = "PALISADE_EVENTS";
/// Host-side ifindex of a pod's veth -> the endpoint bound to it.
pub const MAP_IFACES: &str = "PALISADE_IFACES";
/// Datagrams whose first fragment was allowed: later fragments follow it.
pub const MAP_FRAGMENTS: &str = "PALISADE_FRAGMENTS";
/// Per-endpoint budgets of new flows and deny events ([`Budget`]).
pub const MAP_BUDGETS: &str = "PALISADE_BUDGETS";

/// Program names as they appear in the object file.
pub const PROG_FROM_POD: &str = "palisade_from_pod";
pub const PROG_TO_POD: &str = "palisade_to_pod";
/// The bench's reference program (never attached): the same parse and one
/// conntrack lookup, the floor Palisade's per-packet cost is compared with.
pub const PROG_FLOOR: &str = "palisade_floor";
pub const PROG_CONNECT4: &str = "palisade_connect4";
pub const PROG_CONNECT6: &str = "palisade_connect6";
pub const PROG_SENDMSG4: &str = "palisade_sendmsg4";
pub const PROG_SENDMSG6: &str = "palisade_sendmsg6";
/// cgroup_skb/egress: the metadata block for every packet of a blocked
/// cgroup's sockets (raw ones too), next to the sock_addr hooks.
pub const PROG_CGROUP_EGRESS: &str = "palisade_cgroup_egress";
/// The sock_addr hooks of a blocked cgroup.
pub const PROG_SOCK_ADDR: [&str; 4] = [PROG_CONNECT4, PROG_CONNECT6, PROG_SENDMSG4, PROG_SENDMSG6];

/// Global patched at load: drop traffic of unknown addresses on attached veths.
pub const GLOBAL_UNKNOWN_ENDPOINT_DROP: &str = "UNKNOWN_ENDPOINT_DROP";
/// Globals patched at load (u64 nanoseconds): the spacing and the tolerated
/// burst of new flows, and of deny events, per endpoint (GCRA).
pub const GLOBAL_FLOW_INTERVAL_NS: &str = "FLOW_INTERVAL_NS";
pub const GLOBAL_FLOW_TOLERANCE_NS: &str = "FLOW_TOLERANCE_NS";
pub const GLOBAL_EVENT_INTERVAL_NS: &str = "EVENT_INTERVAL_NS";
pub const GLOBAL_EVENT_TOLERANCE_NS: &str = "EVENT_TOLERANCE_NS";
pub const GLOBAL_OBSERVE_INTERVAL_NS: &str = "OBSERVE_INTERVAL_NS";
pub const GLOBAL_OBSERVE_TOLERANCE_NS: &str = "OBSERVE_TOLERANCE_NS";

/// Bumped whenever a key or value layout below changes; pinned maps of another
/// version are replaced, never reinterpreted.
pub const LAYOUT_VERSION: u32 = 5;

pub const MAX_ENDPOINTS: u32 = 4096;
pub const MAX_IPCACHE: u32 = 262_144;
pub const MAX_POLICY: u32 = 1_048_576;
pub const MAX_CONNTRACK: u32 = 262_144;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const MAX_IFACES: u32 = MAX_ENDPOINTS;
pub const MAX_FRAGMENTS: u32 = 8192;

/// Reserved identities. Allocated identities start at [`IDENTITY_FIRST`].
/// In policy keys: any peer.
pub const IDENTITY_ANY: u32 = 0;
/// An address without an ipcache entry: only rules for any peer match it.
pub const IDENTITY_WORLD: u32 = 1;
pub const IDENTITY_FIRST: u32 = 256;

/// Value of an ipcache entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheValue {
    pub identity: u32,
    pub flags: u32,
}

/// Bits of [`IpcacheValue::flags`].
pub mod ipcache_flags {
    /// An address of this node: traffic from it to local pods is always allowed.
    pub const HOST: u32 = 1;
    /// The cloud metadata address: under the metadata block only rules that
    /// name it exactly open it, never rules for any peer.
    pub const METADATA: u32 = 1 << 1;
    /// A Service frontend address (ClusterIP, external or load-balancer IP):
    /// an isolated endpoint reaches it only through entries for its exact
    /// identity, which the agent derives from the Service's backends; rules
    /// for any peer never open it.
    pub const SERVICE: u32 = 1 << 2;
    /// On a metadata address: DNS (UDP and TCP port 53) to it is not
    /// blocked but judged like any destination (GKE's metadata server is
    /// the pods' resolver).
    pub const METADATA_DNS: u32 = 1 << 3;
}

/// The one port the metadata block leaves open where the agent says so.
pub const DNS_PORT: u16 = 53;

/// Whether the metadata block holds a packet to a peer with ipcache `flags`
/// (`port`: the destination port, 0 when unknown). Shared by the tc and
/// cgroup programs and the agent's simulator, so they cannot disagree.
#[inline(always)]
pub fn metadata_blocks(flags: u32, proto: u8, port: u16) -> bool {
    flags & ipcache_flags::METADATA != 0
        && !(flags & ipcache_flags::METADATA_DNS != 0
            && (proto == PROTO_TCP || proto == PROTO_UDP)
            && port == DNS_PORT)
}

/// Protocol numbers as used in keys; 0 means "any protocol, any port".
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Direction from the pod's point of view, as map keys and events carry it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    #[inline(always)]
    pub const fn wire(self) -> u8 {
        self as u8
    }

    /// `None` for a value the kernel never writes: a corrupt record is not
    /// silently read as ingress.
    pub const fn from_wire(v: u8) -> Option<Self> {
        match v {
            DIR_INGRESS => Some(Direction::Ingress),
            DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

pub const DIR_INGRESS: u8 = Direction::Ingress as u8;
pub const DIR_EGRESS: u8 = Direction::Egress as u8;

/// An address as 16 bytes in network order; IPv4 is v4-mapped (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// An IPv4 address as the kernel side keys it: `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Whether a 16-byte address lies in `::ffff:0:0/96`, where IPv4 lives.
#[inline(always)]
pub fn is_v4_mapped(a: &Addr) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Bits of [`EndpointValue::flags`].
pub mod endpoint_flags {
    pub const INGRESS_ISOLATED: u32 = 1;
    pub const EGRESS_ISOLATED: u32 = 1 << 1;
    /// Egress to the metadata address is denied unless a rule names it.
    pub const BLOCK_METADATA: u32 = 1 << 2;
    /// Isolation comes from the default-deny profile alone (for attribution).
    pub const INGRESS_DEFAULT_DENY: u32 = 1 << 3;
    pub const EGRESS_DEFAULT_DENY: u32 = 1 << 4;
    /// Allowed new flows in this direction are sent to user space (within
    /// the endpoint's observation budget): flow observation, audit-mode
    /// policies and Calico `Log` rules are judged there.
    pub const OBSERVE_INGRESS: u32 = 1 << 5;
    pub const OBSERVE_EGRESS: u32 = 1 << 6;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    pub id: u32,
    pub flags: u32,
    /// Host-side veth the endpoint's traffic must use (0: not bound yet,
    /// which matches no interface, so the endpoint cannot send).
    pub ifindex: u32,
}

/// Data part of a policy LPM key. All fields are byte arrays so that the
/// layout has no padding and the trie compares them in this order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyData {
    pub endpoint_be: [u8; 4],
    pub dir: u8,
    pub proto: u8,
    pub identity_be: [u8; 4],
    pub port_be: [u8; 2],
}

/// Bits of a policy key up to (not including) the port: a key with this
/// prefix length matches every port.
pub const POLICY_PREFIX_NO_PORT: u32 = 80;
/// Bits of a fully specified policy key.
pub const POLICY_PREFIX_FULL: u32 = 96;

impl PolicyKeyData {
    pub const fn new(endpoint: u32, dir: u8, proto: u8, identity: u32, port: u16) -> Self {
        Self {
            endpoint_be: endpoint.to_be_bytes(),
            dir,
            proto,
            identity_be: identity.to_be_bytes(),
            port_be: port.to_be_bytes(),
        }
    }
}

/// Value of a policy entry: which rule allowed it (an index user space resolves).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub rule: u32,
}

/// A flow as its local endpoint sees it, whichever way the packet goes: a
/// packet and its reply compute the same key, so either is one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// The local endpoint's address (source on egress, destination on ingress).
    pub local: Addr,
    pub remote: Addr,
    pub lport_be: [u8; 2],
    pub rport_be: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    pub const SEEN_REPLY: u32 = 1;
    pub const FIN_FORWARD: u32 = 1 << 1;
    pub const FIN_REPLY: u32 = 1 << 2;
    pub const RST: u32 = 1 << 3;
    /// Adopted mid-stream (opened before enforcement began), judged in the
    /// direction of the segment that was seen first.
    pub const ADOPTED: u32 = 1 << 4;
    /// Revoked by the agent: a tombstone that drops the flow's packets both
    /// ways (so neither side can adopt it again mid-stream) until it expires;
    /// a new connection (SYN) on the same tuple is judged afresh.
    pub const REVOKED: u32 = 1 << 5;
    /// Opened by a packet to the local endpoint (ingress); clear: by one it sent.
    pub const OPENED_INGRESS: u32 = 1 << 6;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// CLOCK_MONOTONIC nanoseconds of the last packet in either direction.
    pub last_seen_ns: u64,
    pub created_ns: u64,
    pub flags: u32,
    /// The rule that allowed the opening packet (see [`PolicyValue::rule`]).
    pub rule: u32,
    /// The local endpoint that opened (or accepted) the flow: a packet of
    /// another endpoint never matches it, so an address given to a new pod
    /// starts with no flows.
    pub endpoint: u32,
    /// The peer's identity when the flow was opened; user space re-judges
    /// flows whose peer's identity changed.
    pub identity: u32,
    /// The host-side veth the flow was opened on, the endpoint's own (an
    /// entry is only made after the endpoint check): a packet of the flow
    /// on that veth needs no endpoint lookup. User space drops the flows of
    /// an endpoint that is gone or bound to another veth since, on the
    /// sweep after the sync that saw it.
    pub ifindex: u32,
    /// The low 32 bits of `jiffies` when the datapath last wrote
    /// `last_seen_ns`: a tracked packet reads that one-load clock and only
    /// reads the nanosecond clock (and writes) when a refresh is due. Not
    /// kept by entries user space writes (tombstones), whose next packet
    /// merely refreshes early.
    pub touched_jiffies: u32,
}

/// Value of [`MAP_BUDGETS`]: the theoretical arrival time (CLOCK_MONOTONIC
/// ns) of the next new flow, deny event and observed flow of one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Budget {
    pub flow_tat_ns: u64,
    pub event_tat_ns: u64,
    /// Of the next observed (allowed) new flow sent to user space.
    pub observe_tat_ns: u64,
}

/// Key of [`MAP_FRAGMENTS`]: a datagram as the fragment header names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: Addr,
    pub daddr: Addr,
    /// IPv4 identification (zero-extended) or the IPv6 fragment id.
    pub id_be: [u8; 4],
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Per-CPU counters, by index into [`MAP_COUNTERS`]. [`Counter::OUTCOMES`]
/// partition the packets; the others (fragment, metadata_blocked, ct_new,
/// host_allowed, per-direction verdicts, ...) say more about some of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Allowed = 0,
    Denied = 1,
    CtHit = 2,
    CtReply = 3,
    CtNew = 4,
    CtFull = 5,
    NotEndpoint = 6,
    Malformed = 7,
    Fragment = 8,
    NonIp = 9,
    Spoofed = 10,
    EventLost = 11,
    MetadataBlocked = 12,
    Adopted = 13,
    HostAllowed = 14,
    IcmpRelated = 15,
    IcmpControl = 16,
    AllowedIngress = 17,
    AllowedEgress = 18,
    DeniedIngress = 19,
    DeniedEgress = 20,
    CtStale = 21,
    FragmentTracked = 22,
    RateLimited = 23,
    EventBudget = 24,
    Observed = 25,
    ObserveBudget = 26,
}

pub const COUNTER_COUNT: u32 = 27;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Allowed,
        Counter::Denied,
        Counter::CtHit,
        Counter::CtReply,
        Counter::CtNew,
        Counter::CtFull,
        Counter::NotEndpoint,
        Counter::Malformed,
        Counter::Fragment,
        Counter::NonIp,
        Counter::Spoofed,
        Counter::EventLost,
        Counter::MetadataBlocked,
        Counter::Adopted,
        Counter::HostAllowed,
        Counter::IcmpRelated,
        Counter::IcmpControl,
        Counter::AllowedIngress,
        Counter::AllowedEgress,
        Counter::DeniedIngress,
        Counter::DeniedEgress,
        Counter::CtStale,
        Counter::FragmentTracked,
        Counter::RateLimited,
        Counter::EventBudget,
        Counter::Observed,
        Counter::ObserveBudget,
    ];

    /// Outcomes: every packet the tc programs see adds exactly one of these.
    pub const OUTCOMES: [Counter; 12] = [
        Counter::Allowed,
        Counter::Denied,
        Counter::CtHit,
        Counter::CtReply,
        Counter::NotEndpoint,
        Counter::Malformed,
        Counter::NonIp,
        Counter::Adopted,
        Counter::IcmpRelated,
        Counter::IcmpControl,
        Counter::Spoofed,
        Counter::RateLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "allowed",
            Counter::Denied => "denied",
            Counter::CtHit => "ct_hit",
            Counter::CtReply => "ct_reply",
            Counter::CtNew => "ct_new",
            Counter::CtFull => "ct_full",
            Counter::NotEndpoint => "not_endpoint",
            Counter::Malformed => "malformed",
            Counter::Fragment => "fragment",
            Counter::NonIp => "non_ip",
            Counter::Spoofed => "spoofed",
            Counter::EventLost => "event_lost",
            Counter::MetadataBlocked => "metadata_blocked",
            Counter::Adopted => "adopted",
            Counter::HostAllowed => "host_allowed",
            Counter::IcmpRelated => "icmp_related",
            Counter::IcmpControl => "icmp_control",
            Counter::AllowedIngress => "allowed_ingress",
            Counter::AllowedEgress => "allowed_egress",
            Counter::DeniedIngress => "denied_ingress",
            Counter::DeniedEgress => "denied_egress",
            Counter::CtStale => "ct_stale",
            Counter::FragmentTracked => "fragment_tracked",
            Counter::RateLimited => "rate_limited",
            Counter::EventBudget => "event_budget",
            Counter::Observed => "observed",
            Counter::ObserveBudget => "observe_budget",
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<EndpointValue>() == 12);
    assert!(core::mem::size_of::<IpcacheValue>() == 8);
    assert!(core::mem::size_of::<PolicyKeyData>() == 12);
    assert!(core::mem::size_of::<PolicyValue>() == 4);
    assert!(core::mem::size_of::<CtKey>() == 40);
    assert!(core::mem::size_of::<CtValue>() == 40);
    assert!(core::mem::size_of::<FragKey>() == 40);
    assert!(core::mem::size_of::<Budget>() == 24);
};

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are plain `#[repr(C)]` data with explicit padding.
    unsafe impl aya::Pod for super::EndpointValue {}
    unsafe impl aya::Pod for super::IpcacheValue {}
    unsafe impl aya::Pod for super::PolicyKeyData {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::super::FlowEvent {}
}
