//! Types shared by Palisade's eBPF programs and its agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so that
//! both sides agree on every byte. Multi-byte fields that the kernel compares
//! as bit strings (LPM trie keys) are stored big-endian and say so in their
//! name (`_be`). Sizes are asserted at compile time.
#![no_std]

pub mod event;
pub mod maps;

pub use event::{FlowEvent, Reason};
pub use maps::*;
