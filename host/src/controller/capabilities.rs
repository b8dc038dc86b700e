//! The probe capabilities on Kubernetes: exec in the workspace pod's main
//! container over the WebSocket exec protocol, and HTTP to the pod either
//! directly at its IP (in-cluster) or through the apiserver's port-forward
//! (out-of-cluster and tests). Each instance is bound to one pod.

use async_trait::async_trait;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use workspace_culler_engine::{
    Capabilities, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, ReadMemory, Workspace,
};

/// How probes reach their pod over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpMode {
    /// Connect to the pod IP (the controller runs in the cluster).
    Direct,
    /// Tunnel through the apiserver's `pods/portforward`.
    PortForward,
}

/// Capabilities confined to one pod, made for one evaluation: its HTTP calls to the pod share
/// a connection, closed when the evaluation ends.
pub struct PodCapabilities {
    pods: Api<Pod>,
    pod: String,
    container: String,
    http_mode: HttpMode,
    output_cap: usize,
    http: crate::transport::KeepAlive,
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
            http: Default::default(),
        }
    }

    async fn run(&self, mut command: ExecCommand, output_memory: ReadMemory) -> Result<ExecOutput, ExecError> {
        command.argv = with_watchdog(&command.argv, command.timeout_ms);
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
        let stdin = process.stdin();
        let input = command.stdin;
        // Fed beside the reading of the outputs: a command that writes before it reads its input
        // would otherwise fill the stream's buffers and wait on us while we wait on it.
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command that does not read its input is not an error.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let outputs =
            crate::transport::read_outputs(process.stdout(), process.stderr(), self.output_cap, &output_memory);
        let Some(status) = process.take_status() else {
            return Err(ExecError::Failed("the exec stream gave no status".into()));
        };
        tokio::pin!(feed, outputs, status);
        let (mut fed, mut read) = (false, None);
        let status = loop {
            tokio::select! {
                status = &mut status => break status,
                () = &mut feed, if !fed => fed = true,
                done = &mut outputs, if read.is_none() => match done {
                    // The probe's memory could not hold the output: no use waiting on.
                    Err(message) => return Err(ExecError::Failed(message)),
                    done => read = Some(done),
                },
            }
        };
        let Some(status) = status else {
            // The session ended without the command's status: the apiserver or the kubelet went
            // away mid-command (a broken stream leaves the outputs open, so waiting on them would
            // wait out the whole deadline), or the stream closed early. Either way it is a
            // failed exec, known now.
            let pod = &self.pod;
            return Err(ExecError::Failed(match process.join().await {
                Err(e) => format!("the exec stream to pod {pod} broke: {e}"),
                Ok(()) => format!("the exec stream to pod {pod} closed before the command's status"),
            }));
        };
        // After the status the session shuts its outputs; what is left in them is read to the end.
        let (stdout, stderr) = match read {
            Some(read) => read,
            None => outputs.await,
        }
        .map_err(ExecError::Failed)?;
        Ok(ExecOutput {
            exit_code: exit_code(&status)?,
            stdout,
            stderr,
        })
    }
}

/// Kills the command in the container once its time is up. Closing the exec stream does not
/// stop what it started: without this, a probe that times out every `minProbeIntervalSeconds`
/// piles up processes in the user's container. The command runs as the leader of a process
/// group of its own where the image has `setsid` (util-linux or busybox), so the whole group is
/// killed, and as a plain child otherwise (then only it is). Its stdin is passed through (a
/// background command's stdin is /dev/null unless redirected from a saved descriptor); the
/// watchdog exits with the command's status.
const WATCHDOG: &str = r#"t="$1"; shift
exec 3<&0
if command -v setsid >/dev/null 2>&1; then setsid "$@" <&3 3<&- & else "$@" <&3 3<&- & fi
child=$!
exec 3<&-
(sleep "$t"; kill -KILL -"$child" 2>/dev/null || kill -KILL "$child" 2>/dev/null) </dev/null >/dev/null 2>&1 &
watchdog=$!
wait "$child"; rc=$?
kill -KILL "$watchdog" 2>/dev/null
exit "$rc""#;

/// `argv` run under [`WATCHDOG`] with `timeout_ms` (rounded up to whole seconds).
fn with_watchdog(argv: &[String], timeout_ms: u32) -> Vec<String> {
    let seconds = timeout_ms.div_ceil(1000).max(1);
    let mut wrapped = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        WATCHDOG.to_string(),
        "activity-probe-watchdog".to_string(),
        seconds.to_string(),
    ];
    wrapped.extend(argv.iter().cloned());
    wrapped
}

/// The exit code in the final status of an exec stream.
fn exit_code(status: &Status) -> Result<i32, ExecError> {
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
    async fn exec(
        &self,
        _workspace: &Workspace,
        command: ExecCommand,
        output_memory: ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        let timeout = Duration::from_millis(u64::from(command.timeout_ms));
        match tokio::time::timeout(timeout, self.run(command, output_memory)).await {
            Ok(result) => result,
            // Dropping the stream closes the exec session.
            Err(_) => Err(ExecError::Timeout),
        }
    }

    async fn http(&self, _workspace: &Workspace, request: HttpRequest) -> Result<HttpResponse, String> {
        match self.http_mode {
            HttpMode::Direct => self.http.send(request).await,
            HttpMode::PortForward => {
                let port = request.uri.port_u16().unwrap_or(80);
                let mut forwarder = self
                    .pods
                    .portforward(&self.pod, &[port])
                    .await
                    .map_err(|e| format!("port-forward to pod {} port {port} failed: {e}", self.pod))?;
                let stream = forwarder.take_stream(port).ok_or("port-forward gave no stream")?;
                // The node says on the port's error channel why it could not reach the pod's
                // port (nothing listening, say), before it closes the stream: the exchange
                // ends with its words, however it ended here. The channel closing without a
                // message changes nothing.
                let errors = forwarder.take_error(port);
                let errors = async move {
                    match errors {
                        Some(errors) => errors.await,
                        None => None,
                    }
                }
                .fuse();
                let exchange = crate::transport::http_over(stream, request);
                tokio::pin!(errors, exchange);
                let refused = |message: String| format!("port-forward to pod {} port {port}: {message}", self.pod);
                let response = tokio::select! {
                    response = &mut exchange => response.map_err(|e| match (&mut errors).now_or_never().flatten() {
                        Some(message) => refused(message),
                        None => e,
                    }),
                    Some(message) = &mut errors => Err(refused(message)),
                };
                forwarder.abort();
                response
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    fn run_locally(argv: &[String]) -> (std::time::Duration, i32) {
        let started = std::time::Instant::now();
        let status = std::process::Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
        (started.elapsed(), status.code().unwrap_or(-1))
    }

    #[test]
    fn the_watchdog_passes_the_status_through_and_kills_the_command_group_in_time() {
        let quick: Vec<String> = ["/bin/sh", "-c", "exit 3"].map(String::from).into();
        let (took, code) = run_locally(&with_watchdog(&quick, 5_000));
        assert_eq!(code, 3);
        assert!(
            took < std::time::Duration::from_secs(3),
            "waited for the watchdog: {took:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("still-running");
        // A child of the command outlives the command unless its group is killed.
        let script = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let slow: Vec<String> = vec!["/bin/sh".into(), "-c".into(), script];
        let (took, code) = run_locally(&with_watchdog(&slow, 1_000));
        assert_eq!(code, 137, "killed");
        assert!(took < std::time::Duration::from_secs(3), "{took:?}");
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert!(!marker.exists(), "a process of the timed-out command kept running");
    }

    /// An apiserver's exec endpoint for one session on the v5 channel protocol (a channel
    /// byte, then the data): `session` plays the remote command.
    async fn exec_endpoint<F>(
        session: impl FnOnce(WebSocketStream<tokio::net::TcpStream>) -> F + Send + 'static,
    ) -> PodCapabilities
    where
        F: Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            #[allow(clippy::result_large_err)] // the signature tungstenite's handshake asks for
            let protocol = |_: &Request, mut response: Response| {
                let v5 = "v5.channel.k8s.io".parse().unwrap();
                response.headers_mut().insert("Sec-WebSocket-Protocol", v5);
                Ok(response)
            };
            session(tokio_tungstenite::accept_hdr_async(stream, protocol).await.unwrap()).await;
        });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        PodCapabilities::new(
            Api::namespaced(client, "ns"),
            "ws-0".into(),
            "main".into(),
            HttpMode::Direct,
            1 << 20,
        )
    }

    fn workspace() -> Workspace {
        Workspace {
            namespace: "ns".into(),
            name: "ws".into(),
            pod_name: "ws-0".into(),
            pod_ip: "127.0.0.1".into(),
            container: "main".into(),
            ports: Vec::new(),
        }
    }

    fn command(stdin: Vec<u8>) -> ExecCommand {
        ExecCommand {
            argv: vec!["cat".into()],
            stdin,
            timeout_ms: 20_000,
        }
    }

    fn on(channel: u8, data: &[u8]) -> Message {
        Message::binary([&[channel][..], data].concat())
    }

    /// The message of the failed exec the endpoint gives.
    async fn failure_of(pod: impl Future<Output = PodCapabilities>) -> String {
        match pod
            .await
            .exec(&workspace(), command(Vec::new()), Default::default())
            .await
        {
            Err(ExecError::Failed(message)) => message,
            other => panic!("expected a failed exec, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_that_breaks_mid_command_fails_at_once_instead_of_waiting_out_the_deadline() {
        // What an apiserver that dies mid-probe looks like from here: some output, then the
        // connection gone without a closing handshake.
        let message = failure_of(exec_endpoint(|mut ws| async move {
            ws.send(on(1, b"partial")).await.unwrap();
            drop(ws);
        }))
        .await;
        let expected = "exec stream to pod ws-0 broke: failed to receive a WebSocket message";
        assert!(message.contains(expected), "{message}");
    }

    #[tokio::test]
    async fn a_stream_closed_without_the_commands_status_fails_at_once() {
        let message = failure_of(exec_endpoint(|mut ws| async move {
            ws.send(on(1, b"partial")).await.unwrap();
            ws.close(None).await.unwrap();
        }))
        .await;
        let expected = "exec stream to pod ws-0 closed before the command's status";
        assert!(message.contains(expected), "{message}");
    }

    #[tokio::test]
    async fn input_is_fed_while_the_output_is_read() {
        // A command that writes more than the session's buffers hold before it reads its
        // input (1 KiB each way): fed only after, or read only after, neither side moves.
        let input = vec![b'i'; 16 * 1024];
        let expected = input.len();
        let pod = exec_endpoint(move |mut ws| async move {
            for _ in 0..64 {
                ws.send(on(1, &[b'o'; 1024])).await.unwrap();
            }
            let mut got = 0;
            while let Some(Ok(message)) = ws.next().await {
                let data = message.into_data();
                match data.first() {
                    Some(0) => got += data.len() - 1,
                    Some(255) => break,
                    _ => {}
                }
            }
            ws.send(on(2, format!("read {got}").as_bytes())).await.unwrap();
            ws.send(on(3, br#"{"status":"Success"}"#)).await.unwrap();
            ws.close(None).await.unwrap();
        })
        .await;
        let output = pod
            .exec(&workspace(), command(input), Default::default())
            .await
            .expect("the exec ran");
        assert_eq!(output.exit_code, 0);
        assert_eq!(output.stdout.len(), 64 * 1024);
        assert_eq!(String::from_utf8_lossy(&output.stderr), format!("read {expected}"));
    }

    #[test]
    fn the_watchdog_keeps_stdin() {
        use std::io::Write;
        let cat: Vec<String> = ["/bin/sh", "-c", "cat"].map(String::from).into();
        let wrapped = with_watchdog(&cat, 5_000);
        let mut child = std::process::Command::new(&wrapped[0])
            .args(&wrapped[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"input").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.stdout, b"input");
    }
}
