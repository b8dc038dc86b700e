//! The per-evaluation sandbox: a fresh WASI context with nothing granted,
//! the confined exec/HTTP/log imports, and the memory cap.

use super::Limits;
use super::bindings::workspace_culler::probe::{exec, log, types};
use super::capabilities::{Capabilities, HttpRequest, ReadMemory, Workspace};
use http_body_util::{BodyExt, Full};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Severity of a probe's log line (the contract's `log.level`, in the engine's own type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is wrong but the probe goes on.
    Warn,
    /// Progress.
    Info,
    /// Detail for whoever debugs the probe.
    Debug,
    /// More detail.
    Trace,
}

impl From<log::Level> for LogLevel {
    fn from(level: log::Level) -> Self {
        match level {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        }
    }
}

/// A line a probe logged.
pub(crate) type LogLine = (LogLevel, String);

type Logs = Arc<Mutex<Vec<LogLine>>>;

/// The first cap a probe ran into, shared by the parts of its sandbox: the
/// evaluation then fails with this message, whatever the probe returned.
#[derive(Clone, Default)]
pub(crate) struct CapExceeded(Arc<Mutex<Option<String>>>);

impl CapExceeded {
    /// Records `message` if no cap was hit before; whether it was the first.
    fn record(&self, message: String) -> bool {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_some() {
            return false;
        }
        tracing::info!(target: "probe", "{message}");
        *first = Some(message);
        true
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Bytes of one HTTP header map (a `fields` handle) a probe may fill.
const HTTP_FIELDS_BYTES: usize = 16 << 10;

/// Bytes of one write into a request's body. The host buffers a body's writes (two at most)
/// until the request is sent, and counts them in the probe's memory only then: a body written
/// before the request is sent may be up to 32 KiB (a larger one is sent first and streamed),
/// and a probe that never sends holds at most that per request handle (32 MiB at its cap of
/// handles), where wasmtime's default of 1 MiB writes let one evaluation hold 2 GiB.
const HTTP_BODY_WRITE_BYTES: usize = 16 << 10;

/// Lines of one evaluation that also reach the controller's own log; the
/// rest are kept with the evaluation only, so a chatty probe cannot flood it.
const LINES_TO_CONTROLLER_LOG: usize = 20;

/// Characters of one line a probe writes (a log line, a line of stdout or stderr) or of the
/// message it fails with: the rest is cut before the host logs or keeps it.
pub(crate) const LINE_CHARS: usize = 4096;

/// `text` cut to [`LINE_CHARS`] characters, saying so when it was.
pub(crate) fn one_line(text: &str) -> String {
    match text.char_indices().nth(LINE_CHARS) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}… (cut at {LINE_CHARS} characters)", &text[..end]),
    }
}

fn push_log(logs: &Logs, level: LogLevel, message: String) {
    let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
    if logs.len() < LINES_TO_CONTROLLER_LOG {
        match level {
            LogLevel::Error => tracing::error!(target: "probe", "{message}"),
            LogLevel::Warn => tracing::warn!(target: "probe", "{message}"),
            LogLevel::Info => tracing::info!(target: "probe", "{message}"),
            LogLevel::Debug => tracing::debug!(target: "probe", "{message}"),
            LogLevel::Trace => tracing::trace!(target: "probe", "{message}"),
        }
    }
    logs.push((level, message));
}

/// The linear memory all running probes hold together, against one budget: with many probes
/// in flight, the process's memory is bounded by this, not by their number times the cap.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: Default::default(),
        }
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn take(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.used
            .fetch_update(SeqCst, SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What one probe holds — its linear memories, and the HTTP bodies the host holds for it — against
/// its cap and its share of the budget of all; remembers which was hit, so the failure can say so.
/// Shared by the store's limiter and the HTTP requests in flight; given back when both are done.
pub(crate) struct ProbeMemory {
    cap: usize,
    budget: Arc<MemoryBudget>,
    held: std::sync::atomic::AtomicUsize,
    hit: std::sync::atomic::AtomicBool,
    budget_hit: std::sync::atomic::AtomicBool,
}

impl ProbeMemory {
    fn new(cap: usize, budget: Arc<MemoryBudget>) -> ProbeMemory {
        ProbeMemory {
            cap,
            budget,
            held: Default::default(),
            hit: Default::default(),
            budget_hit: Default::default(),
        }
    }

    /// Take `bytes` more, within the probe's cap and then the budget; or say which refused.
    fn take(&self, bytes: usize) -> Result<(), String> {
        use std::sync::atomic::Ordering::SeqCst;
        let within_cap = self.held.fetch_update(SeqCst, SeqCst, |held| {
            held.checked_add(bytes).filter(|total| *total <= self.cap)
        });
        if within_cap.is_err() {
            self.hit.store(true, SeqCst);
            return Err(self.over_cap());
        }
        if !self.budget.take(bytes) {
            self.held.fetch_sub(bytes, SeqCst);
            self.budget_hit.store(true, SeqCst);
            return Err(self.over_budget());
        }
        Ok(())
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, std::sync::atomic::Ordering::SeqCst);
        self.budget.give_back(bytes);
    }

    fn over_cap(&self) -> String {
        format!("probe exceeded its memory cap of {} MiB", self.cap >> 20)
    }

    fn over_budget(&self) -> String {
        format!(
            "probe could not grow its memory: the probes running at once hold the whole budget of {} MiB \
             of all of them (--memory-budget-mib); it is tried again at its next probe",
            self.budget.limit >> 20
        )
    }

    /// Why the probe was refused memory, if it was.
    fn refused(&self) -> Option<String> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.hit.load(SeqCst) {
            Some(self.over_cap())
        } else if self.budget_hit.load(SeqCst) {
            Some(self.over_budget())
        } else {
            None
        }
    }
}

impl Drop for ProbeMemory {
    fn drop(&mut self) {
        self.budget.give_back(*self.held.get_mut());
    }
}

/// Bytes of a probe's memory held for one HTTP body, given back when it is dropped.
struct Reservation {
    memory: Arc<ProbeMemory>,
    bytes: usize,
}

impl Reservation {
    fn new(memory: Arc<ProbeMemory>) -> Reservation {
        Reservation { memory, bytes: 0 }
    }

    fn grow(&mut self, bytes: usize) -> Result<(), String> {
        self.memory.take(bytes)?;
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.give_back(self.bytes);
    }
}

/// A response body that holds its reservation until the probe has dropped it.
struct Reserved {
    body: Full<bytes::Bytes>,
    _reservation: Reservation,
}

impl http_body::Body for Reserved {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Bytes of host memory one table element holds.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// The store's limiter: each linear memory's and table's growth taken from the probe's memory.
pub(crate) struct MemoryCap(Arc<ProbeMemory>);

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // Called per linear memory: the cap is on all of a probe's memories together.
        self.0
            .take(desired.saturating_sub(current))
            .map(|()| true)
            .map_err(|message| wasmtime::format_err!("{message}"))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > 100_000 {
            return Ok(false);
        }
        // A table's elements are the host's memory too (a pointer each, allocated when the
        // table is made or grown): taken from the probe's memory like its linear memories', so
        // no number of tables adds up past the cap.
        self.0
            .take(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES))
            .map(|()| true)
            .map_err(|message| wasmtime::format_err!("{message}"))
    }
}

/// The `T` of each evaluation's `Store`.
pub(crate) struct ProbeState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: ConfinedHttp,
    memory: MemoryCap,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    stdio_cap: usize,
    exec_output_cap: usize,
    capabilities: Arc<dyn Capabilities>,
    workspace: Workspace,
    deadline_at: Instant,
    logs: Logs,
    limits: Limits,
    /// What the probe used so far of what `limits` counts.
    used: Usage,
    exceeded: CapExceeded,
}

/// What a probe used of its per-evaluation allowances.
#[derive(Default)]
struct Usage {
    log_lines: usize,
    log_bytes: usize,
    exec_calls: usize,
}

/// The probe's wall clock: the evaluation's clock at its start, advancing in
/// real time, or standing still. It is the real time in the controller, and
/// a fixture's `now` (frozen) in the harness, so a probe that reads the time
/// replays deterministically.
struct EvaluationClock {
    start_ms: i64,
    started: Instant,
    frozen: bool,
}

impl wasmtime_wasi::HostWallClock for EvaluationClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }

    fn now(&self) -> std::time::Duration {
        let start = std::time::Duration::from_millis(u64::try_from(self.start_ms).unwrap_or(0));
        if self.frozen {
            start
        } else {
            start + self.started.elapsed()
        }
    }
}

impl ProbeState {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        limits: &Limits,
        budget: Arc<MemoryBudget>,
        workspace: Workspace,
        capabilities: Arc<dyn Capabilities>,
        deadline_at: Instant,
        now_ms: i64,
        frozen_clock: bool,
    ) -> Self {
        let stdout = MemoryOutputPipe::new(limits.stdio_bytes);
        let stderr = MemoryOutputPipe::new(limits.stdio_bytes);
        // Deny by default: no preopened directories, no environment, no
        // arguments, no sockets. HTTP goes through `ConfinedHttp` only.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(EvaluationClock {
                start_ms: now_ms,
                started: Instant::now(),
                frozen: frozen_clock,
            })
            .build();
        let logs = Logs::default();
        let exceeded = CapExceeded::default();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resource_handles);
        // Header maps live in the host: bound each, as handles are bounded.
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(HTTP_FIELDS_BYTES);
        let memory = Arc::new(ProbeMemory::new(limits.memory_bytes, budget));
        ProbeState {
            wasi,
            http,
            table,
            hooks: ConfinedHttp {
                workspace: workspace.clone(),
                capabilities: capabilities.clone(),
                deadline_at,
                body_cap: limits.http_body_bytes,
                logs: logs.clone(),
                requests_sent: 0,
                requests_cap: limits.http_requests,
                exceeded: exceeded.clone(),
                memory: memory.clone(),
                one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
            },
            memory: MemoryCap(memory),
            stdout,
            stderr,
            stdio_cap: limits.stdio_bytes,
            exec_output_cap: limits.exec_output_bytes,
            capabilities,
            workspace,
            deadline_at,
            logs,
            limits: limits.clone(),
            used: Usage::default(),
            exceeded,
        }
    }

    /// The first per-evaluation cap the probe ran into, if any.
    pub(crate) fn cap_exceeded(&self) -> Option<String> {
        self.exceeded.get()
    }

    pub(crate) fn memory_cap(&mut self) -> &mut MemoryCap {
        &mut self.memory
    }

    /// Explain a trap in words a probe author can act on.
    pub(crate) fn describe_trap(&self, e: &wasmtime::Error) -> String {
        let text = format!("{e:#}");
        if let Some(message) = self.memory.0.refused() {
            return message;
        }
        if let Some(message) = self.stdio_overflow() {
            return message;
        }
        let cause = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => first_line(&text).to_string(),
        };
        let table_full = matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        );
        if table_full || text.contains("resource table has no free keys") {
            return format!(
                "probe exceeded its cap of {} resource handles held at once",
                self.limits.resource_handles
            );
        }
        let mut message = format!("probe trapped: {cause}");
        // A Rust guest's panic message is on stderr; Rust's backtrace hint is noise.
        let stderr = String::from_utf8_lossy(&self.stderr.contents()).into_owned();
        let useful: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        if !useful.is_empty() {
            let tail = useful[useful.len().saturating_sub(2)..].join(" ");
            message.push_str(&format!(" (stderr: {})", tail.chars().take(300).collect::<String>()));
        }
        message
    }

    /// Set when the probe filled stdout or stderr to the cap: a probe that
    /// fails after that failed because of it, whether it trapped or not.
    pub(crate) fn stdio_overflow(&self) -> Option<String> {
        let stream = if self.stdout.contents().len() >= self.stdio_cap {
            "stdout"
        } else if self.stderr.contents().len() >= self.stdio_cap {
            "stderr"
        } else {
            return None;
        };
        Some(format!(
            "probe wrote more than the cap of {} bytes to {stream}",
            self.stdio_cap
        ))
    }

    /// Everything logged, with captured stdout/stderr appended line by line.
    pub(crate) fn finish_logs(&self) -> Vec<LogLine> {
        for (stream, level, pipe) in [
            ("stdout", LogLevel::Info, &self.stdout),
            ("stderr", LogLevel::Warn, &self.stderr),
        ] {
            let text = String::from_utf8_lossy(&pipe.contents()).into_owned();
            for line in text.lines().filter(|l| !l.trim().is_empty()).take(100) {
                push_log(&self.logs, level, format!("[{stream}] {}", one_line(line)));
            }
        }
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn remaining(&self) -> Duration {
        self.deadline_at.saturating_duration_since(Instant::now())
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

impl WasiView for ProbeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ProbeState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for ProbeState {}

impl log::Host for ProbeState {
    async fn log(&mut self, level: log::Level, message: String) {
        let message = one_line(&message);
        self.used.log_lines += 1;
        self.used.log_bytes = self.used.log_bytes.saturating_add(message.len());
        if self.used.log_lines > self.limits.log_lines {
            let cap = self.limits.log_lines;
            self.exceeded
                .record(format!("probe logged more than its cap of {cap} lines per evaluation"));
            return;
        }
        if self.used.log_bytes > self.limits.log_bytes {
            let cap = self.limits.log_bytes;
            self.exceeded
                .record(format!("probe logged more than its cap of {cap} bytes per evaluation"));
            return;
        }
        push_log(&self.logs, level.into(), message);
    }
}

impl exec::Host for ProbeState {
    async fn run(&mut self, command: exec::Command) -> Result<exec::Output, exec::Error> {
        if command.argv.is_empty() || command.argv[0].is_empty() {
            return Err(exec::Error::Refused("argv must name a program".into()));
        }
        self.used.exec_calls += 1;
        if self.used.exec_calls > self.limits.exec_calls {
            let message = format!(
                "probe ran more than its cap of {} commands per evaluation",
                self.limits.exec_calls
            );
            self.exceeded.record(message.clone());
            return Err(exec::Error::Refused(message));
        }
        // Each argument costs the host a `String` besides its bytes (an empty one too).
        let input = command
            .argv
            .iter()
            .map(|arg| arg.len() + std::mem::size_of::<String>())
            .sum::<usize>()
            + command.stdin.len();
        if input > self.limits.exec_input_bytes {
            let message = format!(
                "probe passed a command {input} bytes of argv and stdin, over its cap of {} bytes",
                self.limits.exec_input_bytes
            );
            self.exceeded.record(message.clone());
            return Err(exec::Error::Refused(message));
        }
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(exec::Error::Timeout);
        }
        let timeout = Duration::from_millis(u64::from(command.timeout_ms)).min(remaining);
        let command = exec::Command {
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            ..command
        };
        let capabilities = self.capabilities.clone();
        // The command's output is taken from the probe's memory as the capability reads it, and
        // given back once the call returns (the output is then the guest's, in its memory).
        let reading = Arc::new(Mutex::new(Reservation::new(self.memory.0.clone())));
        let output_memory = {
            let (reading, exceeded, logs) = (reading.clone(), self.exceeded.clone(), self.logs.clone());
            ReadMemory::new(move |bytes| {
                let grown = reading.lock().unwrap_or_else(|p| p.into_inner()).grow(bytes);
                grown.inspect_err(|message| {
                    let message = format!("{message}, reading the output of a command");
                    if exceeded.record(message.clone()) {
                        push_log(&logs, LogLevel::Warn, message);
                    }
                })
            })
        };
        // The capability enforces the timeout itself; the wall clock here
        // makes sure a capability that hangs cannot hold the probe.
        let call = capabilities.exec(&self.workspace, command, output_memory);
        match tokio::time::timeout(timeout + Duration::from_millis(250), call).await {
            Err(_) => Err(exec::Error::Timeout),
            Ok(Ok(mut output)) => {
                output.stdout.truncate(self.exec_output_cap);
                output.stderr.truncate(self.exec_output_cap);
                Ok(output)
            }
            Ok(Err(e)) => Err(e),
        }
    }
}

/// `wasi:http` confined to the workspace's pod, served by the capabilities.
struct ConfinedHttp {
    workspace: Workspace,
    capabilities: Arc<dyn Capabilities>,
    deadline_at: Instant,
    body_cap: usize,
    logs: Logs,
    requests_sent: usize,
    requests_cap: usize,
    exceeded: CapExceeded,
    /// The probe's memory, which holds the bodies of its requests and responses too.
    memory: Arc<ProbeMemory>,
    /// One permit: the probe's HTTP calls reach its pod one at a time.
    one_at_a_time: Arc<tokio::sync::Semaphore>,
}

type HttpError = wasmtime_wasi_http::Error;
type WasiBody = wasmtime_wasi_http::WasiBody;
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture = Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

fn host_of(uri: &http::Uri) -> &str {
    uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']')
}

impl WasiHttpHooks for ConfinedHttp {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        HTTP_BODY_WRITE_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        // Every request counts, refused ones too, so no loop of requests can
        // grow the host's log without bound; past the cap, one line says so.
        self.requests_sent += 1;
        if self.requests_sent > self.requests_cap {
            let message = format!(
                "probe sent more than its cap of {} HTTP requests per evaluation",
                self.requests_cap
            );
            if self.exceeded.record(message.clone()) {
                push_log(&self.logs, LogLevel::Warn, message);
            }
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let allowed = !self.workspace.pod_ip.is_empty() && host_of(request.uri()) == self.workspace.pod_ip;
        if !allowed {
            push_log(
                &self.logs,
                LogLevel::Warn,
                format!(
                    "refused HTTP request to {}: probes may only reach their workspace's pod ({})",
                    request.uri().to_string().chars().take(200).collect::<String>(),
                    if self.workspace.pod_ip.is_empty() {
                        "no pod IP"
                    } else {
                        &self.workspace.pod_ip
                    }
                ),
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let workspace = self.workspace.clone();
        let capabilities = self.capabilities.clone();
        let deadline_at = self.deadline_at;
        let body_cap = self.body_cap;
        let (logs, uri) = (self.logs.clone(), request.uri().clone());
        let (memory, exceeded) = (self.memory.clone(), self.exceeded.clone());
        let one_at_a_time = self.one_at_a_time.clone();
        Box::new(async move {
            // Held against the probe's memory while the host holds it: however many requests
            // a probe opens, the bodies the host gathers for it stay within its cap.
            let refuse = {
                let (exceeded, logs) = (exceeded.clone(), logs.clone());
                Arc::new(move |message: String| {
                    if exceeded.record(message.clone()) {
                        push_log(&logs, LogLevel::Warn, message);
                    }
                })
            };
            let mut sending = Reservation::new(memory.clone());
            let (parts, mut body) = request.into_parts();
            let mut gathered = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                let Ok(data) = frame.into_data() else { continue };
                if gathered.len() + data.len() > body_cap {
                    return Err(HttpError::HttpRequestBodySize(None));
                }
                sending.grow(data.len()).map_err(|message| {
                    refuse(message);
                    HttpError::HttpRequestBodySize(None)
                })?;
                gathered.extend_from_slice(&data);
            }
            let body = gathered.freeze();
            // The response's body is taken from the probe's memory as the capability reads it.
            let reading = Arc::new(Mutex::new(Reservation::new(memory.clone())));
            let response_memory = {
                let (reading, refuse) = (reading.clone(), refuse.clone());
                let from: String = uri.to_string().chars().take(200).collect();
                ReadMemory::new(move |bytes| {
                    let grown = reading.lock().unwrap_or_else(|p| p.into_inner()).grow(bytes);
                    // Said so: the pod's answer took it, not the probe's own allocations.
                    grown.inspect_err(|message| refuse(format!("{message}, reading the response body from {from}")))
                })
            };
            let request = HttpRequest {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
                response_body_cap: body_cap,
                response_memory,
            };
            // One call at a time: a probe's calls reach its pod in turn.
            let _turn = one_at_a_time.acquire_owned().await.ok();
            let remaining = deadline_at.saturating_duration_since(Instant::now());
            let response = match tokio::time::timeout(remaining, capabilities.http(&workspace, request)).await {
                Err(_) => return Err(HttpError::ConnectionReadTimeout),
                Ok(Err(message)) => return Err(HttpError::InternalError(Some(message))),
                Ok(Ok(response)) => response,
            };
            if response.body.len() > body_cap {
                push_log(
                    &logs,
                    LogLevel::Warn,
                    one_line(&format!(
                        "the response body is over the cap of {body_cap} bytes: cut off ({uri})"
                    )),
                );
                return Err(HttpError::HttpResponseBodySize(None));
            }
            drop(sending);
            let mut builder = http::Response::builder().status(response.status);
            for (name, value) in &response.headers {
                builder = builder.header(name, value);
            }
            // What the capability took as it read, and the rest of the body if it took less.
            let mut receiving = std::mem::replace(
                &mut *reading.lock().unwrap_or_else(|p| p.into_inner()),
                Reservation::new(memory),
            );
            receiving
                .grow(response.body.len().saturating_sub(receiving.bytes))
                .map_err(|message| {
                    refuse(message);
                    HttpError::HttpResponseBodySize(None)
                })?;
            let body = Reserved {
                body: Full::new(response.body),
                _reservation: receiving,
            }
            .map_err(|never| match never {})
            .boxed_unsync();
            let response = builder
                .body(body)
                .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// Fill the linker once: WASI (denied by context), confined HTTP, exec, log.
pub(crate) fn add_to_linker(linker: &mut Linker<ProbeState>) -> anyhow::Result<()> {
    let wrap = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
    wasmtime_wasi::p2::add_to_linker_async(linker).map_err(wrap)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker).map_err(wrap)?;
    exec::add_to_linker::<_, HasSelf<ProbeState>>(linker, |s| s).map_err(wrap)?;
    log::add_to_linker::<_, HasSelf<ProbeState>>(linker, |s| s).map_err(wrap)?;
    types::add_to_linker::<_, HasSelf<ProbeState>>(linker, |s| s).map_err(wrap)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    fn cap(budget: &Arc<MemoryBudget>) -> MemoryCap {
        MemoryCap(Arc::new(ProbeMemory::new(64, budget.clone())))
    }

    /// Which limit refused it: (the probe's cap, the budget).
    fn hit(cap: &MemoryCap) -> (bool, bool) {
        use std::sync::atomic::Ordering::SeqCst;
        (cap.0.hit.load(SeqCst), cap.0.budget_hit.load(SeqCst))
    }

    #[test]
    fn the_memory_cap_holds_for_all_of_a_probe_s_memories_together() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let mut probe = cap(&budget);
        assert!(probe.memory_growing(0, 40, None).unwrap(), "a first memory");
        assert!(
            probe.memory_growing(0, 40, None).is_err(),
            "a second one past the cap of 64 together"
        );
        assert_eq!(hit(&probe), (true, false));
        assert!(probe.memory_growing(0, 24, None).unwrap(), "up to the cap");
        assert_eq!(budget.in_use(), 64);
    }

    #[test]
    fn tables_count_in_the_probe_s_memory_cap_however_many_there_are() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let mut probe = cap(&budget);
        // Eight bytes an element, against the cap of 64: four tables of two, then no more.
        for _ in 0..4 {
            assert!(probe.table_growing(0, 2, None).unwrap());
        }
        assert!(probe.table_growing(0, 1, None).is_err(), "a fifth table past the cap");
        assert_eq!(hit(&probe), (true, false));
        assert_eq!(budget.in_use(), 64);
        assert!(!probe.table_growing(0, 100_001, None).unwrap(), "one table's own bound");
    }

    #[test]
    fn running_probes_share_one_memory_budget_and_give_it_back_when_done() {
        let budget = Arc::new(MemoryBudget::new(100));
        let (mut first, mut second) = (cap(&budget), cap(&budget));
        assert!(first.memory_growing(0, 60, None).unwrap());
        assert!(second.memory_growing(0, 30, None).unwrap());
        assert_eq!(budget.in_use(), 90);
        // Within its own cap of 64, but over what is left of the budget.
        assert!(second.memory_growing(30, 50, None).is_err());
        assert_eq!(hit(&second), (false, true));
        assert!(first.memory_growing(60, 70, None).is_err(), "over its own cap");
        assert!(hit(&first).0);
        drop(first);
        assert_eq!(budget.in_use(), 30);
        assert!(second.memory_growing(30, 50, None).unwrap());
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn http_bodies_held_for_a_probe_count_in_its_memory_until_dropped() {
        let budget = Arc::new(MemoryBudget::new(100));
        let probe = cap(&budget);
        let mut body = Reservation::new(probe.0.clone());
        body.grow(40).unwrap();
        let mut other = Reservation::new(probe.0.clone());
        other.grow(20).unwrap();
        assert_eq!(budget.in_use(), 60);
        let refused = other.grow(10).unwrap_err();
        assert!(refused.contains("memory cap"), "{refused}");
        drop(body);
        assert_eq!(budget.in_use(), 20);
        other.grow(10).unwrap();
        drop(other);
        drop(probe);
        assert_eq!(budget.in_use(), 0);
    }
}
