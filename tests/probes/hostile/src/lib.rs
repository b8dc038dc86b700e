//! A probe that misbehaves on request (`{"mode": ...}`), so the tests can
//! prove the engine contains every kind of misbehaviour.

use probe_sdk::{Activity, Command, Host, HttpRequest, Probe, ProbeError, ProbeInfo, Reply, Workspace};
use std::io::Write;

/// The misbehaving probe.
pub struct Hostile;

impl Probe for Hostile {
    const INFO: ProbeInfo = ProbeInfo {
        name: "hostile",
        version: env!("CARGO_PKG_VERSION"),
        description: "Misbehaves on request to test the engine's limits",
        capabilities: &["exec", "http", "log"],
    };

    fn probe(host: &dyn Host, workspace: &Workspace, config: &str) -> Result<Reply, ProbeError> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| ProbeError::Failure(e.to_string()))?;
        let mode = config["mode"].as_str().unwrap_or("");
        match mode {
            // Burn CPU forever: only epoch interruption can stop this.
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // Sit in a host call for an hour: only the host's wall clock can stop this.
            "block-in-exec" => {
                let cmd = Command::new(["sleep", "3600"]).timeout_ms(3_600_000);
                let out = host.exec(&cmd);
                Err(ProbeError::Failure(format!("exec returned: {out:?}")))
            }
            // Grow memory without bound.
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // Write `bytes` to stdout in chunks (never holding them in memory).
            "flood-stdout" => {
                let total = config["bytes"].as_u64().unwrap_or(100 << 20);
                let chunk = vec![b'x'; 64 * 1024];
                let mut out = std::io::stdout();
                let mut written = 0u64;
                while written < total {
                    out.write_all(&chunk).map_err(|e| ProbeError::Failure(e.to_string()))?;
                    written += chunk.len() as u64;
                }
                Ok(Reply::Json(r#"{"has_activity":true}"#.into()))
            }
            // Return a result of `bytes` bytes.
            "big-result" => {
                let bytes = config["bytes"].as_u64().unwrap_or(8 << 20) as usize;
                Ok(Reply::Json(" ".repeat(bytes)))
            }
            "trap" => panic!("the hostile probe panics on purpose"),
            // Recurse (to `depth`, by default without end): the guest's stack overflows.
            "stack" => {
                fn deeper(n: u64, depth: u64) -> u64 {
                    if n >= depth {
                        return n;
                    }
                    std::hint::black_box(deeper(std::hint::black_box(n + 1), depth)) + 1
                }
                let depth = config["depth"].as_u64().unwrap_or(u64::MAX);
                Ok(Activity::last_at(deeper(0, depth) as i64).into())
            }
            "http" => {
                let url = config["url"].as_str().unwrap_or("http://example.com/");
                match host.http(&HttpRequest::get(url)) {
                    Ok(r) => Ok(Reply::Json(format!(r#"{{"has_activity":{}}}"#, r.status == 200))),
                    Err(e) => Err(ProbeError::Failure(e.to_string())),
                }
            }
            // The time (after running `execFirst`, if given, as a shell command).
            "clock" => {
                if let Some(command) = config["execFirst"].as_str() {
                    let _ = host.exec(&Command::new(["/bin/sh", "-c", command]));
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| ProbeError::Failure(e.to_string()))?;
                Ok(Activity::last_at(now.as_millis() as i64).into())
            }
            // Return whatever JSON text the config carries, for contract tests.
            "echo" => Ok(Reply::Json(config["json"].as_str().unwrap_or("").to_string())),
            "log" => {
                host.log(probe_sdk::LogLevel::Warn, "hello from the probe");
                eprintln!("stderr line from the probe");
                Ok(Reply::Json(r#"{"has_activity":false}"#.into()))
            }
            // Log `lines` lines of `bytes` bytes each.
            "log-flood" => {
                let line = "x".repeat(config["bytes"].as_u64().unwrap_or(64) as usize);
                for _ in 0..config["lines"].as_u64().unwrap_or(100_000) {
                    host.log(probe_sdk::LogLevel::Info, &line);
                }
                Ok(Reply::Json(r#"{"has_activity":false}"#.into()))
            }
            // Run `calls` commands, going on past refusals.
            "exec-many" => {
                for _ in 0..config["calls"].as_u64().unwrap_or(10_000) {
                    let _ = host.exec(&Command::new(["true"]));
                }
                Ok(Reply::Json(r#"{"has_activity":false}"#.into()))
            }
            // Run one command whose argv is `bytes` long, or has `args` empty arguments.
            "exec-big" => {
                let command = match config["args"].as_u64() {
                    Some(args) => Command::new(std::iter::once("true").chain((0..args).map(|_| ""))),
                    None => {
                        let arg = "x".repeat(config["bytes"].as_u64().unwrap_or(1 << 20) as usize);
                        Command::new(["echo", arg.as_str()])
                    }
                };
                let _ = host.exec(&command);
                Ok(Reply::Json(r#"{"has_activity":false}"#.into()))
            }
            // Send `requests` HTTP requests to `url`, going on past refusals.
            "http-many" => {
                let url = config["url"].as_str().unwrap_or("http://example.com/");
                for _ in 0..config["requests"].as_u64().unwrap_or(10_000) {
                    let _ = host.http(&HttpRequest::get(url));
                }
                Ok(Reply::Json(r#"{"has_activity":false}"#.into()))
            }
            // Open `requests` HTTP requests to the workspace's pod and write `bytes` into each
            // one's body without ever finishing it — or, with `responses`, take each response
            // and never read it — so the host holds those bodies meanwhile.
            "hold-http" => {
                use probe_sdk::bindings::wasi::http::{outgoing_handler, types};
                let authority = format!("{}:80", workspace.pod_ip);
                let bytes = config["bytes"].as_u64().unwrap_or(4 << 20) as usize;
                let responses = config["responses"].as_bool().unwrap_or(false);
                let chunk = [b'x'; 4096];
                let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
                for _ in 0..config["requests"].as_u64().unwrap_or(16) {
                    let request = types::OutgoingRequest::new(types::Fields::new());
                    let _ = request.set_scheme(Some(&types::Scheme::Http));
                    let _ = request.set_authority(Some(&authority));
                    let _ = request.set_path_with_query(Some("/"));
                    if responses {
                        let Ok(future) = outgoing_handler::handle(request, None) else {
                            continue;
                        };
                        future.subscribe().block();
                        if let Some(Ok(Ok(response))) = future.get() {
                            held.push(Box::new(response));
                        }
                        continue;
                    }
                    let Ok(body) = request.body() else { continue };
                    let Ok(stream) = body.write() else { continue };
                    let Ok(future) = outgoing_handler::handle(request, None) else {
                        continue;
                    };
                    let mut written = 0;
                    while written < bytes {
                        let n = chunk.len().min(bytes - written);
                        if stream.blocking_write_and_flush(&chunk[..n]).is_err() {
                            break;
                        }
                        written += n;
                    }
                    // Dropped in this order: the stream before its body.
                    held.push(Box::new((future, stream, body)));
                }
                std::hint::black_box(&held);
                Ok(Reply::Json(r#"{"has_activity":true}"#.into()))
            }
            // Write a body of `bytes` into a request, finish it, and only then send it (as
            // wasmtime's own request helpers do); active if it is answered.
            "post-first" => {
                use probe_sdk::bindings::wasi::http::{outgoing_handler, types};
                let request = types::OutgoingRequest::new(types::Fields::new());
                let _ = request.set_method(&types::Method::Post);
                let _ = request.set_scheme(Some(&types::Scheme::Http));
                let _ = request.set_authority(Some(&format!("{}:80", workspace.pod_ip)));
                let _ = request.set_path_with_query(Some("/"));
                let body = request.body().map_err(|()| ProbeError::Failure("no body".into()))?;
                let stream = body.write().map_err(|()| ProbeError::Failure("no stream".into()))?;
                // As much as each write may take (`check-write`), waiting when it takes none.
                let mut left = config["bytes"].as_u64().unwrap_or(30 << 10) as usize;
                let chunk = vec![b'x'; 1 << 20];
                while left > 0 {
                    let permit = stream
                        .check_write()
                        .map_err(|e| ProbeError::Failure(format!("writing the body: {e:?}")))?;
                    if permit == 0 {
                        stream.subscribe().block();
                        continue;
                    }
                    let n = left.min(usize::try_from(permit).unwrap_or(usize::MAX)).min(chunk.len());
                    stream
                        .write(&chunk[..n])
                        .map_err(|e| ProbeError::Failure(format!("writing the body: {e:?}")))?;
                    left -= n;
                }
                drop(stream);
                types::OutgoingBody::finish(body, None).map_err(|e| ProbeError::Failure(format!("{e:?}")))?;
                let future =
                    outgoing_handler::handle(request, None).map_err(|e| ProbeError::Failure(format!("{e:?}")))?;
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(response))) => Ok(Reply::Json(format!(
                        r#"{{"has_activity":{}}}"#,
                        response.status() == 200
                    ))),
                    other => Err(ProbeError::Failure(format!("{other:?}"))),
                }
            }
            // Write into `requests` request bodies as much as the host takes, never sending
            // them (no `handle`): the host holds what it took. Fails with the most one took.
            "unsent-bodies" => {
                use probe_sdk::bindings::wasi::http::types;
                let mut held = Vec::new();
                let mut most = 0u64;
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..config["requests"].as_u64().unwrap_or(4) {
                    let request = types::OutgoingRequest::new(types::Fields::new());
                    let Ok(body) = request.body() else { break };
                    let Ok(stream) = body.write() else { break };
                    let mut taken = 0u64;
                    while let Ok(permit) = stream.check_write() {
                        if permit == 0 || taken > 64 << 20 {
                            break;
                        }
                        let n = usize::try_from(permit).unwrap_or(usize::MAX).min(chunk.len());
                        if stream.write(&chunk[..n]).is_err() {
                            break;
                        }
                        taken += n as u64;
                    }
                    most = most.max(taken);
                    // Dropped in this order: the stream, its body, their request.
                    held.push((stream, body, request));
                }
                std::hint::black_box(&held);
                Err(ProbeError::Failure(format!(
                    "the host took up to {most} bytes of an unsent body"
                )))
            }
            // Send `requests` GETs to the workspace's pod all at once, then wait for each.
            "http-parallel" => {
                use probe_sdk::bindings::wasi::http::{outgoing_handler, types};
                let authority = format!("{}:80", workspace.pod_ip);
                let futures: Vec<_> = (0..config["requests"].as_u64().unwrap_or(4))
                    .filter_map(|_| {
                        let request = types::OutgoingRequest::new(types::Fields::new());
                        let _ = request.set_scheme(Some(&types::Scheme::Http));
                        let _ = request.set_authority(Some(&authority));
                        let _ = request.set_path_with_query(Some("/"));
                        outgoing_handler::handle(request, None).ok()
                    })
                    .collect();
                let answered = futures
                    .iter()
                    .filter(|future| {
                        future.subscribe().block();
                        matches!(future.get(), Some(Ok(Ok(_))))
                    })
                    .count();
                Ok(Reply::Json(format!(
                    r#"{{"has_activity":{}}}"#,
                    answered == futures.len()
                )))
            }
            // Hold ever more resource handles (HTTP header maps) in the host.
            "handles" => {
                let mut held = Vec::new();
                loop {
                    held.push(probe_sdk::bindings::wasi::http::types::Fields::new());
                    std::hint::black_box(&held);
                }
            }
            // Try every way out the contract does not give: the filesystem, a socket, a name
            // lookup, the environment. Reports what happened in one log line.
            "escape" => {
                let port = config["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(1);
                let outcome = |what: &str, result: Result<String, std::io::Error>| match result {
                    Ok(got) => format!("{what}: ESCAPED {got}"),
                    Err(e) => format!("{what}: refused ({e})"),
                };
                let lines = [
                    outcome(
                        "read_dir /",
                        std::fs::read_dir("/").map(|d| format!("{} entries", d.count())),
                    ),
                    outcome(
                        "read /etc/passwd",
                        std::fs::read("/etc/passwd").map(|b| format!("{} bytes", b.len())),
                    ),
                    outcome(
                        "tcp 127.0.0.1",
                        std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| "connected".into()),
                    ),
                    outcome(
                        "lookup kubernetes.default.svc",
                        std::net::ToSocketAddrs::to_socket_addrs(&("kubernetes.default.svc", 443))
                            .map(|a| format!("{} addresses", a.count())),
                    ),
                    format!(
                        "environment: {} variables, {} arguments",
                        std::env::vars().count(),
                        std::env::args().count()
                    ),
                ];
                host.log(probe_sdk::LogLevel::Info, &lines.join("; "));
                Ok(Reply::Json(r#"{"has_activity":false}"#.into()))
            }
            other => Err(ProbeError::Failure(format!("unknown mode {other:?}"))),
        }
    }
}

probe_sdk::export_probe!(Hostile);
