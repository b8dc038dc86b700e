//! The built-in Jupyter probe through the harness against a real
//! `jupyter-server` (from PyPI, installed by `scripts/ensure-jupyter`) on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use workspace_culler::builtin::builtin;
use workspace_culler::contract::ProbeActivity;
use workspace_culler::engine::{Allocation, EngineConfig, HttpRequest, LoadedProbe, ProbeEngine, ProbeOutcome};
use workspace_culler::harness::{self, Fixture, FixtureWorkspace, LiveMode};
use workspace_culler::transport as local;

const BASE_PATH: &str = "/workspace/connect/ns/ws/jupyterlab/";
const TOKEN: &str = "probe-test-token";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The bin directory of the test virtualenv, installing it on first use.
fn jupyter_bin() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/ensure-jupyter"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ensure-jupyter");
    assert!(
        out.status.success(),
        "scripts/ensure-jupyter failed: jupyter-server could not be installed"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A running jupyter-server, killed with its kernels when dropped.
struct Jupyter {
    child: Child,
    port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Jupyter {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group the server was started in.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Jupyter {
    async fn start() -> Jupyter {
        use std::os::unix::process::CommandExt;
        let bin = jupyter_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin.join("jupyter-server"))
            .args([
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                &format!("--port={port}"),
                "--port-retries=0",
                &format!("--IdentityProvider.token={TOKEN}"),
                &format!("--ServerApp.base_url={BASE_PATH}"),
                &format!("--ServerApp.root_dir={}", dir.path().display()),
            ])
            .env("JUPYTER_CONFIG_DIR", dir.path().join("config"))
            .env("JUPYTER_RUNTIME_DIR", dir.path().join("runtime"))
            .env("IPYTHONDIR", dir.path().join("ipython"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start jupyter-server");
        let jupyter = Jupyter {
            child,
            port,
            bin,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while jupyter.get("api/status").await.map(|(s, _)| s) != Ok(200) {
            assert!(
                Instant::now() < deadline,
                "jupyter-server did not come up on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        jupyter
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}{BASE_PATH}", self.port)
    }

    async fn request(&self, method: &str, path: &str) -> Result<(u16, serde_json::Value), String> {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("token {TOKEN}").parse().unwrap());
        let request = HttpRequest {
            method: method.parse().unwrap(),
            uri: format!("{}{path}", self.base()).parse().unwrap(),
            headers,
            body: if method == "POST" {
                r#"{"name":"python3"}"#.into()
            } else {
                Default::default()
            },
        };
        let response = local::http(request).await?;
        let json = serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
        Ok((response.status, json))
    }

    async fn get(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        self.request("GET", path).await
    }

    /// `last_activity` of `/api/status` (which Jupyter does not track) in Unix ms.
    async fn last_activity(&self) -> i64 {
        let (_, status) = self.get("api/status").await.unwrap();
        ms(status["last_activity"].as_str().unwrap())
    }
}

fn ms(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp_millis()
}

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
    let jupyter = Jupyter::start().await;
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
