//! Kubeflow Notebooks v2.0.0-beta.0 on the local control plane: its released CRDs and sample
//! kinds (copied unchanged into `tests/kubeflow/`), and a small double of its workspace
//! controller, which cannot be built here.
//!
//! The double plays Kubeflow's part, and the StatefulSet controller's, as far as the culler
//! can see it (polling every 200 ms):
//! - a Workspace gets a StatefulSet `ws-<name>` it controls (labelled with the workspace's
//!   name), and while not paused the StatefulSet's pod `ws-<name>-0` on kwok's node (labelled
//!   too, controlled by the StatefulSet, container `main`, exec running on this machine in its
//!   own directory);
//! - once that pod is Running, `status.state` becomes `Running` with `lastRunningTime` (ms) and
//!   `podTemplateOptions` (the selected options, no redirects); the first write fills every
//!   status field Kubeflow's CRD requires, as Kubeflow's controller does;
//! - `spec.paused: true` deletes the pod, scales the StatefulSet to 0 and sets `Paused` with
//!   `pauseTime`; `spec.paused: false` starts the pod again.
//!
//! It never writes `status.activity` after the first status write: that is the culler's.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::controlplane::NODE_NAME;

/// Kubeflow's Workspace CRD, as released.
pub const WORKSPACE_CRD: &str = include_str!("../../../tests/kubeflow/kubeflow.org_workspaces.yaml");
/// Kubeflow's WorkspaceKind CRD, as released.
pub const WORKSPACE_KIND_CRD: &str = include_str!("../../../tests/kubeflow/kubeflow.org_workspacekinds.yaml");
/// Kubeflow's sample `jupyterlab` WorkspaceKind.
pub const JUPYTERLAB_KIND: &str = include_str!("../../../tests/kubeflow/jupyterlab_v1beta1_workspacekind.yaml");
/// Kubeflow's sample `codeserver` WorkspaceKind.
pub const CODESERVER_KIND: &str = include_str!("../../../tests/kubeflow/codeserver_v1beta1_workspacekind.yaml");
/// Kubeflow's sample Workspace (of the `jupyterlab` kind).
pub const JUPYTERLAB_WORKSPACE: &str = include_str!("../../../tests/kubeflow/jupyterlab_v1beta1_workspace.yaml");

/// The label Kubeflow puts on a workspace's StatefulSet and pod.
pub const WORKSPACE_LABEL: &str = "notebooks.kubeflow.org/workspace-name";

/// Kubeflow's CRDs as one multi-document YAML.
pub fn crds_yaml() -> String {
    format!("{WORKSPACE_CRD}\n---\n{WORKSPACE_KIND_CRD}")
}

/// A sample file as JSON.
pub fn sample(yaml: &str) -> serde_json::Value {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("Kubeflow's sample parses");
    serde_json::to_value(value).expect("Kubeflow's sample is JSON")
}

/// A sample kind as Kubeflow ships it, minus `spec.podTemplate.activityProbe` and
/// `spec.activityRules`, which move into a CullingPolicy (see [`policy_from_kind`]).
pub fn kind_without_probe(yaml: &str) -> serde_json::Value {
    let mut kind = sample(yaml);
    if let Some(spec) = kind.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.remove("activityRules");
    }
    if let Some(template) = kind.pointer_mut("/spec/podTemplate").and_then(|t| t.as_object_mut()) {
        template.remove("activityProbe");
    }
    kind
}

/// A CullingPolicy named `name` for the sample kind: its `activityProbe` and `activityRules`
/// cut and pasted, as the migration guide says.
pub fn policy_from_kind(yaml: &str, name: &str) -> serde_json::Value {
    let kind = sample(yaml);
    let mut spec = serde_json::json!({"workspaceKinds": [kind["metadata"]["name"]]});
    if let Some(probe) = kind.pointer("/spec/podTemplate/activityProbe") {
        spec["activityProbe"] = probe.clone();
    }
    if let Some(rules) = kind.pointer("/spec/activityRules") {
        spec["activityRules"] = rules.clone();
    }
    serde_json::json!({"apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy",
                       "metadata": {"name": name}, "spec": spec})
}

/// The Workspace resource.
pub fn workspace_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeflow.org", "v1beta1", "Workspace"),
        "workspaces",
    )
}

/// The WorkspaceKind resource.
pub fn kind_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeflow.org", "v1beta1", "WorkspaceKind"),
        "workspacekinds",
    )
}

/// The StatefulSet the double makes for `workspace`.
pub fn statefulset_name(workspace: &str) -> String {
    format!("ws-{workspace}")
}

/// The pod of `workspace` (its StatefulSet's first replica).
pub fn pod_name(workspace: &str) -> String {
    format!("{}-0", statefulset_name(workspace))
}

/// The directory a pod's exec runs in, as each container has its own files.
pub fn pod_dir(pods_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    pods_dir.join(format!("{namespace}-{pod}"))
}

fn kwok(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", kind), plural)
}

/// Make `pod`'s `main` container exec on this machine, in its own directory under `pods_dir`,
/// with that directory's `bin/` first on its `PATH` (a test puts a container's own commands
/// there, e.g. an `nvidia-smi`).
pub async fn exec_locally(client: &Client, pods_dir: &Path, namespace: &str, pod: &str) -> anyhow::Result<PathBuf> {
    let dir = pod_dir(pods_dir, namespace, pod);
    std::fs::create_dir_all(dir.join("bin"))?;
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let execs: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kwok("Exec", "execs"));
    if execs.get_opt(pod).await?.is_none() {
        let exec: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Exec",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"execs": [{"containers": ["main"],
                                "local": {"workDir": dir, "envs": [{"name": "PATH", "value": path}]}}]},
        }))?;
        execs.create(&PostParams::default(), &exec).await?;
    }
    Ok(dir)
}

/// Kubeflow's workspace controller, played until dropped.
pub struct KubeflowDouble(tokio::task::JoinHandle<()>);

impl Drop for KubeflowDouble {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl KubeflowDouble {
    /// Start playing Kubeflow's controller for every Workspace; pods exec under `pods_dir`.
    pub fn start(client: Client, pods_dir: PathBuf) -> KubeflowDouble {
        KubeflowDouble(tokio::spawn(async move {
            loop {
                if let Err(e) = sync_all(&client, &pods_dir).await {
                    eprintln!("kubeflow double: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What one cycle sees: StatefulSets and pods of every workspace, by `namespace/name`, from
/// one list each (a cycle costs three lists, however many workspaces there are).
struct Seen {
    statefulsets: std::collections::HashMap<(String, String), StatefulSet>,
    pods: std::collections::HashMap<(String, String), Pod>,
}

async fn sync_all(client: &Client, pods_dir: &Path) -> anyhow::Result<()> {
    let workspaces: Api<DynamicObject> = Api::all_with(client.clone(), &workspace_resource());
    let labelled = kube::api::ListParams::default().labels(WORKSPACE_LABEL);
    let seen = Seen {
        statefulsets: Api::<StatefulSet>::all(client.clone())
            .list(&labelled)
            .await?
            .items
            .into_iter()
            .map(|s| (key(&s.metadata), s))
            .collect(),
        pods: Api::<Pod>::all(client.clone())
            .list(&labelled)
            .await?
            .items
            .into_iter()
            .map(|p| (key(&p.metadata), p))
            .collect(),
    };
    for workspace in workspaces.list(&Default::default()).await?.items {
        let name = workspace.name_any();
        sync(client, pods_dir, &workspace, &seen)
            .await
            .with_context(|| format!("workspace {name}"))?;
    }
    Ok(())
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> serde_json::Value {
    serde_json::json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
                        "controller": true, "blockOwnerDeletion": true}])
}

async fn sync(client: &Client, pods_dir: &Path, workspace: &DynamicObject, seen: &Seen) -> anyhow::Result<()> {
    let namespace = workspace.namespace().unwrap_or_default();
    let name = workspace.name_any();
    let uid = workspace.uid().unwrap_or_default();
    let data = &workspace.data;
    let paused = data.pointer("/spec/paused").and_then(|p| p.as_bool()).unwrap_or(false);
    let state = data.pointer("/status/state").and_then(|s| s.as_str()).unwrap_or("");
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let workspaces: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &workspace_resource());
    let sts_name = statefulset_name(&name);
    let pod = pod_name(&name);
    let labels = serde_json::json!({WORKSPACE_LABEL: name});
    let replicas = if paused { 0 } else { 1 };

    let sts = match seen.statefulsets.get(&(namespace.clone(), sts_name.clone())).cloned() {
        Some(sts) => sts,
        None => {
            let sts: StatefulSet = serde_json::from_value(serde_json::json!({
                "metadata": {"name": sts_name, "labels": labels,
                             "ownerReferences": owner("kubeflow.org/v1beta1", "Workspace", &name, &uid)},
                "spec": {"replicas": replicas, "serviceName": sts_name,
                         "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"containers": [{"name": "main", "image": "workspace:double"}]}}},
            }))?;
            statefulsets.create(&PostParams::default(), &sts).await?
        }
    };
    if sts.spec.as_ref().and_then(|s| s.replicas) != Some(replicas) {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        statefulsets
            .patch(&sts_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let existing = seen.pods.get(&(namespace.clone(), pod.clone())).cloned();
    let status = |fields: serde_json::Value| {
        let mut fields = fields;
        if data.get("status").and_then(|s| s.get("podTemplateOptions")).is_none() {
            // The first write: every field Kubeflow's CRD requires, as Kubeflow writes it.
            let full = serde_json::json!({
                "activity": {"lastActivity": 0, "lastUpdate": 0},
                "lastRunningTime": 0, "pauseTime": 0, "pendingRestart": false,
                "podTemplateOptions": options(data),
                "podTemplatePod": {"name": pod, "nodeName": NODE_NAME},
                "state": "Pending", "stateMessage": "",
            });
            let mut merged = full.as_object().cloned().unwrap_or_default();
            merged.extend(fields.as_object().cloned().unwrap_or_default());
            fields = serde_json::Value::Object(merged);
        }
        serde_json::json!({"status": fields})
    };
    if paused {
        if let Some(existing) = existing {
            if existing.metadata.deletion_timestamp.is_none() {
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                pods.delete(&pod, &params).await?;
            }
            return Ok(());
        }
        if state != "Paused" {
            let patch = status(
                serde_json::json!({"state": "Paused", "stateMessage": "Workspace is paused",
                                                  "pauseTime": now_ms()}),
            );
            workspaces
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        return Ok(());
    }
    let Some(existing) = existing else {
        exec_locally(client, pods_dir, &namespace, &pod).await?;
        let sts_uid = sts.metadata.uid.clone().unwrap_or_default();
        let new: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": pod, "labels": labels,
                         "ownerReferences": owner("apps/v1", "StatefulSet", &sts_name, &sts_uid)},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "main", "image": "workspace:double"}]},
        }))?;
        pods.create(&PostParams::default(), &new).await?;
        if state != "Pending" {
            let patch = status(serde_json::json!({"state": "Pending", "stateMessage": "Pod is starting"}));
            workspaces
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        return Ok(());
    };
    let running = existing.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && existing.metadata.deletion_timestamp.is_none();
    if running && state != "Running" {
        let patch = status(serde_json::json!({
            "state": "Running", "stateMessage": "Workspace is running",
            "lastRunningTime": now_ms(), "podTemplateOptions": options(data),
        }));
        workspaces
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// `status.podTemplateOptions`: the selected options, without redirects.
fn options(data: &serde_json::Value) -> serde_json::Value {
    let selected = |option: &str| {
        data.pointer(&format!("/spec/podTemplate/options/{option}"))
            .and_then(|v| v.as_str())
            .map_or_else(
                || serde_json::json!({"redirectChain": []}),
                |id| serde_json::json!({"desired": id, "redirectChain": []}),
            )
    };
    serde_json::json!({"imageConfig": selected("imageConfig"), "podConfig": selected("podConfig")})
}
