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
