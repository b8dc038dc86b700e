//! End-to-end on a real control plane (etcd + kube-apiserver + kwok), with
//! the exec-script probe running through real `pods/exec` (apiserver → kwok,
//! which runs the script on this machine): idle workspaces are paused with
//! an Event; failing and timed-out probes, `disableCulling`, a disabled kind
//! and `--dry-run` pause nothing; probes respect `minProbeInterval`.

mod e2e;

use e2e::Env;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const IDLE: &str = "#!/bin/sh\necho '{\"has_activity\": false}' > \"$OUTPUT_JSON_PATH\"\n";
const FAILING: &str = "#!/bin/sh\necho 'no /proc here' >&2\nexit 3\n";
const SLOW: &str = "#!/bin/sh\nsleep 30\n";

fn kind(name: &str, script: &str, enabled: bool) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "WorkspaceKind",
        "metadata": {"name": name},
        "spec": {"podTemplate": {"culling": {
            "enabled": enabled,
            "maxInactiveSeconds": 60,
            "minProbeInterval": 5,
            "maxProbeInterval": 10,
            "activityProbe": {"exec": {"script": script, "outputPath": "activity_probe.json", "timeoutSeconds": 2}},
        }}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_decide_and_idle_workspaces_are_paused() {
    let env = Env::start().await;
    for ns in ["culling", "dry"] {
        env.namespace(ns).await;
    }
    env.apply_kind(kind("exec-idle", IDLE, true)).await;
    env.apply_kind(kind("exec-failing", FAILING, true)).await;
    env.apply_kind(kind("exec-slow", SLOW, true)).await;
    env.apply_kind(kind("exec-disabled", IDLE, false)).await;
    // A custom probe component by path (the job-guard example), pinned by
    // sha256 (right and wrong); no process runs the job it looks for.
    let module = workspace_culler_support::test_probes::job_guard().display().to_string();
    let no_job = format!("no-such-job-{}", std::process::id());
    let digest = workspace_culler_engine::sha256_hex(&std::fs::read(&module).unwrap());
    // And modules that cannot be used: missing, and built against another contract version.
    let scratch = tempfile::tempdir().unwrap();
    let old_contract = scratch.path().join("old-contract.wasm");
    std::fs::write(
        &old_contract,
        wat::parse_str(r#"(component (import "workspace-culler:probe/types@0.2.0" (instance)))"#).unwrap(),
    )
    .unwrap();
    let old_digest = workspace_culler_engine::sha256_hex(&std::fs::read(&old_contract).unwrap());
    // (kind, location, pinned sha256, config)
    let modules = [
        (
            "module-idle",
            module.to_string(),
            digest.clone(),
            serde_json::json!({"patterns": [no_job]}),
        ),
        (
            "module-wrong",
            module.to_string(),
            "0".repeat(64),
            serde_json::json!({"patterns": [no_job]}),
        ),
        (
            "module-missing",
            "/nonexistent/probe.wasm".to_string(),
            digest.clone(),
            serde_json::json!({}),
        ),
        (
            "module-old",
            old_contract.display().to_string(),
            old_digest,
            serde_json::json!({}),
        ),
        // Endless: read whole, it would exhaust the controller's memory.
        (
            "module-device",
            "/dev/zero".to_string(),
            digest.clone(),
            serde_json::json!({}),
        ),
    ];
    for (name, location, sha256, config) in &modules {
        env.apply_kind(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "WorkspaceKind",
            "metadata": {"name": name},
            "spec": {"podTemplate": {"culling": {
                "maxInactiveSeconds": 60, "minProbeInterval": 5, "maxProbeInterval": 10,
                "activityProbe": {"module": {"location": location, "sha256": sha256, "config": config}},
            }}},
        }))
        .await;
        env.running_workspace("culling", name, serde_json::json!({"kind": name}))
            .await;
    }
    let cases = [
        ("culling", "idle", serde_json::json!({"kind": "exec-idle"})),
        (
            "culling",
            "kept",
            serde_json::json!({"kind": "exec-idle", "disableCulling": true}),
        ),
        ("culling", "failing", serde_json::json!({"kind": "exec-failing"})),
        ("culling", "slow", serde_json::json!({"kind": "exec-slow"})),
        ("culling", "disabled", serde_json::json!({"kind": "exec-disabled"})),
        ("dry", "idle", serde_json::json!({"kind": "exec-idle"})),
    ];
    for (ns, name, spec) in &cases {
        env.running_workspace(ns, name, spec.clone()).await;
    }
    // Two replicas with leader election: only one may act.
    let elect = [
        "--namespace",
        "culling",
        "--leader-elect",
        "--leader-election-namespace",
        "culling",
    ];
    let controller = env.controller("controller", &elect);
    let standby = env.controller("controller-standby", &elect);
    let dry = env.controller("controller-dry", &["--namespace", "dry", "--dry-run"]);
    let started = Instant::now();

    // Watch every workspace's probes until the idle one is paused.
    let mut probe_starts: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); cases.len()];
    let paused_after = loop {
        for (i, (ns, name, _)) in cases.iter().enumerate() {
            let ws = env.workspace(ns, name).await;
            if let Some(p) = ws.status.and_then(|s| s.activity).and_then(|a| a.last_probe) {
                probe_starts[i].insert(p.start_time_ms);
            }
        }
        if env.workspace("culling", "idle").await.spec.paused {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the idle workspace was not paused\n{}\n---\n{}",
            controller.log(),
            standby.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = format!("{}\n---\n{}", controller.log(), standby.log());
    assert!(
        paused_after >= Duration::from_secs(60),
        "paused after {paused_after:?}, before the idle window\n{log}"
    );
    assert_eq!(env.events("culling", "idle", "Culled").await, 1, "{log}");

    // The custom module decides like the built-in: idle, so paused too (started together).
    let started_module = Instant::now();
    while !env.workspace("culling", "module-idle").await.spec.paused {
        assert!(
            started_module.elapsed() < Duration::from_secs(30),
            "module-idle was not paused\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Give the others the same time again, to be sure nothing else is paused.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (ns, name, _) in &cases[1..] {
        let ws = env.workspace(ns, name).await;
        assert!(!ws.spec.paused, "{ns}/{name} was paused\n{log}\n{}", dry.log());
    }
    let last = |ns: &str, name: &str| {
        let env = &env;
        let (ns, name) = (ns.to_string(), name.to_string());
        async move { env.workspace(&ns, &name).await.status.unwrap().activity.unwrap() }
    };
    let kept = last("culling", "kept").await;
    assert_eq!(kept.last_probe.unwrap().result, "Success");
    let failing = last("culling", "failing").await;
    let probe = failing.last_probe.unwrap();
    assert_eq!(
        (probe.result.as_str(), failing.last_activity),
        ("Failure", 0),
        "failures never set activity"
    );
    assert!(
        probe.message.contains("Exec probe failed: unexpected exit code 3"),
        "{}",
        probe.message
    );
    let wrong = last("culling", "module-wrong").await;
    let wrong_probe = wrong.last_probe.unwrap();
    assert_eq!((wrong_probe.result.as_str(), wrong.last_activity), ("Failure", 0));
    assert!(
        wrong_probe.message.contains("digest mismatch") && wrong_probe.message.contains(&digest),
        "{}",
        wrong_probe.message
    );
    assert!(!env.workspace("culling", "module-wrong").await.spec.paused);
    for (name, message) in [
        ("module-missing", "cannot read probe module /nonexistent/probe.wasm"),
        ("module-device", "probe module /dev/zero is not a regular file"),
        (
            "module-old",
            "probe module was built against workspace-culler:probe@0.2.0, which this host cannot run",
        ),
    ] {
        let status = last("culling", name).await;
        let probe = status.last_probe.unwrap();
        assert_eq!((probe.result.as_str(), status.last_activity), ("Failure", 0), "{name}");
        assert!(probe.message.contains(message), "{name}: {}", probe.message);
        assert!(!env.workspace("culling", name).await.spec.paused, "{name} was paused");
        assert!(
            env.events("culling", name, "ProbeFailing").await >= 1,
            "{name}: no event"
        );
    }
    let slow = last("culling", "slow").await.last_probe.unwrap();
    assert_eq!(slow.result, "Timeout", "{}", slow.message);
    assert!(env.events("culling", "failing", "ProbeFailing").await >= 1);

    // Exactly one replica led, and the other never probed.
    let (a, b) = (controller.log(), standby.log());
    let leaders = [&a, &b].iter().filter(|l| l.contains("became the leader")).count();
    assert_eq!(leaders, 1, "replica logs:\n{a}\n---\n{b}");
    let follower = if a.contains("became the leader") { &b } else { &a };
    assert!(
        follower.contains("standing by") && !follower.contains("probed"),
        "{follower}"
    );

    // The leader's metrics and health.
    let leader = if a.contains("became the leader") {
        &controller
    } else {
        &standby
    };
    assert_eq!(leader.get("/healthz").await, (200, "ok".to_string()));
    assert_eq!(leader.get("/readyz").await.0, 200, "{}", leader.log());
    // The standby serves its health, but is not ready: it does not lead.
    let standby_replica = if std::ptr::eq(leader, &controller) {
        &standby
    } else {
        &controller
    };
    assert_eq!(standby_replica.get("/healthz").await.0, 200);
    assert_eq!(standby_replica.get("/readyz").await.0, 503);
    let (_, metrics) = leader.get("/metrics").await;
    for line in [
        "workspace_culler_culls_total{dry_run=\"false\"} 2",
        "workspace_culler_probes_total{kind=\"exec-failing\",result=\"Failure\"}",
        "workspace_culler_probes_total{kind=\"exec-slow\",result=\"Timeout\"}",
        "workspace_culler_probes_total{kind=\"exec-idle\",result=\"Success\"}",
        "workspace_culler_probe_duration_seconds_count",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // Ten workspaces are managed; some may be mid-probe rather than waiting.
    let due: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("workspace_culler_due_workspaces "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1);
    assert!((1..=10).contains(&due), "due workspaces: {due}\n{metrics}");
    let (_, dry_metrics) = dry.get("/metrics").await;
    assert!(
        dry_metrics.contains("workspace_culler_culls_total{dry_run=\"true\"}"),
        "{dry_metrics}"
    );

    // The dry run evented and counted, but paused nothing.
    assert!(env.events("dry", "idle", "WouldCull").await >= 1, "{}", dry.log());

    // minProbeInterval (5 s) holds for failing and timing-out probes too.
    let elapsed = started.elapsed().as_secs() as usize;
    for (i, (ns, name, _)) in cases.iter().enumerate() {
        let count = probe_starts[i].len();
        assert!(count >= 2, "{ns}/{name} was probed {count} times");
        let starts: Vec<i64> = probe_starts[i].iter().copied().collect();
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= 5000,
                "{ns}/{name} probed {} ms apart",
                pair[1] - pair[0]
            );
        }
        assert!(
            count <= elapsed / 5 + 1,
            "{ns}/{name} probed {count} times in {elapsed}s"
        );
    }
}
