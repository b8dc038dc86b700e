//! Property tests of the decisions (SPEC §4, §5): random workspaces, rules, probe histories,
//! outcomes and clocks, each checked against the rules restated here independently. Every
//! property runs 10 000 cases in the normal test command.

use proptest::prelude::*;

use crate::decide::{Due, PAUSE_GRACE_MS, Pause, pause_decision, probe_due};
use crate::kubeflow::{Activity, LastProbe, ProbeResult, Workspace, WorkspaceState};
use crate::policy::{ActivityProbe, CullingPolicySpec};
use crate::record::{MAX_MESSAGE_BYTES, ProbeActivity, ProbeOutcome, ProbeRun, activity_after_probe};
use crate::rules::{PauseWindow, RuleMatch};
use crate::testing::{NOW, policy};

const CASES: u32 = 10_000;

fn state() -> impl Strategy<Value = WorkspaceState> {
    prop_oneof![
        4 => Just(WorkspaceState::Running),
        1 => Just(WorkspaceState::Paused),
        1 => Just(WorkspaceState::Pending),
        1 => Just(WorkspaceState::Terminating),
        1 => Just(WorkspaceState::Error),
        1 => Just(WorkspaceState::Unknown),
    ]
}

fn result() -> impl Strategy<Value = ProbeResult> {
    prop_oneof![3 => Just(ProbeResult::Success), 1 => Just(ProbeResult::Failure), 1 => Just(ProbeResult::Timeout)]
}

/// A time around now (ms), with the edges that break unchecked arithmetic.
fn time() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => (NOW - 10_000_000_000)..(NOW + 10_000_000),
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
    ]
}

fn seconds() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..100_000, 1 => Just(i64::from(i32::MAX)), 1 => Just(i64::MAX)]
}

fn max_running() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => seconds()]
}

fn keep_alive() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0i64), 1 => time()]
}

fn rule() -> impl Strategy<Value = RuleMatch> {
    prop_oneof![
        6 => (16i64..100_000, seconds(), keep_alive(), max_running()).prop_map(|(s, m, k, x)| RuleMatch::Pauses {
            rule: 0,
            window: PauseWindow { seconds_since_active: s, min_running_seconds: m, keep_alive_until: k, max_running_seconds: x },
        }),
        1 => (seconds(), seconds(), keep_alive(), max_running()).prop_map(|(s, m, k, x)| RuleMatch::Pauses {
            rule: 0,
            window: PauseWindow { seconds_since_active: s, min_running_seconds: m, keep_alive_until: k, max_running_seconds: x },
        }),
        1 => Just(RuleMatch::Exempt { rule: 0 }),
        1 => Just(RuleMatch::NoMatch),
    ]
}

fn probe_settings() -> impl Strategy<Value = ActivityProbe> {
    (1i32..4_000, 1i32..8_000).prop_map(|(min, extra)| {
        let mut probe = policy("p", &["k"]).spec.activity_probe;
        probe.min_probe_interval_seconds = min;
        probe.probe_interval_seconds = min.saturating_add(extra);
        probe
    })
}

#[derive(Clone, Debug)]
struct Case {
    state: WorkspaceState,
    spec_paused: bool,
    opted_out: bool,
    last_running_time: i64,
    last_activity: i64,
    probe: Option<(ProbeResult, i64, i64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        state(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        time(),
        time(),
        // The start near now as often as not: within the longest minimum interval generated.
        prop::option::weighted(
            0.9,
            (
                result(),
                prop_oneof![time(), (NOW - 8_000_000)..(NOW + 1)],
                -120_000i64..120_000,
            ),
        ),
    )
        .prop_map(|(state, spec_paused, opted_out, lrt, la, probe)| Case {
            state,
            spec_paused,
            opted_out,
            last_running_time: lrt,
            last_activity: la,
            // The end relative to now, so fresh and stale probes are both common.
            probe: probe.map(|(result, start, end)| (result, start, NOW + end)),
        })
}

impl Case {
    fn workspace(&self) -> Workspace {
        let mut ws = Workspace::test().in_state(self.state);
        ws.spec.paused = self.spec_paused;
        if self.opted_out {
            ws = ws.annotated_out();
        }
        let status = ws.status.get_or_insert_with(Default::default);
        status.last_running_time = self.last_running_time;
        status.activity = Some(self.activity());
        ws
    }

    fn activity(&self) -> Activity {
        Activity {
            last_activity: self.last_activity,
            last_update: 0,
            last_probe: self.probe.map(|(result, start, end)| LastProbe {
                start_time: start,
                end_time: end,
                result,
                message: String::new(),
            }),
            rules: None,
        }
    }
}

/// SPEC §4's `eligibleAfter`, restated with exact arithmetic (0 = unknown or never), with
/// this project's maximum lifetime and keep-alive.
fn oracle_eligible(last_activity: i64, last_running_time: i64, rule: &RuleMatch) -> i128 {
    let Some(window) = rule.pause_window() else { return 0 };
    let idle = if last_activity <= 0 {
        0
    } else {
        let effective = i128::from(last_activity.max(last_running_time));
        let idle_until = effective + i128::from(window.seconds_since_active.max(0)) * 1000;
        if window.min_running_seconds <= 0 {
            idle_until
        } else if last_running_time <= 0 {
            0
        } else {
            idle_until.max(i128::from(last_running_time) + i128::from(window.min_running_seconds) * 1000)
        }
    };
    let lifetime = if window.max_running_seconds > 0 && last_running_time > 0 {
        i128::from(last_running_time) + i128::from(window.max_running_seconds) * 1000
    } else {
        0
    };
    let eligible = match (idle, lifetime) {
        (0, l) => l,
        (i, 0) => i,
        (i, l) => i.min(l),
    }
    .min(i128::from(i64::MAX));
    if eligible <= 0 {
        return 0;
    }
    // Not before the user's keep-alive.
    eligible
        .max(i128::from(window.keep_alive_until))
        .min(i128::from(i64::MAX))
}

fn spec(dry_run: bool) -> CullingPolicySpec {
    let mut spec = policy("p", &["k"]).spec;
    spec.dry_run = dry_run;
    spec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A pause (or a dry run's WouldCull) happens exactly when SPEC §4 allows one.
    #[test]
    fn a_pause_happens_exactly_when_spec_4_allows_it(case in case(), rule in rule(), dry_run: bool) {
        let ws = case.workspace();
        let activity = case.activity();
        let decision = pause_decision(&ws, &activity, &rule, &spec(dry_run), NOW);
        let allowed = match case.probe {
            Some((ProbeResult::Success, _, end)) => {
                let eligible = oracle_eligible(case.last_activity, case.last_running_time, &rule);
                end > 0
                    && i128::from(NOW) - i128::from(end) <= 60_000
                    && !case.spec_paused
                    && case.state == WorkspaceState::Running
                    && eligible > 0
                    && i128::from(NOW) >= eligible + i128::from(PAUSE_GRACE_MS)
                    && !case.opted_out
            }
            _ => false,
        };
        let expected = match (allowed, dry_run) {
            (false, _) => None,
            (true, false) => Some(Pause::Yes),
            (true, true) => Some(Pause::WouldCull),
        };
        let got = match decision {
            Pause::No(_) => None,
            other => Some(other),
        };
        prop_assert_eq!(got, expected);
    }

    /// Around the moment itself: a fresh successful probe pauses from `eligibleAfter` + 5 s
    /// on (SPEC §4), never a millisecond before — with or without a minimum running time, and
    /// whether the last activity or the last start sets `eligibleAfter`.
    #[test]
    fn a_pause_comes_exactly_five_seconds_after_eligible_after(
        seconds_since_active in 16i64..100_000,
        from_eligible in -10_000i64..10_000,
        started_later in prop::bool::ANY,
        min_running_seconds in prop_oneof![Just(0i64), 1i64..16],
    ) {
        const SPEC_GRACE_MS: i64 = 5_000;
        let rule = RuleMatch::Pauses {
            rule: 0,
            window: PauseWindow { seconds_since_active, min_running_seconds, keep_alive_until: 0, max_running_seconds: 0 },
        };
        // The moment `eligibleAfter` falls at, set by the last activity or by a later start.
        let eligible = NOW - SPEC_GRACE_MS - from_eligible;
        let since = eligible - seconds_since_active * 1000;
        let (last_activity, last_running_time) = if started_later { (since - 1000, since) } else { (since, since - 1000) };
        let mut ws = Workspace::test().running();
        let activity = Activity {
            last_activity,
            last_update: 0,
            last_probe: Some(LastProbe { start_time: NOW - 200, end_time: NOW - 100, result: ProbeResult::Success, message: String::new() }),
            rules: None,
        };
        let status = ws.status.get_or_insert_with(Default::default);
        status.last_running_time = last_running_time;
        status.activity = Some(activity.clone());
        let decision = pause_decision(&ws, &activity, &rule, &spec(false), NOW);
        prop_assert_eq!(decision == Pause::Yes, NOW >= eligible + SPEC_GRACE_MS, "{:?}", decision);
    }

    /// The next probe is never sooner than `minProbeIntervalSeconds` after the last one started,
    /// and a workspace that is not Running (or is paused) is never probed.
    #[test]
    fn probes_are_never_closer_than_the_minimum_interval(case in case(), rule in rule(), probe in probe_settings()) {
        let ws = case.workspace();
        let due = probe_due(&ws, &probe, &rule, NOW);
        if case.spec_paused || case.state != WorkspaceState::Running {
            prop_assert!(matches!(due, Due::NotManaged(_)), "{:?}", due);
            return Ok(());
        }
        let earliest = case
            .probe
            .filter(|(_, start, _)| *start > 0 && *start <= NOW)
            .map(|(_, start, _)| i128::from(start) + i128::from(probe.min_probe_interval_seconds) * 1000);
        match (due, earliest) {
            (Due::Now, Some(earliest)) => prop_assert!(i128::from(NOW) >= earliest),
            (Due::At(at), Some(earliest)) => prop_assert!(i128::from(at) >= earliest && at > NOW),
            (Due::At(at), None) => prop_assert!(false, "no valid last probe, yet due at {}", at),
            (Due::NotManaged(why), _) => prop_assert!(false, "{}", why),
            (Due::Now, None) => {}
        }
    }

    /// What a probe writes: `lastActivity` never moves back, a failure changes neither it nor
    /// `lastUpdate`, the message fits its cap, and `eligibleAfter` follows the rule.
    #[test]
    fn a_probe_never_moves_last_activity_back(
        case in case(),
        rule in rule(),
        start in (NOW - 1_000_000)..NOW,
        took in 0i64..60_000,
        outcome in prop_oneof![
            Just(ProbeOutcome::Success(ProbeActivity::ActiveNow)),
            Just(ProbeOutcome::Success(ProbeActivity::Idle)),
            Just(ProbeOutcome::Success(ProbeActivity::Unknown)),
            time().prop_map(|t| ProbeOutcome::Success(ProbeActivity::LastAt(t))),
            ".{0,3000}".prop_map(ProbeOutcome::Failure),
            ".{0,3000}".prop_map(ProbeOutcome::Timeout),
        ],
    ) {
        let previous = case.activity();
        let run = ProbeRun { start_ms: start, end_ms: start + took, outcome: outcome.clone() };
        let after = activity_after_probe(Some(&previous), &run, case.last_running_time, &rule);
        let probe = after.last_probe.as_ref().unwrap();
        prop_assert!(probe.message.len() <= MAX_MESSAGE_BYTES);
        prop_assert_eq!((probe.start_time, probe.end_time), (run.start_ms, run.end_ms));
        if probe.result == ProbeResult::Success {
            prop_assert!(after.last_activity >= previous.last_activity.max(0));
            prop_assert!(after.last_activity <= (run.end_ms + 60_000).max(previous.last_activity));
            prop_assert_eq!(after.last_update, run.end_ms);
        } else {
            prop_assert_eq!(after.last_activity, previous.last_activity);
            prop_assert_eq!(after.last_update, previous.last_update);
        }
        prop_assert_eq!(
            i128::from(after.eligible_after()),
            oracle_eligible(after.last_activity, case.last_running_time, &rule)
        );
    }

    /// A workspace driven through a random history (outcomes, probe durations, a restart)
    /// is paused only when it really was idle for its window after a fresh success, and its
    /// probes keep their spacing.
    #[test]
    fn a_random_history_pauses_only_an_idle_workspace(
        steps in prop::collection::vec((0u8..6, 0i64..20_000, 0i64..120_000, prop::bool::weighted(0.05)), 1..30),
        probe in probe_settings(),
        seconds_since_active in 16i64..20_000,
        min_running_seconds in prop_oneof![Just(0i64), 0i64..20_000],
        max_running_seconds in prop_oneof![Just(0i64), 20_000i64..100_000],
    ) {
        let rule = RuleMatch::Pauses {
            rule: 0,
            window: PauseWindow { seconds_since_active, min_running_seconds, keep_alive_until: 0, max_running_seconds },
        };
        let mut now = NOW;
        let mut ws = Workspace::test().running();
        ws.status.as_mut().unwrap().last_running_time = now;
        let mut last_start: Option<i64> = None;
        for (kind, took, active_ago, restart) in steps {
            if restart {
                // Paused and resumed meanwhile: a new lastRunningTime.
                now += 1000;
                ws.status.as_mut().unwrap().last_running_time = now;
            }
            now = match probe_due(&ws, &probe, &rule, now) {
                Due::Now => now,
                Due::At(at) => at,
                Due::NotManaged(why) => { prop_assert!(false, "{}", why); unreachable!() }
            };
            if let Some(previous) = last_start {
                prop_assert!(now - previous >= i64::from(probe.min_probe_interval_seconds) * 1000);
            }
            last_start = Some(now);
            let end = now + took;
            let outcome = match kind {
                0 => ProbeOutcome::Success(ProbeActivity::ActiveNow),
                1 | 2 => ProbeOutcome::Success(ProbeActivity::Idle),
                3 => ProbeOutcome::Success(ProbeActivity::LastAt(end - active_ago)),
                4 => ProbeOutcome::Failure("down".into()),
                _ => ProbeOutcome::Timeout("slow".into()),
            };
            let run = ProbeRun { start_ms: now, end_ms: end, outcome: outcome.clone() };
            let activity = activity_after_probe(ws.activity(), &run, ws.last_running_time(), &rule);
            ws.status.as_mut().unwrap().activity = Some(activity.clone());
            now = end;
            if pause_decision(&ws, &activity, &rule, &spec(false), now) == Pause::Yes {
                prop_assert!(matches!(outcome, ProbeOutcome::Success(_)), "paused on {:?}", outcome);
                let effective = activity.last_activity.max(ws.last_running_time());
                let ran = now - ws.last_running_time();
                let idle = now - effective >= seconds_since_active * 1000 + PAUSE_GRACE_MS
                    && ran >= min_running_seconds * 1000;
                let lifetime = max_running_seconds > 0 && ran >= max_running_seconds * 1000 + PAUSE_GRACE_MS;
                prop_assert!(idle || lifetime, "paused after {} ms running, idle since {}", ran, effective);
                break;
            }
        }
    }
}
