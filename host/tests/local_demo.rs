//! The README's run command, `workspace-culler local`, works as written: it
//! brings up the control plane, Jupyter and the samples, and reports both
//! idle sample workspaces paused.

use std::process::Command;

#[test]
fn the_local_demo_pauses_both_idle_sample_workspaces() {
    let out = Command::new(env!("CARGO_BIN_EXE_workspace-culler"))
        .arg("local")
        .env(
            "WORKSPACE_CULLER_CONTROLPLANE",
            workspace_culler_support::controlplane::binaries().unwrap(),
        )
        .env(
            "WORKSPACE_CULLER_JUPYTER_BIN",
            workspace_culler_support::controlplane::jupyter_binaries().unwrap(),
        )
        .env("WORKSPACE_CULLER_CACHE_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "control plane ready",
        "notebook  probe Success",
        "shell     probe Success",
        "notebook  PAUSED",
        "shell     PAUSED",
        "all sample workspaces paused",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    assert!(stderr.trim().is_empty(), "the demo logged errors:\n{stderr}");
}
