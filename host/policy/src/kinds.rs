//! Which WorkspaceKinds each CullingPolicy manages (SPEC §3.2), and the policy's conditions.
//!
//! A kind is managed by a policy when that policy is valid, is the only policy naming it, the
//! kind exists, and Kubeflow does not probe it itself (`spec.podTemplate.activityProbe` unset).
//! Otherwise nobody manages it: the culler neither probes nor writes status for its workspaces.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::decide::Unmanaged;
use crate::kubeflow::WorkspaceKind;
use crate::policy::{CullingPolicy, validate};
use crate::record::cap_message;

/// Condition type: the policy is valid and manages at least one kind.
pub const READY: &str = "Ready";
/// Condition type: every kind the policy names is managed by it.
pub const KINDS_MANAGED: &str = "KindsManaged";

/// The apiserver's cap on a condition message, in bytes.
pub const MAX_CONDITION_MESSAGE_BYTES: usize = 32_768;

/// Why a kind a policy names is not managed by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindNotManaged {
    /// The policy itself is invalid (see [`crate::policy::validate`]).
    PolicyInvalid,
    /// Several policies name the kind (all of them, sorted); none manages it.
    ClaimedBySeveralPolicies(Vec<String>),
    /// No WorkspaceKind has this name.
    NotFound,
    /// Kubeflow probes the kind itself (`spec.podTemplate.activityProbe` is set).
    KubeflowProbesIt,
}

impl KindNotManaged {
    /// A CamelCase reason, as conditions and metrics want it.
    pub fn reason(&self) -> &'static str {
        match self {
            KindNotManaged::PolicyInvalid => "PolicyInvalid",
            KindNotManaged::ClaimedBySeveralPolicies(_) => "ClaimedBySeveralPolicies",
            KindNotManaged::NotFound => "KindNotFound",
            KindNotManaged::KubeflowProbesIt => "KubeflowProbesKind",
        }
    }
}

impl std::fmt::Display for KindNotManaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KindNotManaged::PolicyInvalid => f.write_str("the policy is invalid"),
            KindNotManaged::ClaimedBySeveralPolicies(names) => write!(
                f,
                "named by several CullingPolicies ({}); a kind is managed by at most one",
                names.join(", ")
            ),
            KindNotManaged::NotFound => f.write_str("no such WorkspaceKind"),
            KindNotManaged::KubeflowProbesIt => {
                f.write_str("Kubeflow probes it itself (its spec.podTemplate.activityProbe is set)")
            }
        }
    }
}

/// The kinds one policy names, split into managed and not managed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyKinds {
    /// Kinds this policy manages.
    pub managed: Vec<String>,
    /// Kinds this policy names but does not manage, with the reason.
    pub not_managed: Vec<(String, KindNotManaged)>,
}

/// Who manages what, across all policies and kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Management {
    /// Per policy name.
    pub policies: BTreeMap<String, PolicyKinds>,
    // kind name → the policy managing it, or why the policies naming it do not.
    by_kind: BTreeMap<String, Result<String, KindNotManaged>>,
}

impl Management {
    /// Decide, from all policies and all WorkspaceKinds, which policy manages which kind.
    pub fn compute(policies: &[CullingPolicy], kinds: &[WorkspaceKind]) -> Management {
        let existing: BTreeMap<&str, &WorkspaceKind> = kinds
            .iter()
            .filter_map(|k| k.metadata.name.as_deref().map(|n| (n, k)))
            .collect();
        // Every policy's claims count, valid or not, so fixing one never silently moves a kind.
        let mut claimants: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for policy in policies {
            let name = policy.metadata.name.as_deref().unwrap_or_default();
            for kind in &policy.spec.workspace_kinds {
                claimants.entry(kind.as_str()).or_default().insert(name);
            }
        }
        let mut management = Management::default();
        for policy in policies {
            let name = policy.metadata.name.as_deref().unwrap_or_default();
            let valid = validate(&policy.spec).is_ok();
            let entry = management.policies.entry(name.to_owned()).or_default();
            let unique_kinds: BTreeSet<&str> = policy.spec.workspace_kinds.iter().map(String::as_str).collect();
            for kind in unique_kinds {
                let claimant_count = claimants.get(kind).map_or(0, BTreeSet::len);
                let verdict = if claimant_count > 1 {
                    let names = claimants
                        .get(kind)
                        .into_iter()
                        .flatten()
                        .map(|n| n.to_string())
                        .collect();
                    Err(KindNotManaged::ClaimedBySeveralPolicies(names))
                } else if !valid {
                    Err(KindNotManaged::PolicyInvalid)
                } else {
                    match existing.get(kind) {
                        None => Err(KindNotManaged::NotFound),
                        Some(k) if k.kubeflow_probes_it() => Err(KindNotManaged::KubeflowProbesIt),
                        Some(_) => Ok(()),
                    }
                };
                match verdict {
                    Ok(()) => {
                        entry.managed.push(kind.to_owned());
                        management.by_kind.insert(kind.to_owned(), Ok(name.to_owned()));
                    }
                    Err(reason) => {
                        entry.not_managed.push((kind.to_owned(), reason.clone()));
                        // With several claimants every one records the same reason.
                        management.by_kind.entry(kind.to_owned()).or_insert(Err(reason));
                    }
                }
            }
        }
        management
    }

    /// The name of the policy that manages `kind`, or why none does.
    pub fn policy_for_kind(&self, kind: &str) -> Result<&str, Unmanaged> {
        match self.by_kind.get(kind) {
            None => Err(Unmanaged::NoPolicy),
            Some(Ok(policy)) => Ok(policy),
            Some(Err(reason)) => Err(Unmanaged::Kind(reason.clone())),
        }
    }

    /// The kinds of the policy named `policy` (`None` for a policy not seen).
    pub fn for_policy(&self, policy: &str) -> Option<&PolicyKinds> {
        self.policies.get(policy)
    }
}

/// The policy's status conditions: `KindsManaged` (which kinds are not managed and why) and
/// `Ready` (valid and managing at least one kind). A condition keeps its
/// `lastTransitionTime` from `previous` while its status does not change.
pub fn policy_conditions(
    kinds: &PolicyKinds,
    validation: &Result<(), Vec<String>>,
    generation: Option<i64>,
    previous: &[Condition],
    now_ms: i64,
) -> Vec<Condition> {
    let managed = kinds.managed.join(", ");
    let (kinds_status, kinds_reason, kinds_message) = if kinds.not_managed.is_empty() {
        (true, "AllKindsManaged", format!("manages {managed}"))
    } else {
        let not_managed: Vec<String> = kinds.not_managed.iter().map(|(k, why)| format!("{k}: {why}")).collect();
        let prefix = if managed.is_empty() {
            String::new()
        } else {
            format!("manages {managed}; ")
        };
        let reason = if kinds.managed.is_empty() {
            "NoKindsManaged"
        } else {
            "SomeKindsNotManaged"
        };
        (
            false,
            reason,
            format!("{prefix}not managed: {}", not_managed.join("; ")),
        )
    };
    let (ready_status, ready_reason, ready_message) = match validation {
        Err(errors) => (false, "InvalidSpec", errors.join("; ")),
        Ok(()) if kinds.managed.is_empty() => (
            false,
            "NoKindsManaged",
            "the policy manages none of its kinds".to_owned(),
        ),
        Ok(()) => (true, "Managing", format!("manages {managed}")),
    };
    let now = Time(Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH));
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        // Keep the transition time while the status holds, as `meta.SetStatusCondition` does.
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            last_transition_time,
            message: cap_message(&message, MAX_CONDITION_MESSAGE_BYTES),
            observed_generation: generation,
            reason: reason.to_owned(),
            status: status.to_owned(),
            type_: type_.to_owned(),
        }
    };
    vec![
        condition(READY, ready_status, ready_reason, ready_message),
        condition(KINDS_MANAGED, kinds_status, kinds_reason, kinds_message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NOW, kind, policy};

    fn compute(policies: &[CullingPolicy]) -> Management {
        let kinds = [
            kind("jupyterlab", false),
            kind("rstudio", false),
            kind("codeserver", true),
        ];
        Management::compute(policies, &kinds)
    }

    #[test]
    fn a_kind_named_by_one_policy_is_managed_by_it() {
        let m = compute(&[policy("notebooks", &["jupyterlab", "rstudio"])]);
        assert_eq!(m.for_policy("notebooks").unwrap().managed, ["jupyterlab", "rstudio"]);
        assert!(m.for_policy("notebooks").unwrap().not_managed.is_empty());
        assert_eq!(m.policy_for_kind("jupyterlab"), Ok("notebooks"));
    }

    #[test]
    fn two_policies_claiming_a_kind_manage_it_neither() {
        let m = compute(&[policy("a", &["jupyterlab", "rstudio"]), policy("b", &["jupyterlab"])]);
        let claimed = KindNotManaged::ClaimedBySeveralPolicies(vec!["a".into(), "b".into()]);
        assert_eq!(m.for_policy("a").unwrap().managed, ["rstudio"]);
        assert_eq!(
            m.for_policy("a").unwrap().not_managed,
            [("jupyterlab".to_owned(), claimed.clone())]
        );
        assert!(m.for_policy("b").unwrap().managed.is_empty());
        assert_eq!(
            m.for_policy("b").unwrap().not_managed,
            [("jupyterlab".to_owned(), claimed.clone())]
        );
        assert_eq!(m.policy_for_kind("jupyterlab"), Err(Unmanaged::Kind(claimed)));
        assert_eq!(m.policy_for_kind("rstudio"), Ok("a"));
    }

    #[test]
    fn a_kind_kubeflow_probes_is_not_managed() {
        let m = compute(&[policy("p", &["codeserver"])]);
        assert_eq!(
            m.for_policy("p").unwrap().not_managed,
            [("codeserver".to_owned(), KindNotManaged::KubeflowProbesIt)]
        );
        assert_eq!(
            m.policy_for_kind("codeserver"),
            Err(Unmanaged::Kind(KindNotManaged::KubeflowProbesIt))
        );
    }

    #[test]
    fn a_missing_kind_is_not_managed() {
        let m = compute(&[policy("p", &["vscode"])]);
        assert_eq!(
            m.for_policy("p").unwrap().not_managed,
            [("vscode".to_owned(), KindNotManaged::NotFound)]
        );
        assert_eq!(
            m.policy_for_kind("vscode"),
            Err(Unmanaged::Kind(KindNotManaged::NotFound))
        );
    }

    #[test]
    fn a_kind_no_policy_names_has_no_policy() {
        let m = compute(&[policy("p", &["jupyterlab"])]);
        assert_eq!(m.policy_for_kind("rstudio"), Err(Unmanaged::NoPolicy));
    }

    #[test]
    fn an_invalid_policy_manages_nothing_but_still_claims() {
        let mut broken = policy("broken", &["jupyterlab"]);
        broken.spec.activity_probe.jupyter = None; // no probe method at all
        let m = compute(&[broken.clone()]);
        assert_eq!(
            m.for_policy("broken").unwrap().not_managed,
            [("jupyterlab".to_owned(), KindNotManaged::PolicyInvalid)]
        );
        let m = compute(&[broken, policy("good", &["jupyterlab"])]);
        let claimed = KindNotManaged::ClaimedBySeveralPolicies(vec!["broken".into(), "good".into()]);
        assert_eq!(m.policy_for_kind("jupyterlab"), Err(Unmanaged::Kind(claimed)));
        assert!(m.for_policy("good").unwrap().managed.is_empty());
    }

    #[test]
    fn conditions_say_which_kinds_are_not_managed_and_why() {
        let m = compute(&[policy("p", &["jupyterlab", "codeserver", "vscode"])]);
        let conditions = policy_conditions(m.for_policy("p").unwrap(), &Ok(()), Some(3), &[], NOW);
        let ready = conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Managing"));
        assert_eq!(ready.observed_generation, Some(3));
        let kinds = conditions.iter().find(|c| c.type_ == KINDS_MANAGED).unwrap();
        assert_eq!(
            (kinds.status.as_str(), kinds.reason.as_str()),
            ("False", "SomeKindsNotManaged")
        );
        assert!(
            kinds.message.starts_with("manages jupyterlab; not managed: "),
            "{}",
            kinds.message
        );
        assert!(
            kinds.message.contains("codeserver: Kubeflow probes it itself"),
            "{}",
            kinds.message
        );
        assert!(
            kinds.message.contains("vscode: no such WorkspaceKind"),
            "{}",
            kinds.message
        );
    }

    #[test]
    fn an_invalid_policy_is_not_ready() {
        let kinds = PolicyKinds::default();
        let errors = Err(vec![
            "spec.activityProbe must specify exactly one of 'podExec', 'jupyter' or 'module'".into(),
        ]);
        let conditions = policy_conditions(&kinds, &errors, None, &[], NOW);
        let ready = &conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()),
            (READY, "False", "InvalidSpec")
        );
        assert!(ready.message.contains("exactly one of"));
    }

    #[test]
    fn a_policy_managing_no_kind_is_not_ready() {
        let m = compute(&[policy("p", &["codeserver"])]);
        let conditions = policy_conditions(m.for_policy("p").unwrap(), &Ok(()), None, &[], NOW);
        assert_eq!(
            (conditions[0].status.as_str(), conditions[0].reason.as_str()),
            ("False", "NoKindsManaged")
        );
        assert_eq!(conditions[1].reason, "NoKindsManaged");
    }

    #[test]
    fn transition_times_hold_while_the_status_holds() {
        let m = compute(&[policy("p", &["jupyterlab"])]);
        let kinds = m.for_policy("p").unwrap();
        let first = policy_conditions(kinds, &Ok(()), Some(1), &[], NOW - 60_000);
        let again = policy_conditions(kinds, &Ok(()), Some(2), &first, NOW);
        assert_eq!(again[0].last_transition_time, first[0].last_transition_time);
        let broken = policy_conditions(kinds, &Err(vec!["x".into()]), Some(3), &again, NOW);
        assert_ne!(broken[0].last_transition_time, first[0].last_transition_time);
        assert_eq!(
            broken[0].last_transition_time,
            Time(Timestamp::from_millisecond(NOW).unwrap())
        );
    }
}
