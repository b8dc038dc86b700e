//! What a probe does to a workspace's `status.activity` (SPEC §3.3 and §5), and the merge
//! patch that writes it.

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

use crate::decide::eligible_after;
use crate::kubeflow::{Activity, ActivityRulesStatus, LastProbe, PauseWorkspaceStatus, ProbeResult};
use crate::rules::RuleMatch;

/// The cap on `lastProbe.message`, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Marks a message that was cut to fit its cap.
pub const TRUNCATION_MARKER: &str = "…";

/// How far past the probe's end a reported `last_activity` may lie (clock skew); a later one
/// is a `Failure` (SPEC §5), since `lastActivity` never moves back and would keep it forever.
pub const MAX_LAST_ACTIVITY_AFTER_END_MS: i64 = 60_000;

pub use workspace_culler_contract::{ProbeActivity, ProbeOutcome};

/// One finished probe: when it ran (UNIX ms) and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRun {
    /// When the probe started.
    pub start_ms: i64,
    /// When the probe ended.
    pub end_ms: i64,
    /// How it ended.
    pub outcome: ProbeOutcome,
}

/// A UNIX ms time as RFC 3339 (or in ms, when out of range).
fn time_text(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("{ms} ms"),
    }
}

/// `run.outcome`, except that a `last_activity` more than
/// [`MAX_LAST_ACTIVITY_AFTER_END_MS`] after the probe's end is a `Failure` (SPEC §5).
fn checked_outcome(run: &ProbeRun) -> ProbeOutcome {
    match run.outcome {
        ProbeOutcome::Success(ProbeActivity::LastAt(at))
            if at > run.end_ms.saturating_add(MAX_LAST_ACTIVITY_AFTER_END_MS) =>
        {
            ProbeOutcome::Failure(format!(
                "invalid probe output: last_activity {} is more than 60 s after the probe ended ({})",
                time_text(at),
                time_text(run.end_ms)
            ))
        }
        ref outcome => outcome.clone(),
    }
}

/// The new `lastActivity` after a successful probe ending at `end_ms`, from the previous value
/// (0 = unknown). It never moves backwards.
pub fn next_last_activity(previous: i64, end_ms: i64, activity: ProbeActivity) -> i64 {
    let previous = previous.max(0);
    match activity {
        ProbeActivity::ActiveNow => previous.max(end_ms),
        ProbeActivity::LastAt(at) if at > 0 => previous.max(at),
        // Idle, Unknown, or a timestamp at or before 1970: nothing new is known, but an unknown
        // value becomes the probe's end, so the idle clock starts.
        _ if previous == 0 => end_ms,
        _ => previous,
    }
}

/// The workspace's `status.activity` after `run`: `lastProbe` always changes; `lastActivity`
/// and `lastUpdate` only on success; `eligibleAfter` is recomputed for the matched rule. A
/// `last_activity` too far past the probe's end makes the run a `Failure`.
pub fn activity_after_probe(
    previous: Option<&Activity>,
    run: &ProbeRun,
    last_running_time: i64,
    rule: &RuleMatch,
) -> Activity {
    let previous = previous.cloned().unwrap_or_default();
    let outcome = checked_outcome(run);
    let message = match &outcome {
        ProbeOutcome::Success(activity) => format!("probe succeeded: {activity}"),
        ProbeOutcome::Failure(message) | ProbeOutcome::Timeout(message) => message.clone(),
    };
    let (last_activity, last_update) = match &outcome {
        ProbeOutcome::Success(activity) => (
            next_last_activity(previous.last_activity, run.end_ms, *activity),
            run.end_ms,
        ),
        ProbeOutcome::Failure(_) | ProbeOutcome::Timeout(_) => (previous.last_activity, previous.last_update),
    };
    Activity {
        last_activity,
        last_update,
        last_probe: Some(LastProbe {
            start_time: run.start_ms,
            end_time: run.end_ms,
            result: ProbeResult::of(&outcome),
            message: cap_message(&message, MAX_MESSAGE_BYTES),
        }),
        rules: Some(ActivityRulesStatus {
            pause_workspace: Some(PauseWorkspaceStatus {
                eligible_after: eligible_after(last_activity, last_running_time, rule),
            }),
        }),
    }
}

/// `message` cut to at most `max_bytes` on a UTF-8 boundary, ending in
/// [`TRUNCATION_MARKER`] when cut.
pub fn cap_message(message: &str, max_bytes: usize) -> String {
    if message.len() <= max_bytes {
        return message.to_owned();
    }
    // A cap too small for the marker still holds: the text is cut without it.
    let marker = if max_bytes >= TRUNCATION_MARKER.len() {
        TRUNCATION_MARKER
    } else {
        ""
    };
    let mut end = max_bytes - marker.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &message[..end])
}

/// The JSON merge patch (for the status subresource) that writes `activity`: only the fields
/// the culler owns, never a whole object.
pub fn activity_patch(activity: &Activity) -> Value {
    let mut fields = serde_json::Map::new();
    fields.insert("lastActivity".into(), json!(activity.last_activity));
    fields.insert("lastUpdate".into(), json!(activity.last_update));
    if let Some(probe) = &activity.last_probe {
        fields.insert(
            "lastProbe".into(),
            json!({
                "startTime": probe.start_time,
                "endTime": probe.end_time,
                "result": probe.result,
                "message": probe.message,
            }),
        );
    }
    fields.insert(
        "rules".into(),
        json!({"pauseWorkspace": {"eligibleAfter": activity.eligible_after()}}),
    );
    json!({"status": {"activity": fields}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::PauseWindow;
    use crate::testing::NOW;

    const START: i64 = NOW - 2_000;
    const END: i64 = NOW;

    fn run(outcome: ProbeOutcome) -> ProbeRun {
        ProbeRun {
            start_ms: START,
            end_ms: END,
            outcome,
        }
    }

    fn previous(last_activity: i64) -> Activity {
        Activity {
            last_activity,
            last_update: NOW - 3_600_000,
            ..Activity::default()
        }
    }

    fn pausing(seconds: i64) -> RuleMatch {
        RuleMatch::Pauses {
            rule: 0,
            window: PauseWindow {
                seconds_since_active: seconds,
                min_running_seconds: 0,
                keep_alive_until: 0,
                max_running_seconds: 0,
            },
        }
    }

    fn after(previous: Option<&Activity>, outcome: ProbeOutcome) -> Activity {
        activity_after_probe(previous, &run(outcome), 0, &pausing(3600))
    }

    #[test]
    fn a_failed_probe_never_moves_last_activity() {
        let before = previous(NOW - 7_200_000);
        for outcome in [
            ProbeOutcome::Failure("exec failed: container not found".into()),
            ProbeOutcome::Timeout("probe exceeded its 30 s deadline".into()),
        ] {
            let now = after(Some(&before), outcome.clone());
            assert_eq!(now.last_activity, before.last_activity);
            assert_eq!(
                now.last_update, before.last_update,
                "lastUpdate is the last *successful* probe"
            );
            let probe = now.last_probe.unwrap();
            assert_eq!((probe.start_time, probe.end_time), (START, END));
            assert_eq!(probe.result, ProbeResult::of(&outcome));
        }
    }

    #[test]
    fn a_failed_probe_leaves_unknown_activity_unknown() {
        let now = after(None, ProbeOutcome::Failure("no pod".into()));
        assert_eq!(now.last_activity, 0);
        assert_eq!(now.eligible_after(), 0);
    }

    #[test]
    fn active_now_sets_last_activity_to_the_probe_end() {
        let now = after(
            Some(&previous(NOW - 7_200_000)),
            ProbeOutcome::Success(ProbeActivity::ActiveNow),
        );
        assert_eq!(now.last_activity, END);
        assert_eq!(now.last_update, END);
        assert_eq!(now.last_probe.unwrap().result, ProbeResult::Success);
    }

    #[test]
    fn idle_or_unknown_keep_last_activity() {
        for activity in [ProbeActivity::Idle, ProbeActivity::Unknown] {
            let now = after(Some(&previous(NOW - 7_200_000)), ProbeOutcome::Success(activity));
            assert_eq!(now.last_activity, NOW - 7_200_000, "{activity:?}");
            assert_eq!(now.last_update, END);
        }
    }

    #[test]
    fn unknown_last_activity_starts_the_idle_clock_at_the_probe_end() {
        for activity in [ProbeActivity::Idle, ProbeActivity::Unknown, ProbeActivity::LastAt(0)] {
            assert_eq!(
                after(None, ProbeOutcome::Success(activity)).last_activity,
                END,
                "{activity:?}"
            );
            assert_eq!(
                after(Some(&previous(0)), ProbeOutcome::Success(activity)).last_activity,
                END,
                "{activity:?}"
            );
        }
    }

    #[test]
    fn a_reported_time_only_moves_last_activity_forwards() {
        let later = after(
            Some(&previous(NOW - 7_200_000)),
            ProbeOutcome::Success(ProbeActivity::LastAt(NOW - 60_000)),
        );
        assert_eq!(later.last_activity, NOW - 60_000);
        let earlier = after(
            Some(&previous(NOW - 60_000)),
            ProbeOutcome::Success(ProbeActivity::LastAt(NOW - 7_200_000)),
        );
        assert_eq!(
            earlier.last_activity,
            NOW - 60_000,
            "last activity never moves backwards"
        );
        let from_unknown = after(None, ProbeOutcome::Success(ProbeActivity::LastAt(NOW - 7_200_000)));
        assert_eq!(from_unknown.last_activity, NOW - 7_200_000);
    }

    #[test]
    fn a_last_activity_more_than_60_s_after_the_probe_end_is_a_failure() {
        let before = previous(NOW - 7_200_000);
        let too_late = after(
            Some(&before),
            ProbeOutcome::Success(ProbeActivity::LastAt(END + 60_001)),
        );
        assert_eq!(too_late.last_activity, before.last_activity, "a failure never moves it");
        assert_eq!(too_late.last_update, before.last_update);
        let probe = too_late.last_probe.unwrap();
        assert_eq!(probe.result, ProbeResult::Failure);
        assert!(probe.message.contains("last_activity"), "{}", probe.message);
        assert!(probe.message.contains("more than 60 s after"), "{}", probe.message);
        // Up to 60 s of clock skew is accepted.
        let skewed = after(
            Some(&before),
            ProbeOutcome::Success(ProbeActivity::LastAt(END + 60_000)),
        );
        assert_eq!(skewed.last_probe.unwrap().result, ProbeResult::Success);
        assert_eq!(skewed.last_activity, END + 60_000);
        // Saturates instead of overflowing at the end of time.
        let run = ProbeRun {
            start_ms: i64::MAX - 10,
            end_ms: i64::MAX,
            outcome: ProbeOutcome::Success(ProbeActivity::LastAt(i64::MAX)),
        };
        let at_the_end = activity_after_probe(None, &run, 0, &pausing(3600));
        assert_eq!(at_the_end.last_probe.unwrap().result, ProbeResult::Success);
    }

    #[test]
    fn active_now_never_moves_a_future_last_activity_back() {
        // A probe may report up to 60 s past its end (clock skew).
        let now = after(
            Some(&previous(END + 30_000)),
            ProbeOutcome::Success(ProbeActivity::ActiveNow),
        );
        assert_eq!(now.last_activity, END + 30_000);
    }

    #[test]
    fn eligible_after_is_recomputed_from_the_new_activity() {
        let now = after(
            Some(&previous(NOW - 7_200_000)),
            ProbeOutcome::Success(ProbeActivity::ActiveNow),
        );
        assert_eq!(now.eligible_after(), END + 3_600_000);
        let exempt = activity_after_probe(
            None,
            &run(ProbeOutcome::Success(ProbeActivity::ActiveNow)),
            0,
            &RuleMatch::NoMatch,
        );
        assert_eq!(exempt.eligible_after(), 0, "0 when no pausing rule matches");
    }

    #[test]
    fn messages_are_capped_at_1_kib_on_a_utf8_boundary() {
        let long = "é".repeat(1000); // 2000 bytes
        let now = after(None, ProbeOutcome::Failure(long));
        let message = now.last_probe.unwrap().message;
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with(TRUNCATION_MARKER));
        assert!(message.len() > MAX_MESSAGE_BYTES - 8, "cut no more than needed");
        let short = "Jupyter probe failed: HTTP 403";
        assert_eq!(cap_message(short, MAX_MESSAGE_BYTES), short);
        let exact = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(cap_message(&exact, MAX_MESSAGE_BYTES), exact);
        assert_eq!(cap_message("abcdef", 3), TRUNCATION_MARKER);
        assert_eq!(
            cap_message("abcdef", 2),
            "ab",
            "a cap below the marker's size still holds"
        );
    }

    #[test]
    fn a_success_message_says_what_the_probe_found() {
        let now = after(None, ProbeOutcome::Success(ProbeActivity::LastAt(1_767_323_045_000)));
        assert_eq!(
            now.last_probe.unwrap().message,
            "probe succeeded: last active at 2026-01-02T03:04:05.000Z"
        );
    }

    #[test]
    fn the_patch_holds_only_the_activity_fields() {
        let now = after(Some(&previous(NOW - 7_200_000)), ProbeOutcome::Timeout("slow".into()));
        let patch = activity_patch(&now);
        assert_eq!(
            patch,
            json!({"status": {"activity": {
                "lastActivity": NOW - 7_200_000,
                "lastUpdate": NOW - 3_600_000,
                "lastProbe": {"startTime": START, "endTime": END, "result": "Timeout", "message": "slow"},
                "rules": {"pauseWorkspace": {"eligibleAfter": NOW - 7_200_000 + 3_600_000}}
            }}})
        );
    }

    #[test]
    fn the_patch_never_writes_a_null_last_probe() {
        let patch = activity_patch(&Activity::default());
        assert!(patch.pointer("/status/activity/lastProbe").is_none());
        assert_eq!(
            patch.pointer("/status/activity/rules/pauseWorkspace/eligibleAfter"),
            Some(&json!(0))
        );
    }
}
