//! Datapath counters, summed over CPUs.

use aya::maps::{MapData, PerCpuArray};
use palisade_common::Counter;

pub fn read(map: &PerCpuArray<MapData, u64>) -> Vec<(Counter, u64)> {
    Counter::ALL
        .iter()
        .map(|c| {
            let total = map
                .get(&(*c as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            (*c, total)
        })
        .collect()
}
