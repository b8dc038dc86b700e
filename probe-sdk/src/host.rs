//! The capabilities a probe uses, behind one trait so probe logic can be
//! tested natively with [`crate::testing::FakeHost`].

use crate::bindings::workspace_culler::probe::{exec, log};

/// A command to run in the workspace's main container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Standard input.
    pub stdin: Vec<u8>,
    /// Kill the command after this many milliseconds.
    pub timeout_ms: u32,
}

impl Command {
    /// A command from program and arguments, with no stdin and a 10 s timeout.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            stdin: Vec::new(),
            timeout_ms: 10_000,
        }
    }

    /// Set standard input.
    pub fn stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = stdin.into();
        self
    }

    /// Set the timeout.
    pub fn timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }
}

/// How a command ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status.
    pub exit_code: i32,
    /// Standard output (possibly cut at the host's cap).
    pub stdout: Vec<u8>,
    /// Standard error (possibly cut at the host's cap).
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// The last line of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let line = text.trim().lines().last().unwrap_or("").trim();
        line.chars().take(200).collect()
    }
}

/// Why a command did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// It ran past its timeout and was killed.
    Timeout,
    /// The host refused to run it.
    Refused(String),
    /// It could not be started.
    Failed(String),
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Timeout => f.write_str("timed out"),
            ExecError::Refused(m) => write!(f, "refused: {m}"),
            ExecError::Failed(m) => f.write_str(m),
        }
    }
}

/// An HTTP request to the workspace's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method, e.g. "GET".
    pub method: String,
    /// Full URL, `http://<pod-ip>:<port>/path?query` (an IPv6 pod IP in brackets: build it
    /// with `Workspace::base_url`).
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// A GET request.
    pub fn get(url: impl Into<String>) -> Self {
        HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
        }
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// An HTTP response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Why an HTTP request got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError(pub String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// The workspace-confined capabilities a probe may use.
pub trait Host {
    /// Run a command in the workspace's main container.
    fn exec(&self, command: &Command) -> Result<ExecOutput, ExecError>;
    /// Send an HTTP request to the workspace's pod.
    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError>;
    /// Write a log line into the controller's logs.
    fn log(&self, level: LogLevel, message: &str);
}

/// The real capabilities, imported from the host through the WIT world.
pub struct WasiHost;

impl Host for WasiHost {
    fn exec(&self, command: &Command) -> Result<ExecOutput, ExecError> {
        let result = exec::run(&exec::Command {
            argv: command.argv.clone(),
            stdin: command.stdin.clone(),
            timeout_ms: command.timeout_ms,
        });
        match result {
            Ok(o) => Ok(ExecOutput {
                exit_code: o.exit_code,
                stdout: o.stdout,
                stderr: o.stderr,
            }),
            Err(exec::Error::Timeout) => Err(ExecError::Timeout),
            Err(exec::Error::Refused(m)) => Err(ExecError::Refused(m)),
            Err(exec::Error::Failed(m)) => Err(ExecError::Failed(m)),
        }
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        wasi_http::send(request)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => log::Level::Trace,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error => log::Level::Error,
        };
        log::log(level, message);
    }
}

/// Body bytes a probe reads at most from one response.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

mod wasi_http {
    use super::{HttpError, HttpRequest, HttpResponse, MAX_RESPONSE_BYTES};
    use crate::bindings::wasi::http::{outgoing_handler, types};
    use crate::bindings::wasi::io::streams::StreamError;

    pub(super) fn send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let err = |m: String| HttpError(format!("{} {}: {m}", request.method, request.url));
        let (scheme, rest) = request
            .url
            .split_once("://")
            .ok_or_else(|| err("URL has no scheme".into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let headers = types::Fields::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|e| err(format!("header {name}: {e:?}")))?;
        }
        let outgoing = types::OutgoingRequest::new(headers);
        // A new request is a GET without a body: only what differs is sent to the host.
        let method = match request.method.as_str() {
            "GET" => None,
            "HEAD" => Some(types::Method::Head),
            "POST" => Some(types::Method::Post),
            other => Some(types::Method::Other(other.to_string())),
        };
        let scheme = match scheme {
            "http" => types::Scheme::Http,
            "https" => types::Scheme::Https,
            other => types::Scheme::Other(other.to_string()),
        };
        if let Some(method) = method {
            outgoing
                .set_method(&method)
                .map_err(|()| err("invalid method".into()))?;
        }
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| err("invalid scheme".into()))?;
        outgoing
            .set_authority(Some(authority))
            .map_err(|()| err("invalid authority".into()))?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| err("invalid path".into()))?;

        let future = outgoing_handler::handle(outgoing, None).map_err(|e| err(describe(&e)))?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(err(describe(&e))),
            Some(Err(())) | None => return Err(err("response already taken".into())),
        };
        let status = response.status();
        let body = response
            .consume()
            .map_err(|()| err("response body unavailable".into()))?;
        let mut bytes = Vec::new();
        {
            let stream = body.stream().map_err(|()| err("response body unavailable".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() as u64 > MAX_RESPONSE_BYTES {
                            return Err(err(format!("response body over {MAX_RESPONSE_BYTES} bytes")));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(err(format!("reading body: {}", e.to_debug_string())));
                    }
                }
            }
        }
        drop(types::IncomingBody::finish(body));
        Ok(HttpResponse { status, body: bytes })
    }

    fn describe(code: &types::ErrorCode) -> String {
        match code {
            types::ErrorCode::HttpRequestDenied => "request denied: probes may only reach their workspace's pod".into(),
            types::ErrorCode::ConnectionRefused => "connection refused".into(),
            types::ErrorCode::ConnectionTimeout => "connection timed out".into(),
            types::ErrorCode::InternalError(Some(m)) => m.clone(),
            other => format!("{other:?}"),
        }
    }
}
