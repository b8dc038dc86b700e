//! `workspace-culler probe …`: run one probe in isolation, inspect it,
//! measure it, list the built-in ones. What the subcommands share: naming a
//! probe on the command line and loading it.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use workspace_culler::harness::Fixture;
use workspace_culler_engine::builtin::{self, BUILTINS};
use workspace_culler_engine::{EngineConfig, LoadedProbe, ProbeEngine};

#[derive(Subcommand)]
pub enum ProbeCommand {
    /// Run a probe against fixtures (scripted exec/HTTP replies and clock) or live targets.
    Test(super::probe_test::TestArgs),
    /// Show what a probe says about itself, and its digest.
    Inspect(ProbeArg),
    /// Measure what a probe costs: compiling, loading from the cache, one evaluation.
    Bench(super::probe_bench::BenchArgs),
    /// List the built-in probes.
    List,
}

#[derive(Args)]
pub struct ProbeArg {
    /// A built-in probe name (`jupyter`, `exec-script`) or a component file.
    pub probe: String,
    /// Refuse to run the component unless its sha256 is this.
    #[arg(long)]
    sha256: Option<String>,
    /// Where compiled components are cached.
    #[arg(long, env = "WORKSPACE_CULLER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Runs a `probe` subcommand.
pub async fn run(command: ProbeCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProbeCommand::Test(args) => super::probe_test::run(args).await,
        ProbeCommand::Inspect(arg) => super::probe_inspect::run(arg).await,
        ProbeCommand::Bench(args) => super::probe_bench::run(args).await,
        ProbeCommand::List => {
            for b in BUILTINS {
                println!(
                    "{:<12} sha256 {}",
                    b.name,
                    workspace_culler_engine::sha256_hex(b.component)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The component a command line names (a built-in name or a file), and a
/// label for reports.
pub fn probe_bytes(probe: &str) -> anyhow::Result<(Vec<u8>, String)> {
    if let Some(b) = builtin::builtin(probe) {
        return Ok((b.component.to_vec(), b.name.to_string()));
    }
    let path = Path::new(probe);
    if !path.exists() {
        let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        bail!("{probe} is neither a built-in probe ({}) nor a file", names.join(", "));
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let label = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((bytes, label))
}

/// The engine and the loaded probe named on the command line.
pub fn load(arg: &ProbeArg) -> anyhow::Result<(ProbeEngine, Arc<LoadedProbe>, String)> {
    let engine = ProbeEngine::new(EngineConfig {
        concurrency: 1,
        cache_dir: arg
            .cache_dir
            .clone()
            .or_else(workspace_culler_engine::default_cache_dir),
        ..EngineConfig::default()
    })?;
    let (bytes, label) = probe_bytes(&arg.probe)?;
    let probe = engine.load(&bytes, arg.sha256.as_deref())?;
    Ok((engine, probe, label))
}

/// The fixtures a command line names: a file, every file of a folder, or
/// none (one empty case).
pub fn fixtures(path: Option<&Path>) -> anyhow::Result<Vec<(String, Fixture)>> {
    let Some(path) = path else {
        return Ok(vec![("(no fixture)".into(), Fixture::default())]);
    };
    let cases = if path.is_dir() {
        Fixture::from_dir(path)
    } else {
        Fixture::from_file(path).map(|f| vec![(path.to_path_buf(), f)])
    };
    Ok(cases
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|(p, f)| (p.display().to_string(), f))
        .collect())
}
