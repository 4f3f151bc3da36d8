//! Where objects come from: a directory of YAML (standalone mode) or the
//! API server. Sources produce typed objects; they never touch the model.

pub mod dir;
pub mod yaml;
