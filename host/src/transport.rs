//! Transports behind capabilities: a local process for exec (killed with its
//! whole process group at the timeout), and an HTTP/1.1 client over TCP or
//! over any stream (e.g. a Kubernetes port-forward). The engine has already
//! confined every request to the workspace's pod IP.

use http_body_util::{BodyExt, Full};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use workspace_culler_engine::{ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, ReadMemory};

/// Read a stream to its end, keeping at most `cap` bytes, each taken from the probe's
/// `memory` before it is kept; or why the memory was refused.
async fn read_capped(
    stream: Option<impl AsyncRead + Unpin>,
    cap: usize,
    memory: &ReadMemory,
) -> Result<Vec<u8>, String> {
    let Some(mut stream) = stream else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(kept),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                let data = &buf[..n.min(room)];
                memory.take(data.len())?;
                kept.extend_from_slice(data);
            }
        }
    }
}

/// Read a command's stdout and stderr together (neither may block the
/// other), each to its end and capped at `cap` bytes, taken from the probe's `memory`.
pub async fn read_outputs(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    cap: usize,
    memory: &ReadMemory,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (out, err) = tokio::try_join!(read_capped(stdout, cap, memory), read_capped(stderr, cap, memory))?;
    Ok((out, err))
}

/// Run a command as a local process.
pub async fn exec(command: ExecCommand, output_cap: usize, memory: &ReadMemory) -> Result<ExecOutput, ExecError> {
    let (program, args) = command
        .argv
        .split_first()
        .ok_or_else(|| ExecError::Refused("empty argv".into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Failed(format!("cannot start {program}: {e}")))?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let input = command.stdin;
    let writer = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is not an error.
            let _ = stdin.write_all(&input).await;
        }
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (_, read) = tokio::join!(writer, read_outputs(stdout, stderr, output_cap, memory));
        let (out, err) = read?;
        Ok::<_, String>((out, err, child.wait().await))
    };
    let kill_group = || {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on the process group we created; no memory is involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    };
    let timeout = Duration::from_millis(u64::from(command.timeout_ms));
    match tokio::time::timeout(timeout, run).await {
        // The probe's memory could not hold its output.
        Ok(Err(message)) => {
            kill_group();
            Err(ExecError::Failed(message))
        }
        Ok(Ok((stdout, stderr, Ok(status)))) => {
            let exit_code = status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            });
            Ok(ExecOutput {
                exit_code,
                stdout,
                stderr,
            })
        }
        Ok(Ok((_, _, Err(e)))) => Err(ExecError::Failed(format!("waiting for {program}: {e}"))),
        Err(_) => {
            kill_group();
            Err(ExecError::Timeout)
        }
    }
}

/// Send an HTTP/1.1 request over plain TCP to the request's own authority, on a connection of
/// its own.
pub async fn http(request: HttpRequest) -> Result<HttpResponse, String> {
    KeepAlive::default().send(request).await
}

/// HTTP/1.1 over plain TCP that keeps the connection of a completed exchange for the next
/// request to the same authority: the calls of one probe to its pod share one connection
/// (the built-in Jupyter probe makes two) instead of a connect and a close each. The
/// connection closes when this drops.
#[derive(Default)]
pub struct KeepAlive {
    idle: std::sync::Mutex<Option<Connection>>,
}

impl KeepAlive {
    /// Send `request` to its own authority and read the whole response (its body up to the cap).
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, String> {
        let authority = request.uri.authority().ok_or("request has no authority")?.clone();
        if request.uri.scheme_str() != Some("http") {
            return Err(format!("only http:// is supported here, not {}", request.uri));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let connect = || async {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
            Connection::handshake(stream, authority.as_str()).await
        };
        let kept = self.take_idle(authority.as_str()).await;
        let reused = kept.is_some();
        let mut connection = match kept {
            Some(connection) => connection,
            None => connect().await?,
        };
        let idempotent = request.method.is_idempotent();
        let exchanged = match connection.exchange(request.clone()).await {
            // The server closed the kept connection as the request went out: once more on a
            // new one, if the request surely had no effect.
            Err(Failed::Send(e)) if reused && (e.is_canceled() || (idempotent && e.is_incomplete_message())) => {
                connection = connect().await?;
                connection.exchange(request).await
            }
            other => other,
        };
        let (response, complete) = exchanged.map_err(|e| e.to_string())?;
        if complete {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.get_or_insert(connection);
        }
        Ok(response)
    }

    /// The kept connection, if it is to `authority` and can carry a request now.
    async fn take_idle(&self, authority: &str) -> Option<Connection> {
        let mut kept = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .filter(|c| c.authority == authority)?;
        // Ready once the last exchange is done; an error if the server closed it meanwhile.
        kept.sender.ready().await.ok()?;
        Some(kept)
    }
}

/// One HTTP/1.1 connection, and the task that drives it (stopped when this drops).
struct Connection {
    authority: String,
    sender: hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why an exchange failed: sending (hyper says whether the request went out) or after.
enum Failed {
    Send(hyper::Error),
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Send(e) => write!(f, "{e}"),
            Failed::Other(message) => f.write_str(message),
        }
    }
}

impl Connection {
    async fn handshake<S>(io: S, authority: &str) -> Result<Connection, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            authority: authority.to_owned(),
            sender,
            driver,
        })
    }

    /// Send `request`, read its response; and whether the exchange completed (the body read to
    /// its end), so the connection may carry another.
    async fn exchange(&mut self, request: HttpRequest) -> Result<(HttpResponse, bool), Failed> {
        let path = request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut builder = http::Request::builder().method(request.method.clone()).uri(path);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if !request.headers.contains_key(http::header::HOST) {
            builder = builder.header(http::header::HOST, self.authority.as_str());
        }
        let outgoing = builder
            .body(Full::new(request.body))
            .map_err(|e| Failed::Other(e.to_string()))?;
        let response = self.sender.send_request(outgoing).await.map_err(Failed::Send)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let (body, complete) = read_body_capped(
            response.into_body(),
            request.response_body_cap,
            &request.response_memory,
        )
        .await
        .map_err(Failed::Other)?;
        Ok((HttpResponse { status, headers, body }, complete))
    }
}

/// Send an HTTP/1.1 request over an established connection (TCP, or a
/// Kubernetes port-forward stream) and read the whole response.
pub async fn http_over<S>(io: S, request: HttpRequest) -> Result<HttpResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let authority = request.uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut connection = Connection::handshake(io, &authority).await?;
    let (response, _) = connection.exchange(request).await.map_err(|e| e.to_string())?;
    Ok(response)
}

/// Read a response body frame by frame, stopping as soon as it holds more
/// than `cap` bytes: a body over the cap comes back cut at `cap + 1` bytes
/// (for the engine to refuse), never read to its end. Each frame is taken from the probe's
/// `memory` before it is kept. With whether it was read to its end.
async fn read_body_capped(
    mut body: hyper::body::Incoming,
    cap: usize,
    memory: &ReadMemory,
) -> Result<(bytes::Bytes, bool), String> {
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let room = (cap + 1).saturating_sub(kept.len());
            let data = &data[..data.len().min(room)];
            memory.take(data.len())?;
            kept.extend_from_slice(data);
            if kept.len() > cap {
                return Ok((kept.freeze(), false));
            }
        }
    }
    Ok((kept.freeze(), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// When a test server closes a connection (never saying so in a header).
    #[derive(Clone, Copy, PartialEq)]
    enum Closing {
        Never,
        AfterEachAnswer,
        /// It answers the first request, and closes the connection when the next one arrives.
        OnTheSecondRequest,
    }

    /// A server on loopback answering requests with `body`, closing connections as `closing`
    /// says. Returns its port and how many connections it accepted.
    async fn server(body: &'static str, closing: Closing) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    for answered in 0.. {
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buffer[..n]),
                            }
                        }
                        request.clear();
                        if answered == 1 && closing == Closing::OnTheSecondRequest {
                            return;
                        }
                        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if socket.write_all(answer.as_bytes()).await.is_err() || closing == Closing::AfterEachAnswer {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn get(port: u16, path: &str, cap: usize) -> HttpRequest {
        HttpRequest {
            method: http::Method::GET,
            uri: format!("http://127.0.0.1:{port}{path}").parse().unwrap(),
            headers: Default::default(),
            body: Default::default(),
            response_body_cap: cap,
            response_memory: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_probes_calls_to_its_pod_share_one_connection() {
        let (port, accepted) = server("{}", Closing::Never).await;
        let (other, other_accepted) = server("[]", Closing::Never).await;
        let client = KeepAlive::default();
        for path in ["/api/status", "/api/kernels", "/api/terminals"] {
            let response = client.send(get(port, path, 1024)).await.unwrap();
            assert_eq!((response.status, &response.body[..]), (200, &b"{}"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Another authority gets a connection of its own.
        let response = client.send(get(other, "/", 1024)).await.unwrap();
        assert_eq!(&response.body[..], b"[]");
        assert_eq!(other_accepted.load(Ordering::SeqCst), 1);
        // One-shot requests each connect.
        http(get(port, "/", 1024)).await.unwrap();
        http(get(port, "/", 1024)).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_server_that_closes_after_each_answer_costs_a_connection_not_a_failed_call() {
        let (port, accepted) = server("{}", Closing::AfterEachAnswer).await;
        let client = KeepAlive::default();
        for _ in 0..3 {
            let response = client.send(get(port, "/api/status", 1024)).await.unwrap();
            assert_eq!(&response.body[..], b"{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // Closed as the next request arrives: a GET is sent once more on a new connection; a
        // POST, which may have had its effect, is not.
        let (port, accepted) = server("{}", Closing::OnTheSecondRequest).await;
        let client = KeepAlive::default();
        for _ in 0..2 {
            let response = client.send(get(port, "/api/status", 1024)).await.unwrap();
            assert_eq!(&response.body[..], b"{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let post = HttpRequest {
            method: http::Method::POST,
            ..get(port, "/api/action", 1024)
        };
        client.send(post.clone()).await.unwrap_err();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_cut_at_the_cap_leaves_its_connection_unused() {
        let (port, accepted) = server("0123456789", Closing::Never).await;
        let client = KeepAlive::default();
        let cut = client.send(get(port, "/", 4)).await.unwrap();
        assert_eq!(&cut.body[..], b"01234", "cut at the cap + 1");
        let whole = client.send(get(port, "/", 1024)).await.unwrap();
        assert_eq!(&whole.body[..], b"0123456789");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the rest of the cut body is never read as an answer"
        );
    }
}
