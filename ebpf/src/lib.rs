#![no_std]
// The programs live in the `palisade` binary target (src/main.rs); this
// library exists so that the agent can name this crate as a build dependency.
