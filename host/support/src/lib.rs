//! Test and demo support for workspace-culler, kept out of the product: a
//! real local control plane (the end-to-end tests and `workspace-culler
//! local`), Kubeflow's CRDs with a double of its workspace controller, and the probe
//! components only tests run.

pub mod controlplane;
pub mod kubeflow;
pub mod process;
pub mod registry;
pub mod test_probes;
