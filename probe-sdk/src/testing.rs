//! Native test doubles: unit-test probe logic with plain `cargo test`.
//!
//! ```
//! use probe_sdk::testing::FakeHost;
//! use probe_sdk::{Command, Host, HttpRequest};
//!
//! let host = FakeHost::new()
//!     .exec_reply(0, "hello", "")
//!     .http_reply("http://10.0.0.7:8888/api/status", 200, r#"{"ok":true}"#);
//! assert_eq!(host.exec(&Command::new(["echo"])).unwrap().stdout, b"hello");
//! assert_eq!(host.http(&HttpRequest::get("http://10.0.0.7:8888/api/status")).unwrap().status, 200);
//! assert_eq!(host.commands().len(), 1);
//! ```

use crate::host::{Command, ExecError, ExecOutput, Host, HttpError, HttpRequest, HttpResponse, LogLevel};
use std::cell::RefCell;
use std::collections::VecDeque;

/// A scripted [`Host`]: exec replies are consumed in order, HTTP replies are
/// matched by URL, query string included (a reply URL starting with `/`
/// matches the request's path and query; a trailing `*` matches any rest).
#[derive(Default)]
pub struct FakeHost {
    exec_replies: RefCell<VecDeque<Result<ExecOutput, ExecError>>>,
    http_replies: Vec<(String, Result<HttpResponse, HttpError>)>,
    commands: RefCell<Vec<Command>>,
    requests: RefCell<Vec<HttpRequest>>,
    logs: RefCell<Vec<(LogLevel, String)>>,
}

impl FakeHost {
    /// A host with no scripted replies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue the reply to the next exec.
    pub fn exec_reply(self, exit_code: i32, stdout: &str, stderr: &str) -> Self {
        self.exec_result(Ok(ExecOutput {
            exit_code,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }))
    }

    /// Queue an exec result, e.g. `Err(ExecError::Timeout)`.
    pub fn exec_result(self, result: Result<ExecOutput, ExecError>) -> Self {
        self.exec_replies.borrow_mut().push_back(result);
        self
    }

    /// Answer requests to `url` (a trailing `*` matches any suffix).
    pub fn http_reply(self, url: &str, status: u16, body: &str) -> Self {
        self.http_result(
            url,
            Ok(HttpResponse {
                status,
                body: body.as_bytes().to_vec(),
            }),
        )
    }

    /// Answer requests to `url` with a result, e.g. a connection error.
    pub fn http_result(mut self, url: &str, result: Result<HttpResponse, HttpError>) -> Self {
        self.http_replies.push((url.to_string(), result));
        self
    }

    /// The commands the probe ran, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.commands.borrow().clone()
    }

    /// The HTTP requests the probe sent, in order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.borrow().clone()
    }

    /// The lines the probe logged.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }
}

impl Host for FakeHost {
    fn exec(&self, command: &Command) -> Result<ExecOutput, ExecError> {
        self.commands.borrow_mut().push(command.clone());
        self.exec_replies.borrow_mut().pop_front().unwrap_or_else(|| {
            Err(ExecError::Failed(format!(
                "no scripted reply for exec {:?}",
                command.argv
            )))
        })
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.requests.borrow_mut().push(request.clone());
        self.http_replies
            .iter()
            .find(|(url, _)| {
                let subject = if url.starts_with('/') {
                    path_and_query(&request.url)
                } else {
                    &request.url
                };
                match url.strip_suffix('*') {
                    Some(prefix) => subject.starts_with(prefix),
                    None => subject == url,
                }
            })
            .map(|(_, reply)| reply.clone())
            .unwrap_or_else(|| {
                Err(HttpError(format!(
                    "no scripted reply for {} {}",
                    request.method, request.url
                )))
            })
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

/// The path and query of an absolute URL (`/` when it has none).
fn path_and_query(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
}

#[cfg(feature = "fixtures")]
pub use fixtures::{run_fixture, run_fixtures};

/// The harness's fixture files, run natively against a probe's logic: the
/// cases `workspace-culler probe test` runs against the compiled component.
#[cfg(feature = "fixtures")]
mod fixtures {
    use super::FakeHost;
    use crate::host::{ExecError, ExecOutput, HttpError, HttpResponse};
    use crate::{Activity, Probe, ProbeError, Reply, Workspace};
    use probe_fixture::{Fixture, Outcome};
    use std::path::Path;

    /// Run one fixture against `P` with a [`FakeHost`] scripted from it; the
    /// differences from what it expects (empty: the case passes).
    ///
    /// Natively there is no clock and no deadline: `delayMs` is ignored, and
    /// a result the probe relays as JSON text is read leniently (the host's
    /// validator, and its messages, apply only in the harness).
    pub fn run_fixture<P: Probe>(fixture: &Fixture) -> Vec<String> {
        let mut host = FakeHost::new();
        for reply in &fixture.exec {
            host = host.exec_result(if reply.timeout {
                Err(ExecError::Timeout)
            } else if let Some(e) = &reply.error {
                Err(ExecError::Failed(e.clone()))
            } else {
                Ok(ExecOutput {
                    exit_code: reply.exit_code,
                    stdout: reply.stdout.clone().into_bytes(),
                    stderr: reply.stderr.clone().into_bytes(),
                })
            });
        }
        for reply in &fixture.http {
            let result = match &reply.error {
                Some(e) => Err(HttpError(e.clone())),
                None => Ok(HttpResponse {
                    status: reply.status,
                    body: reply.body_bytes(),
                }),
            };
            host = host.http_result(&reply.url, result);
        }
        let ws = &fixture.workspace;
        let workspace = Workspace {
            namespace: ws.namespace.clone(),
            name: ws.name.clone(),
            pod_name: ws.pod_name.clone().unwrap_or_else(|| format!("{}-0", ws.name)),
            pod_ip: ws.pod_ip.clone(),
            container: ws.container.clone(),
            ports: ws.ports.iter().map(|(id, n)| (id.clone(), *n)).collect(),
        };
        let outcome = match P::probe(&host, &workspace, &fixture.config_text()) {
            Ok(Reply::Activity(activity)) => outcome_of(activity),
            Ok(Reply::Json(text)) => read_json(&text),
            Err(ProbeError::Failure(m)) => Outcome::Failure(m),
            Err(ProbeError::Timeout(m)) => Outcome::Timeout(m),
        };
        match &fixture.expect {
            Some(expect) => expect.mismatches(&outcome),
            None => Vec::new(),
        }
    }

    /// Run every fixture of `dir` against `P`; `Err` lists each failing case
    /// with its differences (also when the directory holds no fixture, or a fixture
    /// without `expect`, which would check nothing).
    ///
    /// ```ignore
    /// #[test]
    /// fn the_harness_fixtures_pass_natively() {
    ///     probe_sdk::testing::run_fixtures::<MyProbe>(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")).unwrap();
    /// }
    /// ```
    pub fn run_fixtures<P: Probe>(dir: impl AsRef<Path>) -> Result<usize, String> {
        let cases = Fixture::from_dir(dir.as_ref())?;
        let mut report = String::new();
        for (path, fixture) in &cases {
            if fixture.expect.is_none() {
                report.push_str(&format!(
                    "{}:\n  no `expect`: nothing would be compared\n",
                    path.display()
                ));
                continue;
            }
            let mismatches = run_fixture::<P>(fixture);
            if !mismatches.is_empty() {
                report.push_str(&format!("{}:\n", path.display()));
                for m in mismatches {
                    report.push_str(&format!("  {m}\n"));
                }
            }
        }
        if report.is_empty() {
            Ok(cases.len())
        } else {
            Err(report)
        }
    }

    fn outcome_of(activity: Activity) -> Outcome {
        match activity {
            Activity::ActiveNow => Outcome::ActiveNow,
            Activity::Idle => Outcome::Idle,
            Activity::LastAt(ms) => Outcome::LastAt(ms),
            Activity::Unknown => Outcome::Unknown,
        }
    }

    fn read_json(text: &str) -> Outcome {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return Outcome::Failure(format!("invalid probe result: not JSON: {e}")),
        };
        match (value.get("has_activity"), value.get("last_activity")) {
            (Some(serde_json::Value::Bool(true)), _) => Outcome::ActiveNow,
            (Some(serde_json::Value::Bool(false)), _) => Outcome::Idle,
            (None, Some(serde_json::Value::Null)) => Outcome::Unknown,
            (None, Some(serde_json::Value::String(t))) => match crate::activity::parse_rfc3339(t) {
                Some(ms) => Outcome::LastAt(ms),
                None => Outcome::Failure(format!("invalid probe result: {t:?} is not an RFC 3339 time")),
            },
            _ => Outcome::Failure(format!("invalid probe result: {text}")),
        }
    }

    #[cfg(test)]
    mod tests {
        use crate::{Host, Probe, ProbeError, ProbeInfo, Reply, Workspace};

        /// Always idle.
        struct Idle;

        impl Probe for Idle {
            const INFO: ProbeInfo = ProbeInfo {
                name: "idle",
                version: "0",
                description: "always idle",
                capabilities: &[],
            };

            fn probe(_: &dyn Host, _: &Workspace, _: &str) -> Result<Reply, ProbeError> {
                Ok(Reply::Activity(crate::Activity::Idle))
            }
        }

        #[test]
        fn a_fixture_without_expect_fails_the_folder_as_it_checks_nothing() {
            let dir = std::env::temp_dir().join(format!("probe-sdk-fixtures-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("01-idle.yaml"), "expect: {result: Success, activity: idle}\n").unwrap();
            assert_eq!(super::run_fixtures::<Idle>(&dir), Ok(1));
            std::fs::write(dir.join("02-unchecked.yaml"), "workspace: {podIp: 10.0.0.7}\n").unwrap();
            let report = super::run_fixtures::<Idle>(&dir).unwrap_err();
            assert!(
                report.contains("02-unchecked.yaml") && report.contains("no `expect`"),
                "{report}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
