//! `workspace-culler local`: the whole product on this machine, on Kubeflow's released API.
//! Starts a real control plane (etcd, kube-apiserver, kwok) with Kubeflow's CRDs and the
//! CullingPolicy CRD, Kubeflow's sample `jupyterlab` WorkspaceKind (its probe and rules moved
//! into a CullingPolicy, with short windows), a double of Kubeflow's workspace controller, two
//! workspaces each served by a real Jupyter server — one idle, one someone works in — and the
//! controller; then shows Kubeflow's status fields until the idle one is paused.

use crate::controller::capabilities::HttpMode;
use crate::controller::{self, Settings, metrics::Metrics};
use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace_culler_engine::{EngineConfig, ProbeEngine};
use workspace_culler_policy::Workspace;
use workspace_culler_support::controlplane::ControlPlane;
use workspace_culler_support::kubeflow::{self, KubeflowDouble};

const NS: &str = "demo";
const JUPYTER_PORT: u16 = 8888;
const TOKEN: &str = "local-demo-token";
/// The demo's idle window (the sample's rule says 7200 s).
const IDLE_SECONDS: i64 = 30;
const IDLE: &str = "idle";
const BUSY: &str = "busy";

/// A child process killed with its process group on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group this module started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

fn say(message: impl AsRef<str>) {
    println!("{:>6}  {}", chrono::Local::now().format("%H:%M:%S"), message.as_ref());
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value)?;
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

fn base_path(workspace: &str) -> String {
    format!("/workspace/connect/{NS}/{workspace}/jupyterlab/")
}

fn start_jupyter(bin: &Path, dir: &Path, workspace: &str, port: u16) -> anyhow::Result<Guard> {
    use std::os::unix::process::CommandExt;
    let root = dir.join(format!("jupyter-{workspace}"));
    std::fs::create_dir_all(&root)?;
    let child = Command::new(bin.join("jupyter-server"))
        .args(["--no-browser", "--allow-root", "--ip=127.0.0.1", "--port-retries=0"])
        // As in notebook images: requests arrive for the pod's IP, not localhost.
        .arg("--ServerApp.allow_remote_access=True")
        .arg(format!("--port={port}"))
        .arg(format!("--IdentityProvider.token={TOKEN}"))
        .arg(format!("--ServerApp.base_url={}", base_path(workspace)))
        .arg(format!("--ServerApp.root_dir={}", root.display()))
        .env("JUPYTER_CONFIG_DIR", root.join(".config"))
        .env("JUPYTER_RUNTIME_DIR", root.join(".runtime"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("jupyter-{workspace}.log")))?)
        .process_group(0)
        .spawn()
        .context("cannot start jupyter-server")?;
    Ok(Guard(child))
}

/// An authenticated GET of a Jupyter API path; its HTTP status.
async fn jupyter_get(port: u16, workspace: &str, path: &str) -> anyhow::Result<u16> {
    let uri = format!("http://127.0.0.1:{port}{}{path}", base_path(workspace)).parse()?;
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, format!("token {TOKEN}").parse()?);
    let request = workspace_culler_engine::HttpRequest {
        method: http::Method::GET,
        uri,
        headers,
        body: Default::default(),
        response_body_cap: 1 << 20,
        response_memory: Default::default(),
    };
    Ok(crate::transport::http(request)
        .await
        .map_err(anyhow::Error::msg)?
        .status)
}

async fn wait_for_jupyter(port: u16, workspace: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while jupyter_get(port, workspace, "api/status").await.ok() != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "jupyter-server for {workspace} did not start"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Someone working in a notebook: an authenticated Jupyter API call every 5 s.
async fn work_in(port: u16, workspace: &str) {
    loop {
        let _ = jupyter_get(port, workspace, "api/contents").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Kubeflow's sample jupyterlab kind's probe and rules, in a CullingPolicy with short windows.
fn policy() -> serde_json::Value {
    let mut policy = kubeflow::policy_from_kind(kubeflow::JUPYTERLAB_KIND, "notebooks");
    let spec = &mut policy["spec"];
    spec["activityProbe"]["minProbeIntervalSeconds"] = 5.into();
    spec["activityProbe"]["probeIntervalSeconds"] = 10.into();
    spec["activityProbe"]["jupyter"]["tokenSecretRef"] = serde_json::json!({"name": "jupyter-token", "key": "token"});
    for rule in spec["activityRules"].as_array_mut().into_iter().flatten() {
        rule["config"]["secondsSinceActive"] = IDLE_SECONDS.into();
        rule["config"]["minRunningSeconds"] = 10.into();
    }
    policy
}

fn workspace(name: &str) -> serde_json::Value {
    let mut workspace = kubeflow::sample(kubeflow::JUPYTERLAB_WORKSPACE);
    workspace["metadata"] = serde_json::json!({"name": name, "namespace": NS});
    workspace
}

/// Run the demo until the idle workspace is paused (or Ctrl-C).
pub async fn run(controlplane_bin: &Path, jupyter_bin: &Path) -> anyhow::Result<()> {
    say("starting etcd, kube-apiserver and kwok (a real control plane on this machine)");
    let cp = ControlPlane::start(controlplane_bin).await?;
    say(format!(
        "control plane ready at {} (kubeconfig: {})",
        cp.server,
        cp.kubeconfig().display()
    ));
    cp.install_crds(&kubeflow::crds_yaml()).await?;
    cp.install_crds(&workspace_culler_policy::policy::crd_yaml()?).await?;
    say("installed Kubeflow Notebooks' CRDs (v2.0.0-beta.0, unchanged) and the CullingPolicy CRD");
    let client = cp.client().await?;
    let _kubeflow = KubeflowDouble::start(client.clone(), cp.dir().join("pods"));

    create(
        &Api::<Namespace>::all(client.clone()),
        // The sample's rule pauses workspaces of namespaces labelled tier=development.
        serde_json::json!({"metadata": {"name": NS, "labels": {"tier": "development"}}}),
    )
    .await?;
    // The token lives in the controller's namespace (here the same one).
    create(
        &Api::<Secret>::namespaced(client.clone(), NS),
        serde_json::json!({"metadata": {"name": "jupyter-token"}, "stringData": {"token": TOKEN}}),
    )
    .await?;
    let kinds: Api<DynamicObject> = Api::all_with(client.clone(), &kubeflow::kind_resource());
    create(&kinds, kubeflow::kind_without_probe(kubeflow::JUPYTERLAB_KIND)).await?;
    create(
        &Api::<workspace_culler_policy::CullingPolicy>::all(client.clone()),
        policy(),
    )
    .await?;
    say(format!(
        "created Kubeflow's sample WorkspaceKind jupyterlab and CullingPolicy notebooks (its probe and rules, idle window {IDLE_SECONDS}s)"
    ));

    let forwards: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "PortForward"),
            "portforwards",
        ),
    );
    let workspaces: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kubeflow::workspace_resource());
    let mut servers = Vec::new();
    let mut busy_port = 0;
    for name in [IDLE, BUSY] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        servers.push(start_jupyter(jupyter_bin, cp.dir(), name, port)?);
        wait_for_jupyter(port, name).await?;
        if name == BUSY {
            busy_port = port;
        }
        create(
            &forwards,
            serde_json::json!({"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "PortForward",
            "metadata": {"name": kubeflow::pod_name(name)}, "spec": {"forwards": [{"ports": [JUPYTER_PORT],
            "target": {"port": port, "address": "127.0.0.1"}}]}}),
        )
        .await?;
        create(&workspaces, workspace(name)).await?;
        say(format!(
            "created workspace {NS}/{name} (kind jupyterlab); its Jupyter server listens on 127.0.0.1:{port}"
        ));
    }
    let worker = tokio::spawn(work_in(busy_port, BUSY));
    say(format!(
        "someone works in {BUSY} (a Jupyter API call every 5 s); {IDLE} is left alone"
    ));

    let engine = Arc::new(ProbeEngine::new(EngineConfig {
        concurrency: 4,
        ..EngineConfig::default()
    })?);
    let settings = Settings {
        dry_run: false,
        http_mode: HttpMode::PortForward,
        connect_path: controller::DEFAULT_CONNECT_PATH.into(),
        namespaces: vec![NS.into()],
        concurrency: 4,
        module_dir: cp.dir().join("probes"),
        own_namespace: NS.into(),
        culling_soon_seconds: 10,
        registry: Arc::new(crate::oci::Registry::new(crate::oci::Settings::default()).map_err(anyhow::Error::msg)?),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(
        client.clone(),
        engine,
        settings,
        Metrics::new()?,
        controller::server::Readiness::default(),
        controller::leader::Fence::always(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let typed: Api<Workspace> = Api::namespaced(client.clone(), NS);
    let outcome = tokio::select! {
        result = watch(&typed) => result,
        _ = tokio::signal::ctrl_c() => { say("interrupted"); Ok(()) }
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
    worker.abort();
    drop(servers);
    say("stopping the control plane and Jupyter; removing their files");
    outcome
}

/// Print each workspace's probes (Kubeflow's status fields, UNIX ms) as they happen, until the
/// idle one is paused and the busy one has been probed since.
async fn watch(workspaces: &Api<Workspace>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut paused_at: Option<i64> = None;
    loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the idle workspace was not paused within 5 minutes"
        );
        for ws in workspaces.list(&Default::default()).await?.items {
            let name = kube::ResourceExt::name_any(&ws);
            let Some(activity) = ws.activity().cloned() else {
                continue;
            };
            let Some(probe) = activity.last_probe.clone() else {
                continue;
            };
            let last = seen.entry(name.clone()).or_insert(0);
            if probe.start_time != *last {
                *last = probe.start_time;
                say(format!(
                    "{name:<5} probe {:<7} lastActivity {} eligibleAfter {}  {}",
                    probe.result,
                    activity.last_activity,
                    activity.eligible_after(),
                    probe.message
                ));
                if name == BUSY && paused_at.is_some_and(|at| probe.start_time > at) {
                    say(format!("{BUSY} is still running after {IDLE} was paused: done"));
                    return Ok(());
                }
            }
            if name == IDLE && ws.spec.paused && paused_at.is_none() {
                paused_at = Some(chrono::Utc::now().timestamp_millis());
                say(format!(
                    "{IDLE} PAUSED by the culler (spec.paused: true) after {}s; {BUSY} keeps running",
                    started.elapsed().as_secs()
                ));
            }
            if name == BUSY && ws.spec.paused {
                anyhow::bail!("the busy workspace was paused");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
