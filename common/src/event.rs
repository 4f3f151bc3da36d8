//! The flow event the datapath sends through the ring buffer (a denied
//! packet, or an allowed new flow for observation), with its encoder and
//! decoder kept here so both sides are tested against real bytes.

use crate::Addr;

/// Why an event was sent: why a packet was denied, or that a flow was
/// allowed and is observed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The endpoint is isolated in this direction and no rule allowed the peer.
    Isolated = 1,
    /// Egress to the cloud metadata address, blocked by the profile.
    MetadataBlock = 2,
    /// An established flow that the current policy no longer allows, cut by
    /// the agent (never sent by the kernel).
    Revoked = 3,
    /// Not a denial: a new flow the datapath allowed, at an endpoint that
    /// observes its flows (`endpoint_flags::OBSERVE_*`).
    Observed = 4,
}

impl Reason {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Reason::Isolated),
            2 => Some(Reason::MetadataBlock),
            3 => Some(Reason::Revoked),
            4 => Some(Reason::Observed),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    pub ts_ns: u64,
    /// Cgroup id for events from cgroup hooks, 0 for tc.
    pub cgroup: u64,
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub endpoint: u32,
    pub identity: u32,
    pub proto: u8,
    pub dir: u8,
    pub reason: u8,
    /// 1 when the event came from a cgroup hook (hostNetwork process).
    pub from_cgroup: u8,
}

pub const FLOW_EVENT_SIZE: usize = core::mem::size_of::<FlowEvent>();
const _: () = assert!(FLOW_EVENT_SIZE == 64);

impl FlowEvent {
    /// Decode an event from the bytes of a ring buffer record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < FLOW_EVENT_SIZE {
            return None;
        }
        // SAFETY: length checked; FlowEvent is plain data valid for any bytes.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
    }

    /// The bytes of this event as the kernel writes them.
    pub fn as_bytes(&self) -> &[u8; FLOW_EVENT_SIZE] {
        // SAFETY: repr(C) plain data without implicit padding (size asserted).
        unsafe { &*(self as *const FlowEvent).cast::<[u8; FLOW_EVENT_SIZE]>() }
    }

    pub fn sport(&self) -> u16 {
        u16::from_be_bytes(self.sport_be)
    }

    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport_be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_bytes() {
        let ev = FlowEvent {
            ts_ns: 7,
            sport_be: 1234u16.to_be_bytes(),
            dport_be: 80u16.to_be_bytes(),
            endpoint: 9,
            identity: 300,
            proto: 6,
            dir: 1,
            reason: Reason::Isolated as u8,
            ..Default::default()
        };
        let back = FlowEvent::decode(ev.as_bytes()).expect("decodes");
        assert_eq!(back, ev);
        assert_eq!(back.dport(), 80);
        assert!(FlowEvent::decode(&ev.as_bytes()[..10]).is_none());
    }
}
