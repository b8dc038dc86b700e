//! Engine overhead per evaluation (fresh Store + instantiate + call +
//! validate) with pooling and on-demand allocation, and cold start from the
//! on-disk cache vs compiling. Run: `cargo bench -p workspace-culler --bench engine`.
//!
//! Criterion reports each case; the summary at the end measures the cases
//! side by side in one run and prints their p50s and ratios.

use async_trait::async_trait;
use criterion::{Criterion, criterion_group};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace_culler_engine::builtin::builtin;
use workspace_culler_engine::{
    Allocation, Capabilities, EngineConfig, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, LoadedProbe,
    Port, ProbeEngine, ProbeOutcome, ProbeRequest, Workspace,
};

/// Answers exec instantly, so only the engine's own work is measured.
struct Instant0;

#[async_trait]
impl Capabilities for Instant0 {
    async fn exec(&self, _: &Workspace, _: ExecCommand) -> Result<ExecOutput, ExecError> {
        Ok(ExecOutput {
            exit_code: 0,
            stdout: br#"{"has_activity": true}"#.to_vec(),
            stderr: Vec::new(),
        })
    }
    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        Err("no HTTP in this benchmark".into())
    }
}

fn request(capabilities: Arc<dyn Capabilities>) -> ProbeRequest {
    ProbeRequest {
        workspace: Workspace {
            namespace: "ns".into(),
            name: "ws".into(),
            pod_name: "ws-0".into(),
            pod_ip: "10.0.0.7".into(),
            container: "main".into(),
            ports: vec![Port {
                id: "http".into(),
                number: 8888,
            }],
        },
        config: r##"{"script":"#!/bin/sh\necho '{\"has_activity\":true}' > $OUTPUT_JSON_PATH","timeoutSeconds":10}"##
            .into(),
        deadline: Duration::from_secs(15),
        capabilities,
        probe_name: "exec-script".into(),
        frozen_clock: false,
    }
}

fn exec_script() -> &'static [u8] {
    builtin("exec-script").expect("built-in exec-script").component
}

fn engine(allocation: Allocation, cache_dir: Option<std::path::PathBuf>) -> ProbeEngine {
    ProbeEngine::new(EngineConfig {
        concurrency: 4,
        allocation,
        cache_dir,
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn evaluate_once(
    rt: &tokio::runtime::Runtime,
    engine: &ProbeEngine,
    probe: &LoadedProbe,
    caps: &Arc<dyn Capabilities>,
) {
    let evaluation = rt.block_on(engine.evaluate(probe, request(caps.clone()), 1_795_951_704_000));
    assert!(
        matches!(evaluation.outcome, ProbeOutcome::Success(_)),
        "{:?}",
        evaluation.outcome
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn per_evaluation(c: &mut Criterion) {
    let rt = runtime();
    let caps: Arc<dyn Capabilities> = Arc::new(Instant0);
    let mut group = c.benchmark_group("evaluate exec-script");
    for (label, allocation) in [("pooling", Allocation::Pooling), ("on-demand", Allocation::OnDemand)] {
        let engine = engine(allocation, None);
        let probe = engine.load(exec_script(), None).expect("load");
        group.bench_function(label, |b| b.iter(|| evaluate_once(&rt, &engine, &probe, &caps)));
    }
    group.finish();
}

fn cold_start(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cached = engine(Allocation::OnDemand, Some(dir.path().to_path_buf()));
    cached.load(exec_script(), None).expect("fill the cache");
    let uncached = engine(Allocation::OnDemand, None);
    let mut group = c.benchmark_group("load exec-script");
    group.sample_size(10);
    group.bench_function("from disk cache", |b| {
        b.iter(|| {
            cached.unload_all();
            cached.load(exec_script(), None).expect("load")
        })
    });
    group.bench_function("compile", |b| {
        b.iter(|| {
            uncached.unload_all();
            uncached.load(exec_script(), None).expect("load")
        })
    });
    group.finish();
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_n(n: usize, mut f: impl FnMut()) -> Duration {
    p50((0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect())
}

/// The side-by-side summary: each pair measured in one run, interleaved.
fn summary() {
    let rt = runtime();
    let caps: Arc<dyn Capabilities> = Arc::new(Instant0);
    let pooling = engine(Allocation::Pooling, None);
    let on_demand = engine(Allocation::OnDemand, None);
    let (pp, op) = (
        pooling.load(exec_script(), None).unwrap(),
        on_demand.load(exec_script(), None).unwrap(),
    );
    for _ in 0..200 {
        evaluate_once(&rt, &pooling, &pp, &caps);
        evaluate_once(&rt, &on_demand, &op, &caps);
    }
    let pool_p50 = time_n(2000, || evaluate_once(&rt, &pooling, &pp, &caps));
    let demand_p50 = time_n(2000, || evaluate_once(&rt, &on_demand, &op, &caps));

    let dir = tempfile::tempdir().unwrap();
    let cached = engine(Allocation::OnDemand, Some(dir.path().to_path_buf()));
    cached.load(exec_script(), None).unwrap();
    let cache_p50 = time_n(20, || {
        cached.unload_all();
        cached.load(exec_script(), None).unwrap();
    });
    let compile_p50 = time_n(10, || {
        on_demand.unload_all();
        on_demand.load(exec_script(), None).unwrap();
    });
    println!("\nsummary (p50, measured side by side in this run)");
    println!(
        "  evaluation, pooling     {:>10.1} µs   (goal ≤ 25 µs)",
        pool_p50.as_secs_f64() * 1e6
    );
    println!(
        "  evaluation, on-demand   {:>10.1} µs   ({:.2}× pooling)",
        demand_p50.as_secs_f64() * 1e6,
        demand_p50.as_secs_f64() / pool_p50.as_secs_f64()
    );
    println!("  load from disk cache    {:>10.2} ms", cache_p50.as_secs_f64() * 1e3);
    println!(
        "  load by compiling       {:>10.2} ms   ({:.1}× the cache; goal ≥ 20×)",
        compile_p50.as_secs_f64() * 1e3,
        compile_p50.as_secs_f64() / cache_p50.as_secs_f64()
    );
}

criterion_group!(benches, per_evaluation, cold_start);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
