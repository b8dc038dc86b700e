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
fn a_fixture_of_a_folder_without_expect_fails_as_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(&fixtures("jupyter")).join("01-idle-server.yaml"),
        dir.path().join("01-idle-server.yaml"),
    )
    .unwrap();
    // A case that says nothing of what should come of it: it would pass whatever the probe did.
    std::fs::write(dir.path().join("02-unchecked.yaml"), "workspace: {podIp: 10.0.0.7}\n").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (code, text) = cli::run(
        &["probe", "test", "jupyter", "--fixture", dir.path().to_str().unwrap()],
        cache.path(),
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("UNCHECKED") && text.contains("1 passed, 1 failed"),
        "{text}"
    );
    // Given on the command line, an expectation is one for every case, so none is unchecked.
    let (_, text) = cli::run(
        &[
            "probe",
            "test",
            "jupyter",
            "--fixture",
            dir.path().to_str().unwrap(),
            "--expect",
            "Failure",
        ],
        cache.path(),
    );
    assert!(!text.contains("UNCHECKED"), "{text}");
    // One file on its own, without an expectation, is a look at what the probe does.
    let (code, text) = cli::run(
        &[
            "probe",
            "test",
            "jupyter",
            "--fixture",
            dir.path().join("02-unchecked.yaml").to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "one file on its own is a look at what the probe does: {text}");
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

/// A local HTTP server answering every request with `body` (JSON) after `delay`; its port.
fn http_server(body: &'static str, delay: std::time::Duration) -> u16 {
    cli::serve(move |_| cli::Answer {
        delay,
        ..cli::Answer::json("200 OK", body)
    })
    .port()
}

/// Records a live HTTP run of the built-in Jupyter probe against `port` from `base` (a
/// fixture's text), then replays the recording: the texts of both runs.
fn record_and_replay(base: &str, port: u16) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (case, recorded) = (dir.path().join("case.yaml"), dir.path().join("recorded.yaml"));
    std::fs::write(&case, base).unwrap();
    let port = format!("jupyterlab={port}");
    let (code, live) = cli::run(
        &[
            "probe",
            "test",
            "jupyter",
            "--live-http",
            "--port",
            &port,
            "--fixture",
            case.to_str().unwrap(),
            "--record",
            recorded.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{live}");
    let (code, replay) = cli::run(
        &["probe", "test", "jupyter", "--fixture", recorded.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(
        code,
        0,
        "the recording does not replay to the same outcome:\n{live}\n{replay}\n{}",
        std::fs::read_to_string(&recorded).unwrap()
    );
    (live, replay)
}

#[test]
fn a_json_null_answer_is_recorded_as_the_text_it_was() {
    // A body of `null` is JSON, but a fixture's `body: null` is no body at all.
    let port = http_server("null", std::time::Duration::ZERO);
    let (live, _) = record_and_replay("config: {lastActivity: true, portId: jupyterlab}\n", port);
    assert!(live.contains("result     Failure"), "{live}");
}

#[test]
fn a_live_call_the_deadline_cut_off_replays_as_a_timeout() {
    // The server answers after 10 s; the probe's deadline is 3 s (time enough, on a busy
    // machine, to instantiate the probe and send its first call).
    let port = http_server("{}", std::time::Duration::from_secs(10));
    let (live, replay) = record_and_replay(
        "config: {lastActivity: true, portId: jupyterlab}\ndeadlineMs: 3000\n",
        port,
    );
    assert!(live.contains("result     Timeout"), "{live}");
    assert!(replay.contains("result     Timeout"), "{replay}");
}

#[test]
fn a_workspace_that_is_not_namespace_slash_name_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let (code, text) = cli::run(
        &[
            "probe",
            "test",
            "jupyter",
            "--fixture",
            &fixtures("jupyter"),
            "--workspace",
            "notebook",
        ],
        cache.path(),
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("expected namespace/name"), "{text}");
}

#[test]
fn a_live_run_is_recorded_at_a_frozen_clock_so_a_probe_that_reads_the_time_replays_alike() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("recorded.yaml");
    let probe = workspace_culler_support::test_probes::hostile()
        .to_str()
        .unwrap()
        .to_string();
    // The probe reports the time it reads after a command that takes a while.
    let config = r#"{"mode": "clock", "execFirst": "sleep 0.2"}"#;
    let (code, live) = cli::run(
        &[
            "probe",
            "test",
            &probe,
            "--config",
            config,
            "--live-exec",
            "--record",
            recorded.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{live}");
    let (code, replay) = cli::run(
        &["probe", "test", &probe, "--fixture", recorded.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(
        code,
        0,
        "{live}\n{replay}\n{}",
        std::fs::read_to_string(&recorded).unwrap()
    );
}
