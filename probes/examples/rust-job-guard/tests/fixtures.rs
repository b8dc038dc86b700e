//! The harness fixtures of this probe (`fixtures/`), run natively against its
//! logic. The same files run against the compiled component with
//! `workspace-culler probe test <job_guard_probe.wasm> --fixture fixtures/`.

use job_guard_probe::JobGuard;

#[test]
fn the_harness_fixtures_pass_natively() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    match probe_sdk::testing::run_fixtures::<JobGuard>(dir) {
        Ok(cases) => assert_eq!(cases, 7, "every fixture ran"),
        Err(report) => panic!("fixtures failed natively:\n{report}"),
    }
}
