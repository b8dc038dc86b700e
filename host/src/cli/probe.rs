//! `workspace-culler probe …`: run one probe in isolation, inspect it,
//! measure it, list the built-in ones. What the subcommands share: naming a
//! probe on the command line and loading it.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use oci_client::secrets::RegistryAuth;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use workspace_culler::harness::Fixture;
use workspace_culler::oci::{self, Registry};
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
    /// Push a component to an OCI registry as a Wasm artifact; prints the digests to pin.
    Push(PushArgs),
    /// List the built-in probes.
    List,
}

#[derive(Args)]
pub struct ProbeArg {
    /// A built-in probe name (`jupyter`, `exec-script`, `nvidia-gpu`), a component file, or an
    /// `oci://registry/repository@sha256:…` artifact.
    pub probe: String,
    /// Refuse to run the component unless its sha256 is this.
    #[arg(long)]
    sha256: Option<String>,
    /// Where compiled components (and pulled ones) are cached.
    #[arg(long, env = "WORKSPACE_CULLER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How to reach an OCI registry from the command line.
#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// A registry (`host:port`) reached over plain HTTP (repeatable); every other one over TLS.
    #[arg(long = "insecure-registry")]
    pub insecure: Vec<String>,
    /// A PEM file of CA certificates to trust for registries' TLS.
    #[arg(long = "registry-ca-file")]
    pub ca_file: Option<PathBuf>,
    /// The registry user (basic auth); the password comes from $WORKSPACE_CULLER_REGISTRY_PASSWORD.
    #[arg(long = "registry-username")]
    pub username: Option<String>,
    #[arg(
        long = "registry-password",
        env = "WORKSPACE_CULLER_REGISTRY_PASSWORD",
        hide = true,
        hide_env_values = true
    )]
    pub password: Option<String>,
}

impl RegistryArgs {
    fn client(&self, cache_dir: Option<PathBuf>) -> anyhow::Result<Registry> {
        Registry::new(oci::Settings {
            insecure: self.insecure.clone(),
            ca_file: self.ca_file.clone(),
            cache_dir,
            max_bytes: workspace_culler::controller::probe::MAX_MODULE_BYTES,
            cache_max_bytes: Some(workspace_culler_engine::cache::DEFAULT_CACHE_MAX_BYTES),
        })
        .map_err(anyhow::Error::msg)
    }

    fn auth(&self) -> RegistryAuth {
        match (&self.username, &self.password) {
            (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

#[derive(Args)]
pub struct PushArgs {
    /// The component file.
    pub component: PathBuf,
    /// Where to: `oci://registry/repository:tag`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let rest = args
        .reference
        .strip_prefix(oci::SCHEME)
        .with_context(|| format!("{} is not an oci:// reference", args.reference))?;
    let reference: oci_client::Reference = rest
        .parse()
        .with_context(|| format!("{} is not a valid OCI reference", args.reference))?;
    let component =
        std::fs::read(&args.component).with_context(|| format!("cannot read {}", args.component.display()))?;
    let registry = args.registry.client(None)?;
    let pushed = registry
        .push(&reference, component, &args.registry.auth())
        .await
        .map_err(|e| anyhow::anyhow!("pushing to {}: {e}", args.reference))?;
    let pinned = format!(
        "{}{}/{}@{}",
        oci::SCHEME,
        reference.registry(),
        reference.repository(),
        pushed.manifest_digest
    );
    println!("pushed    {}", args.reference);
    println!("digest    {}", pushed.manifest_digest);
    println!("sha256    {}", pushed.component_sha256);
    println!(
        "pin       module: {{location: {pinned}, sha256: {}}}",
        pushed.component_sha256
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs a `probe` subcommand.
pub async fn run(command: ProbeCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProbeCommand::Test(args) => super::probe_test::run(args).await,
        ProbeCommand::Inspect(arg) => super::probe_inspect::run(arg).await,
        ProbeCommand::Bench(args) => super::probe_bench::run(args).await,
        ProbeCommand::Push(args) => push(args).await,
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

/// The component a command line names (a built-in name, a file, or an `oci://` artifact pulled
/// into `cache_dir`), and a label for reports.
pub async fn probe_bytes(
    probe: &str,
    sha256: Option<&str>,
    registry: &RegistryArgs,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<(Vec<u8>, String)> {
    if let Some(b) = builtin::builtin(probe) {
        return Ok((b.component.to_vec(), b.name.to_string()));
    }
    if oci::is_oci(probe) {
        let location = oci::parse(probe, sha256).map_err(anyhow::Error::msg)?;
        let fetched = registry
            .client(cache_dir)?
            .fetch(&location, &registry.auth())
            .await
            .map_err(anyhow::Error::msg)?;
        let label = location
            .reference
            .repository()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        return Ok((fetched.bytes, label));
    }
    let path = Path::new(probe);
    if !path.exists() {
        let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        bail!(
            "{probe} is neither a built-in probe ({}), a file, nor an oci:// artifact",
            names.join(", ")
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let label = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((bytes, label))
}

/// The engine and the loaded probe named on the command line.
pub async fn load(arg: &ProbeArg) -> anyhow::Result<(ProbeEngine, Arc<LoadedProbe>, String)> {
    let cache_dir = arg
        .cache_dir
        .clone()
        .or_else(workspace_culler_engine::default_cache_dir);
    let engine = ProbeEngine::new(EngineConfig {
        concurrency: 1,
        cache_dir: cache_dir.clone(),
        ..EngineConfig::default()
    })?;
    let (bytes, label) = probe_bytes(&arg.probe, arg.sha256.as_deref(), &arg.registry, cache_dir).await?;
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
