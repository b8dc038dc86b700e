//! The culling controller on Kubeflow's API: watch → decide → probe → record → pause.
//!
//! Workspaces are watched untyped and decoded one by one, so one object that cannot be read
//! is logged, counted and skipped while the others go on. Which `CullingPolicy` manages a
//! workspace's kind, which rule applies, when to probe and whether to pause are the pure
//! functions of `workspace_culler_policy`; this module does the I/O around them: it probes
//! through the engine, writes Kubeflow's `status.activity` fields with one patch per probe,
//! pauses with a separate patch preconditioned on a fresh read, and keeps each policy's
//! status (see [`policy_status`]).

pub mod api_metrics;
pub mod cached;
pub mod capabilities;
pub mod command;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod policy_status;
pub mod probe;
pub mod server;

use cached::CachedWorkspace;
use capabilities::HttpMode;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;
use workspace_culler_engine::ProbeEngine;
use workspace_culler_policy::decide::PAUSE_GRACE_MS;
use workspace_culler_policy::{
    Activity, CULLED_EVENT_ANNOTATION, CullingPolicy, Due, Keep, Management, Pause, ProbeOutcome, RuleMatch, Unmanaged,
    Workspace, WorkspaceKind, activity_after_probe, activity_patch, decode, eligible_after, pause_decision,
    pod_config_labels, probe_due, select_rule,
};

pub use probe::{DEFAULT_CONNECT_PATH, MAIN_CONTAINER, WORKSPACE_LABEL};

/// The field manager of every patch the culler sends.
pub const MANAGER: &str = "workspace-culler";

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Report what would be paused without pausing anything, whatever the policies say.
    pub dry_run: bool,
    /// How probes reach their pod over HTTP.
    pub http_mode: HttpMode,
    /// Jupyter's connect path template.
    pub connect_path: String,
    /// Watch only these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// Probes running at once.
    pub concurrency: u16,
    /// Module files must lie under this directory.
    pub module_dir: PathBuf,
    /// The controller's own namespace: where `tokenSecretRef` Secrets are read.
    pub own_namespace: String,
    /// How long before `eligibleAfter` a `CullingSoon` Event warns the user (0: never).
    pub culling_soon_seconds: i64,
    /// Where `oci://` modules are pulled from, and the pulled ones kept.
    pub registry: Arc<crate::oci::Registry>,
}

/// A workspace's key in the controller's own maps.
type Key = (String, String);

fn key_of(object: &impl Resource) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    prober: Arc<dyn probe::Prober>,
    settings: Settings,
    /// The workspaces of this controller's namespace (or of all), from its watch.
    workspaces: Store<CachedWorkspace>,
    kinds: Store<DynamicObject>,
    policies: Store<CullingPolicy>,
    namespaces: Store<Namespace>,
    /// Pods labelled for a workspace, StatefulSets, and the Secrets of the controller's own
    /// namespace, from watches: a probe reads nothing from the apiserver to find its pod.
    pods: pods::WorkspacePods,
    statefulsets: Store<pods::CachedStatefulSet>,
    secrets: Store<k8s_openapi::api::core::v1::Secret>,
    recorder: Recorder,
    /// The metrics.
    pub metrics: Metrics,
    clock: fn() -> i64,
    /// Workspaces waiting for a later probe (the due-queue metric, which the controllers of
    /// every watched namespace move up and down together).
    due: Mutex<HashSet<Key>>,
    /// The activity this process last wrote per workspace: the watch cache can lag behind
    /// our own status patch, and decisions must not.
    /// Keyed by name, kept with the uid it was written for (a re-created workspace starts anew).
    written: Mutex<HashMap<Key, (Option<String>, Activity)>>,
    /// Probes whose result this process could not write (the apiserver failed, or the status
    /// kept changing), with the uid and the rule they were written for: the next reconcile
    /// writes them before anything else, so an observed activity is not lost.
    unwritten: Mutex<HashMap<Key, Unwritten>>,
    /// The `eligibleAfter` each workspace was last warned about (`CullingSoon` once).
    warned: Mutex<HashMap<Key, i64>>,
    /// The ignored keep-alive value each workspace was last told about (once per value).
    keep_alive_reported: Mutex<HashMap<Key, String>>,
    /// The `Culled` Event this process last settled per workspace (the workspace's uid and the
    /// annotation's value it removed): the watch cache may still show the annotation.
    culled_recorded: Mutex<HashMap<Key, (Option<String>, String)>>,
    /// The `eligibleAfter` each workspace was last reported as a dry-run pause for
    /// (`WouldCull` and its count once, not on every probe).
    would_cull: Mutex<HashMap<Key, i64>>,
    /// Pauses per policy (by uid: one re-created under its name starts from none) not yet
    /// counted in its status.
    pauses: Arc<Mutex<BTreeMap<String, i64>>>,
    /// Every write checks it first: only a replica that (still) leads writes.
    fence: leader::Fence,
    /// True once the controller stops (a signal, the lease lost): a probe in flight then ends
    /// at once, its result not written, so the replica releases its lease before the kubelet's
    /// grace period runs out rather than waiting for a minute-long exec.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Reconciles a workspace again: one whose probe was put off while its module loads is
    /// sent here once the load has landed.
    retrigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<CachedWorkspace>>,
    /// Workspaces whose probe is put off while a module loads: since when, and whether a task
    /// waits for the load to reconcile it again (one per workspace and loads, however often it
    /// is put off).
    deferred: Mutex<HashMap<Key, Deferral>>,
    /// Who manages what and the decoded kinds, computed again only when a kind or a policy
    /// changed (not on every reconcile: a kind is a large object to decode).
    management: Mutex<Option<(Vec<Revision>, Arc<Managed>)>>,
}

/// A workspace's probe put off while a module loads.
struct Deferral {
    /// The workspace's uid: one re-created under the same name starts anew.
    uid: Option<String>,
    /// When it was first put off (just before that probe was asked for): a failed load that
    /// landed since is its answer, however long ago (a failure is otherwise the answer for
    /// 30 s only, and a reconcile that came later would load again and be put off again).
    since: std::time::Instant,
    /// The task that waits for the load to land to reconcile the workspace again, if any: by
    /// number (a task of an earlier deferral, woken late, leaves a later one's alone) and the
    /// modules it waits for (a probe put off for others gets a task of its own).
    waiter: Option<(u64, String)>,
}

/// The `Culled` Event a pause owes, as its [`CULLED_EVENT_ANNOTATION`] holds it.
#[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
struct OwedEvent {
    /// When the workspace was paused (UNIX ms): the Event's time.
    at: i64,
    /// The uid of the policy that paused it: whose pauses it counts in.
    policy: String,
    note: String,
}

/// The most an Event's note may hold (the apiserver refuses more).
const EVENT_NOTE_MAX: usize = 1024;

/// `note` cut to what an Event may hold, at a character's boundary.
fn cut_note(note: &mut String) {
    if note.len() > EVENT_NOTE_MAX {
        let mut end = EVENT_NOTE_MAX;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
}

impl OwedEvent {
    /// What `value` says is owed; one that cannot be read (edited by hand) still owes an
    /// Event, counted in no policy.
    fn read(value: &str) -> Self {
        serde_json::from_str(value).unwrap_or_else(|e| {
            tracing::warn!(error = %e, value, "the Culled Event's annotation cannot be read");
            OwedEvent {
                at: 0,
                policy: String::new(),
                note: "Paused".into(),
            }
        })
    }

    /// The Event's name: the same from every process for the same workspace and annotation
    /// (so it is recorded once), another for each pause (the annotation holds its time).
    fn event_name(workspace: &Workspace, value: &str) -> String {
        event_name(workspace, "culled", value)
    }
}

/// The name of the Event `tag` that `what` tells apart on `workspace`: the same from every
/// process (an Event recorded once is found, not recorded again), another for another
/// workspace of the name, and a valid name whatever the workspace's.
fn event_name(workspace: &Workspace, tag: &str, what: &str) -> String {
    // FNV-1a: the same in every build.
    let hash = [workspace.metadata.uid.as_deref().unwrap_or_default(), "\n", what]
        .iter()
        .flat_map(|part| part.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let name = workspace.name_any();
    let prefix: String = name.chars().take(200).collect();
    format!("{}.{tag}.{hash:016x}", prefix.trim_end_matches(['-', '.']))
}

/// How an Event recorded under its own name went.
enum EventRecorded {
    /// Recorded now.
    New,
    /// Recorded before, by this process or another.
    Before,
    /// Refused by the apiserver as invalid: given up, not asked again.
    Refused,
}

/// Numbers the tasks that wait for a load ([`Deferral::waiter`]).
static WAITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Which version of an object a cached computation saw: its name and resourceVersion (or, for
/// an object without one, a hash of its content).
type Revision = (String, String);

fn revision<K: kube::Resource + serde::Serialize>(object: &K) -> Revision {
    let version = object.meta().resource_version.clone().unwrap_or_else(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(object).unwrap_or_default().hash(&mut hasher);
        format!("#{:016x}", hasher.finish())
    });
    (object.meta().name.clone().unwrap_or_default(), version)
}

/// What `slot` holds if it was computed from the same revisions as `seen`, else `compute()`,
/// kept for next time.
fn computed_for<T>(
    slot: &Mutex<Option<(Vec<Revision>, Arc<T>)>>,
    seen: Vec<Revision>,
    compute: impl FnOnce() -> T,
) -> Arc<T> {
    if let Some((cached, value)) = lock(slot).as_ref()
        && *cached == seen
    {
        return value.clone();
    }
    let value = Arc::new(compute());
    *lock(slot) = Some((seen, value.clone()));
    value
}

/// [`Management`] across every policy and kind, and every kind that can be read.
struct Managed {
    management: Management,
    kinds: Vec<WorkspaceKind>,
}

/// Why a reconcile failed (it is retried; nothing is paused on an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or could not be reached.
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// This replica no longer holds the leader lease (or may lose it before the write lands).
    #[error("not the leader: nothing is written")]
    NotLeading,
}

impl Error {
    /// Whether the same request is worth sending again: the apiserver was unavailable,
    /// overloaded or could not be reached — not a refusal (403, 404, 422) it would meet again —
    /// or the lease was not held for a moment (a replica that lost it for good exits).
    fn retryable(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(e)) => e.code >= 500 || e.code == 429,
            Error::Kube(_) | Error::NotLeading => true,
        }
    }

    /// The label of this error in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NotLeading => "not_leading",
        }
    }
}

fn reporter() -> Reporter {
    Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// How soon a `CullingSoon` warning that could not be recorded is tried again (a minute: an
/// apiserver refusing every Event, a role missing, is not asked every few seconds).
const WARNING_RETRY_MS: i64 = 60_000;

/// How soon a pause's `Culled` Event that could not be recorded (or its annotation removed)
/// is tried again.
const CULLED_EVENT_RETRY: Duration = Duration::from_secs(10);

/// How soon a workspace whose namespace the cache does not show yet is looked at again.
const NAMESPACE_RECHECK_MS: i64 = 5_000;

/// When a workspace whose probe was put off while its module loads is looked at again, unless
/// the load lands first (it is then reconciled at once): loads end within minutes (a pull's
/// deadline is 2), and a landing missed is not waited for long.
const LOAD_RECHECK_MS: i64 = 60_000;

/// What an `Accept` header asks for to get an object's metadata only (`PartialObjectMetadata`).
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// A merge patch of a Workspace's `status`, answered with the Workspace's metadata only. The
/// culler reads nothing from the answer, and the whole object (spec, status, managed fields) is
/// otherwise what the apiserver encodes and the culler decodes once more for every probe.
pub async fn patch_workspace_status(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<kube::core::PartialObjectMeta<Workspace>, kube::Error> {
    let mut request = kube::core::Request::new(Workspace::url_path(&(), Some(namespace)))
        .patch_subresource("status", name, &patch_params(), &Patch::Merge(patch))
        .map_err(kube::Error::BuildRequest)?;
    request
        .headers_mut()
        .insert(http::header::ACCEPT, http::HeaderValue::from_static(METADATA_ONLY));
    client.request(request).await
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn after(now_ms: i64, at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The resource of Kubeflow's Workspaces, watched untyped.
pub fn workspace_resource() -> ApiResource {
    ApiResource::erase::<Workspace>(&())
}

/// The resource of Kubeflow's WorkspaceKinds, watched untyped.
pub fn kind_resource() -> ApiResource {
    ApiResource::erase::<WorkspaceKind>(&())
}

/// What each controller watches: one namespace each of those named (each once, however often
/// it is named: two controllers of one namespace would probe its workspaces twice), or all.
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    let named: BTreeSet<&String> = namespaces.iter().collect();
    if named.is_empty() {
        vec![None]
    } else {
        named.into_iter().cloned().map(Some).collect()
    }
}

/// Decode an untyped object, counting and logging one that cannot be read.
fn decoded<K>(object: &DynamicObject, metrics: &Metrics) -> Option<K>
where
    K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-encode an object from the watch; skipping it");
            return None;
        }
    };
    match decode::<K>(value) {
        Ok(object) => Some(object),
        Err(e) => {
            tracing::warn!(error = %e, "skipping an object that cannot be read");
            metrics.skipped.with_label_values(&[&K::kind(&())]).inc();
            None
        }
    }
}

/// The policy, kind and rule that govern a workspace, and its owner's keep-alive.
struct Governed {
    policy: Arc<CullingPolicy>,
    kind: WorkspaceKind,
    /// The matched rule, with the keep-alive applied.
    rule: RuleMatch,
    keep_alive: workspace_culler_policy::KeepAlive,
}

impl Context {
    /// Every WorkspaceKind that can be read (one that cannot is skipped silently here; the
    /// kinds' watch logs and counts it once per change).
    fn all_kinds(&self) -> Vec<WorkspaceKind> {
        self.kinds
            .state()
            .iter()
            .filter_map(|k| serde_json::to_value(&**k).ok().and_then(|v| decode(v).ok()))
            .collect()
    }

    /// Who manages what: from the cache while no kind and no policy changed.
    fn management(&self) -> Arc<Managed> {
        let (kinds, policies) = (self.kinds.state(), self.policies.state());
        let seen: Vec<Revision> = kinds
            .iter()
            .map(|k| revision(&**k))
            .chain(std::iter::once(Default::default()))
            .chain(policies.iter().map(|p| revision(&**p)))
            .collect();
        computed_for(&self.management, seen, || {
            let policies: Vec<CullingPolicy> = policies.iter().map(|p| (**p).clone()).collect();
            let kinds = self.all_kinds();
            Managed {
                management: Management::compute(&policies, &kinds),
                kinds,
            }
        })
    }

    /// The policy, kind and rule of `workspace`, or why the culler leaves it alone.
    fn governed(&self, workspace: &Workspace) -> Result<Governed, Unmanaged> {
        let managed = self.management();
        let policy_name = managed.management.policy_for_kind(&workspace.spec.kind)?.to_owned();
        let policy = self
            .policies
            .get(&ObjectRef::new(&policy_name))
            .ok_or(Unmanaged::NoPolicy)?;
        let kind = managed
            .kinds
            .iter()
            .find(|k| k.metadata.name.as_deref() == Some(workspace.spec.kind.as_str()))
            .cloned()
            .ok_or(Unmanaged::NoPolicy)?;
        Ok(self.with_policy(workspace, policy, kind))
    }

    /// `workspace` governed by `policy` (for its kind `kind`): the rule that applies.
    fn with_policy(&self, workspace: &Workspace, policy: Arc<CullingPolicy>, kind: WorkspaceKind) -> Governed {
        let namespace = self
            .namespaces
            .get(&ObjectRef::new(&workspace.namespace().unwrap_or_default()));
        let keep_alive =
            workspace_culler_policy::keep_alive(workspace, policy.spec.keep_alive_max_seconds(), (self.clock)());
        let by_namespace = policy
            .spec
            .activity_rules
            .iter()
            .any(|r| r.match_.as_ref().is_some_and(|m| m.match_namespace.is_some()));
        let rule = match namespace {
            // A namespace the cache does not show yet (just created, or its watch behind): its
            // labels are unknown, and an exempting rule could be missed. Doubt never pauses.
            None if by_namespace => {
                tracing::info!("the workspace's namespace is not in the cache yet; no rule applies for now");
                RuleMatch::NoMatch
            }
            _ => select_rule(
                &policy.spec.activity_rules,
                &namespace.and_then(|n| n.metadata.labels.clone()).unwrap_or_default(),
                &pod_config_labels(workspace, &kind),
            )
            .kept_alive_until(keep_alive.until()),
        };
        Governed {
            policy,
            kind,
            rule,
            keep_alive,
        }
    }

    /// Clamp a keep-alive beyond the policy's cap (rewriting the annotation, so the cap does
    /// not move with the clock) or report one that is ignored, each with an Event once.
    async fn enforce_keep_alive(&self, workspace: &Workspace, governed: &Governed) {
        use workspace_culler_policy::KeepAlive;
        let key = key_of(workspace);
        let value = workspace.keep_alive_annotation().unwrap_or_default().to_owned();
        match &governed.keep_alive {
            KeepAlive::None | KeepAlive::Until(_) => {}
            KeepAlive::Clamped { until, .. } => {
                // Once per value and version of the object: an owner who sets the same value
                // again is clamped again (else the cap would count from every reconcile's
                // clock), but an object the watch has not yet brought back is not.
                let seen = format!("{value}@{}", workspace.resource_version().unwrap_or_default());
                if lock(&self.keep_alive_reported).get(&key) == Some(&seen) {
                    return;
                }
                let Some(capped) = chrono::DateTime::from_timestamp_millis(*until)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                else {
                    return;
                };
                if !self.fence.holds() {
                    return;
                }
                let patch = serde_json::json!({"metadata": {
                    "uid": workspace.metadata.uid,
                    "annotations": {workspace_culler_policy::KEEP_ALIVE_ANNOTATION: capped},
                }});
                let api: Api<Workspace> = Api::namespaced(self.client.clone(), &key.0);
                if let Err(e) = api.patch(&key.1, &patch_params(), &Patch::Merge(&patch)).await {
                    tracing::warn!(error = %e, "cannot clamp the keep-alive annotation");
                    return;
                }
                lock(&self.keep_alive_reported).insert(key, seen);
                let max = governed.policy.spec.keep_alive_max_seconds();
                self.event(
                    workspace,
                    EventType::Normal,
                    "KeepAliveClamped",
                    format!("keep-alive-until {value} is beyond the policy's {max}s: kept running until {capped}"),
                )
                .await;
            }
            KeepAlive::Ignored(why) => {
                if lock(&self.keep_alive_reported)
                    .insert(key.clone(), value.clone())
                    .as_deref()
                    == Some(value.as_str())
                {
                    return;
                }
                // Once per value, whichever process reports it: one restarted since does not
                // report it again.
                let name = event_name(workspace, "keep-alive-ignored", &value);
                let at = k8s_openapi::jiff::Timestamp::now();
                let recorded = self
                    .event_once(workspace, name, EventType::Warning, "KeepAliveIgnored", why.clone(), at)
                    .await;
                if recorded.is_err() {
                    // Reported by the next reconcile.
                    lock(&self.keep_alive_reported).remove(&key);
                }
            }
        }
    }

    /// Note that `workspace`'s probe, asked for at `asked`, is put off until `landed`, the
    /// landing of `modules`' loads: one task per workspace and loads waits for it and then
    /// reconciles the workspace again (a task for other loads, of a probe since changed, is not
    /// waited for).
    fn put_off(
        self: &Arc<Self>,
        workspace: &Workspace,
        asked: std::time::Instant,
        modules: &str,
        landed: probe::Landing,
    ) {
        let key = key_of(workspace);
        let waiter = {
            let mut deferred = lock(&self.deferred);
            let fresh = || Deferral {
                uid: workspace.metadata.uid.clone(),
                since: asked,
                waiter: None,
            };
            let deferral = deferred.entry(key.clone()).or_insert_with(fresh);
            if deferral.uid != workspace.metadata.uid {
                *deferral = fresh();
            }
            if deferral
                .waiter
                .as_ref()
                .is_some_and(|(_, waits_for)| waits_for == modules)
            {
                return;
            }
            let waiter = WAITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            deferral.waiter = Some((waiter, modules.to_owned()));
            waiter
        };
        let ctx = self.clone();
        tokio::spawn(async move {
            landed.await;
            if let Some(deferral) = lock(&ctx.deferred).get_mut(&key)
                && deferral.waiter.as_ref().is_some_and(|(number, _)| *number == waiter)
            {
                deferral.waiter = None;
            }
            let _ = ctx.retrigger.send(ObjectRef::new(&key.1).within(&key.0));
        });
    }

    /// Since when `workspace`'s probe has been put off, if it is (a failed load that landed
    /// since is its answer).
    fn put_off_since(&self, workspace: &Workspace) -> Option<std::time::Instant> {
        lock(&self.deferred)
            .get(&key_of(workspace))
            .filter(|deferral| deferral.uid == workspace.metadata.uid)
            .map(|deferral| deferral.since)
    }

    /// Fail unless this replica may write now.
    fn fenced(&self) -> Result<(), Error> {
        if self.fence.holds() {
            Ok(())
        } else {
            Err(Error::NotLeading)
        }
    }

    /// The workspace with the activity this process wrote last, when the cached object does
    /// not show it yet (so `minProbeIntervalSeconds` holds and `lastActivity` never goes back).
    fn with_freshest_activity(&self, mut workspace: Workspace) -> Workspace {
        let written = lock(&self.written);
        let Some((_, ours)) = written
            .get(&key_of(&workspace))
            .filter(|(uid, _)| *uid == workspace.metadata.uid)
        else {
            return workspace;
        };
        let start = |a: Option<&Activity>| a.and_then(|a| a.last_probe.as_ref()).map_or(i64::MIN, |p| p.start_time);
        if start(Some(ours)) > start(workspace.activity()) {
            workspace.status.get_or_insert_with(Default::default).activity = Some(ours.clone());
        }
        workspace
    }

    /// Forget a workspace the culler no longer acts on.
    fn forget(&self, key: &Key) {
        lock(&self.written).remove(key);
        lock(&self.unwritten).remove(key);
        lock(&self.warned).remove(key);
        lock(&self.would_cull).remove(key);
        lock(&self.keep_alive_reported).remove(key);
        lock(&self.deferred).remove(key);
        if lock(&self.due).remove(key) {
            self.metrics.due_queue.dec();
        }
    }

    /// Keep up with the workspaces' watch (after the store's writer applied `event`): a deleted
    /// workspace is forgotten at once, and after a (re-)list every one the store no longer holds
    /// (deleted while the watch was away).
    fn observe(&self, event: &watcher::Event<CachedWorkspace>) {
        match event {
            watcher::Event::Delete(workspace) => self.forget_deleted(&key_of(workspace)),
            watcher::Event::InitDone => self.forget_gone(),
            _ => {}
        }
    }

    /// Forget every workspace the cache does not hold.
    fn forget_gone(&self) {
        let mut kept: HashSet<Key> = lock(&self.due).iter().cloned().collect();
        kept.extend(lock(&self.written).keys().cloned());
        kept.extend(lock(&self.unwritten).keys().cloned());
        kept.extend(lock(&self.warned).keys().cloned());
        kept.extend(lock(&self.would_cull).keys().cloned());
        kept.extend(lock(&self.keep_alive_reported).keys().cloned());
        kept.extend(lock(&self.culled_recorded).keys().cloned());
        kept.extend(lock(&self.deferred).keys().cloned());
        for key in kept {
            if self.workspaces.get(&ObjectRef::new(&key.1).within(&key.0)).is_none() {
                self.forget_deleted(&key);
            }
        }
    }

    /// Forget a deleted workspace, the `Culled` Event it was last known to owe included.
    fn forget_deleted(&self, key: &Key) {
        self.forget(key);
        lock(&self.culled_recorded).remove(key);
    }

    /// Record the `Culled` Event a pause left owing on `workspace` ([`CULLED_EVENT_ANNOTATION`]),
    /// count the pause with it, then remove the annotation. The Event's name comes from the
    /// workspace and the annotation, so one recorded already (by a process that stopped before
    /// it removed the annotation) is neither recorded nor counted twice. Whether nothing is
    /// owed any more.
    async fn settle_culled_event(&self, workspace: &Workspace) -> bool {
        let Some(value) = workspace.annotations().get(CULLED_EVENT_ANNOTATION) else {
            return true;
        };
        let key = key_of(workspace);
        let settled = (workspace.metadata.uid.clone(), value.clone());
        if lock(&self.culled_recorded).get(&key) == Some(&settled) {
            // Settled by this process; the watch has not shown the annotation's removal yet.
            return true;
        }
        if !self.fence.holds() {
            return false;
        }
        let owed = OwedEvent::read(value);
        let at = chrono::DateTime::from_timestamp_millis(owed.at)
            .filter(|_| owed.at > 0)
            .and_then(|t| k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).ok())
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        let name = OwedEvent::event_name(workspace, value);
        match self
            .event_once(workspace, name, EventType::Normal, "Culled", owed.note, at)
            .await
        {
            Ok(EventRecorded::New) => {
                // Counted with its Event: once per pause, whichever process records it.
                self.metrics.culls.with_label_values(&["false"]).inc();
                if !owed.policy.is_empty() {
                    *lock(&self.pauses).entry(owed.policy).or_default() += 1;
                }
            }
            Ok(EventRecorded::Before | EventRecorded::Refused) => {}
            // Tried again in a while.
            Err(_) => return false,
        }
        if self.fenced().is_err() {
            return false;
        }
        // Removed only if it is still this one (a later pause's is settled by its reconcile).
        let pointer = format!("/metadata/annotations/{}", CULLED_EVENT_ANNOTATION.replace('/', "~1"));
        let removal = serde_json::json!([
            {"op": "test", "path": "/metadata/uid", "value": workspace.metadata.uid},
            {"op": "test", "path": pointer, "value": value},
            {"op": "remove", "path": pointer},
        ]);
        let Ok(removal) = serde_json::from_value::<json_patch::Patch>(removal) else {
            return false;
        };
        let api: Api<Workspace> = Api::namespaced(self.client.clone(), &key.0);
        match api.patch(&key.1, &patch_params(), &Patch::Json::<()>(removal)).await {
            Ok(_) => {}
            // The annotation is gone or another one; or the workspace is gone.
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 404 => {}
            Err(e) => {
                tracing::info!(error = %e, "cannot remove the Culled Event's annotation yet; retrying");
                return false;
            }
        }
        lock(&self.culled_recorded).insert(key, settled);
        true
    }

    /// Requeue a workspace for `at` (UNIX ms), keeping the due-queue metric.
    fn requeue_at(&self, key: Key, at: i64, now: i64) -> Action {
        // Its rule may wait on the namespace's labels (no rule applies until the cache shows
        // the namespace): looked at again soon, not an interval later.
        let at = if self.namespaces.get(&ObjectRef::new(&key.0)).is_none() {
            at.min(now.saturating_add(NAMESPACE_RECHECK_MS))
        } else {
            at
        };
        if lock(&self.due).insert(key) {
            self.metrics.due_queue.inc();
        }
        Action::requeue(after(now, at).max(Duration::from_millis(100)))
    }

    fn effective_policy(&self, policy: &CullingPolicy) -> workspace_culler_policy::CullingPolicySpec {
        let mut spec = policy.spec.clone();
        spec.dry_run |= self.settings.dry_run;
        spec
    }

    /// Record an Event on the workspace; whether it was recorded (a one-time warning that was
    /// not is tried again).
    async fn event(&self, workspace: &Workspace, type_: EventType, reason: &str, note: String) -> bool {
        if !self.fence.holds() {
            tracing::info!(reason, "not the leader: the event is not recorded");
            return false;
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        match self.recorder.publish(&event, &workspace.object_ref(&())).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, reason, "cannot record event");
                false
            }
        }
    }

    /// Record an Event under `name`: one recorded under it already (by this process or another,
    /// which may have stopped before it could remember) is not recorded again. Only while this
    /// replica leads. Its note is cut to what an Event may hold.
    async fn event_once(
        &self,
        workspace: &Workspace,
        name: String,
        type_: EventType,
        reason: &str,
        mut note: String,
        at: k8s_openapi::jiff::Timestamp,
    ) -> Result<EventRecorded, Error> {
        self.fenced()?;
        cut_note(&mut note);
        let namespace = workspace.namespace().unwrap_or_default();
        let event = k8s_openapi::api::events::v1::Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some(reason.into()),
            reason: Some(reason.into()),
            note: Some(note),
            regarding: Some(workspace.object_ref(&())),
            reporting_controller: Some(MANAGER.into()),
            reporting_instance: Some(reporter().instance.unwrap_or_else(|| MANAGER.into())),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(MicroTime(at)),
            ..Default::default()
        };
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &namespace);
        match events.create(&kube::api::PostParams::default(), &event).await {
            Ok(_) => Ok(EventRecorded::New),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(reason, "the Event was recorded already");
                Ok(EventRecorded::Before)
            }
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                tracing::warn!(error = %e, reason, "the apiserver refuses the Event; not asked again");
                Ok(EventRecorded::Refused)
            }
            Err(e) => {
                tracing::warn!(error = %e, reason, "cannot record the Event; tried again later");
                Err(e.into())
            }
        }
    }

    /// `workspace` with its `eligibleAfter` written anew when what the rule gives now differs
    /// from the one stored at its last probe: a resume (a new `lastRunningTime`), a keep-alive
    /// or a rule edit moves it, and Kubeflow's UI (and the `CullingSoon` warning) read it before
    /// the next probe. Only a stored one is brought up to date; a conflict leaves it to the
    /// next reconcile. Not while a keep-alive is clamped: its cap is counted from the clock
    /// until the clamp is written into the annotation, so it moves on every reconcile.
    async fn refresh_eligible_after(&self, mut workspace: Workspace, governed: &Governed) -> Result<Workspace, Error> {
        if matches!(governed.keep_alive, workspace_culler_policy::KeepAlive::Clamped { .. }) {
            return Ok(workspace);
        }
        let Some(activity) = workspace.activity() else {
            return Ok(workspace);
        };
        let stored = activity.eligible_after();
        let eligible = eligible_after(activity.last_activity, workspace.last_running_time(), &governed.rule);
        if stored <= 0 || eligible == stored {
            return Ok(workspace);
        }
        let mut refreshed = activity.clone();
        refreshed
            .rules
            .get_or_insert_with(Default::default)
            .pause_workspace
            .get_or_insert_with(Default::default)
            .eligible_after = eligible;
        let mut patch = serde_json::json!({
            "status": {"activity": {"rules": {"pauseWorkspace": {"eligibleAfter": eligible}}}},
        });
        if let Some(version) = workspace.resource_version() {
            patch["metadata"] = serde_json::json!({"resourceVersion": version});
        }
        self.fenced()?;
        let key = key_of(&workspace);
        match patch_workspace_status(&self.client, &key.0, &key.1, &patch).await {
            Ok(_) => {
                tracing::info!(
                    eligible_after = eligible,
                    was = stored,
                    "eligibleAfter brought up to date"
                );
                workspace.status.get_or_insert_with(Default::default).activity = Some(refreshed);
                Ok(workspace)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(workspace),
            Err(e) => Err(e.into()),
        }
    }

    /// When to warn that `workspace` will be paused (UNIX ms), if it will and has not been
    /// warned about this `eligibleAfter` yet.
    fn culling_soon_at(&self, workspace: &Workspace, governed: &Governed) -> Option<(i64, i64)> {
        let window = self.settings.culling_soon_seconds.saturating_mul(1000);
        if window <= 0 || workspace.culling_disabled() || self.effective_policy(&governed.policy).dry_run {
            return None;
        }
        governed.rule.pause_window()?;
        let eligible = workspace.activity()?.eligible_after();
        if eligible <= 0 {
            return None;
        }
        if lock(&self.warned).get(&key_of(workspace)) == Some(&eligible) {
            return None;
        }
        Some((eligible.saturating_sub(window), eligible))
    }

    /// Warn now if the workspace is within the warning window; otherwise the time to wake up for it.
    async fn warn_if_soon(&self, workspace: &Workspace, governed: &Governed, now: i64) -> Option<i64> {
        let (warn_at, eligible) = self.culling_soon_at(workspace, governed)?;
        if now < warn_at {
            return Some(warn_at);
        }
        if now >= eligible.saturating_add(PAUSE_GRACE_MS) {
            return None;
        }
        let when = chrono::DateTime::from_timestamp_millis(eligible)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let activity = workspace.activity().cloned().unwrap_or_default();
        let note = if workspace_culler_policy::decide::limited_by_lifetime(
            activity.last_activity,
            workspace.last_running_time(),
            &governed.rule,
        ) {
            format!("Will be paused after {when}: the maximum running time of its rule (maxRunningSeconds)")
        } else {
            format!("Idle: will be paused after {when} unless it is used before then")
        };
        // Once per `eligibleAfter`, whichever process warns: one restarted since does not warn
        // again.
        let name = event_name(workspace, "culling-soon", &eligible.to_string());
        let at = k8s_openapi::jiff::Timestamp::now();
        let recorded = self
            .event_once(workspace, name, EventType::Warning, "CullingSoon", note, at)
            .await;
        if recorded.is_ok() {
            lock(&self.warned).insert(key_of(workspace), eligible);
            None
        } else {
            // Not recorded (a moment without the lease, an apiserver error): warned again soon,
            // so the pause never comes unannounced for that.
            Some(now.saturating_add(WARNING_RETRY_MS))
        }
    }
}

/// Pause the workspace: a patch of `spec.paused` alone, preconditioned on the uid and
/// resourceVersion of a fresh read that still warrants it under the policy as it was when the
/// workspace was probed (`probed_under`), retried on conflict.
async fn pause(
    workspace: &Workspace,
    probe_start_ms: i64,
    probed_under: &CullingPolicy,
    ctx: &Context,
) -> Result<(), Error> {
    let namespace = workspace.namespace().unwrap_or_default();
    let name = workspace.name_any();
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &namespace);
    for _ in 0..5 {
        let fresh = api.get(&name).await?;
        if fresh.metadata.uid != workspace.metadata.uid {
            tracing::info!("the workspace was re-created since its probe; not pausing");
            return Ok(());
        }
        let Some(activity) = fresh
            .activity()
            .filter(|a| a.last_probe.as_ref().is_some_and(|p| p.start_time == probe_start_ms))
        else {
            tracing::info!("a newer probe or edit superseded this one; not pausing");
            return Ok(());
        };
        let governed = match ctx.governed(&fresh) {
            Ok(governed) => governed,
            Err(why) => {
                tracing::info!(%why, "no longer managed after a fresh read; not pausing");
                return Ok(());
            }
        };
        let policy_name = governed.policy.name_any();
        // The policy as the apiserver has it now: the cache may not show an edit yet.
        let Some(policy) = Api::<CullingPolicy>::all(ctx.client.clone())
            .get_opt(&policy_name)
            .await?
        else {
            tracing::info!(policy = %policy_name, "the policy is gone; not pausing");
            return Ok(());
        };
        if !policy.spec.workspace_kinds.contains(&fresh.spec.kind) {
            tracing::info!(policy = %policy_name, "the policy no longer names the kind; not pausing");
            return Ok(());
        }
        // An edit of the policy (its probe, its rules) or its re-creation since the probe: the
        // probe's verdict was reached under another policy; the next probe decides.
        let version = |p: &CullingPolicy| (p.name_any(), p.metadata.uid.clone(), p.metadata.generation);
        if version(&policy) != version(probed_under) {
            tracing::info!(policy = %policy_name, "the policy changed since the probe; not pausing");
            return Ok(());
        }
        let governed = ctx.with_policy(&fresh, Arc::new(policy), governed.kind);
        let decision = pause_decision(
            &fresh,
            activity,
            &governed.rule,
            &ctx.effective_policy(&governed.policy),
            (ctx.clock)(),
        );
        let idle_for = |activity: &Activity| {
            let since = workspace_culler_policy::decide::effective_last_activity(
                activity.last_activity,
                fresh.last_running_time(),
            );
            ((ctx.clock)() - since) / 1000
        };
        let now = (ctx.clock)();
        let note = if workspace_culler_policy::decide::limited_by_lifetime(
            activity.last_activity,
            fresh.last_running_time(),
            &governed.rule,
        ) {
            format!(
                "running for {}s, past its rule's maxRunningSeconds (CullingPolicy {policy_name})",
                (now - fresh.last_running_time()) / 1000
            )
        } else {
            format!(
                "idle for {}s, past eligibleAfter (CullingPolicy {policy_name})",
                idle_for(activity)
            )
        };
        match decision {
            Pause::No(keep) => {
                tracing::info!(%keep, "not pausing after a fresh read");
                return Ok(());
            }
            Pause::WouldCull => {
                let eligible = activity.eligible_after();
                if lock(&ctx.would_cull).insert(key_of(&fresh), eligible) == Some(eligible) {
                    tracing::debug!("dry run: would pause the workspace (already reported)");
                    return Ok(());
                }
                tracing::info!("dry run: would pause the workspace");
                let note = format!("Dry run: would pause, {note}");
                // Once per `eligibleAfter`, whichever process reports it: one restarted since
                // neither reports nor counts it again.
                let name = event_name(&fresh, "would-cull", &eligible.to_string());
                let at = k8s_openapi::jiff::Timestamp::now();
                match ctx
                    .event_once(&fresh, name, EventType::Normal, "WouldCull", note, at)
                    .await
                {
                    // Counted with its Event, as a pause is.
                    Ok(EventRecorded::New) => ctx.metrics.culls.with_label_values(&["true"]).inc(),
                    Ok(EventRecorded::Before | EventRecorded::Refused) => {}
                    // Reported (and counted) by the next probe that finds it so.
                    Err(_) => {
                        lock(&ctx.would_cull).remove(&key_of(&fresh));
                    }
                }
                return Ok(());
            }
            Pause::Yes => {}
        }
        // The last pause's Event, if still owed (Events were refused, and the workspace resumed
        // since), is recorded first: this pause's annotation takes its place.
        if fresh.annotations().contains_key(CULLED_EVENT_ANNOTATION) {
            if !ctx.settle_culled_event(&fresh).await {
                tracing::info!("the last pause's Culled Event is still owed; not pausing before it is recorded");
                return Ok(());
            }
            continue;
        }
        // Every pause owes its Event, in the same write: if it cannot be recorded now, or this
        // process stops first, the workspace's next reconcile (this patch brings one) records
        // and counts it, in this process or the next.
        let owed = OwedEvent {
            at: now,
            policy: governed.policy.metadata.uid.clone().unwrap_or_default(),
            note: format!("Paused: {note}"),
        };
        let owed = serde_json::to_string(&owed).unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {
                "uid": fresh.metadata.uid,
                "resourceVersion": fresh.resource_version(),
                "annotations": {CULLED_EVENT_ANNOTATION: owed},
            },
            "spec": {"paused": true},
        });
        ctx.fenced()?;
        match api.patch(&name, &patch_params(), &Patch::Merge(&patch)).await {
            Ok(paused) => {
                tracing::info!(policy = %policy_name, "paused the idle workspace");
                ctx.settle_culled_event(&paused).await;
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

/// Write what `run` says of `workspace` (as read) into Kubeflow's `status.activity`,
/// conditional on the resourceVersion read, so an older probe's result never lands over a newer
/// one: on a conflict it re-reads, drops this result if a newer probe is recorded, and
/// otherwise recomputes from the fresh object and retries. `None`: not written (dropped).
///
/// Whatever happens, the attempt is remembered, so a failed write does not make the workspace
/// due again before `minProbeIntervalSeconds`; and a result that could not be written is
/// written by the next reconcile (`unwritten`), not dropped.
async fn record(
    ctx: &Context,
    workspace: &Workspace,
    run: &workspace_culler_policy::ProbeRun,
    rule: &RuleMatch,
) -> Result<Option<(Workspace, Activity)>, Error> {
    let key = key_of(workspace);
    let written = write_result(ctx, workspace, run, rule).await;
    // Kept for the next reconcile unless written, dropped, refused for good, or no longer ours.
    let retry = match &written {
        Ok(Recorded::GaveUp) => true,
        Err(e) => e.retryable(),
        Ok(Recorded::Written(..) | Recorded::Dropped) => false,
    };
    let mut unwritten = lock(&ctx.unwritten);
    if retry {
        unwritten.insert(key, (workspace.metadata.uid.clone(), run.clone(), rule.clone()));
    } else {
        unwritten.remove(&key);
    }
    match written? {
        Recorded::Written(workspace, activity) => Ok(Some((*workspace, activity))),
        Recorded::Dropped | Recorded::GaveUp => Ok(None),
    }
}

/// A probe's result not written yet: the uid it is for, the probe, the rule it was judged by.
type Unwritten = (Option<String>, workspace_culler_policy::ProbeRun, RuleMatch);

/// How an attempt to write a probe's result ended.
enum Recorded {
    Written(Box<Workspace>, Activity),
    /// A newer probe is recorded, or the workspace was re-created.
    Dropped,
    /// The status kept changing under repeated writes.
    GaveUp,
}

async fn write_result(
    ctx: &Context,
    workspace: &Workspace,
    run: &workspace_culler_policy::ProbeRun,
    rule: &RuleMatch,
) -> Result<Recorded, Error> {
    let key = key_of(workspace);
    let mut base = workspace.clone();
    for _ in 0..5 {
        let activity = activity_after_probe(base.activity(), run, base.last_running_time(), rule);
        lock(&ctx.written).insert(key.clone(), (workspace.metadata.uid.clone(), activity.clone()));
        let mut patch = activity_patch(&activity);
        if let Some(version) = base.resource_version() {
            patch["metadata"] = serde_json::json!({"resourceVersion": version});
        }
        ctx.fenced()?;
        match patch_workspace_status(&ctx.client, &key.0, &key.1, &patch).await {
            Ok(_) => {
                base.status.get_or_insert_with(Default::default).activity = Some(activity.clone());
                return Ok(Recorded::Written(Box::new(base), activity));
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let fresh = Api::<Workspace>::namespaced(ctx.client.clone(), &key.0)
                    .get(&key.1)
                    .await?;
                if fresh.metadata.uid != workspace.metadata.uid {
                    tracing::info!("the workspace was re-created since its probe; its result is dropped");
                    lock(&ctx.written).remove(&key);
                    return Ok(Recorded::Dropped);
                }
                let newer = fresh
                    .activity()
                    .and_then(|a| a.last_probe.as_ref())
                    .is_some_and(|p| p.start_time >= run.start_ms);
                if newer {
                    tracing::info!("a newer probe is recorded; this one's result is dropped");
                    lock(&ctx.written).remove(&key);
                    return Ok(Recorded::Dropped);
                }
                base = fresh;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::warn!("the status kept changing under repeated writes; the next reconcile retries");
    Ok(Recorded::GaveUp)
}

async fn reconcile(object: Arc<CachedWorkspace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&*object);
    let span = tracing::info_span!("reconcile", namespace = %key.0, name = %key.1);
    let workspace = match &*object {
        CachedWorkspace::Read(workspace) => Workspace::clone(workspace),
        CachedWorkspace::Unreadable { error, .. } => {
            span.in_scope(|| tracing::warn!(%error, "skipping an object that cannot be read"));
            ctx.metrics.skipped.with_label_values(&[&Workspace::kind(&())]).inc();
            ctx.forget(&key);
            return Ok(Action::await_change());
        }
    };
    let reconciled = reconcile_workspace(workspace, ctx.clone()).instrument(span).await;
    // Deleted while its reconcile was in flight (perhaps re-created under its name): what that
    // reconcile kept of it is forgotten (the deletion's own event may have come before).
    let cached = ctx.workspaces.get(&ObjectRef::from_obj(&*object));
    if cached.is_none_or(|cached| cached.uid() != object.uid()) {
        ctx.forget_deleted(&key);
    }
    reconciled
}

async fn reconcile_workspace(workspace: Workspace, ctx: Arc<Context>) -> Result<Action, Error> {
    let settled = ctx.settle_culled_event(&workspace).await;
    let action = probe_and_pause(workspace, ctx).await?;
    // A paused workspace has no other reason to come back; a running one is looked at again
    // anyway.
    Ok(if settled || action != Action::await_change() {
        action
    } else {
        Action::requeue(CULLED_EVENT_RETRY)
    })
}

/// Probe the workspace when due, record what the probe found, and pause it if that warrants.
async fn probe_and_pause(workspace: Workspace, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&workspace);
    let now = (ctx.clock)();
    let unwritten = lock(&ctx.unwritten)
        .get(&key)
        .filter(|(uid, ..)| *uid == workspace.metadata.uid)
        .map(|(_, run, rule)| (workspace.clone(), run.clone(), rule.clone()));
    let workspace = ctx.with_freshest_activity(workspace);
    let governed = match ctx.governed(&workspace) {
        Ok(governed) => governed,
        Err(why) => {
            tracing::debug!(%why, "not probing");
            ctx.forget(&key);
            return Ok(Action::await_change());
        }
    };
    if let Some((cached, run, rule)) = unwritten {
        // A result this process observed but could not write: written first, from the object
        // as cached, and not probed for again (the workspace may look idle by now).
        record(&ctx, &cached, &run, &rule).await?;
    }
    ctx.enforce_keep_alive(&workspace, &governed).await;
    match probe_due(&workspace, &governed.policy.spec.activity_probe, &governed.rule, now) {
        Due::Now => {}
        Due::At(at) => {
            let workspace = ctx.refresh_eligible_after(workspace, &governed).await?;
            let wake = ctx.warn_if_soon(&workspace, &governed, now).await;
            return Ok(ctx.requeue_at(key, wake.map_or(at, |w| w.min(at)), now));
        }
        Due::NotManaged(why) => {
            tracing::debug!(%why, "not probing");
            ctx.forget(&key);
            return Ok(Action::await_change());
        }
    }

    let kind_name = governed.kind.name_any();
    let asked = std::time::Instant::now();
    let probe = ctx.prober.probe(
        &ctx,
        &workspace,
        &governed.kind,
        &governed.policy.spec.activity_probe,
        now,
    );
    let mut stopping = ctx.stopping.clone();
    let probed = tokio::select! {
        probed = probe => probed,
        Ok(_) = stopping.wait_for(|stopping| *stopping) => {
            tracing::info!("stopping: the probe in flight ends here, its result not written");
            return Ok(Action::await_change());
        }
    };
    let run = match probed {
        probe::Probed::Ran(run) => {
            lock(&ctx.deferred).remove(&key);
            run
        }
        probe::Probed::Deferred { modules, landed } => {
            // Nothing ran and nothing is written: reconciled again as soon as the module has
            // landed.
            tracing::debug!(%modules, "probe put off: its module is loading");
            ctx.put_off(&workspace, asked, &modules, landed);
            return Ok(ctx.requeue_at(key, now.saturating_add(LOAD_RECHECK_MS), now));
        }
    };
    let result = workspace_culler_policy::ProbeResult::of(&run.outcome);
    ctx.metrics
        .probes
        .with_label_values(&[result.as_str(), &kind_name])
        .inc();
    ctx.metrics
        .probe_seconds
        .observe(run.end_ms.saturating_sub(run.start_ms) as f64 / 1000.0);
    let Some((probed, activity)) = record(&ctx, &workspace, &run, &governed.rule).await? else {
        // A newer probe is recorded, or the workspace was re-created: decide from the next read.
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let message = activity
        .last_probe
        .as_ref()
        .map(|p| p.message.clone())
        .unwrap_or_default();
    tracing::info!(%result, %message, last_activity = activity.last_activity, "probed");
    if let ProbeOutcome::Failure(_) | ProbeOutcome::Timeout(_) = &run.outcome {
        ctx.event(&workspace, EventType::Warning, "ProbeFailing", message).await;
    }

    match pause_decision(
        &probed,
        &activity,
        &governed.rule,
        &ctx.effective_policy(&governed.policy),
        (ctx.clock)(),
    ) {
        Pause::Yes | Pause::WouldCull => pause(&probed, run.start_ms, &governed.policy, &ctx).await?,
        Pause::No(Keep::NotYetEligible { .. } | Keep::ProbeFailed(_)) => {}
        Pause::No(keep) => tracing::debug!(%keep, "not pausing"),
    }
    // Schedule the next probe (or the warning before it) from the status just written.
    let now = (ctx.clock)();
    match probe_due(&probed, &governed.policy.spec.activity_probe, &governed.rule, now) {
        Due::At(at) => {
            let wake = ctx.warn_if_soon(&probed, &governed, now).await;
            Ok(ctx.requeue_at(key, wake.map_or(at, |w| w.min(at)), now))
        }
        Due::Now => Ok(ctx.requeue_at(key, now + 1000, now)),
        Due::NotManaged(_) => {
            ctx.forget(&key);
            Ok(Action::await_change())
        }
    }
}

fn error_policy(_workspace: Arc<CachedWorkspace>, error: &Error, ctx: Arc<Context>) -> Action {
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

/// A cache of `api` as `config` selects, each object trimmed by `trim` to what the culler
/// reads, filled in the background until the guard drops; `on_event` sees each event after the
/// cache applied it.
fn cache<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    config: watcher::Config,
    trim: fn(&mut K),
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, AbortOnDrop)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let kind = K::kind(&dyntype).into_owned();
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    // Backing off between failed watches: without it, a watch of an apiserver that refuses
    // connections is retried at once, again and again (a busy loop and a log flood).
    let task = reflector(writer, watcher(api, config).default_backoff().modify(trim)).for_each(move |event| {
        match event {
            Ok(event) => on_event(&event),
            Err(error) => watch_failed(&error, &kind),
        }
        futures::future::ready(())
    });
    (store, AbortOnDrop(tokio::spawn(task)))
}

/// Say why a watch of `kind` failed: at warn, since until a first list succeeds nothing is
/// probed and the controller is not ready (a CRD not installed, a role missing), and this is
/// where the operator learns why; a watch the apiserver ended as too old (410 Gone: the
/// watcher lists again, routine on a healthy cluster) only at debug.
fn watch_failed(error: &watcher::Error, kind: &str) {
    match error {
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::debug!(%error, resource = %kind, "watch expired; listing again");
        }
        _ => tracing::warn!(%error, resource = %kind, "cannot list or watch; retrying"),
    }
}

/// Keep everything (small objects, or ones read whole).
fn whole<K>(_: &mut K) {}

/// Drop `metadata.managedFields`: the field managers' bookkeeping, often the largest part of
/// an object, which the culler never reads.
fn without_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A StatefulSet is watched for its metadata only; of that, the cache keeps its name,
/// namespace and owners (its owner is what the culler checks).
fn trim_statefulset(statefulset: &mut pods::CachedStatefulSet) {
    let metadata = std::mem::take(&mut statefulset.metadata);
    statefulset.types = None;
    statefulset.metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        owner_references: metadata.owner_references,
        ..ObjectMeta::default()
    };
}

/// Which kinds' workspaces a change of a CullingPolicy or a WorkspaceKind touches, from the
/// events of its cache: a spec edit (a new generation), an object re-created under its name (a
/// new uid) or one deleted touches the kinds it names and those it named before (a policy that
/// drops a kind, or is deleted, may leave it to another policy); a status write touches none
/// (Kubeflow updates its kinds' status counts, this controller its policies' status).
#[derive(Default)]
struct Touched {
    /// Per object name: the uid and generation seen last, and the kinds it names.
    seen: HashMap<String, (Option<String>, i64, Vec<String>)>,
    /// The names a re-list in progress has listed so far (a watch started again): one not
    /// listed by its end was deleted meanwhile.
    relisted: Option<HashSet<String>>,
    /// The kinds the re-list in progress touched: the cache takes a re-list in whole at its
    /// end, so they are announced then.
    pending: BTreeSet<String>,
}

impl Touched {
    fn event<K: Resource>(&mut self, event: &watcher::Event<K>, kinds_of: impl Fn(&K) -> Vec<String>) -> Vec<String> {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let name = object.name_any();
                let relisting = matches!(event, watcher::Event::InitApply(_)) && self.relisted.is_some();
                if let (true, Some(listed)) = (relisting, self.relisted.as_mut()) {
                    listed.insert(name.clone());
                }
                let (uid, generation) = (object.meta().uid.clone(), object.meta().generation.unwrap_or_default());
                let kinds = kinds_of(object);
                let touched: Vec<String> = match self.seen.insert(name, (uid.clone(), generation, kinds.clone())) {
                    Some((seen_uid, seen_generation, _)) if seen_uid == uid && seen_generation == generation => {
                        Vec::new()
                    }
                    Some((_, _, before)) => before
                        .into_iter()
                        .chain(kinds)
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    None => kinds,
                };
                if relisting {
                    // The cache takes a list in whole at its end: announced then.
                    self.pending.extend(touched);
                    return Vec::new();
                }
                touched
            }
            watcher::Event::Delete(object) => self
                .seen
                .remove(&object.name_any())
                .map_or_else(|| kinds_of(object), |(_, _, kinds)| kinds),
            watcher::Event::InitDone => {
                let Some(listed) = self.relisted.take() else {
                    return Vec::new();
                };
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|name| !listed.contains(*name))
                    .cloned()
                    .collect();
                let mut touched = std::mem::take(&mut self.pending);
                touched.extend(
                    gone.iter()
                        .filter_map(|name| self.seen.remove(name))
                        .flat_map(|(_, _, kinds)| kinds),
                );
                touched.into_iter().collect()
            }
        }
    }
}

/// Sends the kinds a cache's event touches (see [`Touched`]) to every controller.
fn announce_touched<K: Resource>(
    touched: &Mutex<Touched>,
    sender: &tokio::sync::broadcast::Sender<Option<Arc<[String]>>>,
    event: &watcher::Event<K>,
    kinds_of: impl Fn(&K) -> Vec<String>,
) {
    let kinds = lock(touched).event(event, kinds_of);
    if !kinds.is_empty() {
        // No receiver yet (the controllers start after the caches) is no error.
        let _ = sender.send(Some(kinds.into()));
    }
}

/// Run the controller until `shutdown` resolves: over all namespaces, or one controller per
/// namespace in `settings.namespaces`.
pub async fn run(
    client: Client,
    engine: Arc<ProbeEngine>,
    settings: Settings,
    metrics: Metrics,
    readiness: server::Readiness,
    fence: leader::Fence,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let kinds_api: Api<DynamicObject> = Api::all_with(client.clone(), &kind_resource());
    let kind_metrics = metrics.clone();
    // The kinds whose workspaces to reconcile again, announced once the cache holds the change.
    let (touched, _) = tokio::sync::broadcast::channel::<Option<Arc<[String]>>>(256);
    let (kinds_touched, kinds_sender) = (Mutex::<Touched>::default(), touched.clone());
    let (kinds, _kinds_task) = cache(
        kinds_api.clone(),
        kind_resource(),
        Default::default(),
        without_managed_fields,
        move |event: &watcher::Event<DynamicObject>| {
            // Logged and counted once per change of the kind.
            if let watcher::Event::Apply(kind) | watcher::Event::InitApply(kind) = event {
                let _ = decoded::<WorkspaceKind>(kind, &kind_metrics);
            }
            announce_touched(&kinds_touched, &kinds_sender, event, |kind| vec![kind.name_any()]);
        },
    );
    let policies_api: Api<CullingPolicy> = Api::all(client.clone());
    let (policies_touched, policies_sender) = (Mutex::<Touched>::default(), touched.clone());
    let (policies, _policies_task) = cache(policies_api.clone(), (), Default::default(), whole, move |event| {
        announce_touched(&policies_touched, &policies_sender, event, |policy: &CullingPolicy| {
            policy.spec.workspace_kinds.clone()
        });
    });
    let (namespaces, _namespaces_task) = cache(
        Api::<Namespace>::all(client.clone()),
        (),
        Default::default(),
        without_managed_fields,
        |_| {},
    );
    let (secrets, _secrets_task) = cache(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &settings.own_namespace),
        (),
        Default::default(),
        without_managed_fields,
        |_| {},
    );
    // Shutdown (a signal, or the lease lost) is heard while waiting for the caches too: one that
    // cannot be listed (a CRD missing, a role missing) must not hold the process.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let synced = async {
        kinds.wait_until_ready().await?;
        policies.wait_until_ready().await?;
        namespaces.wait_until_ready().await?;
        secrets.wait_until_ready().await
    };
    tokio::select! {
        synced = synced => synced?,
        () = shutdown.clone() => return Ok(()),
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            let _ = stop.send(true);
        }
    });

    let recorder = Recorder::new(client.clone(), reporter());
    let looks = probe::FileLooks::default();
    let prober: Arc<dyn probe::Prober> = Arc::new(probe::EngineProber::new(engine, looks.clone()));
    let pauses: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let scopes = scopes(&settings.namespaces);
    let mut stores = Vec::new();
    let mut pod_caches = Vec::new();
    for namespace in &scopes {
        // Pods decoded to the fields the culler reads; StatefulSets watched for their metadata
        // only (the apiserver sends no more).
        let (pods, statefulsets): (Api<pods::CachedPod>, Api<pods::CachedStatefulSet>) = match namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let labelled = watcher::Config::default().labels(WORKSPACE_LABEL);
        let index = pods::PodIndex::default();
        let observer = index.clone();
        let (pods, pods_task) = cache(pods, (), labelled, pods::trim, move |event| observer.observe(event));
        let pods = pods::WorkspacePods::new(pods, index);
        let (statefulsets, statefulsets_task) = cache(statefulsets, (), Default::default(), trim_statefulset, |_| {});
        pod_caches.push((pods, statefulsets, [pods_task, statefulsets_task]));
    }
    let runs: Vec<_> = scopes
        .into_iter()
        .zip(pod_caches.iter())
        .map(|(namespace, (pods, statefulsets, _))| {
            let workspaces: Api<CachedWorkspace> = match &namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            // The workspaces' own cache, decoded as they arrive and trimmed (one per workspace).
            let writer = reflector::store::Writer::default();
            let store = writer.as_reader();
            stores.push(store.clone());
            let (retrigger, retriggered) = tokio::sync::mpsc::unbounded_channel();
            let ctx = Arc::new(Context {
                client: client.clone(),
                prober: prober.clone(),
                settings: settings.clone(),
                workspaces: store.clone(),
                kinds: kinds.clone(),
                policies: policies.clone(),
                namespaces: namespaces.clone(),
                pods: pods.clone(),
                statefulsets: statefulsets.clone(),
                secrets: secrets.clone(),
                recorder: recorder.clone(),
                metrics: metrics.clone(),
                clock: now_ms,
                due: Mutex::default(),
                written: Default::default(),
                unwritten: Default::default(),
                warned: Default::default(),
                would_cull: Default::default(),
                keep_alive_reported: Default::default(),
                culled_recorded: Default::default(),
                pauses: pauses.clone(),
                fence: fence.clone(),
                stopping: stopping.clone(),
                retrigger,
                deferred: Mutex::default(),
                management: Mutex::default(),
            });
            let watched = watcher(workspaces, watcher::Config::default())
                .default_backoff()
                .modify(cached::trim);
            let observed = reflector(writer, watched).inspect_ok({
                let ctx = ctx.clone();
                move |event| ctx.observe(event)
            });
            let controller = Controller::for_stream(observed.applied_objects(), store.clone())
                .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency));
            // The workspaces of the kinds a policy's or a kind's change touches (all of them
            // when announcements were missed).
            let workspaces_of_kinds = {
                let store = store.clone();
                move |kinds: Option<Arc<[String]>>| {
                    let refs: Vec<_> = store
                        .state()
                        .into_iter()
                        .filter(|w| match &kinds {
                            Some(kinds) => w.kind_name().is_some_and(|k| kinds.iter().any(|n| n == k)),
                            None => true,
                        })
                        .map(|w| ObjectRef::from_obj(&*w))
                        .collect();
                    futures::stream::iter(refs)
                }
            };
            let announcements = futures::stream::unfold(touched.subscribe(), |mut receiver| async move {
                use tokio::sync::broadcast::error::RecvError;
                match receiver.recv().await {
                    Ok(kinds) => Some((kinds, receiver)),
                    Err(RecvError::Lagged(_)) => Some((None, receiver)),
                    Err(RecvError::Closed) => None,
                }
            });
            let retriggered = futures::stream::unfold(retriggered, |mut receiver| async move {
                receiver.recv().await.map(|object| (object, receiver))
            });
            let runs = controller
                .reconcile_on(announcements.flat_map(workspaces_of_kinds))
                .reconcile_on(retriggered)
                .graceful_shutdown_on(shutdown.clone())
                .run(reconcile, error_policy, ctx)
                .for_each(|result| {
                    match result {
                        Err(kube::runtime::controller::Error::QueueError(error)) => {
                            watch_failed(&error, "Workspace");
                        }
                        Err(e) => tracing::debug!(error = %e, "reconcile ended with an error"),
                        Ok(_) => {}
                    }
                    futures::future::ready(())
                });
            // Each namespace starts once its own pods and StatefulSets are listed: one that
            // cannot be (its role missing) holds only itself.
            let (pods, statefulsets, shutdown) = (pods.clone(), statefulsets.clone(), shutdown.clone());
            async move {
                let listed = async {
                    let _ = pods.wait_until_ready().await;
                    let _ = statefulsets.wait_until_ready().await;
                };
                tokio::select! {
                    () = listed => runs.await,
                    () = shutdown => {}
                }
            }
        })
        .collect();
    let sources = policy_status::Sources {
        api: policies_api,
        policies: policies.clone(),
        kinds: kinds.clone(),
        workspaces: stores.clone(),
        pauses,
        fence,
        module_dir: settings.module_dir.clone(),
        looks,
        registry: settings.registry.clone(),
        secrets: secrets.clone(),
        own_namespace: settings.own_namespace.clone(),
        dry_run: settings.dry_run,
    };
    metrics.leader.set(1);
    // Ready: it leads (run is called only then), the kinds', policies' and namespaces' caches
    // are filled, and so are the workspaces' once their watches (started by `runs`) listed.
    // The policies' status is counted from then on: before, every policy would read as
    // managing nothing, and say so until the next pass. (Waited for here, in the task that
    // runs the controllers: a store wakes only the last of several tasks waiting on it.)
    let ready = async {
        let listed = async {
            for store in &stores {
                store.wait_until_ready().await.ok()?;
            }
            Some(())
        };
        tokio::select! {
            listed = listed => listed?,
            () = shutdown.clone() => return None,
        }
        readiness.set(true);
        tracing::info!("ready");
        Some(AbortOnDrop(tokio::spawn(policy_status::run(sources, now_ms))))
    };
    let (_status_task, _) = futures::future::join(ready, futures::future::join_all(runs)).await;
    metrics.leader.set(0);
    metrics.due_queue.set(0);
    readiness.set(false);
    Ok(())
}

#[cfg(test)]
mod reconcile_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_namespace_named_twice_is_watched_by_one_controller() {
        let named = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(scopes(&[]), [None]);
        assert_eq!(
            scopes(&named(&["team-b", "team-a", "team-b"])),
            [Some("team-a".into()), Some("team-b".into())]
        );
    }

    #[test]
    fn a_trimmed_statefulset_keeps_its_owner_only() {
        // As a metadata-only watch sends it.
        let mut statefulset: pods::CachedStatefulSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "ws-a", "namespace": "ns", "uid": "sts-uid", "resourceVersion": "7",
                         "labels": {"notebooks.kubeflow.org/workspace-name": "a"},
                         "annotations": {"big": "x".repeat(4096)},
                         "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}],
                         "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
                                              "name": "a", "uid": "uid-1", "controller": true}]},
        }))
        .unwrap();
        trim_statefulset(&mut statefulset);
        assert!(probe::owned_by_workspace(&statefulset, "uid-1"));
        assert_eq!(
            (statefulset.name_any(), statefulset.namespace()),
            ("ws-a".into(), Some("ns".into()))
        );
        let trimmed = serde_json::to_string(&statefulset).unwrap();
        for dropped in [
            "workspace-name",
            "big",
            "managedFields",
            "sts-uid",
            "resourceVersion",
            "Partial",
        ] {
            assert!(!trimmed.contains(dropped), "{trimmed}");
        }
    }

    #[test]
    fn kinds_and_policies_are_decoded_again_only_when_one_changed() {
        let slot = Mutex::default();
        let computed = std::cell::Cell::new(0);
        let compute = || {
            computed.set(computed.get() + 1);
            computed.get()
        };
        let kind = |version: Option<&str>, image: &str| {
            let mut kind = object(serde_json::json!({
                "apiVersion": "kubeflow.org/v1beta1", "kind": "WorkspaceKind",
                "metadata": {"name": "jupyterlab"}, "spec": {"image": image},
            }));
            kind.metadata.resource_version = version.map(str::to_owned);
            kind
        };
        let seen = |kind: &DynamicObject| vec![revision(kind)];
        assert_eq!(*computed_for(&slot, seen(&kind(Some("1"), "a")), compute), 1);
        assert_eq!(
            *computed_for(&slot, seen(&kind(Some("1"), "a")), compute),
            1,
            "unchanged: cached"
        );
        assert_eq!(
            *computed_for(&slot, seen(&kind(Some("2"), "b")), compute),
            2,
            "a new resourceVersion"
        );
        // Without a resourceVersion, the content tells versions apart.
        assert_eq!(*computed_for(&slot, seen(&kind(None, "b")), compute), 3);
        assert_eq!(*computed_for(&slot, seen(&kind(None, "b")), compute), 3);
        assert_eq!(*computed_for(&slot, seen(&kind(None, "c")), compute), 4);
        assert_eq!(*computed_for(&slot, Vec::new(), compute), 5, "a kind gone");
    }

    #[test]
    fn an_object_that_cannot_be_read_is_skipped_and_counted() {
        let metrics = Metrics::new().unwrap();
        let good = object(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
            "metadata": {"name": "a", "namespace": "ns"}, "spec": {"kind": "jupyterlab"},
        }));
        let workspace: Workspace = decoded(&good, &metrics).expect("a well-formed workspace");
        assert_eq!(workspace.spec.kind, "jupyterlab");
        let bad = object(serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
            "metadata": {"name": "b", "namespace": "ns"}, "spec": {"kind": 5, "paused": "yes"},
        }));
        assert!(decoded::<Workspace>(&bad, &metrics).is_none());
        assert_eq!(metrics.skipped.with_label_values(&["Workspace"]).get(), 1);
        assert!(
            metrics
                .render()
                .contains("workspace_culler_objects_skipped_total{resource=\"Workspace\"} 1")
        );
    }

    #[test]
    fn a_policy_touches_its_kinds_on_a_spec_edit_a_re_creation_or_a_deletion_never_on_status() {
        let policy = |uid: &str, generation: i64, kinds: &[&str]| {
            let mut policy = CullingPolicy::new("notebooks", serde_json::from_value(serde_json::json!({
                "workspaceKinds": kinds, "activityProbe": {"jupyter": {"lastActivity": true, "portId": "jupyterlab"}},
            })).unwrap());
            policy.metadata.uid = Some(uid.into());
            policy.metadata.generation = Some(generation);
            policy
        };
        let mut touched = Touched::default();
        let mut event = |event: watcher::Event<CullingPolicy>| {
            touched.event(&event, |p: &CullingPolicy| p.spec.workspace_kinds.clone())
        };
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        // A list is taken into the cache in whole at its end: what it touched is announced then.
        assert_eq!(event(Init), Vec::<String>::new());
        assert_eq!(event(InitApply(policy("u1", 1, &["jupyterlab"]))), Vec::<String>::new());
        assert_eq!(event(InitDone), ["jupyterlab"]);
        assert_eq!(
            event(Apply(policy("u1", 1, &["jupyterlab"]))),
            Vec::<String>::new(),
            "a status write"
        );
        // A spec edit that moves the policy to another kind touches both: the kind dropped may
        // now be another policy's alone.
        assert_eq!(event(Apply(policy("u1", 2, &["rstudio"]))), ["jupyterlab", "rstudio"]);
        assert_eq!(event(Delete(policy("u1", 2, &["rstudio"]))), ["rstudio"]);
        // Applied again: a new object, whose generation starts again at 1.
        assert_eq!(event(Apply(policy("u2", 1, &["jupyterlab"]))), ["jupyterlab"]);
        assert_eq!(
            event(Apply(policy("u3", 1, &["jupyterlab"]))),
            ["jupyterlab"],
            "re-created"
        );
        // Deleted while the watch was down: the re-list does not list it.
        assert_eq!(event(Init), Vec::<String>::new());
        assert_eq!(event(InitDone), ["jupyterlab"]);
        assert_eq!(
            event(Apply(policy("u3", 1, &["jupyterlab"]))),
            ["jupyterlab"],
            "known again"
        );
        // Edited while the watch was down: announced when the re-list ends, not before.
        assert_eq!(event(Init), Vec::<String>::new());
        assert_eq!(event(InitApply(policy("u3", 2, &["rstudio"]))), Vec::<String>::new());
        assert_eq!(event(InitDone), ["jupyterlab", "rstudio"]);
    }

    #[test]
    fn a_due_time_in_the_past_requeues_soon_not_never() {
        assert_eq!(after(10_000, 4_000), Duration::ZERO);
        assert_eq!(after(10_000, 12_500), Duration::from_millis(2_500));
        assert_eq!(after(i64::MIN, i64::MAX), Duration::from_millis(i64::MAX as u64));
    }
}
