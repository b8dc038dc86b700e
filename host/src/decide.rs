//! The culling decisions of SPEC §4, as pure functions of (kind's culling
//! config, workspace, pod start, probe evaluation, clock). No I/O here.

use crate::crd::{Activity, Culling, LastProbe, WorkspaceSpec, WorkspaceStatus};
use workspace_culler_engine::contract::ProbeActivity;
use workspace_culler_engine::{Evaluation, ProbeOutcome};

/// Culling waits this long past `maxInactiveSeconds` before pausing.
pub const CULL_BUFFER_SECONDS: i64 = 5;

/// Whether a workspace needs a probe now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeDue {
    /// The culler has nothing to do with this workspace (and why).
    NotManaged(String),
    /// Probe now.
    Now,
    /// Look again at this time (Unix ms).
    At(i64),
}

fn seconds(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// SPEC §4 "needs a probe": Running, culling configured, activity or update
/// stale, and not probed within `minProbeInterval` (even if probes fail).
pub fn probe_due(culling: Option<&Culling>, status: Option<&WorkspaceStatus>, now_ms: i64) -> ProbeDue {
    let state = status.and_then(|s| s.state.as_deref()).unwrap_or("");
    if state != "Running" {
        return ProbeDue::NotManaged(format!("state is {}", if state.is_empty() { "not set" } else { state }));
    }
    let Some(culling) = culling else {
        return ProbeDue::NotManaged("its WorkspaceKind has no culling configured".into());
    };
    let activity = status.and_then(|s| s.activity.clone()).unwrap_or_default();
    let now = seconds(now_ms);
    // Strictly "more than": the first second at which each becomes stale.
    let activity_stale_at = activity.last_activity + culling.max_inactive_seconds + 1;
    let update_stale_at = activity.last_update + culling.max_probe_interval + 1;
    let stale_at_ms = activity_stale_at.min(update_stale_at) * 1000;
    let allowed_at_ms = activity
        .last_probe
        .as_ref()
        .map(|p| p.start_time_ms + culling.min_probe_interval * 1000)
        .unwrap_or(i64::MIN);
    if now < activity_stale_at && now < update_stale_at {
        return ProbeDue::At(stale_at_ms.max(allowed_at_ms));
    }
    if now_ms < allowed_at_ms {
        return ProbeDue::At(allowed_at_ms);
    }
    ProbeDue::Now
}

/// The workspace's `status.activity` after a probe. `lastProbe` always
/// changes; `lastUpdate` and `lastActivity` only on success. Activity
/// before the pod started (Unix seconds) never counts against it.
pub fn record(previous: Option<&Activity>, evaluation: &Evaluation, pod_started: Option<i64>) -> Activity {
    let previous = previous.cloned().unwrap_or_default();
    let (result, message) = match &evaluation.outcome {
        ProbeOutcome::Success(activity) => ("Success", describe(activity)),
        ProbeOutcome::Failure(m) => ("Failure", m.clone()),
        ProbeOutcome::Timeout(m) => ("Timeout", m.clone()),
    };
    let last_probe = Some(LastProbe {
        start_time_ms: evaluation.started_at_ms,
        end_time_ms: evaluation.finished_at_ms,
        result: result.into(),
        message,
    });
    let ProbeOutcome::Success(activity) = &evaluation.outcome else {
        return Activity { last_probe, ..previous };
    };
    let last_activity = activity.next_last_activity(previous.last_activity, evaluation.started_at_ms);
    Activity {
        last_activity: last_activity.max(pod_started.unwrap_or(0)),
        last_update: seconds(evaluation.started_at_ms),
        last_probe,
    }
}

fn describe(activity: &ProbeActivity) -> String {
    format!("Probe succeeded: {activity}")
}

/// Whether to pause a workspace now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CullDecision {
    /// Pause it: idle this many seconds.
    Cull {
        /// Seconds since the last activity.
        idle_seconds: i64,
    },
    /// Leave it running (and why).
    Keep(String),
}

/// SPEC §4 step 5: cull only on a fresh successful probe, when idle longer
/// than `maxInactiveSeconds` + 5 s, unless culling is off for the kind or the workspace.
pub fn cull_decision(
    culling: &Culling,
    spec: &WorkspaceSpec,
    activity: &Activity,
    fresh_success: bool,
    now_ms: i64,
) -> CullDecision {
    if !fresh_success {
        return CullDecision::Keep("only a fresh successful probe can cull".into());
    }
    let idle_seconds = seconds(now_ms) - activity.last_activity;
    if idle_seconds <= culling.max_inactive_seconds + CULL_BUFFER_SECONDS {
        return CullDecision::Keep(format!(
            "idle {idle_seconds}s of {}s allowed",
            culling.max_inactive_seconds
        ));
    }
    if !culling.enabled {
        return CullDecision::Keep(format!("idle {idle_seconds}s, but culling is disabled for the kind"));
    }
    if spec.disable_culling {
        return CullDecision::Keep(format!("idle {idle_seconds}s, but the workspace has disableCulling"));
    }
    if spec.paused {
        return CullDecision::Keep("already paused".into());
    }
    CullDecision::Cull { idle_seconds }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_S: i64 = 1_795_951_704;
    const NOW: i64 = NOW_S * 1000;

    fn culling() -> Culling {
        Culling {
            max_inactive_seconds: 600,
            min_probe_interval: 60,
            max_probe_interval: 300,
            ..Culling::default()
        }
    }

    fn status(state: &str, last_activity: i64, last_update: i64, probed_at_ms: Option<i64>) -> WorkspaceStatus {
        WorkspaceStatus {
            state: Some(state.into()),
            activity: Some(Activity {
                last_activity,
                last_update,
                last_probe: probed_at_ms.map(|start| LastProbe {
                    start_time_ms: start,
                    end_time_ms: start + 10,
                    result: "Success".into(),
                    message: String::new(),
                }),
            }),
        }
    }

    #[test]
    fn only_running_workspaces_of_culled_kinds_are_probed() {
        for state in ["Paused", "Pending", "Terminating", "Error", "Unknown"] {
            let s = status(state, 0, 0, None);
            assert!(matches!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::NotManaged(m) if m.contains(state)));
        }
        assert!(matches!(
            probe_due(Some(&culling()), None, NOW),
            ProbeDue::NotManaged(_)
        ));
        let s = status("Running", 0, 0, None);
        assert!(matches!(probe_due(None, Some(&s), NOW), ProbeDue::NotManaged(m) if m.contains("no culling")));
    }

    #[test]
    fn a_workspace_never_probed_is_due_now() {
        let s = WorkspaceStatus {
            state: Some("Running".into()),
            activity: None,
        };
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::Now);
    }

    #[test]
    fn stale_activity_or_stale_update_makes_it_due() {
        // Activity fresh, update older than maxProbeInterval.
        let s = status("Running", NOW_S - 10, NOW_S - 301, Some(NOW - 301_000));
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::Now);
        // Update fresh, activity older than maxInactiveSeconds.
        let s = status("Running", NOW_S - 601, NOW_S - 100, Some(NOW - 100_000));
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::Now);
        // Exactly at the bound is not stale yet ("more than").
        let s = status("Running", NOW_S - 600, NOW_S - 300, Some(NOW - 300_000));
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::At(NOW + 1000));
    }

    #[test]
    fn fresh_status_schedules_the_next_probe_when_it_becomes_stale() {
        let s = status("Running", NOW_S - 100, NOW_S - 200, Some(NOW - 200_000));
        // Update goes stale at lastUpdate + 301 s = NOW + 101 s; activity at NOW + 501 s.
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::At(NOW + 101_000));
    }

    #[test]
    fn min_probe_interval_holds_even_when_probes_fail() {
        // Stale, but probed (and failed) 30 s ago: wait for the rest of minProbeInterval.
        let s = status("Running", NOW_S - 9999, NOW_S - 9999, Some(NOW - 30_000));
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::At(NOW + 30_000));
        let s = status("Running", NOW_S - 9999, NOW_S - 9999, Some(NOW - 60_000));
        assert_eq!(probe_due(Some(&culling()), Some(&s), NOW), ProbeDue::Now);
    }

    fn evaluation(outcome: ProbeOutcome) -> Evaluation {
        Evaluation {
            started_at_ms: NOW,
            finished_at_ms: NOW + 40,
            outcome,
            raw_output: None,
            logs: Vec::new(),
        }
    }

    #[test]
    fn failures_and_timeouts_record_the_probe_but_never_move_activity() {
        let previous = Activity {
            last_activity: NOW_S - 5000,
            last_update: NOW_S - 400,
            last_probe: None,
        };
        for outcome in [
            ProbeOutcome::Failure("Jupyter probe failed: HTTP 500".into()),
            ProbeOutcome::Timeout("t".into()),
        ] {
            let after = record(Some(&previous), &evaluation(outcome.clone()), None);
            assert_eq!(after.last_activity, previous.last_activity);
            assert_eq!(after.last_update, previous.last_update);
            let probe = after.last_probe.unwrap();
            assert_eq!(
                (probe.start_time_ms, probe.end_time_ms, probe.result.as_str()),
                (NOW, NOW + 40, outcome.result())
            );
        }
    }

    #[test]
    fn success_updates_activity_per_the_contract() {
        let previous = Activity {
            last_activity: NOW_S - 5000,
            last_update: NOW_S - 400,
            last_probe: None,
        };
        let cases = [
            (ProbeActivity::ActiveNow, NOW_S),
            (ProbeActivity::Idle, NOW_S - 5000),
            (ProbeActivity::Unknown, NOW_S - 5000),
            (ProbeActivity::LastAt((NOW_S - 70) * 1000 + 999), NOW_S - 70),
        ];
        for (activity, expected) in cases {
            let after = record(Some(&previous), &evaluation(ProbeOutcome::Success(activity)), None);
            assert_eq!(after.last_activity, expected, "{activity:?}");
            assert_eq!(after.last_update, NOW_S);
            assert_eq!(after.last_probe.unwrap().result, "Success");
        }
        // Unknown previous activity: the idle clock starts at the probe.
        let after = record(None, &evaluation(ProbeOutcome::Success(ProbeActivity::Idle)), None);
        assert_eq!(after.last_activity, NOW_S);
    }

    #[test]
    fn activity_before_the_pod_started_does_not_count() {
        let previous = Activity {
            last_activity: NOW_S - 90_000,
            ..Activity::default()
        };
        let pod_started = NOW_S - 120;
        let old = ProbeOutcome::Success(ProbeActivity::LastAt((NOW_S - 90_000) * 1000));
        let after = record(Some(&previous), &evaluation(old), Some(pod_started));
        assert_eq!(
            after.last_activity, pod_started,
            "a resumed workspace gets a full idle window"
        );
    }

    #[test]
    fn culls_only_past_the_window_plus_buffer_on_a_fresh_success() {
        let c = culling();
        let spec = WorkspaceSpec::default();
        let idle = |secs| Activity {
            last_activity: NOW_S - secs,
            ..Activity::default()
        };
        assert_eq!(
            cull_decision(&c, &spec, &idle(606), true, NOW),
            CullDecision::Cull { idle_seconds: 606 }
        );
        assert!(matches!(
            cull_decision(&c, &spec, &idle(605), true, NOW),
            CullDecision::Keep(_)
        ));
        assert!(
            matches!(cull_decision(&c, &spec, &idle(100_000), false, NOW), CullDecision::Keep(m) if m.contains("fresh successful"))
        );
    }

    #[test]
    fn disabled_kind_disabled_workspace_and_paused_workspace_are_kept() {
        let idle = Activity {
            last_activity: NOW_S - 100_000,
            ..Activity::default()
        };
        let off = Culling {
            enabled: false,
            ..culling()
        };
        assert!(
            matches!(cull_decision(&off, &WorkspaceSpec::default(), &idle, true, NOW), CullDecision::Keep(m) if m.contains("disabled for the kind"))
        );
        let spec = WorkspaceSpec {
            disable_culling: true,
            ..WorkspaceSpec::default()
        };
        assert!(
            matches!(cull_decision(&culling(), &spec, &idle, true, NOW), CullDecision::Keep(m) if m.contains("disableCulling"))
        );
        let spec = WorkspaceSpec {
            paused: true,
            ..WorkspaceSpec::default()
        };
        assert!(
            matches!(cull_decision(&culling(), &spec, &idle, true, NOW), CullDecision::Keep(m) if m.contains("already paused"))
        );
    }
}
