//! The harness fixtures of this probe (`tests/fixtures/nvidia-gpu/`), run natively against its
//! logic; `host/tests/harness_fixtures.rs` runs the same files against the built-in component.

use probe_nvidia_gpu::NvidiaGpu;

#[test]
fn the_harness_fixtures_pass_natively() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/nvidia-gpu");
    match probe_sdk::testing::run_fixtures::<NvidiaGpu>(dir) {
        Ok(cases) => assert_eq!(cases, 13, "every fixture ran"),
        Err(report) => panic!("fixtures failed natively:\n{report}"),
    }
}
