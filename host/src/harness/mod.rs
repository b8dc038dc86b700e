//! The probe harness: runs one probe in isolation against a fixture that
//! describes the workspace, scripted exec and HTTP replies and the clock,
//! and checks the outcome against what the fixture expects.

use async_trait::async_trait;
pub use probe_fixture::{ExecReply, Expectation, Fixture, FixtureWorkspace, HttpReply, Outcome};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use workspace_culler_engine::contract::ProbeActivity;
use workspace_culler_engine::{
    Capabilities, Evaluation, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, Limits, LoadedProbe, Port,
    ProbeEngine, ProbeOutcome, ProbeRequest, ReadMemory, Workspace,
};

/// The fixture's view of an outcome.
pub fn outcome_of(outcome: &ProbeOutcome) -> Outcome {
    match outcome {
        ProbeOutcome::Success(ProbeActivity::ActiveNow) => Outcome::ActiveNow,
        ProbeOutcome::Success(ProbeActivity::Idle) => Outcome::Idle,
        ProbeOutcome::Success(ProbeActivity::Unknown) => Outcome::Unknown,
        ProbeOutcome::Success(ProbeActivity::LastAt(ms)) => Outcome::LastAt(*ms),
        ProbeOutcome::Failure(m) => Outcome::Failure(m.clone()),
        ProbeOutcome::Timeout(m) => Outcome::Timeout(m.clone()),
    }
}

/// The WIT workspace a fixture describes.
pub fn workspace_of(fixture: &FixtureWorkspace) -> Workspace {
    Workspace {
        namespace: fixture.namespace.clone(),
        name: fixture.name.clone(),
        pod_name: fixture
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("{}-0", fixture.name)),
        pod_ip: fixture.pod_ip.clone(),
        container: fixture.container.clone(),
        ports: fixture
            .ports
            .iter()
            .map(|(id, n)| Port {
                id: id.clone(),
                number: *n,
            })
            .collect(),
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
    /// The fixture's deadline: how long a live HTTP call the deadline cut off is recorded to take.
    deadline: Duration,
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
            deadline: fixture.deadline(),
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
        fixture.expect = Some(Expectation::of(&outcome_of(outcome)));
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

    /// A live HTTP call starting: recorded at once as a reply that comes only after the whole
    /// deadline, so a call the deadline cuts off (its result never arrives) replays as one.
    /// The place of the reply, if this is the first call to its URL (the one replayed).
    fn record_http_start(&self, uri: &http::Uri) -> Option<usize> {
        let url = recorded_url(uri);
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if recorded.1.iter().any(|r| r.url == url) {
            return None;
        }
        recorded.1.push(HttpReply {
            url,
            delay_ms: u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX),
            ..HttpReply::default()
        });
        Some(recorded.1.len() - 1)
    }

    /// The reply of the live call recorded at `place` by [`Self::record_http_start`].
    fn record_http(&self, place: Option<usize>, uri: &http::Uri, result: &Result<HttpResponse, String>) {
        let Some(place) = place else {
            return;
        };
        let url = recorded_url(uri);
        let reply = match result {
            Ok(response) => {
                let text = String::from_utf8_lossy(&response.body).into_owned();
                // JSON bodies are kept as structure, so the fixture reads well (not `null`: a
                // fixture's body of null is no body at all).
                let body = match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(json) if !json.is_string() && !json.is_null() => json,
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
                    ..HttpReply::default()
                }
            }
            Err(e) => HttpReply {
                url,
                error: Some(e.clone()),
                ..HttpReply::default()
            },
        };
        if let Some(slot) = self.recorded.lock().unwrap_or_else(|p| p.into_inner()).1.get_mut(place) {
            *slot = reply;
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
    async fn exec(
        &self,
        _workspace: &Workspace,
        command: ExecCommand,
        output_memory: ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        let argv: Vec<String> = command.argv.iter().map(|a| abbreviate(a)).collect();
        self.record(format!("exec {argv:?} (timeout {}ms)", command.timeout_ms));
        if self.live.exec {
            let result = crate::transport::exec(command, self.exec_output_cap, &output_memory).await;
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
        delay(reply.delay_ms).await;
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
            let place = self.record_http_start(&uri);
            let result = crate::transport::http(request).await;
            self.record_http(place, &uri, &result);
            return result;
        }
        let Some(reply) = self.http.iter().find(|r| r.matches(&request.uri.to_string())) else {
            return Err(format!(
                "the fixture has no HTTP reply for {} {}",
                request.method, request.uri
            ));
        };
        delay(reply.delay_ms).await;
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

/// How a recorded reply names its URL: the path and query (replies are matched by URL, the
/// first reply to a URL being the one replayed).
fn recorded_url(uri: &http::Uri) -> String {
    uri.path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into())
}

/// A reply's scripted delay (none at all for 0: even a zero sleep waits for
/// the timer's next tick, a millisecond that would swamp a probe's own cost).
async fn delay(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
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
        workspace: workspace_of(&fixture.workspace),
        config: fixture.config_text(),
        deadline: fixture.deadline(),
        capabilities: capabilities.clone(),
        probe_name: probe_name.to_string(),
        // A fixture that sets the clock gets the same time on every replay; so does a live run,
        // which a recording replays at the time it started.
        frozen_clock: fixture.now.is_some() || live.exec || live.http,
    };
    let now_ms = fixture.now_ms().map_err(anyhow::Error::msg)?;
    let evaluation = engine.evaluate(probe, request, now_ms).await;
    let mismatches = fixture
        .expect
        .as_ref()
        .map(|e| e.mismatches(&outcome_of(&evaluation.outcome)))
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
            let last = workspace_culler_policy::record::next_last_activity(0, e.finished_at_ms, *activity);
            let when = chrono::DateTime::from_timestamp_millis(last)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
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
