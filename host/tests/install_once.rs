//! Every install step (scripts/ensure-*, the examples' build.sh) makes its
//! folder through scripts/lib/install-once.sh, so that callers started at the
//! same time never break each other. Checked here with a cheap stand-in build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts `bash` with the helper sourced and a stand-in `build` that counts
/// its runs in `count`, takes a second, and writes `dest/tool`; then runs `script`.
fn start(count: &Path, script: &str) -> Child {
    let helper = repo_root().join("scripts/lib/install-once.sh");
    let prelude = format!(
        r#"set -euo pipefail
. '{}'
build() {{ echo run >>'{}'; sleep 1; echo built >"$1/tool"; }}
"#,
        helper.display(),
        count.display()
    );
    Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bash")
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn callers_started_at_once_on_an_empty_cache_both_succeed_with_one_build() {
    let dir = tempfile::tempdir().unwrap();
    let (count, dest) = (dir.path().join("count"), dir.path().join("cache/tool-v1"));
    let script = format!(
        "install_once '{}' v1 build && cat '{}/tool'",
        dest.display(),
        dest.display()
    );
    let callers: Vec<Child> = (0..3).map(|_| start(&count, &script)).collect();
    for caller in callers {
        let (ok, text) = finish(caller);
        assert!(ok, "a caller failed: {text}");
        assert_eq!(text.trim(), "built", "a caller did not see the finished build");
    }
    assert_eq!(runs(&count), 1, "the build ran more than once");
    // Only the finished folder and its lock are left: no private folder.
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["tool-v1", "tool-v1.lock"]);
}

#[test]
fn a_failed_build_leaves_nothing_in_place_and_the_next_caller_builds_again() {
    let dir = tempfile::tempdir().unwrap();
    let (count, dest) = (dir.path().join("count"), dir.path().join("tool-v1"));
    let failing = format!(
        "fail() {{ build \"$1\"; exit 3; }}; install_once '{}' v1 fail",
        dest.display()
    );
    let (ok, _) = finish(start(&count, &failing));
    assert!(!ok, "a failing build must fail its caller");
    assert!(!dest.exists(), "a failed build was put in place");

    let (ok, text) = finish(start(&count, &format!("install_once '{}' v1 build", dest.display())));
    assert!(ok, "{text}");
    assert_eq!(std::fs::read_to_string(dest.join("tool")).unwrap(), "built\n");
    assert_eq!(runs(&count), 2);
}

#[test]
fn a_failed_build_fails_a_caller_that_reads_its_output_and_puts_nothing_in_place() {
    // `dir=$(fetch …)`: bash turns errexit off inside a command substitution
    // unless the helper asks for it to be inherited.
    let dir = tempfile::tempdir().unwrap();
    let (count, dest) = (dir.path().join("count"), dir.path().join("crate-v1"));
    let script = format!(
        "half() {{ echo partial >\"$1/file\"; false; echo unchecked >\"$1/file\"; }}
         where=$(install_once '{}' v1 half; echo '{}')
         echo \"used $where\"",
        dest.display(),
        dest.display()
    );
    let (ok, text) = finish(start(&count, &script));
    assert!(!ok, "the caller went on after a failed build: {text}");
    assert!(!dest.exists(), "a failed build was put in place");
}

#[test]
fn a_new_stamp_rebuilds_and_an_in_place_build_is_complete_only_once_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let (count, dest) = (dir.path().join("count"), dir.path().join("venv"));
    let call = |stamp: &str| {
        finish(start(
            &count,
            &format!("install_once --in-place '{}' {stamp} build", dest.display()),
        ))
    };
    assert!(call("a").0);
    assert!(call("a").0);
    assert_eq!(runs(&count), 1);
    assert!(call("b").0);
    assert_eq!(runs(&count), 2, "a changed stamp must rebuild");
    // A build killed half-way (no stamp) is not taken as made.
    std::fs::remove_file(dest.join(".stamp")).unwrap();
    assert!(call("b").0);
    assert_eq!(runs(&count), 3);
}

#[test]
fn every_install_step_uses_the_helper() {
    let root = repo_root();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("ensure-"))
        .collect();
    for example in ["js-rstudio", "js-quickjs-terminals", "python-cpu"] {
        scripts.push(root.join("probes/examples").join(example).join("build.sh"));
    }
    assert!(scripts.len() >= 7);
    for script in scripts {
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(
            text.contains("scripts/lib/install-once.sh")
                && (text.contains("install_once ") || text.contains("install_node_modules ")),
            "{} installs without scripts/lib/install-once.sh",
            script.display()
        );
    }
}
