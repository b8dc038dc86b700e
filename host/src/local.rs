//! `workspace-culler local`: the whole product on this machine. Starts a
//! real control plane (etcd, kube-apiserver, kwok), a real Jupyter server,
//! sample WorkspaceKinds and Workspaces with short culling windows, and the
//! controller, then shows what happens until the idle workspaces are paused.

use crate::controller::capabilities::HttpMode;
use crate::controller::{self, Settings, metrics::Metrics};
use crate::crd::Workspace;
use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace_culler_engine::{EngineConfig, ProbeEngine};
use workspace_culler_support::controlplane::{ControlPlane, NODE_NAME};

const NS: &str = "demo";
const JUPYTER_PORT: u16 = 8888;
const TOKEN: &str = "local-demo-token";

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

fn kwok(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", kind), plural)
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value)?;
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

fn start_jupyter(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Guard> {
    use std::os::unix::process::CommandExt;
    let root = dir.join("jupyter");
    std::fs::create_dir_all(&root)?;
    let child = Command::new(bin.join("jupyter-server"))
        .args(["--no-browser", "--allow-root", "--ip=127.0.0.1", "--port-retries=0"])
        // As in notebook images: requests arrive for the pod's IP, not localhost.
        .arg("--ServerApp.allow_remote_access=True")
        .arg(format!("--port={port}"))
        .arg(format!("--IdentityProvider.token={TOKEN}"))
        .arg(format!(
            "--ServerApp.base_url=/workspace/connect/{NS}/notebook/jupyterlab/"
        ))
        .arg(format!("--ServerApp.root_dir={}", root.display()))
        .env("JUPYTER_CONFIG_DIR", dir.join("jupyter-config"))
        .env("JUPYTER_RUNTIME_DIR", dir.join("jupyter-runtime"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("jupyter.log"))?)
        .process_group(0)
        .spawn()
        .context("cannot start jupyter-server")?;
    Ok(Guard(child))
}

/// The sample kinds: Jupyter, and a terminal image probed by a script.
fn kinds() -> [serde_json::Value; 2] {
    let culling = |probe: serde_json::Value| {
        serde_json::json!({"enabled": true, "maxInactiveSeconds": 60, "minProbeInterval": 10,
                           "maxProbeInterval": 20, "activityProbe": probe})
    };
    [
        serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "WorkspaceKind", "metadata": {"name": "jupyterlab"},
            "spec": {"podTemplate": {
                "ports": [{"id": "jupyterlab", "httpProxy": {"removePathPrefix": false}}],
                "options": {"imageConfig": {"values": [{"id": "scipy", "spec": {"ports": [{"id": "jupyterlab", "port": JUPYTER_PORT}]}}]}},
                "culling": culling(serde_json::json!({"jupyter": {"lastActivity": true, "portId": "jupyterlab",
                    "tokenSecret": {"name": "jupyter-token", "key": "token"}}})),
            }},
        }),
        serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "WorkspaceKind", "metadata": {"name": "terminal"},
            "spec": {"podTemplate": {"culling": culling(serde_json::json!({"exec": {
                "script": "#!/bin/sh\n# Active while a file named 'busy' exists in the workspace.\nif [ -e busy ]; then echo '{\"has_activity\": true}'; else echo '{\"has_activity\": false}'; fi > \"$OUTPUT_JSON_PATH\"\n",
                "outputPath": "activity_probe.json",
                "timeoutSeconds": 10,
            }}))}},
        }),
    ]
}

/// Run the demo until every sample workspace is paused (or Ctrl-C).
pub async fn run(controlplane_bin: &Path, jupyter_bin: &Path) -> anyhow::Result<()> {
    say("starting etcd, kube-apiserver and kwok (a real control plane on this machine)");
    let cp = ControlPlane::start(controlplane_bin).await?;
    say(format!(
        "control plane ready at {} (kubeconfig: {})",
        cp.server,
        cp.kubeconfig().display()
    ));
    cp.install_crds(&crate::crd::crds_yaml()).await?;
    let client = cp.client().await?;

    let jupyter_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _jupyter = start_jupyter(jupyter_bin, cp.dir(), jupyter_port)?;
    say(format!(
        "started jupyter-server on 127.0.0.1:{jupyter_port} for workspace {NS}/notebook"
    ));

    create(
        &Api::<Namespace>::all(client.clone()),
        serde_json::json!({"metadata": {"name": NS}}),
    )
    .await?;
    create(
        &Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS),
        serde_json::json!({"metadata": {"name": "jupyter-token"}, "stringData": {"token": TOKEN}}),
    )
    .await?;
    for kind in kinds() {
        create(&Api::<crate::crd::WorkspaceKind>::all(client.clone()), kind).await?;
    }
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (name, kind) in [("notebook", "jupyterlab"), ("shell", "terminal")] {
        let pod = format!("{name}-0");
        let work_dir = cp.dir().join("pods").join(&pod);
        std::fs::create_dir_all(&work_dir)?;
        create(
            &pods,
            serde_json::json!({
                "metadata": {"name": pod, "labels": {controller::WORKSPACE_LABEL: name}},
                "spec": {"nodeName": NODE_NAME, "containers": [{"name": "main", "image": format!("{kind}:demo")}]},
            }),
        )
        .await?;
        let execs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kwok("Exec", "execs"));
        create(
            &execs,
            serde_json::json!({"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Exec",
            "metadata": {"name": pod}, "spec": {"execs": [{"containers": ["main"], "local": {"workDir": work_dir}}]}}),
        )
        .await?;
        if kind == "jupyterlab" {
            let forwards: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), NS, &kwok("PortForward", "portforwards"));
            create(
                &forwards,
                serde_json::json!({"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "PortForward",
                "metadata": {"name": pod}, "spec": {"forwards": [{"ports": [JUPYTER_PORT],
                "target": {"port": jupyter_port, "address": "127.0.0.1"}}]}}),
            )
            .await?;
        }
        let spec = serde_json::json!({"kind": kind, "podTemplate": {"options": {"imageConfig": "scipy"}}});
        create(
            &workspaces,
            serde_json::json!({"apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
            "metadata": {"name": name}, "spec": spec}),
        )
        .await?;
        // Play the workspace controller: the pod runs, so the workspace is Running.
        wait_running(&pods, &format!("{name}-0")).await?;
        let status = serde_json::json!({"status": {"state": "Running"}});
        workspaces
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        say(format!(
            "created workspace {NS}/{name} (kind {kind}); its pod runs on kwok's node"
        ));
    }
    say("both kinds pause a workspace after 60 s without activity; watch:");

    let engine = Arc::new(ProbeEngine::new(EngineConfig {
        concurrency: 4,
        ..EngineConfig::default()
    })?);
    let settings = Settings {
        dry_run: false,
        http_mode: HttpMode::PortForward,
        connect_path: crate::plan::DEFAULT_CONNECT_PATH.into(),
        namespaces: vec![NS.into()],
        concurrency: 4,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(
        client.clone(),
        engine,
        settings,
        Metrics::new()?,
        controller::server::Readiness::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let outcome = tokio::select! {
        result = watch(&workspaces) => result,
        _ = tokio::signal::ctrl_c() => { say("interrupted"); Ok(()) }
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
    say("stopping the control plane and Jupyter; removing their files");
    outcome
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let phase = pods.get(name).await?.status.and_then(|s| s.phase);
        if phase.as_deref() == Some("Running") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("pod {name} did not start on kwok's node")
}

/// Print each workspace's probes as they happen, until all are paused.
async fn watch(workspaces: &Api<Workspace>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    loop {
        let list = workspaces.list(&Default::default()).await?.items;
        for ws in &list {
            let name = kube::ResourceExt::name_any(ws);
            let activity = ws.status.as_ref().and_then(|s| s.activity.clone()).unwrap_or_default();
            let probe = activity.last_probe.clone().unwrap_or_default();
            let entry = seen.entry(name.clone()).or_insert((0, false));
            if probe.start_time_ms != 0 && probe.start_time_ms != entry.0 {
                entry.0 = probe.start_time_ms;
                let idle = chrono::Utc::now().timestamp() - activity.last_activity;
                say(format!(
                    "{name:<9} probe {:<7} idle {idle:>3}s of 60s   {}",
                    probe.result, probe.message
                ));
            }
            if ws.spec.paused && !entry.1 {
                entry.1 = true;
                say(format!("{name:<9} PAUSED by the culler (idle past maxInactiveSeconds)"));
            }
        }
        if !seen.is_empty() && seen.values().all(|(_, paused)| *paused) {
            say(format!(
                "all sample workspaces paused after {}s",
                started.elapsed().as_secs()
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
