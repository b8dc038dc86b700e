//! The reconcile of one workspace against an in-memory API server (kube's client over a
//! `tower-test` mock, as in kube-rs's controller-rs), a fixed clock and scripted probe
//! outcomes: the common paths of SPEC §4 in milliseconds, without a control plane.

use super::probe::{Probed, Prober};
use super::*;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use workspace_culler_policy::{ActivityProbe, ProbeActivity, ProbeRun};

const NOW: i64 = 1_780_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const WORKSPACE_PATH: &str = "/apis/kubeflow.org/v1beta1/namespaces/team/workspaces/ws";
const POLICY_PATH: &str = "/apis/workspace-culler.io/v1alpha1/cullingpolicies/notebooks";

/// What a probe that pauses sends: its status write, the fresh reads, the pause, its `Culled`
/// Event and the removal of the annotation that owed it.
const PROBED_AND_PAUSED: [&str; 6] = [
    "PATCH /status",
    "GET ",
    "GET policy",
    "PATCH ",
    "event Culled",
    "PATCH ",
];

fn clock() -> i64 {
    NOW
}

/// One request the controller sent: method, path, JSON body, and whether it asked for the
/// object's metadata only in the answer.
#[derive(Clone, Debug)]
struct Sent {
    method: Method,
    path: String,
    body: Value,
    metadata_only: bool,
}

/// The API server's side: the one Workspace and the one CullingPolicy, what was sent, how many
/// pause patches to refuse with a conflict first, and faults to inject into the status write.
#[derive(Default)]
struct FakeApi {
    workspace: Mutex<Value>,
    policy: Mutex<Value>,
    sent: Mutex<Vec<Sent>>,
    conflicts_to_return: AtomicUsize,
    /// Another writer records a newer probe just before the next status write arrives.
    newer_probe_first: std::sync::atomic::AtomicBool,
    /// The next status write fails with a server error.
    fail_status_write: std::sync::atomic::AtomicBool,
    /// The next status write is refused as invalid.
    reject_status_write: std::sync::atomic::AtomicBool,
    /// How many Events to refuse with a server error first.
    events_to_refuse: AtomicUsize,
    /// The next Event is refused as invalid.
    reject_event: std::sync::atomic::AtomicBool,
    /// The Events created (a second one under a name is refused, as the apiserver does).
    events: Mutex<Vec<Value>>,
    /// Someone else's edit (a merge patch) that lands just before the next read of the workspace.
    edit_before_read: Mutex<Option<Value>>,
}

/// RFC 7386 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    if patch.is_object() && !target.is_object() {
        *target = json!({});
    }
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

impl FakeApi {
    fn respond(&self, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
        if path.starts_with("/apis/events.k8s.io/") {
            if self
                .events_to_refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let error = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
                return (StatusCode::INTERNAL_SERVER_ERROR, error);
            }
            if method == Method::POST {
                // As the apiserver validates an Event.
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let valid_name = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|label| {
                        !label.is_empty()
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    });
                let namespace = path.split('/').nth(5).unwrap_or_default();
                if self.reject_event.swap(false, Ordering::SeqCst)
                    || !valid_name
                    || body["note"].as_str().unwrap_or_default().len() > 1024
                    || body["regarding"]["namespace"] != namespace
                {
                    let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                         "message": format!("Event {name:?} is invalid"), "reason": "Invalid", "code": 422});
                    return (StatusCode::UNPROCESSABLE_ENTITY, invalid);
                }
                let mut events = lock(&self.events);
                if events.iter().any(|e| e["metadata"]["name"] == body["metadata"]["name"]) {
                    let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": "events.events.k8s.io already exists", "reason": "AlreadyExists", "code": 409});
                    return (StatusCode::CONFLICT, exists);
                }
                events.push(body.clone());
            }
            return (StatusCode::CREATED, body.clone());
        }
        let mut workspace = lock(&self.workspace);
        let bump = |workspace: &mut Value| {
            let version: u64 = workspace["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            workspace["metadata"]["resourceVersion"] = (version + 1).to_string().into();
        };
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": "the object has been modified", "reason": "Conflict", "code": 409});
        match (method.as_str(), path) {
            ("GET", WORKSPACE_PATH) => {
                if let Some(edit) = lock(&self.edit_before_read).take() {
                    merge(&mut workspace, &edit);
                    bump(&mut workspace);
                }
                (StatusCode::OK, workspace.clone())
            }
            ("GET", POLICY_PATH) => (StatusCode::OK, lock(&self.policy).clone()),
            ("PATCH", p) if p == format!("{WORKSPACE_PATH}/status") => {
                if self.fail_status_write.swap(false, Ordering::SeqCst) {
                    let error = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
                    return (StatusCode::INTERNAL_SERVER_ERROR, error);
                }
                if self.reject_status_write.swap(false, Ordering::SeqCst) {
                    let error = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "message": "Workspace.kubeflow.org \"ws\" is invalid", "reason": "Invalid", "code": 422});
                    return (StatusCode::UNPROCESSABLE_ENTITY, error);
                }
                if self.newer_probe_first.swap(false, Ordering::SeqCst) {
                    workspace["status"]["activity"]["lastProbe"] = json!({"startTime": NOW + 1000, "endTime": NOW + 1100, "result": "Success", "message": "newer"});
                    bump(&mut workspace);
                }
                let precondition = &body["metadata"]["resourceVersion"];
                if !precondition.is_null() && *precondition != workspace["metadata"]["resourceVersion"] {
                    return (StatusCode::CONFLICT, conflict);
                }
                merge(&mut workspace["status"], &body["status"]);
                bump(&mut workspace);
                (StatusCode::OK, workspace.clone())
            }
            ("PATCH", WORKSPACE_PATH) if body.is_array() => {
                let ops: json_patch::Patch = serde_json::from_value(body.clone()).unwrap();
                if let Err(e) = json_patch::patch(&mut workspace, &ops.0) {
                    let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                         "message": e.to_string(), "code": 422});
                    return (StatusCode::UNPROCESSABLE_ENTITY, invalid);
                }
                bump(&mut workspace);
                (StatusCode::OK, workspace.clone())
            }
            ("PATCH", WORKSPACE_PATH) => {
                let precondition = &body["metadata"]["resourceVersion"];
                let taken = self
                    .conflicts_to_return
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if taken {
                    // Someone else wrote the workspace in between.
                    bump(&mut workspace);
                }
                if taken || (!precondition.is_null() && *precondition != workspace["metadata"]["resourceVersion"]) {
                    return (StatusCode::CONFLICT, conflict);
                }
                assert_eq!(
                    body["metadata"]["uid"], workspace["metadata"]["uid"],
                    "every write names the uid"
                );
                let mut changes = body.clone();
                if let Some(meta) = changes.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    meta.remove("uid");
                    meta.remove("resourceVersion");
                }
                merge(&mut workspace, &changes);
                bump(&mut workspace);
                (StatusCode::OK, workspace.clone())
            }
            _ => panic!("unexpected request {method} {path}"),
        }
    }

    fn sent(&self) -> Vec<Sent> {
        lock(&self.sent).clone()
    }

    /// The sent requests as `METHOD path` lines, events shown by reason.
    fn summary(&self) -> Vec<String> {
        self.sent()
            .iter()
            .map(|s| {
                if s.path.starts_with("/apis/events.k8s.io/") {
                    format!("event {}", s.body["reason"].as_str().unwrap_or_default())
                } else if s.path == POLICY_PATH {
                    format!("{} policy", s.method)
                } else {
                    format!("{} {}", s.method, s.path.trim_start_matches(WORKSPACE_PATH))
                }
            })
            .collect()
    }
}

async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, api: Arc<FakeApi>) {
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let metadata_only = request
            .headers()
            .get(http::header::ACCEPT)
            .is_some_and(|a| a == METADATA_ONLY);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let (status, mut reply) = api.respond(&method, &path, &body);
        // As the apiserver does: an object asked for as its metadata only is answered so.
        if metadata_only && status.is_success() {
            reply =
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": reply["metadata"]});
        }
        lock(&api.sent).push(Sent {
            method,
            path,
            body,
            metadata_only,
        });
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap();
        send.send_response(response);
    }
}

/// Probes end 100 ms after they start, with the outcome given (or never, if told to hang).
struct Scripted {
    outcome: ProbeOutcome,
    calls: AtomicUsize,
    hang: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Prober for Scripted {
    async fn probe(&self, _: &Context, _: &Workspace, _: &WorkspaceKind, _: &ActivityProbe, start_ms: i64) -> Probed {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Probed::Ran(ProbeRun {
            start_ms,
            end_ms: start_ms + 100,
            outcome: self.outcome.clone(),
        })
    }
}

fn store<K>(dyntype: K::DynamicType, objects: Vec<K>) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut writer = reflector::store::Writer::new(dyntype);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    writer.as_reader()
}

fn policy(dry_run: bool) -> CullingPolicy {
    policy_with_rule(dry_run, json!({"secondsSinceActive": 3600}))
}

fn policy_with_rule(dry_run: bool, config: Value) -> CullingPolicy {
    serde_json::from_value(json!({
        "apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy",
        "metadata": {"name": "notebooks", "uid": "policy-uid", "generation": 1},
        "spec": {"workspaceKinds": ["jupyterlab"], "dryRun": dry_run,
                 "activityProbe": {"minProbeIntervalSeconds": 60, "probeIntervalSeconds": 600,
                                   "jupyter": {"lastActivity": true, "portId": "jupyterlab"}},
                 "activityRules": [{"config": config, "effect": {"pauseWorkspace": true}}]},
    }))
    .unwrap()
}

fn kind(kubeflow_probes_it: bool) -> DynamicObject {
    let mut kind = json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "WorkspaceKind",
        "metadata": {"name": "jupyterlab", "generation": 1},
        "spec": {"podTemplate": {"ports": [{"id": "jupyterlab"}]}},
    });
    if kubeflow_probes_it {
        kind["spec"]["podTemplate"]["activityProbe"] =
            json!({"jupyter": {"lastActivity": true, "portId": "jupyterlab"}});
    }
    serde_json::from_value(kind).unwrap()
}

/// A Running workspace that started 3 h ago, with `activity` as its `status.activity`.
fn workspace(activity: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace",
        "metadata": {"name": "ws", "namespace": "team", "uid": "uid-1", "resourceVersion": "1",
                     "annotations": annotations},
        "spec": {"kind": "jupyterlab", "paused": false,
                 "podTemplate": {"options": {"imageConfig": "jupyter-scipy:v1.10.0", "podConfig": "tiny_cpu"}}},
        "status": {"state": "Running", "lastRunningTime": NOW - 3 * HOUR, "activity": activity},
    })
}

/// A success `minutes_ago`, with the last activity `idle_hours` before now.
fn probed(minutes_ago: i64, idle_ms: i64) -> Value {
    let start = NOW - minutes_ago * MINUTE;
    json!({"lastActivity": NOW - idle_ms, "lastUpdate": start + 100,
           "lastProbe": {"startTime": start, "endTime": start + 100, "result": "Success", "message": "ok"}})
}

struct Case {
    api: Arc<FakeApi>,
    prober: Arc<Scripted>,
    ctx: Arc<Context>,
    /// Tells the controller it stops.
    stop: tokio::sync::watch::Sender<bool>,
    /// The workspaces the controller asked to reconcile again.
    retriggered: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<CachedWorkspace>>,
    /// The workspaces' cache, as their watch would fill it (empty unless a test fills it).
    watched: Mutex<reflector::store::Writer<CachedWorkspace>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Case {
    /// The usual workspace: Running for 3 h, last active 2 h ago, probed 30 min ago.
    fn idle(policy: CullingPolicy, outcome: ProbeOutcome) -> Case {
        Case::new(workspace(probed(30, 2 * HOUR), json!({})), policy, false, outcome)
    }

    fn new(workspace: Value, policy: CullingPolicy, kubeflow_probes_it: bool, outcome: ProbeOutcome) -> Case {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let api = Arc::new(FakeApi {
            workspace: Mutex::new(workspace),
            policy: Mutex::new(serde_json::to_value(&policy).unwrap()),
            ..FakeApi::default()
        });
        let server = tokio::spawn(serve(handle, api.clone()));
        let prober = Arc::new(Scripted {
            outcome,
            calls: AtomicUsize::new(0),
            hang: Default::default(),
        });
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (retrigger, retriggered) = tokio::sync::mpsc::unbounded_channel();
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
        let watched = reflector::store::Writer::default();
        let ctx = Arc::new(Context {
            client: client.clone(),
            prober: prober.clone(),
            workspaces: watched.as_reader(),
            settings: Settings {
                dry_run: false,
                http_mode: HttpMode::Direct,
                connect_path: DEFAULT_CONNECT_PATH.into(),
                namespaces: Vec::new(),
                concurrency: 1,
                module_dir: "/probes".into(),
                own_namespace: "culler-system".into(),
                culling_soon_seconds: 0,
                registry: Arc::new(crate::oci::Registry::new(crate::oci::Settings::default()).unwrap()),
            },
            kinds: store(kind_resource(), vec![kind(kubeflow_probes_it)]),
            policies: store((), vec![policy]),
            namespaces: store((), vec![namespace]),
            pods: super::pods::WorkspacePods::new(store((), Vec::new()), Default::default()),
            statefulsets: store((), Vec::new()),
            secrets: store((), Vec::new()),
            recorder: Recorder::new(client, reporter()),
            metrics: Metrics::new().unwrap(),
            clock,
            due: Default::default(),
            written: Default::default(),
            unwritten: Default::default(),
            warned: Default::default(),
            would_cull: Default::default(),
            keep_alive_reported: Default::default(),
            culled_recorded: Default::default(),
            pauses: Default::default(),
            fence: leader::Fence::always(),
            stopping,
            retrigger,
            deferred: Default::default(),
            management: Default::default(),
        });
        Case {
            api,
            prober,
            ctx,
            stop,
            retriggered,
            watched: Mutex::new(watched),
            _server: server,
        }
    }

    async fn reconcile(&self) -> Action {
        self.try_reconcile().await.unwrap()
    }

    async fn try_reconcile(&self) -> Result<Action, Error> {
        let workspace: Workspace = serde_json::from_value(lock(&self.api.workspace).clone()).unwrap();
        reconcile_workspace(workspace, self.ctx.clone()).await
    }

    fn stored(&self) -> Value {
        lock(&self.api.workspace).clone()
    }

    /// The workspace as the watch has it now.
    fn cached(&self) -> CachedWorkspace {
        CachedWorkspace::Read(Box::new(serde_json::from_value(self.stored()).unwrap()))
    }

    /// What the workspaces' watch reports, applied to the cache and then observed.
    fn watch_event(&self, event: watcher::Event<CachedWorkspace>) {
        lock(&self.watched).apply_watcher_event(&event);
        self.ctx.observe(&event);
    }

    fn probes(&self) -> usize {
        self.prober.calls.load(Ordering::SeqCst)
    }

    fn status_patch(&self) -> Value {
        let sent = self.api.sent();
        let patch = sent
            .iter()
            .find(|s| s.path.ends_with("/status"))
            .expect("a status patch");
        patch.body["status"]["activity"].clone()
    }
}

fn after_seconds(seconds: u64) -> Action {
    Action::requeue(Duration::from_secs(seconds))
}

#[tokio::test]
async fn a_workspace_not_due_is_requeued_for_when_it_is_without_a_probe_or_a_write() {
    let case = Case::new(
        workspace(probed(1, MINUTE), json!({})),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    // Probed a minute ago: next at start + probeIntervalSeconds (600 s), 540 s from now.
    assert_eq!(case.reconcile().await, after_seconds(540));
    assert_eq!(case.probes(), 0);
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
}

#[tokio::test]
async fn after_a_resume_eligible_after_is_written_anew_and_the_warning_comes_before_the_pause() {
    // Paused after a probe 5 min ago (eligibleAfter then: 10 min ago), resumed a minute ago:
    // a full window from the resume, NOW + 59 min, not the one from before the pause.
    let mut activity = probed(5, 70 * MINUTE);
    activity["rules"] = json!({"pauseWorkspace": {"eligibleAfter": NOW - 10 * MINUTE}});
    let mut resumed = workspace(activity, json!({}));
    resumed["status"]["lastRunningTime"] = json!(NOW - MINUTE);
    let mut case = Case::new(
        resumed,
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    Arc::get_mut(&mut case.ctx).unwrap().settings.culling_soon_seconds = 3600;
    // Not due (probed 5 min ago, every 10 min): the stored value is brought up to date, and
    // the warning, read from it, goes out now instead of never.
    assert_eq!(case.reconcile().await, after_seconds(300));
    assert_eq!(case.probes(), 0);
    assert_eq!(case.api.summary(), ["PATCH /status", "event CullingSoon"]);
    let stored = case.stored();
    assert_eq!(
        stored["status"]["activity"]["rules"]["pauseWorkspace"]["eligibleAfter"],
        NOW + 59 * MINUTE
    );
    assert_eq!(stored["status"]["activity"]["lastProbe"]["startTime"], NOW - 5 * MINUTE);
    // Up to date now: nothing more is written.
    case.reconcile().await;
    assert_eq!(case.api.summary().len(), 2, "{:?}", case.api.summary());
}

/// Probed 5 min ago (every 10 min), eligible in 20 min, warned 60 min ahead.
fn warned_ahead() -> Case {
    let mut activity = probed(5, 40 * MINUTE);
    activity["rules"] = json!({"pauseWorkspace": {"eligibleAfter": NOW + 20 * MINUTE}});
    let mut case = Case::new(
        workspace(activity, json!({})),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    Arc::get_mut(&mut case.ctx).unwrap().settings.culling_soon_seconds = 3600;
    case
}

#[tokio::test]
async fn a_warning_that_could_not_be_recorded_is_tried_again_not_marked_as_given() {
    // The warning is tried again in a minute, before the next probe in 5.
    let case = warned_ahead();
    case.api.events_to_refuse.store(1, Ordering::SeqCst);
    assert_eq!(case.reconcile().await, after_seconds(60), "tried again soon");
    assert_eq!(case.api.summary(), ["event CullingSoon"]);
    assert_eq!(case.reconcile().await, after_seconds(300), "then the next probe");
    assert_eq!(case.api.summary(), ["event CullingSoon", "event CullingSoon"]);
    case.reconcile().await;
    assert_eq!(case.api.summary().len(), 2, "once recorded, given once");
}

#[tokio::test]
async fn a_warning_given_before_a_restart_is_not_given_again() {
    let mut case = warned_ahead();
    assert_eq!(case.reconcile().await, after_seconds(300));
    // The next process remembers nothing (its Event recorder included: a recorder that
    // remembers would add to the first Event), but finds the warning under its name.
    let ctx = Arc::get_mut(&mut case.ctx).unwrap();
    ctx.warned.get_mut().unwrap().clear();
    ctx.recorder = Recorder::new(ctx.client.clone(), reporter());
    assert_eq!(case.reconcile().await, after_seconds(300), "not tried again");
    assert_eq!(lock(&case.api.events).len(), 1, "warned once");
    assert_eq!(case.api.summary(), ["event CullingSoon", "event CullingSoon"]);
    let event = lock(&case.api.events)[0].clone();
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("CullingSoon"))
    );
    // Another eligibleAfter (the workspace was used since) is warned of anew.
    {
        let mut workspace = lock(&case.api.workspace);
        let activity = &mut workspace["status"]["activity"];
        activity["lastActivity"] = (NOW - 30 * MINUTE).into();
        activity["rules"]["pauseWorkspace"]["eligibleAfter"] = (NOW + 30 * MINUTE).into();
    }
    case.reconcile().await;
    assert_eq!(lock(&case.api.events).len(), 2);
}

#[tokio::test]
async fn a_replica_that_no_longer_leads_gives_no_warning_and_tries_again_soon() {
    let mut case = warned_ahead();
    Arc::get_mut(&mut case.ctx).unwrap().fence = leader::Fence::closed();
    assert_eq!(case.reconcile().await, after_seconds(60));
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
    assert!(lock(&case.ctx.warned).is_empty());
}

#[tokio::test]
async fn a_deleted_workspace_is_forgotten_and_leaves_the_due_queue() {
    // Not due, warned: the workspace is kept in the due queue and in what was warned.
    let case = warned_ahead();
    let kept = |case: &Case| {
        let key = ("team".to_owned(), "ws".to_owned());
        (
            case.ctx.metrics.due_queue.get(),
            lock(&case.ctx.due).contains(&key),
            lock(&case.ctx.warned).contains_key(&key),
        )
    };
    let reconciled = |case: &Case| super::reconcile(Arc::new(case.cached()), case.ctx.clone());
    case.watch_event(watcher::Event::Apply(case.cached()));
    reconciled(&case).await.unwrap();
    assert_eq!(kept(&case), (1, true, true));

    // Its deletion, as the watch reports it.
    case.watch_event(watcher::Event::Delete(case.cached()));
    assert_eq!(kept(&case), (0, false, false));

    // A reconcile in flight when it went (its deletion observed before the reconcile ended).
    reconciled(&case).await.unwrap();
    assert_eq!(kept(&case), (0, false, false), "forgotten as its reconcile ends");

    // The same, and re-created under its name before the reconcile ended.
    case.watch_event(watcher::Event::Apply(case.cached()));
    case.watch_event(watcher::Event::Delete(case.cached()));
    let mut namesake = case.cached();
    if let CachedWorkspace::Read(workspace) = &mut namesake {
        workspace.metadata.uid = Some("uid-2".into());
    }
    case.watch_event(watcher::Event::Apply(namesake.clone()));
    reconciled(&case).await.unwrap();
    assert_eq!(kept(&case), (0, false, false), "the namesake starts anew");
    case.watch_event(watcher::Event::Delete(namesake));

    // Kept, then deleted while the watch was away: the list that follows does not show it.
    case.watch_event(watcher::Event::Apply(case.cached()));
    reconciled(&case).await.unwrap();
    assert_eq!(kept(&case), (1, true, true));
    case.watch_event(watcher::Event::Init);
    case.watch_event(watcher::Event::InitApply(case.cached()));
    case.watch_event(watcher::Event::InitDone);
    assert_eq!(kept(&case), (1, true, true), "still there: kept");
    case.watch_event(watcher::Event::Init);
    case.watch_event(watcher::Event::InitDone);
    assert_eq!(kept(&case), (0, false, false));
}

/// The `Culled` Event the workspace's annotation says it owes, if it does, and its name.
fn owed(workspace: &Value) -> Option<(String, OwedEvent)> {
    let value = workspace["metadata"]["annotations"][CULLED_EVENT_ANNOTATION].as_str()?;
    let parsed: Workspace = serde_json::from_value(workspace.clone()).unwrap();
    Some((
        OwedEvent::event_name(&parsed, value),
        serde_json::from_str(value).unwrap(),
    ))
}

#[tokio::test]
async fn a_culled_event_that_could_not_be_recorded_is_recorded_by_the_next_reconcile() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    case.api.events_to_refuse.store(1, Ordering::SeqCst);
    case.reconcile().await;
    let paused = case.stored();
    assert_eq!(paused["spec"]["paused"], true);
    let (name, owes) = owed(&paused).expect("the pause's own write says it owes its Event");
    assert_eq!(
        owes,
        OwedEvent {
            at: NOW,
            policy: "policy-uid".into(),
            note: "Paused: idle for 7200s, past eligibleAfter (CullingPolicy notebooks)".into()
        }
    );
    assert_eq!(
        case.ctx.metrics.culls.with_label_values(&["false"]).get(),
        0,
        "counted with its Event"
    );
    // The pause's own change brings the workspace back: its Event goes out then, and the
    // annotation goes.
    assert_eq!(case.reconcile().await, Action::await_change());
    assert_eq!(
        case.api.summary(),
        [
            "PATCH /status",
            "GET ",
            "GET policy",
            "PATCH ",
            "event Culled",
            "event Culled",
            "PATCH "
        ]
    );
    let events = lock(&case.api.events).clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["metadata"]["name"], name.as_str());
    assert_eq!(events[0]["note"], owes.note.as_str());
    assert_eq!(events[0]["regarding"]["uid"], "uid-1");
    assert_eq!(
        events[0]["eventTime"], "2026-05-28T20:26:40.000000Z",
        "when it was paused"
    );
    assert_eq!(owed(&case.stored()), None);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["false"]).get(), 1);
    assert_eq!(lock(&case.ctx.pauses).get("policy-uid"), Some(&1));
    // The watch may still show the annotation: nothing more is sent.
    let sent = case.api.sent().len();
    let stale: Workspace = serde_json::from_value(paused).unwrap();
    assert!(case.ctx.settle_culled_event(&stale).await);
    assert_eq!(case.api.sent().len(), sent);
}

/// A paused workspace that owes the `Culled` Event `owes`, as a controller that stopped right
/// after the pause left it.
fn paused_owing(owes: &Value) -> Value {
    let mut paused = workspace(probed(1, 2 * HOUR), json!({CULLED_EVENT_ANNOTATION: owes.to_string()}));
    paused["spec"]["paused"] = true.into();
    paused
}

#[tokio::test]
async fn a_pause_whose_controller_stopped_before_its_event_gets_it_from_the_next_controller() {
    let owes = json!({"at": NOW - MINUTE, "policy": "policy-uid", "note": "Paused: idle for 7200s"});
    let paused = paused_owing(&owes);
    let case = Case::new(
        paused.clone(),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    let (name, _) = owed(&paused).unwrap();
    let counted = || {
        (
            case.ctx.metrics.culls.with_label_values(&["false"]).get(),
            lock(&case.ctx.pauses).get("policy-uid").copied(),
        )
    };

    // The Event cannot be recorded yet: the annotation stays, and it is tried again soon.
    case.api.events_to_refuse.store(1, Ordering::SeqCst);
    assert_eq!(case.reconcile().await, Action::requeue(CULLED_EVENT_RETRY));
    assert_eq!(case.api.summary(), ["event Culled"]);
    assert!(owed(&case.stored()).is_some());
    assert_eq!(case.probes(), 0, "a paused workspace is not probed");
    assert_eq!(counted(), (0, None));

    // Recorded and counted, then the annotation is removed (if it is still the same).
    assert_eq!(case.reconcile().await, Action::await_change());
    assert_eq!(case.api.summary(), ["event Culled", "event Culled", "PATCH "]);
    let events = lock(&case.api.events).clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["metadata"]["name"], name.as_str());
    assert_eq!(events[0]["reason"], "Culled");
    assert_eq!(events[0]["note"], "Paused: idle for 7200s");
    assert_eq!(counted(), (1, Some(1)));
    let removal = case.api.sent()[2].body.clone();
    assert_eq!(removal[1]["op"], "test", "{removal}");
    assert_eq!(removal[1]["value"], owes.to_string());
    assert_eq!(owed(&case.stored()), None);
    assert_eq!(case.stored()["spec"]["paused"], true);

    // One that stopped after recording the Event, before removing the annotation: the Event
    // is neither recorded nor counted twice.
    *lock(&case.api.workspace) = paused.clone();
    case.ctx.forget_deleted(&("team".into(), "ws".into()));
    assert_eq!(case.reconcile().await, Action::await_change());
    assert_eq!(lock(&case.api.events).len(), 1, "recorded once");
    assert_eq!(counted(), (1, Some(1)));
    assert_eq!(owed(&case.stored()), None);

    // Another pause's (a later time) is another Event.
    let later = json!({"at": NOW, "policy": "policy-uid", "note": "Paused: idle for 7200s"});
    *lock(&case.api.workspace) = paused_owing(&later);
    assert_eq!(case.reconcile().await, Action::await_change());
    assert_eq!(lock(&case.api.events).len(), 2);
    assert_eq!(counted(), (2, Some(2)));

    // An annotation edited into something unreadable still owes one Event, recorded once
    // and counted in no policy; a note too long for an Event is cut.
    let long = json!({"at": NOW, "policy": "policy-uid", "note": "é".repeat(1000)});
    for edited in [json!("not JSON"), json!("not JSON"), long] {
        let mut workspace = paused_owing(&json!(null));
        workspace["metadata"]["annotations"][CULLED_EVENT_ANNOTATION] =
            edited.as_str().map_or_else(|| edited.to_string(), String::from).into();
        *lock(&case.api.workspace) = workspace;
        case.ctx.forget_deleted(&("team".into(), "ws".into()));
        assert_eq!(case.reconcile().await, Action::await_change());
        assert_eq!(owed(&case.stored()), None);
    }
    let events = lock(&case.api.events).clone();
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(events[2]["note"], "Paused");
    assert_eq!(events[3]["note"].as_str().unwrap().len(), 1024);
    assert_eq!(counted(), (4, Some(3)));

    // One the apiserver refuses as invalid is given up, not tried again and again.
    *lock(&case.api.workspace) = paused_owing(&json!({"at": 1, "policy": "policy-uid", "note": "refused"}));
    case.api.reject_event.store(true, Ordering::SeqCst);
    assert_eq!(case.reconcile().await, Action::await_change());
    assert_eq!(owed(&case.stored()), None);
    assert_eq!(lock(&case.api.events).len(), 4);
    assert_eq!(counted(), (4, Some(3)));

    // A replica that does not lead records and removes nothing.
    let mut case = Case::new(paused, policy(false), false, ProbeOutcome::Success(ProbeActivity::Idle));
    Arc::get_mut(&mut case.ctx).unwrap().fence = leader::Fence::closed();
    assert_eq!(case.reconcile().await, Action::requeue(CULLED_EVENT_RETRY));
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
}

#[tokio::test]
async fn a_pause_records_the_event_the_last_pause_still_owes_before_it_takes_its_place() {
    // Paused an hour ago, its Event refused since; resumed, and idle past eligibleAfter again.
    let earlier = json!({"at": NOW - HOUR, "policy": "policy-uid", "note": "Paused: the first time"});
    let case = Case::new(
        workspace(
            probed(30, 2 * HOUR),
            json!({CULLED_EVENT_ANNOTATION: earlier.to_string()}),
        ),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.api.events_to_refuse.store(1, Ordering::SeqCst);
    case.reconcile().await;
    assert_eq!(case.stored()["spec"]["paused"], true);
    let notes: Vec<Value> = lock(&case.api.events).iter().map(|e| e["note"].clone()).collect();
    assert_eq!(
        notes,
        [
            json!("Paused: the first time"),
            json!("Paused: idle for 7200s, past eligibleAfter (CullingPolicy notebooks)")
        ],
        "{:?}",
        case.api.summary()
    );
    assert_eq!(owed(&case.stored()), None);
    assert_eq!(lock(&case.ctx.pauses).get("policy-uid"), Some(&2));
}

#[tokio::test]
async fn a_culled_event_is_named_validly_whatever_the_workspace_is_named() {
    for name in [
        "ws",
        &format!("{}-x", "a".repeat(199)),
        &format!("{}.x", "b".repeat(199)),
        &"c".repeat(253),
    ] {
        let mut ws = workspace(probed(1, 2 * HOUR), json!({}));
        ws["metadata"]["name"] = name.into();
        let parsed: Workspace = serde_json::from_value(ws).unwrap();
        let event = OwedEvent::event_name(&parsed, "{}");
        assert!(event.len() <= 253, "{event}");
        assert!(!event.contains("-.") && !event.contains(".."), "{event}");
    }
    // From the uid and the annotation: another workspace or another pause, another name.
    let ws: Workspace = serde_json::from_value(workspace(probed(1, 2 * HOUR), json!({}))).unwrap();
    let mut namesake = ws.clone();
    namesake.metadata.uid = Some("uid-2".into());
    let names = [
        OwedEvent::event_name(&ws, "a"),
        OwedEvent::event_name(&ws, "b"),
        OwedEvent::event_name(&namesake, "a"),
    ];
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), 3, "{names:?}");
    assert_eq!(names[0], OwedEvent::event_name(&ws, "a"));
}

#[tokio::test]
async fn a_would_cull_event_that_could_not_be_recorded_is_reported_by_the_next_probe() {
    let case = Case::idle(policy(true), ProbeOutcome::Success(ProbeActivity::Idle));
    case.api.events_to_refuse.store(1, Ordering::SeqCst);
    case.reconcile().await;
    assert_eq!(lock(&case.ctx.would_cull).get(&("team".into(), "ws".into())), None);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["true"]).get(), 0);
    lock(&case.api.workspace)["status"]["activity"] = probed(30, 2 * HOUR);
    lock(&case.ctx.written).clear();
    case.reconcile().await;
    assert_eq!(case.api.summary().iter().filter(|s| *s == "event WouldCull").count(), 2);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["true"]).get(), 1);
}

#[tokio::test]
async fn a_would_cull_reported_before_a_restart_is_neither_reported_nor_counted_again() {
    let mut case = Case::idle(policy(true), ProbeOutcome::Success(ProbeActivity::Idle));
    case.reconcile().await;
    assert_eq!(lock(&case.api.events).len(), 1);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["true"]).get(), 1);
    // The next process remembers nothing (its Event recorder included), and probes again.
    let ctx = Arc::get_mut(&mut case.ctx).unwrap();
    ctx.would_cull.get_mut().unwrap().clear();
    ctx.written.get_mut().unwrap().clear();
    ctx.recorder = Recorder::new(ctx.client.clone(), reporter());
    lock(&case.api.workspace)["status"]["activity"] = probed(30, 2 * HOUR);
    case.reconcile().await;
    assert_eq!(
        case.api.summary().iter().filter(|s| *s == "event WouldCull").count(),
        2,
        "asked again"
    );
    assert_eq!(lock(&case.api.events).len(), 1, "reported once");
    assert_eq!(
        case.ctx.metrics.culls.with_label_values(&["true"]).get(),
        1,
        "counted once"
    );
    let event = lock(&case.api.events)[0].clone();
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Normal"), &json!("WouldCull"))
    );
    // Another eligibleAfter (the workspace was used since) is reported anew.
    lock(&case.ctx.written).clear();
    lock(&case.api.workspace)["status"]["activity"] = probed(20, 3 * HOUR);
    case.reconcile().await;
    assert_eq!(lock(&case.api.events).len(), 2);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["true"]).get(), 2);
}

#[tokio::test]
async fn a_would_cull_the_apiserver_refuses_as_invalid_is_neither_counted_nor_asked_again() {
    let case = Case::idle(policy(true), ProbeOutcome::Success(ProbeActivity::Idle));
    case.api.reject_event.store(true, Ordering::SeqCst);
    case.reconcile().await;
    assert_eq!(
        case.ctx.metrics.culls.with_label_values(&["true"]).get(),
        0,
        "counted with its Event"
    );
    lock(&case.api.workspace)["status"]["activity"] = probed(30, 2 * HOUR);
    lock(&case.ctx.written).clear();
    case.reconcile().await;
    assert_eq!(
        case.api.summary().iter().filter(|s| *s == "event WouldCull").count(),
        1,
        "not asked again"
    );
    assert!(lock(&case.api.events).is_empty());
}

#[tokio::test]
async fn a_failed_probe_is_recorded_and_evented_and_retried_after_the_minimum_interval() {
    let case = Case::idle(
        policy(false),
        ProbeOutcome::Failure("Jupyter probe failed: HTTP 500".into()),
    );
    assert_eq!(case.reconcile().await, after_seconds(60));
    assert_eq!(case.probes(), 1);
    assert_eq!(case.api.summary(), ["PATCH /status", "event ProbeFailing"]);
    let activity = case.status_patch();
    assert_eq!(activity["lastProbe"]["result"], "Failure");
    assert_eq!(activity["lastProbe"]["message"], "Jupyter probe failed: HTTP 500");
    assert_eq!(
        activity["lastActivity"],
        NOW - 2 * HOUR,
        "a failure never moves lastActivity"
    );
    assert_eq!(case.stored()["spec"]["paused"], false, "a failure never pauses");
}

#[tokio::test]
async fn an_active_workspace_is_recorded_at_the_probes_end_and_not_paused() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::ActiveNow));
    assert_eq!(case.reconcile().await, after_seconds(600));
    assert_eq!(case.api.summary(), ["PATCH /status"]);
    assert!(
        case.api.sent()[0].metadata_only,
        "the status write asks for no more than the metadata back"
    );
    let activity = case.status_patch();
    assert_eq!(activity["lastActivity"], NOW + 100, "the probe's end");
    assert_eq!(activity["rules"]["pauseWorkspace"]["eligibleAfter"], NOW + 100 + HOUR);
}

#[tokio::test]
async fn an_idle_workspace_past_eligible_after_is_paused_once_after_a_fresh_read() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    case.reconcile().await;
    assert_eq!(case.api.summary(), PROBED_AND_PAUSED);
    let pause = &case.api.sent()[3].body;
    assert_eq!(pause["spec"], json!({"paused": true}), "only spec.paused is sent");
    assert_eq!(
        pause["metadata"]["resourceVersion"], "2",
        "preconditioned on the fresh read"
    );
    // With the Event it owes, which is recorded, and then the annotation is removed (if it
    // is still the same).
    let value = pause["metadata"]["annotations"][CULLED_EVENT_ANNOTATION]
        .as_str()
        .expect("the Event the pause owes");
    let owes: OwedEvent = serde_json::from_str(value).unwrap();
    let stored: Workspace = serde_json::from_value(case.stored()).unwrap();
    let events = lock(&case.api.events).clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["metadata"]["name"], OwedEvent::event_name(&stored, value));
    assert_eq!(events[0]["note"], owes.note.as_str());
    let pointer = "/metadata/annotations/workspace-culler.io~1culled-event";
    assert_eq!(
        case.api.sent()[5].body,
        json!([{"op": "test", "path": "/metadata/uid", "value": "uid-1"},
               {"op": "test", "path": pointer, "value": value},
               {"op": "remove", "path": pointer}])
    );
    assert_eq!(owed(&case.stored()), None);
    assert_eq!(case.stored()["spec"]["paused"], true);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["false"]).get(), 1);
    assert_eq!(lock(&case.ctx.pauses).get("policy-uid"), Some(&1));
}

#[tokio::test]
async fn what_changed_since_the_probe_is_checked_on_the_fresh_read_before_a_pause() {
    // Each edit lands between the probe's status write and the pause's fresh read; each
    // means the probe's verdict no longer holds, and nothing is paused.
    let edits = [
        (
            "re-created under the same name",
            json!({"metadata": {"uid": "another"}}),
        ),
        ("no longer Running", json!({"status": {"state": "Terminating"}})),
        (
            "a newer probe recorded",
            json!({"status": {"activity": {"lastProbe": {"startTime": NOW + 500, "endTime": NOW + 600,
                                                           "result": "Success"}}}}),
        ),
        (
            "activity recorded since (Kubeflow's own probe, say)",
            json!({"status": {"activity": {"lastActivity": NOW + 150}}}),
        ),
        (
            "opted out meanwhile",
            json!({"metadata": {"annotations": {"workspace-culler.io/disable-culling": "true"}}}),
        ),
        ("paused by someone else", json!({"spec": {"paused": true}})),
        ("moved to another kind", json!({"spec": {"kind": "other"}})),
    ];
    for (what, edit) in edits {
        let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
        *lock(&case.api.edit_before_read) = Some(edit);
        case.reconcile().await;
        let summary = case.api.summary();
        assert!(
            !summary.iter().any(|s| s == "PATCH " || s == "event Culled"),
            "{what}: {summary:?}"
        );
        assert_eq!(case.ctx.metrics.culls.with_label_values(&["false"]).get(), 0, "{what}");
    }
    // Without an edit, the same case pauses (the edits above are what stopped it).
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    case.reconcile().await;
    assert_eq!(case.stored()["spec"]["paused"], true);
}

#[tokio::test]
async fn a_probe_in_flight_ends_when_the_controller_stops_and_nothing_is_written() {
    // A probe that would take its whole minute (an exec's timeout): the controller stops
    // (SIGTERM in a rolling update) and its reconcile ends at once, so the lease is released
    // within the kubelet's grace period.
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    case.prober.hang.store(true, Ordering::SeqCst);
    let reconcile = case.reconcile();
    tokio::pin!(reconcile);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut reconcile)
            .await
            .is_err(),
        "the probe is in flight"
    );
    case.stop.send(true).unwrap();
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile)
        .await
        .expect("the reconcile ended when the controller stopped");
    assert_eq!(action, Action::await_change());
    assert_eq!(case.probes(), 1);
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
}

#[tokio::test]
async fn a_conflicting_write_is_retried_from_a_fresh_read_and_applied_once() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    case.api.conflicts_to_return.store(1, Ordering::SeqCst);
    case.reconcile().await;
    assert_eq!(
        case.api.summary(),
        [
            "PATCH /status",
            "GET ",
            "GET policy",
            "PATCH ",
            "GET ",
            "GET policy",
            "PATCH ",
            "event Culled",
            "PATCH "
        ]
    );
    assert_eq!(case.ctx.metrics.conflicts.get(), 1);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["false"]).get(), 1);
    assert_eq!(case.stored()["spec"]["paused"], true);
}

#[tokio::test]
async fn an_opted_out_workspace_is_probed_but_never_paused() {
    let case = Case::new(
        workspace(
            probed(30, 2 * HOUR),
            json!({workspace_culler_policy::DISABLE_CULLING_ANNOTATION: "true"}),
        ),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.reconcile().await;
    assert_eq!(case.api.summary(), ["PATCH /status"]);
    assert_eq!(case.stored()["spec"]["paused"], false);
}

#[tokio::test]
async fn a_dry_run_policy_reports_would_cull_and_pauses_nothing() {
    let case = Case::idle(policy(true), ProbeOutcome::Success(ProbeActivity::Idle));
    case.reconcile().await;
    assert_eq!(
        case.api.summary(),
        ["PATCH /status", "GET ", "GET policy", "event WouldCull"]
    );
    assert_eq!(case.stored()["spec"]["paused"], false);
    assert_eq!(case.ctx.metrics.culls.with_label_values(&["true"]).get(), 1);
}

#[tokio::test]
async fn a_kind_kubeflow_probes_itself_is_left_alone() {
    let case = Case::new(
        workspace(probed(30, 2 * HOUR), json!({})),
        policy(false),
        true,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    assert_eq!(case.reconcile().await, Action::await_change());
    assert_eq!(case.probes(), 0);
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
}

#[tokio::test]
async fn a_policy_edit_the_cache_does_not_show_yet_is_honoured_before_a_pause() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    // The apiserver already has the policy switched to a dry run.
    *lock(&case.api.policy) = serde_json::to_value(policy(true)).unwrap();
    case.reconcile().await;
    assert_eq!(
        case.api.summary(),
        ["PATCH /status", "GET ", "GET policy", "event WouldCull"]
    );
    assert_eq!(case.stored()["spec"]["paused"], false);
}

#[tokio::test]
async fn a_namespace_the_cache_does_not_show_yet_pauses_nothing_when_a_rule_reads_its_labels() {
    // Production namespaces are exempt; everything else pauses after an hour.
    let mut exempting = serde_json::to_value(policy(false)).unwrap();
    exempting["spec"]["activityRules"] = json!([
        {"config": {"secondsSinceActive": 3600},
         "match": {"matchNamespace": {"selector": {"matchLabels": {"tier": "production"}}}},
         "effect": {"pauseWorkspace": false}},
        {"config": {"secondsSinceActive": 3600}, "effect": {"pauseWorkspace": true}},
    ]);
    let exempting: CullingPolicy = serde_json::from_value(exempting).unwrap();
    let mut case = Case::idle(exempting.clone(), ProbeOutcome::Success(ProbeActivity::Idle));
    let known = std::mem::replace(
        &mut Arc::get_mut(&mut case.ctx).unwrap().namespaces,
        store((), Vec::new()),
    );
    assert_eq!(case.reconcile().await, after_seconds(5), "looked at again soon");
    assert_eq!(
        case.api.summary(),
        ["PATCH /status"],
        "labels unknown: no rule applies yet"
    );
    assert_eq!(case.status_patch()["rules"]["pauseWorkspace"]["eligibleAfter"], 0);
    // The namespace arrives: the next probe comes when the rule allows a pause (after the
    // minimum interval), not a whole interval (600 s) later.
    Arc::get_mut(&mut case.ctx).unwrap().namespaces = known;
    assert_eq!(case.reconcile().await, after_seconds(60));
    // Once the namespace is known (not production), the catch-all pauses it.
    let case = Case::idle(exempting, ProbeOutcome::Success(ProbeActivity::Idle));
    case.reconcile().await;
    assert_eq!(case.stored()["spec"]["paused"], true);
}

#[tokio::test]
async fn a_policy_edited_since_the_probe_pauses_nothing_on_that_probe_s_verdict() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    // The probe ran under generation 1; the apiserver already has generation 2, whose probe
    // (say, one that also sees terminals) might find the workspace in use.
    let mut edited = serde_json::to_value(policy(false)).unwrap();
    edited["metadata"]["generation"] = 2.into();
    edited["spec"]["activityProbe"]["jupyter"]["portId"] = "lab".into();
    *lock(&case.api.policy) = edited;
    case.reconcile().await;
    assert_eq!(case.api.summary(), ["PATCH /status", "GET ", "GET policy"]);
    assert_eq!(case.stored()["spec"]["paused"], false);
    // Re-created under the same name (a new uid) is another policy too.
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    lock(&case.api.policy)["metadata"]["uid"] = "re-created".into();
    case.reconcile().await;
    assert_eq!(case.stored()["spec"]["paused"], false);
}

#[tokio::test]
async fn an_older_probe_never_overwrites_a_newer_one() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    case.api.newer_probe_first.store(true, Ordering::SeqCst);
    case.reconcile().await;
    // The write, preconditioned on what was read, conflicts; the fresh read shows a newer probe.
    assert_eq!(case.api.summary(), ["PATCH /status", "GET "]);
    let stored = case.stored();
    assert_eq!(stored["status"]["activity"]["lastProbe"]["message"], "newer");
    assert_eq!(stored["spec"]["paused"], false, "never paused on the older probe");
}

#[tokio::test]
async fn a_failed_status_write_keeps_the_minimum_interval() {
    let case = Case::idle(
        policy(false),
        ProbeOutcome::Failure("Jupyter probe failed: HTTP 500".into()),
    );
    case.api.fail_status_write.store(true, Ordering::SeqCst);
    assert!(matches!(case.try_reconcile().await, Err(Error::Kube(_))));
    assert_eq!(case.probes(), 1);
    // Retried 5 s later (error_policy): not probed again before minProbeIntervalSeconds.
    assert_eq!(case.reconcile().await, after_seconds(60));
    assert_eq!(case.probes(), 1, "probed again before its interval");
}

#[tokio::test]
async fn a_result_that_could_not_be_written_is_written_by_the_retry_not_lost() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::ActiveNow));
    case.api.fail_status_write.store(true, Ordering::SeqCst);
    assert!(matches!(case.try_reconcile().await, Err(Error::Kube(_))));
    assert_eq!(case.stored()["status"]["activity"]["lastActivity"], NOW - 2 * HOUR);
    // error_policy's retry writes what the probe saw, without probing again.
    case.reconcile().await;
    assert_eq!(case.probes(), 1);
    let activity = &case.stored()["status"]["activity"];
    assert_eq!(activity["lastActivity"], NOW + 100, "the activity seen is kept");
    assert_eq!(activity["lastProbe"]["startTime"], NOW);
    assert_eq!(case.api.summary(), ["PATCH /status", "PATCH /status"]);
    // Written once: later reconciles send nothing more.
    case.reconcile().await;
    assert_eq!(case.api.summary().len(), 2, "{:?}", case.api.summary());
}

#[tokio::test]
async fn a_result_refused_as_invalid_is_not_sent_again_and_again() {
    let case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::ActiveNow));
    case.api.reject_status_write.store(true, Ordering::SeqCst);
    assert!(matches!(case.try_reconcile().await, Err(Error::Kube(_))));
    // The same write would be refused again: the retry sends nothing, and the workspace is
    // probed again at its next due time, as after any probe.
    assert_eq!(case.reconcile().await, after_seconds(600));
    assert_eq!(case.api.summary(), ["PATCH /status"]);
    assert_eq!(case.probes(), 1);
}

#[tokio::test]
async fn a_replica_that_no_longer_leads_writes_nothing() {
    let mut case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    let fence = leader::Fence::closed();
    Arc::get_mut(&mut case.ctx).unwrap().fence = fence;
    assert!(matches!(case.try_reconcile().await, Err(Error::NotLeading)));
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
    assert_eq!(case.stored()["spec"]["paused"], false);
}

#[tokio::test]
async fn a_result_observed_while_the_lease_lapsed_is_written_once_it_is_held_again() {
    let mut case = Case::new(
        workspace(probed(30, 2 * HOUR), json!({})),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::ActiveNow),
    );
    let fence = leader::Fence::closed();
    Arc::get_mut(&mut case.ctx).unwrap().fence = fence.clone();
    assert!(matches!(case.try_reconcile().await, Err(Error::NotLeading)));
    fence.extend(std::time::Instant::now() + Duration::from_secs(10));
    case.reconcile().await;
    assert_eq!(case.probes(), 1, "written, not probed for again");
    assert_eq!(case.api.summary(), ["PATCH /status"]);
    assert_eq!(
        case.stored()["status"]["activity"]["lastActivity"],
        NOW + 100,
        "the activity seen"
    );
}

fn keep_alive(value: &str) -> Value {
    json!({workspace_culler_policy::KEEP_ALIVE_ANNOTATION: value})
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_keep_alive_holds_an_idle_workspace_and_shows_in_eligible_after() {
    let until = NOW + HOUR;
    let case = Case::new(
        workspace(probed(30, 2 * HOUR), keep_alive(&rfc3339(until))),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.reconcile().await;
    assert_eq!(case.api.summary(), ["PATCH /status"], "no pause while kept alive");
    assert_eq!(case.status_patch()["rules"]["pauseWorkspace"]["eligibleAfter"], until);
}

#[tokio::test]
async fn eligible_after_is_written_anew_from_a_clamped_keep_alive_once_the_clamp_is_written() {
    // Not due; the keep-alive asks for 2099. Until the clamp is in the annotation, the cap is
    // counted from the clock, so it moves with every reconcile: nothing is written from it.
    let mut activity = probed(1, 2 * HOUR);
    activity["rules"] = json!({"pauseWorkspace": {"eligibleAfter": NOW - HOUR}});
    let case = Case::new(
        workspace(activity, keep_alive("2099-01-01T00:00:00Z")),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.reconcile().await;
    assert_eq!(case.api.summary(), ["PATCH ", "event KeepAliveClamped"]);
    // The clamped annotation holds still: eligibleAfter is written from it, once.
    case.reconcile().await;
    case.reconcile().await;
    assert_eq!(
        case.api.summary(),
        ["PATCH ", "event KeepAliveClamped", "PATCH /status"]
    );
    assert_eq!(
        case.stored()["status"]["activity"]["rules"]["pauseWorkspace"]["eligibleAfter"],
        NOW + 8 * HOUR
    );
    assert_eq!(case.probes(), 0);
}

#[tokio::test]
async fn a_keep_alive_beyond_the_cap_is_clamped_in_the_annotation_with_an_event() {
    let case = Case::new(
        workspace(probed(30, 2 * HOUR), keep_alive("2099-01-01T00:00:00Z")),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    let result = case.try_reconcile().await;
    assert!(result.is_ok(), "{result:?}\n{:#?}\n{}", case.api.sent(), case.stored());
    // The annotation write moved the resourceVersion: the status write conflicts once, re-reads.
    assert_eq!(
        case.api.summary(),
        [
            "PATCH ",
            "event KeepAliveClamped",
            "PATCH /status",
            "GET ",
            "PATCH /status"
        ]
    );
    let capped = rfc3339(NOW + 8 * HOUR);
    assert_eq!(
        case.stored()["metadata"]["annotations"][workspace_culler_policy::KEEP_ALIVE_ANNOTATION],
        capped.as_str()
    );
    assert_eq!(
        case.status_patch()["rules"]["pauseWorkspace"]["eligibleAfter"],
        NOW + 8 * HOUR
    );
    assert_eq!(case.stored()["spec"]["paused"], false);

    // The owner sets the same value again: clamped again, not kept running from every
    // reconcile's clock.
    {
        let mut stored = lock(&case.api.workspace);
        stored["metadata"]["annotations"] = keep_alive("2099-01-01T00:00:00Z");
        stored["metadata"]["resourceVersion"] = "100".into();
    }
    case.reconcile().await;
    assert_eq!(
        case.stored()["metadata"]["annotations"][workspace_culler_policy::KEEP_ALIVE_ANNOTATION],
        capped.as_str()
    );
}

#[tokio::test]
async fn a_malformed_keep_alive_is_ignored_with_a_warning() {
    let case = Case::new(
        workspace(probed(30, 2 * HOUR), keep_alive("tomorrow")),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.reconcile().await;
    assert_eq!(
        case.api.summary(),
        [&["event KeepAliveIgnored"][..], &PROBED_AND_PAUSED].concat()
    );
    assert_eq!(case.stored()["spec"]["paused"], true, "paused as if it had none");
}

#[tokio::test]
async fn a_malformed_keep_alive_reported_before_a_restart_is_not_reported_again() {
    let mut case = Case::new(
        workspace(probed(30, 30 * MINUTE), keep_alive("tomorrow")),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.reconcile().await;
    let reported = |case: &Case| {
        lock(&case.api.events)
            .iter()
            .filter(|e| e["reason"] == "KeepAliveIgnored")
            .count()
    };
    assert_eq!(reported(&case), 1);
    // The next process remembers nothing (its Event recorder included).
    let ctx = Arc::get_mut(&mut case.ctx).unwrap();
    ctx.keep_alive_reported.get_mut().unwrap().clear();
    ctx.recorder = Recorder::new(ctx.client.clone(), reporter());
    case.reconcile().await;
    assert_eq!(reported(&case), 1, "reported once");
    // Another malformed value is reported anew.
    lock(&case.api.workspace)["metadata"]["annotations"] = keep_alive("next week");
    case.reconcile().await;
    assert_eq!(reported(&case), 2);
}

#[tokio::test]
async fn a_long_malformed_keep_alive_is_warned_of_in_a_note_cut_to_what_an_event_may_hold() {
    let value = "é".repeat(2000);
    let case = Case::new(
        workspace(probed(30, 30 * MINUTE), keep_alive(&value)),
        policy(false),
        false,
        ProbeOutcome::Success(ProbeActivity::Idle),
    );
    case.reconcile().await;
    let events = lock(&case.api.events).clone();
    assert_eq!(events.len(), 1, "{:?}", case.api.summary());
    assert_eq!(events[0]["reason"], "KeepAliveIgnored");
    let note = events[0]["note"].as_str().unwrap();
    assert!((1023..=1024).contains(&note.len()), "{}", note.len());
}

#[tokio::test]
async fn an_active_workspace_past_its_maximum_lifetime_is_paused_saying_so() {
    // Running for 3 h, active a minute ago; the rule allows 2 h.
    let case = Case::new(
        workspace(probed(30, MINUTE), json!({})),
        policy_with_rule(false, json!({"secondsSinceActive": 3600, "maxRunningSeconds": 7200})),
        false,
        ProbeOutcome::Success(ProbeActivity::ActiveNow),
    );
    case.reconcile().await;
    assert_eq!(case.api.summary(), PROBED_AND_PAUSED);
    assert_eq!(
        case.status_patch()["rules"]["pauseWorkspace"]["eligibleAfter"],
        NOW - HOUR
    );
    let event = lock(&case.api.events)[0].clone();
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("running for 10800s, past its rule's maxRunningSeconds"),
        "{event}"
    );
}

#[tokio::test]
async fn a_workspace_re_created_under_the_same_name_starts_anew() {
    let case = Case::idle(policy(false), ProbeOutcome::Failure("down".into()));
    case.reconcile().await;
    assert_eq!(case.probes(), 1);
    // Deleted and created again: another uid, no activity yet.
    let mut again = workspace(json!({}), json!({}));
    again["metadata"]["uid"] = "uid-2".into();
    again["metadata"]["resourceVersion"] = "10".into();
    *lock(&case.api.workspace) = again;
    case.reconcile().await;
    assert_eq!(case.probes(), 2, "the old workspace's probe time held the new one back");
}

/// The Case's workspace `ws` with its pod (at 127.0.0.1) and StatefulSet in the caches, probed
/// through the Wasm engine, its modules pulled from `registry`.
fn with_engine(case: &mut Case, registry: crate::oci::Registry) {
    let ctx = Arc::get_mut(&mut case.ctx).unwrap();
    let engine = workspace_culler_engine::ProbeEngine::new(Default::default()).unwrap();
    ctx.prober = Arc::new(super::probe::EngineProber::new(Arc::new(engine), Default::default()));
    ctx.settings.registry = Arc::new(registry);
    let mut pod: super::pods::CachedPod = serde_json::from_value(json!({
        "metadata": {"name": "ws-0", "namespace": "team"},
        "spec": {"containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }))
    .unwrap();
    pod.workspace = Some("ws".into());
    pod.statefulset = Some("ws".into());
    let index = super::pods::PodIndex::default();
    index.observe(&watcher::Event::Apply(pod.clone()));
    ctx.pods = super::pods::WorkspacePods::new(store((), vec![pod]), index);
    let statefulset: super::pods::CachedStatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "ws", "namespace": "team", "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1",
            "kind": "Workspace", "name": "ws", "uid": "uid-1", "controller": true}]},
    }))
    .unwrap();
    ctx.statefulsets = store((), vec![statefulset]);
}

/// The usual idle workspace under a policy whose module is pulled from a registry that takes
/// connections and never answers (the listener returned): each pull runs until its deadline, 2 s.
async fn pulled_from_a_silent_registry() -> (Case, tokio::net::TcpListener) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = silent.local_addr().unwrap().to_string();
    let mut policy = policy(false);
    policy.spec.activity_probe = serde_json::from_value(json!({
        "minProbeIntervalSeconds": 60, "probeIntervalSeconds": 600,
        "module": {"location": format!("oci://{host}/probes/p@sha256:{}", "1".repeat(64))},
    }))
    .unwrap();
    let mut case = Case::idle(policy, ProbeOutcome::Success(ProbeActivity::Idle));
    let registry = crate::oci::Registry::new(crate::oci::Settings {
        insecure: vec![host.clone()],
        max_bytes: 1 << 20,
        ..Default::default()
    })
    .unwrap()
    .with_pull_deadline(Duration::from_secs(2));
    with_engine(&mut case, registry);
    (case, silent)
}

#[tokio::test]
async fn a_probe_waits_for_no_module_load_and_is_reconciled_again_once_the_load_has_landed() {
    let (mut case, silent) = pulled_from_a_silent_registry().await;

    // The reconcile does not wait for the pull: it writes nothing and looks again later.
    assert_eq!(case.reconcile().await, Action::requeue(Duration::from_secs(60)));
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());
    // Asked again while the pull runs, it is put off again: one pull, no write.
    assert_eq!(case.reconcile().await, Action::requeue(Duration::from_secs(60)));
    assert!(case.api.sent().is_empty(), "{:?}", case.api.summary());

    // Once the pull has failed (its deadline), the workspace is reconciled again, and its probe
    // records the failure.
    let again = tokio::time::timeout(Duration::from_secs(30), case.retriggered.recv())
        .await
        .expect("reconciled again once the pull ended")
        .unwrap();
    assert_eq!((again.name.as_str(), again.namespace.as_deref()), ("ws", Some("team")));
    // By one task, however often the probe was put off.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(case.retriggered.try_recv().is_err(), "one waiting task per workspace");
    case.reconcile().await;
    assert_eq!(case.api.summary(), ["PATCH /status", "event ProbeFailing"]);
    let probe = &case.status_patch()["lastProbe"];
    assert_eq!(probe["result"], "Failure");
    let message = probe["message"].as_str().unwrap();
    assert!(message.contains("did not serve it within 2 s"), "{message}");
    assert!(lock(&case.ctx.deferred).is_empty(), "no longer put off");
    drop(silent);
}

#[tokio::test]
async fn a_probe_put_off_for_another_module_is_reconciled_again_once_that_one_has_landed() {
    let mut case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    let workspace: Workspace = serde_json::from_value(case.stored()).unwrap();
    let load = || {
        let (land, landing) = tokio::sync::oneshot::channel::<()>();
        let landed: probe::Landing = Box::pin(async move {
            let _ = landing.await;
        });
        (land, landed)
    };
    /// Whether the workspace was sent to be reconciled again, the waiting tasks given time.
    async fn reconciled_again(case: &mut Case) -> bool {
        tokio::time::sleep(Duration::from_millis(50)).await;
        case.retriggered.try_recv().is_ok()
    }
    // Put off for a pull that hangs, then again for it: one task waits.
    let (hanging, landed) = load();
    case.ctx
        .put_off(&workspace, std::time::Instant::now(), "oci://a", landed);
    let (_, landed) = load();
    case.ctx
        .put_off(&workspace, std::time::Instant::now(), "oci://a", landed);
    // The policy now names another module, which loads and lands: the workspace is reconciled
    // again at once, not at the next recheck.
    let (other, landed) = load();
    case.ctx
        .put_off(&workspace, std::time::Instant::now(), "oci://b", landed);
    assert!(!reconciled_again(&mut case).await);
    let _ = other.send(());
    assert!(
        reconciled_again(&mut case).await,
        "reconciled once the other module landed"
    );
    let _ = hanging.send(());
    assert!(
        reconciled_again(&mut case).await,
        "and, harmlessly, once the first one did"
    );
    assert!(!reconciled_again(&mut case).await, "by one task for each");
}

/// Probes `case`'s workspace with an `oci://` module at `registry` (host:port) pulled with the
/// Secret `secret`, through the engine.
struct ProbeWith {
    ctx: Arc<Context>,
    workspace: Workspace,
    kind: WorkspaceKind,
    location: String,
}

impl ProbeWith {
    fn new(case: &Case, registry: &str) -> ProbeWith {
        ProbeWith {
            ctx: case.ctx.clone(),
            workspace: serde_json::from_value(case.stored()).unwrap(),
            kind: case.ctx.all_kinds().remove(0),
            location: format!("oci://{registry}/probes/p@sha256:{}", "1".repeat(64)),
        }
    }

    async fn probe(&self, secret: &str) -> Probed {
        let probe: ActivityProbe =
            serde_json::from_value(json!({"module": {"location": self.location, "pullSecretRef": {"name": secret}}}))
                .unwrap();
        (self
            .ctx
            .prober
            .probe(&self.ctx, &self.workspace, &self.kind, &probe, NOW))
        .await
    }

    /// The failure of a probe that ran, after waiting for the load it was put off for.
    async fn failure(&self, secret: &str) -> String {
        let mut probed = self.probe(secret).await;
        if let Probed::Deferred { landed, .. } = probed {
            landed.await;
            probed = self.probe(secret).await;
        }
        match probed {
            Probed::Ran(ProbeRun {
                outcome: ProbeOutcome::Failure(message),
                ..
            }) => message,
            Probed::Ran(run) => panic!("{:?}", run.outcome),
            Probed::Deferred { .. } => panic!("put off twice"),
        }
    }
}

/// A `kubernetes.io/dockerconfigjson` Secret of the controller's namespace, `name`, with
/// `user`'s credentials for `registry`.
fn pull_secret(name: &str, registry: &str, user: &str) -> k8s_openapi::api::core::v1::Secret {
    let config = json!({"auths": {registry: {"username": user, "password": "pw"}}}).to_string();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "culler-system"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
        "data": {".dockerconfigjson": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, config)},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_missing_pull_secret_fails_the_probe_at_once_and_the_next_probe_looks_for_it_again() {
    let mut case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    with_engine(&mut case, crate::oci::Registry::new(Default::default()).unwrap());
    let probes = ProbeWith::new(&case, "registry.example");
    for _ in 0..2 {
        let Probed::Ran(run) = probes.probe("absent").await else {
            panic!("nothing to wait for: the Secret is not there")
        };
        let ProbeOutcome::Failure(message) = run.outcome else {
            panic!("{:?}", run.outcome)
        };
        assert!(message.contains("culler-system/absent: not found"), "{message}");
    }
    // Created, it is used by the next probe: a pull starts, and the probe is put off for it.
    drop(probes);
    Arc::get_mut(&mut case.ctx).unwrap().secrets = store((), vec![pull_secret("absent", "registry.example", "u")]);
    let probes = ProbeWith::new(&case, "registry.example");
    assert!(matches!(probes.probe("absent").await, Probed::Deferred { .. }));
}

#[tokio::test]
async fn a_failed_pull_is_the_answer_for_a_while_but_only_for_its_own_pull_secret() {
    // A registry that refuses anyone but `right` (who finds nothing there).
    let (registry, _server) = crate::oci::fake::fake_registry(|_, path, request| {
        use crate::oci::fake::Answer;
        match path {
            "/v2/" => Answer::Whole("200 OK", String::new(), String::new()),
            // base64("right:pw"), as the fake sees the request: in lower case.
            _ if request.contains("\r\nauthorization: basic cmlnahq6chc=\r\n") => {
                Answer::Whole("404 Not Found", String::new(), String::new())
            }
            _ => Answer::Whole("401 Unauthorized", String::new(), String::new()),
        }
    })
    .await;
    let mut case = Case::idle(policy(false), ProbeOutcome::Success(ProbeActivity::Idle));
    let settings = crate::oci::Settings {
        insecure: vec![registry.clone()],
        max_bytes: 1 << 20,
        ..Default::default()
    };
    with_engine(&mut case, crate::oci::Registry::new(settings).unwrap());
    Arc::get_mut(&mut case.ctx).unwrap().secrets = store(
        (),
        vec![
            pull_secret("wrong", &registry, "wrong"),
            pull_secret("right", &registry, "right"),
        ],
    );
    let probes = ProbeWith::new(&case, &registry);
    let refused = probes.failure("wrong").await;
    assert!(
        refused.contains("the registry refused access (401 Unauthorized"),
        "{refused}"
    );
    // The failure is the answer for that Secret at once, for a while...
    let Probed::Ran(again) = probes.probe("wrong").await else {
        panic!("put off again")
    };
    assert_eq!(again.outcome, ProbeOutcome::Failure(refused));
    // ... and never for another Secret's pull of the same module.
    let missing = probes.failure("right").await;
    assert!(
        missing.contains("not found in the registry (404 Not Found"),
        "{missing}"
    );
}

#[tokio::test]
async fn a_workspace_re_created_under_the_same_name_is_put_off_afresh() {
    let (mut case, silent) = pulled_from_a_silent_registry().await;
    // What its namesake left: put off long ago, its waiting task stuck on a load (the same)
    // that never lands.
    let modules = format!(
        "oci://{}/probes/p@sha256:{}",
        silent.local_addr().unwrap(),
        "1".repeat(64)
    );
    let long_ago = std::time::Instant::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap();
    lock(&case.ctx.deferred).insert(
        ("team".into(), "ws".into()),
        Deferral {
            uid: Some("uid-0".into()),
            since: long_ago,
            waiter: Some((u64::MAX, modules.clone())),
        },
    );
    assert_eq!(case.reconcile().await, Action::requeue(Duration::from_secs(60)));
    // Its own task waits for its pull and reconciles it again when the pull has failed.
    tokio::time::timeout(Duration::from_secs(30), case.retriggered.recv())
        .await
        .expect("reconciled again once the pull ended");
    let deferral = lock(&case.ctx.deferred);
    let ours = &deferral[&("team".to_string(), "ws".to_string())];
    assert_eq!(ours.uid.as_deref(), Some("uid-1"));
    assert!(ours.since > long_ago);
    assert_eq!(ours.waiter.as_ref().map(|(_, m)| m), None, "its task is done");
    drop(silent);
}
