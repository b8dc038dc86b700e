//! End-to-end on Kubeflow's CRDs: the controller is killed and restarted mid-run without
//! losing status or pausing twice; concurrent edits of the Workspace survive the controller's
//! writes (and its pause), and every field Kubeflow's CRD keeps is left as it was; a workspace
//! resumed after a pause (Kubeflow starts a new pod and a new `lastRunningTime`) gets a full
//! idle window again.

mod e2e;

use e2e::{Env, exec_policy, sample_kind};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use std::time::{Duration, Instant};
use workspace_culler_policy::CullingPolicy;
use workspace_culler_support::kubeflow;

const NS: &str = "lifecycle";
const IDLE_SECONDS: i64 = 30;
const IDLE: &str = "#!/bin/sh\necho '{\"has_activity\": false}' > \"$OUTPUT_JSON_PATH\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_concurrent_edits_and_resumes_are_safe() {
    let env = Env::start().await;
    env.namespace(NS, &[]).await;
    env.apply_kind(sample_kind("idle-script")).await;
    env.apply_policy(exec_policy("idle", &["idle-script"], IDLE, IDLE_SECONDS as i32))
        .await;
    env.running_workspace(NS, "ws", "idle-script", serde_json::json!({}))
        .await;
    let before_edits = env.raw_workspace(NS, "ws").await;
    let workspaces: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), NS, &kubeflow::workspace_resource());

    // Another writer edits the Workspace all along: an annotation and a spec field the culler
    // does not own.
    let editor = {
        let workspaces = workspaces.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                n += 1;
                let patch = serde_json::json!({
                    "metadata": {"annotations": {"example.com/edits": n.to_string()}},
                    "spec": {"displayName": format!("edit {n}")},
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
    tokio::time::sleep(Duration::from_secs(12)).await;
    controller.kill();
    let before = env.activity(NS, "ws").await;
    assert!(
        before.last_activity > 0,
        "probes ran before the kill\n{}",
        controller.log()
    );
    let managed = |policy: &CullingPolicy| policy.status.as_ref().map(|s| s.managed_workspaces);
    assert_eq!(managed(&env.policy("idle").await), Some(1), "{}", controller.log());
    // Across the restart, the policy's status never says it manages nothing: the new
    // controller counts the workspaces once its cache holds them, not before.
    let counts = {
        let policies: Api<CullingPolicy> = Api::all(env.client.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..120 {
                if let Ok(policy) = policies.get("idle").await {
                    seen.push(policy.status.map(|s| s.managed_workspaces));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let restarted = env.controller("controller-2", &["--namespace", NS]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let counts = counts.await.unwrap();
    assert!(
        counts.iter().all(|count| *count == Some(1)),
        "{counts:?}\n{}",
        restarted.log()
    );
    let before_start = before.last_probe.as_ref().unwrap().start_time;
    let what = format!("a probe after the restart\n{}", restarted.log());
    let after = e2e::eventually(Duration::from_secs(30), &what, || async {
        let after = env.activity(NS, "ws").await;
        let probed = after.last_probe.as_ref().is_some_and(|p| p.start_time > before_start);
        probed.then_some(after)
    })
    .await;
    assert_eq!(
        after.last_activity, before.last_activity,
        "the restart moved lastActivity"
    );

    env.wait_paused(NS, "ws", Duration::from_secs(60), || restarted.log())
        .await;
    editor.abort();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        env.events(NS, "ws", "Culled").await,
        1,
        "paused more than once\n{}",
        restarted.log()
    );
    // Warned once of its one eligibleAfter, by the first controller or the second, not both.
    assert_eq!(
        env.events(NS, "ws", "CullingSoon").await,
        1,
        "CullingSoon Events\n{}",
        restarted.log()
    );
    let raw = env.raw_workspace(NS, "ws").await;
    let edits: u32 = raw["metadata"]["annotations"]["example.com/edits"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(edits > 50, "the editor made only {edits} edits");
    assert_eq!(raw["spec"]["displayName"], format!("edit {edits}"), "an edit was lost");
    assert_eq!(raw["spec"]["paused"], true);
    // Every spec field but the edited ones is as Kubeflow's CRD stored it.
    let mut spec = raw["spec"].clone();
    let mut expected = before_edits["spec"].clone();
    for fields in [&mut spec, &mut expected] {
        let fields = fields.as_object_mut().unwrap();
        fields.remove("displayName");
        fields.remove("paused");
    }
    assert_eq!(spec, expected, "a field the culler does not model changed");

    // Kubeflow stops the pod; resuming starts a new one with a new lastRunningTime.
    eventually_state(&env, "Paused").await;
    let paused_running_time = env.workspace(NS, "ws").await.last_running_time();
    workspaces
        .patch(
            "ws",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    let resumed = Instant::now();
    eventually_state(&env, "Running").await;
    let ws = env.workspace(NS, "ws").await;
    assert!(ws.last_running_time() > paused_running_time, "a new lastRunningTime");
    let paused_again = env
        .wait_paused(NS, "ws", Duration::from_secs(90), || restarted.log())
        .await;
    assert!(
        resumed.elapsed() >= Duration::from_secs(IDLE_SECONDS as u64),
        "paused {paused_again:?} after resuming, within the idle window\n{}",
        restarted.log()
    );
    assert_eq!(env.events_at_least(NS, "ws", "Culled", 2).await, 2);
}

async fn eventually_state(env: &Env, state: &str) {
    e2e::eventually(Duration::from_secs(30), &format!("state {state}"), || async {
        let ws = env.workspace(NS, "ws").await;
        (ws.state().to_string() == state).then_some(())
    })
    .await;
}
