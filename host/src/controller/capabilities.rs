//! The probe capabilities on Kubernetes: exec in the workspace pod's main
//! container over the WebSocket exec protocol, and HTTP to the pod either
//! directly at its IP (in-cluster) or through the apiserver's port-forward
//! (out-of-cluster and tests). Each instance is bound to one pod.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use workspace_culler_engine::{Capabilities, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, Workspace};

/// How probes reach their pod over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpMode {
    /// Connect to the pod IP (the controller runs in the cluster).
    Direct,
    /// Tunnel through the apiserver's `pods/portforward`.
    PortForward,
}

/// Capabilities confined to one pod.
pub struct PodCapabilities {
    pods: Api<Pod>,
    pod: String,
    container: String,
    http_mode: HttpMode,
    output_cap: usize,
}

impl PodCapabilities {
    /// Capabilities for `pod` (in the namespace of `pods`), container `container`.
    pub fn new(pods: Api<Pod>, pod: String, container: String, http_mode: HttpMode, output_cap: usize) -> Self {
        PodCapabilities {
            pods,
            pod,
            container,
            http_mode,
            output_cap,
        }
    }

    async fn run(&self, command: ExecCommand) -> Result<ExecOutput, ExecError> {
        // Attach stdin only when there is input: closing it needs the v5 exec protocol.
        let with_stdin = !command.stdin.is_empty();
        let params = AttachParams::default()
            .container(self.container.clone())
            .stdin(with_stdin)
            .stdout(true)
            .stderr(true);
        let mut process = self
            .pods
            .exec(&self.pod, command.argv.clone(), &params)
            .await
            .map_err(|e| ExecError::Failed(format!("exec in pod {} failed: {e}", self.pod)))?;
        if let Some(mut stdin) = process.stdin() {
            // A command that does not read its input is not an error.
            let _ = stdin.write_all(&command.stdin).await;
            let _ = stdin.shutdown().await;
        }
        let status = process.take_status();
        let (stdout, stderr) =
            crate::transport::read_outputs(process.stdout(), process.stderr(), self.output_cap).await;
        let status = match status {
            Some(status) => status.await,
            None => None,
        };
        Ok(ExecOutput {
            exit_code: exit_code(status.as_ref())?,
            stdout,
            stderr,
        })
    }
}

/// The exit code in the final status of an exec stream.
fn exit_code(status: Option<&Status>) -> Result<i32, ExecError> {
    let Some(status) = status else {
        return Err(ExecError::Failed("the exec stream ended without a status".into()));
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| causes.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse::<i32>().ok())
        // Some exec servers only say so in the message ("... exit status 3").
        .or_else(|| {
            let message = status.message.as_deref()?;
            let (_, tail) = message.rsplit_once(|c: char| !c.is_ascii_digit())?;
            (message.contains("exit") && !tail.is_empty())
                .then(|| tail.parse().ok())
                .flatten()
        });
    code.ok_or_else(|| {
        ExecError::Failed(format!(
            "exec failed: {}",
            status.message.as_deref().unwrap_or("no message")
        ))
    })
}

#[async_trait]
impl Capabilities for PodCapabilities {
    async fn exec(&self, _workspace: &Workspace, command: ExecCommand) -> Result<ExecOutput, ExecError> {
        let timeout = Duration::from_millis(u64::from(command.timeout_ms));
        match tokio::time::timeout(timeout, self.run(command)).await {
            Ok(result) => result,
            // Dropping the stream closes the exec session.
            Err(_) => Err(ExecError::Timeout),
        }
    }

    async fn http(&self, _workspace: &Workspace, request: HttpRequest) -> Result<HttpResponse, String> {
        match self.http_mode {
            HttpMode::Direct => crate::transport::http(request).await,
            HttpMode::PortForward => {
                let port = request.uri.port_u16().unwrap_or(80);
                let mut forwarder = self
                    .pods
                    .portforward(&self.pod, &[port])
                    .await
                    .map_err(|e| format!("port-forward to pod {} port {port} failed: {e}", self.pod))?;
                let stream = forwarder.take_stream(port).ok_or("port-forward gave no stream")?;
                let response = crate::transport::http_over(stream, request).await;
                forwarder.abort();
                response
            }
        }
    }
}
