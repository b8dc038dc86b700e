//! workspace-culler: pauses idle notebook Workspaces. Activity probes are
//! WebAssembly components evaluated by the engine crate
//! ([`workspace_culler_engine`]); this crate is the Kubernetes side (resource
//! types, decisions, the controller) and the harness.

pub mod controller;
pub mod crd;
pub mod decide;
pub mod harness;
#[cfg(feature = "local")]
pub mod local;
pub mod plan;
pub mod transport;
