//! The built-in exec-script probe through the harness, with exec as a local
//! process (a real /bin/sh): every rule of the result contract, exit codes,
//! timeouts, and the stale output file.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use workspace_culler::harness::{self, Fixture, LiveMode};
use workspace_culler_engine::builtin::builtin;
use workspace_culler_engine::contract::ProbeActivity;
use workspace_culler_engine::{Allocation, EngineConfig, LoadedProbe, ProbeEngine, ProbeOutcome};

/// 2026-11-29T11:28:24Z, the fixture clock.
const NOW: &str = "2026-11-29T11:28:24Z";
const NOW_MS: i64 = 1_795_951_704_000;

struct Setup {
    engine: ProbeEngine,
    probe: std::sync::Arc<LoadedProbe>,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let engine = ProbeEngine::new(EngineConfig {
        allocation: Allocation::OnDemand,
        ..EngineConfig::default()
    })
    .unwrap();
    let probe = engine.load(builtin("exec-script").unwrap().component, None).unwrap();
    Setup {
        engine,
        probe,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn output_path(&self) -> PathBuf {
        self.dir.path().join("activity_probe.json")
    }

    async fn run(&self, script: &str, timeout_seconds: u64) -> ProbeOutcome {
        let fixture = Fixture {
            config: serde_json::json!({
                "script": script,
                "outputPath": self.output_path(),
                "timeoutSeconds": timeout_seconds,
            }),
            now: Some(NOW.into()),
            ..Fixture::default()
        };
        let live = LiveMode {
            exec: true,
            http: false,
        };
        harness::run_case(&self.engine, &self.probe, "exec-script", &fixture, live)
            .await
            .unwrap()
            .evaluation
            .outcome
    }

    /// A script that writes `json` to the output file.
    async fn result_of(&self, json: &str) -> ProbeOutcome {
        let script = format!("#!/bin/sh\ncat > \"$OUTPUT_JSON_PATH\" <<'EOF'\n{json}\nEOF\n");
        self.run(&script, 10).await
    }
}

fn failure(outcome: &ProbeOutcome) -> &str {
    match outcome {
        ProbeOutcome::Failure(m) => m,
        other => panic!("expected a Failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_of_kubeflow_s_pod_exec_output_through_a_real_script() {
    let s = setup();
    let success = |a| ProbeOutcome::Success(a);
    assert_eq!(
        s.result_of(r#"{"has_activity": true}"#).await,
        success(ProbeActivity::ActiveNow)
    );
    assert_eq!(
        s.result_of(r#"{"has_activity": false}"#).await,
        success(ProbeActivity::Idle)
    );
    // Kubeflow's podExec meaning: only JSON reports inactivity; an object with neither key
    // is activity, and keys it does not know are ignored.
    for json in [
        r#"{"last_activity": null}"#,
        "{}",
        "null",
        r#"{"has_activity": true, "extra": 1}"#,
    ] {
        assert_eq!(s.result_of(json).await, success(ProbeActivity::ActiveNow), "{json}");
    }
    let minute_ago = ProbeActivity::LastAt(NOW_MS - 60_000);
    for ts in [
        "2026-11-29T11:27:24Z",
        "2026-11-29T11:27:24+00:00",
        "2026-11-29T11:27:24.000000Z",
    ] {
        assert_eq!(
            s.result_of(&format!(r#"{{"last_activity": "{ts}"}}"#)).await,
            success(minute_ago),
            "{ts}"
        );
    }
    let both = r#"{"has_activity": true, "last_activity": "2026-11-29T00:00:00Z"}"#;
    assert_eq!(s.result_of(both).await, success(ProbeActivity::ActiveNow));

    let cases = [
        (
            r#"{"last_activity": "2026-11-29T11:40:00Z"}"#,
            "more than 60 s in the future",
        ),
        (
            r#"{"has_activity": "yes"}"#,
            "has_activity must be true or false, got a string",
        ),
        (
            r#"{"last_activity": 5}"#,
            "last_activity must be a timestamp string, got a number",
        ),
        (r#"{"last_activity": "last tuesday"}"#, "is not an RFC 3339 timestamp"),
        (r#"["has_activity"]"#, "must hold a JSON object, got an array"),
        ("has_activity=true", "is not valid JSON"),
    ];
    for (json, message) in cases {
        let outcome = s.result_of(json).await;
        let text = failure(&outcome);
        assert!(text.contains(message), "{json}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_output_file_is_activity_and_an_oversize_one_fails() {
    let s = setup();
    let outcome = s.run("#!/bin/sh\n: > \"$OUTPUT_JSON_PATH\"\n", 10).await;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
    let outcome = s
        .run(
            "#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' ' ' > \"$OUTPUT_JSON_PATH\"\n",
            10,
        )
        .await;
    assert!(failure(&outcome).contains("over the cap of 65536 bytes"), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_is_a_failure_with_the_code() {
    let s = setup();
    let outcome = s
        .run(
            "#!/bin/sh\necho '{\"has_activity\": true}' > \"$OUTPUT_JSON_PATH\"\nexit 100\n",
            10,
        )
        .await;
    assert_eq!(failure(&outcome), "Exec probe failed: unexpected exit code 100");
    let outcome = s.run("#!/bin/sh\necho 'cannot read /proc' >&2\nexit 3\n", 10).await;
    assert_eq!(
        failure(&outcome),
        "Exec probe failed: unexpected exit code 3 (cannot read /proc)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_sleeps_past_its_timeout_times_out_promptly() {
    let s = setup();
    let started = Instant::now();
    let outcome = s
        .run(
            "#!/bin/sh\nsleep 30\necho '{\"has_activity\": true}' > \"$OUTPUT_JSON_PATH\"\n",
            2,
        )
        .await;
    let took = started.elapsed();
    assert_eq!(
        outcome,
        ProbeOutcome::Timeout("Exec probe failed: timeout after 2000ms".into())
    );
    assert!(took < Duration::from_secs(3), "took {took:?}, more than timeout + 1 s");
    assert!(!s.output_path().exists(), "the killed script wrote its result anyway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_output_file_is_removed_before_the_script_runs() {
    let s = setup();
    std::fs::write(s.output_path(), r#"{"has_activity": false}"#).unwrap();
    // A script that writes nothing reports activity (Kubeflow's podExec meaning), so the
    // stale "idle" must not be read in its place.
    let outcome = s
        .run("#!/bin/sh\ntest -e \"$OUTPUT_JSON_PATH\" && exit 9\nexit 0\n", 10)
        .await;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shebang_picks_the_interpreter() {
    let s = setup();
    let script = "#!/usr/bin/env python3\nimport json, os\njson.dump({'has_activity': False}, open(os.environ['OUTPUT_JSON_PATH'], 'w'))\n";
    assert_eq!(s.run(script, 10).await, ProbeOutcome::Success(ProbeActivity::Idle));
    let outcome = s.run("echo no shebang", 10).await;
    assert!(
        failure(&outcome).contains("must start with a shebang line"),
        "{outcome:?}"
    );
}

/// The harness binary itself: a fixture file, `--expect`, and its exit codes.
#[test]
fn the_harness_command_reports_and_exits_non_zero_on_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("active.yaml");
    let out = dir.path().join("out.json");
    std::fs::write(
        &fixture,
        format!(
            "description: the script reports activity\nconfig:\n  script: |\n    #!/bin/sh\n    echo '{{\"has_activity\": true}}' > \"$OUTPUT_JSON_PATH\"\n  outputPath: {}\nexpect:\n  result: Success\n  activity: active-now\n",
            out.display()
        ),
    )
    .unwrap();
    let harness = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
            .args(["probe", "test", "exec-script", "--live-exec", "--fixture"])
            .arg(&fixture)
            .args(extra)
            .env("WORKSPACE_CULLER_CACHE_DIR", dir.path().join("cache"))
            .output()
            .unwrap()
    };
    let ok = harness(&[]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(
        stdout.contains("result     Success") && stdout.contains("expect     Success ✔"),
        "{stdout}"
    );

    let mismatch = harness(&["--expect", "Failure"]);
    let stdout = String::from_utf8_lossy(&mismatch.stdout);
    assert_eq!(mismatch.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("MISMATCH   result: expected Failure, got Success"),
        "{stdout}"
    );
}
