//! Shared set-up of the end-to-end tests: a real control plane (etcd,
//! kube-apiserver, kwok), the project's CRDs, pods on kwok's node whose exec
//! runs on this machine, and the controller binary as a separate process.

#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use workspace_culler::crd::{Workspace, WorkspaceKind};
use workspace_culler_support::controlplane::{self, ControlPlane, NODE_NAME};

pub struct Env {
    pub cp: ControlPlane,
    pub client: kube::Client,
}

pub fn free_port() -> u16 {
    workspace_culler_support::controlplane::free_port().unwrap()
}

/// Poll `check` every 250 ms until it returns `Some`, or panic after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kwok_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", kind), plural)
}

impl Env {
    pub async fn start() -> Env {
        let bin = controlplane::binaries().expect("control-plane binaries");
        let cp = ControlPlane::start(&bin).await.expect("control plane");
        let client = cp.client().await.unwrap();
        let env = Env { cp, client };
        env.install_crds().await;
        env.exec_locally().await;
        env
    }

    async fn install_crds(&self) {
        self.cp.install_crds(&workspace_culler::crd::crds_yaml()).await.unwrap();
    }

    /// Every pod's `main` container execs on this machine (kwok's ClusterExec).
    async fn exec_locally(&self) {
        let resource = kwok_resource("ClusterExec", "clusterexecs");
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let exec: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterExec",
            "metadata": {"name": "local"},
            "spec": {"execs": [{"containers": ["main"], "local": {"workDir": "/tmp"}}]},
        }))
        .unwrap();
        eventually(Duration::from_secs(30), "kwok's CRDs", || {
            let (api, exec) = (api.clone(), exec.clone());
            async move { api.create(&PostParams::default(), &exec).await.ok().map(|_| ()) }
        })
        .await;
    }

    pub async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
    }

    /// Port `port` of pod `namespace/pod` forwards to `127.0.0.1:target` (kwok's PortForward).
    pub async fn forward(&self, namespace: &str, pod: &str, port: u16, target: u16) {
        let resource = kwok_resource("PortForward", "portforwards");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let forward: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "PortForward",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"forwards": [{"ports": [port], "target": {"port": target, "address": "127.0.0.1"}}]},
        }))
        .unwrap();
        api.create(&PostParams::default(), &forward).await.unwrap();
    }

    pub async fn apply_kind(&self, kind: serde_json::Value) {
        let api: Api<WorkspaceKind> = Api::all(self.client.clone());
        let kind: WorkspaceKind = serde_json::from_value(kind).unwrap();
        api.create(&PostParams::default(), &kind).await.unwrap();
    }

    /// A workspace the way the workspace controller leaves it: a Running pod
    /// on kwok's node, and `status.state: Running`.
    pub async fn running_workspace(&self, namespace: &str, name: &str, spec: serde_json::Value) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{name}-0"), "labels": {"notebooks.kubeflow.org/workspace-name": name}},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "main", "image": "notebook:test"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let pod_name = format!("{name}-0");
        // Each pod's exec runs in its own directory, as each container has its own files.
        let work_dir = self.cp.dir().join("pods").join(format!("{namespace}-{pod_name}"));
        std::fs::create_dir_all(&work_dir).unwrap();
        let resource = kwok_resource("Exec", "execs");
        let execs: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let exec: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Exec",
            "metadata": {"name": pod_name, "namespace": namespace},
            "spec": {"execs": [{"containers": ["main"], "local": {"workDir": work_dir}}]},
        }))
        .unwrap();
        execs.create(&PostParams::default(), &exec).await.unwrap();
        eventually(Duration::from_secs(30), "pod Running", || {
            let (pods, pod_name) = (pods.clone(), pod_name.clone());
            async move {
                let pod = pods.get(&pod_name).await.ok()?;
                (pod.status?.phase.as_deref() == Some("Running")).then_some(())
            }
        })
        .await;
        let workspaces: Api<Workspace> = Api::namespaced(self.client.clone(), namespace);
        let ws: Workspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }))
        .unwrap();
        workspaces.create(&PostParams::default(), &ws).await.unwrap();
        let status = serde_json::json!({"status": {"state": "Running"}});
        workspaces
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// How many times an Event with `reason` was recorded for workspace `namespace/name`
    /// (repeats of an Event are counted in its series rather than as new objects).
    pub async fn events(&self, namespace: &str, name: &str, reason: &str) -> usize {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), namespace);
        let events = api.list(&Default::default()).await.unwrap().items;
        events
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason))
            .map(|e| e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1) as usize)
            .sum()
    }

    /// Wait until workspace `namespace/name` is paused; how long that took.
    pub async fn wait_paused(
        &self,
        namespace: &str,
        name: &str,
        limit: Duration,
        log: impl Fn() -> String,
    ) -> Duration {
        let started = Instant::now();
        while !self.workspace(namespace, name).await.spec.paused {
            assert!(
                started.elapsed() < limit,
                "{namespace}/{name} was not paused within {limit:?}\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        started.elapsed()
    }

    pub async fn workspace(&self, namespace: &str, name: &str) -> Workspace {
        Api::<Workspace>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .unwrap()
    }

    /// Start the controller binary against this control plane, as the admin.
    pub fn controller(&self, log_name: &str, extra: &[&str]) -> Controller {
        self.controller_as(&self.cp.kubeconfig(), log_name, extra)
    }

    /// Start the controller binary with the credentials of `kubeconfig`.
    pub fn controller_as(&self, kubeconfig: &std::path::Path, log_name: &str, extra: &[&str]) -> Controller {
        let log_path = self.cp.dir().join(format!("{log_name}.log"));
        let metrics_port = free_port();
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
            .args(["controller", "--http-mode", "port-forward", "--concurrency", "4"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("RUST_LOG", "workspace_culler=debug,probe=info,warn")
            .env("WORKSPACE_CULLER_CACHE_DIR", self.cp.dir().join("probe-cache"))
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap();
        Controller {
            child,
            log_path,
            metrics_port,
        }
    }
}

pub struct Controller {
    child: Child,
    pub log_path: PathBuf,
    metrics_port: u16,
}

impl Controller {
    /// GET a path of the controller's metrics/health server: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let request = workspace_culler_engine::HttpRequest {
            method: http::Method::GET,
            uri: format!("http://127.0.0.1:{}{path}", self.metrics_port).parse().unwrap(),
            headers: Default::default(),
            body: Default::default(),
            response_body_cap: 16 << 20,
        };
        let response = workspace_culler::transport::http(request).await.unwrap();
        (response.status, String::from_utf8_lossy(&response.body).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}
