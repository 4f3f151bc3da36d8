//! The pure policy engine: validated policies in, datapath map contents out.
//! No kernel, no cluster: everything here is testable in-process.

pub mod addr;
pub mod alloc;
pub mod budget;
pub mod compile;
pub mod dump;
mod flatten;
pub mod identity;
pub mod matching;
pub mod ordered;
pub mod profile;
/// The independent oracle that tests compare the compiled maps with; not
/// part of the agent.
#[cfg(any(test, feature = "test-support"))]
pub mod reference;
pub mod services;
pub mod sim;
pub mod state;

pub use budget::{Budgets, Rejection};
pub use compile::{CompileStats, Compiler, compile};
pub use profile::Profile;
pub use state::{DesiredState, Direction, MapOp, MapWriter, Maps, diff};
