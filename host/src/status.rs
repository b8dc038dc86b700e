//! `workspace-culler status`: each managed workspace as the culler sees it — its kind, policy,
//! last activity, last probe, `eligibleAfter`, keep-alive, and why it is not paused — computed
//! from what the API holds, with the controller's own decision functions.

use std::collections::BTreeMap;
use workspace_culler_policy::{
    CullingPolicy, KeepAlive, Management, ProbeResult, RuleMatch, Workspace, WorkspaceKind, WorkspaceState, keep_alive,
    pod_config_labels, select_rule,
};

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `namespace/name`.
    pub workspace: String,
    /// `spec.kind`.
    pub kind: String,
    /// The managing policy, or `-`.
    pub policy: String,
    /// `status.state`.
    pub state: String,
    /// `lastActivity`, as "5m ago".
    pub last_activity: String,
    /// The last probe's result.
    pub last_probe: String,
    /// `eligibleAfter`, as "in 2h 10m".
    pub eligible: String,
    /// The keep-alive, as "in 3h" or "-".
    pub keep_alive: String,
    /// Why it is not paused (or that it will be).
    pub why: String,
}

/// "in 2h 10m" / "5m ago" / "now" for a UNIX ms time seen at `now_ms` (`-` for 0).
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".into();
    }
    let seconds = (at_ms.saturating_sub(now_ms) / 1000).unsigned_abs();
    if seconds < 60 {
        return "now".into();
    }
    let (days, hours, minutes) = (seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60);
    let text = match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, h) => format!("{h}h {minutes}m"),
        (d, h) => format!("{d}d {h}h"),
    };
    if at_ms > now_ms {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// The row of `workspace`, from every policy and kind and its namespace's labels.
pub fn row(
    workspace: &Workspace,
    management: &Management,
    policies: &[CullingPolicy],
    kinds: &[WorkspaceKind],
    namespace_labels: &BTreeMap<String, String>,
    now_ms: i64,
) -> Row {
    let activity = workspace.activity().cloned().unwrap_or_default();
    let probe = activity.last_probe.as_ref();
    let mut row = Row {
        workspace: format!(
            "{}/{}",
            workspace.metadata.namespace.as_deref().unwrap_or_default(),
            workspace.metadata.name.as_deref().unwrap_or_default()
        ),
        kind: workspace.spec.kind.clone(),
        policy: "-".into(),
        state: workspace.state().to_string(),
        last_activity: relative(activity.last_activity, now_ms),
        last_probe: probe.map_or("-".into(), |p| format!("{} {}", p.result, relative(p.end_time, now_ms))),
        eligible: relative(activity.eligible_after(), now_ms),
        keep_alive: "-".into(),
        why: String::new(),
    };
    let policy = match management.policy_for_kind(&workspace.spec.kind) {
        Ok(name) => policies.iter().find(|p| p.metadata.name.as_deref() == Some(name)),
        Err(why) => {
            row.why = format!("not managed: {why}");
            return row;
        }
    };
    let (Some(policy), Some(kind)) = (
        policy,
        kinds
            .iter()
            .find(|k| k.metadata.name.as_deref() == Some(workspace.spec.kind.as_str())),
    ) else {
        row.why = "not managed: its policy or kind is gone".into();
        return row;
    };
    row.policy = policy.metadata.name.clone().unwrap_or_default();
    let keep = keep_alive(workspace, policy.spec.keep_alive_max_seconds(), now_ms);
    row.keep_alive = match &keep {
        KeepAlive::None => "-".into(),
        KeepAlive::Until(until) | KeepAlive::Clamped { until, .. } => relative(*until, now_ms),
        KeepAlive::Ignored(_) => "ignored".into(),
    };
    let rule = select_rule(
        &policy.spec.activity_rules,
        namespace_labels,
        &pod_config_labels(workspace, kind),
    );
    let eligible = activity.eligible_after();
    let not_pausing_rule = match &rule {
        RuleMatch::Pauses { .. } => None,
        RuleMatch::NoMatch => Some("no activity rule applies: never paused".to_string()),
        RuleMatch::Exempt { rule } => Some(format!("activityRules[{rule}] says pauseWorkspace: false")),
        RuleMatch::Invalid { rule, error } => Some(format!("activityRules[{rule}] is invalid: {error}")),
    };
    row.why = if workspace.spec.paused {
        "paused".into()
    } else if workspace.state() != WorkspaceState::Running {
        format!("{} (only Running workspaces are probed)", workspace.state())
    } else if workspace.culling_disabled() {
        format!("annotated {}", workspace_culler_policy::DISABLE_CULLING_ANNOTATION)
    } else if let Some(why) = not_pausing_rule {
        why
    } else if let Some(p) = probe.filter(|p| p.result != ProbeResult::Success) {
        format!("its last probe did not succeed: {}", p.message)
    } else if probe.is_none() {
        "not probed yet".into()
    } else if keep.until() > now_ms {
        format!("kept alive: eligible {}", relative(keep.until(), now_ms))
    } else if eligible <= 0 {
        "its last activity is unknown".into()
    } else if eligible > now_ms
        && workspace_culler_policy::decide::limited_by_lifetime(
            activity.last_activity,
            workspace.last_running_time(),
            &rule,
        )
    {
        format!("in use: reaches its maxRunningSeconds {}", relative(eligible, now_ms))
    } else if eligible > now_ms {
        format!("in use: eligible {}", relative(eligible, now_ms))
    } else {
        "idle past eligibleAfter: paused after its next probe".into()
    };
    if policy.spec.dry_run && !workspace.spec.paused {
        row.why.push_str(" (dry run: never paused)");
    }
    row
}

/// The table, aligned, with a header.
pub fn render(rows: &[Row]) -> String {
    let header = Row {
        workspace: "WORKSPACE".into(),
        kind: "KIND".into(),
        policy: "POLICY".into(),
        state: "STATE".into(),
        last_activity: "LAST ACTIVITY".into(),
        last_probe: "LAST PROBE".into(),
        eligible: "ELIGIBLE".into(),
        keep_alive: "KEEP-ALIVE".into(),
        why: "WHY".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let cells = |r: &Row| {
        [
            r.workspace.clone(),
            r.kind.clone(),
            r.policy.clone(),
            r.state.clone(),
            r.last_activity.clone(),
            r.last_probe.clone(),
            r.eligible.clone(),
            r.keep_alive.clone(),
            r.why.clone(),
        ]
    };
    let widths: Vec<usize> = (0..9)
        .map(|i| all.iter().map(|r| cells(r)[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in all {
        let line: Vec<String> = cells(r)
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 8 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;
    const MINUTE: i64 = 60_000;

    #[test]
    fn times_read_as_people_say_them() {
        assert_eq!(relative(0, NOW), "-");
        assert_eq!(relative(NOW + 30_000, NOW), "now");
        assert_eq!(relative(NOW + 130 * MINUTE, NOW), "in 2h 10m");
        assert_eq!(relative(NOW - 5 * MINUTE, NOW), "5m ago");
        assert_eq!(relative(NOW + 3 * 24 * 60 * MINUTE + 61 * MINUTE, NOW), "in 3d 1h");
    }

    fn policy(rules: serde_json::Value) -> CullingPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy", "metadata": {"name": "notebooks"},
            "spec": {"workspaceKinds": ["jupyterlab"],
                     "activityProbe": {"jupyter": {"lastActivity": true, "portId": "jupyterlab"}},
                     "activityRules": rules},
        }))
        .unwrap()
    }

    fn workspace(annotations: serde_json::Value, last_activity: i64, eligible: i64) -> Workspace {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
            "metadata": {"name": "nb", "namespace": "team", "annotations": annotations},
            "spec": {"kind": "jupyterlab"},
            "status": {"state": "Running", "lastRunningTime": NOW - 600 * MINUTE, "activity": {
                "lastActivity": last_activity, "lastUpdate": NOW - MINUTE,
                "lastProbe": {"startTime": NOW - MINUTE, "endTime": NOW - MINUTE, "result": "Success", "message": "ok"},
                "rules": {"pauseWorkspace": {"eligibleAfter": eligible}}}},
        }))
        .unwrap()
    }

    fn row_of(ws: &Workspace, policy: &CullingPolicy) -> Row {
        let mut kind = WorkspaceKind::default();
        kind.metadata.name = Some("jupyterlab".into());
        let kinds = [kind];
        let policies = [policy.clone()];
        let management = Management::compute(&policies, &kinds);
        row(ws, &management, &policies, &kinds, &BTreeMap::new(), NOW)
    }

    #[test]
    fn each_workspace_says_why_it_is_not_paused() {
        let pausing =
            policy(serde_json::json!([{"config": {"secondsSinceActive": 3600}, "effect": {"pauseWorkspace": true}}]));
        let busy = row_of(
            &workspace(serde_json::json!({}), NOW - 10 * MINUTE, NOW + 50 * MINUTE),
            &pausing,
        );
        assert_eq!(busy.policy, "notebooks");
        assert_eq!(busy.last_activity, "10m ago");
        assert_eq!(busy.eligible, "in 50m");
        assert_eq!(busy.why, "in use: eligible in 50m");

        let idle = row_of(
            &workspace(serde_json::json!({}), NOW - 90 * MINUTE, NOW - 30 * MINUTE),
            &pausing,
        );
        assert!(idle.why.starts_with("idle past eligibleAfter"), "{}", idle.why);

        let kept = workspace(
            serde_json::json!({workspace_culler_policy::KEEP_ALIVE_ANNOTATION: "2026-05-28T22:26:40Z"}),
            NOW - 90 * MINUTE,
            NOW + 120 * MINUTE,
        );
        let kept = row_of(&kept, &pausing);
        assert_eq!(kept.keep_alive, "in 2h 0m");
        assert_eq!(kept.why, "kept alive: eligible in 2h 0m");

        let exempt =
            policy(serde_json::json!([{"config": {"secondsSinceActive": 3600}, "effect": {"pauseWorkspace": false}}]));
        let row = row_of(&workspace(serde_json::json!({}), NOW, 0), &exempt);
        assert_eq!(row.why, "activityRules[0] says pauseWorkspace: false");

        let none = policy(serde_json::json!([]));
        assert_eq!(
            row_of(&workspace(serde_json::json!({}), NOW, 0), &none).why,
            "no activity rule applies: never paused"
        );
    }

    #[test]
    fn an_unmanaged_kind_says_why_and_the_table_aligns() {
        let ws = workspace(serde_json::json!({}), NOW, 0);
        let management = Management::compute(&[], &[]);
        let row = row(&ws, &management, &[], &[], &BTreeMap::new(), NOW);
        assert_eq!(row.why, "not managed: no CullingPolicy names its WorkspaceKind");
        let table = render(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("KIND"), lines[1].find("jupyterlab"), "{table}");
    }
}
