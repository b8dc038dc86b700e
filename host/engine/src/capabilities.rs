//! What a probe can reach, as a trait the engine calls. The controller
//! implements it with Kubernetes (exec, pod HTTP); the harness with scripted
//! replies or local processes. The engine confines every call to the probed
//! workspace and enforces deadlines and size caps before a capability sees it.

use super::bindings::workspace_culler::probe::exec;
use super::bindings::workspace_culler::probe::types;
use async_trait::async_trait;
use bytes::Bytes;

/// The workspace being probed (the WIT `workspace` record).
pub type Workspace = types::Workspace;
/// A named port of the workspace (the WIT `port` record).
pub type Port = types::Port;
/// A command to run in the workspace's main container (WIT `exec.command`).
pub type ExecCommand = exec::Command;
/// How a command ended (WIT `exec.output`).
pub type ExecOutput = exec::Output;
/// Why a command did not complete (WIT `exec.error`).
pub type ExecError = exec::Error;

/// An HTTP request a probe sends to its workspace's pod, body fully read.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// Method.
    pub method: http::Method,
    /// Absolute URI; its host is the pod's IP (the engine checked).
    pub uri: http::Uri,
    /// Headers as the probe set them.
    pub headers: http::HeaderMap,
    /// Body bytes (capped by the engine).
    pub body: Bytes,
    /// The most response-body bytes the engine accepts: a capability stops
    /// reading once the body is longer and returns what it has (over the
    /// cap), so an endless body costs no more than this much memory.
    pub response_body_cap: usize,
    /// Where a capability takes the memory of the response body from, as it reads it.
    pub response_memory: ReadMemory,
}

/// The probe's memory (its cap, and the budget of all probes), for what a capability reads on
/// its behalf — a response body, a command's output: each chunk is taken before it is kept,
/// so a pod that stops just short of a cap, or sends slowly, holds no memory the probe may not
/// hold. A capability that does not take it has the whole taken when it returns.
#[derive(Clone, Default)]
pub struct ReadMemory(Option<std::sync::Arc<TakeMemory>>);

/// Takes bytes of a probe's memory, or says why not.
type TakeMemory = dyn Fn(usize) -> Result<(), String> + Send + Sync;

impl ReadMemory {
    /// Memory taken by `take`, which says why when it refuses.
    pub fn new(take: impl Fn(usize) -> Result<(), String> + Send + Sync + 'static) -> ReadMemory {
        ReadMemory(Some(std::sync::Arc::new(take)))
    }

    /// Take `bytes` more, or say why not (the read then stops with that message).
    pub fn take(&self, bytes: usize) -> Result<(), String> {
        match &self.0 {
            Some(take) => take(bytes),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for ReadMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ReadMemory(counted)"
        } else {
            "ReadMemory(uncounted)"
        })
    }
}

/// The response handed back to the probe.
#[derive(Clone, Debug, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Bytes,
}

/// The workspace-confined capabilities behind a probe's imports.
#[async_trait]
pub trait Capabilities: Send + Sync + 'static {
    /// Run a command in the workspace's main container. `command.timeout_ms`
    /// is already capped by the probe's deadline; the engine also cuts the
    /// call off by wall clock, so an implementation that hangs loses nothing.
    /// What it reads of the command's output is taken from `output_memory` as it arrives.
    async fn exec(
        &self,
        workspace: &Workspace,
        command: ExecCommand,
        output_memory: ReadMemory,
    ) -> Result<ExecOutput, ExecError>;

    /// Send an HTTP request to the workspace's pod; `Err` is a transport
    /// failure (the message reaches the probe), not an HTTP error status.
    async fn http(&self, workspace: &Workspace, request: HttpRequest) -> Result<HttpResponse, String>;
}

/// Capabilities that refuse everything: for probes that need none.
pub struct NoCapabilities;

#[async_trait]
impl Capabilities for NoCapabilities {
    async fn exec(&self, _: &Workspace, _: ExecCommand, _: ReadMemory) -> Result<ExecOutput, ExecError> {
        Err(ExecError::Refused("exec is not available here".into()))
    }

    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        Err("HTTP is not available here".into())
    }
}
