//! Shared set-up of the end-to-end tests: a real control plane (etcd, kube-apiserver, kwok)
//! with Kubeflow's released CRDs (from `tests/kubeflow/`) and the CullingPolicy CRD, the
//! double of Kubeflow's workspace controller (`workspace_culler_support::kubeflow`), pods on
//! kwok's node whose exec runs on this machine, and the controller binary as a separate process.

#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use workspace_culler_policy::{Activity, CullingPolicy, Workspace};
use workspace_culler_support::controlplane::{self, ControlPlane, NODE_NAME};
use workspace_culler_support::kubeflow::{self, KubeflowDouble};

/// The namespace the controller runs in (its Lease and token Secrets live here).
pub const CONTROLLER_NS: &str = "culler-system";

pub struct Env {
    pub cp: ControlPlane,
    pub client: kube::Client,
    _kubeflow: KubeflowDouble,
}

pub fn free_port() -> u16 {
    workspace_culler_support::controlplane::free_port().unwrap()
}

/// The sum of a metric's samples whose line starts with `prefix` and has every label in `labels`.
pub fn sum(metrics: &str, prefix: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `check` every 250 ms until it returns `Some`, or panic after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_or(limit, what, String::new, check).await
}

/// As [`eventually`], and a panic says what `context` gives at that moment (a controller's
/// log: read when the time is up, not when the wait began).
pub async fn eventually_or<T, F, Fut>(limit: Duration, what: &str, context: impl Fn() -> String, mut check: F) -> T
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
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kwok_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", kind), plural)
}

/// A policy for `kinds` whose probe is `method` (e.g. `{"podExec": {…}}`), probed every
/// 2–4 s, pausing after `idle` seconds.
fn policy_with(name: &str, kinds: &[&str], method: serde_json::Value, idle: i32) -> serde_json::Value {
    let mut probe = serde_json::json!({"minProbeIntervalSeconds": 2, "probeIntervalSeconds": 4});
    if let (Some(probe), Some(method)) = (probe.as_object_mut(), method.as_object()) {
        probe.extend(method.clone());
    }
    serde_json::json!({
        "apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy",
        "metadata": {"name": name},
        "spec": {
            "workspaceKinds": kinds,
            "activityProbe": probe,
            "activityRules": [{"config": {"secondsSinceActive": idle}, "effect": {"pauseWorkspace": true}}],
        },
    })
}

/// An exec probe policy for `kinds`: `script`, probed every 2–4 s, paused after `idle` seconds.
/// Its exec may take 10 s: one through a busy apiserver on a loaded machine can take over 2.
pub fn exec_policy(name: &str, kinds: &[&str], script: &str, idle: i32) -> serde_json::Value {
    policy_with(
        name,
        kinds,
        serde_json::json!({"podExec": {"script": script, "timeoutSeconds": 10}}),
        idle,
    )
}

/// A policy named after `kind` whose probe is the module `module` (an `activityProbe.module`
/// object), probed every 2–4 s, pausing after `idle` seconds.
pub fn module_policy(kind: &str, module: serde_json::Value, idle: i32) -> serde_json::Value {
    policy_with(kind, &[kind], serde_json::json!({"module": module}), idle)
}

/// The condition `type_` of a policy's status.
pub fn condition<'a>(
    policy: &'a CullingPolicy,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    policy.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// A WorkspaceKind named `name`: Kubeflow's sample jupyterlab kind without its probe.
pub fn sample_kind(name: &str) -> serde_json::Value {
    let mut kind = kubeflow::kind_without_probe(kubeflow::JUPYTERLAB_KIND);
    kind["metadata"] = serde_json::json!({"name": name});
    kind
}

impl Env {
    pub async fn start() -> Env {
        let bin = controlplane::binaries().expect("control-plane binaries");
        let cp = ControlPlane::start(&bin).await.expect("control plane");
        let client = cp.client().await.unwrap();
        cp.install_crds(&kubeflow::crds_yaml()).await.unwrap();
        cp.install_crds(&workspace_culler::crds_yaml()).await.unwrap();
        let double = KubeflowDouble::start(client.clone(), cp.dir().join("pods"));
        let env = Env {
            cp,
            client,
            _kubeflow: double,
        };
        env.wait_for_kwok().await;
        env.namespace(CONTROLLER_NS, &[]).await;
        env
    }

    /// kwok's own CRDs are served (it installs them after it starts).
    async fn wait_for_kwok(&self) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kwok_resource("ClusterExec", "clusterexecs"));
        eventually(Duration::from_secs(30), "kwok's CRDs", || {
            let api = api.clone();
            async move { api.list(&Default::default()).await.ok().map(|_| ()) }
        })
        .await;
    }

    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let labels: std::collections::BTreeMap<_, _> = labels.iter().copied().collect();
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}})).unwrap();
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

    /// Create a WorkspaceKind (an object written for Kubeflow's CRD).
    pub async fn apply_kind(&self, kind: serde_json::Value) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kubeflow::kind_resource());
        let kind: DynamicObject = serde_json::from_value(kind).unwrap();
        api.create(&PostParams::default(), &kind).await.unwrap();
    }

    /// Create a CullingPolicy.
    pub async fn apply_policy(&self, policy: serde_json::Value) {
        let api: Api<CullingPolicy> = Api::all(self.client.clone());
        let policy: CullingPolicy = serde_json::from_value(policy).unwrap();
        api.create(&PostParams::default(), &policy).await.unwrap();
    }

    pub async fn policy(&self, name: &str) -> CullingPolicy {
        Api::<CullingPolicy>::all(self.client.clone()).get(name).await.unwrap()
    }

    /// A workspace of `kind` (Kubeflow's sample, renamed), with extra `metadata` merged in;
    /// returns once Kubeflow (the double) reports it Running.
    pub async fn running_workspace(&self, namespace: &str, name: &str, kind: &str, metadata: serde_json::Value) {
        let mut workspace = kubeflow::sample(kubeflow::JUPYTERLAB_WORKSPACE);
        let mut meta = serde_json::json!({"name": name, "namespace": namespace});
        if let (Some(meta), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
            meta.extend(extra.clone());
        }
        workspace["metadata"] = meta;
        workspace["spec"]["kind"] = kind.into();
        self.create_workspace(namespace, workspace).await;
        self.wait_running(namespace, name).await;
    }

    /// Create a Workspace from an object written for Kubeflow's CRD.
    pub async fn create_workspace(&self, namespace: &str, workspace: serde_json::Value) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &kubeflow::workspace_resource());
        let workspace: DynamicObject = serde_json::from_value(workspace).unwrap();
        api.create(&PostParams::default(), &workspace).await.unwrap();
    }

    pub async fn wait_running(&self, namespace: &str, name: &str) {
        eventually(
            Duration::from_secs(60),
            &format!("{namespace}/{name} Running"),
            || async {
                let ws = self.workspace(namespace, name).await;
                (ws.state() == workspace_culler_policy::WorkspaceState::Running).then_some(())
            },
        )
        .await;
    }

    /// The apiserver's URL.
    pub fn server_url(&self) -> String {
        self.cp.server.clone()
    }

    /// The IP kwok gave pod `namespace/pod`.
    pub async fn pod_ip(&self, namespace: &str, pod: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        eventually(Duration::from_secs(30), "the pod's IP", || async {
            pods.get(pod).await.ok()?.status?.pod_ip
        })
        .await
    }

    /// The directory `namespace/pod`'s exec runs in.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        kubeflow::pod_dir(&self.cp.dir().join("pods"), namespace, pod)
    }

    /// A pod that carries the workspace's label but is not its pod: controlled by
    /// `statefulset` (created here, owned by no Workspace) when given, else by nothing. Its
    /// exec runs in a directory of its own, which is returned.
    pub async fn decoy_pod(&self, namespace: &str, workspace: &str, pod: &str, statefulset: Option<&str>) -> PathBuf {
        let labels = serde_json::json!({kubeflow::WORKSPACE_LABEL: workspace});
        let mut metadata = serde_json::json!({"name": pod, "labels": labels});
        if let Some(sts_name) = statefulset {
            let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
                Api::namespaced(self.client.clone(), namespace);
            let sts: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(serde_json::json!({
                "metadata": {"name": sts_name, "labels": labels},
                "spec": {"replicas": 1, "serviceName": sts_name, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"containers": [{"name": "main", "image": "decoy:test"}]}}},
            }))
            .unwrap();
            let sts = statefulsets.create(&PostParams::default(), &sts).await.unwrap();
            metadata["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
                "name": sts_name, "uid": sts.metadata.uid, "controller": true}]);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let decoy: Pod = serde_json::from_value(serde_json::json!({
            "metadata": metadata,
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "main", "image": "decoy:test"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &decoy).await.unwrap();
        kubeflow::exec_locally(&self.client, &self.cp.dir().join("pods"), namespace, pod)
            .await
            .unwrap()
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

    /// When the first `reason` Event of workspace `namespace/name` was recorded (its
    /// `eventTime`, UNIX ms), if it was.
    pub async fn first_event_ms(&self, namespace: &str, name: &str, reason: &str) -> Option<i64> {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), namespace);
        let events = api.list(&Default::default()).await.unwrap().items;
        events
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.event_time.as_ref())
            .map(|t| t.0.as_millisecond())
            .min()
    }

    /// How many `reason` Events workspace `namespace/name` has, once it has at least
    /// `at_least` (waiting up to 15 s: an Event is recorded just after what it reports).
    pub async fn events_at_least(&self, namespace: &str, name: &str, reason: &str, at_least: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let count = self.events(namespace, name, reason).await;
            if count >= at_least || Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Wait until workspace `namespace/name` is paused, and its first `Culled` Event recorded
    /// (the controller records it right after the pause); how long the pause took.
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
        let paused_after = started.elapsed();
        self.events_at_least(namespace, name, "Culled", 1).await;
        paused_after
    }

    pub async fn workspace(&self, namespace: &str, name: &str) -> Workspace {
        Api::<Workspace>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .unwrap()
    }

    /// The workspace's `status.activity` (Kubeflow's fields), default when none.
    pub async fn activity(&self, namespace: &str, name: &str) -> Activity {
        self.workspace(namespace, name)
            .await
            .activity()
            .cloned()
            .unwrap_or_default()
    }

    /// The workspace untyped: every field Kubeflow's CRD kept.
    pub async fn raw_workspace(&self, namespace: &str, name: &str) -> serde_json::Value {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &kubeflow::workspace_resource());
        serde_json::to_value(api.get(name).await.unwrap()).unwrap()
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
            .args(["--controller-namespace", CONTROLLER_NS])
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
            response_memory: Default::default(),
        };
        let response = workspace_culler::transport::http(request).await.unwrap();
        (response.status, String::from_utf8_lossy(&response.body).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The controller's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
