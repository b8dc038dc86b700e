//! workspace-culler: pauses idle notebook Workspaces; activity probes are
//! WebAssembly components evaluated by [`engine::ProbeEngine`].

pub mod builtin;
pub mod contract;
pub mod engine;
pub mod harness;
