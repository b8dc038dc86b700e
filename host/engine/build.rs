//! Compiles the built-in probe components (`wasm32-wasip2`) from source so
//! the engine embeds them. A nested cargo with its own target dir avoids
//! contending for the outer build's lock.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "probe";
/// (cargo package, artifact stem, env var carrying its path)
const PROBES: &[(&str, &str, &str)] = &[
    ("probe-jupyter", "probe_jupyter", "PROBE_JUPYTER_WASM"),
    ("probe-exec-script", "probe_exec_script", "PROBE_EXEC_SCRIPT_WASM"),
    ("probe-nvidia-gpu", "probe_nvidia_gpu", "PROBE_NVIDIA_GPU_WASM"),
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("host/engine/ lives two levels under the workspace root")
        .to_path_buf();
    for watched in [
        "wit",
        "probe-sdk",
        // Not all of probes/: the other languages' examples hold installed toolchains.
        "probes/jupyter",
        "probes/exec-script",
        "probes/nvidia-gpu",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // A relative CARGO_TARGET_DIR is taken from the workspace root, where the nested cargo
    // runs: this script runs in host/engine/, and would look for the components elsewhere.
    let target_dir = root
        .join(env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from))
        .join("probes");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
        .arg(&target_dir);
    for (package, _, _) in PROBES {
        cmd.args(["-p", package]);
    }
    // The outer build's flags and wrappers (e.g. clippy's) are for the host, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    // Probes need little stack; a small one keeps the memory that is reset
    // between evaluations small (the default is 1 MiB).
    cmd.env("RUSTFLAGS", "-C link-arg=-zstack-size=131072");
    let status = cmd.status().expect("failed to run cargo for the probe components");
    if !status.success() {
        panic!(
            "building the probe components for {TARGET} failed (is the target installed? \
             `rustup target add {TARGET}`)"
        );
    }
    let out = target_dir.join(TARGET).join(PROFILE);
    for (_, stem, var) in PROBES {
        let wasm = out.join(format!("{stem}.wasm"));
        assert!(Path::new(&wasm).exists(), "{} was not produced", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
}
