//! `workspace-culler`: one binary, several subcommands.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use workspace_culler::builtin::{self, BUILTINS};
use workspace_culler::controller::{self, capabilities::HttpMode};
use workspace_culler::engine::{EngineConfig, LoadedProbe, ProbeEngine, WIT_PACKAGE, WIT_VERSION};
use workspace_culler::harness::{self, Expectation, Fixture, LiveMode};

#[derive(Parser)]
#[command(
    name = "workspace-culler",
    version,
    about = "Pauses idle notebook Workspaces; probes are Wasm components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with activity probes (run them in isolation, inspect them).
    #[command(subcommand)]
    Probe(ProbeCommand),
    /// Print the Workspace and WorkspaceKind CRDs (YAML).
    Crds,
    /// Run the culling controller.
    Controller(ControllerArgs),
    /// Run everything on this machine: a real control plane, Jupyter, sample workspaces, the controller.
    Local,
}

#[derive(Args)]
struct ControllerArgs {
    /// A kubeconfig file (default: in-cluster service account, else ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (repeatable; default: all).
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Probes running at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// How probes reach pods over HTTP.
    #[arg(long, value_enum, default_value = "direct")]
    http_mode: HttpMode,
    /// Record what would be culled without pausing anything.
    #[arg(long)]
    dry_run: bool,
    /// Where Jupyter serves inside the pod.
    #[arg(long, default_value = workspace_culler::plan::DEFAULT_CONNECT_PATH)]
    connect_path: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Where compiled probe components are cached.
    #[arg(long, env = "WORKSPACE_CULLER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Act only while holding a Lease, so several replicas never both act.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "workspace-culler")]
    leader_election_lease: String,
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster service account and no kubeconfig")?,
    };
    Ok(kube::Client::try_from(config)?)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let engine = Arc::new(ProbeEngine::new(EngineConfig {
        concurrency: u32::from(args.concurrency),
        cache_dir: args.cache_dir.clone().or_else(default_cache_dir),
        ..EngineConfig::default()
    })?);
    let metrics = controller::metrics::Metrics::new()?;
    let readiness = controller::server::Readiness::default();
    tokio::spawn(controller::server::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
    ));
    let settings = controller::Settings {
        dry_run: args.dry_run,
        http_mode: args.http_mode,
        connect_path: args.connect_path,
        namespaces: args.namespaces,
        concurrency: args.concurrency,
    };
    tracing::info!(dry_run = settings.dry_run, http_mode = ?settings.http_mode, "starting the culling controller");
    readiness.set(true);
    if !args.leader_elect {
        controller::run(client, engine, settings, metrics, shutdown_signal()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("workspace-culler-{}", std::process::id()));
    let elector = Arc::new(controller::leader::Elector::new(
        client.clone(),
        &args.leader_election_namespace,
        &args.leader_election_lease,
        &identity,
    ));
    tokio::select! {
        _ = elector.acquire() => {}
        _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
    }
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let holder = elector.clone();
    tokio::spawn(async move {
        holder.hold().await;
        let _ = lost_tx.send(());
    });
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = lost.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = lost_rx => flag.store(true, std::sync::atomic::Ordering::SeqCst),
        }
    };
    controller::run(client, engine, settings, metrics, stop).await?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("lost the leader lease; exiting so that only the new leader acts");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum ProbeCommand {
    /// Run a probe against fixtures (scripted exec/HTTP replies and clock) or live targets.
    Test(TestArgs),
    /// Show what a probe says about itself, and its digest.
    Inspect(ProbeArg),
    /// Measure what a probe costs: compiling, loading from the cache, one evaluation.
    Bench(BenchArgs),
    /// List the built-in probes.
    List,
}

#[derive(Args)]
struct BenchArgs {
    /// A built-in probe name or a component file.
    probe: String,
    /// The fixture evaluated (scripted replies; default: none).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Evaluations measured.
    #[arg(long, default_value_t = 200)]
    iterations: u32,
}

#[derive(Args)]
struct ProbeArg {
    /// A built-in probe name (`jupyter`, `exec-script`) or a component file.
    probe: String,
    /// Refuse to run the component unless its sha256 is this.
    #[arg(long)]
    sha256: Option<String>,
    /// Where compiled components are cached.
    #[arg(long, env = "WORKSPACE_CULLER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct TestArgs {
    #[command(flatten)]
    probe: ProbeArg,
    /// A fixture file (YAML or JSON), or a directory of them.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// The probe's JSON config (replaces the fixture's).
    #[arg(long)]
    config: Option<String>,
    /// Expected result (Success, Failure, Timeout); exit 1 if it differs.
    #[arg(long)]
    expect: Option<String>,
    /// Run exec calls as local processes.
    #[arg(long)]
    live_exec: bool,
    /// Send HTTP calls to the real address (the workspace's pod IP).
    #[arg(long)]
    live_http: bool,
    /// The workspace's pod IP (default 127.0.0.1).
    #[arg(long)]
    pod_ip: Option<String>,
    /// A port of the workspace, `id=number` (repeatable).
    #[arg(long = "port", value_parser = parse_port)]
    ports: Vec<(String, u16)>,
    /// Workspace as `namespace/name`.
    #[arg(long)]
    workspace: Option<String>,
    /// Write a fixture that replays this run (the replies of the live calls,
    /// the clock, and the outcome as expectation) to this file.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

fn parse_port(s: &str) -> Result<(String, u16), String> {
    let (id, n) = s.split_once('=').ok_or("expected id=number, e.g. jupyterlab=8888")?;
    Ok((
        id.to_string(),
        n.parse().map_err(|_| format!("{n:?} is not a port number"))?,
    ))
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("workspace-culler"))
}

/// The component a command line names (a built-in name or a file), and a
/// label for reports.
fn probe_bytes(probe: &str) -> anyhow::Result<(Vec<u8>, String)> {
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
fn load(arg: &ProbeArg) -> anyhow::Result<(ProbeEngine, std::sync::Arc<LoadedProbe>, String)> {
    let engine = ProbeEngine::new(EngineConfig {
        concurrency: 1,
        cache_dir: arg.cache_dir.clone().or_else(default_cache_dir),
        ..EngineConfig::default()
    })?;
    let (bytes, label) = probe_bytes(&arg.probe)?;
    let probe = engine.load(&bytes, arg.sha256.as_deref())?;
    Ok((engine, probe, label))
}

fn fixtures(path: Option<&Path>) -> anyhow::Result<Vec<(String, Fixture)>> {
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

async fn probe_test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (engine, probe, name) = load(&args.probe)?;
    let live = LiveMode {
        exec: args.live_exec,
        http: args.live_http,
    };
    let cases = fixtures(args.fixture.as_deref())?;
    if args.record.is_some() && cases.len() != 1 {
        bail!("--record writes one case; give one fixture file (or none), not a directory");
    }
    if args.record.is_some() && !args.live_exec && !args.live_http {
        bail!("--record records live calls; add --live-exec and/or --live-http");
    }
    let (mut passed, mut failed) = (0, 0);
    for (source, mut fixture) in cases {
        if let Some(config) = &args.config {
            fixture.config = serde_json::from_str(config).context("--config is not JSON")?;
        }
        if let Some(result) = &args.expect {
            let expect = fixture.expect.get_or_insert_with(Expectation::default);
            expect.result = result.clone();
        }
        if let Some(ip) = &args.pod_ip {
            fixture.workspace.pod_ip = ip.clone();
        }
        fixture.workspace.ports.extend(args.ports.iter().cloned());
        if let Some((ns, ws)) = args.workspace.as_deref().and_then(|w| w.split_once('/')) {
            fixture.workspace.namespace = ns.into();
            fixture.workspace.name = ws.into();
        }
        let report = harness::run_case(&engine, &probe, &name, &fixture, live).await?;
        println!("── {source}");
        print!(
            "{}",
            harness::render(&format!("{name} (sha256 {})", &probe.digest[..16]), &fixture, &report)
        );
        if let Some(path) = &args.record {
            let mut recording = report.recording.clone();
            recording
                .description
                .get_or_insert_with(|| format!("recorded from a live run of {name}"));
            let yaml = serde_yaml::to_string(&recording)?;
            std::fs::write(path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "recorded   {} (replay: probe test {} --fixture {})",
                path.display(),
                args.probe.probe,
                path.display()
            );
        }
        if report.mismatches.is_empty() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if passed + failed > 1 || failed > 0 {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn probe_inspect(arg: ProbeArg) -> anyhow::Result<ExitCode> {
    let (engine, probe, _) = load(&arg)?;
    let info = engine.info(&probe).await?;
    let unknown = "(none: it imports nothing of the contract)".to_string();
    println!("name          {}", info.name);
    println!("version       {}", info.version);
    println!("description   {}", info.description);
    println!("capabilities  {}", info.capabilities.join(", "));
    println!("world         {WIT_PACKAGE}/activity-probe");
    println!(
        "wit version   {} (this host: {WIT_VERSION})",
        probe.wit_version.as_ref().unwrap_or(&unknown)
    );
    println!("sha256        {}", probe.digest);
    println!("size          {} KiB", probe.size.div_ceil(1024));
    for (i, import) in probe.imports.iter().enumerate() {
        println!("{:<13} {import}", if i == 0 { "imports" } else { "" });
    }
    println!("exports       {}", probe.exports.join(", "));
    for warning in capability_warnings(&info.capabilities, &probe.imports) {
        println!("warning       {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn probe_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use std::time::{Duration, Instant};
    let (bytes, _) = probe_bytes(&args.probe)?;
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

/// Where what a probe says it uses and what it imports disagree.
fn capability_warnings(declared: &[String], imports: &[String]) -> Vec<String> {
    let imported = |prefix: &str| imports.iter().any(|i| i.starts_with(prefix));
    let capabilities = [
        ("exec", format!("{WIT_PACKAGE}/exec@")),
        ("log", format!("{WIT_PACKAGE}/log@")),
        ("http", "wasi:http/outgoing-handler@".to_string()),
    ];
    let mut warnings = Vec::new();
    for (capability, import) in &capabilities {
        // Importing more than it declares is common (the SDK binds the whole
        // world); declaring what it cannot call is a mistake.
        if declared.iter().any(|d| d == capability) && !imported(import) {
            warnings.push(format!(
                "declares capability {capability:?} but does not import {import}*"
            ));
        }
    }
    for d in declared {
        if !capabilities.iter().any(|(c, _)| c == d) {
            warnings.push(format!("declares unknown capability {d:?} (known: exec, http, log)"));
        }
    }
    warnings
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Controller(_) => "workspace_culler=info,probe=info,warn",
        // The demo prints its own progress; the apiserver's start-up is not an error.
        Command::Local => "error,kube_client=off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Structured (JSON) logs for clusters: LOG_FORMAT=json.
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Probe(ProbeCommand::Test(args)) => probe_test(args).await,
            Command::Probe(ProbeCommand::Inspect(arg)) => probe_inspect(arg).await,
            Command::Probe(ProbeCommand::Bench(args)) => probe_bench(args).await,
            Command::Controller(args) => controller(args).await,
            Command::Local => {
                let controlplane = workspace_culler::controlplane::binaries()?;
                let jupyter = workspace_culler::controlplane::jupyter_binaries()?;
                workspace_culler::local::run(&controlplane, &jupyter).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Crds => {
                print!("{}", workspace_culler::crd::crds_yaml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Probe(ProbeCommand::List) => {
                for b in BUILTINS {
                    println!(
                        "{:<12} sha256 {}",
                        b.name,
                        workspace_culler::engine::sha256_hex(b.component)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
