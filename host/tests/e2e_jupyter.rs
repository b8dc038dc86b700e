//! End-to-end with the Jupyter probe on Kubeflow's CRDs: Kubeflow's sample `jupyterlab`
//! WorkspaceKind as it ships, its `activityProbe` and `activityRules` cut and pasted into a
//! CullingPolicy (windows shortened). Real jupyter-servers play the workspaces' notebooks,
//! reached through the apiserver's port-forward to kwok. An idle server's workspace is paused
//! with an Event; one with API activity and one with a silently busy kernel are not; a stopped
//! server is a probe failure that never pauses. The token comes from a Secret in the
//! controller's namespace.

mod e2e;
mod jupyter;

use e2e::{CONTROLLER_NS, Env};
use jupyter::{Jupyter, TOKEN};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use std::time::{Duration, Instant};
use workspace_culler_policy::ProbeResult;
use workspace_culler_support::kubeflow;

const NS: &str = "notebooks";
const IDLE_SECONDS: i64 = 30;

/// Kubeflow's sample kind's probe and rules, as a policy, with a short window and a token.
fn policy() -> serde_json::Value {
    let mut policy = kubeflow::policy_from_kind(kubeflow::JUPYTERLAB_KIND, "notebooks");
    let spec = &mut policy["spec"];
    assert_eq!(
        spec["activityProbe"]["jupyter"]["portId"], "jupyterlab",
        "the sample's probe"
    );
    spec["activityProbe"]["minProbeIntervalSeconds"] = 3.into();
    spec["activityProbe"]["probeIntervalSeconds"] = 5.into();
    spec["activityProbe"]["jupyter"]["tokenSecretRef"] = serde_json::json!({"name": "jupyter-token", "key": "token"});
    let rules = spec["activityRules"].as_array_mut().unwrap();
    assert!(!rules.is_empty(), "the sample's rules");
    for rule in rules {
        rule["config"]["secondsSinceActive"] = IDLE_SECONDS.into();
        rule["config"]["minRunningSeconds"] = 0.into();
    }
    policy
}

fn base_path(name: &str) -> String {
    format!("/workspace/connect/{NS}/{name}/jupyterlab/")
}

/// A control plane with the notebooks namespace, the token Secret, and Kubeflow's sample kind.
async fn env_with_sample_kind() -> Env {
    let env = Env::start().await;
    // The sample's first rule matches namespaces labelled tier=development.
    env.namespace(NS, &[("tier", "development")]).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), CONTROLLER_NS);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "jupyter-token"}, "stringData": {"token": TOKEN}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    env.apply_kind(kubeflow::kind_without_probe(kubeflow::JUPYTERLAB_KIND))
        .await;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_workspaces_are_paused_only_when_idle() {
    let env = env_with_sample_kind().await;
    env.apply_policy(policy()).await;

    let idle = Jupyter::start(&base_path("idle")).await;
    let api = Jupyter::start(&base_path("api")).await;
    let busy = Jupyter::start(&base_path("busy")).await;
    busy.run_silent_cell("import time; time.sleep(600)").await;
    let closed_port = e2e::free_port();
    let dying_port = dies_mid_response().await;
    for (name, port) in [
        ("idle", idle.port),
        ("api", api.port),
        ("busy", busy.port),
        ("down", closed_port),
        ("dies", dying_port),
    ] {
        env.forward(NS, &kubeflow::pod_name(name), 8888, port).await;
        env.running_workspace(NS, name, "jupyterlab", serde_json::json!({}))
            .await;
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
            started.elapsed() < Duration::from_secs(120),
            "the idle workspace was not paused\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log = controller.log();
    let idle_ws = env.workspace(NS, "idle").await;
    let idle_activity = idle_ws.activity().cloned().unwrap();
    // Jupyter reports the server's own last activity, from before the workspace started
    // running: the effective last activity is when it started.
    let since = idle_activity.last_activity.max(idle_ws.last_running_time());
    let idle_for = chrono::Utc::now().timestamp_millis() - since;
    // (Counted from when it started running, not from the controller's start: bringing up
    // the other workspaces took part of its idle time.)
    assert!(
        idle_for >= IDLE_SECONDS * 1000,
        "paused {paused_after:?} after the controller started, {idle_for} ms after the last activity\n{log}"
    );
    assert_eq!(idle_activity.eligible_after(), since + IDLE_SECONDS * 1000);
    // The Event is recorded just after the pause the loop above saw, and carries the pause's
    // time: not before eligibleAfter + 5 s (SPEC §4).
    env.events_at_least(NS, "idle", "Culled", 1).await;
    let culled_at = env.first_event_ms(NS, "idle", "Culled").await.unwrap();
    assert!(
        culled_at >= idle_activity.eligible_after() + 5000,
        "Culled at {culled_at}, {} ms after eligibleAfter\n{log}",
        culled_at - idle_activity.eligible_after()
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), NS);
    let culled = events.list(&ListParams::default()).await.unwrap().items;
    let culled: Vec<_> = culled
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Culled"))
        .collect();
    assert_eq!(culled.len(), 1, "{culled:?}");
    assert_eq!(culled[0].involved_object.name.as_deref(), Some("idle"));

    for name in ["api", "busy", "down", "dies"] {
        let ws = env.workspace(NS, name).await;
        assert!(!ws.spec.paused, "{name} was paused\n{log}");
    }
    let probe_of = |name: &'static str| {
        let env = &env;
        async move { env.activity(NS, name).await }
    };
    let busy_activity = probe_of("busy").await;
    assert_eq!(busy_activity.last_probe.as_ref().unwrap().result, ProbeResult::Success);
    assert!(
        chrono::Utc::now().timestamp_millis() - busy_activity.last_activity < 15_000,
        "a busy kernel is activity now (lastActivity is the probe's end, in ms)"
    );
    let down = probe_of("down").await;
    let down_probe = down.last_probe.unwrap();
    assert_eq!(down_probe.result, ProbeResult::Failure);
    assert!(
        down_probe.message.starts_with("Jupyter probe failed"),
        "{}",
        down_probe.message
    );
    // Through the apiserver's port-forward, in the node's own words.
    assert!(
        down_probe.message.contains("connection refused"),
        "{}",
        down_probe.message
    );
    assert_eq!(down.last_activity, 0, "a failing probe never sets activity");
    let dies = probe_of("dies").await;
    let dies_probe = dies.last_probe.unwrap();
    // Through the apiserver's port-forward the close is seen as a stalled body (a Timeout at
    // the probe's deadline); directly, as a broken connection (a Failure). Never a success.
    assert!(
        matches!(dies_probe.result, ProbeResult::Failure | ProbeResult::Timeout),
        "{:?}: {}",
        dies_probe.result,
        dies_probe.message
    );
    assert_eq!(dies.last_activity, 0, "a failing probe never sets activity");
}

/// A Jupyter server killed mid-request: it reads each request, starts its answer, and dies
/// (closes the connection) before the body is complete. Its port.
async fn dies_mid_response() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let partial = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"started\": \"2026-";
                let _ = socket.write_all(partial.as_bytes()).await;
                // Dropped here: the connection closes mid-body.
            });
        }
    });
    port
}

/// Puts a `nvidia-smi` into the container of `name`'s pod that prints `stdout` and exits `code`.
fn fake_nvidia_smi(env: &Env, name: &str, stdout: &str, code: i32) {
    let bin = env.pod_dir(NS, &kubeflow::pod_name(name)).join("bin/nvidia-smi");
    std::fs::write(&bin, format!("#!/bin/sh\nprintf '%s' '{stdout}'\nexit {code}\n")).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// `anyOf: [jupyter, nvidia-gpu]`: three notebooks whose Jupyter servers are all idle. The one
/// training on a GPU is kept, the one whose GPUs are idle is paused, and the one whose driver
/// is missing is never paused on doubt: its probe fails and says which probe and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_is_active_while_jupyter_or_its_gpu_is() {
    let env = env_with_sample_kind().await;
    let mut policy = policy();
    let probe = &mut policy["spec"]["activityProbe"];
    let jupyter = probe["jupyter"].take();
    probe.as_object_mut().unwrap().remove("jupyter");
    probe["anyOf"] = serde_json::json!([
        {"jupyter": jupyter},
        {"module": {"location": "nvidia-gpu", "config": {"samples": 2, "intervalSeconds": 1},
                    "timeoutSeconds": 20}},
    ]);
    env.apply_policy(policy).await;

    let mut servers = Vec::new();
    for (name, gpu_stdout, code) in [
        ("training", "0, 0, 30512\n1, 91, 30512\n", 0),
        ("idle", "0, 0, 30512\n1, 2, 0\n", 0),
        (
            "no-driver",
            "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\n",
            9,
        ),
    ] {
        let server = Jupyter::start(&base_path(name)).await;
        env.forward(NS, &kubeflow::pod_name(name), 8888, server.port).await;
        env.running_workspace(NS, name, "jupyterlab", serde_json::json!({}))
            .await;
        fake_nvidia_smi(&env, name, gpu_stdout, code);
        servers.push(server);
    }
    let controller = env.controller("controller", &["--namespace", NS]);
    env.wait_paused(NS, "idle", Duration::from_secs(120), || controller.log())
        .await;
    let log = controller.log();
    for name in ["training", "no-driver"] {
        assert!(!env.workspace(NS, name).await.spec.paused, "{name} was paused\n{log}");
    }
    let training = env.activity(NS, "training").await;
    assert_eq!(training.last_probe.as_ref().unwrap().result, ProbeResult::Success);
    assert!(
        chrono::Utc::now().timestamp_millis() - training.last_activity < 15_000,
        "a busy GPU is activity now, though Jupyter is idle\n{log}"
    );
    let no_driver = env.activity(NS, "no-driver").await;
    let probe = no_driver.last_probe.unwrap();
    assert_eq!(probe.result, ProbeResult::Failure);
    assert!(
        probe
            .message
            .contains("anyOf[1] nvidia-gpu: nvidia-gpu: nvidia-smi exited 9: NVIDIA-SMI has failed"),
        "{}",
        probe.message
    );
    assert_eq!(no_driver.last_activity, 0, "a failing probe never sets activity");
}
