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
/// matched by URL (query string included, or by path prefix with `*`).
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
            .find(|(url, _)| match url.strip_suffix('*') {
                Some(prefix) => request.url.starts_with(prefix),
                None => *url == request.url,
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
