//! The example probes of `probes/examples/`, compiled, through the harness command
//! a probe author runs: their fixture suites pass, `probe inspect` describes
//! them, and they work against real processes where they use exec.

mod cli;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `probe test` of a component against a fixture directory passes every case.
fn fixtures_pass(component: &Path, fixtures: &Path, cases: usize, cache: &Path) {
    let (code, text) = cli::run(
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

/// The author's last steps: `probe push` to a real registry, then the same fixtures pass
/// against the artifact pulled by the digest push printed.
fn push_and_test_the_pulled_artifact(component: &Path, name: &str, fixtures: &Path, cases: usize, cache: &Path) {
    let registry = workspace_culler_support::registry::Registry::start(Default::default()).unwrap();
    let insecure = ["--insecure-registry", registry.host.as_str()];
    let target = format!("oci://{}/examples/{name}:v1", registry.host);
    let (code, pushed) = cli::run(
        &[
            "probe",
            "push",
            component.to_str().unwrap(),
            &target,
            insecure[0],
            insecure[1],
        ],
        cache,
    );
    assert_eq!(code, 0, "{pushed}");
    let digest = pushed
        .lines()
        .find_map(|l| l.strip_prefix("digest"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no digest in:\n{pushed}"));
    let pinned = format!("oci://{}/examples/{name}@{digest}", registry.host);
    let (code, text) = cli::run(
        &[
            "probe",
            "test",
            &pinned,
            "--fixture",
            fixtures.to_str().unwrap(),
            insecure[0],
            insecure[1],
        ],
        cache,
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("{cases} passed, 0 failed")), "{text}");
    assert!(
        registry
            .requests()
            .iter()
            .any(|(method, uri)| method == "GET" && uri.contains(digest))
    );
}

/// `probe inspect` shows the name, version, contract version and the imports.
fn inspect_shows(component: &Path, name: &str, imports: &[&str], cache: &Path) -> String {
    let (code, text) = cli::run(&["probe", "inspect", component.to_str().unwrap()], cache);
    assert_eq!(code, 0, "{text}");
    for line in [
        format!("name          {name}\n"),
        "version       0.1.0\n".to_string(),
        "wit version   0.1.0 (this host: 0.1.0)\n".to_string(),
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
    // The contract's exports, whatever else a language's toolchain adds.
    assert!(text.contains("exports       info, probe\n"), "{text}");
    // Interfaces a runtime imports but a probe does not get say what the host gives instead.
    for (import, note) in [
        ("wasi:filesystem/preopens", "no directory open"),
        ("wasi:sockets/tcp@", "refused: no socket"),
    ] {
        if let Some(line) = text.lines().find(|l| l.contains(import)) {
            assert!(line.contains(note), "{line}");
        }
    }
    text
}

#[test]
fn rust_job_guard_passes_the_cases_its_native_tests_run() {
    let cache = tempfile::tempdir().unwrap();
    let component = workspace_culler_support::test_probes::job_guard();
    let fixtures = repo_root().join("probes/examples/rust-job-guard/fixtures");
    fixtures_pass(component, &fixtures, 7, cache.path());
    // The report names the probe as it names itself, not after its file (job_guard_probe.wasm).
    let first = fixtures.join("01-job-running.yaml");
    let (_, report) = cli::run(
        &[
            "probe",
            "test",
            component.to_str().unwrap(),
            "--fixture",
            first.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(report.contains("probe      job-guard (sha256 "), "{report}");
    push_and_test_the_pulled_artifact(component, "job-guard", &fixtures, 7, cache.path());
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
        let (_, text) = cli::run(
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

/// Builds an example (its folder `dir`) with its own build script; the component's path.
fn build(dir: &Path, out: &Path) -> PathBuf {
    let stdout = cli::succeed(
        Command::new("bash")
            .arg(dir.join("build.sh"))
            .arg(out)
            .env("WORKSPACE_CULLER_ROOT", repo_root()),
    );
    let component = PathBuf::from(stdout.lines().last().unwrap_or_default());
    assert!(component.is_file(), "build.sh printed no component path: {stdout}");
    component
}

/// A copy of an example whose `file` has `from` replaced by `to` (its
/// installed toolchain shared, not copied).
fn altered_copy(example: &Path, file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    copy_tree(example, copy.path());
    let path = copy.path().join(file);
    let source = std::fs::read_to_string(&path).unwrap();
    assert!(source.contains(from), "{file} no longer contains {from:?}");
    std::fs::write(&path, source.replacen(from, to, 1)).unwrap();
    copy
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let name = entry.file_name();
        if name == "node_modules" || name == ".venv" {
            std::os::unix::fs::symlink(&source, &target).unwrap();
        } else if name == "out" {
            continue;
        } else if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_tree(&source, &target);
        } else {
            std::fs::copy(&source, &target).unwrap();
        }
    }
}

/// An example's full check: built from source, its fixtures pass, inspect
/// describes it, and a copy whose output has a wrong type fails `case` with
/// the validator's message.
fn check_example(
    example: &str,
    name: &str,
    cases: usize,
    imports: &[&str],
    broken: (&str, &str, &str),
    case: &str,
    message: &str,
) {
    let dir = repo_root().join("probes/examples").join(example);
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let component = build(&dir, out.path());
    fixtures_pass(&component, &dir.join("fixtures"), cases, cache.path());
    push_and_test_the_pulled_artifact(&component, name, &dir.join("fixtures"), cases, cache.path());
    let inspected = inspect_shows(&component, name, imports, cache.path());
    assert!(
        inspected.contains("workspace-culler:probe/types@0.1.0\n"),
        "{inspected}"
    );

    let (file, from, to) = broken;
    let copy = altered_copy(&dir, file, from, to);
    let broken_out = tempfile::tempdir().unwrap();
    let broken_component = build(copy.path(), broken_out.path());
    let fixture = dir.join("fixtures").join(case);
    let (code, text) = cli::run(
        &[
            "probe",
            "test",
            broken_component.to_str().unwrap(),
            "--fixture",
            fixture.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("message    {message}\n")), "{text}");
    assert!(
        text.contains("MISMATCH   result: expected Success, got Failure"),
        "{text}"
    );
}

#[test]
fn go_code_server_is_built_with_standard_go_and_passes_its_fixtures() {
    check_example(
        "go-code-server",
        "code-server",
        9,
        &["wasi:http/outgoing-handler@0.2.12", "workspace-culler:probe/log@0.1.0"],
        (
            "src/export_wit_world/probe.go",
            r#"map[string]any{"has_activity": true}"#,
            r#"map[string]any{"has_activity": "true"}"#,
        ),
        "01-alive.yaml",
        "invalid probe result: has_activity must be true or false, got a string",
    );
}

#[test]
fn js_rstudio_is_built_with_componentize_js_and_passes_its_fixtures() {
    check_example(
        "js-rstudio",
        "rstudio",
        10,
        &["wasi:http/outgoing-handler@0.2.12", "workspace-culler:probe/log@0.1.0"],
        (
            "src/rstudio.js",
            "{ last_activity: last.toISOString() }",
            "{ last_activity: last.getTime() }",
        ),
        "01-recently-used.yaml",
        "invalid probe result: last_activity must be an RFC 3339 timestamp string or null, got a number",
    );
}

#[test]
fn python_cpu_is_built_with_componentize_py_and_passes_its_fixtures() {
    check_example(
        "python-cpu",
        "cpu-time",
        7,
        &["workspace-culler:probe/exec@0.1.0", "workspace-culler:probe/log@0.1.0"],
        (
            "app/app.py",
            r#"json.dumps({"has_activity": active})"#,
            r#"json.dumps({"has_activity": "yes" if active else "no"})"#,
        ),
        "01-busy.yaml",
        "invalid probe result: has_activity must be true or false, got a string",
    );
}

#[test]
fn js_quickjs_terminals_is_built_with_componentize_qjs_and_passes_its_fixtures() {
    check_example(
        "js-quickjs-terminals",
        "terminals",
        7,
        &["workspace-culler:probe/exec@0.1.0", "workspace-culler:probe/log@0.1.0"],
        (
            "src/terminals.js",
            "{ last_activity: new Date(at).toISOString() }",
            "{ last_activity: at }",
        ),
        "01-terminal-in-use.yaml",
        "invalid probe result: last_activity must be an RFC 3339 timestamp string or null, got a number",
    );
}

/// A hostile probe in JavaScript (QuickJS, built with the terminals example's toolchain) is
/// contained like the Rust one: a loop, a memory bomb, runaway recursion, a log flood and an
/// exec flood each end as the `Timeout` or `Failure` that names it.
#[test]
fn a_hostile_javascript_probe_is_contained_like_a_rust_one() {
    const HOSTILE: &str = r#"import { log } from 'workspace-culler:probe/log@0.1.0';
import { run } from 'workspace-culler:probe/exec@0.1.0';
export function info() {
  return { name: 'hostile-js', version: '0.1.0', description: 'Misbehaves on request', capabilities: ['exec', 'log'] };
}
export function probe(workspace, config) {
  const mode = JSON.parse(config).mode;
  if (mode === 'loop') { for (;;) {} }
  if (mode === 'grow') { const hoard = []; for (;;) hoard.push(new Array(1 << 16).fill(7)); }
  if (mode === 'recurse') { const deeper = (n) => deeper(n + 1) + 1; return String(deeper(0)); }
  if (mode === 'log-flood') { for (;;) log('info', 'x'.repeat(1000)); }
  if (mode === 'exec-flood') {
    for (let i = 0; i < 1000; i++) {
      try { run({ argv: ['true'], stdin: new Uint8Array(0), timeoutMs: 1000 }); } catch (e) {}
    }
    return '{"has_activity": false}';
  }
  throw { tag: 'failure', val: `unknown mode ${mode}` };
}
"#;
    let example = repo_root().join("probes/examples/js-quickjs-terminals");
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&example, copy.path());
    std::fs::write(copy.path().join("src/terminals.js"), HOSTILE).unwrap();
    let out = tempfile::tempdir().unwrap();
    let component = build(copy.path(), out.path());
    let fixtures = tempfile::tempdir().unwrap();
    for (mode, result, message) in [
        ("loop", "Timeout", "ran past its deadline of 2000ms"),
        ("grow", "Failure", "memory cap of 64 MiB"),
        ("recurse", "Failure", "call stack exhausted"),
        ("log-flood", "Failure", "logged more than its cap"),
        (
            "exec-flood",
            "Failure",
            "more than its cap of 32 commands per evaluation",
        ),
    ] {
        let fixture = format!(
            "description: {mode}\nconfig: {{mode: {mode}}}\ndeadlineMs: 2000\nexpect: {{result: {result}, messageContains: \"{message}\"}}\n"
        );
        std::fs::write(fixtures.path().join(format!("{mode}.yaml")), fixture).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let (code, text) = cli::run(
        &[
            "probe",
            "test",
            component.to_str().unwrap(),
            "--fixture",
            fixtures.path().to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("5 passed, 0 failed"), "{text}");
}
