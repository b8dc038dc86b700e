//! Transports behind capabilities: a local process for exec (killed with its
//! whole process group at the timeout), and an HTTP/1.1 client over TCP or
//! over any stream (e.g. a Kubernetes port-forward). The engine has already
//! confined every request to the workspace's pod IP.

use http_body_util::{BodyExt, Full};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use workspace_culler_engine::{ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse};

/// Read a stream to its end, keeping at most `cap` bytes.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let Some(mut stream) = stream else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Read a command's stdout and stderr together (neither may block the
/// other), each to its end and capped at `cap` bytes.
pub async fn read_outputs(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    cap: usize,
) -> (Vec<u8>, Vec<u8>) {
    tokio::join!(read_capped(stdout, cap), read_capped(stderr, cap))
}

/// Run a command as a local process.
pub async fn exec(command: ExecCommand, output_cap: usize) -> Result<ExecOutput, ExecError> {
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
        let (_, (out, err), status) = tokio::join!(writer, read_outputs(stdout, stderr, output_cap), child.wait());
        (out, err, status)
    };
    let timeout = Duration::from_millis(u64::from(command.timeout_ms));
    match tokio::time::timeout(timeout, run).await {
        Ok((stdout, stderr, Ok(status))) => {
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
        Ok((_, _, Err(e))) => Err(ExecError::Failed(format!("waiting for {program}: {e}"))),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the process group we created; no memory is involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            Err(ExecError::Timeout)
        }
    }
}

/// Send an HTTP/1.1 request over plain TCP to the request's own authority.
pub async fn http(request: HttpRequest) -> Result<HttpResponse, String> {
    let authority = request.uri.authority().ok_or("request has no authority")?.clone();
    if request.uri.scheme_str() != Some("http") {
        return Err(format!("only http:// is supported here, not {}", request.uri));
    }
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    http_over(stream, request).await
}

/// Send an HTTP/1.1 request over an established connection (TCP, or a
/// Kubernetes port-forward stream) and read the whole response.
pub async fn http_over<S>(io: S, request: HttpRequest) -> Result<HttpResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let authority = request.uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
    let driver = tokio::spawn(connection);
    let path = request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = http::Request::builder().method(request.method).uri(path);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if !request.headers.contains_key(http::header::HOST) {
        builder = builder.header(http::header::HOST, authority.as_str());
    }
    let outgoing = builder.body(Full::new(request.body)).map_err(|e| e.to_string())?;
    let response = sender.send_request(outgoing).await.map_err(|e| format!("{e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = read_body_capped(response.into_body(), request.response_body_cap).await;
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body: body?,
    })
}

/// Read a response body frame by frame, stopping as soon as it holds more
/// than `cap` bytes: a body over the cap comes back cut at `cap + 1` bytes
/// (for the engine to refuse), never read to its end.
async fn read_body_capped(mut body: hyper::body::Incoming, cap: usize) -> Result<bytes::Bytes, String> {
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let room = (cap + 1).saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
            if kept.len() > cap {
                break;
            }
        }
    }
    Ok(kept.freeze())
}
