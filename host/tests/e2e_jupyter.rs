//! End-to-end with the Jupyter probe: real jupyter-servers play the
//! workspaces' notebooks, reached through the apiserver's port-forward to
//! kwok. An idle server's workspace is paused with an Event; one with API
//! activity and one with a silently busy kernel are not; a stopped server
//! is a probe failure that never pauses. The token comes from a Secret.

mod e2e;
mod jupyter;

use e2e::Env;
use jupyter::{Jupyter, TOKEN};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use std::time::{Duration, Instant};

const NS: &str = "notebooks";

fn jupyter_kind() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "WorkspaceKind",
        "metadata": {"name": "jupyterlab"},
        "spec": {"podTemplate": {
            "ports": [{"id": "jupyterlab", "displayName": "JupyterLab", "httpProxy": {"removePathPrefix": false}}],
            "options": {"imageConfig": {"values": [
                {"id": "scipy", "spec": {"image": "jupyter-scipy:test", "ports": [{"id": "jupyterlab", "port": 8888}]}}
            ]}},
            "culling": {
                "enabled": true,
                "maxInactiveSeconds": 60,
                "minProbeInterval": 5,
                "maxProbeInterval": 10,
                "activityProbe": {"jupyter": {
                    "lastActivity": true,
                    "portId": "jupyterlab",
                    "tokenSecret": {"name": "jupyter-token", "key": "token"},
                }},
            },
        }},
    })
}

fn base_path(name: &str) -> String {
    format!("/workspace/connect/{NS}/{name}/jupyterlab/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_workspaces_are_paused_only_when_idle() {
    let env = Env::start().await;
    env.namespace(NS).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "jupyter-token"}, "stringData": {"token": TOKEN}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    env.apply_kind(jupyter_kind()).await;

    let idle = Jupyter::start(&base_path("idle")).await;
    let api = Jupyter::start(&base_path("api")).await;
    let busy = Jupyter::start(&base_path("busy")).await;
    busy.run_silent_cell("import time; time.sleep(600)").await;
    let closed_port = e2e::free_port();
    let spec = serde_json::json!({"kind": "jupyterlab", "podTemplate": {"options": {"imageConfig": "scipy"}}});
    for (name, port) in [
        ("idle", idle.port),
        ("api", api.port),
        ("busy", busy.port),
        ("down", closed_port),
    ] {
        env.running_workspace(NS, name, spec.clone()).await;
        env.forward(NS, &format!("{name}-0"), 8888, port).await;
    }
    let controller = env.controller("controller", &["--namespace", NS]);

    // Someone works in the "api" workspace: an authenticated API call every 5 s.
    let started = Instant::now();
    let paused_after = loop {
        if started.elapsed().as_secs().is_multiple_of(5) {
            assert_eq!(api.get("api/contents").await.unwrap().0, 200);
        }
        if env.workspace(NS, "idle").await.spec.paused {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the idle workspace was not paused\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log = controller.log();
    assert!(
        paused_after >= Duration::from_secs(50),
        "paused after {paused_after:?}\n{log}"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), NS);
    let culled = events.list(&ListParams::default()).await.unwrap().items;
    let culled: Vec<_> = culled
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Culled"))
        .collect();
    assert_eq!(culled.len(), 1, "{culled:?}");
    assert_eq!(culled[0].involved_object.name.as_deref(), Some("idle"));

    for name in ["api", "busy", "down"] {
        let ws = env.workspace(NS, name).await;
        assert!(!ws.spec.paused, "{name} was paused\n{log}");
    }
    let probe_of = |name: &'static str| {
        let env = &env;
        async move { env.workspace(NS, name).await.status.unwrap().activity.unwrap() }
    };
    let busy_activity = probe_of("busy").await;
    assert_eq!(busy_activity.last_probe.as_ref().unwrap().result, "Success");
    assert!(
        chrono::Utc::now().timestamp() - busy_activity.last_activity < 30,
        "a busy kernel is activity now"
    );
    let down = probe_of("down").await;
    let down_probe = down.last_probe.unwrap();
    assert_eq!(down_probe.result, "Failure");
    assert!(
        down_probe.message.starts_with("Jupyter probe failed"),
        "{}",
        down_probe.message
    );
    assert_eq!(down.last_activity, 0, "a failing probe never sets activity");
}
