//! Kubeflow's Workspace resources as the culler reads them, the
//! `CullingPolicy` resource, and the culling decisions of SPEC §4/§5 as pure
//! functions (no I/O; the clock is passed in).
//!
//! The modules follow the data: [`kubeflow`] reads Kubeflow's objects, [`policy`] is the
//! culler's own resource, [`kinds`] decides which policy manages which kind, [`rules`] (with
//! [`selector`]) picks the activity rule for a workspace, [`decide`] schedules probes and
//! decides pauses, and [`record`] turns a probe into the workspace's new `status.activity`.

pub mod decide;
pub mod kinds;
pub mod kubeflow;
pub mod policy;
pub mod record;
pub mod rules;
pub mod selector;

#[cfg(test)]
mod properties;
mod schema;
#[cfg(test)]
mod testing;

pub use decide::{Due, Keep, KeepAlive, Pause, Unmanaged, eligible_after, keep_alive, pause_decision, probe_due};
pub use kinds::{KindNotManaged, Management, PolicyKinds, policy_conditions};
pub use kubeflow::{
    Activity, CULLED_EVENT_ANNOTATION, DISABLE_CULLING_ANNOTATION, DecodeError, KEEP_ALIVE_ANNOTATION, LastProbe,
    ProbeResult, Workspace, WorkspaceKind, WorkspaceState, decode,
};
pub use policy::{ActivityProbe, ActivityRule, CullingPolicy, CullingPolicySpec, CullingPolicyStatus, validate};
pub use record::{ProbeActivity, ProbeOutcome, ProbeRun, activity_after_probe, activity_patch};
pub use rules::{PauseWindow, RuleMatch, pod_config_labels, select_rule};
pub use selector::{LabelSelector, SelectorError};
