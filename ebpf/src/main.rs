//! Palisade's kernel programs.
//!
//! * `palisade_from_pod` (tc ingress of a pod's host-side veth): what the pod
//!   sends, judged against the pod's egress policy.
//! * `palisade_to_pod` (tc egress of the same veth): what the pod receives,
//!   judged against its ingress policy.
//! * `palisade_connect{4,6}` / `palisade_sendmsg{4,6}` (cgroup sock_addr):
//!   the metadata block for processes whose traffic no veth sees
//!   (hostNetwork pods).
//! * `palisade_cgroup_egress` (cgroup_skb/egress, same cgroups): the same
//!   block for every IP packet those pods' sockets send, raw ones included.
//! * `palisade_floor`: the bench's reference program, never attached.
//!
//! Per packet: parse, one conntrack lookup (a packet and its reply share a
//! key). A packet no flow of its veth accounts for adds the endpoint
//! lookup; a new flow adds at most four policy lookups and one conntrack
//! insert.
#![no_std]
#![no_main]

mod datapath;
mod floor;
mod parse;
mod skb;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable panic, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
