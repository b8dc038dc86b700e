//! The culling controller: watch → decide → probe → record → cull.
//!
//! Reconciles Workspaces (re-triggered by their WorkspaceKind and their pod),
//! probes the ones that are due through the engine with Kubernetes
//! capabilities, writes `status.activity` with one patch per probe, and
//! pauses an idle workspace with a separate, conflict-safe patch of
//! `spec.paused`. The next probe is scheduled by requeueing each workspace
//! for when it becomes due.

pub mod capabilities;
pub mod command;
pub mod leader;
pub mod metrics;
pub mod server;

use crate::crd::{Culling, Workspace, WorkspaceKind};
use crate::decide::{self, CullDecision, ProbeDue};
use crate::plan::{self, ModuleRef, ProbePlan};
use capabilities::{HttpMode, PodCapabilities};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use workspace_culler_engine::{Evaluation, Port, ProbeEngine, ProbeOutcome, ProbeRequest};

/// The label that ties a pod to its Workspace.
pub const WORKSPACE_LABEL: &str = "notebooks.kubeflow.org/workspace-name";
/// The field manager of every patch the culler sends.
pub const MANAGER: &str = "workspace-culler";
/// The container probes target.
pub const MAIN_CONTAINER: &str = "main";

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Record what would be culled without pausing anything.
    pub dry_run: bool,
    /// How probes reach their pod over HTTP.
    pub http_mode: HttpMode,
    /// Jupyter's connect path template.
    pub connect_path: String,
    /// Watch only these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// Probes running at once.
    pub concurrency: u16,
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    engine: Arc<ProbeEngine>,
    settings: Settings,
    kinds: Store<WorkspaceKind>,
    recorder: Recorder,
    /// The metrics.
    pub metrics: Metrics,
    clock: fn() -> i64,
    /// The workspaces the controller watches (to prune `due`).
    watched: Store<Workspace>,
    /// Workspaces waiting for a later probe (the due-queue metric).
    due: std::sync::Mutex<std::collections::HashSet<ObjectRef<Workspace>>>,
    /// The activity this process last wrote per workspace: the watch cache
    /// can lag behind our own status patch, and decisions must not.
    written: std::sync::Mutex<std::collections::HashMap<ObjectRef<Workspace>, crate::crd::Activity>>,
}

/// Why a reconcile failed (it is retried; nothing is culled on an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or could not be reached.
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// A Workspace without a namespace.
    #[error("Workspace {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// The label of this error in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn after(now_ms: i64, at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms - now_ms).unwrap_or(0))
}

impl Context {
    /// Turn a due time into the reconcile's action, keeping the due-queue metric.
    fn schedule(&self, workspace: &Workspace, due: ProbeDue, now: i64) -> Action {
        let key = ObjectRef::from_obj(workspace);
        let mut queued = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let action = match due {
            ProbeDue::At(at) => {
                queued.insert(key);
                Action::requeue(after(now, at))
            }
            ProbeDue::Now => {
                queued.remove(&key);
                Action::requeue(Duration::from_secs(1))
            }
            ProbeDue::NotManaged(why) => {
                tracing::debug!(%why, "not probing");
                queued.remove(&key);
                Action::await_change()
            }
        };
        // Deleted workspaces are never reconciled again: drop them here.
        queued.retain(|r| self.watched.get(r).is_some());
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r, _| self.watched.get(r).is_some());
        self.metrics
            .due_queue
            .set(i64::try_from(queued.len()).unwrap_or(i64::MAX));
        action
    }

    /// The workspace's status, with the activity we wrote ourselves when the
    /// cached object does not show it yet (so `minProbeInterval` holds and
    /// `lastActivity` never goes back).
    fn freshest_status(&self, workspace: &Workspace) -> crate::crd::WorkspaceStatus {
        let mut status = workspace.status.clone().unwrap_or_default();
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ours) = written.get(&ObjectRef::from_obj(workspace)) {
            let start = |a: Option<&crate::crd::Activity>| {
                a.and_then(|a| a.last_probe.as_ref())
                    .map_or(i64::MIN, |p| p.start_time_ms)
            };
            if start(Some(ours)) > start(status.activity.as_ref()) {
                status.activity = Some(ours.clone());
            }
        }
        status
    }

    fn workspaces(&self, namespace: &str) -> Api<Workspace> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn culling(&self, workspace: &Workspace) -> Option<(Arc<WorkspaceKind>, Culling)> {
        let kind = self.kinds.get(&ObjectRef::new(&workspace.spec.kind))?;
        let culling = kind.spec.pod_template.culling.clone()?;
        Some((kind, culling))
    }

    async fn event(&self, workspace: &Workspace, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &workspace.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }
}

/// Run one probe of a workspace; every problem becomes a Failure outcome.
async fn probe(
    workspace: &Workspace,
    kind: &WorkspaceKind,
    culling: &Culling,
    ctx: &Context,
    start_ms: i64,
) -> (Evaluation, Option<i64>) {
    let fail = |message: String| {
        let outcome = ProbeOutcome::Failure(message);
        (
            Evaluation {
                started_at_ms: start_ms,
                finished_at_ms: (ctx.clock)(),
                outcome,
                raw_output: None,
                logs: Vec::new(),
            },
            None,
        )
    };
    let namespace = workspace.namespace().unwrap_or_default();
    let name = workspace.name_any();
    let plan = match plan::plan(&culling.activity_probe, &kind.spec, &ctx.settings.connect_path) {
        Ok(plan) => plan,
        Err(e) => return fail(format!("WorkspaceKind {}: {e}", kind.name_any())),
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = match pods
        .list(&ListParams::default().labels(&format!("{WORKSPACE_LABEL}={name}")))
        .await
    {
        Ok(list) => list.items,
        Err(e) => return fail(format!("cannot list the workspace's pods: {e}")),
    };
    let Some(pod) = listed
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    else {
        return fail(format!("no Running pod labelled {WORKSPACE_LABEL}={name}"));
    };
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    let pod_started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.as_second());
    let pod_name = pod.name_any();
    let has_main = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == MAIN_CONTAINER));
    if !has_main {
        return fail(format!("pod {pod_name} has no container named {MAIN_CONTAINER:?}"));
    }
    let mut config = plan.config.clone();
    if let Some((secret, key)) = &plan.token_secret {
        match read_secret(ctx, &namespace, secret, key).await {
            Ok(token) => config["token"] = token.into(),
            Err(e) => return fail(e),
        }
    }
    let probe = match load(ctx, &plan).await {
        Ok(probe) => probe,
        Err(e) => return fail(e),
    };
    let ports = plan::resolve_ports(&kind.spec, &workspace.spec)
        .into_iter()
        .map(|(id, number)| Port { id, number })
        .collect();
    let request = ProbeRequest {
        workspace: workspace_culler_engine::Workspace {
            namespace: namespace.clone(),
            name,
            pod_name: pod_name.clone(),
            pod_ip,
            container: MAIN_CONTAINER.into(),
            ports,
        },
        config: config.to_string(),
        deadline: plan.deadline,
        capabilities: Arc::new(PodCapabilities::new(
            pods,
            pod_name,
            MAIN_CONTAINER.into(),
            ctx.settings.http_mode,
            workspace_culler_engine::Limits::default().exec_output_bytes,
        )),
        probe_name: plan.probe_name(),
        frozen_clock: false,
    };
    ctx.metrics.probes_waiting.inc();
    let evaluation = ctx.engine.evaluate(&probe, request, start_ms).await;
    ctx.metrics.probes_waiting.dec();
    (evaluation, pod_started)
}

async fn read_secret(ctx: &Context, namespace: &str, name: &str, key: &str) -> Result<String, String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))?;
    String::from_utf8(value.0.clone())
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("Secret {namespace}/{name} key {key:?} is not text"))
}

/// The most bytes a probe module file may have (the largest example
/// probes, with an interpreter inside, are under 20 MiB).
const MAX_MODULE_BYTES: u64 = 64 << 20;

/// A probe module file's bytes: a regular file no larger than
/// [`MAX_MODULE_BYTES`], so a device or a huge file cannot exhaust memory.
async fn read_module(path: &str) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let cannot = |e: std::io::Error| format!("cannot read probe module {path}: {e}");
    // Look before opening (opening a FIFO would block), then check the file opened.
    if !tokio::fs::metadata(path).await.map_err(cannot)?.is_file() {
        return Err(format!("probe module {path} is not a regular file"));
    }
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let metadata = file.metadata().await.map_err(cannot)?;
    if !metadata.is_file() {
        return Err(format!("probe module {path} is not a regular file"));
    }
    let too_big = |size: u64| format!("probe module {path} is {size} bytes, over the cap of {MAX_MODULE_BYTES} bytes");
    if metadata.len() > MAX_MODULE_BYTES {
        return Err(too_big(metadata.len()));
    }
    // It may grow between the look and the read: read no more than the cap allows.
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

async fn load(ctx: &Context, plan: &ProbePlan) -> Result<Arc<workspace_culler_engine::LoadedProbe>, String> {
    let (bytes, pinned) = match &plan.module {
        ModuleRef::Builtin(name) => {
            let builtin = workspace_culler_engine::builtin::builtin(name)
                .ok_or_else(|| format!("no built-in probe named {name:?}"))?;
            (builtin.component.to_vec(), plan.pinned_sha256.clone())
        }
        ModuleRef::File { path, sha256 } => (read_module(path).await?, Some(sha256.clone())),
    };
    // Compiling a large component (an interpreter inside) takes seconds of
    // CPU: off the async workers, so other workspaces' probes go on meanwhile.
    let engine = ctx.engine.clone();
    tokio::task::spawn_blocking(move || engine.load(&bytes, pinned.as_deref()))
        .await
        .map_err(|e| format!("loading the probe module failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// Pause the workspace: a patch of `spec.paused` alone, guarded by the
/// resourceVersion of a fresh read that still warrants it, retried on conflict.
async fn cull(workspace: &Workspace, probe_start_ms: i64, ctx: &Context) -> Result<(), Error> {
    let namespace = workspace
        .namespace()
        .ok_or_else(|| Error::NoNamespace(workspace.name_any()))?;
    let api = ctx.workspaces(&namespace);
    let name = workspace.name_any();
    for _ in 0..5 {
        let fresh = api.get(&name).await?;
        let ours = fresh.status.as_ref().and_then(|s| s.activity.as_ref());
        let Some(activity) = ours.filter(|a| a.last_probe.as_ref().is_some_and(|p| p.start_time_ms == probe_start_ms))
        else {
            tracing::info!("a newer probe or edit superseded this one; not culling");
            return Ok(());
        };
        let Some((_, culling)) = ctx.culling(&fresh) else {
            return Ok(());
        };
        // Still our successful probe of a still-Running workspace.
        let running = fresh.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Running");
        let succeeded = activity.last_probe.as_ref().is_some_and(|p| p.result == "Success");
        let decision = decide::cull_decision(&culling, &fresh.spec, activity, running && succeeded, (ctx.clock)());
        let CullDecision::Cull { idle_seconds } = decision else {
            tracing::info!(?decision, "no longer to be culled after a fresh read");
            return Ok(());
        };
        let note = format!(
            "idle for {idle_seconds}s (maxInactiveSeconds {})",
            culling.max_inactive_seconds
        );
        if ctx.settings.dry_run {
            tracing::info!(idle_seconds, "dry run: would pause the workspace");
            ctx.metrics.culls.with_label_values(&["true"]).inc();
            ctx.event(
                &fresh,
                EventType::Normal,
                "WouldCull",
                format!("Dry run: would pause, {note}"),
            )
            .await;
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": fresh.resource_version()},
            "spec": {"paused": true},
        });
        match api.patch(&name, &patch_params(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(idle_seconds, "paused the idle workspace");
                ctx.metrics.culls.with_label_values(&["false"]).inc();
                ctx.event(&fresh, EventType::Normal, "Culled", format!("Paused: {note}"))
                    .await;
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                ctx.metrics.conflicts.inc();
                tracing::info!("conflict while pausing; retrying from a fresh read");
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::warn!("could not pause after repeated conflicts; the next reconcile retries");
    Ok(())
}

async fn reconcile(workspace: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        namespace = %workspace.namespace().unwrap_or_default(),
        name = %workspace.name_any()
    );
    reconcile_in_span(workspace, ctx).instrument(span).await
}

async fn reconcile_in_span(workspace: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = workspace
        .namespace()
        .ok_or_else(|| Error::NoNamespace(workspace.name_any()))?;
    let now = (ctx.clock)();
    let culling = ctx.culling(&workspace);
    let status = ctx.freshest_status(&workspace);
    match decide::probe_due(culling.as_ref().map(|(_, c)| c), Some(&status), now) {
        ProbeDue::Now => {}
        due => return Ok(ctx.schedule(&workspace, due, now)),
    }
    let Some((kind, culling)) = culling else {
        return Ok(Action::await_change());
    };

    let (evaluation, pod_started) = probe(&workspace, &kind, &culling, &ctx, now).await;
    let result = evaluation.outcome.result();
    ctx.metrics.probes.with_label_values(&[result, &kind.name_any()]).inc();
    ctx.metrics
        .probe_seconds
        .observe((evaluation.finished_at_ms - evaluation.started_at_ms) as f64 / 1000.0);
    let previous = status.activity.as_ref();
    let activity = decide::record(previous, &evaluation, pod_started);
    tracing::info!(result, message = %activity.last_probe.as_ref().map(|p| p.message.as_str()).unwrap_or(""), last_activity = activity.last_activity, "probed");

    let patch = serde_json::json!({"status": {"activity": activity}});
    ctx.workspaces(&namespace)
        .patch_status(&workspace.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?;
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(ObjectRef::from_obj(&*workspace), activity.clone());

    let failed_before = previous
        .and_then(|a| a.last_probe.as_ref())
        .is_some_and(|p| p.result != "Success");
    if let ProbeOutcome::Failure(m) | ProbeOutcome::Timeout(m) = &evaluation.outcome
        && failed_before
    {
        ctx.event(&workspace, EventType::Warning, "ProbeFailing", m.clone())
            .await;
    }
    if matches!(evaluation.outcome, ProbeOutcome::Success(_)) {
        let decision = decide::cull_decision(&culling, &workspace.spec, &activity, true, (ctx.clock)());
        if matches!(decision, CullDecision::Cull { .. }) {
            cull(&workspace, evaluation.started_at_ms, &ctx).await?;
        }
    }
    // Schedule the next probe from the status just written.
    let status = crate::crd::WorkspaceStatus {
        activity: Some(activity),
        ..status
    };
    let now = (ctx.clock)();
    Ok(ctx.schedule(&workspace, decide::probe_due(Some(&culling), Some(&status), now), now))
}

fn error_policy(_workspace: Arc<Workspace>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    ctx.metrics.errors.with_label_values(&[error.metric_label()]).inc();
    Action::requeue(Duration::from_secs(5))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run the controller until `shutdown` resolves: over all namespaces, or
/// one controller per namespace in `settings.namespaces`.
pub async fn run(
    client: Client,
    engine: Arc<ProbeEngine>,
    settings: Settings,
    metrics: Metrics,
    readiness: server::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let kinds_api: Api<WorkspaceKind> = Api::all(client.clone());
    let (kinds, writer) = reflector::store();
    let kinds_reflector = reflector(writer, watcher(kinds_api.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| futures::future::ready(()));
    // Ends with the controller (dropping the guard aborts it).
    let _kinds_reflector = AbortOnDrop(tokio::spawn(kinds_reflector));
    kinds.wait_until_ready().await?;

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let runs: Vec<_> = scopes
        .into_iter()
        .map(|namespace| {
            let (workspaces, pods): (Api<Workspace>, Api<Pod>) = match &namespace {
                Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
                None => (Api::all(client.clone()), Api::all(client.clone())),
            };
            let controller = Controller::new(workspaces, watcher::Config::default())
                .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency));
            let store = controller.store();
            let ctx = Arc::new(Context {
                client: client.clone(),
                engine: engine.clone(),
                settings: settings.clone(),
                kinds: kinds.clone(),
                recorder: recorder.clone(),
                metrics: metrics.clone(),
                clock: now_ms,
                watched: store.clone(),
                due: Default::default(),
                written: Default::default(),
            });
            controller
                .watches(
                    kinds_api.clone(),
                    watcher::Config::default(),
                    move |kind: WorkspaceKind| {
                        let name = kind.name_any();
                        store
                            .state()
                            .into_iter()
                            .filter(|w| w.spec.kind == name)
                            .map(|w| ObjectRef::from_obj(&*w))
                            .collect::<Vec<_>>()
                    },
                )
                .watches(pods, watcher::Config::default().labels(WORKSPACE_LABEL), |pod: Pod| {
                    let name = pod.labels().get(WORKSPACE_LABEL).cloned();
                    let namespace = pod.namespace();
                    name.zip(namespace)
                        .map(|(n, ns)| ObjectRef::<Workspace>::new(&n).within(&ns))
                })
                .graceful_shutdown_on(shutdown.clone())
                .run(reconcile, error_policy, ctx)
                .for_each(|result| {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile ended with an error");
                    }
                    futures::future::ready(())
                })
        })
        .collect();
    // Ready: it leads (run is called only then) and the kinds' cache is
    // filled; each workspace watch fills its own cache before it reconciles.
    readiness.set(true);
    tracing::info!("ready");
    futures::future::join_all(runs).await;
    readiness.set(false);
    Ok(())
}
