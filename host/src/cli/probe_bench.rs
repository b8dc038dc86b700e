//! `workspace-culler probe bench`: what a probe costs — compiling, loading
//! from the compiled-code cache, one evaluation.

use super::probe::probe_bytes;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use workspace_culler::harness::{self, Fixture, LiveMode};
use workspace_culler_engine::{EngineConfig, ProbeEngine};

#[derive(Args)]
pub struct BenchArgs {
    /// A built-in probe name, a component file, or an `oci://` artifact.
    pub probe: String,
    /// The fixture evaluated (scripted replies; default: none).
    #[arg(long)]
    pub fixture: Option<PathBuf>,
    /// Evaluations measured.
    #[arg(long, default_value_t = 200)]
    pub iterations: u32,
    #[command(flatten)]
    pub registry: super::probe::RegistryArgs,
}

/// Prints the measurements.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use std::time::{Duration, Instant};
    let (bytes, _) = probe_bytes(&args.probe, None, &args.registry, None).await?;
    let cache = tempfile::tempdir()?;
    let engine = |cache_dir: Option<PathBuf>| {
        ProbeEngine::new(EngineConfig {
            concurrency: 1,
            cache_dir,
            ..EngineConfig::default()
        })
    };
    // Compiling: an engine without a cache.
    let uncached = engine(None)?;
    let started = Instant::now();
    uncached.load(&bytes, None)?;
    let compile = started.elapsed();
    drop(uncached);
    // Loading compiled code from the disk cache (written by a first load).
    let cached = engine(Some(cache.path().to_path_buf()))?;
    cached.load(&bytes, None)?;
    let mut loads = Vec::new();
    for _ in 0..5 {
        cached.unload_all();
        let started = Instant::now();
        cached.load(&bytes, None)?;
        loads.push(started.elapsed());
    }
    loads.sort();
    let load = loads[loads.len() / 2];
    // Evaluations, after a warm-up.
    let probe = cached.load(&bytes, None)?;
    let fixture = match &args.fixture {
        Some(path) => Fixture::from_file(path).map_err(anyhow::Error::msg)?,
        None => Fixture::default(),
    };
    let live = LiveMode::default();
    let mut runs = Vec::with_capacity(args.iterations as usize);
    let mut outcome = String::new();
    for i in 0..args.iterations.max(1) + 5 {
        let started = Instant::now();
        let report = harness::run_case(&cached, &probe, "bench", &fixture, live).await?;
        if i >= 5 {
            runs.push(started.elapsed());
        }
        outcome = report.evaluation.outcome.result().to_string();
    }
    runs.sort();
    let at = |q: f64| runs[((runs.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| {
        if d < Duration::from_millis(1) {
            format!("{:.1} µs", d.as_secs_f64() * 1e6)
        } else {
            format!("{:.2} ms", d.as_secs_f64() * 1000.0)
        }
    };
    println!(
        "component     {} ({} KiB, sha256 {})",
        args.probe,
        bytes.len().div_ceil(1024),
        &probe.digest[..16]
    );
    println!("compile       {}", ms(compile));
    println!(
        "cached load   {} (median of 5; {:.0}x faster than compiling)",
        ms(load),
        compile.as_secs_f64() / load.as_secs_f64().max(1e-9)
    );
    println!(
        "evaluation    p50 {}, p90 {} over {} runs ({outcome}; {})",
        ms(at(0.5)),
        ms(at(0.9)),
        runs.len(),
        args.fixture
            .as_deref()
            .map_or("no fixture".into(), |p| p.display().to_string())
    );
    Ok(ExitCode::SUCCESS)
}
