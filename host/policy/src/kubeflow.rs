//! Kubeflow's `Workspace` and `WorkspaceKind` (`kubeflow.org/v1beta1`) as the culler reads them
//! (SPEC §3.1).
//!
//! Only the fields SPEC §3.1 names are modelled. Every one is optional or defaulted, and every
//! other field is ignored, so any object Kubeflow's CRDs accept decodes here. Kubeflow owns and
//! installs these CRDs, so no schema is generated for them (`schema = "disabled"`), and an object
//! is never sent back whole: its other fields would be lost. The culler patches single fields
//! (see [`crate::record::activity_patch`]).

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// The annotation that keeps a workspace running: it is still probed, but never paused.
pub const DISABLE_CULLING_ANNOTATION: &str = "workspace-culler.io/disable-culling";

/// The annotation a workspace's owner sets to keep it running until a time (RFC 3339), within
/// the policy's `keepAlive.maxSeconds`.
pub const KEEP_ALIVE_ANNOTATION: &str = "workspace-culler.io/keep-alive-until";

/// The `Culled` Event a pause still owes: written by the pause's own patch, removed once the
/// Event is recorded, so a controller that stops between the two leaves it to the next one.
pub const CULLED_EVENT_ANNOTATION: &str = "workspace-culler.io/culled-event";

/// `Workspace.spec`: a user's workspace (one pod when running).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "kubeflow.org",
    version = "v1beta1",
    kind = "Workspace",
    namespaced,
    shortname = "ws",
    status = "WorkspaceStatus",
    schema = "disabled",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// The name of the workspace's `WorkspaceKind`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// Whether the workspace is paused (no pod); the culler pauses by setting it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub paused: bool,
    /// The options chosen from the kind's pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<WorkspacePodTemplate>,
}

/// `Workspace.spec.podTemplate`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspacePodTemplate {
    /// The selected option ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<WorkspacePodTemplateOptions>,
}

/// `Workspace.spec.podTemplate.options`: the ids the user selected (before any redirect).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspacePodTemplateOptions {
    /// Id of one of the kind's `imageConfig.values[]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<String>,
    /// Id of one of the kind's `podConfig.values[]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_config: Option<String>,
}

/// `Workspace.status`: written by Kubeflow, except `activity`, which the culler writes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// What is known of the workspace's activity (UNIX ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// When the workspace last entered `Running` (UNIX ms; 0 = never).
    #[serde(default, deserialize_with = "null_as_default")]
    pub last_running_time: i64,
    /// The workspace's state; only `Running` workspaces are probed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub state: WorkspaceState,
    /// The options in effect, as Kubeflow resolved them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_options: Option<PodTemplateOptionsStatus>,
}

/// `Workspace.status.state`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum WorkspaceState {
    /// The pod is running: the only state that is probed.
    Running,
    /// The pod is being deleted.
    Terminating,
    /// `spec.paused` is true and the pod is gone.
    Paused,
    /// The pod is starting.
    Pending,
    /// Kubeflow could not run the workspace.
    Error,
    /// Kubeflow's default, and any state this crate does not know (a newer Kubeflow's).
    #[default]
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for WorkspaceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// `Workspace.status.activity`: Kubeflow's fields, all UNIX milliseconds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// When activity was last observed (0 = unknown).
    #[serde(default, deserialize_with = "null_as_default")]
    pub last_activity: i64,
    /// The end of the last successful probe (0 = never).
    #[serde(default, deserialize_with = "null_as_default")]
    pub last_update: i64,
    /// The last probe, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<LastProbe>,
    /// Rule evaluation state (`rules.pauseWorkspace.eligibleAfter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ActivityRulesStatus>,
}

impl Activity {
    /// `rules.pauseWorkspace.eligibleAfter` (0 = unknown or no pausing rule).
    pub fn eligible_after(&self) -> i64 {
        self.rules
            .as_ref()
            .and_then(|r| r.pause_workspace.as_ref())
            .map_or(0, |p| p.eligible_after)
    }
}

/// `Workspace.status.activity.lastProbe`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastProbe {
    /// When the probe started (UNIX ms).
    #[serde(default, deserialize_with = "null_as_default")]
    pub start_time: i64,
    /// When the probe ended (UNIX ms).
    #[serde(default, deserialize_with = "null_as_default")]
    pub end_time: i64,
    /// How it ended.
    #[serde(default = "result_when_missing")]
    pub result: ProbeResult,
    /// Human-readable; not for machines.
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
}

// Kubeflow's CRD requires `result`; should it ever be missing, the probe counts as not
// successful, which can only make the next probe sooner and never causes a pause.
fn result_when_missing() -> ProbeResult {
    ProbeResult::Failure
}

/// `lastProbe.result`, with Kubeflow's values.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    /// The probe ran and its output was valid.
    Success,
    /// The probe could not run, or its output was invalid.
    Failure,
    /// The probe did not finish within its deadline.
    Timeout,
}

impl ProbeResult {
    /// How `outcome` is recorded.
    pub fn of(outcome: &workspace_culler_contract::ProbeOutcome) -> ProbeResult {
        match outcome {
            workspace_culler_contract::ProbeOutcome::Success(_) => ProbeResult::Success,
            workspace_culler_contract::ProbeOutcome::Failure(_) => ProbeResult::Failure,
            workspace_culler_contract::ProbeOutcome::Timeout(_) => ProbeResult::Timeout,
        }
    }

    /// The value as Kubeflow spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Success => "Success",
            ProbeResult::Failure => "Failure",
            ProbeResult::Timeout => "Timeout",
        }
    }
}

impl std::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Workspace.status.activity.rules`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRulesStatus {
    /// State of the `pauseWorkspace` effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_workspace: Option<PauseWorkspaceStatus>,
}

/// `Workspace.status.activity.rules.pauseWorkspace`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PauseWorkspaceStatus {
    /// When the matched rule would allow a pause (UNIX ms; 0 = unknown or not applicable).
    #[serde(default, deserialize_with = "null_as_default")]
    pub eligible_after: i64,
}

/// `Workspace.status.podTemplateOptions`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOptionsStatus {
    /// The image option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<OptionStatus>,
    /// The pod option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_config: Option<OptionStatus>,
}

/// One option's status: where Kubeflow's redirects lead, from the option the pod runs with.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OptionStatus {
    /// The option that takes effect after the next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// The redirects from the current option to `desired` (empty when there are none).
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub redirect_chain: Vec<RedirectStep>,
}

impl OptionStatus {
    /// The option the running pod was built from. Kubeflow keeps the pod on the current
    /// option until it restarts; a redirect chain starts at that option, and without a
    /// chain `desired` is the current option.
    pub fn in_effect(&self) -> Option<&str> {
        match self.redirect_chain.first() {
            Some(step) => Some(step.source.as_str()),
            None => self.desired.as_deref(),
        }
    }
}

/// One step of a redirect chain.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedirectStep {
    /// The option redirected from.
    #[serde(default, deserialize_with = "null_as_default")]
    pub source: String,
    /// The option redirected to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub target: String,
}

impl Workspace {
    /// `status.state` (`Unknown` when there is no status yet).
    pub fn state(&self) -> WorkspaceState {
        self.status.as_ref().map_or(WorkspaceState::Unknown, |s| s.state)
    }

    /// `status.activity`, if Kubeflow or the culler has written one.
    pub fn activity(&self) -> Option<&Activity> {
        self.status.as_ref().and_then(|s| s.activity.as_ref())
    }

    /// `status.lastRunningTime` (UNIX ms; 0 = never running).
    pub fn last_running_time(&self) -> i64 {
        self.status.as_ref().map_or(0, |s| s.last_running_time)
    }

    /// Whether the workspace is annotated out of pausing.
    pub fn culling_disabled(&self) -> bool {
        // Case-insensitive: an opt-out written as "True" must not get the workspace paused.
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DISABLE_CULLING_ANNOTATION))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// The keep-alive annotation's value, if set.
    pub fn keep_alive_annotation(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(KEEP_ALIVE_ANNOTATION))
            .map(String::as_str)
    }

    /// The podConfig option the running pod uses (status first, then spec).
    pub fn pod_config_in_effect(&self) -> Option<&str> {
        let from_status = self
            .status
            .as_ref()
            .and_then(|s| s.pod_template_options.as_ref())
            .and_then(|o| o.pod_config.as_ref())
            .and_then(OptionStatus::in_effect);
        from_status.or_else(|| self.selected_options().and_then(|o| o.pod_config.as_deref()))
    }

    /// The imageConfig option the running pod uses (status first, then spec).
    pub fn image_config_in_effect(&self) -> Option<&str> {
        let from_status = self
            .status
            .as_ref()
            .and_then(|s| s.pod_template_options.as_ref())
            .and_then(|o| o.image_config.as_ref())
            .and_then(OptionStatus::in_effect);
        from_status.or_else(|| self.selected_options().and_then(|o| o.image_config.as_deref()))
    }

    fn selected_options(&self) -> Option<&WorkspacePodTemplateOptions> {
        self.spec.pod_template.as_ref().and_then(|t| t.options.as_ref())
    }
}

/// `WorkspaceKind.spec`: a kind of workspace (cluster-scoped).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "kubeflow.org",
    version = "v1beta1",
    kind = "WorkspaceKind",
    shortname = "wsk",
    schema = "disabled",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceKindSpec {
    /// The pod template of the kind's workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<KindPodTemplate>,
}

/// `WorkspaceKind.spec.podTemplate`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KindPodTemplate {
    /// Kubeflow's own probe config; only whether it is set matters here (then Kubeflow
    /// probes the kind itself and the culler keeps out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_probe: Option<serde_json::Value>,
    /// The kind's ports, by id.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<KindPort>,
    /// The options a workspace selects from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<KindOptions>,
}

/// `WorkspaceKind.spec.podTemplate.ports[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KindPort {
    /// The port's id (what `portId` names).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// How Kubeflow proxies the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_proxy: Option<HttpProxy>,
}

/// `ports[].httpProxy`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpProxy {
    /// The application sees requests at `/` rather than under the connect path.
    #[serde(default, deserialize_with = "null_as_default")]
    pub remove_path_prefix: bool,
}

/// `WorkspaceKind.spec.podTemplate.options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KindOptions {
    /// Image options (they carry the port numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<ImageConfig>,
    /// Pod options (they carry the labels rules match on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_config: Option<PodConfig>,
}

/// `options.imageConfig`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// The image options.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Vec<ImageConfigValue>,
}

/// `options.imageConfig.values[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfigValue {
    /// The option's id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The image settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ImageConfigSpec>,
}

/// `imageConfig.values[].spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfigSpec {
    /// The image's ports: id → number.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<ImagePort>,
}

/// `imageConfig.values[].spec.ports[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePort {
    /// The port id (one of the kind's `ports[].id`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The container port number.
    #[serde(default, deserialize_with = "null_as_default")]
    pub port: i32,
}

/// `options.podConfig`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodConfig {
    /// The pod options.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Vec<PodConfigValue>,
}

/// `options.podConfig.values[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodConfigValue {
    /// The option's id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// How the spawner shows the option, including its labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawner: Option<OptionSpawner>,
}

/// `podConfig.values[].spawner`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OptionSpawner {
    /// The labels `matchPodConfig` selectors match on.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<SpawnerLabel>,
}

/// `spawner.labels[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpawnerLabel {
    /// Label key.
    #[serde(default, deserialize_with = "null_as_default")]
    pub key: String,
    /// Label value.
    #[serde(default, deserialize_with = "null_as_default")]
    pub value: String,
}

impl WorkspaceKind {
    /// Whether Kubeflow probes this kind itself (`spec.podTemplate.activityProbe` is set).
    pub fn kubeflow_probes_it(&self) -> bool {
        self.spec
            .pod_template
            .as_ref()
            .is_some_and(|t| t.activity_probe.as_ref().is_some_and(|p| !p.is_null()))
    }

    /// The spawner labels of the podConfig option `id`, as a label set (`None`: no such option).
    pub fn pod_config_labels(&self, id: &str) -> Option<BTreeMap<String, String>> {
        let value = self
            .spec
            .pod_template
            .as_ref()?
            .options
            .as_ref()?
            .pod_config
            .as_ref()?
            .values
            .iter()
            .find(|v| v.id == id)?;
        let labels = value.spawner.as_ref().map_or(&[][..], |s| &s.labels[..]);
        Some(labels.iter().map(|l| (l.key.clone(), l.value.clone())).collect())
    }

    /// The kind's port definition with this id.
    pub fn port(&self, port_id: &str) -> Option<&KindPort> {
        self.spec.pod_template.as_ref()?.ports.iter().find(|p| p.id == port_id)
    }

    /// The port number that image option `image_config` gives port `port_id`.
    pub fn image_port(&self, image_config: &str, port_id: &str) -> Option<i32> {
        self.image_ports(image_config)?
            .iter()
            .find(|p| p.id == port_id)
            .map(|p| p.port)
    }

    /// The ports of image option `image_config` (`None`: no such option).
    pub fn image_ports(&self, image_config: &str) -> Option<&[ImagePort]> {
        let value = self
            .spec
            .pod_template
            .as_ref()?
            .options
            .as_ref()?
            .image_config
            .as_ref()?
            .values
            .iter()
            .find(|v| v.id == image_config)?;
        Some(value.spec.as_ref().map_or(&[][..], |s| &s.ports[..]))
    }
}

/// Why an object from the cluster could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {kind} {object}: {source}")]
pub struct DecodeError {
    /// The resource kind expected (`Workspace`, `WorkspaceKind`, ...).
    pub kind: String,
    /// `namespace/name` or `name` of the object, as far as it could be read.
    pub object: String,
    /// What was wrong.
    #[source]
    pub source: serde_json::Error,
}

impl DecodeError {
    /// Why `value` could not be read as a `K`, naming it as far as its metadata allows.
    pub fn new<K: kube::Resource<DynamicType = ()>>(value: &serde_json::Value, source: serde_json::Error) -> Self {
        let text = |pointer: &str| value.pointer(pointer).and_then(|v| v.as_str()).map(str::to_owned);
        let object = match (text("/metadata/namespace"), text("/metadata/name")) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name,
            (_, None) => "(unnamed)".to_owned(),
        };
        DecodeError {
            kind: K::kind(&()).into_owned(),
            object,
            source,
        }
    }
}

/// Decode one object (e.g. from a dynamic list or watch event), so a bad one can be logged
/// and skipped instead of failing the whole list.
pub fn decode<K>(value: serde_json::Value) -> Result<K, DecodeError>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned,
{
    K::deserialize(&value).map_err(|source| DecodeError::new::<K>(&value, source))
}

/// Reads `null` as the type's default, as Go clients may write it for empty fields.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{reference, yaml_to_json};
    use serde_json::json;

    #[test]
    fn the_sample_workspace_decodes() {
        let ws: Workspace = decode(yaml_to_json(&reference("jupyterlab_v1beta1_workspace.yaml"))).unwrap();
        assert_eq!(ws.metadata.name.as_deref(), Some("jupyterlab-workspace"));
        assert_eq!(ws.spec.kind, "jupyterlab");
        assert!(!ws.spec.paused);
        assert_eq!(ws.pod_config_in_effect(), Some("tiny_cpu"));
        assert_eq!(ws.image_config_in_effect(), Some("jupyter-scipy:v1.10.0"));
        assert_eq!(ws.state(), WorkspaceState::Unknown);
        assert_eq!(ws.last_running_time(), 0);
    }

    #[test]
    fn the_sample_kinds_decode() {
        let jupyterlab: WorkspaceKind =
            decode(yaml_to_json(&reference("jupyterlab_v1beta1_workspacekind.yaml"))).unwrap();
        assert_eq!(jupyterlab.metadata.name.as_deref(), Some("jupyterlab"));
        assert!(jupyterlab.kubeflow_probes_it());
        assert_eq!(jupyterlab.image_port("jupyter-scipy:v1.10.0", "jupyterlab"), Some(8888));
        assert_eq!(jupyterlab.image_port("jupyter-scipy:v1.10.0", "nope"), None);
        let labels = jupyterlab.pod_config_labels("big_gpu").unwrap();
        assert_eq!(labels.get("gpu").map(String::as_str), Some("1"));
        assert_eq!(labels.len(), 3);
        assert_eq!(jupyterlab.pod_config_labels("huge_gpu"), None);

        for file in [
            "codeserver_v1beta1_workspacekind.yaml",
            "rstudio_v1beta1_workspacekind.yaml",
        ] {
            let kind: WorkspaceKind = decode(yaml_to_json(&reference(file))).unwrap();
            assert!(kind.kubeflow_probes_it(), "{file}");
            let port = kind.spec.pod_template.as_ref().unwrap().ports.first().unwrap();
            assert!(port.http_proxy.as_ref().unwrap().remove_path_prefix, "{file}");
        }
    }

    #[test]
    fn a_workspace_with_many_unknown_fields_decodes() {
        let value = json!({
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Workspace",
            "metadata": {
                "name": "nb", "namespace": "team-a", "uid": "1234",
                "annotations": {"workspace-culler.io/disable-culling": "true", "x": "y"},
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {
                "kind": "jupyterlab", "paused": false, "displayName": "Mine", "future": {"a": [1, 2]},
                "podTemplate": {
                    "options": {"imageConfig": "img", "podConfig": "small", "gpu": true},
                    "volumes": {"home": "pvc"}, "podMetadata": {"labels": {}}
                }
            },
            "status": {
                "state": "Running", "stateMessage": "Workspace is running", "pendingRestart": false,
                "lastRunningTime": 1_700_000_000_000_i64, "pauseTime": 0,
                "podTemplatePod": {"name": "p", "nodeName": "n"},
                "podTemplateOptions": {
                    "imageConfig": {"desired": "img"},
                    "podConfig": {"desired": "big", "redirectChain": [{"source": "small", "target": "big"}]}
                },
                "activity": {
                    "lastActivity": 1_700_000_100_000_i64, "lastUpdate": 1_700_000_200_000_i64,
                    "lastProbe": {"startTime": 5, "endTime": 6, "result": "Timeout", "message": "", "extra": 1},
                    "rules": {"pauseWorkspace": {"eligibleAfter": 42}, "other": {}}
                }
            }
        });
        let ws: Workspace = decode(value).unwrap();
        assert_eq!(ws.metadata.uid.as_deref(), Some("1234"));
        assert_eq!(ws.state(), WorkspaceState::Running);
        assert!(ws.culling_disabled());
        assert_eq!(ws.last_running_time(), 1_700_000_000_000);
        let activity = ws.activity().unwrap();
        assert_eq!(activity.last_activity, 1_700_000_100_000);
        assert_eq!(activity.eligible_after(), 42);
        assert_eq!(activity.last_probe.as_ref().unwrap().result, ProbeResult::Timeout);
        assert_eq!(
            ws.pod_config_in_effect(),
            Some("small"),
            "the pod runs the current option until restart"
        );
        assert_eq!(ws.image_config_in_effect(), Some("img"));
    }

    #[test]
    fn missing_and_null_fields_take_defaults() {
        let ws: Workspace = decode(json!({
            "metadata": {"name": "bare"},
            "spec": {"kind": null},
            "status": {"activity": {"lastActivity": null}, "state": null}
        }))
        .unwrap();
        assert_eq!(ws.spec.kind, "");
        assert_eq!(ws.state(), WorkspaceState::Unknown);
        assert_eq!(ws.activity().unwrap().last_activity, 0);
        assert_eq!(ws.pod_config_in_effect(), None);
    }

    #[test]
    fn an_unknown_state_reads_as_unknown() {
        let ws: Workspace = decode(json!({"metadata": {}, "spec": {}, "status": {"state": "Hibernating"}})).unwrap();
        assert_eq!(ws.state(), WorkspaceState::Unknown);
    }

    #[test]
    fn a_bad_object_is_a_clear_error() {
        let err = decode::<Workspace>(json!({
            "metadata": {"name": "nb", "namespace": "team-a"},
            "spec": {"kind": "jupyterlab"},
            "status": {"activity": {"lastActivity": "yesterday"}}
        }))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cannot read Workspace team-a/nb: "), "{text}");
        assert!(text.contains("yesterday"), "{text}");
    }

    #[test]
    fn culling_is_disabled_only_by_a_true_annotation() {
        let annotated = |v: &str| {
            let mut ws = Workspace::default();
            ws.metadata.annotations = Some([(DISABLE_CULLING_ANNOTATION.to_owned(), v.to_owned())].into());
            ws.culling_disabled()
        };
        assert!(annotated("true"));
        assert!(annotated("True"));
        assert!(!annotated("false"));
        assert!(!annotated(""));
        assert!(!Workspace::default().culling_disabled());
    }

    #[test]
    fn a_kind_without_activity_probe_is_not_probed_by_kubeflow() {
        let kind: WorkspaceKind = decode(json!({
            "metadata": {"name": "k"},
            "spec": {"podTemplate": {"activityProbe": null, "ports": []}}
        }))
        .unwrap();
        assert!(!kind.kubeflow_probes_it());
        assert!(!WorkspaceKind::default().kubeflow_probes_it());
    }

    #[test]
    fn resources_have_kubeflows_coordinates() {
        use kube::Resource;
        assert_eq!(Workspace::api_version(&()), "kubeflow.org/v1beta1");
        assert_eq!(Workspace::plural(&()), "workspaces");
        assert_eq!(WorkspaceKind::kind(&()), "WorkspaceKind");
        assert_eq!(WorkspaceKind::plural(&()), "workspacekinds");
        fn namespaced<K: Resource<Scope = kube::core::NamespaceResourceScope>>() {}
        fn cluster<K: Resource<Scope = kube::core::ClusterResourceScope>>() {}
        namespaced::<Workspace>();
        cluster::<WorkspaceKind>();
    }
}
