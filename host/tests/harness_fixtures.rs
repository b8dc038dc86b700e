//! The harness's own fixtures (tests/fixtures/<probe>/) pass through the
//! harness command, as a probe author's CI step would run them.

use std::path::Path;

fn run_fixture_dir(probe: &str) -> (i32, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(probe);
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args(["probe", "test", probe, "--fixture"])
        .arg(&dir)
        .env("WORKSPACE_CULLER_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn jupyter_fixtures_pass() {
    let (code, text) = run_fixture_dir("jupyter");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("6 passed, 0 failed"), "{text}");
}

#[test]
fn exec_script_fixtures_pass() {
    let (code, text) = run_fixture_dir("exec-script");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("6 passed, 0 failed"), "{text}");
}

#[test]
fn a_fixture_run_against_the_wrong_probe_fails_loudly() {
    // The jupyter fixtures run against exec-script: every case mismatches.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jupyter");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args(["probe", "test", "exec-script", "--fixture"])
        .arg(&dir)
        .env("WORKSPACE_CULLER_CACHE_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("0 passed, 6 failed"), "{text}");
}

#[test]
fn a_malformed_fixture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "workspace: {podIP: 10.0.0.7}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args(["probe", "test", "jupyter", "--fixture"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("is malformed") && text.contains("unknown field `podIP`"),
        "{text}"
    );
}
