//! End-to-end on a real control plane: the controller is killed and
//! restarted mid-run without losing status or culling twice; concurrent
//! edits of the Workspace survive the controller's writes (and its cull);
//! a workspace resumed after a pause gets a full idle window again.

mod e2e;

use e2e::Env;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use std::time::{Duration, Instant};
use workspace_culler::crd::Workspace;
use workspace_culler_support::controlplane::NODE_NAME;

const NS: &str = "lifecycle";
const IDLE: &str = "#!/bin/sh\necho '{\"has_activity\": false}' > \"$OUTPUT_JSON_PATH\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_concurrent_edits_and_resumes_are_safe() {
    let env = Env::start().await;
    env.namespace(NS).await;
    env.apply_kind(serde_json::json!({
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "WorkspaceKind",
        "metadata": {"name": "idle-script"},
        "spec": {"podTemplate": {"culling": {
            "maxInactiveSeconds": 60, "minProbeInterval": 5, "maxProbeInterval": 10,
            "activityProbe": {"exec": {"script": IDLE, "outputPath": "activity_probe.json", "timeoutSeconds": 5}},
        }}},
    }))
    .await;
    let spec = serde_json::json!({"kind": "idle-script", "podTemplate": {"options": {"imageConfig": "a", "podConfig": "small"}}});
    env.running_workspace(NS, "ws", spec).await;
    let workspaces: Api<Workspace> = Api::namespaced(env.client.clone(), NS);

    // Another writer edits the Workspace all along: an annotation and a spec field the culler does not own.
    let editor = {
        let workspaces = workspaces.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                n += 1;
                let patch = serde_json::json!({
                    "metadata": {"annotations": {"example.com/edits": n.to_string()}},
                    "spec": {"podTemplate": {"options": {"podConfig": format!("size-{n}")}}},
                });
                if workspaces
                    .patch("ws", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_err()
                {
                    return n - 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    // Run, kill after a few probes, note the status, restart.
    let mut controller = env.controller("controller-1", &["--namespace", NS]);
    tokio::time::sleep(Duration::from_secs(25)).await;
    controller.kill();
    let before = env.workspace(NS, "ws").await.status.unwrap().activity.unwrap();
    assert!(
        before.last_activity > 0,
        "probes ran before the kill\n{}",
        controller.log()
    );
    let restarted = env.controller("controller-2", &["--namespace", NS]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = env.workspace(NS, "ws").await.status.unwrap().activity.unwrap();
    assert_eq!(
        after.last_activity, before.last_activity,
        "the restart moved lastActivity"
    );
    assert!(
        after.last_probe.unwrap().start_time_ms > before.last_probe.unwrap().start_time_ms,
        "no probe after restart"
    );

    env.wait_paused(NS, "ws", Duration::from_secs(90), || restarted.log())
        .await;
    editor.abort();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        env.events(NS, "ws", "Culled").await,
        1,
        "culled more than once\n{}",
        restarted.log()
    );
    let ws = env.workspace(NS, "ws").await;
    let edits: u32 = ws.metadata.annotations.as_ref().unwrap()["example.com/edits"]
        .parse()
        .unwrap();
    let expected_config = format!("size-{edits}");
    // Read it untyped: the culler's types do not model every field.
    let untyped: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), NS, &ApiResource::erase::<Workspace>(&()));
    let raw = untyped.get("ws").await.unwrap().data;
    assert!(edits > 100, "the editor made only {edits} edits");
    assert_eq!(
        raw["spec"]["podTemplate"]["options"]["podConfig"],
        expected_config.as_str(),
        "an edit was lost"
    );
    assert_eq!(
        raw["spec"]["podTemplate"]["options"]["imageConfig"], "a",
        "a field the culler does not model was lost"
    );
    assert!(ws.spec.paused);

    // Resume it, as the workspace controller would: Paused, then a new pod and Running.
    let state = |state: &str| serde_json::json!({"status": {"state": state}});
    workspaces
        .patch_status("ws", &PatchParams::default(), &Patch::Merge(&state("Paused")))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    pods.delete(
        "ws-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    while pods.get_opt("ws-0").await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    workspaces
        .patch(
            "ws",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ws-0", "labels": {"notebooks.kubeflow.org/workspace-name": "ws"}},
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "main", "image": "notebook:test"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    workspaces
        .patch_status("ws", &PatchParams::default(), &Patch::Merge(&state("Running")))
        .await
        .unwrap();
    let resumed = Instant::now();
    let paused_again = env
        .wait_paused(NS, "ws", Duration::from_secs(120), || restarted.log())
        .await;
    assert!(
        resumed.elapsed() >= Duration::from_secs(60),
        "paused {paused_again:?} after resuming, within the idle window\n{}",
        restarted.log()
    );
    assert_eq!(env.events(NS, "ws", "Culled").await, 2);
}
