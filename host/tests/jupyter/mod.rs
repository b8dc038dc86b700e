//! A real `jupyter-server` (from PyPI, installed by `scripts/ensure-jupyter`)
//! on loopback, for the tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use workspace_culler::transport as local;
use workspace_culler_engine::HttpRequest;

/// The token every test server requires.
pub const TOKEN: &str = "probe-test-token";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The bin directory of the test virtualenv, installing it on first use.
pub fn jupyter_bin() -> PathBuf {
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
pub struct Jupyter {
    base_path: String,
    child: Child,
    pub port: u16,
    pub bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Jupyter {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group the server was started in.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    workspace_culler_support::controlplane::free_port().unwrap()
}

impl Jupyter {
    /// A server serving under `base_path` with token [`TOKEN`].
    pub async fn start(base_path: &str) -> Jupyter {
        use std::os::unix::process::CommandExt;
        let bin = jupyter_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin.join("jupyter-server"))
            .args([
                "--no-browser",
                "--allow-root",
                // As in notebook images: requests arrive for the pod's IP, not localhost.
                "--ServerApp.allow_remote_access=True",
                "--ip=127.0.0.1",
                &format!("--port={port}"),
                "--port-retries=0",
                &format!("--IdentityProvider.token={TOKEN}"),
                &format!("--ServerApp.base_url={base_path}"),
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
            base_path: base_path.to_string(),
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

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.base_path)
    }

    pub async fn request(&self, method: &str, path: &str) -> Result<(u16, serde_json::Value), String> {
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
            response_body_cap: 16 << 20,
            response_memory: Default::default(),
        };
        let response = local::http(request).await?;
        let json = serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
        Ok((response.status, json))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        self.request("GET", path).await
    }

    /// `last_activity` of `/api/status` (which Jupyter does not track) in Unix ms.
    pub async fn last_activity(&self) -> i64 {
        let (_, status) = self.get("api/status").await.unwrap();
        ms(status["last_activity"].as_str().unwrap())
    }
}

pub fn ms(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp_millis()
}

impl Jupyter {
    /// Start a kernel and run `code` in it silently; returns once it is busy.
    pub async fn run_silent_cell(&self, code: &str) {
        let (status, kernel) = self.request("POST", "api/kernels").await.unwrap();
        assert_eq!(status, 201, "{kernel}");
        let kernel_id = kernel["id"].as_str().unwrap().to_string();
        let ran = Command::new(self.bin.join("python"))
            .arg(repo_root().join("tests/jupyter/run_silent_cell.py"))
            .args([&self.base(), TOKEN, &kernel_id, code])
            .status()
            .unwrap();
        assert!(ran.success(), "could not start the silent cell");
    }
}
