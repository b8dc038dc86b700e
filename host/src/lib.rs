//! workspace-culler: pauses idle notebook Workspaces; activity probes are
//! WebAssembly components evaluated by [`engine::ProbeEngine`].

pub mod builtin;
pub mod contract;
pub mod controller;
pub mod controlplane;
pub mod crd;
pub mod decide;
pub mod engine;
pub mod harness;
pub mod local;
pub mod plan;
pub mod transport;
