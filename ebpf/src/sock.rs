//! cgroup sock_addr hooks: the metadata block for processes whose packets no
//! pod veth sees (hostNetwork pods). The agent attaches these to the cgroup
//! of each such pod; attachment is the policy, so the programs only look the
//! destination up in the ipcache, where the agent marks the metadata
//! addresses of its settings (one source of truth with the tc programs).
//! These see only TCP/UDP connect and sendmsg; packets of raw sockets are
//! judged by the cgroup_skb/egress program on the same cgroups (skb.rs),
//! with the same decision.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use palisade_common::{Counter, DIR_EGRESS, FlowEvent, Reason, metadata_blocks};

use crate::datapath::{EVENTS, count, identity_of};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn palisade_connect4(ctx: SockAddrContext) -> i32 {
    check4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn palisade_sendmsg4(ctx: SockAddrContext) -> i32 {
    check4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn palisade_connect6(ctx: SockAddrContext) -> i32 {
    check6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn palisade_sendmsg6(ctx: SockAddrContext) -> i32 {
    check6(&ctx)
}

fn check4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's duration.
    let (ip, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4.to_ne_bytes(), sa.user_port, sa.protocol)
    };
    judge(palisade_common::v4_mapped(ip), port, proto)
}

fn check6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let (words, port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip6, sa.user_port, sa.protocol)
    };
    let mut ip = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        ip[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    // A v4-mapped destination is keyed as the IPv4 address it is.
    judge(ip, port, proto)
}

fn judge(daddr: [u8; 16], port_be_u32: u32, proto: u32) -> i32 {
    // user_port holds the port in network order in its low 16 bits.
    let port = u16::from_be(port_be_u32 as u16);
    if metadata_blocks(identity_of(&daddr).flags, proto as u8, port) {
        reject(daddr, port_be_u32, proto)
    } else {
        ALLOW
    }
}

fn reject(daddr: [u8; 16], port_be_u32: u32, proto: u32) -> i32 {
    count(Counter::Denied);
    count(Counter::DeniedEgress);
    count(Counter::MetadataBlocked);
    if let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) {
        // SAFETY: plain helpers without preconditions.
        let (now, cgroup) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_cgroup_id()) };
        // user_port holds the port in network order in its low 16 bits.
        let port = (port_be_u32 as u16).to_ne_bytes();
        entry.write(FlowEvent {
            ts_ns: now,
            cgroup,
            saddr: [0; 16],
            daddr,
            sport_be: [0; 2],
            dport_be: port,
            endpoint: 0,
            identity: 0,
            proto: proto as u8,
            dir: DIR_EGRESS,
            reason: Reason::MetadataBlock as u8,
            from_cgroup: 1,
        });
        entry.submit(0);
    } else {
        count(Counter::EventLost);
    }
    REJECT
}
