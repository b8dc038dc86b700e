//! The controller refuses to start in ways an operator would otherwise not
//! notice.

mod cli;

#[test]
fn a_metrics_address_in_use_stops_the_controller_at_start_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig is read, not dialled, before the metrics address is bound.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#,
    )
    .unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, text) = cli::run(
        &[
            "controller",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--metrics-addr",
            &addr,
        ],
        &dir.path().join("cache"),
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("cannot serve /metrics, /healthz and /readyz on {addr}")),
        "{text}"
    );
}

/// An apiserver that knows none of the culler's resources: every request is a 404.
fn apiserver_without_the_crds() -> String {
    let not_found = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#;
    format!(
        "http://{}",
        cli::serve(move |_| cli::Answer::json("404 Not Found", not_found))
    )
}

/// The controller against the apiserver at `server`, with `args` more; its log to `stderr`.
fn controller_against(
    server: &str,
    dir: &std::path::Path,
    args: &[&str],
    stderr: std::process::Stdio,
) -> std::process::Child {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args([
            "controller",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("WORKSPACE_CULLER_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

#[test]
fn a_resource_the_controller_cannot_list_is_named_in_its_log() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut controller = controller_against(
        &apiserver_without_the_crds(),
        dir.path(),
        &[],
        std::process::Stdio::piped(),
    );
    // Without the CullingPolicy CRD (the chart's `crds.install: false`, say) nothing is ever
    // probed: the log must say which resource, not go quiet after "starting".
    let stderr = BufReader::new(controller.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut log = String::new();
    let mut named = false;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("cannot list or watch") && line.contains("CullingPolicy") {
            named = true;
            break;
        }
    }
    // Stuck there, it still stops when asked (a rolling update, or a lost lease).
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(controller.id() as i32, libc::SIGTERM) };
    let stopped = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        controller.try_wait().ok().flatten()
    });
    let _ = controller.kill();
    let _ = controller.wait();
    assert!(named, "no warning named the CullingPolicy resource:\n{log}");
    assert!(
        stopped.is_some_and(|s| s.success()),
        "SIGTERM did not stop a controller waiting for its caches ({stopped:?})"
    );
    assert!(
        !log.contains('\u{1b}'),
        "terminal colour codes in a log that goes to a pipe:\n{log}"
    );
    assert!(
        !log.contains("addr=127.0.0.1:0 "),
        "the port bound is not named:\n{log}"
    );
}

/// An apiserver where every list is empty and every watch stays open without news, except
/// that listing pods in namespace `b` is forbidden; the paths it was asked for.
fn apiserver_forbidding_pods_in_b() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let paths = seen.clone();
    let addr = cli::serve(move |target| {
        paths.lock().unwrap().push(target.to_string());
        if target.contains("watch=") {
            cli::Answer {
                hold_open: true,
                ..cli::Answer::json("200 OK", "")
            }
        } else if target.starts_with("/api/v1/namespaces/b/pods") {
            cli::Answer::json(
                "403 Forbidden",
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"pods is forbidden"}"#,
            )
        } else {
            cli::Answer::json(
                "200 OK",
                r#"{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}"#,
            )
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn a_namespace_whose_pods_cannot_be_listed_holds_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = apiserver_forbidding_pods_in_b();
    // `b` first: the namespaces' caches used to be waited for one after another.
    let mut controller = controller_against(
        &server,
        dir.path(),
        &["--namespace", "b", "--namespace", "a"],
        std::process::Stdio::null(),
    );
    let watched_a = (0..150).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        seen.lock()
            .unwrap()
            .iter()
            .any(|p| p.starts_with("/apis/kubeflow.org/v1beta1/namespaces/a/workspaces"))
    });
    let _ = controller.kill();
    let _ = controller.wait();
    assert!(
        watched_a,
        "namespace a's workspaces were never listed: {:?}",
        seen.lock().unwrap()
    );
}
