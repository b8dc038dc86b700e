use super::*;
use crate::kubeflow::LastProbe;
use crate::record::{ProbeActivity, ProbeOutcome, ProbeRun, activity_after_probe};
use crate::rules::PauseWindow;
use crate::testing::{NOW, policy};

const HOUR: i64 = 3600;
const MIN_INTERVAL_MS: i64 = 300_000;
const INTERVAL_MS: i64 = 3_600_000;

fn probe() -> ActivityProbe {
    policy("p", &["jupyterlab"]).spec.activity_probe
}

fn spec(dry_run: bool) -> CullingPolicySpec {
    let mut spec = policy("p", &["jupyterlab"]).spec;
    spec.dry_run = dry_run;
    spec
}

fn pausing(seconds_since_active: i64, min_running_seconds: i64) -> RuleMatch {
    RuleMatch::Pauses {
        rule: 0,
        window: PauseWindow {
            seconds_since_active,
            min_running_seconds,
            keep_alive_until: 0,
            max_running_seconds: 0,
        },
    }
}

/// The activity a fresh successful probe (ended just now) left on `ws`.
fn freshly_probed(ws: &Workspace) -> Activity {
    let mut activity = ws.activity().cloned().unwrap_or_default();
    activity.last_probe = Some(LastProbe {
        start_time: NOW - 1_000,
        end_time: NOW,
        result: ProbeResult::Success,
        message: "probe succeeded: not active now".into(),
    });
    activity
}

fn decide(ws: &Workspace, rule: &RuleMatch) -> Pause {
    pause_decision(ws, &freshly_probed(ws), rule, &spec(false), NOW)
}

// --- when to probe ---

#[test]
fn only_running_workspaces_are_probed() {
    for state in [
        WorkspaceState::Terminating,
        WorkspaceState::Paused,
        WorkspaceState::Pending,
        WorkspaceState::Error,
        WorkspaceState::Unknown,
    ] {
        let ws = Workspace::test().in_state(state);
        assert_eq!(
            probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
            Due::NotManaged(Unmanaged::NotRunning(state))
        );
    }
    let mut no_status = Workspace::test();
    no_status.status = None;
    assert_eq!(
        probe_due(&no_status, &probe(), &pausing(HOUR, 0), NOW),
        Due::NotManaged(Unmanaged::NotRunning(WorkspaceState::Unknown))
    );
}

#[test]
fn a_workspace_being_paused_is_not_probed() {
    let ws = Workspace::test().running().paused();
    assert_eq!(
        probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
        Due::NotManaged(Unmanaged::SpecPaused)
    );
}

#[test]
fn a_workspace_never_probed_is_due_now() {
    let ws = Workspace::test().running();
    assert_eq!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::Now);
    let ws = Workspace::test().running().idle_for(10);
    assert_eq!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::Now);
}

#[test]
fn after_a_success_the_next_probe_is_one_interval_later() {
    // Active 1 minute ago: eligible in 59 minutes, after the regular interval from the probe.
    let ws = Workspace::test()
        .running()
        .idle_for(60)
        .probed_ago(120, ProbeResult::Success);
    assert_eq!(
        probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
        Due::At(NOW - 120_000 + INTERVAL_MS)
    );
    // Without a pausing rule only the interval counts.
    assert_eq!(
        probe_due(&ws, &probe(), &RuleMatch::NoMatch, NOW),
        Due::At(NOW - 120_000 + INTERVAL_MS)
    );
}

#[test]
fn the_next_probe_comes_5_s_after_eligibility_when_that_is_sooner() {
    // Idle 50 minutes of a 1-hour window, probed 10 minutes ago: eligible in 10 minutes,
    // sooner than the regular probe in 50 minutes.
    let ws = Workspace::test()
        .running()
        .idle_for(3000)
        .probed_ago(600, ProbeResult::Success);
    let eligible = NOW - 3_000_000 + 3_600_000;
    assert_eq!(
        probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
        Due::At(eligible + PAUSE_GRACE_MS)
    );
}

#[test]
fn a_workspace_annotated_out_is_probed_at_the_regular_interval_even_past_eligibility() {
    // Eligible long ago, but never paused: probing it every minProbeIntervalSeconds (12 times
    // as often) would serve no pause.
    let ws = Workspace::test()
        .running()
        .idle_for(5 * HOUR)
        .probed_ago(600, ProbeResult::Success)
        .annotated_out();
    assert_eq!(
        probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
        Due::At(NOW - 600_000 + INTERVAL_MS)
    );
}

#[test]
fn a_probe_is_never_earlier_than_min_probe_interval() {
    // Eligible long ago, probed (successfully) 1 minute ago: wait out the minimum interval.
    let ws = Workspace::test()
        .running()
        .idle_for(5 * HOUR)
        .probed_ago(60, ProbeResult::Success);
    assert_eq!(
        probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
        Due::At(NOW - 60_000 + MIN_INTERVAL_MS)
    );
    // Once it has passed, now.
    let ws = Workspace::test()
        .running()
        .idle_for(5 * HOUR)
        .probed_ago(300, ProbeResult::Success);
    assert_eq!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::Now);
}

#[test]
fn after_a_failed_probe_the_next_is_exactly_min_probe_interval_later() {
    for result in [ProbeResult::Failure, ProbeResult::Timeout] {
        // Even when the regular interval or eligibility would say later (or sooner).
        for idle in [10, 5 * HOUR] {
            let ws = Workspace::test().running().idle_for(idle).probed_ago(30, result);
            assert_eq!(
                probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW),
                Due::At(NOW - 30_000 + MIN_INTERVAL_MS),
                "{result:?}, idle {idle}s"
            );
        }
        let ws = Workspace::test().running().probed_ago(300, result);
        assert_eq!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::Now);
    }
}

#[test]
fn a_probe_record_from_the_future_means_probe_now() {
    let ws = Workspace::test().running().probed_ago(-600, ProbeResult::Success);
    assert_eq!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::Now);
}

// --- eligibility ---

#[test]
fn eligible_after_is_last_activity_plus_the_window() {
    assert_eq!(eligible_after(NOW, NOW - 1_000, &pausing(HOUR, 0)), NOW + 3_600_000);
}

#[test]
fn a_resumed_workspace_gets_a_full_window() {
    // Last active two days ago, resumed ten minutes ago: the window starts at the resume.
    let started = NOW - 600_000;
    assert_eq!(
        eligible_after(NOW - 2 * 86_400_000, started, &pausing(HOUR, 0)),
        started + 3_600_000
    );
    let ws = Workspace::test().running().started_ago(600).idle_for(2 * 86_400);
    assert_eq!(
        decide(&ws, &pausing(HOUR, 0)),
        Pause::No(Keep::NotYetEligible {
            eligible_after: started + 3_600_000
        })
    );
}

#[test]
fn min_running_seconds_delays_eligibility() {
    // Idle window (60 s) long past, but only running for 100 s of the 300 s required.
    let started = NOW - 100_000;
    let rule = pausing(60, 300);
    assert_eq!(eligible_after(started, started, &rule), started + 300_000);
    let ws = Workspace::test().running().started_ago(100).idle_for(100);
    assert_eq!(
        decide(&ws, &rule),
        Pause::No(Keep::NotYetEligible {
            eligible_after: started + 300_000
        })
    );
    // The longer of the two wins.
    assert_eq!(eligible_after(started, started, &pausing(600, 300)), started + 600_000);
}

#[test]
fn min_running_seconds_without_a_running_time_is_unknown() {
    assert_eq!(eligible_after(NOW - 86_400_000, 0, &pausing(60, 300)), 0);
    assert_eq!(
        eligible_after(NOW - 86_400_000, 0, &pausing(60, 0)),
        NOW - 86_400_000 + 60_000
    );
}

#[test]
fn unknown_last_activity_is_never_eligible() {
    assert_eq!(eligible_after(0, NOW - 86_400_000, &pausing(HOUR, 0)), 0);
    assert_eq!(eligible_after(-5, NOW - 86_400_000, &pausing(HOUR, 0)), 0);
    let ws = Workspace::test().running();
    assert_eq!(decide(&ws, &pausing(HOUR, 0)), Pause::No(Keep::EligibilityUnknown));
}

#[test]
fn eligible_after_is_zero_without_a_pausing_rule() {
    let invalid = RuleMatch::Invalid {
        rule: 0,
        error: SelectorError::InvalidOperator {
            key: "k".into(),
            operator: "Like".into(),
        },
    };
    for rule in [RuleMatch::NoMatch, RuleMatch::Exempt { rule: 1 }, invalid] {
        assert_eq!(eligible_after(NOW - 86_400_000, NOW - 90_000_000, &rule), 0, "{rule:?}");
    }
}

// --- the pause decision ---

#[test]
fn pauses_only_from_eligible_after_plus_5_s() {
    // Eligible exactly 5 s ago: pause.
    let ws = Workspace::test().running().idle_for(HOUR + 5);
    assert_eq!(decide(&ws, &pausing(HOUR, 0)), Pause::Yes);
    // One millisecond short of it: keep.
    let mut ws = Workspace::test().running().idle_for(HOUR + 5);
    if let Some(a) = ws.status.as_mut().and_then(|s| s.activity.as_mut()) {
        a.last_activity += 1;
    }
    assert_eq!(
        decide(&ws, &pausing(HOUR, 0)),
        Pause::No(Keep::NotYetEligible {
            eligible_after: NOW - 5_000 + 1
        })
    );
}

#[test]
fn a_failed_probe_never_pauses() {
    let ws = Workspace::test().running().idle_for(10 * HOUR);
    for result in [ProbeResult::Failure, ProbeResult::Timeout] {
        let mut activity = freshly_probed(&ws);
        if let Some(p) = activity.last_probe.as_mut() {
            p.result = result;
        }
        assert_eq!(
            pause_decision(&ws, &activity, &pausing(HOUR, 0), &spec(false), NOW),
            Pause::No(Keep::ProbeFailed(result))
        );
    }
}

#[test]
fn stale_status_never_pauses() {
    let ws = Workspace::test()
        .running()
        .idle_for(10 * HOUR)
        .probed_ago(120, ProbeResult::Success);
    let stale = ws.activity().cloned().unwrap_or_default();
    assert_eq!(
        pause_decision(&ws, &stale, &pausing(HOUR, 0), &spec(false), NOW),
        Pause::No(Keep::NoFreshProbe)
    );
    let never_probed = Workspace::test().running().idle_for(10 * HOUR);
    let activity = never_probed.activity().cloned().unwrap_or_default();
    assert_eq!(
        pause_decision(&never_probed, &activity, &pausing(HOUR, 0), &spec(false), NOW),
        Pause::No(Keep::NoFreshProbe)
    );
}

#[test]
fn a_dry_run_policy_would_cull_instead() {
    let ws = Workspace::test().running().idle_for(10 * HOUR);
    assert_eq!(
        pause_decision(&ws, &freshly_probed(&ws), &pausing(HOUR, 0), &spec(true), NOW),
        Pause::WouldCull
    );
}

#[test]
fn an_annotated_workspace_is_probed_but_never_paused() {
    let ws = Workspace::test().running().idle_for(10 * HOUR).annotated_out();
    assert_eq!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::Now);
    assert_eq!(decide(&ws, &pausing(HOUR, 0)), Pause::No(Keep::CullingDisabled));
    assert_eq!(
        pause_decision(&ws, &freshly_probed(&ws), &pausing(HOUR, 0), &spec(true), NOW),
        Pause::No(Keep::CullingDisabled),
        "not even a WouldCull"
    );
}

#[test]
fn a_workspace_without_a_pausing_rule_is_never_paused() {
    let ws = Workspace::test().running().idle_for(100 * HOUR);
    assert_eq!(decide(&ws, &RuleMatch::NoMatch), Pause::No(Keep::NoPausingRule));
    assert_eq!(
        decide(&ws, &RuleMatch::Exempt { rule: 2 }),
        Pause::No(Keep::ExemptByRule { rule: 2 })
    );
    let error = SelectorError::InvalidOperator {
        key: "tier".into(),
        operator: "Like".into(),
    };
    assert_eq!(
        decide(
            &ws,
            &RuleMatch::Invalid {
                rule: 0,
                error: error.clone()
            }
        ),
        Pause::No(Keep::InvalidRule { rule: 0, error })
    );
}

#[test]
fn a_workspace_no_longer_running_is_not_paused() {
    let ws = Workspace::test().running().idle_for(10 * HOUR).paused();
    assert_eq!(decide(&ws, &pausing(HOUR, 0)), Pause::No(Keep::AlreadyPaused));
    let ws = Workspace::test()
        .running()
        .idle_for(10 * HOUR)
        .in_state(WorkspaceState::Terminating);
    assert_eq!(
        decide(&ws, &pausing(HOUR, 0)),
        Pause::No(Keep::NotRunning(WorkspaceState::Terminating))
    );
}

// --- overflow ---

#[test]
fn i64_max_seconds_since_active_never_culls() {
    let ws = Workspace::test()
        .running()
        .idle_for(10 * 365 * 86_400)
        .probed_ago(10_000, ProbeResult::Success);
    let rule = pausing(i64::MAX, i64::MAX);
    assert_eq!(eligible_after(NOW - 1, NOW - 2, &rule), i64::MAX);
    assert_eq!(
        decide(&ws, &rule),
        Pause::No(Keep::NotYetEligible {
            eligible_after: i64::MAX
        })
    );
    // The schedule falls back to the regular interval instead of wrapping.
    assert_eq!(probe_due(&ws, &probe(), &rule, NOW), Due::Now);
    // Not even at the end of time.
    let mut activity = freshly_probed(&ws);
    if let Some(p) = activity.last_probe.as_mut() {
        p.end_time = i64::MAX - 1;
    }
    assert_eq!(
        pause_decision(&ws, &activity, &rule, &spec(false), i64::MAX),
        Pause::No(Keep::NotYetEligible {
            eligible_after: i64::MAX
        })
    );
}

#[test]
fn the_largest_window_the_crd_allows_is_far_in_the_future() {
    let rule = pausing(i64::from(i32::MAX), i64::from(i32::MAX));
    let eligible = eligible_after(NOW, NOW, &rule);
    assert_eq!(eligible, NOW + i64::from(i32::MAX) * 1000);
    let ws = Workspace::test().running().idle_for(0);
    assert_eq!(
        decide(&ws, &rule),
        Pause::No(Keep::NotYetEligible {
            eligible_after: eligible
        })
    );
}

#[test]
fn timestamps_near_i64_max_saturate() {
    let ws = Workspace::test().running();
    let mut ws = ws.probed_ago(0, ProbeResult::Success);
    if let Some(a) = ws.status.as_mut().and_then(|s| s.activity.as_mut()) {
        a.last_activity = i64::MAX - 10;
    }
    assert_eq!(eligible_after(i64::MAX - 10, 0, &pausing(HOUR, 0)), i64::MAX);
    assert!(matches!(probe_due(&ws, &probe(), &pausing(HOUR, 0), NOW), Due::At(_)));
    assert!(matches!(
        decide(&ws, &pausing(HOUR, 0)),
        Pause::No(Keep::NotYetEligible { .. })
    ));
}

#[test]
fn negative_windows_count_as_zero() {
    assert_eq!(eligible_after(NOW, 0, &pausing(-100, -100)), NOW);
}

// --- a whole cycle ---

#[test]
fn a_probe_that_finds_the_workspace_idle_pauses_it() {
    let ws = Workspace::test()
        .running()
        .idle_for(2 * HOUR)
        .probed_ago(3600, ProbeResult::Success);
    let rule = pausing(HOUR, 300);
    assert_eq!(probe_due(&ws, &probe(), &rule, NOW), Due::Now);
    let run = ProbeRun {
        start_ms: NOW - 800,
        end_ms: NOW - 200,
        outcome: ProbeOutcome::Success(ProbeActivity::Idle),
    };
    let activity = activity_after_probe(ws.activity(), &run, ws.last_running_time(), &rule);
    assert_eq!(activity.eligible_after(), NOW - 7_200_000 + 3_600_000);
    assert_eq!(pause_decision(&ws, &activity, &rule, &spec(false), NOW), Pause::Yes);
    // The same probe finding activity keeps it, and the next probe comes an interval later.
    let active = ProbeRun {
        outcome: ProbeOutcome::Success(ProbeActivity::ActiveNow),
        ..run
    };
    let activity = activity_after_probe(ws.activity(), &active, ws.last_running_time(), &rule);
    assert!(matches!(
        pause_decision(&ws, &activity, &rule, &spec(false), NOW),
        Pause::No(Keep::NotYetEligible { .. })
    ));
    let mut after = ws.clone();
    if let Some(s) = after.status.as_mut() {
        s.activity = Some(activity);
    }
    assert_eq!(
        probe_due(&after, &probe(), &rule, NOW),
        Due::At(NOW - 800 + INTERVAL_MS)
    );
}

#[test]
fn reasons_read_well() {
    assert_eq!(
        Keep::CullingDisabled.to_string(),
        "annotated workspace-culler.io/disable-culling: \"true\""
    );
    assert_eq!(
        Unmanaged::NotRunning(WorkspaceState::Paused).to_string(),
        "it is Paused, not Running"
    );
    assert_eq!(
        Unmanaged::Kind(KindNotManaged::NotFound).to_string(),
        "its WorkspaceKind is not managed: no such WorkspaceKind"
    );
}

#[test]
fn a_keep_alive_within_the_cap_holds_a_pause_until_it_ends() {
    let ws = Workspace::test().running().annotated_keep_alive("2026-05-28T22:00:00Z");
    let until = chrono::DateTime::parse_from_rfc3339("2026-05-28T22:00:00Z")
        .unwrap()
        .timestamp_millis();
    assert!(
        until > NOW && until < NOW + 8 * HOUR * 1000,
        "the test's time is within 8 h of NOW"
    );
    assert_eq!(keep_alive(&ws, 8 * HOUR, NOW), KeepAlive::Until(until));
    // Idle for a day: eligible only once the keep-alive ends.
    let rule = pausing(HOUR, 0).kept_alive_until(until);
    assert_eq!(
        eligible_after(NOW - 24 * HOUR * 1000, NOW - 48 * HOUR * 1000, &rule),
        until
    );
    let ws = ws.idle_for(24 * HOUR);
    let activity = freshly_probed(&ws);
    assert!(matches!(
        pause_decision(&ws, &activity, &rule, &spec(false), NOW),
        Pause::No(Keep::NotYetEligible { .. })
    ));
    // It ended: paused as usual.
    let later = until + PAUSE_GRACE_MS;
    let mut activity = activity;
    activity.last_probe.as_mut().unwrap().end_time = later;
    assert_eq!(pause_decision(&ws, &activity, &rule, &spec(false), later), Pause::Yes);
}

#[test]
fn a_keep_alive_beyond_the_cap_is_clamped_and_a_malformed_one_ignored() {
    let far = Workspace::test().running().annotated_keep_alive("2099-01-01T00:00:00Z");
    match keep_alive(&far, 8 * HOUR, NOW) {
        KeepAlive::Clamped { until, .. } => assert_eq!(until, NOW + 8 * HOUR * 1000),
        other => panic!("{other:?}"),
    }
    let bad = Workspace::test().running().annotated_keep_alive("tomorrow");
    match keep_alive(&bad, 8 * HOUR, NOW) {
        KeepAlive::Ignored(why) => assert!(why.contains("not an RFC 3339 time"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(keep_alive(&bad, 8 * HOUR, NOW).until(), 0, "ignored: no keep-alive");
    let off = Workspace::test().running().annotated_keep_alive("2026-05-28T22:00:00Z");
    assert!(
        matches!(keep_alive(&off, 0, NOW), KeepAlive::Ignored(_)),
        "keepAlive.maxSeconds: 0"
    );
    assert_eq!(keep_alive(&Workspace::test(), 8 * HOUR, NOW), KeepAlive::None);
}

fn with_lifetime(seconds_since_active: i64, max_running_seconds: i64) -> RuleMatch {
    RuleMatch::Pauses {
        rule: 0,
        window: PauseWindow {
            seconds_since_active,
            min_running_seconds: 0,
            keep_alive_until: 0,
            max_running_seconds,
        },
    }
}

#[test]
fn a_maximum_lifetime_pauses_an_active_workspace_once_it_has_run_that_long() {
    // Running for 9 hours and active a minute ago; at most 8 hours.
    let ws = Workspace::test().started_ago(9 * HOUR).idle_for(60).running();
    let rule = with_lifetime(HOUR, 8 * HOUR);
    let started = ws.last_running_time();
    assert_eq!(eligible_after(NOW - 60_000, started, &rule), started + 8 * HOUR * 1000);
    assert!(crate::decide::limited_by_lifetime(NOW - 60_000, started, &rule));
    let activity = freshly_probed(&ws);
    assert_eq!(pause_decision(&ws, &activity, &rule, &spec(false), NOW), Pause::Yes);
    // Without the limit the same workspace is in use.
    assert!(matches!(
        pause_decision(&ws, &activity, &pausing(HOUR, 0), &spec(false), NOW),
        Pause::No(Keep::NotYetEligible { .. })
    ));
    // Not yet 8 hours: kept; idleness still pauses earlier when it comes first.
    let young = Workspace::test().started_ago(2 * HOUR).idle_for(60).running();
    assert!(matches!(
        pause_decision(&young, &freshly_probed(&young), &rule, &spec(false), NOW),
        Pause::No(Keep::NotYetEligible { .. })
    ));
    let idle = Workspace::test().started_ago(3 * HOUR).idle_for(2 * HOUR).running();
    assert!(!crate::decide::limited_by_lifetime(
        NOW - 2 * HOUR * 1000,
        idle.last_running_time(),
        &rule
    ));
    assert_eq!(
        pause_decision(&idle, &freshly_probed(&idle), &rule, &spec(false), NOW),
        Pause::Yes
    );
}
