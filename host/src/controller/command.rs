//! `workspace-culler controller`: connect, serve metrics and health, and run
//! the controller — under a leader Lease when asked, so that of several
//! replicas only one acts, and one that loses the Lease stops.

use super::capabilities::HttpMode;
use super::{Settings, leader, metrics, server};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use workspace_culler_engine::{EngineConfig, ProbeEngine};

/// The controller's command line.
#[derive(Args)]
pub struct ControllerArgs {
    /// A kubeconfig file (default: `$KUBECONFIG` — one file or several, merged as kubectl
    /// does — else ~/.kube/config, else the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (repeatable; default: all).
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Probes in flight at once (most of a probe's time is waiting on its pod; the memory
    /// they hold together is bounded by `--memory-budget-mib`).
    #[arg(long, default_value_t = 64)]
    concurrency: u16,
    /// Linear memory all running probes may hold together, in MiB (each also within its own
    /// cap of 64 MiB): the controller's memory is bounded by this, whatever the concurrency.
    #[arg(long, default_value_t = (workspace_culler_engine::DEFAULT_MEMORY_BUDGET_BYTES >> 20) as u32)]
    memory_budget_mib: u32,
    /// How probes reach pods over HTTP.
    #[arg(long, value_enum, default_value = "direct")]
    http_mode: HttpMode,
    /// Report what would be paused without pausing anything, whatever the policies say.
    #[arg(long)]
    dry_run: bool,
    /// Where Jupyter serves inside the pod.
    #[arg(long, default_value = super::DEFAULT_CONNECT_PATH)]
    connect_path: String,
    /// Probe module files must lie under this directory.
    #[arg(long, env = "WORKSPACE_CULLER_MODULE_DIR", default_value = "/probes")]
    module_dir: PathBuf,
    /// The controller's own namespace: where `tokenSecretRef` Secrets are read.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    controller_namespace: String,
    /// Warn with a CullingSoon Event this many seconds before a workspace can be paused (0: never).
    #[arg(long, default_value_t = 600)]
    culling_soon_seconds: i64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Where compiled probe components (and those pulled from registries) are cached.
    #[arg(long, env = "WORKSPACE_CULLER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// The most the cache folder may hold, in MiB: writing into it evicts the least recently
    /// used entries beyond this (keep it under the volume's size limit).
    #[arg(long, env = "WORKSPACE_CULLER_CACHE_MAX_MIB", default_value_t = 192)]
    cache_max_mib: u64,
    /// A registry (`host:port`) of `oci://` modules reached over plain HTTP (repeatable);
    /// every other one over TLS.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// A PEM file of CA certificates trusted for registries' TLS, beside the system's.
    #[arg(long)]
    registry_ca_file: Option<PathBuf>,
    /// Act only while holding a Lease, so several replicas never both act.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the controller's namespace).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "workspace-culler")]
    leader_election_lease: String,
}

/// A client from `kubeconfig`, or from the in-cluster service account, counting its requests
/// in `metrics`.
pub async fn kube_client(kubeconfig: Option<&Path>, metrics: &metrics::Metrics) -> anyhow::Result<kube::Client> {
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
    let counting = super::api_metrics::CountRequests(metrics.api_requests.clone());
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&counting)
        .build())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that comes before then is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, interrupt) = (
        signal(SignalKind::terminate()).ok(),
        signal(SignalKind::interrupt()).ok(),
    );
    async move {
        let received = |handler: Option<tokio::signal::unix::Signal>| async move {
            match handler {
                Some(mut handler) => {
                    handler.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(term) => {}
            () = received(interrupt) => {}
        }
        tracing::info!("shutting down");
    }
}

/// Runs the controller until a shutdown signal, or until it loses its Lease.
pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    // One set of handlers for the whole run, installed before anything else: no signal is lost
    // between waiting for the lease and running, nor kills the process by its default action.
    let signal = futures::FutureExt::shared(Box::pin(shutdown_signal()));
    let metrics = metrics::Metrics::new()?;
    let client = kube_client(args.kubeconfig.as_deref(), &metrics).await?;
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(workspace_culler_engine::default_cache_dir);
    let engine = Arc::new(ProbeEngine::new(EngineConfig {
        concurrency: u32::from(args.concurrency),
        cache_dir: cache_dir.clone(),
        cache_max_bytes: args.cache_max_mib << 20,
        memory_budget_bytes: (args.memory_budget_mib as usize) << 20,
        ..EngineConfig::default()
    })?);
    let registry = Arc::new(
        crate::oci::Registry::new(crate::oci::Settings {
            insecure: args.insecure_registries,
            ca_file: args.registry_ca_file,
            cache_dir,
            max_bytes: super::probe::MAX_MODULE_BYTES,
            cache_max_bytes: Some(args.cache_max_mib << 20),
        })
        .map_err(anyhow::Error::msg)?,
    );
    let readiness = server::Readiness::default();
    let listener = server::bind(args.metrics_addr).await?;
    tokio::spawn(server::serve(listener, metrics.clone(), readiness.clone()));
    let settings = Settings {
        dry_run: args.dry_run,
        http_mode: args.http_mode,
        connect_path: args.connect_path,
        namespaces: args.namespaces,
        concurrency: args.concurrency,
        module_dir: args.module_dir,
        own_namespace: args.controller_namespace.clone(),
        culling_soon_seconds: args.culling_soon_seconds,
        registry,
    };
    tracing::info!(dry_run = settings.dry_run, http_mode = ?settings.http_mode, "starting the culling controller");
    if !args.leader_elect {
        let fence = leader::Fence::always();
        super::run(client, engine, settings, metrics, readiness, fence, signal).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("workspace-culler-{}", std::process::id()));
    let elector = Arc::new(leader::Elector::new(
        client.clone(),
        args.leader_election_namespace
            .as_deref()
            .unwrap_or(&args.controller_namespace),
        &args.leader_election_lease,
        &identity,
    ));
    let fence = leader::Fence::closed();
    tokio::select! {
        _ = elector.acquire(&fence) => {}
        _ = signal.clone() => return Ok(ExitCode::SUCCESS),
    }
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let holder = elector.clone();
    let holder_fence = fence.clone();
    let holding = tokio::spawn(async move {
        holder.hold(&holder_fence).await;
        let _ = lost_tx.send(());
    });
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = lost.clone();
    let stop = async move {
        tokio::select! {
            _ = signal => {}
            _ = lost_rx => flag.store(true, std::sync::atomic::Ordering::SeqCst),
        }
    };
    super::run(client, engine, settings, metrics, readiness, fence.clone(), stop).await?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("lost the leader lease; exiting so that only the new leader acts");
    }
    // Stopped cleanly (a rolling update): no more writes, and the lease goes to a standby now
    // rather than once it expires.
    holding.abort();
    fence.close();
    match elector.release().await {
        Ok(()) => tracing::info!("released the leader lease"),
        Err(error) => tracing::warn!(%error, "cannot release the leader lease; it expires on its own"),
    }
    Ok(ExitCode::SUCCESS)
}
