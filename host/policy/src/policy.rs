//! The `CullingPolicy` resource (`workspace-culler.io/v1alpha1`, cluster-scoped; SPEC §3.2).
//!
//! Its `activityProbe` and `activityRules` are Kubeflow's own (the WorkspaceKind CRD's names,
//! types, defaults, limits and CEL rules), plus the `module` probe and `jupyter.tokenSecretRef`,
//! so moving a kind from Kubeflow's probing to the culler is a cut and paste. The tests compare
//! the generated schema with Kubeflow's CRD field by field. [`validate`] checks what CEL cannot.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::{LabelSelector, is_dns_subdomain};

/// Kubeflow's pattern for object names such as a WorkspaceKind's (an RFC 1123 subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Kubeflow's pattern for a port id.
pub const PORT_ID_PATTERN: &str = r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$";
/// The pattern of a key in a Secret's data.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// A lowercase hex SHA-256 digest.
pub const SHA256_PATTERN: &str = r"^[0-9a-f]{64}$";

/// Kubeflow's cap on both probe intervals (one year, in seconds).
pub const MAX_PROBE_INTERVAL_SECONDS: i32 = 31_536_000;
/// Kubeflow's default `minProbeIntervalSeconds`.
pub const DEFAULT_MIN_PROBE_INTERVAL_SECONDS: i32 = 300;
/// Kubeflow's default `probeIntervalSeconds`.
pub const DEFAULT_PROBE_INTERVAL_SECONDS: i32 = 3600;
/// Kubeflow's default `podExec.timeoutSeconds`.
pub const DEFAULT_POD_EXEC_TIMEOUT_SECONDS: i32 = 60;
/// The default `module.timeoutSeconds`.
pub const DEFAULT_MODULE_TIMEOUT_SECONDS: i32 = 30;
/// The deadline of a Jupyter probe, which has no timeout field (Kubeflow's value; it stays
/// below the smallest `secondsSinceActive` Kubeflow allows).
pub const JUPYTER_PROBE_TIMEOUT_SECONDS: i64 = 10;
/// Kubeflow's minimum `secondsSinceActive` (no thrashing during startup or short drops).
pub const MIN_SECONDS_SINCE_ACTIVE: i32 = 16;
/// Kubeflow's `podExec.script` length limit.
pub const MAX_SCRIPT_LENGTH: usize = 2048;
/// Most probes one `anyOf` may combine.
pub const MAX_ANY_OF: usize = 4;

/// What Linux reads of a shebang line after `#!` (Kubeflow's webhook limit).
const MAX_SHEBANG_LENGTH: usize = 255;
const MAX_NAME_LENGTH: usize = 253;
const MAX_PORT_ID_LENGTH: usize = 32;

/// `CullingPolicy.spec`: which kinds' workspaces are probed, how, and when they are paused.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "workspace-culler.io",
    version = "v1alpha1",
    kind = "CullingPolicy",
    plural = "cullingpolicies",
    status = "CullingPolicyStatus",
    derive = "PartialEq",
    doc = "A CullingPolicy: which WorkspaceKinds the culler manages, how it probes their workspaces and when it pauses them.",
    printcolumn = r#"{"name":"Kinds","type":"string","description":"The WorkspaceKinds this policy names","jsonPath":".spec.workspaceKinds"}"#,
    printcolumn = r#"{"name":"Managed","type":"integer","description":"Workspaces of the kinds this policy manages","jsonPath":".status.managedWorkspaces"}"#,
    printcolumn = r#"{"name":"Paused","type":"integer","description":"Workspaces this policy has paused, in total","jsonPath":".status.pausedTotal"}"#,
    printcolumn = r#"{"name":"Dry-Run","type":"boolean","description":"Reports WouldCull instead of pausing","jsonPath":".spec.dryRun"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Whether the policy is valid and manages at least one kind","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::not_nullable)]
pub struct CullingPolicySpec {
    /// The WorkspaceKinds whose workspaces this policy probes and pauses.
    #[schemars(length(min = 1), inner(length(min = 1, max = 253), pattern(NAME_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub workspace_kinds: Vec<String>,
    /// Emit WouldCull events and metrics instead of pausing.
    #[serde(default)]
    pub dry_run: bool,
    /// How activity is detected (Kubeflow's `activityProbe`, plus `module`).
    pub activity_probe: ActivityProbe,
    /// Kubeflow's `activityRules`: the first rule whose match holds decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub activity_rules: Vec<ActivityRule>,
    /// How far ahead a workspace's owner may keep it running with the
    /// `workspace-culler.io/keep-alive-until` annotation (this project's extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAliveSpec>,
}

/// Default `keepAlive.maxSeconds`: 8 hours.
pub const DEFAULT_KEEP_ALIVE_MAX_SECONDS: i32 = 8 * 3600;

fn default_keep_alive_max() -> i32 {
    DEFAULT_KEEP_ALIVE_MAX_SECONDS
}

/// `spec.keepAlive`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveSpec {
    /// The furthest a keep-alive may reach, in seconds from when the culler reads it; a later
    /// time is clamped to it. 0 turns keep-alive off.
    #[serde(default = "default_keep_alive_max")]
    #[schemars(range(min = 0, max = MAX_PROBE_INTERVAL_SECONDS))]
    pub max_seconds: i32,
}

impl CullingPolicySpec {
    /// `keepAlive.maxSeconds`, with its default.
    pub fn keep_alive_max_seconds(&self) -> i64 {
        i64::from(
            self.keep_alive
                .as_ref()
                .map_or(DEFAULT_KEEP_ALIVE_MAX_SECONDS, |k| k.max_seconds),
        )
    }
}

fn default_min_probe_interval() -> i32 {
    DEFAULT_MIN_PROBE_INTERVAL_SECONDS
}
fn default_probe_interval() -> i32 {
    DEFAULT_PROBE_INTERVAL_SECONDS
}
fn default_pod_exec_timeout() -> i32 {
    DEFAULT_POD_EXEC_TIMEOUT_SECONDS
}
fn default_module_timeout() -> i32 {
    DEFAULT_MODULE_TIMEOUT_SECONDS
}

/// `spec.activityProbe`: exactly one of `podExec`, `jupyter`, `module`, `anyOf`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "message": "must specify exactly one of 'podExec', 'jupyter', 'module' or 'anyOf'",
        "rule": "(has(self.podExec) ? 1 : 0) + (has(self.jupyter) ? 1 : 0) + (has(self.module) ? 1 : 0) + (has(self.anyOf) ? 1 : 0) == 1"
    },
    {
        "message": "minProbeIntervalSeconds must be less than or equal to probeIntervalSeconds",
        "rule": "self.minProbeIntervalSeconds <= self.probeIntervalSeconds"
    }
]))]
pub struct ActivityProbe {
    /// The minimum seconds between two probes of a workspace, and the retry delay after a failure.
    #[serde(default = "default_min_probe_interval")]
    #[schemars(range(min = 1, max = MAX_PROBE_INTERVAL_SECONDS))]
    pub min_probe_interval_seconds: i32,
    /// The desired seconds between successful probes.
    #[serde(default = "default_probe_interval")]
    #[schemars(range(min = 1, max = MAX_PROBE_INTERVAL_SECONDS))]
    pub probe_interval_seconds: i32,
    /// A script run in the workspace's main container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_exec: Option<PodExecProbe>,
    /// Ask the Jupyter server of the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jupyter: Option<JupyterProbe>,
    /// A WebAssembly probe component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleProbe>,
    /// Several probes run side by side: the workspace is active when any of them says so, and
    /// idle only when every one of them succeeded and none found activity (our extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_ANY_OF))]
    pub any_of: Option<Vec<ProbeSource>>,
}

/// `activityProbe.anyOf[]`: one probe of a combination, exactly one of `podExec`, `jupyter`,
/// `module`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "message": "must specify exactly one of 'podExec', 'jupyter' or 'module'",
        "rule": "(has(self.podExec) ? 1 : 0) + (has(self.jupyter) ? 1 : 0) + (has(self.module) ? 1 : 0) == 1"
    }
]))]
pub struct ProbeSource {
    /// A script run in the workspace's main container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_exec: Option<PodExecProbe>,
    /// Ask the Jupyter server of the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jupyter: Option<JupyterProbe>,
    /// A WebAssembly probe component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleProbe>,
}

/// `activityProbe.podExec`: Kubeflow's script probe.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodExecProbe {
    /// The script, starting with a shebang; it reports through `$OUTPUT_JSON_PATH`.
    #[schemars(length(min = 1, max = MAX_SCRIPT_LENGTH))]
    pub script: String,
    /// The maximum number of seconds the probe is allowed to run.
    #[serde(default = "default_pod_exec_timeout")]
    #[schemars(range(min = 1, max = i32::MAX))]
    pub timeout_seconds: i32,
}

/// `activityProbe.jupyter`: Kubeflow's Jupyter probe, plus an optional token.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "'lastActivity' must be true", "rule": "has(self.lastActivity) && self.lastActivity"}
]))]
pub struct JupyterProbe {
    /// Use Jupyter's last activity (must be true).
    pub last_activity: bool,
    /// The port to probe, one of the kind's `spec.podTemplate.ports[].id`.
    #[schemars(length(min = 1, max = MAX_PORT_ID_LENGTH), pattern(PORT_ID_PATTERN))]
    pub port_id: String,
    /// A Secret in the controller's namespace holding the Jupyter token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the controller's own namespace (never the workspace's).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

/// `activityProbe.module`: a WebAssembly probe component.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleProbe {
    /// A built-in probe's name, a file under the controller's module directory, or an OCI
    /// artifact pinned by digest: `oci://<registry>/<repository>@sha256:<manifest digest>`, or
    /// `oci://<registry>/<repository>:<tag>` together with `sha256`.
    #[schemars(length(min = 1, max = 1024))]
    pub location: String,
    /// The component's expected SHA-256 (lowercase hex); checked before it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SHA256_PATTERN))]
    pub sha256: Option<String>,
    /// Configuration handed to the probe unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// The probe's whole deadline, in seconds.
    #[serde(default = "default_module_timeout")]
    #[schemars(range(min = 1, max = i32::MAX))]
    pub timeout_seconds: i32,
    /// For an `oci://` location: a `kubernetes.io/dockerconfigjson` Secret in the controller's
    /// namespace holding credentials for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_ref: Option<SecretRef>,
}

/// A Secret in the controller's own namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
}

/// The scheme of a module location in an OCI registry.
pub const OCI_SCHEME: &str = "oci://";

/// `spec.activityRules[]`: Kubeflow's `ActivityRule`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRule {
    /// The rule's timing.
    pub config: RuleConfig,
    /// The workspaces it applies to; absent or empty matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RuleMatchSpec>,
    /// What happens when it matches.
    pub effect: RuleEffect,
}

/// `activityRules[].config`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleConfig {
    /// Seconds of inactivity before the workspace is eligible for the effect (> 15).
    #[schemars(range(min = MIN_SECONDS_SINCE_ACTIVE, max = i32::MAX))]
    pub seconds_since_active: i32,
    /// Seconds the workspace must have been running before it can be paused.
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX))]
    pub min_running_seconds: i32,
    /// Seconds after which a running workspace is paused, active or not, after a CullingSoon
    /// warning (this project's extension of Kubeflow's rule; absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_MAX_RUNNING_SECONDS, max = i32::MAX))]
    pub max_running_seconds: Option<i32>,
}

/// The shortest `maxRunningSeconds`: a lifetime shorter than this is a mistake.
pub const MIN_MAX_RUNNING_SECONDS: i32 = 60;

/// `activityRules[].effect`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "must specify at least one effect", "rule": "has(self.pauseWorkspace)"}
]))]
pub struct RuleEffect {
    /// Whether matching workspaces are paused once eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_workspace: Option<bool>,
}

/// `activityRules[].match`: all the given selectors must match.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatchSpec {
    /// Filters workspaces by the labels of their namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_namespace: Option<SelectorMatch>,
    /// Filters workspaces by the spawner labels of their podConfig option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pod_config: Option<SelectorMatch>,
}

impl RuleMatchSpec {
    /// Whether this match names no selector (Kubeflow's catch-all).
    pub fn is_catch_all(&self) -> bool {
        self.match_namespace.is_none() && self.match_pod_config.is_none()
    }
}

/// A `matchNamespace` or `matchPodConfig` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SelectorMatch {
    /// The standard Kubernetes label selector.
    pub selector: LabelSelector,
}

/// `CullingPolicy.status`, for `kubectl get` and for users.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::not_nullable)]
pub struct CullingPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `Ready` and `KindsManaged` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Workspaces of the kinds this policy manages.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub managed_workspaces: i64,
    /// Workspaces this policy has paused, in total.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub paused_total: i64,
}

/// The one probe an `activityProbe` configures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProbeMethod<'a> {
    /// `podExec`.
    PodExec(&'a PodExecProbe),
    /// `jupyter`.
    Jupyter(&'a JupyterProbe),
    /// `module`.
    Module(&'a ModuleProbe),
}

impl ProbeMethod<'_> {
    /// The probe's whole deadline, in seconds.
    pub fn deadline_seconds(&self) -> i64 {
        match self {
            ProbeMethod::PodExec(p) => i64::from(p.timeout_seconds),
            ProbeMethod::Jupyter(_) => JUPYTER_PROBE_TIMEOUT_SECONDS,
            ProbeMethod::Module(m) => i64::from(m.timeout_seconds),
        }
    }
}

impl<'a> ProbeMethod<'a> {
    /// The one probe of these fields; `None` unless exactly one is set.
    fn of(
        pod_exec: &'a Option<PodExecProbe>,
        jupyter: &'a Option<JupyterProbe>,
        module: &'a Option<ModuleProbe>,
    ) -> Option<ProbeMethod<'a>> {
        match (pod_exec, jupyter, module) {
            (Some(p), None, None) => Some(ProbeMethod::PodExec(p)),
            (None, Some(j), None) => Some(ProbeMethod::Jupyter(j)),
            (None, None, Some(m)) => Some(ProbeMethod::Module(m)),
            _ => None,
        }
    }
}

impl ProbeSource {
    /// The configured probe; `None` unless exactly one is set.
    pub fn method(&self) -> Option<ProbeMethod<'_>> {
        ProbeMethod::of(&self.pod_exec, &self.jupyter, &self.module)
    }
}

impl ActivityProbe {
    /// The probes to run: one, or each of `anyOf`; `None` unless exactly one of the four
    /// fields is set and each of `anyOf` (1 to [`MAX_ANY_OF`]) sets exactly one probe.
    pub fn methods(&self) -> Option<Vec<ProbeMethod<'_>>> {
        match (
            ProbeMethod::of(&self.pod_exec, &self.jupyter, &self.module),
            &self.any_of,
        ) {
            (Some(one), None) => Some(vec![one]),
            (None, Some(all)) if (1..=MAX_ANY_OF).contains(&all.len()) => all.iter().map(ProbeSource::method).collect(),
            _ => None,
        }
    }

    /// The modules it runs (one, or those among `anyOf`).
    pub fn modules(&self) -> impl Iterator<Item = &ModuleProbe> {
        self.module
            .iter()
            .chain(self.any_of.iter().flatten().filter_map(|p| p.module.as_ref()))
    }

    /// The whole deadline of a probe: the probes of `anyOf` run side by side, so the longest.
    pub fn deadline_seconds(&self) -> Option<i64> {
        self.methods()?.iter().map(ProbeMethod::deadline_seconds).max()
    }
}

/// The `CullingPolicy` CRD, as installed by the chart.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    <CullingPolicy as kube::CustomResourceExt>::crd()
}

/// The `CullingPolicy` CRD as YAML.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}

/// Check what the CRD's schema and CEL rules cannot (and, for policies read from files with no
/// apiserver in between, what they can): each message names the field and what to fix.
pub fn validate(spec: &CullingPolicySpec) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    validate_kinds(&spec.workspace_kinds, &mut errors);
    validate_probe(&spec.activity_probe, &mut errors);
    validate_rules(&spec.activity_rules, &mut errors);
    validate_deadline(spec, &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn validate_kinds(kinds: &[String], errors: &mut Vec<String>) {
    if kinds.is_empty() {
        errors.push("spec.workspaceKinds must name at least one WorkspaceKind".into());
    }
    let mut seen = BTreeSet::new();
    for (i, kind) in kinds.iter().enumerate() {
        if !is_dns_subdomain(kind) || kind.len() > MAX_NAME_LENGTH {
            errors.push(format!(
                "spec.workspaceKinds[{i}]: \"{kind}\" is not a valid WorkspaceKind name (lowercase RFC 1123 subdomain)"
            ));
        }
        if !seen.insert(kind.as_str()) {
            errors.push(format!("spec.workspaceKinds[{i}]: \"{kind}\" is named more than once"));
        }
    }
}

fn validate_probe(probe: &ActivityProbe, errors: &mut Vec<String>) {
    const P: &str = "spec.activityProbe";
    for (field, value) in [
        ("minProbeIntervalSeconds", probe.min_probe_interval_seconds),
        ("probeIntervalSeconds", probe.probe_interval_seconds),
    ] {
        if !(1..=MAX_PROBE_INTERVAL_SECONDS).contains(&value) {
            errors.push(format!(
                "{P}.{field} must be between 1 and {MAX_PROBE_INTERVAL_SECONDS}, got {value}"
            ));
        }
    }
    if probe.min_probe_interval_seconds > probe.probe_interval_seconds {
        errors.push(format!(
            "{P}: minProbeIntervalSeconds ({}) must be less than or equal to probeIntervalSeconds ({})",
            probe.min_probe_interval_seconds, probe.probe_interval_seconds
        ));
    }
    let configured = [
        probe.pod_exec.is_some(),
        probe.jupyter.is_some(),
        probe.module.is_some(),
        probe.any_of.is_some(),
    ];
    if configured.iter().filter(|set| **set).count() != 1 {
        errors.push(format!(
            "{P} must specify exactly one of 'podExec', 'jupyter', 'module' or 'anyOf'"
        ));
    }
    validate_method(P, &probe.pod_exec, &probe.jupyter, &probe.module, errors);
    let Some(any_of) = &probe.any_of else {
        return;
    };
    if !(1..=MAX_ANY_OF).contains(&any_of.len()) {
        errors.push(format!(
            "{P}.anyOf must list 1 to {MAX_ANY_OF} probes, got {}",
            any_of.len()
        ));
    }
    for (i, source) in any_of.iter().enumerate() {
        let at = format!("{P}.anyOf[{i}]");
        if source.method().is_none() {
            errors.push(format!(
                "{at} must specify exactly one of 'podExec', 'jupyter' or 'module'"
            ));
        }
        validate_method(&at, &source.pod_exec, &source.jupyter, &source.module, errors);
    }
}

/// The checks of one probe's fields, `at` naming where they are.
fn validate_method(
    at: &str,
    pod_exec: &Option<PodExecProbe>,
    jupyter: &Option<JupyterProbe>,
    module: &Option<ModuleProbe>,
    errors: &mut Vec<String>,
) {
    if let Some(exec) = pod_exec {
        let length = exec.script.chars().count();
        if length == 0 || length > MAX_SCRIPT_LENGTH {
            errors.push(format!(
                "{at}.podExec.script must be 1 to {MAX_SCRIPT_LENGTH} characters, got {length}"
            ));
        }
        if let Some(problem) = shebang_problem(&exec.script) {
            errors.push(format!("{at}.podExec.script: {problem}"));
        }
        if exec.timeout_seconds < 1 {
            errors.push(format!(
                "{at}.podExec.timeoutSeconds must be at least 1, got {}",
                exec.timeout_seconds
            ));
        }
    }
    if let Some(jupyter) = jupyter {
        if !jupyter.last_activity {
            errors.push(format!("{at}.jupyter: 'lastActivity' must be true"));
        }
        if !is_port_id(&jupyter.port_id) {
            errors.push(format!(
                "{at}.jupyter.portId: \"{}\" is not a port id (1 to 32 of a-z, 0-9, '_' or '-', starting and ending with a-z or 0-9)",
                jupyter.port_id
            ));
        }
        if let Some(secret) = &jupyter.token_secret_ref {
            if !is_dns_subdomain(&secret.name) {
                errors.push(format!(
                    "{at}.jupyter.tokenSecretRef.name: \"{}\" is not a valid Secret name",
                    secret.name
                ));
            }
            let key_ok = !secret.key.is_empty()
                && secret.key.len() <= MAX_NAME_LENGTH
                && secret
                    .key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !key_ok {
                errors.push(format!(
                    "{at}.jupyter.tokenSecretRef.key: \"{}\" is not a valid Secret key",
                    secret.key
                ));
            }
        }
    }
    if let Some(module) = module {
        if module.location.trim().is_empty() {
            errors.push(format!(
                "{at}.module.location must name a built-in probe or a module file"
            ));
        }
        // A location may never climb out of the module directory, whatever the controller's layout.
        if module.location.split(['/', '\\']).any(|part| part == "..") {
            errors.push(format!(
                "{at}.module.location \"{}\" must not contain '..'",
                module.location
            ));
        }
        if let Some(rest) = module.location.strip_prefix(OCI_SCHEME) {
            if !rest.contains("@sha256:") && module.sha256.is_none() {
                errors.push(format!(
                    "{at}.module.location \"{}\" names a tag only, which can move: pin it with \
                     @sha256:<manifest digest> or set {at}.module.sha256 (both printed by `workspace-culler probe push`)",
                    module.location
                ));
            }
        } else if module.pull_secret_ref.is_some() {
            errors.push(format!("{at}.module.pullSecretRef applies to oci:// locations only"));
        }
        if let Some(secret) = module.pull_secret_ref.as_ref().filter(|s| !is_dns_subdomain(&s.name)) {
            errors.push(format!(
                "{at}.module.pullSecretRef.name: \"{}\" is not a valid Secret name",
                secret.name
            ));
        }
        if let Some(digest) = &module.sha256 {
            let hex = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                errors.push(format!(
                    "{at}.module.sha256 must be 64 lowercase hex digits, got \"{digest}\""
                ));
            }
        }
        if module.timeout_seconds < 1 {
            errors.push(format!(
                "{at}.module.timeoutSeconds must be at least 1, got {}",
                module.timeout_seconds
            ));
        }
    }
}

/// Kubeflow's webhook check of a script's first line (`^#![ \t]*([^ \t]+)(?:[ \t]+.+)?$`, and at
/// most 255 bytes after `#!`, the kernel's limit), so a script it accepts is accepted here too.
fn shebang_problem(script: &str) -> Option<&'static str> {
    let line = script.split(['\r', '\n']).next().unwrap_or_default();
    let valid = line.strip_prefix("#!").is_some_and(|rest| {
        let rest = rest.trim_start_matches([' ', '\t']);
        let interpreter = rest.find([' ', '\t']).unwrap_or(rest.len());
        // Arguments, if any, are blanks and then at least one more character.
        let arguments = &rest[interpreter..];
        interpreter > 0 && (arguments.is_empty() || arguments.chars().count() >= 2)
    });
    if !valid {
        Some("the first line must be a shebang such as '#!/bin/sh'")
    } else if line.len().saturating_sub(2) > MAX_SHEBANG_LENGTH {
        Some("shebang line exceeds the 255 character limit")
    } else {
        None
    }
}

fn is_port_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_PORT_ID_LENGTH
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || matches!(b, b'_' | b'-'))
}

fn validate_rules(rules: &[ActivityRule], errors: &mut Vec<String>) {
    let mut catch_all: Option<usize> = None;
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.activityRules[{i}]");
        if rule.config.seconds_since_active < MIN_SECONDS_SINCE_ACTIVE {
            errors.push(format!(
                "{at}.config.secondsSinceActive must be at least {MIN_SECONDS_SINCE_ACTIVE}, got {}",
                rule.config.seconds_since_active
            ));
        }
        if let Some(max) = rule.config.max_running_seconds {
            if max < MIN_MAX_RUNNING_SECONDS {
                errors.push(format!(
                    "{at}.config.maxRunningSeconds must be at least {MIN_MAX_RUNNING_SECONDS}, got {max}"
                ));
            } else if max <= rule.config.min_running_seconds {
                errors.push(format!(
                    "{at}.config.maxRunningSeconds ({max}) must be more than minRunningSeconds ({})",
                    rule.config.min_running_seconds
                ));
            }
        }
        if rule.config.min_running_seconds < 0 {
            errors.push(format!(
                "{at}.config.minRunningSeconds must not be negative, got {}",
                rule.config.min_running_seconds
            ));
        }
        if rule.effect.pause_workspace.is_none() {
            errors.push(format!("{at}.effect must specify at least one effect (pauseWorkspace)"));
        }
        let selectors = rule.match_.iter().flat_map(|m| {
            [
                ("matchNamespace", &m.match_namespace),
                ("matchPodConfig", &m.match_pod_config),
            ]
        });
        for (name, selector) in selectors {
            if let Some(Err(e)) = selector.as_ref().map(|s| s.selector.validate()) {
                errors.push(format!("{at}.match.{name}.selector: {e}"));
            }
        }
        // Kubeflow's rule (enforced by its webhook, not CEL): one catch-all, and only last.
        if rule.match_.as_ref().is_none_or(RuleMatchSpec::is_catch_all) {
            if let Some(first) = catch_all {
                errors.push(format!(
                    "{at}: only one catch-all rule (no match) is allowed, and spec.activityRules[{first}] is one already"
                ));
            } else if i + 1 != rules.len() {
                errors.push(format!("{at}: a catch-all rule (no match) must be the last rule"));
            }
            catch_all.get_or_insert(i);
        }
    }
}

fn validate_deadline(spec: &CullingPolicySpec, errors: &mut Vec<String>) {
    let Some(deadline) = spec.activity_probe.deadline_seconds() else {
        return;
    };
    let shortest = spec
        .activity_rules
        .iter()
        .enumerate()
        .min_by_key(|(_, rule)| rule.config.seconds_since_active);
    let Some((i, rule)) = shortest else {
        return;
    };
    let window = i64::from(rule.config.seconds_since_active);
    if deadline >= window {
        errors.push(format!(
            "spec.activityProbe: the probe's deadline ({deadline} s) must be shorter than the shortest \
             secondsSinceActive ({window} s, spec.activityRules[{i}])"
        ));
    }
}

#[cfg(test)]
mod tests;
