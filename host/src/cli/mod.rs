//! The subcommands of `workspace-culler` other than `controller` (which lives
//! with the controller): one module each.

pub mod probe;
pub mod probe_bench;
pub mod probe_inspect;
pub mod probe_test;
pub mod status;
