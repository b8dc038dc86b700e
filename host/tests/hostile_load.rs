//! 500 hostile evaluations at once against an engine configured as the controller's is by
//! default (64 at a time, pooled, 64 MiB per guest, 256 MiB for all together): every one is
//! contained, a benign probe submitted among them still runs, and the process's peak memory
//! stays within the budget and under the chart's limit. The figures are printed (`--nocapture`). Its own test binary, so the peak is this
//! test's alone.

use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace_culler_engine::contract::ProbeActivity;
use workspace_culler_engine::{
    Capabilities, EngineConfig, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, ProbeEngine,
    ProbeOutcome, ProbeRequest, Workspace,
};

/// The chart's memory limit at its defaults (`resources.limits.memory`: 320 MiB + the probes'
/// memory budget of 256 MiB + 1 MiB for each of the 64 probes in flight).
const CHART_LIMIT_MIB: u64 = 640;

struct Nothing;

#[async_trait::async_trait]
impl Capabilities for Nothing {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        Err(ExecError::Failed("no exec here".into()))
    }
    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        Err("no http here".into())
    }
}

fn request(config: serde_json::Value) -> ProbeRequest {
    ProbeRequest {
        workspace: Workspace {
            namespace: "ns".into(),
            name: "ws".into(),
            pod_name: "ws-0".into(),
            pod_ip: "10.0.0.7".into(),
            container: "main".into(),
            ports: Vec::new(),
        },
        config: config.to_string(),
        deadline: Duration::from_secs(30),
        capabilities: Arc::new(Nothing),
        probe_name: "hostile".into(),
        frozen_clock: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_memory_bombs_at_once_are_contained_and_memory_stays_bounded() {
    // As the controller's by default: 64 in flight, 256 MiB for all together.
    let engine = Arc::new(
        ProbeEngine::new(EngineConfig {
            concurrency: 64,
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let hostile = std::fs::read(workspace_culler_support::test_probes::hostile()).unwrap();
    let probe = engine.load(&hostile, None).unwrap();
    let benign = serde_json::json!({"mode": "echo", "json": "{\"has_activity\": false}"});
    let alone = Instant::now();
    let outcome = engine.evaluate(&probe, request(benign.clone()), 0).await.outcome;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::Idle));
    let alone = alone.elapsed();
    let before = workspace_culler_support::process::peak_rss_mib(std::process::id());

    let started = Instant::now();
    let bombs: Vec<_> = (0..500)
        .map(|_| {
            let (engine, probe) = (engine.clone(), probe.clone());
            tokio::spawn(async move {
                engine
                    .evaluate(&probe, request(serde_json::json!({"mode": "grow"})), 0)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = Instant::now();
    let outcome = engine.evaluate(&probe, request(benign.clone()), 0).await.outcome;
    let during = during.elapsed();
    // Among the bombs it runs: it answers, or, when they hold the whole budget at that moment,
    // it fails saying so (a Failure never pauses) and is tried again at its next probe.
    assert!(
        outcome == ProbeOutcome::Success(ProbeActivity::Idle)
            || matches!(&outcome, ProbeOutcome::Failure(m) if m.contains("hold the whole budget of 256 MiB")),
        "the benign probe among the bombs: {outcome:?}"
    );
    for bomb in bombs {
        let outcome = bomb.await.unwrap().outcome;
        // Each stops at its own cap, or earlier at the budget all of them share.
        assert!(
            matches!(&outcome, ProbeOutcome::Failure(m)
                if m.contains("memory cap of 64 MiB") || m.contains("hold the whole budget of 256 MiB")),
            "{outcome:?}"
        );
    }
    let all = started.elapsed();
    let peak = workspace_culler_support::process::peak_rss_mib(std::process::id());
    eprintln!(
        "500 memory bombs: {all:?} in all; peak RSS {peak} MiB (before: {before} MiB); a benign probe took {alone:?} alone, {during:?} among them"
    );
    assert!(peak < CHART_LIMIT_MIB, "peak RSS {peak} MiB");
    // Bounded by the budget, not by concurrency × cap.
    let budget_mib = (workspace_culler_engine::DEFAULT_MEMORY_BUDGET_BYTES >> 20) as u64;
    assert!(
        peak < before + budget_mib + 64,
        "peak RSS {peak} MiB, {before} MiB before"
    );
    assert_eq!(engine.memory_in_use(), 0, "every evaluation gave its memory back");
    let after = engine.evaluate(&probe, request(benign), 0).await.outcome;
    assert_eq!(
        after,
        ProbeOutcome::Success(ProbeActivity::Idle),
        "the benign probe after the bombs"
    );
}
