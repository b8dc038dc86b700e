//! A workspace's pod is not trusted: whatever it answers a probe's HTTP
//! request costs the controller no more memory than the engine's body cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use workspace_culler::harness::{self, Fixture, FixtureWorkspace, LiveMode};
use workspace_culler_engine::builtin::builtin;
use workspace_culler_engine::{Allocation, EngineConfig, HttpRequest, Limits, ProbeEngine, ProbeOutcome};

/// Where the server stops on its own, so a client that reads everything
/// still ends (and the test fails on what it kept, not by running out of memory).
const SERVER_LIMIT: usize = 256 << 20;
const CAP: usize = 4 << 20;

/// Read a request's head; whether it came whole.
async fn read_request_head(socket: &mut tokio::net::TcpStream) -> bool {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A local HTTP server that answers every request with a chunked body that
/// does not end (up to `SERVER_LIMIT`); the port and the bytes it sent.
async fn endless_body_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if !read_request_head(&mut socket).await {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let data = vec![b' '; 64 << 10];
                let chunk = [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat();
                while counter.load(Ordering::SeqCst) < SERVER_LIMIT {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                    counter.fetch_add(data.len(), Ordering::SeqCst);
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (port, sent)
}

#[tokio::test]
async fn an_endless_response_body_is_cut_at_the_cap_not_read_to_its_end() {
    let (port, sent) = endless_body_server().await;
    let request = HttpRequest {
        method: http::Method::GET,
        uri: format!("http://127.0.0.1:{port}/api/status").parse().unwrap(),
        headers: Default::default(),
        body: Default::default(),
        response_body_cap: CAP,
        response_memory: Default::default(),
    };
    let response = workspace_culler::transport::http(request).await.unwrap();
    assert_eq!(
        response.body.len(),
        CAP + 1,
        "the body is kept up to one byte over the cap"
    );
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "the client read on past the cap: the server sent {sent} bytes"
    );
}

/// The built-in Jupyter probe, on an engine with `limits` and the body cap of `CAP`, run live
/// against a server on `port`: the engine, and the evaluation.
async fn jupyter_against(
    port: u16,
    limits: Limits,
    deadline_ms: Option<u64>,
) -> (ProbeEngine, workspace_culler_engine::Evaluation) {
    let engine = ProbeEngine::new(EngineConfig {
        allocation: Allocation::OnDemand,
        limits: Limits {
            http_body_bytes: CAP,
            ..limits
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let probe = engine.load(builtin("jupyter").unwrap().component, None).unwrap();
    let fixture = Fixture {
        workspace: FixtureWorkspace {
            namespace: "ns".into(),
            name: "ws".into(),
            ports: [("jupyterlab".to_string(), port)].into(),
            ..FixtureWorkspace::default()
        },
        config: serde_json::json!({"lastActivity": true, "portId": "jupyterlab"}),
        deadline_ms,
        ..Fixture::default()
    };
    let live = LiveMode {
        exec: false,
        http: true,
    };
    let evaluation = live_run(&engine, &probe, "jupyter", &fixture, live).await;
    (engine, evaluation)
}

/// `fixture` run against `probe` with the calls `live` says made for real.
async fn live_run(
    engine: &ProbeEngine,
    probe: &workspace_culler_engine::LoadedProbe,
    name: &str,
    fixture: &Fixture,
    live: LiveMode,
) -> workspace_culler_engine::Evaluation {
    let run = harness::run_case(engine, probe, name, fixture, live);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the probe did not end")
        .unwrap()
        .evaluation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jupyter_probe_against_an_endless_body_fails_naming_the_cap() {
    let (port, sent) = endless_body_server().await;
    let (_, evaluation) = jupyter_against(port, Limits::default(), None).await;
    assert!(
        matches!(evaluation.outcome, ProbeOutcome::Failure(_)),
        "expected a Failure, got {:?}",
        evaluation.outcome
    );
    let logs = format!("{:?}", evaluation.logs);
    assert!(
        logs.contains(&format!("over the cap of {CAP} bytes")),
        "no word of the cap in {logs}"
    );
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "the body was read on past the cap: the server sent {sent} bytes"
    );
}

/// A server that sends `body` bytes of a longer body, then holds the connection open without
/// sending more; its port.
async fn stalling_server(body: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_request_head(&mut socket).await {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body + 1
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&vec![b' '; body]).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    port
}

/// A pod that sends most of a body within the body cap and then stalls holds memory of the
/// probe's while the host reads it: the body is taken from the probe's memory as it arrives,
/// so a probe whose memory cannot hold it fails there and then, naming its cap. (Before, the
/// body was counted only once read whole: with 64 probes in flight against such pods, the
/// controller held 64 bodies that its memory budget did not see, until each probe's deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_taken_from_the_probe_s_memory_as_it_arrives() {
    let port = stalling_server(3 << 20).await;
    let limits = Limits {
        memory_bytes: 2 << 20,
        ..Limits::default()
    };
    let (engine, evaluation) = jupyter_against(port, limits, Some(30_000)).await;
    match &evaluation.outcome {
        ProbeOutcome::Failure(message) => assert!(
            message.contains("memory cap of 2 MiB"),
            "the failure does not name the memory cap: {message}"
        ),
        other => panic!("expected a Failure naming the memory cap, got {other:?} (held until the deadline)"),
    }
    assert_eq!(engine.memory_in_use(), 0, "every byte is given back");
}

/// The same for what a command in the pod writes: exec-script's command writes a MiB (its
/// output's cap) and then sleeps. Taken as it arrives, the output runs out of a probe memory
/// of 1 MiB there and then; read whole, it was held until the command's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_s_output_is_taken_from_the_probe_s_memory_as_it_arrives() {
    let engine = ProbeEngine::new(EngineConfig {
        allocation: Allocation::OnDemand,
        limits: Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let probe = engine.load(builtin("exec-script").unwrap().component, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture {
        config: serde_json::json!({
            "script": "#!/bin/sh\nhead -c 1048576 /dev/zero\nsleep 30\n",
            "outputPath": dir.path().join("activity_probe.json"),
            "timeoutSeconds": 20,
        }),
        deadline_ms: Some(25_000),
        ..Fixture::default()
    };
    let live = LiveMode {
        exec: true,
        http: false,
    };
    let evaluation = live_run(&engine, &probe, "exec-script", &fixture, live).await;
    match &evaluation.outcome {
        ProbeOutcome::Failure(message) => assert!(
            message.contains("memory cap of 1 MiB") && message.contains("output of a command"),
            "the failure does not name the memory cap and the command: {message}"
        ),
        other => panic!("expected a Failure naming the memory cap, got {other:?} (held until the timeout)"),
    }
    assert_eq!(engine.memory_in_use(), 0, "every byte is given back");
}
