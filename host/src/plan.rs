//! From a WorkspaceKind and a Workspace to what to run: which probe
//! component, with which config, ports and deadline (SPEC §3.1, §3.3). Pure.

use crate::crd::{ActivityProbe, WorkspaceKindSpec, WorkspaceSpec};
use std::time::Duration;

/// Where Jupyter serves unless the port removes the path prefix.
pub const DEFAULT_CONNECT_PATH: &str = "/workspace/connect/{namespace}/{name}/{portId}/";
/// Deadline of probes that set no timeout of their own.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Time beyond a script's own timeout for the exec round trips.
pub const EXEC_GRACE: Duration = Duration::from_secs(5);

/// Which component a probe runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleRef {
    /// Shipped inside the controller.
    Builtin(String),
    /// A component file (e.g. a mounted ConfigMap), pinned by sha256.
    File {
        /// Path of the component.
        path: String,
        /// Pinned sha256 (hex).
        sha256: String,
    },
}

/// Everything needed to run one workspace's probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbePlan {
    /// The component.
    pub module: ModuleRef,
    /// The digest a built-in must match too, when the kind pins one.
    pub pinned_sha256: Option<String>,
    /// The JSON config handed to the probe.
    pub config: serde_json::Value,
    /// The evaluation's deadline.
    pub deadline: Duration,
    /// A Secret key whose value becomes the config's `token` (Jupyter).
    pub token_secret: Option<(String, String)>,
}

impl ProbePlan {
    /// Short name for logs, metrics and events.
    pub fn probe_name(&self) -> String {
        match &self.module {
            ModuleRef::Builtin(name) => name.clone(),
            ModuleRef::File { path, .. } => std::path::Path::new(path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// The ports of the image the workspace selected: id → number.
pub fn resolve_ports(kind: &WorkspaceKindSpec, workspace: &WorkspaceSpec) -> Vec<(String, u16)> {
    let selected = workspace
        .pod_template
        .as_ref()
        .and_then(|t| t.options.as_ref())
        .and_then(|o| o.image_config.as_deref());
    let values = kind
        .pod_template
        .options
        .as_ref()
        .and_then(|o| o.image_config.as_ref())
        .map(|c| c.values.as_slice())
        .unwrap_or_default();
    values
        .iter()
        .find(|v| Some(v.id.as_str()) == selected)
        .map(|v| v.spec.ports.iter().map(|p| (p.id.clone(), p.port)).collect())
        .unwrap_or_default()
}

/// The probe a kind configures, or why there is none to run.
pub fn plan(probe: &ActivityProbe, kind: &WorkspaceKindSpec, connect_path: &str) -> Result<ProbePlan, String> {
    let configured = [probe.exec.is_some(), probe.jupyter.is_some(), probe.module.is_some()];
    match configured.iter().filter(|c| **c).count() {
        1 => {}
        0 => return Err("activityProbe sets none of exec, jupyter, module".into()),
        _ => return Err("activityProbe must set exactly one of exec, jupyter, module".into()),
    }
    if let Some(exec) = &probe.exec {
        return Ok(ProbePlan {
            module: ModuleRef::Builtin("exec-script".into()),
            pinned_sha256: None,
            config: serde_json::json!({
                "script": exec.script,
                "outputPath": exec.output_path,
                "timeoutSeconds": exec.timeout_seconds,
            }),
            deadline: Duration::from_secs(u64::from(exec.timeout_seconds)) + EXEC_GRACE,
            token_secret: None,
        });
    }
    if let Some(jupyter) = &probe.jupyter {
        let remove_prefix = kind
            .pod_template
            .ports
            .iter()
            .find(|p| p.id == jupyter.port_id)
            .and_then(|p| p.http_proxy.as_ref())
            .is_some_and(|h| h.remove_path_prefix);
        return Ok(ProbePlan {
            module: ModuleRef::Builtin("jupyter".into()),
            pinned_sha256: None,
            config: serde_json::json!({
                "lastActivity": jupyter.last_activity,
                "portId": jupyter.port_id,
                "pathTemplate": connect_path,
                "removePathPrefix": remove_prefix,
            }),
            deadline: DEFAULT_DEADLINE,
            token_secret: jupyter.token_secret.as_ref().map(|s| (s.name.clone(), s.key.clone())),
        });
    }
    let module = probe.module.as_ref().ok_or("activityProbe.module is missing")?;
    let is_builtin = workspace_culler_engine::builtin::builtin(&module.location).is_some();
    Ok(ProbePlan {
        module: if is_builtin {
            ModuleRef::Builtin(module.location.clone())
        } else {
            ModuleRef::File {
                path: module.location.clone(),
                sha256: module.sha256.clone(),
            }
        },
        pinned_sha256: Some(module.sha256.clone()),
        config: module.config.clone().unwrap_or_else(|| serde_json::json!({})),
        deadline: module
            .timeout_seconds
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(DEFAULT_DEADLINE),
        token_secret: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Workspace, WorkspaceKind};

    fn fixtures() -> (WorkspaceKindSpec, WorkspaceSpec) {
        let kind: WorkspaceKind =
            serde_yaml::from_str(include_str!("../../tests/e2e/workspacekind-jupyterlab.yaml")).unwrap();
        let ws: Workspace = serde_yaml::from_str(include_str!("../../tests/e2e/workspace-jupyterlab.yaml")).unwrap();
        (kind.spec, ws.spec)
    }

    #[test]
    fn port_ids_resolve_through_the_selected_image() {
        let (kind, ws) = fixtures();
        assert_eq!(resolve_ports(&kind, &ws), vec![("jupyterlab".to_string(), 8888)]);
        let mut other = ws.clone();
        other
            .pod_template
            .as_mut()
            .unwrap()
            .options
            .as_mut()
            .unwrap()
            .image_config = Some("gone".into());
        assert!(
            resolve_ports(&kind, &other).is_empty(),
            "an unknown image value resolves nothing"
        );
    }

    #[test]
    fn a_jupyter_kind_plans_the_jupyter_probe() {
        let (mut kind, _) = fixtures();
        let probe = kind.pod_template.culling.clone().unwrap().activity_probe;
        let plan = plan(&probe, &kind, DEFAULT_CONNECT_PATH).unwrap();
        assert_eq!(plan.module, ModuleRef::Builtin("jupyter".into()));
        assert_eq!(plan.config["portId"], "jupyterlab");
        assert_eq!(plan.config["removePathPrefix"], false);
        kind.pod_template.ports[0]
            .http_proxy
            .as_mut()
            .unwrap()
            .remove_path_prefix = true;
        assert_eq!(
            super::plan(&probe, &kind, DEFAULT_CONNECT_PATH).unwrap().config["removePathPrefix"],
            true
        );
    }

    #[test]
    fn an_exec_probe_gets_its_timeout_plus_grace() {
        let (kind, _) = fixtures();
        let probe: ActivityProbe =
            serde_json::from_value(serde_json::json!({"exec": {"script": "#!/bin/sh\n", "timeoutSeconds": 10}}))
                .unwrap();
        let plan = plan(&probe, &kind, DEFAULT_CONNECT_PATH).unwrap();
        assert_eq!(plan.module, ModuleRef::Builtin("exec-script".into()));
        assert_eq!(plan.deadline, Duration::from_secs(15));
        assert_eq!(plan.config["outputPath"], "/tmp/activity_probe.json");
    }

    #[test]
    fn a_module_probe_is_pinned_and_its_config_passes_through() {
        let (kind, _) = fixtures();
        let probe: ActivityProbe = serde_json::from_value(serde_json::json!({"module": {
            "location": "/probes/vscode.wasm", "sha256": "ab", "config": {"any": ["thing", 1]}
        }}))
        .unwrap();
        let plan = plan(&probe, &kind, DEFAULT_CONNECT_PATH).unwrap();
        assert_eq!(
            plan.module,
            ModuleRef::File {
                path: "/probes/vscode.wasm".into(),
                sha256: "ab".into()
            }
        );
        assert_eq!(plan.config, serde_json::json!({"any": ["thing", 1]}));
        assert_eq!(plan.probe_name(), "vscode");
    }

    #[test]
    fn exactly_one_probe_kind_is_required() {
        let (kind, _) = fixtures();
        let none = ActivityProbe::default();
        assert!(
            plan(&none, &kind, DEFAULT_CONNECT_PATH)
                .unwrap_err()
                .contains("none of")
        );
        let two: ActivityProbe = serde_json::from_value(serde_json::json!({
            "exec": {"script": "#!/bin/sh\n"}, "jupyter": {"lastActivity": true, "portId": "x"}
        }))
        .unwrap();
        assert!(
            plan(&two, &kind, DEFAULT_CONNECT_PATH)
                .unwrap_err()
                .contains("exactly one")
        );
    }
}
