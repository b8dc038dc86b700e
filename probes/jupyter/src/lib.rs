//! The built-in Jupyter probe: reads the Jupyter server's activity without
//! creating any itself.
//!
//! `GET <base>/api/status` gives `last_activity` (the server already folds
//! kernel and terminal activity into it) and is untracked by Jupyter. A cell
//! that runs silently does not move `last_activity`, so when kernels exist the
//! probe also lists them (`?no_track_activity=1`, so the listing is not
//! activity): a busy kernel means active now. Terminals are listed the same
//! way where the server has them.

use probe_sdk::activity::parse_rfc3339;
use probe_sdk::{Activity, Host, HttpRequest, HttpResponse, Probe, ProbeError, ProbeInfo, Reply, Workspace};
use serde::Deserialize;

/// `activityProbe.jupyter` of the WorkspaceKind, plus what the controller resolves.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JupyterConfig {
    /// Use `last_activity` (the only supported mode).
    #[serde(default = "yes")]
    pub last_activity: bool,
    /// Which of the kind's ports serves Jupyter.
    pub port_id: String,
    /// Jupyter's token, when the server requires one.
    #[serde(default)]
    pub token: Option<String>,
    /// Where Jupyter serves, unless `removePathPrefix`; `{namespace}`, `{name}`
    /// and `{portId}` are filled in.
    #[serde(default = "default_path_template")]
    pub path_template: String,
    /// The port serves at `/` (the kind's `httpProxy.removePathPrefix`).
    #[serde(default)]
    pub remove_path_prefix: bool,
}

fn yes() -> bool {
    true
}

fn default_path_template() -> String {
    "/workspace/connect/{namespace}/{name}/{portId}/".into()
}

#[derive(Deserialize)]
struct Status {
    last_activity: Option<String>,
    #[serde(default)]
    kernels: Option<u64>,
}

#[derive(Deserialize)]
struct Kernel {
    #[serde(default)]
    execution_state: Option<String>,
    #[serde(default)]
    last_activity: Option<String>,
}

#[derive(Deserialize)]
struct Terminal {
    #[serde(default)]
    last_activity: Option<String>,
}

fn failure(message: String) -> ProbeError {
    ProbeError::Failure(format!("Jupyter probe failed: {message}"))
}

/// The Jupyter probe.
pub struct Jupyter;

impl JupyterConfig {
    fn base_url(&self, workspace: &Workspace) -> Result<String, ProbeError> {
        let origin = workspace.base_url(&self.port_id).map_err(|e| failure(e.to_string()))?;
        if self.remove_path_prefix {
            return Ok(format!("{origin}/"));
        }
        let path = self
            .path_template
            .replace("{namespace}", &workspace.namespace)
            .replace("{name}", &workspace.name)
            .replace("{portId}", &self.port_id);
        let path = path.trim_matches('/');
        Ok(if path.is_empty() {
            format!("{origin}/")
        } else {
            format!("{origin}/{path}/")
        })
    }

    fn get(&self, host: &dyn Host, url: &str) -> Result<HttpResponse, ProbeError> {
        let mut request = HttpRequest::get(url);
        if let Some(token) = self.token.as_deref().filter(|t| !t.is_empty()) {
            request = request.header("Authorization", format!("token {token}"));
        }
        let response = host.http(&request).map_err(|e| failure(e.to_string()))?;
        match response.status {
            200 => Ok(response),
            403 if self.token.is_none() => Err(failure(format!("HTTP 403 from {url} (a token is required)"))),
            403 => {
                let said: String = String::from_utf8_lossy(&response.body).chars().take(160).collect();
                let said = if said.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", said.trim())
                };
                Err(failure(format!("HTTP 403 from {url} (the token was refused{said})")))
            }
            status => Err(failure(format!("HTTP {status} from {url}"))),
        }
    }
}

fn json<T: serde::de::DeserializeOwned>(url: &str, response: &HttpResponse) -> Result<T, ProbeError> {
    serde_json::from_slice(&response.body).map_err(|e| failure(format!("unexpected answer from {url}: {e}")))
}

fn timestamp(url: &str, value: &str) -> Result<i64, ProbeError> {
    parse_rfc3339(value).ok_or_else(|| failure(format!("unparseable last_activity {value:?} from {url}")))
}

impl Probe for Jupyter {
    const INFO: ProbeInfo = ProbeInfo {
        name: "jupyter",
        version: env!("CARGO_PKG_VERSION"),
        description: "Reads a Jupyter server's last activity and busy kernels, without creating activity",
        capabilities: &["http"],
    };

    fn probe(host: &dyn Host, workspace: &Workspace, config: &str) -> Result<Reply, ProbeError> {
        let config: JupyterConfig = probe_sdk::parse_config("Jupyter", config)?;
        if !config.last_activity {
            return Err(failure(
                "lastActivity must be true (it is the only supported mode)".into(),
            ));
        }
        let base = config.base_url(workspace)?;

        let url = format!("{base}api/status");
        let status: Status = json(&url, &config.get(host, &url)?)?;
        let mut latest = match status.last_activity.as_deref() {
            Some(ts) => Some(timestamp(&url, ts)?),
            None => None,
        };

        if status.kernels != Some(0) {
            let url = format!("{base}api/kernels?no_track_activity=1");
            let kernels: Vec<Kernel> = json(&url, &config.get(host, &url)?)?;
            if kernels.iter().any(|k| k.execution_state.as_deref() == Some("busy")) {
                return Ok(Activity::active_now().into());
            }
            for ts in kernels.iter().filter_map(|k| k.last_activity.as_deref()) {
                latest = latest.max(Some(timestamp(&url, ts)?));
            }
        }

        // Terminals are optional in Jupyter; a server without them answers 404.
        let url = format!("{base}api/terminals?no_track_activity=1");
        match config.get(host, &url) {
            Ok(response) => {
                let terminals: Vec<Terminal> = json(&url, &response)?;
                for ts in terminals.iter().filter_map(|t| t.last_activity.as_deref()) {
                    latest = latest.max(Some(timestamp(&url, ts)?));
                }
            }
            Err(ProbeError::Failure(m)) if m.contains("HTTP 404") => {}
            Err(e) => return Err(e),
        }

        Ok(latest.map_or(Activity::unknown(), Activity::last_at).into())
    }
}

probe_sdk::export_probe!(Jupyter);

#[cfg(test)]
mod tests {
    use super::*;
    use probe_sdk::testing::FakeHost;

    const BASE: &str = "http://10.0.0.7:8888/workspace/connect/ns/ws/jupyterlab/";

    fn workspace() -> Workspace {
        Workspace {
            namespace: "ns".into(),
            name: "ws".into(),
            pod_ip: "10.0.0.7".into(),
            ports: vec![("jupyterlab".into(), 8888)],
            ..Workspace::default()
        }
    }

    fn run(host: &FakeHost, config: &str) -> Result<Reply, ProbeError> {
        Jupyter::probe(host, &workspace(), config)
    }

    const CONFIG: &str = r#"{"lastActivity":true,"portId":"jupyterlab"}"#;

    #[test]
    fn takes_the_latest_of_status_kernels_and_terminals() {
        let host = FakeHost::new()
            .http_reply(
                &format!("{BASE}api/status"),
                200,
                r#"{"last_activity":"2026-01-01T00:00:00Z","kernels":1}"#,
            )
            .http_reply(
                &format!("{BASE}api/kernels?no_track_activity=1"),
                200,
                r#"[{"execution_state":"idle","last_activity":"2026-01-01T00:05:00.5+00:00"}]"#,
            )
            .http_reply(&format!("{BASE}api/terminals?no_track_activity=1"), 200, "[]");
        let reply = run(&host, CONFIG).unwrap();
        assert_eq!(reply.into_json(), r#"{"last_activity":"2026-01-01T00:05:00.500Z"}"#);
        assert!(
            host.requests()
                .iter()
                .skip(1)
                .all(|r| r.url.ends_with("no_track_activity=1"))
        );
    }

    #[test]
    fn a_busy_kernel_is_activity_now() {
        let host = FakeHost::new()
            .http_reply(
                &format!("{BASE}api/status"),
                200,
                r#"{"last_activity":"2026-01-01T00:00:00Z","kernels":1}"#,
            )
            .http_reply(
                &format!("{BASE}api/kernels?no_track_activity=1"),
                200,
                r#"[{"execution_state":"busy"}]"#,
            );
        assert_eq!(run(&host, CONFIG), Ok(Activity::active_now().into()));
    }

    #[test]
    fn reports_403_with_and_without_token_and_sends_the_token() {
        let host = FakeHost::new().http_reply(&format!("{BASE}api/status"), 403, "");
        let err = run(&host, CONFIG).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("Jupyter probe failed: HTTP 403 from {BASE}api/status (a token is required)")
        );
        let host = FakeHost::new().http_reply(&format!("{BASE}api/status"), 403, "");
        let err = run(&host, r#"{"portId":"jupyterlab","token":"t0k"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("(the token was refused)"), "{err}");
        assert_eq!(
            host.requests()[0].headers,
            [("Authorization".to_string(), "token t0k".to_string())]
        );
    }

    #[test]
    fn unresolvable_port_and_bad_answers_are_failures() {
        let err = run(&FakeHost::new(), r#"{"portId":"vscode"}"#).unwrap_err().to_string();
        assert!(
            err.contains(r#"port id "vscode" does not resolve"#) && err.contains("jupyterlab"),
            "{err}"
        );
        let host = FakeHost::new().http_reply(&format!("{BASE}api/status"), 500, "");
        assert_eq!(
            run(&host, CONFIG).unwrap_err().to_string(),
            format!("Jupyter probe failed: HTTP 500 from {BASE}api/status")
        );
        let host = FakeHost::new().http_reply(&format!("{BASE}api/status"), 200, "<html>");
        assert!(
            run(&host, CONFIG)
                .unwrap_err()
                .to_string()
                .contains("unexpected answer")
        );
    }

    #[test]
    fn remove_path_prefix_serves_at_root_and_missing_terminals_are_fine() {
        let host = FakeHost::new()
            .http_reply(
                "http://10.0.0.7:8888/api/status",
                200,
                r#"{"last_activity":null,"kernels":0}"#,
            )
            .http_reply("http://10.0.0.7:8888/api/terminals?no_track_activity=1", 404, "");
        let reply = run(&host, r#"{"portId":"jupyterlab","removePathPrefix":true}"#);
        assert_eq!(reply, Ok(Activity::unknown().into()));
        assert_eq!(host.requests().len(), 2, "no kernel listing when there are no kernels");
    }
}
