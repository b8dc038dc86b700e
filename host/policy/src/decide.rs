//! When to probe a workspace and whether to pause it (SPEC §4), as pure functions of the
//! workspace, the policy, the matched rule and the clock (UNIX ms, passed in).
//!
//! All arithmetic on times saturates: a huge window must mean "never", not wrap into "now".

use crate::kinds::KindNotManaged;
use crate::kubeflow::{Activity, ProbeResult, Workspace, WorkspaceState};
use crate::policy::{ActivityProbe, CullingPolicySpec};
use crate::rules::RuleMatch;
use crate::selector::SelectorError;

/// The margin past `eligibleAfter` before a pause (and the probe that may cause it).
pub const PAUSE_GRACE_MS: i64 = 5_000;

/// How old the probe behind a pause may be: a pause follows the probe (and the re-read that
/// confirms it) at once, so anything older is stale status and never pauses.
pub const FRESH_PROBE_MAX_AGE_MS: i64 = 60_000;

const MS_PER_SECOND: i64 = 1_000;

/// Why the culler leaves a workspace alone (neither probes nor writes its status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmanaged {
    /// No CullingPolicy names the workspace's kind.
    NoPolicy,
    /// A policy names the kind but does not manage it.
    Kind(KindNotManaged),
    /// `spec.paused` is already true.
    SpecPaused,
    /// Only `Running` workspaces are probed.
    NotRunning(WorkspaceState),
}

impl std::fmt::Display for Unmanaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmanaged::NoPolicy => f.write_str("no CullingPolicy names its WorkspaceKind"),
            Unmanaged::Kind(reason) => write!(f, "its WorkspaceKind is not managed: {reason}"),
            Unmanaged::SpecPaused => f.write_str("it is paused"),
            Unmanaged::NotRunning(state) => write!(f, "it is {state}, not Running"),
        }
    }
}

/// When a workspace should next be probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Probe it now.
    Now,
    /// Requeue it for this moment (UNIX ms).
    At(i64),
    /// Leave it alone, and why.
    NotManaged(Unmanaged),
}

/// `max(lastActivity, lastRunningTime)`: activity from before the workspace last started does
/// not count against it. 0 while `lastActivity` is unknown.
pub fn effective_last_activity(last_activity: i64, last_running_time: i64) -> i64 {
    if last_activity <= 0 {
        return 0;
    }
    last_activity.max(last_running_time)
}

/// `status.activity.rules.pauseWorkspace.eligibleAfter`: effective last activity +
/// `secondsSinceActive`, and not before `lastRunningTime` + `minRunningSeconds`, nor before the
/// user's keep-alive. 0 when no
/// pausing rule applies, when `lastActivity` is unknown, or when `minRunningSeconds` applies
/// but the workspace has no `lastRunningTime`.
pub fn eligible_after(last_activity: i64, last_running_time: i64, rule: &RuleMatch) -> i64 {
    let Some(window) = rule.pause_window() else {
        return 0;
    };
    let idle = idle_eligible_after(last_activity, last_running_time, &window);
    // A maximum lifetime makes it eligible once it has run that long, active or not.
    let lifetime = if window.max_running_seconds > 0 && last_running_time > 0 {
        last_running_time.saturating_add(seconds_to_ms(window.max_running_seconds))
    } else {
        0
    };
    let eligible = match (idle, lifetime) {
        (0, lifetime) => lifetime,
        (idle, 0) => idle,
        (idle, lifetime) => idle.min(lifetime),
    };
    if eligible <= 0 {
        return 0;
    }
    // Not before the user's keep-alive.
    eligible.max(window.keep_alive_until)
}

/// Whether the rule's maximum lifetime, not idleness, sets `eligibleAfter` (for messages).
pub fn limited_by_lifetime(last_activity: i64, last_running_time: i64, rule: &RuleMatch) -> bool {
    let Some(window) = rule.pause_window().filter(|w| w.max_running_seconds > 0) else {
        return false;
    };
    let idle_only = crate::rules::PauseWindow {
        max_running_seconds: 0,
        ..window
    };
    let by_idleness = eligible_after(
        last_activity,
        last_running_time,
        &RuleMatch::Pauses {
            rule: 0,
            window: idle_only,
        },
    );
    let eligible = eligible_after(last_activity, last_running_time, rule);
    eligible > 0 && (by_idleness == 0 || eligible < by_idleness)
}

/// Eligibility by idleness alone: effective last activity + `secondsSinceActive`, not before
/// `lastRunningTime` + `minRunningSeconds` (0: unknown).
fn idle_eligible_after(last_activity: i64, last_running_time: i64, window: &crate::rules::PauseWindow) -> i64 {
    let effective = effective_last_activity(last_activity, last_running_time);
    if effective <= 0 {
        return 0;
    }
    let idle_until = effective.saturating_add(seconds_to_ms(window.seconds_since_active));
    if window.min_running_seconds <= 0 {
        idle_until
    } else if last_running_time <= 0 {
        // Kubeflow never pauses on the running guard without knowing when it started.
        0
    } else {
        idle_until.max(last_running_time.saturating_add(seconds_to_ms(window.min_running_seconds)))
    }
}

fn seconds_to_ms(seconds: i64) -> i64 {
    seconds.max(0).saturating_mul(MS_PER_SECOND)
}

/// When to probe a workspace of a managed kind next: never probed → now; after a failed or
/// timed-out probe → exactly `startTime + minProbeIntervalSeconds`; otherwise
/// `min(startTime + probeIntervalSeconds, eligibleAfter + 5 s)` (only the interval for a
/// workspace annotated out of culling), but never before `startTime + minProbeIntervalSeconds`.
pub fn probe_due(workspace: &Workspace, probe: &ActivityProbe, rule: &RuleMatch, now_ms: i64) -> Due {
    if workspace.spec.paused {
        return Due::NotManaged(Unmanaged::SpecPaused);
    }
    let state = workspace.state();
    if state != WorkspaceState::Running {
        return Due::NotManaged(Unmanaged::NotRunning(state));
    }
    let activity = workspace.activity();
    // A start in the future is a clock that went back or a bad write: probing now is safe.
    let Some(last) = activity
        .and_then(|a| a.last_probe.as_ref())
        .filter(|p| p.start_time > 0 && p.start_time <= now_ms)
    else {
        return Due::Now;
    };
    let earliest = last
        .start_time
        .saturating_add(seconds_to_ms(i64::from(probe.min_probe_interval_seconds)));
    let at = if last.result == ProbeResult::Success {
        let regular = last
            .start_time
            .saturating_add(seconds_to_ms(i64::from(probe.probe_interval_seconds)));
        let last_activity = activity.map_or(0, |a| a.last_activity);
        let eligible = eligible_after(last_activity, workspace.last_running_time(), rule);
        // Probe again right when the workspace could be paused, not up to an interval later
        // (a workspace annotated out never is: the regular interval keeps its status fresh).
        let wanted = if eligible > 0 && !workspace.culling_disabled() {
            regular.min(eligible.saturating_add(PAUSE_GRACE_MS))
        } else {
            regular
        };
        wanted.max(earliest)
    } else {
        earliest
    };
    if at <= now_ms { Due::Now } else { Due::At(at) }
}

/// A workspace owner's keep-alive, as the policy allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// No keep-alive annotation.
    None,
    /// Kept running until then (UNIX ms).
    Until(i64),
    /// Asked for `requested`, beyond the policy's cap: kept running until `until` instead.
    Clamped {
        /// What the annotation says (UNIX ms).
        requested: i64,
        /// The cap: when the culler read it + `keepAlive.maxSeconds`.
        until: i64,
    },
    /// The annotation is ignored, and why (a value that is not an RFC 3339 time, or a policy
    /// that allows no keep-alive).
    Ignored(String),
}

impl KeepAlive {
    /// Until when the workspace is kept running (UNIX ms; 0: not kept).
    pub fn until(&self) -> i64 {
        match self {
            KeepAlive::Until(until) | KeepAlive::Clamped { until, .. } => *until,
            KeepAlive::None | KeepAlive::Ignored(_) => 0,
        }
    }
}

/// The workspace's keep-alive annotation read at `now_ms`, capped at `max_seconds` ahead.
pub fn keep_alive(workspace: &Workspace, max_seconds: i64, now_ms: i64) -> KeepAlive {
    let Some(value) = workspace.keep_alive_annotation() else {
        return KeepAlive::None;
    };
    let Ok(requested) = chrono::DateTime::parse_from_rfc3339(value.trim()) else {
        return KeepAlive::Ignored(format!(
            "{} {value:?} is not an RFC 3339 time (e.g. 2026-12-01T18:00:00Z)",
            crate::kubeflow::KEEP_ALIVE_ANNOTATION
        ));
    };
    if max_seconds <= 0 {
        return KeepAlive::Ignored("the CullingPolicy allows no keep-alive (keepAlive.maxSeconds: 0)".into());
    }
    let requested = requested.timestamp_millis();
    let cap = now_ms.saturating_add(seconds_to_ms(max_seconds));
    if requested > cap {
        KeepAlive::Clamped { requested, until: cap }
    } else {
        KeepAlive::Until(requested)
    }
}

/// Whether to pause a workspace right after a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Pause it (patch `spec.paused: true` after a fresh re-read agrees).
    Yes,
    /// The policy is a dry run: report that it would be paused, and leave it running.
    WouldCull,
    /// Leave it running, and why.
    No(Keep),
}

/// Why a probed workspace keeps running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// There is no probe result, or it is older than [`FRESH_PROBE_MAX_AGE_MS`].
    NoFreshProbe,
    /// The probe did not succeed (a failure never pauses).
    ProbeFailed(ProbeResult),
    /// `spec.paused` is already true.
    AlreadyPaused,
    /// The workspace is no longer `Running`.
    NotRunning(WorkspaceState),
    /// No rule of the policy applies to it.
    NoPausingRule,
    /// The rule that applies says `pauseWorkspace: false`.
    ExemptByRule {
        /// Index into `activityRules`.
        rule: usize,
    },
    /// A rule's selector cannot be evaluated.
    InvalidRule {
        /// Index into `activityRules`.
        rule: usize,
        /// What is wrong with it.
        error: SelectorError,
    },
    /// Its last activity is unknown, so eligibility cannot be computed.
    EligibilityUnknown,
    /// Not idle long enough yet (UNIX ms it becomes eligible).
    NotYetEligible {
        /// `eligibleAfter`.
        eligible_after: i64,
    },
    /// Annotated `workspace-culler.io/disable-culling: "true"`.
    CullingDisabled,
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::NoFreshProbe => f.write_str("no fresh probe result"),
            Keep::ProbeFailed(result) => write!(f, "the probe did not succeed ({result:?})"),
            Keep::AlreadyPaused => f.write_str("already paused"),
            Keep::NotRunning(state) => write!(f, "it is {state}, not Running"),
            Keep::NoPausingRule => f.write_str("no activity rule applies to it"),
            Keep::ExemptByRule { rule } => write!(f, "activityRules[{rule}] says pauseWorkspace: false"),
            Keep::InvalidRule { rule, error } => write!(f, "activityRules[{rule}] is invalid: {error}"),
            Keep::EligibilityUnknown => f.write_str("its last activity (or start time) is unknown"),
            Keep::NotYetEligible { eligible_after } => write!(f, "not eligible until {eligible_after} ms"),
            Keep::CullingDisabled => write!(f, "annotated {}: \"true\"", crate::kubeflow::DISABLE_CULLING_ANNOTATION),
        }
    }
}

/// SPEC §4's pause decision, from the `status.activity` a fresh probe just produced: pause
/// when the probe succeeded, the workspace is still Running, the rule pauses, `now ≥
/// eligibleAfter + 5 s`, the workspace is not annotated out, and the policy is not a dry run.
pub fn pause_decision(
    workspace: &Workspace,
    activity: &Activity,
    rule: &RuleMatch,
    policy: &CullingPolicySpec,
    now_ms: i64,
) -> Pause {
    let Some(probe) = &activity.last_probe else {
        return Pause::No(Keep::NoFreshProbe);
    };
    if probe.result != ProbeResult::Success {
        return Pause::No(Keep::ProbeFailed(probe.result));
    }
    if probe.end_time <= 0 || now_ms.saturating_sub(probe.end_time) > FRESH_PROBE_MAX_AGE_MS {
        return Pause::No(Keep::NoFreshProbe);
    }
    if workspace.spec.paused {
        return Pause::No(Keep::AlreadyPaused);
    }
    let state = workspace.state();
    if state != WorkspaceState::Running {
        return Pause::No(Keep::NotRunning(state));
    }
    match rule {
        RuleMatch::Pauses { .. } => {}
        RuleMatch::NoMatch => return Pause::No(Keep::NoPausingRule),
        RuleMatch::Exempt { rule } => return Pause::No(Keep::ExemptByRule { rule: *rule }),
        RuleMatch::Invalid { rule, error } => {
            return Pause::No(Keep::InvalidRule {
                rule: *rule,
                error: error.clone(),
            });
        }
    }
    let eligible = eligible_after(activity.last_activity, workspace.last_running_time(), rule);
    if eligible <= 0 {
        return Pause::No(Keep::EligibilityUnknown);
    }
    // An `eligibleAfter` saturated at the end of time is never reached, not even then.
    let due = eligible.checked_add(PAUSE_GRACE_MS);
    if due.is_none_or(|due| now_ms < due) {
        return Pause::No(Keep::NotYetEligible {
            eligible_after: eligible,
        });
    }
    if workspace.culling_disabled() {
        return Pause::No(Keep::CullingDisabled);
    }
    if policy.dry_run { Pause::WouldCull } else { Pause::Yes }
}

#[cfg(test)]
mod tests;
