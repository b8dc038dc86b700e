//! Hostile probes against the running controller on the real control plane: the test suite's
//! hostile component, pinned in a CullingPolicy, misbehaves in each way it can — a CPU loop, a
//! call into the host that never returns, a memory bomb, a stack overflow, floods of output,
//! logs, commands, requests and handles, HTTP to the apiserver, the metadata service, the node
//! and another workspace's pod. Each case runs alone under a fresh controller, beside a
//! bystander workspace of a benign kind. Each ends as a `Failure` or `Timeout` whose message
//! names what happened; nobody is paused; the bystander is probed successfully meanwhile; the
//! controller's peak RSS stays under the chart's memory limit. The figures (peak RSS, the
//! bystander's probe time against a run without an attacker) are printed (`--nocapture`).

mod e2e;

use e2e::{Env, exec_policy, sample_kind};
use std::time::Duration;
use workspace_culler_policy::ProbeResult;
use workspace_culler_support::kubeflow;
use workspace_culler_support::process::peak_rss_mib;

/// The chart's memory limit at its defaults (`resources.limits.memory`).
const CHART_LIMIT_MIB: u64 = 640;
const ACTIVE: &str = "#!/bin/sh\necho '{\"has_activity\": true}' > \"$OUTPUT_JSON_PATH\"\n";

struct Case {
    mode: &'static str,
    config: serde_json::Value,
    /// The results it may end as, each with what its message must then say.
    outcomes: Vec<(ProbeResult, &'static str)>,
}

fn case(mode: &'static str, extra: serde_json::Value, result: ProbeResult, message: &'static str) -> Case {
    let mut config = serde_json::json!({"mode": mode.trim_end_matches(|c: char| c.is_ascii_digit())});
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    Case {
        mode,
        config,
        outcomes: vec![(result, message)],
    }
}

impl Case {
    /// It may also end as `result`, its message saying `message`.
    fn or(mut self, result: ProbeResult, message: &'static str) -> Case {
        self.outcomes.push((result, message));
        self
    }
}

fn policy(kind: &str, sha256: &str, config: &serde_json::Value) -> serde_json::Value {
    let module =
        serde_json::json!({"location": "hostile.wasm", "sha256": sha256, "config": config, "timeoutSeconds": 3});
    e2e::module_policy(kind, module, 60)
}

/// How long a probe of `name` took, once one started after `since` (Unix ms) has a result.
async fn probed_after(env: &Env, ns: &str, name: &str, since: i64) -> workspace_culler_policy::LastProbe {
    e2e::eventually(Duration::from_secs(60), &format!("a probe of {ns}/{name}"), || async {
        env.activity(ns, name)
            .await
            .last_probe
            .filter(|p| p.start_time >= since)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_probes_are_contained_and_the_controller_stays_small() {
    let env = Env::start().await;
    let modules = tempfile::tempdir().unwrap();
    let hostile = std::fs::read(workspace_culler_support::test_probes::hostile()).unwrap();
    std::fs::write(modules.path().join("hostile.wasm"), &hostile).unwrap();
    let sha256 = workspace_culler_engine::sha256_hex(&hostile);
    // Its exec must succeed within 2 s while the hostile probes run, as it does alone.
    let mut bystander = exec_policy("bystander", &["bystander"], ACTIVE, 60);
    bystander["spec"]["activityProbe"]["podExec"]["timeoutSeconds"] = 2.into();
    env.apply_policy(bystander).await;
    env.apply_kind(sample_kind("bystander")).await;

    // The baseline: the bystander alone.
    env.namespace("h-baseline", &[]).await;
    env.running_workspace("h-baseline", "bystander", "bystander", serde_json::json!({}))
        .await;
    let other_pod_ip = env.pod_ip("h-baseline", &kubeflow::pod_name("bystander")).await;
    let apiserver = env.server_url();

    let (timeout, failure) = (ProbeResult::Timeout, ProbeResult::Failure);
    let refused = "probes may only reach their workspace's pod";
    let none = serde_json::json!({});
    let cases = [
        case("loop", none.clone(), timeout, "ran past its deadline of 3000ms"),
        // The host cuts the exec off at the probe's deadline with an exec timeout; the probe
        // may still return its own failure before the deadline's trap stops it.
        case(
            "block-in-exec",
            none.clone(),
            timeout,
            "ran past its deadline of 3000ms",
        )
        .or(failure, "exec returned: Err(Timeout)"),
        case("grow", none.clone(), failure, "exceeded its memory cap of 64 MiB"),
        case("stack", none.clone(), failure, "probe trapped"),
        case(
            "flood-stdout",
            serde_json::json!({"bytes": 100 << 20}),
            failure,
            "more than the cap of 1048576 bytes to stdout",
        ),
        case(
            "big-result",
            serde_json::json!({"bytes": 8 << 20}),
            failure,
            "over the cap of 65536 bytes",
        ),
        case("trap", none.clone(), failure, "panics on purpose"),
        case("log-flood", none.clone(), failure, "logged more than its cap"),
        case(
            "exec-many",
            none.clone(),
            failure,
            "more than its cap of 32 commands per evaluation",
        ),
        case("exec-big", none.clone(), failure, "over its cap of 262144 bytes"),
        case(
            "http-many",
            none.clone(),
            failure,
            "more than its cap of 32 HTTP requests per evaluation",
        ),
        case("handles", none.clone(), failure, "cap of 1024 resource handles"),
        case(
            "http1",
            serde_json::json!({"url": format!("{apiserver}/api/v1/secrets")}),
            failure,
            refused,
        ),
        case(
            "http2",
            serde_json::json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            failure,
            refused,
        ),
        case(
            "http3",
            serde_json::json!({"url": "http://127.0.0.1:10250/pods"}),
            failure,
            refused,
        ),
        case(
            "http4",
            serde_json::json!({"url": format!("http://{other_pod_ip}:8888/api/status")}),
            failure,
            refused,
        ),
    ];
    for case in &cases {
        let kind = format!("hostile-{}", case.mode);
        env.apply_policy(policy(&kind, &sha256, &case.config)).await;
        env.apply_kind(sample_kind(&kind)).await;
        let ns = format!("h-{}", case.mode);
        env.namespace(&ns, &[]).await;
        env.running_workspace(&ns, "attacker", &kind, serde_json::json!({}))
            .await;
        env.running_workspace(&ns, "bystander", "bystander", serde_json::json!({}))
            .await;
    }
    let module_dir = format!("--module-dir={}", modules.path().display());

    let since = chrono::Utc::now().timestamp_millis();
    let controller = env.controller("controller-baseline", &["--namespace", "h-baseline", &module_dir]);
    let baseline = probed_after(&env, "h-baseline", "bystander", since).await;
    assert_eq!(baseline.result, ProbeResult::Success, "{}", controller.log());
    let baseline_rss = peak_rss_mib(controller.pid());
    drop(controller);

    let mut report = vec![format!(
        "{:<14} {:<8} {:>9} {:>12}  message",
        "case", "result", "peak RSS", "bystander"
    )];
    report.push(format!(
        "{:<14} {:<8} {:>5} MiB {:>9} ms  (no attacker)",
        "baseline",
        "-",
        baseline_rss,
        baseline.end_time - baseline.start_time
    ));
    for case in &cases {
        let ns = format!("h-{}", case.mode);
        let since = chrono::Utc::now().timestamp_millis();
        let controller = env.controller(&format!("controller-{}", case.mode), &["--namespace", &ns, &module_dir]);
        let attack = probed_after(&env, &ns, "attacker", since).await;
        let bystander = probed_after(&env, &ns, "bystander", since).await;
        // Let a second round of the attack run before reading the peak.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = peak_rss_mib(controller.pid());
        let log = controller.log();
        drop(controller);
        assert!(
            case.outcomes
                .iter()
                .any(|(result, message)| *result == attack.result && attack.message.contains(message)),
            "{}: {:?} {}\n{log}",
            case.mode,
            attack.result,
            attack.message
        );
        assert_eq!(
            bystander.result,
            ProbeResult::Success,
            "{}: the bystander\n{log}",
            case.mode
        );
        assert!(rss < CHART_LIMIT_MIB, "{}: the controller reached {rss} MiB", case.mode);
        for name in ["attacker", "bystander"] {
            assert!(
                !env.workspace(&ns, name).await.spec.paused,
                "{}: {name} was paused",
                case.mode
            );
        }
        let shown: String = attack.message.chars().take(90).collect();
        report.push(format!(
            "{:<14} {:<8} {:>5} MiB {:>9} ms  {shown}",
            case.mode,
            format!("{:?}", attack.result),
            rss,
            bystander.end_time - bystander.start_time,
        ));
    }
    eprintln!("{}", report.join("\n"));
}
