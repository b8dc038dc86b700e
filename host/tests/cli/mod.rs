//! The `workspace-culler` command, run the way a user runs it.

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
