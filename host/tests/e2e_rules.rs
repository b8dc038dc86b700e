//! End-to-end on Kubeflow's CRDs: a CullingPolicy's `activityRules` decide per workspace, as
//! Kubeflow's do. First match wins over namespace labels and podConfig spawner labels (a
//! matchExpressions selector included), each rule with its own window; `pauseWorkspace: false`
//! and no matching rule never pause (and `eligibleAfter` stays 0); `minRunningSeconds` holds a
//! workspace past its idle window; a `CullingSoon` Event warns before the pause; a pod that
//! only carries the workspace's label is never probed in its place.

mod e2e;

use e2e::{Env, sample_kind};
use std::time::{Duration, Instant};
use workspace_culler_policy::ProbeResult;

/// Active while a file named `busy` exists in the container's working directory.
const BUSY_FILE: &str = "#!/bin/sh\nif [ -e busy ]; then echo '{\"has_activity\": true}'; else echo '{\"has_activity\": false}'; fi > \"$OUTPUT_JSON_PATH\"\n";
const GPU_SECONDS: i64 = 16;
const DEV_SECONDS: i64 = 40;
const MIN_RUNNING_SECONDS: i64 = 45;
const LIFETIME_SECONDS: i64 = 60;

fn rules_policy() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy",
        "metadata": {"name": "rules"},
        "spec": {
            "workspaceKinds": ["rules"],
            "activityProbe": {"minProbeIntervalSeconds": 2, "probeIntervalSeconds": 5,
                              "podExec": {"script": BUSY_FILE, "timeoutSeconds": 10}},
            "activityRules": [
                {"config": {"secondsSinceActive": 16},
                 "match": {"matchNamespace": {"selector": {"matchLabels": {"tier": "production"}}}},
                 "effect": {"pauseWorkspace": false}},
                {"config": {"secondsSinceActive": GPU_SECONDS},
                 "match": {"matchPodConfig": {"selector": {"matchExpressions": [
                     {"key": "gpu", "operator": "In", "values": ["1", "2"]}]}}},
                 "effect": {"pauseWorkspace": true}},
                {"config": {"secondsSinceActive": DEV_SECONDS},
                 "match": {"matchNamespace": {"selector": {"matchLabels": {"tier": "development"}}}},
                 "effect": {"pauseWorkspace": true}},
            ],
        },
    })
}

fn min_running_policy() -> serde_json::Value {
    let mut policy = e2e::exec_policy("long-running", &["long-running"], BUSY_FILE, GPU_SECONDS as i32);
    policy["spec"]["activityRules"][0]["config"]["minRunningSeconds"] = MIN_RUNNING_SECONDS.into();
    policy
}

/// A policy whose rule pauses after `LIFETIME_SECONDS` of running, active or not.
fn lifetime_policy() -> serde_json::Value {
    let mut policy = e2e::exec_policy("lifetime", &["lifetime"], BUSY_FILE, 3600);
    policy["spec"]["activityRules"][0]["config"]["maxRunningSeconds"] = LIFETIME_SECONDS.into();
    policy
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn pod_config(id: &str) -> serde_json::Value {
    serde_json::json!({"podConfig": id})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_windows_exemptions_warnings_and_the_right_pod() {
    let env = Env::start().await;
    env.namespace("dev", &[("tier", "development")]).await;
    env.namespace("prod", &[("tier", "production")]).await;
    env.namespace("other", &[]).await;
    env.apply_policy(rules_policy()).await;
    env.apply_policy(min_running_policy()).await;
    env.apply_kind(sample_kind("rules")).await;
    env.apply_kind(sample_kind("long-running")).await;
    env.apply_policy(lifetime_policy()).await;
    env.apply_kind(sample_kind("lifetime")).await;
    // Always busy: only its maximum running time pauses it.
    let busy_dir = env.pod_dir("dev", &workspace_culler_support::kubeflow::pod_name("busy"));
    std::fs::create_dir_all(&busy_dir).unwrap();
    std::fs::write(busy_dir.join("busy"), "").unwrap();
    // Kept alive past the namespace rule's window; and one asking for far too long.
    let keep_until = chrono::Utc::now().timestamp_millis() + 70_000;
    let keep_alive = |value: String| serde_json::json!({workspace_culler_policy::KEEP_ALIVE_ANNOTATION: value});

    // Decoys: labelled for dev/decoyed, Running, and "busy" — one controlled by a StatefulSet
    // the Workspace does not own, one by nothing. They sort before the real pod.
    for (pod, statefulset) in [("aaa-decoy", Some("decoy")), ("aab-decoy", None)] {
        let decoy_dir = env.decoy_pod("dev", "decoyed", pod, statefulset).await;
        std::fs::write(decoy_dir.join("busy"), "").unwrap();
    }

    // (namespace, name, kind, podConfig)
    let cases = [
        ("dev", "gpu", "rules", "big_gpu"),
        ("dev", "cpu", "rules", "tiny_cpu"),
        ("dev", "decoyed", "rules", "tiny_cpu"),
        ("prod", "gpu", "rules", "big_gpu"),
        ("other", "cpu", "rules", "tiny_cpu"),
        ("dev", "min-running", "long-running", "tiny_cpu"),
        ("dev", "busy", "lifetime", "tiny_cpu"),
        ("dev", "kept", "rules", "tiny_cpu"),
        ("dev", "kept-long", "rules", "tiny_cpu"),
    ];
    for (ns, name, kind, config) in cases {
        let annotations = match name {
            "kept" => keep_alive(rfc3339(keep_until)),
            "kept-long" => keep_alive("2099-01-01T00:00:00Z".into()),
            _ => serde_json::json!({}),
        };
        env.create_workspace(ns, {
            let mut ws =
                workspace_culler_support::kubeflow::sample(workspace_culler_support::kubeflow::JUPYTERLAB_WORKSPACE);
            ws["metadata"] = serde_json::json!({"name": name, "namespace": ns, "annotations": annotations});
            ws["spec"]["kind"] = kind.into();
            ws["spec"]["podTemplate"]["options"]["podConfig"] = pod_config(config)["podConfig"].clone();
            ws
        })
        .await;
    }
    for (ns, name, _, _) in cases {
        env.wait_running(ns, name).await;
    }
    let controller = env.controller("controller", &["--culling-soon-seconds", "20"]);
    let log = || controller.log();

    // The GPU rule (matched on the podConfig's spawner labels) has the shortest window.
    env.wait_paused("dev", "gpu", Duration::from_secs(60), log).await;
    let gpu = env.activity("dev", "gpu").await;
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(gpu.eligible_after(), gpu.last_activity + GPU_SECONDS * 1000);
    assert!(now - gpu.last_activity >= GPU_SECONDS * 1000, "{}", log());
    assert!(
        !env.workspace("dev", "cpu").await.spec.paused,
        "the namespace rule's window is longer"
    );
    let cpu = env.activity("dev", "cpu").await;
    assert_eq!(
        cpu.eligible_after(),
        cpu.last_activity + DEV_SECONDS * 1000,
        "{}",
        log()
    );

    // The namespace rule, its warning first; the decoyed workspace alike: its real pod is idle.
    let started = Instant::now();
    env.wait_paused("dev", "cpu", Duration::from_secs(60), log).await;
    env.wait_paused("dev", "decoyed", Duration::from_secs(30), log).await;
    assert!(started.elapsed() > Duration::from_secs(5));
    let cpu = env.activity("dev", "cpu").await;
    assert!(chrono::Utc::now().timestamp_millis() - cpu.last_activity >= DEV_SECONDS * 1000);
    assert_eq!(env.events("dev", "cpu", "CullingSoon").await, 1, "{}", log());
    assert_eq!(env.events("dev", "cpu", "Culled").await, 1);
    let decoyed = env.activity("dev", "decoyed").await.last_probe.unwrap();
    assert_eq!(decoyed.result, ProbeResult::Success, "{}", decoyed.message);
    assert!(
        decoyed.message.contains("not active now"),
        "the decoy was probed: {}",
        decoyed.message
    );

    // minRunningSeconds: idle for longer than its window, paused only once it ran long enough.
    env.wait_paused("dev", "min-running", Duration::from_secs(60), log)
        .await;
    let ws = env.workspace("dev", "min-running").await;
    let activity = ws.activity().unwrap();
    let running_since = ws.last_running_time();
    assert!(running_since > 0);
    assert_eq!(
        activity.eligible_after(),
        (activity.last_activity + GPU_SECONDS * 1000).max(running_since + MIN_RUNNING_SECONDS * 1000)
    );
    assert!(
        chrono::Utc::now().timestamp_millis() - running_since >= MIN_RUNNING_SECONDS * 1000,
        "paused before minRunningSeconds\n{}",
        log()
    );

    // A keep-alive holds the namespace rule's pause until it ends, and eligibleAfter shows it;
    // one beyond the policy's 8 h is clamped in the annotation, with an Event.
    assert!(
        !env.workspace("dev", "kept").await.spec.paused,
        "paused despite its keep-alive\n{}",
        log()
    );
    let kept = env.activity("dev", "kept").await;
    assert_eq!(
        kept.eligible_after(),
        keep_until / 1000 * 1000,
        "eligibleAfter is the keep-alive"
    );
    env.wait_paused("dev", "kept", Duration::from_secs(60), log).await;
    assert!(
        chrono::Utc::now().timestamp_millis() >= keep_until,
        "paused before its keep-alive ended"
    );
    let long = env.workspace("dev", "kept-long").await;
    let clamped = long.keep_alive_annotation().unwrap().to_string();
    let clamped_ms = chrono::DateTime::parse_from_rfc3339(&clamped)
        .unwrap()
        .timestamp_millis();
    assert!(
        clamped_ms <= chrono::Utc::now().timestamp_millis() + 8 * 3600 * 1000,
        "not clamped: {clamped}"
    );
    assert_eq!(env.events("dev", "kept-long", "KeepAliveClamped").await, 1);
    assert!(!long.spec.paused);

    // A maximum running time pauses a busy workspace once it has run that long, warned first.
    env.wait_paused("dev", "busy", Duration::from_secs(60), log).await;
    let busy = env.workspace("dev", "busy").await;
    let ran = chrono::Utc::now().timestamp_millis() - busy.last_running_time();
    assert!(
        ran >= LIFETIME_SECONDS * 1000,
        "paused after {ran} ms of running\n{}",
        log()
    );
    let busy_activity = busy.activity().unwrap();
    assert!(
        busy_activity
            .last_probe
            .as_ref()
            .unwrap()
            .message
            .contains("active now"),
        "it was busy"
    );
    assert_eq!(env.events("dev", "busy", "CullingSoon").await, 1, "{}", log());
    assert_eq!(env.events("dev", "busy", "Culled").await, 1);

    // pauseWorkspace: false (first match in production) and no matching rule: never paused.
    for (ns, name) in [("prod", "gpu"), ("other", "cpu")] {
        let ws = env.workspace(ns, name).await;
        assert!(!ws.spec.paused, "{ns}/{name} was paused\n{}", log());
        let activity = ws.activity().cloned().unwrap_or_default();
        assert_eq!(
            activity.last_probe.as_ref().unwrap().result,
            ProbeResult::Success,
            "{ns}/{name} is probed"
        );
        assert_eq!(
            activity.eligible_after(),
            0,
            "{ns}/{name}: no pausing rule, no eligibleAfter"
        );
        assert_eq!(env.events(ns, name, "CullingSoon").await, 0);
    }

    // `workspace-culler status` says the same, read from the API.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .arg("status")
        .arg("--kubeconfig")
        .arg(env.cp.kubeconfig())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same from $KUBECONFIG naming two files, as kubectl users have it: merged.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    std::fs::write(
        &other,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
    )
    .unwrap();
    let list = std::env::join_paths([env.cp.kubeconfig(), other]).unwrap();
    let merged = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .arg("status")
        .env("KUBECONFIG", &list)
        .output()
        .unwrap();
    let workspaces = |table: &str| {
        table
            .lines()
            .map(|l| l.split(' ').next().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    assert_eq!(workspaces(&String::from_utf8_lossy(&merged.stdout)), workspaces(&table));
    let line = |workspace: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{workspace} ")))
            .unwrap_or_else(|| panic!("no line for {workspace} in\n{table}"))
            .to_string()
    };
    assert!(
        line("prod/gpu").ends_with("activityRules[0] says pauseWorkspace: false"),
        "{table}"
    );
    assert!(
        line("other/cpu").ends_with("no activity rule applies: never paused"),
        "{table}"
    );
    assert!(
        line("dev/cpu").contains(" rules ") && line("dev/cpu").ends_with("paused"),
        "{table}"
    );
    assert!(line("dev/min-running").contains("long-running"), "{table}");
}
