//! Probe components that only tests run (the hostile probe, the Rust example
//! probe), built from source for `wasm32-wasip2` on first use — by a cargo of
//! their own, into `target/test-probes`, with the profile the built-in probes
//! use. The product never builds them.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "probe";

/// The hostile probe of `tests/probes/hostile`: misbehaves on command.
pub fn hostile() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| built("probe-hostile", "probe_hostile"))
}

/// The Rust example probe of `probes/examples/rust-job-guard`.
pub fn job_guard() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| built("job-guard-probe", "job_guard_probe"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `package` and returns its component (cargo's own lock orders
/// processes that build at once). Panics with cargo's reason: only tests call it.
fn built(package: &str, stem: &str) -> PathBuf {
    match build(package, stem) {
        Ok(path) => path,
        Err(e) => panic!("{e:#}"),
    }
}

fn build(package: &str, stem: &str) -> anyhow::Result<PathBuf> {
    let root = root();
    let target_dir = root.join("target/test-probes");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The test build's flags and wrappers are for the host, not for the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUSTFLAGS", "-C link-arg=-zstack-size=131072");
    let out = cmd.output().context("cannot run cargo to build a test probe")?;
    if !out.status.success() {
        bail!(
            "building {package} for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wasm = target_dir.join(TARGET).join(PROFILE).join(format!("{stem}.wasm"));
    if !wasm.is_file() {
        bail!("{} was not produced", wasm.display());
    }
    Ok(wasm)
}
