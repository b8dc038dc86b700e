//! The `workspace-culler` command, run the way a user runs it, and other
//! commands a test needs to succeed.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `workspace-culler <args>` with `cache` as its compiled-code cache:
/// its exit code, and its standard output followed by its standard error.
pub fn run(args: &[&str], cache: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args(args)
        .env("WORKSPACE_CULLER_CACHE_DIR", cache)
        .output()
        .expect("run workspace-culler");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `command`, which must succeed; its standard output.
pub fn succeed(command: &mut Command) -> String {
    let out = command.output().expect("start the command");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What [`serve`] answers a request with.
pub struct Answer {
    /// Status line, e.g. `200 OK`.
    pub status: &'static str,
    /// JSON body.
    pub body: String,
    /// Waited before answering.
    pub delay: std::time::Duration,
    /// Keep the response open, without a body (a watch with no news).
    pub hold_open: bool,
}

impl Answer {
    /// `status` with a JSON `body`, at once.
    pub fn json(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            delay: std::time::Duration::ZERO,
            hold_open: false,
        }
    }
}

/// A local HTTP/1.1 server on a free port of 127.0.0.1 answering each request (its target, the
/// path and query) with `answer`, each on its own thread; its address.
pub fn serve(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                // The rest of the head; these requests carry no body.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let answer = answer(request.split_whitespace().nth(1).unwrap_or("/"));
                std::thread::sleep(answer.delay);
                let mut stream = stream;
                if answer.hold_open {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        answer.status
                    );
                    std::thread::sleep(std::time::Duration::from_secs(60));
                    return;
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    answer.status,
                    answer.body.len(),
                    answer.body
                );
            });
        }
    });
    addr
}
