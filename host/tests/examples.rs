//! The example probes of `examples/`, compiled, through the harness command
//! a probe author runs: their fixture suites pass, `probe inspect` describes
//! them, and they work against real processes where they use exec.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs `workspace-culler <args>`; its exit code and output.
fn harness(args: &[&str], cache: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .args(args)
        .env("WORKSPACE_CULLER_CACHE_DIR", cache)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `probe test` of a component against a fixture directory passes every case.
fn fixtures_pass(component: &Path, fixtures: &Path, cases: usize, cache: &Path) {
    let (code, text) = harness(
        &[
            "probe",
            "test",
            component.to_str().unwrap(),
            "--fixture",
            fixtures.to_str().unwrap(),
        ],
        cache,
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("{cases} passed, 0 failed")), "{text}");
}

/// `probe inspect` shows the name, version, contract version and the imports.
fn inspect_shows(component: &Path, name: &str, imports: &[&str], cache: &Path) -> String {
    let (code, text) = harness(&["probe", "inspect", component.to_str().unwrap()], cache);
    assert_eq!(code, 0, "{text}");
    for line in [
        format!("name          {name}\n"),
        "version       0.1.0\n".to_string(),
        "wit version   0.1.0 (this host: 0.1.0)\n".to_string(),
        "exports       info, probe\n".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} missing in:\n{text}");
    }
    for import in imports {
        assert!(
            text.contains(&format!(" {import}\n")),
            "import {import} missing in:\n{text}"
        );
    }
    assert!(!text.contains("warning"), "{text}");
    text
}

#[test]
fn rust_job_guard_passes_the_cases_its_native_tests_run() {
    let cache = tempfile::tempdir().unwrap();
    let component = Path::new(env!("EXAMPLE_JOB_GUARD_WASM"));
    let fixtures = repo_root().join("examples/rust-job-guard/fixtures");
    fixtures_pass(component, &fixtures, 7, cache.path());
    inspect_shows(
        component,
        "job-guard",
        &["workspace-culler:probe/exec@0.1.0", "workspace-culler:probe/log@0.1.0"],
        cache.path(),
    );

    // Against this machine's real processes: a job running, then not.
    // A job with a command line no other process has: `sleep 600.<pid>`.
    let seconds = format!("600.{}", std::process::id());
    let marker = format!("sleep {seconds}");
    let mut job = Command::new("sleep").arg(&seconds).spawn().unwrap();
    // The pattern goes in a fixture file: on the command line it would match the harness itself.
    let case = cache.path().join("live.yaml");
    std::fs::write(&case, format!("config: {{patterns: [\"{marker}\"]}}\n")).unwrap();
    let live = |expect: &str| {
        let (_, text) = harness(
            &[
                "probe",
                "test",
                component.to_str().unwrap(),
                "--live-exec",
                "--fixture",
                case.to_str().unwrap(),
            ],
            cache.path(),
        );
        assert!(text.contains(expect), "expected {expect:?} in:\n{text}");
    };
    live("activity   active now");
    job.kill().unwrap();
    job.wait().unwrap();
    live("activity   not active now");
}
