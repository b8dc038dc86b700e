//! The built-in Jupyter probe through the harness against a real
//! `jupyter-server` (from PyPI, installed by `scripts/ensure-jupyter`) on loopback.

mod cli;
mod jupyter;

use jupyter::{Jupyter, TOKEN, ms, repo_root};
use std::process::Command;
use std::time::Duration;
use workspace_culler::harness::{self, Fixture, FixtureWorkspace, LiveMode};
use workspace_culler_engine::builtin::builtin;
use workspace_culler_engine::contract::ProbeActivity;
use workspace_culler_engine::{Allocation, EngineConfig, LoadedProbe, ProbeEngine, ProbeOutcome};

const BASE_PATH: &str = "/workspace/connect/ns/ws/jupyterlab/";

async fn probe(engine: &ProbeEngine, probe: &LoadedProbe, jupyter: &Jupyter, token: Option<&str>) -> ProbeOutcome {
    let mut config = serde_json::json!({"lastActivity": true, "portId": "jupyterlab"});
    if let Some(token) = token {
        config["token"] = token.into();
    }
    let fixture = Fixture {
        workspace: FixtureWorkspace {
            namespace: "ns".into(),
            name: "ws".into(),
            ports: [("jupyterlab".to_string(), jupyter.port)].into(),
            ..FixtureWorkspace::default()
        },
        config,
        ..Fixture::default()
    };
    let live = LiveMode {
        exec: false,
        http: true,
    };
    harness::run_case(engine, probe, "jupyter", &fixture, live)
        .await
        .unwrap()
        .evaluation
        .outcome
}

fn last_at(outcome: &ProbeOutcome) -> i64 {
    match outcome {
        ProbeOutcome::Success(ProbeActivity::LastAt(ms)) => *ms,
        other => panic!("expected a last_activity time, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_probe_against_a_real_server() {
    let jupyter = Jupyter::start(BASE_PATH).await;
    let engine = ProbeEngine::new(EngineConfig {
        allocation: Allocation::OnDemand,
        ..EngineConfig::default()
    })
    .unwrap();
    let loaded = engine.load(builtin("jupyter").unwrap().component, None).unwrap();

    // At server start, the activity is the server's start.
    let (_, status) = jupyter.get("api/status").await.unwrap();
    let started = ms(status["started"].as_str().unwrap());
    let at_start = last_at(&probe(&engine, &loaded, &jupyter, Some(TOKEN)).await);
    assert_eq!(at_start, started, "activity at start is the server's start");

    // Without the token: a clear failure.
    match probe(&engine, &loaded, &jupyter, None).await {
        ProbeOutcome::Failure(m) => {
            assert!(
                m.starts_with("Jupyter probe failed: HTTP 403 from") && m.ends_with("(a token is required)"),
                "{m}"
            )
        }
        other => panic!("expected a 403 failure, got {other:?}"),
    }

    // An authenticated API call is activity, and the probe sees it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(jupyter.get("api/contents").await.unwrap().0, 200);
    let after_call = last_at(&probe(&engine, &loaded, &jupyter, Some(TOKEN)).await);
    assert!(
        after_call >= at_start + 1000,
        "activity {after_call} did not move past {at_start}"
    );

    // With a kernel, the probe's own calls (status, kernels, terminals) leave last_activity alone.
    let (code, kernel) = jupyter.request("POST", "api/kernels").await.unwrap();
    assert_eq!(code, 201, "{kernel}");
    let kernel_id = kernel["id"].as_str().unwrap().to_string();
    let (_, kernels) = jupyter.get("api/kernels?no_track_activity=1").await.unwrap();
    assert_eq!(kernels[0]["id"], kernel_id.as_str(), "{kernels}");
    // Let the kernel's start-up settle (its state stays `starting` until a client connects).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = jupyter.last_activity().await;
    let seen = last_at(&probe(&engine, &loaded, &jupyter, Some(TOKEN)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = jupyter.last_activity().await;
    assert_eq!(before, after, "the probe's own calls moved last_activity");
    assert_eq!(seen, before);

    // A silent long-running cell: last_activity freezes, but the busy kernel is activity now.
    let status = Command::new(jupyter.bin.join("python"))
        .arg(repo_root().join("tests/jupyter/run_silent_cell.py"))
        .args([&jupyter.base(), TOKEN, &kernel_id, "import time; time.sleep(120)"])
        .status()
        .unwrap();
    assert!(status.success(), "could not start the silent cell");
    let frozen = jupyter.last_activity().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        jupyter.last_activity().await,
        frozen,
        "a silent cell should not move last_activity"
    );
    assert_eq!(
        probe(&engine, &loaded, &jupyter, Some(TOKEN)).await,
        ProbeOutcome::Success(ProbeActivity::ActiveNow)
    );
    assert_eq!(jupyter.last_activity().await, frozen, "the probe moved last_activity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_is_recorded_and_replays_without_the_server() {
    let jupyter = Jupyter::start(BASE_PATH).await;
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("recorded.yaml");
    let config = serde_json::json!({"lastActivity": true, "portId": "jupyterlab", "token": TOKEN}).to_string();
    let port = format!("jupyterlab={}", jupyter.port);
    let (code, live) = cli::run(
        &[
            "probe",
            "test",
            "jupyter",
            "--live-http",
            "--workspace",
            "ns/ws",
            "--port",
            &port,
            "--config",
            &config,
            "--record",
        ]
        .into_iter()
        .chain([recorded.to_str().unwrap()])
        .collect::<Vec<_>>(),
        dir.path(),
    );
    assert_eq!(code, 0, "{live}");
    let (_, status) = jupyter.get("api/status").await.unwrap();
    let server_activity = ms(status["last_activity"].as_str().unwrap());
    drop(jupyter);

    // The fixture holds the server's real replies and the outcome they led to.
    let fixture = Fixture::from_file(&recorded).unwrap();
    // With no kernels running, the probe asks for the status and the terminals.
    let urls: Vec<&str> = fixture.http.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "/workspace/connect/ns/ws/jupyterlab/api/status",
            "/workspace/connect/ns/ws/jupyterlab/api/terminals?no_track_activity=1"
        ]
    );
    let expect = fixture
        .expect
        .clone()
        .expect("the outcome is recorded as the expectation");
    assert_eq!(expect.result, "Success");
    let expected_at = ms(expect.activity.as_deref().unwrap());
    assert!(expected_at <= server_activity, "{expected_at} vs {server_activity}");

    // With the server gone, the recording replays to the same outcome, twice.
    for _ in 0..2 {
        let (code, replay) = cli::run(
            &["probe", "test", "jupyter", "--fixture", recorded.to_str().unwrap()],
            dir.path(),
        );
        assert_eq!(code, 0, "{replay}");
        assert!(replay.contains("expect     Success ✔"), "{replay}");
    }

    // Replay really answers from the recording: altering it changes the outcome.
    let text = std::fs::read_to_string(&recorded).unwrap();
    std::fs::write(&recorded, text.replace("status: 200", "status: 500")).unwrap();
    let (code, altered) = cli::run(
        &["probe", "test", "jupyter", "--fixture", recorded.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 1, "{altered}");
    assert!(
        altered.contains("MISMATCH   result: expected Success, got Failure"),
        "{altered}"
    );
}
