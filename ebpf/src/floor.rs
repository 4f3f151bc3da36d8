//! `palisade_floor`: the reference the bench measures Palisade's per-packet
//! cost against, never attached by the agent. It does what any conntrack
//! based enforcer must: parse the same headers with the same parser, then
//! one lookup in the conntrack table. What Palisade spends above it is the
//! price of its checks (endpoint binding, budgets, counters, policy).

use aya_ebpf::{macros::classifier, programs::TcContext};
use palisade_common::DIR_EGRESS;

use crate::{
    datapath::{CONNTRACK, DROP, PASS, ct_key},
    parse::{self, Parsed},
};

#[classifier]
pub fn palisade_floor(ctx: TcContext) -> i32 {
    match parse::parse(&ctx) {
        Parsed::Flow(flow) if CONNTRACK.get_ptr(ct_key(&flow, DIR_EGRESS)).is_some() => PASS,
        Parsed::NotIp => PASS,
        _ => DROP,
    }
}
