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
