//! The probe harness: runs one probe in isolation against a fixture that
//! describes the workspace, scripted exec and HTTP replies and the clock,
//! and checks the outcome against what the fixture expects.

use crate::contract::ProbeActivity;
use crate::engine::{
    Capabilities, Evaluation, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, Limits, LoadedProbe, Port,
    ProbeEngine, ProbeOutcome, ProbeRequest, Workspace,
};
use anyhow::Context;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fixture: everything a probe sees, and what should come of it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    /// What the case is about (shown in reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The workspace probed.
    #[serde(default)]
    pub workspace: FixtureWorkspace,
    /// The probe's config: a JSON object, or JSON text.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The clock at the probe's start (RFC 3339); default: the real time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// Deadline of the whole evaluation; default: the config's
    /// `timeoutSeconds` + 5 s, or 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Replies to exec calls, consumed in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<ExecReply>,
    /// Replies to HTTP requests, matched by URL or path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpReply>,
    /// What should come of it.
    #[serde(default)]
    pub expect: Option<Expectation>,
}

/// The workspace of a fixture.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureWorkspace {
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Pod name; default `<name>-0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Pod IP.
    #[serde(default = "default_pod_ip")]
    pub pod_ip: String,
    /// Container.
    #[serde(default = "default_container")]
    pub container: String,
    /// Port id → number.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_name() -> String {
    "workspace".into()
}
fn default_pod_ip() -> String {
    "127.0.0.1".into()
}
fn default_container() -> String {
    "main".into()
}

impl Default for FixtureWorkspace {
    fn default() -> Self {
        FixtureWorkspace {
            namespace: default_namespace(),
            name: default_name(),
            pod_name: None,
            pod_ip: default_pod_ip(),
            container: default_container(),
            ports: BTreeMap::new(),
        }
    }
}

impl FixtureWorkspace {
    fn to_wit(&self) -> Workspace {
        Workspace {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            pod_name: self.pod_name.clone().unwrap_or_else(|| format!("{}-0", self.name)),
            pod_ip: self.pod_ip.clone(),
            container: self.container.clone(),
            ports: self
                .ports
                .iter()
                .map(|(id, n)| Port {
                    id: id.clone(),
                    number: *n,
                })
                .collect(),
        }
    }
}

/// A scripted reply to one exec.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecReply {
    /// Exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// Standard output.
    #[serde(default)]
    pub stdout: String,
    /// Standard error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Wait this long before replying (a timeout still applies).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Reply that the command timed out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timeout: bool,
    /// Reply that the command could not be started (or its connection broke), with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A scripted reply to HTTP requests.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpReply {
    /// Full URL, or a path with query (`/api/status`); a trailing `*` matches any rest.
    pub url: String,
    /// Status code.
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Body: text, or any JSON value (sent as JSON).
    #[serde(default)]
    pub body: serde_json::Value,
    /// Wait this long before replying.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Fail the request with this transport error instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn ok_status() -> u16 {
    200
}

impl HttpReply {
    fn matches(&self, uri: &http::Uri) -> bool {
        let full = uri.to_string();
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let subject = if self.url.starts_with('/') { path } else { full.as_str() };
        match self.url.strip_suffix('*') {
            Some(prefix) => subject.starts_with(prefix),
            None => subject == self.url,
        }
    }

    fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }
}

/// What a fixture expects.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    /// `Success`, `Failure` or `Timeout` (any case).
    pub result: String,
    /// On success: `active-now`, `idle`, `unknown`, or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// The message (failure) contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_contains: Option<String>,
}

impl Expectation {
    /// The expectation that exactly this outcome meets.
    pub fn of(outcome: &ProbeOutcome) -> Self {
        let mut expect = Expectation {
            result: outcome.result().to_string(),
            ..Expectation::default()
        };
        match outcome {
            ProbeOutcome::Success(activity) => {
                expect.activity = Some(match activity {
                    ProbeActivity::ActiveNow => "active-now".into(),
                    ProbeActivity::Idle => "idle".into(),
                    ProbeActivity::Unknown => "unknown".into(),
                    ProbeActivity::LastAt(ms) => chrono::DateTime::from_timestamp_millis(*ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                        .unwrap_or_default(),
                })
            }
            ProbeOutcome::Failure(m) | ProbeOutcome::Timeout(m) => expect.message_contains = Some(m.clone()),
        }
        expect
    }

    /// Differences between this expectation and an outcome (empty: it holds).
    pub fn mismatches(&self, outcome: &ProbeOutcome) -> Vec<String> {
        let mut out = Vec::new();
        if !self.result.eq_ignore_ascii_case(outcome.result()) {
            out.push(format!("result: expected {}, got {}", self.result, outcome.result()));
        }
        if let (Some(want), ProbeOutcome::Success(activity)) = (&self.activity, outcome) {
            let holds = match (want.to_ascii_lowercase().as_str(), activity) {
                ("active-now", ProbeActivity::ActiveNow) => true,
                ("idle", ProbeActivity::Idle) => true,
                ("unknown", ProbeActivity::Unknown) => true,
                (_, ProbeActivity::LastAt(ms)) => {
                    chrono::DateTime::parse_from_rfc3339(want).map(|t| t.timestamp_millis()) == Ok(*ms)
                }
                _ => false,
            };
            if !holds {
                out.push(format!("activity: expected {want}, got {activity}"));
            }
        }
        if let Some(needle) = &self.message_contains {
            match outcome {
                ProbeOutcome::Failure(m) | ProbeOutcome::Timeout(m) if m.contains(needle.as_str()) => {}
                ProbeOutcome::Failure(m) | ProbeOutcome::Timeout(m) => {
                    out.push(format!("message: expected it to contain {needle:?}, got {m:?}"))
                }
                ProbeOutcome::Success(_) => out.push(format!("message: expected one containing {needle:?}, got none")),
            }
        }
        out
    }
}

impl Fixture {
    /// Read a fixture from YAML or JSON.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read fixture {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("fixture {} is malformed", path.display()))
    }

    /// The config text handed to the probe.
    pub fn config_text(&self) -> String {
        match &self.config {
            serde_json::Value::Null => "{}".into(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The evaluation's deadline.
    pub fn deadline(&self) -> Duration {
        if let Some(ms) = self.deadline_ms {
            return Duration::from_millis(ms);
        }
        let timeout = serde_json::from_str::<serde_json::Value>(&self.config_text())
            .ok()
            .and_then(|c| c.get("timeoutSeconds").and_then(|t| t.as_u64()));
        match timeout {
            Some(seconds) => Duration::from_secs(seconds + 5),
            None => Duration::from_secs(30),
        }
    }

    /// The clock at the probe's start, in Unix ms.
    pub fn now_ms(&self) -> anyhow::Result<i64> {
        match &self.now {
            Some(t) => Ok(chrono::DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("fixture `now` {t:?} is not an RFC 3339 time"))?
                .timestamp_millis()),
            None => Ok(chrono::Utc::now().timestamp_millis()),
        }
    }
}

/// Where exec and HTTP calls go.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveMode {
    /// Exec runs local processes instead of scripted replies.
    pub exec: bool,
    /// HTTP goes to the real address instead of scripted replies.
    pub http: bool,
}

/// Capabilities from a fixture (scripted), or live, per kind of call.
pub struct FixtureCapabilities {
    exec: Mutex<VecDeque<ExecReply>>,
    http: Vec<HttpReply>,
    live: LiveMode,
    exec_output_cap: usize,
    calls: Mutex<Vec<String>>,
    /// Replies of live calls, in order, to write into a fixture that replays them.
    recorded: Mutex<(Vec<ExecReply>, Vec<HttpReply>)>,
}

impl FixtureCapabilities {
    /// Capabilities answering from `fixture`, live where `live` says.
    pub fn new(fixture: &Fixture, live: LiveMode) -> Self {
        FixtureCapabilities {
            exec: Mutex::new(fixture.exec.iter().cloned().collect()),
            http: fixture.http.clone(),
            live,
            exec_output_cap: Limits::default().exec_output_bytes,
            calls: Mutex::default(),
            recorded: Mutex::default(),
        }
    }

    /// A fixture that replays this run: `base` with the replies of the live
    /// calls in place of its scripted ones, the clock of the run, and the
    /// outcome as its expectation.
    pub fn recording(&self, base: &Fixture, now_ms: i64, outcome: &ProbeOutcome) -> Fixture {
        let (exec, http) = self.recorded.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut fixture = base.clone();
        if self.live.exec {
            fixture.exec = exec;
        }
        if self.live.http {
            fixture.http = http;
        }
        fixture.now = chrono::DateTime::from_timestamp_millis(now_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        fixture.expect = Some(Expectation::of(outcome));
        fixture
    }

    fn record_exec(&self, result: &Result<ExecOutput, ExecError>) {
        let reply = match result {
            Ok(out) => ExecReply {
                exit_code: out.exit_code,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                ..ExecReply::default()
            },
            Err(ExecError::Timeout) => ExecReply {
                timeout: true,
                ..ExecReply::default()
            },
            Err(ExecError::Refused(e) | ExecError::Failed(e)) => ExecReply {
                error: Some(e.clone()),
                ..ExecReply::default()
            },
        };
        self.recorded.lock().unwrap_or_else(|p| p.into_inner()).0.push(reply);
    }

    fn record_http(&self, uri: &http::Uri, result: &Result<HttpResponse, String>) {
        let url = uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        let reply = match result {
            Ok(response) => {
                let text = String::from_utf8_lossy(&response.body).into_owned();
                // JSON bodies are kept as structure, so the fixture reads well.
                let body = match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(json) if !json.is_string() => json,
                    _ => serde_json::Value::String(text),
                };
                let headers = response
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                HttpReply {
                    url,
                    status: response.status,
                    headers,
                    body,
                    delay_ms: 0,
                    error: None,
                }
            }
            Err(e) => HttpReply {
                url,
                status: ok_status(),
                headers: BTreeMap::new(),
                body: serde_json::Value::Null,
                delay_ms: 0,
                error: Some(e.clone()),
            },
        };
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        // Replies are matched by URL: the first reply to a URL is the one replayed.
        if !recorded.1.iter().any(|r| r.url == reply.url) {
            recorded.1.push(reply);
        }
    }

    /// Every call the probe made, in order, as one line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, line: String) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

#[async_trait]
impl Capabilities for FixtureCapabilities {
    async fn exec(&self, _workspace: &Workspace, command: ExecCommand) -> Result<ExecOutput, ExecError> {
        let argv: Vec<String> = command.argv.iter().map(|a| abbreviate(a)).collect();
        self.record(format!("exec {argv:?} (timeout {}ms)", command.timeout_ms));
        if self.live.exec {
            let result = crate::transport::exec(command, self.exec_output_cap).await;
            self.record_exec(&result);
            return result;
        }
        let reply = self.exec.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(reply) = reply else {
            return Err(ExecError::Failed(format!(
                "the fixture has no exec reply left for {:?}",
                command.argv
            )));
        };
        let timeout = Duration::from_millis(u64::from(command.timeout_ms));
        if reply.timeout || Duration::from_millis(reply.delay_ms) > timeout {
            tokio::time::sleep(timeout.min(Duration::from_millis(reply.delay_ms))).await;
            return Err(ExecError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(reply.delay_ms)).await;
        if let Some(error) = reply.error {
            return Err(ExecError::Failed(error));
        }
        Ok(ExecOutput {
            exit_code: reply.exit_code,
            stdout: reply.stdout.into_bytes(),
            stderr: reply.stderr.into_bytes(),
        })
    }

    async fn http(&self, _workspace: &Workspace, request: HttpRequest) -> Result<HttpResponse, String> {
        self.record(format!("http {} {}", request.method, request.uri));
        if self.live.http {
            let uri = request.uri.clone();
            let result = crate::transport::http(request).await;
            self.record_http(&uri, &result);
            return result;
        }
        let Some(reply) = self.http.iter().find(|r| r.matches(&request.uri)) else {
            return Err(format!(
                "the fixture has no HTTP reply for {} {}",
                request.method, request.uri
            ));
        };
        tokio::time::sleep(Duration::from_millis(reply.delay_ms)).await;
        if let Some(error) = &reply.error {
            return Err(error.clone());
        }
        Ok(HttpResponse {
            status: reply.status,
            headers: reply.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            body: reply.body_bytes().into(),
        })
    }
}

/// An argument short enough for a one-line report.
fn abbreviate(arg: &str) -> String {
    let first = arg.lines().next().unwrap_or("");
    if first.len() == arg.len() && arg.len() <= 60 {
        arg.to_string()
    } else {
        format!("{}…", first.chars().take(40).collect::<String>())
    }
}

/// The result of running one fixture.
#[derive(Debug)]
pub struct CaseReport {
    /// The evaluation.
    pub evaluation: Evaluation,
    /// The calls the probe made.
    pub calls: Vec<String>,
    /// Expectation mismatches (empty when it holds or there is none).
    pub mismatches: Vec<String>,
    /// A fixture that replays the run (its live calls recorded).
    pub recording: Fixture,
}

/// Run a loaded probe against a fixture.
pub async fn run_case(
    engine: &ProbeEngine,
    probe: &LoadedProbe,
    probe_name: &str,
    fixture: &Fixture,
    live: LiveMode,
) -> anyhow::Result<CaseReport> {
    let capabilities = Arc::new(FixtureCapabilities::new(fixture, live));
    let request = ProbeRequest {
        workspace: fixture.workspace.to_wit(),
        config: fixture.config_text(),
        deadline: fixture.deadline(),
        capabilities: capabilities.clone(),
        probe_name: probe_name.to_string(),
    };
    let now_ms = fixture.now_ms()?;
    let evaluation = engine.evaluate(probe, request, now_ms).await;
    let mismatches = fixture
        .expect
        .as_ref()
        .map(|e| e.mismatches(&evaluation.outcome))
        .unwrap_or_default();
    let recording = capabilities.recording(fixture, now_ms, &evaluation.outcome);
    Ok(CaseReport {
        evaluation,
        calls: capabilities.calls(),
        mismatches,
        recording,
    })
}

/// A report a person reads at a glance.
pub fn render(probe_label: &str, fixture: &Fixture, report: &CaseReport) -> String {
    let e = &report.evaluation;
    let ws = &fixture.workspace;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    line("probe", probe_label.to_string());
    if let Some(d) = &fixture.description {
        line("case", d.clone());
    }
    line(
        "workspace",
        format!("{}/{} (pod IP {})", ws.namespace, ws.name, ws.pod_ip),
    );
    line(
        "result",
        format!("{} in {}ms", e.outcome.result(), e.finished_at_ms - e.started_at_ms),
    );
    match &e.outcome {
        ProbeOutcome::Success(activity) => {
            let last = activity.next_last_activity(0, e.started_at_ms);
            let when = chrono::DateTime::from_timestamp(last, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            line("activity", format!("{activity} (lastActivity would be {when})"));
        }
        ProbeOutcome::Failure(m) | ProbeOutcome::Timeout(m) => line("message", m.clone()),
    }
    if let Some(raw) = &e.raw_output {
        line("output", raw.chars().take(300).collect());
    }
    for call in &report.calls {
        line("call", call.clone());
    }
    for (level, message) in &e.logs {
        line("log", format!("{level:?} {message}"));
    }
    match (&fixture.expect, report.mismatches.is_empty()) {
        (None, _) => {}
        (Some(x), true) => line("expect", format!("{} ✔", x.result)),
        (Some(_), false) => {
            for m in &report.mismatches {
                line("MISMATCH", m.clone());
            }
        }
    }
    out
}
