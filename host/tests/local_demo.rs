//! The README's run command, `workspace-culler local`, works as written: on Kubeflow's CRDs it
//! brings up the control plane, the sample jupyterlab kind with its probe in a CullingPolicy,
//! two workspaces with real Jupyter servers, and reports the idle one paused (Kubeflow's status
//! fields in ms) while the busy one keeps running.

use std::process::Command;

#[test]
fn the_local_demo_pauses_the_idle_workspace_and_not_the_busy_one() {
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
        "installed Kubeflow Notebooks' CRDs",
        "idle  probe Success",
        "busy  probe Success",
        "idle PAUSED",
        "busy is still running after idle was paused",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    // Kubeflow's fields are UNIX ms.
    let last_activity: i64 = stdout
        .lines()
        .filter(|l| l.contains("probe Success"))
        .find_map(|l| l.split("lastActivity ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        last_activity > 1_700_000_000_000,
        "lastActivity in ms: {last_activity}\n{stdout}"
    );
    assert!(stderr.trim().is_empty(), "the demo logged errors:\n{stderr}");
}
