//! The `Workspace` and `WorkspaceKind` resources (`kubeflow.org/v1beta1`),
//! modelling only the fields the culler reads or writes (SPEC §3). Every
//! other field of a real Kubeflow object is left alone: the culler only
//! ever sends patches of what it owns, and the shipped CRDs preserve
//! unknown fields so Kubeflow's own objects apply to them.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `Workspace.spec`: a user's notebook server.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "kubeflow.org",
    version = "v1beta1",
    kind = "Workspace",
    namespaced,
    shortname = "ws",
    status = "WorkspaceStatus",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Last Probe","type":"string","jsonPath":".status.activity.lastProbe.result"}"#,
    printcolumn = r#"{"name":"Last Activity","type":"integer","format":"int64","jsonPath":".status.activity.lastActivity","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct WorkspaceSpec {
    /// The WorkspaceKind's name.
    pub kind: String,
    /// Paused workspaces have no pod; the culler sets this to pause.
    #[serde(default)]
    pub paused: bool,
    /// Probe this workspace (status stays fresh) but never cull it.
    #[serde(default)]
    pub disable_culling: bool,
    /// The pod template choices (the culler reads the image choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<WorkspacePodTemplate>,
}

/// `Workspace.spec.podTemplate`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct WorkspacePodTemplate {
    /// Selected options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<WorkspaceOptions>,
}

/// `Workspace.spec.podTemplate.options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct WorkspaceOptions {
    /// The id of the kind's image-config value in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<String>,
}

/// `Workspace.status`: `state` is the workspace controller's, `activity` the culler's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct WorkspaceStatus {
    /// `Running`, `Paused`, `Pending`, `Terminating`, `Error` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// What the culler knows of the workspace's activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

/// `Workspace.status.activity`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// When the workspace was last active (Unix seconds; 0 = unknown).
    #[serde(default)]
    pub last_activity: i64,
    /// When the last successful probe started (Unix seconds).
    #[serde(default)]
    pub last_update: i64,
    /// The last probe, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<LastProbe>,
}

/// `Workspace.status.activity.lastProbe`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastProbe {
    /// Start (Unix ms).
    pub start_time_ms: i64,
    /// End (Unix ms).
    pub end_time_ms: i64,
    /// `Success`, `Failure` or `Timeout`.
    pub result: String,
    /// Human-readable; not for machines.
    #[serde(default)]
    pub message: String,
}

/// `WorkspaceKind.spec`: a kind of workspace, and how its workspaces are culled.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "kubeflow.org",
    version = "v1beta1",
    kind = "WorkspaceKind",
    shortname = "wsk"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct WorkspaceKindSpec {
    /// The pod template of the kind's workspaces.
    #[serde(default)]
    pub pod_template: KindPodTemplate,
}

/// `WorkspaceKind.spec.podTemplate`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct KindPodTemplate {
    /// The kind's ports, by id.
    #[serde(default)]
    pub ports: Vec<KindPort>,
    /// Choices a workspace selects from (images carry port numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<KindOptions>,
    /// Culling of this kind's workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culling: Option<Culling>,
}

/// `WorkspaceKind.spec.podTemplate.ports[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct KindPort {
    /// Port id (what `portId` names).
    pub id: String,
    /// How the port is proxied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_proxy: Option<HttpProxy>,
}

/// `ports[].httpProxy`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct HttpProxy {
    /// The app serves at `/` rather than under the connect path.
    #[serde(default)]
    pub remove_path_prefix: bool,
}

/// `WorkspaceKind.spec.podTemplate.options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct KindOptions {
    /// Image choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<ImageConfig>,
}

/// `options.imageConfig`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ImageConfig {
    /// The choices.
    #[serde(default)]
    pub values: Vec<ImageConfigValue>,
}

/// `imageConfig.values[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ImageConfigValue {
    /// The value's id (what a workspace selects).
    pub id: String,
    /// The image's settings.
    #[serde(default)]
    pub spec: ImageConfigSpec,
}

/// `values[].spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ImageConfigSpec {
    /// The image's ports: id → number.
    #[serde(default)]
    pub ports: Vec<ImagePort>,
}

/// `values[].spec.ports[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ImagePort {
    /// Port id.
    pub id: String,
    /// Container port number.
    pub port: u16,
}

fn default_true() -> bool {
    true
}
fn default_max_inactive() -> i64 {
    86_400
}
fn default_min_probe_interval() -> i64 {
    60
}
fn default_max_probe_interval() -> i64 {
    300
}

/// `WorkspaceKind.spec.podTemplate.culling`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Culling {
    /// Culling on/off for every workspace of this kind.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A workspace inactive longer than this is paused (seconds, minimum 60).
    #[serde(default = "default_max_inactive")]
    #[schemars(range(min = 60))]
    pub max_inactive_seconds: i64,
    /// Never probe a workspace more often than this (seconds).
    #[serde(default = "default_min_probe_interval")]
    #[schemars(range(min = 1))]
    pub min_probe_interval: i64,
    /// Probe at least this often (seconds; ≥ minProbeInterval).
    #[serde(default = "default_max_probe_interval")]
    #[schemars(range(min = 1))]
    pub max_probe_interval: i64,
    /// How activity is detected.
    pub activity_probe: ActivityProbe,
}

impl Default for Culling {
    fn default() -> Self {
        Culling {
            enabled: true,
            max_inactive_seconds: default_max_inactive(),
            min_probe_interval: default_min_probe_interval(),
            max_probe_interval: default_max_probe_interval(),
            activity_probe: ActivityProbe::default(),
        }
    }
}

/// `culling.activityProbe`: exactly one of `exec`, `jupyter`, `module`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActivityProbe {
    /// A script run in the workspace's main container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Poll the Jupyter server's activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jupyter: Option<JupyterProbe>,
    /// A custom probe component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleProbe>,
}

fn default_output_path() -> String {
    "/tmp/activity_probe.json".into()
}
fn default_exec_timeout() -> u32 {
    60
}

/// `activityProbe.exec`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    /// The script; starts with a shebang line.
    pub script: String,
    /// Where the script writes its JSON result.
    #[serde(default = "default_output_path")]
    pub output_path: String,
    /// The whole probe must finish within this (seconds).
    #[serde(default = "default_exec_timeout")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: u32,
}

/// `activityProbe.jupyter`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JupyterProbe {
    /// Use Jupyter's `last_activity` (must be true).
    pub last_activity: bool,
    /// Which of the kind's ports serves Jupyter.
    pub port_id: String,
    /// A Secret (in the workspace's namespace) holding Jupyter's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
}

/// A key of a Secret in the workspace's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
}

/// `activityProbe.module`: a custom probe component.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleProbe {
    /// A built-in probe name, or a file path (e.g. a mounted ConfigMap).
    pub location: String,
    /// The component's pinned sha256 (hex).
    pub sha256: String,
    /// Free-form config handed to the probe unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub config: Option<serde_json::Value>,
    /// The whole probe must finish within this (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// The CRDs the project ships, as one multi-document YAML.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::from("# Generated by `workspace-culler crds`; the tests check it matches the code.\n");
    for crd in [Workspace::crd(), WorkspaceKind::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).unwrap_or_default());
    }
    out
}
