//! Test fixtures: builders for workspaces, kinds and policies, and Kubeflow's reference files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::kubeflow::{
    Activity, KindPodTemplate, LastProbe, OptionStatus, PodTemplateOptionsStatus, ProbeResult, RedirectStep,
    WorkspaceKind, WorkspacePodTemplate, WorkspacePodTemplateOptions, WorkspaceState, WorkspaceStatus,
};
use crate::policy::{
    ActivityProbe, ActivityRule, CullingPolicy, CullingPolicySpec, JupyterProbe, RuleConfig, RuleEffect, RuleMatchSpec,
    SelectorMatch,
};
use crate::selector::LabelSelector;
use crate::{DISABLE_CULLING_ANNOTATION, Workspace};

/// The tests' clock (UNIX ms).
pub(crate) const NOW: i64 = 1_780_000_000_000;

/// A file of Kubeflow's v2.0.0-beta.0 release, as copied unchanged into `tests/kubeflow/`.
pub(crate) fn reference(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/kubeflow")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// YAML text as a JSON value, as the apiserver would serve it.
pub(crate) fn yaml_to_json(text: &str) -> serde_json::Value {
    let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    serde_json::to_value(value).unwrap()
}

/// A label set.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A catch-all rule.
pub(crate) fn rule(seconds_since_active: i32, min_running_seconds: i32, pause: Option<bool>) -> ActivityRule {
    ActivityRule {
        config: RuleConfig {
            max_running_seconds: None,
            seconds_since_active,
            min_running_seconds,
        },
        match_: None,
        effect: RuleEffect { pause_workspace: pause },
    }
}

fn selector(pairs: &[(&str, &str)]) -> SelectorMatch {
    SelectorMatch {
        selector: LabelSelector {
            match_labels: labels(pairs),
            ..LabelSelector::default()
        },
    }
}

impl ActivityRule {
    /// Only for namespaces with these labels.
    pub(crate) fn in_namespaces(mut self, pairs: &[(&str, &str)]) -> Self {
        self.match_.get_or_insert_with(RuleMatchSpec::default).match_namespace = Some(selector(pairs));
        self
    }

    /// Only for podConfig options with these spawner labels.
    pub(crate) fn with_pod_config(mut self, pairs: &[(&str, &str)]) -> Self {
        self.match_.get_or_insert_with(RuleMatchSpec::default).match_pod_config = Some(selector(pairs));
        self
    }
}

/// A valid policy with a Jupyter probe and one catch-all rule (1 h, pausing).
pub(crate) fn policy(name: &str, kinds: &[&str]) -> CullingPolicy {
    CullingPolicy::new(
        name,
        CullingPolicySpec {
            workspace_kinds: kinds.iter().map(|k| k.to_string()).collect(),
            dry_run: false,
            activity_probe: ActivityProbe {
                min_probe_interval_seconds: 300,
                probe_interval_seconds: 3600,
                pod_exec: None,
                jupyter: Some(JupyterProbe {
                    last_activity: true,
                    port_id: "jupyterlab".into(),
                    token_secret_ref: None,
                }),
                module: None,
                any_of: None,
            },
            activity_rules: vec![rule(3600, 0, Some(true))],
            keep_alive: None,
        },
    )
}

/// A WorkspaceKind, optionally with Kubeflow's own activity probe.
pub(crate) fn kind(name: &str, kubeflow_probes: bool) -> WorkspaceKind {
    let mut kind = WorkspaceKind::new(name, Default::default());
    kind.spec.pod_template = Some(KindPodTemplate {
        activity_probe: kubeflow_probes
            .then(|| serde_json::json!({"jupyter": {"lastActivity": true, "portId": "jupyterlab"}})),
        ..KindPodTemplate::default()
    });
    kind
}

impl Workspace {
    /// A workspace `team-a/nb` of kind `jupyterlab`, with an empty status.
    pub(crate) fn test() -> Workspace {
        let mut ws = Workspace::new("nb", Default::default());
        ws.metadata.namespace = Some("team-a".into());
        ws.metadata.uid = Some("uid-1".into());
        ws.spec.kind = "jupyterlab".into();
        ws.status = Some(WorkspaceStatus::default());
        ws
    }

    fn status_mut(&mut self) -> &mut WorkspaceStatus {
        self.status.get_or_insert_with(WorkspaceStatus::default)
    }

    fn activity_mut(&mut self) -> &mut Activity {
        self.status_mut().activity.get_or_insert_with(Activity::default)
    }

    /// In state `state`.
    pub(crate) fn in_state(mut self, state: WorkspaceState) -> Self {
        self.status_mut().state = state;
        self
    }

    /// Running since a day ago (unless `started_ago` says otherwise).
    pub(crate) fn running(mut self) -> Self {
        let status = self.status_mut();
        status.state = WorkspaceState::Running;
        if status.last_running_time == 0 {
            status.last_running_time = NOW - 86_400_000;
        }
        self
    }

    /// Last entered Running `seconds` ago.
    pub(crate) fn started_ago(mut self, seconds: i64) -> Self {
        self.status_mut().last_running_time = NOW - seconds * 1000;
        self
    }

    /// Last active `seconds` ago.
    pub(crate) fn idle_for(mut self, seconds: i64) -> Self {
        self.activity_mut().last_activity = NOW - seconds * 1000;
        self
    }

    /// Last probed `seconds` ago (the probe took one second), with `result`.
    pub(crate) fn probed_ago(mut self, seconds: i64, result: ProbeResult) -> Self {
        let start = NOW - seconds * 1000;
        self.activity_mut().last_probe = Some(LastProbe {
            start_time: start,
            end_time: start + 1000,
            result,
            message: String::new(),
        });
        self
    }

    /// Annotated out of pausing.
    pub(crate) fn annotated_out(mut self) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(DISABLE_CULLING_ANNOTATION.into(), "true".into());
        self
    }

    /// Annotated to be kept running until `value`.
    pub(crate) fn annotated_keep_alive(mut self, value: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(crate::kubeflow::KEEP_ALIVE_ANNOTATION.into(), value.into());
        self
    }

    /// With `spec.paused: true`.
    pub(crate) fn paused(mut self) -> Self {
        self.spec.paused = true;
        self
    }

    /// Selecting podConfig option `id` in its spec.
    pub(crate) fn pod_config(mut self, id: &str) -> Self {
        self.spec
            .pod_template
            .get_or_insert_with(WorkspacePodTemplate::default)
            .options
            .get_or_insert_with(WorkspacePodTemplateOptions::default)
            .pod_config = Some(id.into());
        self
    }

    /// With Kubeflow's status saying the podConfig redirects from `source` to `target`.
    pub(crate) fn redirected(mut self, source: &str, target: &str) -> Self {
        self.status_mut()
            .pod_template_options
            .get_or_insert_with(PodTemplateOptionsStatus::default)
            .pod_config = Some(OptionStatus {
            desired: Some(target.into()),
            redirect_chain: vec![RedirectStep {
                source: source.into(),
                target: target.into(),
            }],
        });
        self
    }
}
