//! Each `CullingPolicy`'s status: `observedGeneration`, the `Ready` and `KindsManaged`
//! conditions (which kinds it manages, which not and why), the workspaces of its managed kinds,
//! and the pauses it made. Recomputed every [`INTERVAL`] and written only when it changes.

use super::{MANAGER, lock};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use workspace_culler_policy::{
    CullingPolicy, CullingPolicyStatus, Management, WorkspaceKind, decode, policy_conditions, validate,
};

/// How often the policies' status is recomputed.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// The status `policy` should have now; `paused_before` is the total this process last wrote
/// (the cached policy may not show it yet); `module_problem` what is wrong with its module
/// file, which only the controller can see.
pub fn status_of(
    policy: &CullingPolicy,
    management: &Management,
    workspaces_by_kind: &BTreeMap<String, i64>,
    paused_before: i64,
    new_pauses: i64,
    module_problem: Option<String>,
    now_ms: i64,
) -> CullingPolicyStatus {
    let validation = match (validate(&policy.spec), module_problem) {
        (result, None) => result,
        (Ok(()), Some(problem)) => Err(vec![problem]),
        (Err(mut errors), Some(problem)) => {
            errors.push(problem);
            Err(errors)
        }
    };
    let previous = policy.status.clone().unwrap_or_default();
    let kinds = management.for_policy(&policy.name_any()).cloned().unwrap_or_default();
    let managed_workspaces = kinds
        .managed
        .iter()
        .map(|k| workspaces_by_kind.get(k).copied().unwrap_or(0))
        .sum();
    CullingPolicyStatus {
        observed_generation: policy.metadata.generation,
        conditions: policy_conditions(
            &kinds,
            &validation,
            policy.metadata.generation,
            &previous.conditions,
            now_ms,
        ),
        managed_workspaces,
        paused_total: previous.paused_total.max(paused_before).saturating_add(new_pauses),
    }
}

/// Say in `policy`'s `Ready` condition that nothing is paused whatever the policy says, when
/// the controller runs with `--dry-run` (the chart's `controller.dryRun`): the policy's own
/// `spec.dryRun` (and the `Dry-Run` column) does not show it.
pub fn note_controller_dry_run(status: &mut CullingPolicyStatus, policy: &CullingPolicy, controller_dry_run: bool) {
    if !controller_dry_run || policy.spec.dry_run {
        return;
    }
    if let Some(ready) = status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        let message = format!(
            "dry run: the controller runs with --dry-run, so nothing is paused; {}",
            ready.message
        );
        ready.message = workspace_culler_policy::record::cap_message(
            &message,
            workspace_culler_policy::kinds::MAX_CONDITION_MESSAGE_BYTES,
        );
    }
}

/// What the policies' status is computed from.
pub struct Sources {
    /// Where the status is written.
    pub api: Api<CullingPolicy>,
    /// Every policy.
    pub policies: Store<CullingPolicy>,
    /// Every WorkspaceKind.
    pub kinds: Store<DynamicObject>,
    /// The workspaces of every watched namespace.
    pub workspaces: Vec<Store<super::CachedWorkspace>>,
    /// Pauses per policy (by uid) not yet counted in its status.
    pub pauses: Arc<Mutex<BTreeMap<String, i64>>>,
    /// Writes only while this replica leads.
    pub fence: super::leader::Fence,
    /// Where module files must lie.
    pub module_dir: std::path::PathBuf,
    /// Looks at the module files policies name, as the probes do.
    pub looks: super::probe::FileLooks,
    /// The last problem pulling each `oci://` module.
    pub registry: Arc<crate::oci::Registry>,
    /// The Secrets of the controller's namespace, where policies' Secrets must be.
    pub secrets: Store<k8s_openapi::api::core::v1::Secret>,
    /// The controller's namespace.
    pub own_namespace: String,
    /// The controller runs with `--dry-run`.
    pub dry_run: bool,
}

/// Forget the pause counts of policies that are gone (by uid: one re-created under its name
/// starts from none rather than from its namesake's total).
fn forget_gone_policies(
    policies: &[CullingPolicy],
    totals: &mut BTreeMap<String, i64>,
    pauses: &mut BTreeMap<String, i64>,
) {
    let present: std::collections::BTreeSet<&str> = policies.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
    totals.retain(|uid, _| present.contains(uid.as_str()));
    pauses.retain(|uid, _| present.contains(uid.as_str()));
}

/// Keep every policy's status current until the task is dropped.
pub async fn run(sources: Sources, clock: fn() -> i64) {
    let Sources {
        api,
        policies,
        kinds,
        workspaces,
        pauses,
        fence,
        module_dir,
        looks,
        registry,
        secrets,
        own_namespace,
        dry_run,
    } = sources;
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    // The pause totals this process wrote, by policy uid: the cache may lag behind them.
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let all: Vec<CullingPolicy> = policies.state().iter().map(|p| (**p).clone()).collect();
        let all_kinds: Vec<WorkspaceKind> = kinds
            .state()
            .iter()
            .filter_map(|k| serde_json::to_value(&**k).ok().and_then(|v| decode(v).ok()))
            .collect();
        let management = Management::compute(&all, &all_kinds);
        let mut by_kind: BTreeMap<String, i64> = BTreeMap::new();
        for store in &workspaces {
            for workspace in store.state() {
                if let Some(kind) = workspace.kind_name() {
                    *by_kind.entry(kind.to_owned()).or_default() += 1;
                }
            }
        }
        forget_gone_policies(&all, &mut totals, &mut lock(&pauses));
        for policy in &all {
            let name = policy.name_any();
            let uid = policy.metadata.uid.clone().unwrap_or_default();
            let new_pauses = lock(&pauses).get(&uid).copied().unwrap_or(0);
            let before = totals.get(&uid).copied().unwrap_or(0);
            let probe = &policy.spec.activity_probe;
            let problem = match super::probe::module_problem(probe, &module_dir, &registry, &looks).await {
                Some(problem) => Some(problem),
                None => super::probe::secret_problem(probe, &secrets, &own_namespace),
            };
            let mut status = status_of(policy, &management, &by_kind, before, new_pauses, problem, clock());
            note_controller_dry_run(&mut status, policy, dry_run);
            if policy.status.as_ref() == Some(&status) || !fence.holds() {
                continue;
            }
            let patch = serde_json::json!({"status": status});
            match api.patch_status(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    totals.insert(uid.clone(), status.paused_total);
                    // Counted in the status now: only later pauses are new.
                    if let Some(count) = lock(&pauses).get_mut(&uid) {
                        *count -= new_pauses;
                    }
                    tracing::info!(policy = %name, managed = status.managed_workspaces, "policy status updated");
                }
                Err(e) => tracing::warn!(policy = %name, error = %e, "cannot update the policy's status"),
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, kinds: &[&str]) -> CullingPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy",
            "metadata": {"name": name, "generation": 3},
            "spec": {"workspaceKinds": kinds, "activityProbe": {"jupyter": {"lastActivity": true, "portId": "jupyterlab"}},
                     "activityRules": [{"config": {"secondsSinceActive": 60}, "effect": {"pauseWorkspace": true}}]},
        }))
        .unwrap()
    }

    fn kind(name: &str) -> WorkspaceKind {
        let mut kind = WorkspaceKind::default();
        kind.metadata.name = Some(name.into());
        kind
    }

    #[test]
    fn a_policy_re_created_under_its_name_counts_its_own_pauses_only() {
        let mut old = policy("notebooks", &["jupyterlab"]);
        old.metadata.uid = Some("uid-1".into());
        let mut totals = BTreeMap::from([("uid-1".to_string(), 7)]);
        let mut pauses = BTreeMap::from([("uid-1".to_string(), 2)]);
        forget_gone_policies(std::slice::from_ref(&old), &mut totals, &mut pauses);
        assert_eq!((totals.len(), pauses.len()), (1, 1), "still there: kept");
        let mut new = old.clone();
        new.metadata.uid = Some("uid-2".into());
        forget_gone_policies(std::slice::from_ref(&new), &mut totals, &mut pauses);
        assert!(totals.is_empty() && pauses.is_empty(), "{totals:?} {pauses:?}");
    }

    #[test]
    fn the_status_counts_managed_workspaces_and_adds_new_pauses() {
        let mut notebooks = policy("notebooks", &["jupyterlab", "missing"]);
        notebooks.status = Some(CullingPolicyStatus {
            paused_total: 4,
            ..Default::default()
        });
        let management = Management::compute(std::slice::from_ref(&notebooks), &[kind("jupyterlab"), kind("rstudio")]);
        let by_kind = BTreeMap::from([("jupyterlab".to_string(), 3), ("rstudio".to_string(), 7)]);
        let status = status_of(&notebooks, &management, &by_kind, 0, 2, None, 1_780_000_000_000);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.managed_workspaces, 3, "only the kinds it manages");
        assert_eq!(status.paused_total, 6);
        let kinds_managed = status.conditions.iter().find(|c| c.type_ == "KindsManaged").unwrap();
        assert_eq!(kinds_managed.status, "False");
        assert!(kinds_managed.message.contains("missing"), "{}", kinds_managed.message);
        // A total this process wrote, not yet in the cached policy, is never lost.
        let status = status_of(&notebooks, &management, &by_kind, 9, 1, None, 1_780_000_000_000);
        assert_eq!(status.paused_total, 10);
    }

    #[test]
    fn a_controller_run_with_dry_run_says_so_in_each_policy_s_ready_condition() {
        let notebooks = policy("notebooks", &["jupyterlab"]);
        let management = Management::compute(std::slice::from_ref(&notebooks), &[kind("jupyterlab")]);
        let status = status_of(&notebooks, &management, &BTreeMap::new(), 0, 0, None, 1_780_000_000_000);
        let noted = |policy: &CullingPolicy, controller_dry_run: bool| {
            let mut status = status.clone();
            note_controller_dry_run(&mut status, policy, controller_dry_run);
            status
        };
        assert_eq!(noted(&notebooks, false), status, "not in a dry run");
        let mut dry = notebooks.clone();
        dry.spec.dry_run = true;
        assert_eq!(noted(&dry, true), status, "the policy's own dry run shows in its spec");
        let status = noted(&notebooks, true);
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert!(
            ready.message.starts_with("dry run: the controller runs with --dry-run")
                && ready.message.contains("manages jupyterlab"),
            "{}",
            ready.message
        );
        // Still within the CRD's bound on a condition's message.
        let max = workspace_culler_policy::kinds::MAX_CONDITION_MESSAGE_BYTES;
        let mut long = status.clone();
        long.conditions[0].message = "x".repeat(max);
        note_controller_dry_run(&mut long, &notebooks, true);
        assert!(long.conditions[0].message.len() <= max);
    }

    #[test]
    fn a_module_outside_the_module_directory_makes_the_policy_not_ready() {
        let notebooks = policy("notebooks", &["jupyterlab"]);
        let management = Management::compute(std::slice::from_ref(&notebooks), &[kind("jupyterlab")]);
        let problem = Some("probe module ../x.wasm is outside the module directory /probes".to_string());
        let status = status_of(
            &notebooks,
            &management,
            &BTreeMap::new(),
            0,
            0,
            problem,
            1_780_000_000_000,
        );
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(
            ready.message.contains("outside the module directory"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn an_unchanged_policy_computes_the_status_it_already_has() {
        let mut notebooks = policy("notebooks", &["jupyterlab"]);
        let management = Management::compute(std::slice::from_ref(&notebooks), &[kind("jupyterlab")]);
        let by_kind = BTreeMap::from([("jupyterlab".to_string(), 1)]);
        let first = status_of(&notebooks, &management, &by_kind, 0, 0, None, 1_780_000_000_000);
        notebooks.status = Some(first.clone());
        let later = status_of(&notebooks, &management, &by_kind, 0, 0, None, 1_780_000_099_000);
        assert_eq!(later, first, "no write when nothing changed");
    }
}
