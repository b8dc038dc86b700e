//! End-to-end on a real control plane (etcd + kube-apiserver + kwok) with Kubeflow's released
//! CRDs and CullingPolicies: the podExec probe runs through real `pods/exec` (apiserver → kwok,
//! which runs the script on this machine), module probes from the module directory. An idle
//! workspace is paused with an Event, Kubeflow's status fields (ms) and `eligibleAfter`;
//! failing and timed-out probes, broken modules, the opt-out annotation and a dry-run policy
//! pause nothing; a kind Kubeflow probes itself and a kind claimed by two policies are left
//! alone, and the policies' status says why; `minProbeIntervalSeconds` holds; of two replicas
//! only the leader acts; deleted workspaces leave nothing waiting.

mod e2e;

use e2e::{Env, condition, exec_policy, sample_kind, sum};
use kube::Api;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use workspace_culler_policy::{CullingPolicy, DISABLE_CULLING_ANNOTATION, ProbeResult};
use workspace_culler_support::kubeflow;

const NS: &str = "culling";
const IDLE_SECONDS: i64 = 20;
const IDLE: &str = "#!/bin/sh\necho '{\"has_activity\": false}' > \"$OUTPUT_JSON_PATH\"\n";
const FAILING: &str = "#!/bin/sh\necho 'no /proc here' >&2\nexit 3\n";
/// Sleeps far past its 2 s timeout; the duration marks its processes.
const SLOW: &str = "#!/bin/sh\nsleep 29.125\n";

/// How many processes of the slow script still run on this machine (kwok runs exec here).
fn slow_processes() -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 29.125$"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn module_policy(kind: &str, location: &str, sha256: &str, config: serde_json::Value) -> serde_json::Value {
    let module = serde_json::json!({"location": location, "sha256": sha256, "config": config, "timeoutSeconds": 10});
    e2e::module_policy(kind, module, IDLE_SECONDS as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_module_probes_decide_and_only_idle_workspaces_are_paused() {
    let env = Env::start().await;
    env.namespace(NS, &[]).await;

    // The module directory: the job-guard example, a component built against another
    // contract version, a directory, and a link out of the directory.
    let modules = tempfile::tempdir().unwrap();
    let job_guard = modules.path().join("job-guard.wasm");
    std::fs::copy(workspace_culler_support::test_probes::job_guard(), &job_guard).unwrap();
    let digest = workspace_culler_engine::sha256_hex(&std::fs::read(&job_guard).unwrap());
    let old_contract =
        wat::parse_str(r#"(component (import "workspace-culler:probe/types@0.2.0" (instance)))"#).unwrap();
    std::fs::write(modules.path().join("old-contract.wasm"), &old_contract).unwrap();
    let old_digest = workspace_culler_engine::sha256_hex(&old_contract);
    std::fs::create_dir(modules.path().join("dir.wasm")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", modules.path().join("zero.wasm")).unwrap();
    let no_job = serde_json::json!({"patterns": [format!("no-such-job-{}", std::process::id())]});
    let policies = [
        exec_policy("idle", &["exec-idle"], IDLE, IDLE_SECONDS as i32),
        exec_policy("failing", &["exec-failing"], FAILING, IDLE_SECONDS as i32),
        {
            let mut slow = exec_policy("slow", &["exec-slow"], SLOW, IDLE_SECONDS as i32);
            slow["spec"]["activityProbe"]["podExec"]["timeoutSeconds"] = 2.into();
            slow
        },
        {
            let mut dry = exec_policy("dry", &["exec-dry"], IDLE, IDLE_SECONDS as i32);
            dry["spec"]["dryRun"] = true.into();
            dry
        },
        module_policy("module-idle", "job-guard.wasm", &digest, no_job.clone()),
        module_policy("module-wrong", "job-guard.wasm", &"0".repeat(64), no_job),
        module_policy("module-missing", "missing.wasm", &digest, serde_json::json!({})),
        module_policy("module-old", "old-contract.wasm", &old_digest, serde_json::json!({})),
        module_policy("module-dir", "dir.wasm", &digest, serde_json::json!({})),
        module_policy("module-outside", "zero.wasm", &digest, serde_json::json!({})),
        exec_policy("kubeflow-probed", &["kubeflow-probed"], IDLE, IDLE_SECONDS as i32),
        exec_policy("claim-a", &["shared"], IDLE, IDLE_SECONDS as i32),
        exec_policy("claim-b", &["shared"], IDLE, IDLE_SECONDS as i32),
    ];
    for policy in policies {
        env.apply_policy(policy).await;
    }
    let kinds = [
        "exec-idle",
        "exec-failing",
        "exec-slow",
        "exec-dry",
        "module-idle",
        "module-wrong",
        "module-missing",
        "module-old",
        "module-dir",
        "module-outside",
        "shared",
    ];
    for kind in kinds {
        env.apply_kind(sample_kind(kind)).await;
    }
    // Kubeflow's sample as it ships, probe included: Kubeflow probes this kind itself.
    let mut probed_by_kubeflow = kubeflow::sample(kubeflow::JUPYTERLAB_KIND);
    probed_by_kubeflow["metadata"] = serde_json::json!({"name": "kubeflow-probed"});
    env.apply_kind(probed_by_kubeflow).await;

    let opt_out = serde_json::json!({"annotations": {DISABLE_CULLING_ANNOTATION: "true"}});
    let none = serde_json::json!({});
    // (workspace, kind, metadata); each kind's workspace is named after it.
    let mut cases: Vec<(String, String, serde_json::Value)> = kinds
        .iter()
        .map(|k| (k.to_string(), k.to_string(), none.clone()))
        .collect();
    cases.push(("kept".into(), "exec-idle".into(), opt_out));
    cases.push(("kubeflow-probed".into(), "kubeflow-probed".into(), none.clone()));
    for (name, kind, metadata) in &cases {
        env.running_workspace(NS, name, kind, metadata.clone()).await;
    }

    // Two replicas with leader election: only one may act.
    let elect = ["--namespace", NS, "--leader-elect", "--module-dir"];
    let module_dir = modules.path().to_str().unwrap();
    let controller = env.controller("controller", &[&elect[..], &[module_dir]].concat());
    let standby = env.controller("controller-standby", &[&elect[..], &[module_dir]].concat());
    let logs = || format!("{}\n---\n{}", controller.log(), standby.log());

    // Watch every workspace's probes until the idle one is paused.
    let started = Instant::now();
    let mut probe_starts: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); cases.len()];
    loop {
        for (i, (name, _, _)) in cases.iter().enumerate() {
            if let Some(probe) = env.activity(NS, name).await.last_probe {
                probe_starts[i].insert(probe.start_time);
            }
        }
        if env.workspace(NS, "exec-idle").await.spec.paused {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the idle workspace was not paused\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let paused_at = chrono::Utc::now().timestamp_millis();
    let idle = env.activity(NS, "exec-idle").await;
    let idle_probe = idle.last_probe.clone().unwrap();
    assert_eq!(idle_probe.result, ProbeResult::Success);
    assert!(
        idle.last_activity > 1_700_000_000_000,
        "lastActivity is UNIX ms: {}",
        idle.last_activity
    );
    assert_eq!(
        idle.eligible_after(),
        idle.last_activity + IDLE_SECONDS * 1000,
        "eligibleAfter is lastActivity + secondsSinceActive"
    );
    assert!(
        paused_at - idle.last_activity >= IDLE_SECONDS * 1000,
        "paused {} ms after the last activity, within the idle window\n{}",
        paused_at - idle.last_activity,
        logs()
    );
    assert_eq!(env.events_at_least(NS, "exec-idle", "Culled", 1).await, 1, "{}", logs());
    // SPEC §4: not before eligibleAfter + 5 s. The Event is recorded right after the pause,
    // so a pause that came early shows in its time.
    let culled_at = env.first_event_ms(NS, "exec-idle", "Culled").await.unwrap();
    assert!(
        culled_at >= idle.eligible_after() + 5000,
        "Culled at {culled_at}, {} ms after eligibleAfter\n{}",
        culled_at - idle.eligible_after(),
        logs()
    );

    // The custom module decides like the built-in: idle, so paused too (started together).
    env.wait_paused(NS, "module-idle", Duration::from_secs(30), logs).await;

    // Give the others the same time again, to be sure nothing else is paused.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = logs();
    for (name, _, _) in &cases {
        if name != "exec-idle" && name != "module-idle" {
            assert!(!env.workspace(NS, name).await.spec.paused, "{name} was paused\n{log}");
        }
    }
    // The opt-out is still probed, and a probe past its eligibleAfter + 5 s (when it would
    // be paused but for the annotation) pauses nothing.
    let kept = e2e::eventually(
        Duration::from_secs(20),
        "a probe of kept past eligibleAfter + 5 s",
        || async {
            let kept = env.activity(NS, "kept").await;
            let start = kept.last_probe.as_ref()?.start_time;
            (kept.eligible_after() > 0 && start >= kept.eligible_after() + 5000).then_some(kept)
        },
    )
    .await;
    assert_eq!(kept.last_probe.as_ref().unwrap().result, ProbeResult::Success);
    assert!(!env.workspace(NS, "kept").await.spec.paused, "{}", logs());

    let failing = env.activity(NS, "exec-failing").await;
    let probe = failing.last_probe.unwrap();
    assert_eq!(
        (probe.result, failing.last_activity),
        (ProbeResult::Failure, 0),
        "failures never set activity"
    );
    assert!(
        probe.message.contains("Exec probe failed: unexpected exit code 3"),
        "{}",
        probe.message
    );
    assert!(env.events(NS, "exec-failing", "ProbeFailing").await >= 1);
    let slow = env.activity(NS, "exec-slow").await.last_probe.unwrap();
    assert_eq!(slow.result, ProbeResult::Timeout, "{}", slow.message);
    // A timed-out exec is killed in the container, not left running: at most the one in
    // flight remains (each would otherwise run its 29 s, one more every 2 s). The next may
    // start while the last one's kill lands: looked at for a few seconds, not once.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left = slow_processes();
        if left <= 1 || std::time::Instant::now() >= deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(left <= 1, "{left} timed-out probe processes still run in the container");

    let wrong = env.activity(NS, "module-wrong").await;
    let wrong_probe = wrong.last_probe.unwrap();
    assert_eq!((wrong_probe.result, wrong.last_activity), (ProbeResult::Failure, 0));
    assert!(
        wrong_probe.message.contains("digest mismatch") && wrong_probe.message.contains(&digest),
        "{}",
        wrong_probe.message
    );
    for (name, message) in [
        ("module-missing", "cannot read probe module missing.wasm"),
        (
            "module-outside",
            "probe module zero.wasm is outside the module directory",
        ),
        ("module-dir", "dir.wasm is not a regular file"),
        (
            "module-old",
            "probe module was built against workspace-culler:probe@0.2.0, which this host cannot run",
        ),
    ] {
        let status = env.activity(NS, name).await;
        let probe = status.last_probe.unwrap();
        assert_eq!(
            (probe.result, status.last_activity),
            (ProbeResult::Failure, 0),
            "{name}"
        );
        assert!(probe.message.contains(message), "{name}: {}", probe.message);
        assert!(env.events(NS, name, "ProbeFailing").await >= 1, "{name}: no event");
    }

    // A dry-run policy reports, counts, and pauses nothing.
    assert!(env.events(NS, "exec-dry", "WouldCull").await >= 1, "{log}");

    // Kinds the culler does not manage: no status written, and the policy says why.
    for name in ["kubeflow-probed", "shared"] {
        assert!(
            env.activity(NS, name).await.last_probe.is_none(),
            "{name}: the culler wrote status for a kind it does not manage"
        );
    }
    let kubeflow_probed = env.policy("kubeflow-probed").await;
    let kinds_managed = condition(&kubeflow_probed, "KindsManaged").expect("KindsManaged");
    assert_eq!(kinds_managed.status, "False");
    assert!(
        kinds_managed.message.contains("Kubeflow probes it itself"),
        "{}",
        kinds_managed.message
    );
    assert_eq!(condition(&kubeflow_probed, "Ready").unwrap().status, "False");
    for name in ["claim-a", "claim-b"] {
        let policy = env.policy(name).await;
        let message = &condition(&policy, "KindsManaged").unwrap().message;
        assert!(
            message.contains("claim-a") && message.contains("claim-b"),
            "{name}: {message}"
        );
    }
    // A module file the controller cannot use makes its policy not Ready, saying why.
    for (name, message) in [
        ("module-outside", "outside the module directory"),
        ("module-missing", "cannot read probe module missing.wasm"),
        ("module-dir", "is not a regular file"),
    ] {
        let policy = env.policy(name).await;
        let ready = condition(&policy, "Ready").expect("Ready");
        assert_eq!(ready.status, "False", "{name}");
        assert!(ready.message.contains(message), "{name}: {}", ready.message);
    }
    assert_eq!(
        condition(&env.policy("module-idle").await, "Ready").unwrap().status,
        "True"
    );
    let idle_policy = env.policy("idle").await;
    let status = idle_policy.status.clone().unwrap();
    assert_eq!(condition(&idle_policy, "Ready").unwrap().status, "True");
    assert_eq!(status.observed_generation, idle_policy.metadata.generation);
    assert_eq!(status.managed_workspaces, 2, "exec-idle and kept");
    assert_eq!(status.paused_total, 1);

    // Exactly one replica led, and the other never probed.
    let (a, b) = (controller.log(), standby.log());
    let leaders = [&a, &b].iter().filter(|l| l.contains("became the leader")).count();
    assert_eq!(leaders, 1, "replica logs:\n{a}\n---\n{b}");
    let (leader, follower) = if a.contains("became the leader") {
        (&controller, &standby)
    } else {
        (&standby, &controller)
    };
    let follower_log = follower.log();
    assert!(
        follower_log.contains("standing by") && !follower_log.contains("probed"),
        "{follower_log}"
    );
    assert_eq!(leader.get("/healthz").await, (200, "ok".to_string()));
    assert_eq!(leader.get("/readyz").await.0, 200, "{}", leader.log());
    assert_eq!(follower.get("/healthz").await.0, 200);
    assert_eq!(follower.get("/readyz").await.0, 503, "a standby is not ready");
    let (_, metrics) = leader.get("/metrics").await;
    for line in [
        "workspace_culler_culls_total{dry_run=\"false\"} 2",
        "workspace_culler_culls_total{dry_run=\"true\"}",
        "workspace_culler_probes_total{kind=\"exec-failing\",result=\"Failure\"}",
        "workspace_culler_probes_total{kind=\"exec-slow\",result=\"Timeout\"}",
        "workspace_culler_probes_total{kind=\"exec-idle\",result=\"Success\"}",
        "workspace_culler_probe_duration_seconds_count",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(
        !metrics.contains("kind=\"kubeflow-probed\"") && !metrics.contains("kind=\"shared\""),
        "unmanaged kinds were probed\n{metrics}"
    );
    // In steady state a probe reads nothing from the apiserver (pods, StatefulSets and Secrets
    // come from watches) and writes its status once.
    let probes = sum(&metrics, "workspace_culler_probes_total{", &[]);
    let reads: f64 = ["pods", "statefulsets", "secrets"]
        .iter()
        .flat_map(|r| ["get", "list"].map(|v| (r, v)))
        .map(|(r, v)| {
            sum(
                &metrics,
                "workspace_culler_api_requests_total{",
                &[&format!("resource=\"{r}\""), &format!("verb=\"{v}\"")],
            )
        })
        .sum();
    let status_writes = sum(
        &metrics,
        "workspace_culler_api_requests_total{",
        &["resource=\"workspaces/status\"", "verb=\"patch\""],
    );
    println!("{probes} probes: {reads} pod/StatefulSet/Secret reads, {status_writes} status writes");
    assert!(probes >= 50.0, "{probes} probes\n{metrics}");
    assert!(
        reads <= 6.0,
        "{reads} pod/StatefulSet/Secret reads for {probes} probes\n{metrics}"
    );
    assert!(
        status_writes <= probes,
        "{status_writes} status writes for {probes} probes"
    );
    // The controller sends those writes through `patch_workspace_status`: the apiserver answers
    // it with the workspace's metadata only (here a merge patch that changes nothing).
    let (name, _, _) = &cases[0];
    let answer = workspace_culler::controller::patch_workspace_status(
        &env.client,
        NS,
        name,
        &serde_json::json!({"status": {"activity": {}}}),
    )
    .await
    .unwrap();
    assert_eq!(answer.types.map(|t| t.kind).as_deref(), Some("PartialObjectMetadata"));
    assert_eq!(answer.metadata.name.as_deref(), Some(name.as_str()));

    // minProbeIntervalSeconds (2 s) holds for failing and timing-out probes too.
    let elapsed = started.elapsed().as_secs() as usize;
    for (i, (name, kind, _)) in cases.iter().enumerate() {
        let count = probe_starts[i].len();
        if kind == "kubeflow-probed" || kind == "shared" {
            assert_eq!(count, 0, "{name}");
            continue;
        }
        assert!(count >= 2, "{name} was probed {count} times");
        let starts: Vec<i64> = probe_starts[i].iter().copied().collect();
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= 2000,
                "{name} probed {} ms apart",
                pair[1] - pair[0]
            );
        }
        assert!(count <= elapsed / 2 + 1, "{name} probed {count} times in {elapsed}s");
    }

    // One of the two claims deleted, the kind is the other policy's alone: its workspace,
    // which nothing else touches, is probed from then on.
    Api::<CullingPolicy>::all(env.client.clone())
        .delete("claim-b", &Default::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    while env.activity(NS, "shared").await.last_probe.is_none() {
        assert!(
            deleted.elapsed() < Duration::from_secs(30),
            "the kind left to claim-a was never probed\n{}",
            leader.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every workspace deleted (probes in flight included): none is left waiting for a probe.
    let due = || async {
        let (_, metrics) = leader.get("/metrics").await;
        sum(&metrics, "workspace_culler_due_workspaces", &[])
    };
    assert!(due().await > 0.0);
    Api::<workspace_culler_policy::Workspace>::namespaced(env.client.clone(), NS)
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    e2e::eventually(Duration::from_secs(30), "an empty due queue", || async {
        (due().await == 0.0).then_some(())
    })
    .await;
}
