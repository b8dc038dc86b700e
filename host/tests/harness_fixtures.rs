//! The harness's own fixtures (tests/fixtures/<probe>/) pass through the
//! harness command, as a probe author's CI step would run them.

mod cli;

use std::path::Path;

fn fixtures(probe: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(probe);
    dir.to_str().unwrap().to_string()
}

fn run_fixture_dir(probe: &str) -> (i32, String) {
    let cache = tempfile::tempdir().unwrap();
    cli::run(&["probe", "test", probe, "--fixture", &fixtures(probe)], cache.path())
}

#[test]
fn jupyter_fixtures_pass() {
    let (code, text) = run_fixture_dir("jupyter");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("7 passed, 0 failed"), "{text}");
}

#[test]
fn exec_script_fixtures_pass() {
    let (code, text) = run_fixture_dir("exec-script");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("7 passed, 0 failed"), "{text}");
}

#[test]
fn nvidia_gpu_fixtures_pass() {
    let (code, text) = run_fixture_dir("nvidia-gpu");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("13 passed, 0 failed"), "{text}");
}

#[test]
fn a_fixture_run_against_the_wrong_probe_fails_loudly() {
    // The jupyter fixtures run against exec-script: every case mismatches.
    let cache = tempfile::tempdir().unwrap();
    let (code, text) = cli::run(
        &["probe", "test", "exec-script", "--fixture", &fixtures("jupyter")],
        cache.path(),
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("0 passed, 7 failed"), "{text}");
}

#[test]
fn a_malformed_fixture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "workspace: {podIP: 10.0.0.7}\n").unwrap();
    let (code, text) = cli::run(
        &["probe", "test", "jupyter", "--fixture", bad.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("is malformed") && text.contains("unknown field `podIP`"),
        "{text}"
    );
}

#[test]
fn a_live_exec_run_is_recorded_and_replays_the_recorded_output() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case.yaml");
    let recorded = dir.path().join("recorded.yaml");
    // The script's output differs on every run: replay must give the recorded one.
    std::fs::write(
        &case,
        "config:\n  script: |\n    #!/bin/sh\n    echo \"{\\\"last_activity\\\": \\\"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\\\"}\" > \"$OUTPUT_JSON_PATH\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let all: Vec<&str> = ["probe", "test", "exec-script"].iter().chain(args).copied().collect();
        let (code, text) = cli::run(&all, dir.path());
        (Some(code), text)
    };
    let (code, live) = run(&[
        "--live-exec",
        "--fixture",
        case.to_str().unwrap(),
        "--record",
        recorded.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{live}");
    let fixture = std::fs::read_to_string(&recorded).unwrap();
    let at = fixture
        .lines()
        .find_map(|l| l.trim().strip_prefix("activity: "))
        .unwrap_or_else(|| panic!("no recorded activity in {fixture}"))
        .trim_matches(['\'', '"'])
        .to_string();
    assert!(
        fixture.contains("last_activity"),
        "the exec output is recorded: {fixture}"
    );

    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, replay) = run(&["--fixture", recorded.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{replay}");
    assert!(replay.contains("expect     Success ✔"), "{replay}");
    let when = chrono::DateTime::parse_from_rfc3339(&at).unwrap().to_rfc3339();
    assert!(
        replay.contains(&when[..19]),
        "replay shows the recorded time {at}: {replay}"
    );

    // --record without a live capability has nothing to record.
    let (code, text) = run(&["--record", recorded.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--record records live calls"), "{text}");
}

#[test]
fn inspect_shows_the_contract_version_and_what_the_probe_imports() {
    let cache = tempfile::tempdir().unwrap();
    let (code, text) = cli::run(&["probe", "inspect", "exec-script"], cache.path());
    assert_eq!(code, 0, "{text}");
    for line in [
        "name          exec-script",
        "capabilities  exec",
        "world         workspace-culler:probe/activity-probe",
        "wit version   0.1.0 (this host: 0.1.0)",
        "imports       ",
        "exports       info, probe",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    assert!(text.contains(" workspace-culler:probe/exec@0.1.0\n"), "{text}");
    assert!(text.contains(" workspace-culler:probe/types@0.1.0\n"), "{text}");
    assert!(!text.contains("warning"), "{text}");
}
