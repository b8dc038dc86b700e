//! Which of a policy's `activityRules` applies to a workspace (SPEC §4), with Kubeflow's
//! semantics: rules are tried in order; a rule applies when every selector its `match` names
//! matches (no `match`, or an empty one, matches everything); the first rule that applies and
//! sets `effect.pauseWorkspace` decides. If that rule says `false`, or none applies, the
//! workspace is never paused.

use std::collections::BTreeMap;

use crate::kubeflow::{Workspace, WorkspaceKind};
use crate::policy::ActivityRule;
use crate::selector::SelectorError;

/// The matched rule's timing, widened to `i64` so the arithmetic on it can saturate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PauseWindow {
    /// `config.secondsSinceActive`.
    pub seconds_since_active: i64,
    /// `config.minRunningSeconds`.
    pub min_running_seconds: i64,
    /// The user's keep-alive (UNIX ms, already capped by the policy; 0: none): not eligible
    /// before it.
    pub keep_alive_until: i64,
    /// `config.maxRunningSeconds` (0: no limit): eligible once running that long, active or not.
    pub max_running_seconds: i64,
}

/// The outcome of matching a workspace against a policy's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleMatch {
    /// Rule `rule` (index into `activityRules`) applies and pauses after `window`.
    Pauses {
        /// Index of the rule.
        rule: usize,
        /// Its timing.
        window: PauseWindow,
    },
    /// Rule `rule` applies and says `pauseWorkspace: false`.
    Exempt {
        /// Index of the rule.
        rule: usize,
    },
    /// No rule applies.
    NoMatch,
    /// Rule `rule` has a selector that cannot be evaluated; matching stops there (a later,
    /// broader rule must not pause what this one may have been written to protect).
    Invalid {
        /// Index of the rule.
        rule: usize,
        /// What is wrong with its selector.
        error: SelectorError,
    },
}

impl RuleMatch {
    /// This match with the user's keep-alive (UNIX ms): a pausing rule's workspace is not
    /// eligible before it. Other outcomes never pause anyway.
    pub fn kept_alive_until(mut self, until: i64) -> RuleMatch {
        if let RuleMatch::Pauses { window, .. } = &mut self {
            window.keep_alive_until = until;
        }
        self
    }

    /// The window of a pausing rule; `None` for every other outcome.
    pub fn pause_window(&self) -> Option<PauseWindow> {
        match self {
            RuleMatch::Pauses { window, .. } => Some(*window),
            _ => None,
        }
    }
}

/// The first rule that applies to a workspace with these namespace labels and podConfig
/// spawner labels.
pub fn select_rule(
    rules: &[ActivityRule],
    namespace_labels: &BTreeMap<String, String>,
    pod_config_labels: &BTreeMap<String, String>,
) -> RuleMatch {
    for (index, rule) in rules.iter().enumerate() {
        // Kubeflow skips a rule that does not configure the effect (CEL makes it required).
        let Some(pause) = rule.effect.pause_workspace else {
            continue;
        };
        let selectors = rule.match_.iter().flat_map(|m| {
            [
                m.match_namespace.as_ref().map(|s| (&s.selector, namespace_labels)),
                m.match_pod_config.as_ref().map(|s| (&s.selector, pod_config_labels)),
            ]
        });
        let mut applies = true;
        for (selector, labels) in selectors.flatten() {
            match selector.matches(labels) {
                Ok(true) => {}
                Ok(false) => applies = false,
                Err(error) => return RuleMatch::Invalid { rule: index, error },
            }
        }
        if !applies {
            continue;
        }
        if !pause {
            return RuleMatch::Exempt { rule: index };
        }
        return RuleMatch::Pauses {
            rule: index,
            window: PauseWindow {
                seconds_since_active: i64::from(rule.config.seconds_since_active),
                min_running_seconds: i64::from(rule.config.min_running_seconds),
                keep_alive_until: 0,
                max_running_seconds: rule.config.max_running_seconds.map_or(0, i64::from),
            },
        };
    }
    RuleMatch::NoMatch
}

/// The spawner labels of the podConfig option the workspace's pod runs with (empty when the
/// workspace names no option or the kind has no such option, as Kubeflow matches them).
pub fn pod_config_labels(workspace: &Workspace, kind: &WorkspaceKind) -> BTreeMap<String, String> {
    workspace
        .pod_config_in_effect()
        .and_then(|id| kind.pod_config_labels(id))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeflow::{KindOptions, KindPodTemplate, OptionSpawner, PodConfig, PodConfigValue, SpawnerLabel};
    use crate::testing::{labels, rule};

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = [
            rule(7200, 300, Some(true)).in_namespaces(&[("tier", "development")]),
            rule(86400, 0, Some(true)),
        ];
        let dev = labels(&[("tier", "development")]);
        let prod = labels(&[("tier", "production")]);
        let none = labels(&[]);
        assert_eq!(
            select_rule(&rules, &dev, &none),
            RuleMatch::Pauses {
                rule: 0,
                window: PauseWindow {
                    seconds_since_active: 7200,
                    min_running_seconds: 300,
                    keep_alive_until: 0,
                    max_running_seconds: 0,
                }
            }
        );
        assert_eq!(
            select_rule(&rules, &prod, &none)
                .pause_window()
                .unwrap()
                .seconds_since_active,
            86400
        );
    }

    #[test]
    fn a_matching_rule_with_pause_false_exempts_the_workspace() {
        let rules = [
            rule(3600, 0, Some(false)).in_namespaces(&[("tier", "production")]),
            rule(86400, 0, Some(true)),
        ];
        let prod = labels(&[("tier", "production")]);
        assert_eq!(select_rule(&rules, &prod, &labels(&[])), RuleMatch::Exempt { rule: 0 });
        assert_eq!(select_rule(&rules, &prod, &labels(&[])).pause_window(), None);
    }

    #[test]
    fn no_matching_rule_means_never_paused() {
        let rules = [rule(3600, 0, Some(true)).in_namespaces(&[("tier", "development")])];
        assert_eq!(select_rule(&rules, &labels(&[]), &labels(&[])), RuleMatch::NoMatch);
        assert_eq!(select_rule(&[], &labels(&[]), &labels(&[])), RuleMatch::NoMatch);
    }

    #[test]
    fn a_rule_without_the_effect_is_skipped() {
        let rules = [rule(3600, 0, None), rule(7200, 0, Some(true))];
        assert_eq!(
            select_rule(&rules, &labels(&[]), &labels(&[]))
                .pause_window()
                .unwrap()
                .seconds_since_active,
            7200
        );
    }

    #[test]
    fn namespace_and_pod_config_selectors_must_both_match() {
        let rules = [rule(3600, 0, Some(true))
            .in_namespaces(&[("tier", "development")])
            .with_pod_config(&[("gpu", "1")])];
        let dev = labels(&[("tier", "development")]);
        let gpu = labels(&[("gpu", "1"), ("cpu", "4000m")]);
        assert!(matches!(
            select_rule(&rules, &dev, &gpu),
            RuleMatch::Pauses { rule: 0, .. }
        ));
        assert_eq!(select_rule(&rules, &dev, &labels(&[])), RuleMatch::NoMatch);
        assert_eq!(select_rule(&rules, &labels(&[]), &gpu), RuleMatch::NoMatch);
    }

    #[test]
    fn an_invalid_selector_stops_matching_and_reports_the_rule() {
        let mut bad = rule(3600, 0, Some(false)).in_namespaces(&[]);
        if let Some(m) = bad.match_.as_mut().and_then(|m| m.match_namespace.as_mut()) {
            m.selector
                .match_expressions
                .push(crate::selector::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "Like".into(),
                    values: vec!["prod".into()],
                });
        }
        let rules = [bad, rule(86400, 0, Some(true))];
        let result = select_rule(&rules, &labels(&[("tier", "prod")]), &labels(&[]));
        assert!(matches!(
            result,
            RuleMatch::Invalid {
                rule: 0,
                error: SelectorError::InvalidOperator { .. }
            }
        ));
    }

    #[test]
    fn pod_config_labels_come_from_the_option_in_effect() {
        let value = |id: &str, gpu: &str| PodConfigValue {
            id: id.into(),
            spawner: Some(OptionSpawner {
                labels: vec![SpawnerLabel {
                    key: "gpu".into(),
                    value: gpu.into(),
                }],
            }),
        };
        let mut kind = WorkspaceKind::new("k", Default::default());
        kind.spec.pod_template = Some(KindPodTemplate {
            options: Some(KindOptions {
                pod_config: Some(PodConfig {
                    values: vec![value("small", "0"), value("big", "1")],
                }),
                ..KindOptions::default()
            }),
            ..KindPodTemplate::default()
        });
        // Spec says "small", status says the pod still runs "small" and will move to "big".
        let ws = Workspace::test().pod_config("small").redirected("small", "big");
        assert_eq!(pod_config_labels(&ws, &kind), labels(&[("gpu", "0")]));
        // No status: the spec's option.
        let ws = Workspace::test().pod_config("big");
        assert_eq!(pod_config_labels(&ws, &kind), labels(&[("gpu", "1")]));
        // An option the kind does not have: no labels.
        let ws = Workspace::test().pod_config("huge");
        assert_eq!(pod_config_labels(&ws, &kind), labels(&[]));
    }
}
