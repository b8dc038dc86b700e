//! One probe of one workspace: from the policy's `activityProbe` to what the engine runs
//! (which component, config, ports, deadline), the workspace's own pod, and the run itself.
//! Every problem on the way is a `Failure` of the probe, never an error of the reconcile.

use super::Context;
use super::capabilities::PodCapabilities;
use super::pods::{CachedPod, CachedStatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use workspace_culler_engine::{LoadedProbe, Port, ProbeEngine, ProbeRequest};
use workspace_culler_policy::policy::{JupyterProbe, ProbeMethod, SecretKeyRef};
use workspace_culler_policy::{ActivityProbe, ProbeOutcome, ProbeRun, Workspace, WorkspaceKind};

/// The label Kubeflow puts on a workspace's pod.
pub const WORKSPACE_LABEL: &str = "notebooks.kubeflow.org/workspace-name";
/// The container probes target.
pub const MAIN_CONTAINER: &str = "main";
/// `Pod.status.phase` of a running pod (Kubernetes' own spelling).
const POD_RUNNING: &str = "Running";
/// Where Jupyter serves unless the port removes the path prefix (SPEC §3.4).
pub const DEFAULT_CONNECT_PATH: &str = "/workspace/connect/{namespace}/{name}/{portId}/";
/// The most bytes a probe module file may have (the largest example probes, with an
/// interpreter inside, are under 20 MiB).
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// Which component a probe runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Module {
    /// Shipped inside the controller.
    Builtin(String),
    /// A component file under the module directory (`dir`), at `location` in it: where that
    /// leads is looked at when the probe runs ([`FileLooks`]).
    File {
        /// The module directory.
        dir: PathBuf,
        /// The policy's `module.location`.
        location: String,
    },
    /// An artifact in an OCI registry, pinned.
    Oci(crate::oci::Location),
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Module::Builtin(name) => write!(f, "built-in {name}"),
            Module::File { dir, location } => write!(f, "{}", dir.join(location).display()),
            Module::Oci(location) => f.write_str(&location.text),
        }
    }
}

impl Plan {
    /// What loading its module loads: where from, the digest it must have, the Secret it is
    /// pulled with.
    fn load_name(&self) -> String {
        let mut name = self.module.to_string();
        if let Some(sha256) = &self.sha256 {
            name += &format!(" (sha256 {})", sha256.get(..12).unwrap_or(sha256));
        }
        if let Some(secret) = &self.pull_secret {
            name += &format!(" with pull Secret {secret}");
        }
        name
    }
}

/// Everything needed to run one workspace's probe, except the pod and the token.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The component.
    pub module: Module,
    /// The digest the component must have, when the policy pins one.
    pub sha256: Option<String>,
    /// The JSON config handed to the probe.
    pub config: serde_json::Value,
    /// The evaluation's whole deadline.
    pub deadline: Duration,
    /// The workspace's ports the probe may address (id → number).
    pub ports: Vec<Port>,
    /// A Secret key (controller's namespace) whose value becomes the config's `token`.
    pub token_secret: Option<SecretKeyRef>,
    /// A `kubernetes.io/dockerconfigjson` Secret (controller's namespace) for an `oci://` pull.
    pub pull_secret: Option<String>,
}

impl Plan {
    /// Short name for logs.
    pub fn probe_name(&self) -> String {
        match &self.module {
            Module::Builtin(name) => name.clone(),
            Module::File { location, .. } => Path::new(location)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Module::Oci(location) => location
                .reference
                .repository()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// Where the script probe writes its JSON inside the workspace's container: one file per
/// workspace, so two workspaces sharing a filesystem never read each other's answer.
fn exec_output_path(workspace: &Workspace) -> String {
    let id = workspace.metadata.uid.as_deref().unwrap_or("unknown");
    format!("/tmp/workspace-culler-activity-{id}.json")
}

/// The ports of the image option the workspace's pod runs.
fn workspace_ports(workspace: &Workspace, kind: &WorkspaceKind) -> Vec<Port> {
    let Some(image) = workspace.image_config_in_effect() else {
        return Vec::new();
    };
    kind.image_ports(image)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(Port {
                id: p.id.clone(),
                number: u16::try_from(p.port).ok()?,
            })
        })
        .collect()
}

fn jupyter_plan(
    jupyter: &JupyterProbe,
    workspace: &Workspace,
    kind: &WorkspaceKind,
    connect_path: &str,
) -> Result<Plan, String> {
    let port_id = &jupyter.port_id;
    let Some(image) = workspace.image_config_in_effect() else {
        return Err(format!(
            "portId {port_id:?} does not resolve: the workspace names no imageConfig option"
        ));
    };
    let number = kind.image_port(image, port_id).ok_or_else(|| {
        format!(
            "portId {port_id:?} does not resolve: imageConfig option {image:?} of WorkspaceKind {} has no port with that id",
            kind.name_any()
        )
    })?;
    let number =
        u16::try_from(number).map_err(|_| format!("port {number} of portId {port_id:?} is not a port number"))?;
    let remove_prefix = kind
        .port(port_id)
        .and_then(|p| p.http_proxy.as_ref())
        .is_some_and(|h| h.remove_path_prefix);
    Ok(Plan {
        module: Module::Builtin("jupyter".into()),
        sha256: None,
        config: serde_json::json!({
            "lastActivity": jupyter.last_activity,
            "portId": port_id,
            "pathTemplate": connect_path,
            "removePathPrefix": remove_prefix,
        }),
        deadline: Duration::from_secs(workspace_culler_policy::policy::JUPYTER_PROBE_TIMEOUT_SECONDS as u64),
        ports: vec![Port {
            id: port_id.clone(),
            number,
        }],
        token_secret: jupyter.token_secret_ref.clone(),
        pull_secret: None,
    })
}

/// The path of a module file: under `module_dir`, after following every link.
pub fn module_path(module_dir: &Path, location: &str) -> Result<PathBuf, String> {
    let candidate = module_dir.join(location);
    let real = std::fs::canonicalize(&candidate).map_err(|e| format!("cannot read probe module {location}: {e}"))?;
    let root = std::fs::canonicalize(module_dir)
        .map_err(|e| format!("cannot read the module directory {}: {e}", module_dir.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "probe module {location} is outside the module directory {}",
            module_dir.display()
        ));
    }
    Ok(real)
}

/// A probe's name in messages, and its plan (or why it has none).
pub type NamedPlan = (String, Result<Plan, String>);

/// What to run for `probe` against `workspace` of `kind`: one plan per probe (several for
/// `anyOf`), each with the name its messages go by, and each planned on its own, so one that
/// cannot be planned does not hide the others.
pub fn plans(
    probe: &ActivityProbe,
    workspace: &Workspace,
    kind: &WorkspaceKind,
    module_dir: &Path,
    connect_path: &str,
) -> Result<Vec<NamedPlan>, String> {
    let methods = probe
        .methods()
        .ok_or("activityProbe must set exactly one of podExec, jupyter, module, anyOf")?;
    Ok(methods
        .into_iter()
        .map(|method| {
            let name = method_name(&method);
            (name, plan(method, workspace, kind, module_dir, connect_path))
        })
        .collect())
}

/// What to run for one probe of a policy.
fn plan(
    method: ProbeMethod<'_>,
    workspace: &Workspace,
    kind: &WorkspaceKind,
    module_dir: &Path,
    connect_path: &str,
) -> Result<Plan, String> {
    let deadline = Duration::from_secs(u64::try_from(method.deadline_seconds()).unwrap_or(1).max(1));
    match method {
        ProbeMethod::PodExec(exec) => Ok(Plan {
            module: Module::Builtin("exec-script".into()),
            sha256: None,
            config: serde_json::json!({
                "script": exec.script,
                "outputPath": exec_output_path(workspace),
                "timeoutSeconds": exec.timeout_seconds,
            }),
            deadline,
            ports: workspace_ports(workspace, kind),
            token_secret: None,
            pull_secret: None,
        }),
        ProbeMethod::Jupyter(jupyter) => jupyter_plan(jupyter, workspace, kind, connect_path),
        ProbeMethod::Module(module) => {
            let location = &module.location;
            Ok(Plan {
                module: if workspace_culler_engine::builtin::builtin(location).is_some() {
                    Module::Builtin(location.clone())
                } else if crate::oci::is_oci(location) {
                    Module::Oci(crate::oci::parse(location, module.sha256.as_deref())?)
                } else {
                    if let Some(problem) = unpinned_file(module) {
                        return Err(problem);
                    }
                    Module::File {
                        dir: module_dir.to_owned(),
                        location: location.clone(),
                    }
                },
                sha256: module.sha256.clone(),
                config: serde_json::Value::Object(module.config.clone().unwrap_or_default()),
                deadline,
                ports: workspace_ports(workspace, kind),
                token_secret: None,
                pull_secret: module.pull_secret_ref.as_ref().map(|s| s.name.clone()),
            })
        }
    }
}

/// What is wrong with a module `probe` names (the first such, for `anyOf`), seen from the
/// controller: a module file it cannot use, or an `oci://` location that does not parse or whose
/// last pull failed (`None`: nothing, or only built-ins): for the policy's `Ready` condition.
pub async fn module_problem(
    probe: &ActivityProbe,
    module_dir: &Path,
    registry: &crate::oci::Registry,
    looks: &FileLooks,
) -> Option<String> {
    let modules = probe
        .modules()
        .filter(|module| workspace_culler_engine::builtin::builtin(&module.location).is_none());
    for module in modules {
        let problem = if crate::oci::is_oci(&module.location) {
            crate::oci::parse(&module.location, module.sha256.as_deref())
                .err()
                .or_else(|| registry.problem(&module.location, module.sha256.as_deref()))
        } else if let Some(problem) = unpinned_file(module) {
            Some(problem)
        } else {
            match looks.look(module_dir, &module.location).await {
                Ok((path, metadata)) => usable_module_file(&path, &metadata).err(),
                Err(problem) => Some(problem),
            }
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// How long a look at a module file may take ([`FileLooks`]).
const LOOK_DEADLINE: Duration = Duration::from_secs(10);

/// What a look at a module file finds: where its location leads, and its metadata.
pub type Looked = (PathBuf, std::fs::Metadata);

/// The looks at module files under way, by location (module directory joined with location):
/// since when, and their answer once there is one.
type Looks<T> = std::collections::HashMap<
    PathBuf,
    (
        std::time::Instant,
        tokio::sync::watch::Receiver<Option<Result<T, String>>>,
    ),
>;

/// Looks at module files — where a location leads under the module directory, and what is
/// there — on tokio's blocking threads, within a deadline, one look at a time per location
/// (whoever asks while a look is under way waits for its answer). A module directory on a
/// volume that hangs (a network file system) then fails the probes and the policy conditions
/// that need it, and holds none of the async workers, which serve every other probe and the
/// health checks; once a look has outlived its deadline, the next one at that location fails at
/// once instead of leaving one more thread behind it.
pub struct FileLooks<T = Looked> {
    busy: Arc<std::sync::Mutex<Looks<T>>>,
    deadline: Duration,
}

impl<T> Clone for FileLooks<T> {
    fn clone(&self) -> Self {
        FileLooks {
            busy: self.busy.clone(),
            deadline: self.deadline,
        }
    }
}

impl<T> Default for FileLooks<T> {
    fn default() -> Self {
        FileLooks {
            busy: Arc::default(),
            deadline: LOOK_DEADLINE,
        }
    }
}

impl FileLooks {
    /// The real path of `location` under `dir` ([`module_path`]), and its metadata.
    pub async fn look(&self, dir: &Path, location: &str) -> Result<Looked, String> {
        let (owned_dir, owned_location) = (dir.to_owned(), location.to_owned());
        self.look_with(dir.join(location), move || {
            let path = module_path(&owned_dir, &owned_location)?;
            let metadata =
                std::fs::metadata(&path).map_err(|e| format!("cannot read probe module {}: {e}", path.display()))?;
            Ok((path, metadata))
        })
        .await
    }
}

impl<T: Clone + Send + Sync + 'static> FileLooks<T> {
    /// `work`'s answer about `key`, `work` run as [`FileLooks`] says.
    async fn look_with(
        &self,
        key: PathBuf,
        work: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let hung = || {
            format!(
                "the module directory did not answer a look at {} within {:?}",
                key.display(),
                self.deadline
            )
        };
        let (since, mut answer) = {
            let mut busy = lock(&self.busy);
            match busy.get(&key) {
                Some((since, answer)) => (*since, answer.clone()),
                None => {
                    let (answered, answer) = tokio::sync::watch::channel(None);
                    let since = std::time::Instant::now();
                    busy.insert(key.clone(), (since, answer.clone()));
                    let (under_way, location) = (self.busy.clone(), key.clone());
                    tokio::task::spawn_blocking(move || {
                        let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                            .unwrap_or_else(|_| Err(format!("looking at {} failed", location.display())));
                        // Ended before it answers: whoever asks once it has answered looks again.
                        lock(&under_way).remove(&location);
                        let _ = answered.send(Some(looked));
                    });
                    (since, answer)
                }
            }
        };
        let left = self.deadline.checked_sub(since.elapsed()).ok_or_else(hung)?;
        match tokio::time::timeout(left, answer.wait_for(Option::is_some)).await {
            Ok(Ok(looked)) => looked.clone().unwrap_or_else(|| Err(hung())),
            // Gone without an answer (the runtime shutting down).
            Ok(Err(_)) => Err(format!("looking at {} failed", key.display())),
            Err(_) => Err(hung()),
        }
    }
}

/// What is wrong with a Secret `probe` names (a Jupyter token, a module's pull Secret) in the
/// controller's namespace `namespace`, seen in the watch cache (`None`: nothing): its probes
/// fail for it (a module not pulled yet cannot be), so the policy is not `Ready`. Checked per
/// policy: another policy naming the same module with its own Secret is not concerned.
pub fn secret_problem(
    probe: &ActivityProbe,
    secrets: &Store<k8s_openapi::api::core::v1::Secret>,
    namespace: &str,
) -> Option<String> {
    let tokens = probe
        .jupyter
        .iter()
        .chain(probe.any_of.iter().flatten().filter_map(|p| p.jupyter.as_ref()))
        .filter_map(|j| j.token_secret_ref.as_ref())
        .map(|s| (s.name.as_str(), s.key.as_str(), "jupyter.tokenSecretRef"));
    let pulls = probe
        .modules()
        .filter_map(|m| m.pull_secret_ref.as_ref())
        .map(|s| (s.name.as_str(), ".dockerconfigjson", "module.pullSecretRef"));
    tokens.chain(pulls).find_map(|(name, key, field)| {
        secret_bytes(secrets, namespace, name, key)
            .err()
            .map(|problem| format!("{field}: {problem}"))
    })
}

/// Why a module file is not run: it names no `sha256`. Whoever can write to the module
/// directory (a ConfigMap, a volume) could otherwise swap the code a policy runs.
fn unpinned_file(module: &workspace_culler_policy::policy::ModuleProbe) -> Option<String> {
    module.sha256.is_none().then(|| {
        format!(
            "probe module file {} has no sha256: a module file runs only when pinned \
             (set module.sha256 to the digest `workspace-culler probe inspect` prints)",
            module.location
        )
    })
}

/// A module file must be a regular file (not a device or a FIFO) of at most
/// [`MAX_MODULE_BYTES`].
fn usable_module_file(path: &Path, metadata: &std::fs::Metadata) -> Result<(), String> {
    if !metadata.is_file() {
        return Err(format!("probe module {} is not a regular file", path.display()));
    }
    if metadata.len() > MAX_MODULE_BYTES {
        return Err(too_big(path, metadata.len()));
    }
    Ok(())
}

fn too_big(path: &Path, size: u64) -> String {
    format!(
        "probe module {} is {size} bytes, over the cap of {MAX_MODULE_BYTES} bytes",
        path.display()
    )
}

/// Why a pod is not the workspace's pod, or `None` when it may be (its StatefulSet is still
/// to be checked): returns the name of the StatefulSet that controls it.
pub fn pod_candidate(pod: &CachedPod) -> Result<String, String> {
    let name = pod.name_any();
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(format!("pod {name} is terminating"));
    }
    let phase = pod.phase.as_deref().unwrap_or("Unknown");
    if phase != POD_RUNNING {
        return Err(format!("pod {name} is {phase}, not Running"));
    }
    if !pod.containers.iter().any(|c| c == MAIN_CONTAINER) {
        return Err(format!("pod {name} has no container named {MAIN_CONTAINER:?}"));
    }
    pod.statefulset
        .clone()
        .ok_or_else(|| format!("pod {name} is not controlled by a StatefulSet"))
}

/// Whether `statefulset` is controlled by the Workspace with this uid.
pub fn owned_by_workspace(statefulset: &CachedStatefulSet, workspace_uid: &str) -> bool {
    statefulset
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "Workspace" && o.uid == workspace_uid)
}

/// The workspace's pod (SPEC §3.1): labelled for it, and controlled through its StatefulSet by
/// this Workspace's uid, not terminating, Running, with a `main` container. Read from the
/// controller's watch caches: no request per probe.
fn workspace_pod(ctx: &Context, workspace: &Workspace, namespace: &str) -> Result<CachedPod, String> {
    use kube::runtime::reflector::ObjectRef;
    let name = workspace.name_any();
    let uid = workspace.metadata.uid.as_deref().unwrap_or_default();
    let listed = ctx.pods.labelled(namespace, &name);
    let mut rejected = Vec::new();
    for pod in listed {
        let owner = match pod_candidate(&pod) {
            Ok(owner) => owner,
            Err(why) => {
                rejected.push(why);
                continue;
            }
        };
        match ctx.statefulsets.get(&ObjectRef::new(&owner).within(namespace)) {
            Some(sts) if owned_by_workspace(&sts, uid) => return Ok((*pod).clone()),
            _ => rejected.push(format!(
                "pod {} is not owned by this Workspace (its StatefulSet {owner} is not)",
                pod.name_any()
            )),
        }
    }
    if rejected.is_empty() {
        return Err(format!("no pod labelled {WORKSPACE_LABEL}={name}"));
    }
    Err(format!("no Running pod of this workspace: {}", rejected.join("; ")))
}

fn read_secret(ctx: &Context, secret: &SecretKeyRef) -> Result<String, String> {
    let (namespace, name, key) = (&ctx.settings.own_namespace, &secret.name, &secret.key);
    let value = secret_data(ctx, name, key)?;
    String::from_utf8(value)
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("Secret {namespace}/{name} key {key:?} is not text"))
}

/// The bytes under `key` of Secret `name` in the controller's own namespace (from the watch
/// cache: no request to the apiserver).
fn secret_data(ctx: &Context, name: &str, key: &str) -> Result<Vec<u8>, String> {
    secret_bytes(&ctx.secrets, &ctx.settings.own_namespace, name, key)
}

fn secret_bytes(
    secrets: &Store<k8s_openapi::api::core::v1::Secret>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    use kube::runtime::reflector::ObjectRef;
    let found = secrets
        .get(&ObjectRef::new(name).within(namespace))
        .ok_or_else(|| format!("cannot read Secret {namespace}/{name}: not found"))?;
    found
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|value| value.0.clone())
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))
}

/// A probe module file's bytes: a regular file no larger than [`MAX_MODULE_BYTES`], so a
/// device or a huge file cannot exhaust memory.
pub async fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let cannot = |e: std::io::Error| format!("cannot read probe module {}: {e}", path.display());
    // Look before opening (opening a FIFO would block), then check the file opened.
    usable_module_file(path, &tokio::fs::metadata(path).await.map_err(cannot)?)?;
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    usable_module_file(path, &file.metadata().await.map_err(cannot)?)?;
    // It may grow between the look and the read: read no more than the cap allows.
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(too_big(path, bytes.len() as u64));
    }
    Ok(bytes)
}

/// What identifies a module file's content without reading it: its path, size and
/// modification time, and the digest it must have.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    size: u64,
    modified: Option<std::time::SystemTime>,
    pinned: Option<String>,
}

impl FileKey {
    /// The key of the file at `path` whose metadata is `metadata`.
    fn of(path: &Path, metadata: &std::fs::Metadata, pinned: Option<&str>) -> FileKey {
        FileKey {
            path: path.to_owned(),
            size: metadata.len(),
            modified: metadata.modified().ok(),
            pinned: pinned.map(str::to_owned),
        }
    }
}

/// Loaded module files by [`FileKey`]: a file that has not changed is neither read nor hashed
/// again (JavaScript and Python components are tens of MB). A replaced file has a new size or
/// time and is read, hashed and checked against its pin again. Only the latest version of each
/// path is kept.
pub struct ModuleFiles<T> {
    loaded: Memo<PathBuf, (FileKey, Arc<T>)>,
    loading: Flights<FileKey>,
}

impl<T> Default for ModuleFiles<T> {
    fn default() -> Self {
        ModuleFiles {
            loaded: Memo::default(),
            loading: Flights::default(),
        }
    }
}

/// The longest a load may take, whatever it waits on (a module file on a volume that hangs, a
/// compile): it fails then, and the probes put off for it record that. A pull has a deadline of
/// its own, shorter.
pub const LOAD_DEADLINE: Duration = Duration::from_secs(600);

/// How long a failed load is the answer for its module before it is tried again: the probes
/// put off while it ran record its failure, and a registry that is down is not asked again by
/// every probe that comes due.
pub const RETRY_FAILED_LOAD_AFTER: Duration = Duration::from_secs(30);

/// A module asked for: loaded, or on its way.
pub enum Load<V> {
    /// Loaded, or its load failed within [`RETRY_FAILED_LOAD_AFTER`].
    Done(Result<V, String>),
    /// Being loaded (read, pulled, compiled) on a task of its own.
    Loading(Landing),
}

/// Resolves once a load has landed, whether it succeeded or not.
pub type Landing = futures::future::BoxFuture<'static, ()>;

/// How a load ended: `Ok` once what it loaded is kept, or when and why it failed.
type Landed = Result<(), (std::time::Instant, String)>;

/// Loads in progress, by key, each on a task of its own: the callers that want the same module
/// while it loads share that one load (without it, the first round after a start loaded, or
/// pulled, a module once per probe in flight, and held as many copies), and none of them waits
/// for it. A probe that waited held one of the controller's probes in flight for as long as a
/// registry took to answer, up to the pull's deadline: a slow registry held every probe of the
/// policies using it, and the other policies' probes waited behind them. A failure stays the
/// answer for [`RETRY_FAILED_LOAD_AFTER`].
pub struct Flights<K> {
    running: Arc<std::sync::Mutex<std::collections::HashMap<K, tokio::sync::watch::Receiver<Option<Landed>>>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Flights {
            running: Default::default(),
        }
    }
}

/// Resolves once `flight` has landed (or its task is gone).
fn landing(mut flight: tokio::sync::watch::Receiver<Option<Landed>>) -> Landing {
    Box::pin(async move {
        let _ = flight.wait_for(Option::is_some).await;
    })
}

impl<K: std::hash::Hash + Eq + Clone + Send + 'static> Flights<K> {
    /// The failure of `key`'s last load if it is recent (or landed after `since`, when the
    /// caller was put off waiting for it), or the load running; otherwise what `kept` finds, or
    /// else `load`'s future started on a task of its own, which gives its value to `keep` when
    /// it succeeds. `load` is called here, on the caller's task; what it cannot prepare (a
    /// pull Secret missing from the cache) is the answer at once and not kept, so the next
    /// probe looks again.
    pub fn join_or_start<V: Send + 'static, F, Fut>(
        &self,
        key: K,
        since: Option<std::time::Instant>,
        kept: impl FnOnce() -> Option<V>,
        load: F,
        keep: impl FnOnce(V) + Send + 'static,
    ) -> Load<V>
    where
        F: FnOnce() -> Result<Fut, String>,
        Fut: std::future::Future<Output = Result<V, String>> + Send + 'static,
    {
        let mut running = lock(&self.running);
        if let Some(flight) = running.get(&key) {
            let landed = flight.borrow().clone();
            match landed {
                // Running, unless its task is gone without landing (the runtime shut down).
                None if flight.has_changed().is_ok() => return Load::Loading(landing(flight.clone())),
                Some(Err((at, message)))
                    if at.elapsed() < RETRY_FAILED_LOAD_AFTER || since.is_some_and(|since| at >= since) =>
                {
                    return Load::Done(Err(message));
                }
                _ => {}
            }
        }
        // No flight: none ran, or one landed and kept its value before it left.
        if let Some(value) = kept() {
            return Load::Done(Ok(value));
        }
        let future = match load() {
            Ok(future) => future,
            Err(message) => return Load::Done(Err(message)),
        };
        let (land, flight) = tokio::sync::watch::channel(None);
        running.insert(key.clone(), flight.clone());
        let flights = self.running.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(LOAD_DEADLINE, future).await.unwrap_or_else(|_| {
                Err(format!(
                    "loading the probe module took longer than {} s",
                    LOAD_DEADLINE.as_secs()
                ))
            });
            let landed = match result {
                Ok(value) => {
                    keep(value);
                    // Kept: later callers find the value, and the flight leaves.
                    let mut running = lock(&flights);
                    if running.get(&key).is_some_and(|f| f.same_channel(&land.subscribe())) {
                        running.remove(&key);
                    }
                    Ok(())
                }
                Err(message) => Err((std::time::Instant::now(), message)),
            };
            let _ = land.send(Some(landed));
        });
        Load::Loading(landing(flight))
    }

    /// Forget the failures older than [`RETRY_FAILED_LOAD_AFTER`] (they would be tried again),
    /// and loads whose task is gone.
    pub fn prune(&self) {
        lock(&self.running).retain(|_, flight| match &*flight.borrow() {
            Some(Err((at, _))) => at.elapsed() < RETRY_FAILED_LOAD_AFTER,
            Some(Ok(())) => false,
            None => flight.has_changed().is_ok(),
        });
    }
}

/// Values by key, each with when it was last used, so what has not been used for a while can
/// be dropped ([`Memo::prune`]): a module no policy names any more does not stay loaded.
pub struct Memo<K, V> {
    entries: Arc<std::sync::Mutex<std::collections::HashMap<K, (std::time::Instant, V)>>>,
    loading: Flights<K>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            entries: Default::default(),
            loading: Flights::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Memo<K, V> {
    /// The value for `key`, if kept; marks it used now.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let mut entries = lock(&self.entries);
        let (used, value) = entries.get_mut(key)?;
        *used = std::time::Instant::now();
        Some(value.clone())
    }

    /// Keep `value` for `key` (replacing what was there).
    pub fn insert(&self, key: K, value: V) {
        lock(&self.entries).insert(key, (std::time::Instant::now(), value));
    }

    /// Drop what has not been used for `unused_for`, and failed loads due to be tried again;
    /// returns how many values were dropped.
    pub fn prune(&self, unused_for: Duration) -> usize
    where
        K: Clone + Send + 'static,
        V: Send + 'static,
    {
        self.loading.prune();
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|_, (used, _)| used.elapsed() < unused_for);
        before - entries.len()
    }
}

impl<K: std::hash::Hash + Eq + Clone + Send + 'static, V: Clone + Send + 'static> Memo<K, V> {
    /// The value for `key`; or, unless it is kept, the load of it running or a recent failure
    /// of one; or else `load` started, its value kept when it succeeds. Nothing here waits for
    /// a load.
    pub fn get_or_start<F, Fut>(&self, key: K, since: Option<std::time::Instant>, load: F) -> Load<V>
    where
        F: FnOnce() -> Result<Fut, String>,
        Fut: std::future::Future<Output = Result<V, String>> + Send + 'static,
    {
        if let Some(value) = self.get(&key) {
            return Load::Done(Ok(value));
        }
        let (entries, kept_as) = (self.entries.clone(), key.clone());
        self.loading.join_or_start(
            key.clone(),
            since,
            || self.get(&key),
            load,
            move |value| {
                lock(&entries).insert(kept_as, (std::time::Instant::now(), value));
            },
        )
    }
}

impl<T: Send + Sync + 'static> ModuleFiles<T> {
    /// The module at `path` (whose metadata is `metadata`, pinned to `pinned`) as
    /// [`Memo::get_or_start`] gives it: unless the same file was loaded before, read and given
    /// to `load` on a task of its own.
    pub fn get_or_start<F, Fut>(
        &self,
        path: &Path,
        metadata: &std::fs::Metadata,
        pinned: Option<&str>,
        since: Option<std::time::Instant>,
        load: F,
    ) -> Load<Arc<T>>
    where
        F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Arc<T>, String>> + Send + 'static,
    {
        let key = FileKey::of(path, metadata, pinned);
        if let Some(loaded) = self.kept(&key) {
            return Load::Done(Ok(loaded));
        }
        let (entries, file, kept_as) = (self.loaded.entries.clone(), key.path.clone(), key.clone());
        self.loading.join_or_start(
            key.clone(),
            since,
            || self.kept(&key),
            move || Ok(async move { load(read_module(&file).await?).await }),
            move |loaded| {
                let path = kept_as.path.clone();
                lock(&entries).insert(path, (std::time::Instant::now(), (kept_as, loaded)));
            },
        )
    }

    /// What is kept for the file `key` names, if it is still that file.
    fn kept(&self, key: &FileKey) -> Option<Arc<T>> {
        self.loaded.get(&key.path).filter(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Drop the files not used for `unused_for`; returns how many.
    pub fn prune(&self, unused_for: Duration) -> usize {
        self.loading.prune();
        self.loaded.prune(unused_for)
    }
}

/// `plan`'s module, loaded or on its way: nothing here waits for a read, a pull or a compile.
/// A probe put off `since` then takes a failure that landed since as its answer.
async fn load(
    ctx: &Context,
    prober: &EngineProber,
    plan: &Plan,
    since: Option<std::time::Instant>,
) -> Load<Arc<LoadedProbe>> {
    let engine = prober.engine.clone();
    let pinned = plan.sha256.clone();
    let compile = move |bytes: Vec<u8>| async move {
        // Compiling a large component (an interpreter inside) takes seconds of CPU: off the
        // async workers, so other workspaces' probes go on meanwhile.
        tokio::task::spawn_blocking(move || engine.load(&bytes, pinned.as_deref()))
            .await
            .map_err(|e| format!("loading the probe module failed: {e}"))?
            .map_err(|e| e.to_string())
    };
    match &plan.module {
        Module::Builtin(name) => prober.builtins.get_or_start(name.clone(), since, || {
            let name = name.clone();
            Ok(async move {
                let component = workspace_culler_engine::builtin::builtin(&name)
                    .ok_or_else(|| format!("no built-in probe named {name:?}"))?
                    .component
                    .to_vec();
                compile(component).await
            })
        }),
        Module::File { dir, location } => match prober.looks.look(dir, location).await {
            Ok((path, metadata)) => prober
                .files
                .get_or_start(&path, &metadata, plan.sha256.as_deref(), since, compile),
            Err(message) => Load::Done(Err(message)),
        },
        Module::Oci(location) => {
            // A pinned artifact never changes: pulled (or read from the disk cache) and
            // compiled once per process and pull Secret, so one policy's failure to pull (its
            // credentials refused) is never another's answer.
            let key = format!(
                "{}#{}#{}",
                location.text,
                plan.sha256.as_deref().unwrap_or_default(),
                plan.pull_secret.as_deref().unwrap_or_default()
            );
            prober.pulled.get_or_start(key, since, || {
                // The credentials are read only for a pull, from the cache, here.
                let auth = match &plan.pull_secret {
                    Some(name) => registry_auth(ctx, name, location.reference.registry())?,
                    None => oci_client::secrets::RegistryAuth::Anonymous,
                };
                let (registry, location) = (ctx.settings.registry.clone(), location.clone());
                Ok(async move {
                    let fetched = registry.fetch(&location, &auth).await?;
                    if fetched.pulled {
                        tracing::info!(location = %location.text, sha256 = %fetched.sha256, "pulled a probe module");
                    }
                    compile(fetched.bytes).await
                })
            })
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The credentials for `registry` in the `kubernetes.io/dockerconfigjson` Secret `name` of the
/// controller's namespace (from the watch cache).
fn registry_auth(ctx: &Context, name: &str, registry: &str) -> Result<oci_client::secrets::RegistryAuth, String> {
    let config = secret_data(ctx, name, ".dockerconfigjson")
        .map_err(|e| format!("the pull Secret (type kubernetes.io/dockerconfigjson): {e}"))?;
    let namespace = &ctx.settings.own_namespace;
    crate::oci::auth_from_docker_config(&config, registry)
        .map_err(|e| format!("the pull Secret {namespace}/{name}: {e}"))
}

/// What asking for a probe came to.
pub enum Probed {
    /// It ran, or failed before it could.
    Ran(ProbeRun),
    /// A module it needs is being loaded (read, pulled, compiled) on a task of its own:
    /// nothing ran, and the probe is asked for again once `landed` resolves. No probe waits
    /// for a load, so a slow registry holds none of the controller's probes in flight.
    Deferred {
        /// The modules being loaded, each named with where it is loaded from: the same text
        /// for the same loads.
        modules: String,
        /// Resolves once every one of them has landed.
        landed: Landing,
    },
}

/// Runs one probe of a workspace. The controller's is [`EngineProber`]; the reconcile's unit
/// tests script outcomes instead.
#[async_trait::async_trait]
pub trait Prober: Send + Sync {
    /// Probe `workspace` (of `kind`) as `probe` says, starting now (`start_ms`); every problem
    /// is a `Failure` or `Timeout` of the run.
    async fn probe(
        &self,
        ctx: &Context,
        workspace: &Workspace,
        kind: &WorkspaceKind,
        probe: &ActivityProbe,
        start_ms: i64,
    ) -> Probed;
}

/// Probes through the Wasm engine, with the workspace's pod as its capabilities.
pub struct EngineProber {
    engine: Arc<ProbeEngine>,
    /// Where module files' locations lead, looked at off the async workers.
    looks: FileLooks,
    files: ModuleFiles<LoadedProbe>,
    /// `oci://` modules loaded, by location, pin and pull Secret.
    pulled: Memo<String, Arc<LoadedProbe>>,
    /// Built-in probes loaded, by name (their bytes are neither copied nor hashed per probe).
    builtins: Memo<String, Arc<LoadedProbe>>,
    /// When loaded modules were last pruned.
    pruned_at: std::sync::Mutex<std::time::Instant>,
}

/// How often loaded modules are pruned, and how long one stays loaded unused: a module used
/// again later is read from the disk cache (milliseconds), not compiled.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const UNUSED_FOR: Duration = Duration::from_secs(3600);

impl EngineProber {
    /// Probes evaluated by `engine`, their module files looked at through `looks`.
    pub fn new(engine: Arc<ProbeEngine>, looks: FileLooks) -> EngineProber {
        EngineProber {
            engine,
            looks,
            files: ModuleFiles::default(),
            pulled: Memo::default(),
            builtins: Memo::default(),
            pruned_at: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Every [`PRUNE_EVERY`]: forget the modules no probe used for [`UNUSED_FOR`] (a replaced
    /// file, a pin no policy names any more), and free the compiled code no one holds.
    fn prune_if_due(&self) {
        {
            let mut pruned_at = lock(&self.pruned_at);
            if pruned_at.elapsed() < PRUNE_EVERY {
                return;
            }
            *pruned_at = std::time::Instant::now();
        }
        let forgotten = self.files.prune(UNUSED_FOR) + self.pulled.prune(UNUSED_FOR) + self.builtins.prune(UNUSED_FOR);
        let unloaded = self.engine.unload_unused();
        if forgotten + unloaded > 0 {
            tracing::info!(forgotten, unloaded, "pruned probe modules no probe used lately");
        }
    }
}

#[async_trait::async_trait]
impl Prober for EngineProber {
    async fn probe(
        &self,
        ctx: &Context,
        workspace: &Workspace,
        kind: &WorkspaceKind,
        probe: &ActivityProbe,
        start_ms: i64,
    ) -> Probed {
        self.prune_if_due();
        let failed = |message| ProbeRun {
            start_ms,
            end_ms: (ctx.clock)().max(start_ms),
            outcome: ProbeOutcome::Failure(message),
        };
        let namespace = workspace.namespace().unwrap_or_default();
        let planned = plans(
            probe,
            workspace,
            kind,
            &ctx.settings.module_dir,
            &ctx.settings.connect_path,
        );
        let (planned, pod) = match (planned, workspace_pod(ctx, workspace, &namespace)) {
            (Ok(planned), Ok(pod)) => (planned, pod),
            (Err(message), _) | (_, Err(message)) => return Probed::Ran(failed(message)),
        };
        // Every module first: a probe runs once all of its modules are loaded.
        let since = ctx.put_off_since(workspace);
        let (mut ready, mut loading) = (Vec::new(), Vec::new());
        for (name, plan) in planned {
            match plan {
                Err(message) => ready.push((name, Err(message))),
                Ok(plan) => match load(ctx, self, &plan, since).await {
                    Load::Done(module) => ready.push((name, module.map(|module| (plan, module)))),
                    Load::Loading(landed) => loading.push((plan.load_name(), landed)),
                },
            }
        }
        if !loading.is_empty() {
            let (modules, landings): (Vec<String>, Vec<Landing>) = loading.into_iter().unzip();
            return Probed::Deferred {
                modules: modules.join(", "),
                landed: Box::pin(async move {
                    futures::future::join_all(landings).await;
                }),
            };
        }
        let runs = futures::future::join_all(ready.into_iter().map(|(name, module)| {
            let pod = &pod;
            async move {
                let run = match module {
                    Ok((plan, loaded)) => evaluate(ctx, self, plan, &loaded, workspace, pod, start_ms).await,
                    Err(message) => Err(message),
                };
                (name, run.unwrap_or_else(failed))
            }
        }))
        .await;
        if probe.any_of.is_none() {
            return Probed::Ran(
                runs.into_iter()
                    .next()
                    .map_or_else(|| failed("no probe to run".into()), |(_, run)| run),
            );
        }
        Probed::Ran(ProbeRun {
            start_ms: runs.iter().map(|(_, r)| r.start_ms).min().unwrap_or(start_ms),
            end_ms: runs.iter().map(|(_, r)| r.end_ms).max().unwrap_or(start_ms),
            outcome: workspace_culler_engine::contract::any_of(runs.into_iter().map(|(name, r)| (name, r.outcome))),
        })
    }
}

/// How a probe of `anyOf` is named in a message.
fn method_name(method: &ProbeMethod<'_>) -> String {
    match method {
        ProbeMethod::PodExec(_) => "podExec".into(),
        ProbeMethod::Jupyter(_) => "jupyter".into(),
        ProbeMethod::Module(module) => module.location.clone(),
    }
}

/// Runs one planned probe, its module `loaded`, against `pod`.
async fn evaluate(
    ctx: &Context,
    prober: &EngineProber,
    mut plan: Plan,
    loaded: &LoadedProbe,
    workspace: &Workspace,
    pod: &CachedPod,
    start_ms: i64,
) -> Result<ProbeRun, String> {
    let namespace = workspace.namespace().unwrap_or_default();
    if let Some(secret) = &plan.token_secret {
        plan.config["token"] = read_secret(ctx, secret)?.into();
    }
    let pod_name = pod.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let request = ProbeRequest {
        workspace: workspace_culler_engine::Workspace {
            namespace,
            name: workspace.name_any(),
            pod_name: pod_name.clone(),
            pod_ip: pod.pod_ip.clone().unwrap_or_default(),
            container: MAIN_CONTAINER.into(),
            ports: plan.ports.clone(),
        },
        config: plan.config.to_string(),
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
    // The clock read again: the pod's lookup and the modules took a moment since the probe
    // started, and the probe's end and its clock are now, not then.
    let evaluation = prober.engine.evaluate(loaded, request, (ctx.clock)()).await;
    ctx.metrics.probes_waiting.dec();
    Ok(ProbeRun {
        start_ms,
        end_ms: evaluation.finished_at_ms.max(start_ms),
        outcome: evaluation.outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(file: &str) -> serde_json::Value {
        let path = format!("{}/../tests/kubeflow/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap()).unwrap()
    }

    fn sample() -> (Workspace, WorkspaceKind) {
        let workspace: Workspace = serde_json::from_value(reference("jupyterlab_v1beta1_workspace.yaml")).unwrap();
        let kind: WorkspaceKind = serde_json::from_value(reference("jupyterlab_v1beta1_workspacekind.yaml")).unwrap();
        (workspace, kind)
    }

    fn probe(value: serde_json::Value) -> ActivityProbe {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_secret_a_policy_names_must_be_in_the_controller_s_namespace_with_its_key() {
        use k8s_openapi::api::core::v1::Secret;
        let secret = |namespace: &str, name: &str, key: &str| -> Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": namespace},
                "data": {key: "dG9rZW4="}
            }))
            .unwrap()
        };
        let mut writer = kube::runtime::reflector::store::Writer::default();
        for s in [
            secret("culler-system", "jupyter", "token"),
            secret("culler-system", "pull", ".dockerconfigjson"),
            secret("team-a", "elsewhere", "token"),
        ] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(s));
        }
        let secrets = writer.as_reader();
        let token = |name: &str, key: &str| {
            probe(serde_json::json!({"jupyter": {"lastActivity": true, "portId": "lab",
                                                 "tokenSecretRef": {"name": name, "key": key}}}))
        };
        let problem = |probe: &ActivityProbe| secret_problem(probe, &secrets, "culler-system");
        assert_eq!(problem(&token("jupyter", "token")), None);
        let missing = problem(&token("elsewhere", "token")).unwrap();
        assert!(
            missing.contains("jupyter.tokenSecretRef") && missing.contains("culler-system/elsewhere: not found"),
            "{missing}"
        );
        let no_key = problem(&token("jupyter", "password")).unwrap();
        assert!(no_key.contains("no key \"password\""), "{no_key}");
        // Inside anyOf too, and a module's pull Secret.
        let any_of = probe(serde_json::json!({"anyOf": [
            {"module": {"location": "oci://r.example/p:v1", "sha256": "a".repeat(64)}},
            {"jupyter": {"lastActivity": true, "portId": "lab",
                         "tokenSecretRef": {"name": "gone", "key": "token"}}}
        ]}));
        assert!(
            problem(&any_of).unwrap().contains("culler-system/gone: not found"),
            "{any_of:?}"
        );
        let pull = |name: &str| {
            probe(serde_json::json!({"module": {"location": "oci://r.example/p:v1",
                "sha256": "a".repeat(64), "pullSecretRef": {"name": name}}}))
        };
        assert!(problem(&pull("gone")).unwrap().contains("module.pullSecretRef"));
        assert_eq!(problem(&pull("pull")), None);
    }

    fn only_plan(probe: &ActivityProbe, workspace: &Workspace, kind: &WorkspaceKind) -> Result<Plan, String> {
        let mut plans = plans(probe, workspace, kind, Path::new("/probes"), DEFAULT_CONNECT_PATH).unwrap();
        assert_eq!(plans.len(), 1);
        plans.remove(0).1
    }

    #[test]
    fn each_probe_of_any_of_is_planned_on_its_own() {
        let (workspace, kind) = sample();
        let any_of = probe(serde_json::json!({"anyOf": [
            {"jupyter": {"lastActivity": true, "portId": "nope"}},
            {"module": {"location": "nvidia-gpu", "config": {"samples": 2}, "timeoutSeconds": 20}},
        ]}));
        let plans = plans(&any_of, &workspace, &kind, Path::new("/probes"), DEFAULT_CONNECT_PATH).unwrap();
        assert_eq!(plans.len(), 2);
        assert!(
            plans[0]
                .1
                .as_ref()
                .unwrap_err()
                .contains("portId \"nope\" does not resolve")
        );
        let (name, gpu) = (&plans[1].0, plans[1].1.as_ref().unwrap());
        assert_eq!(name, "nvidia-gpu");
        assert_eq!(gpu.module, Module::Builtin("nvidia-gpu".into()));
        assert_eq!(gpu.config["samples"], 2);
        assert_eq!(gpu.deadline, Duration::from_secs(20));
    }

    #[tokio::test]
    async fn looks_at_one_location_at_once_share_one_look() {
        let looks = FileLooks::<usize>::default();
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let slow = || {
            let started = started.clone();
            move || {
                std::thread::sleep(Duration::from_millis(200));
                Ok(started.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
            }
        };
        let key = PathBuf::from("/probes/team/probe.wasm");
        let (first, second) = tokio::join!(
            looks.look_with(key.clone(), slow()),
            looks.look_with(key.clone(), slow())
        );
        assert_eq!((first, second), (Ok(0), Ok(0)), "one look, its answer for both");
        // Once it has answered, a later look looks again.
        assert_eq!(looks.look_with(key, slow()).await, Ok(1));
    }

    #[tokio::test]
    async fn a_look_that_hangs_fails_at_its_deadline_and_is_not_started_again_until_it_returns() {
        let looks = FileLooks {
            busy: Arc::default(),
            deadline: Duration::from_millis(200),
        };
        let key = PathBuf::from("/probes/team/probe.wasm");
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let looked = {
            let started = started.clone();
            move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        };
        // A volume that does not answer (until told to).
        let (answer, hung) = std::sync::mpsc::channel::<()>();
        let hanging = {
            let started = started.clone();
            move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = hung.recv();
                Ok(())
            }
        };
        let problem = looks.look_with(key.clone(), hanging).await.unwrap_err();
        assert!(
            problem.contains("did not answer a look at /probes/team/probe.wasm within 200ms"),
            "{problem}"
        );
        // Asked again while that look hangs past its deadline: the same answer at once, and no
        // other thread behind it.
        let again = looks.look_with(key.clone(), looked.clone()).await.unwrap_err();
        assert_eq!(again, problem);
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Another location is looked at meanwhile.
        looks
            .look_with("/probes/other.wasm".into(), looked.clone())
            .await
            .unwrap();
        // Once the look returns, the location is looked at again.
        answer.send(()).unwrap();
        for _ in 0..500 {
            if lock(&looks.busy).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        looks.look_with(key.clone(), looked.clone()).await.unwrap();
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A look that panics ends too (given time to say so: a backtrace may take a while).
        let patient = FileLooks {
            busy: looks.busy.clone(),
            deadline: Duration::from_secs(60),
        };
        let problem = patient
            .look_with(key.clone(), || -> Result<(), String> { panic!("a broken look") })
            .await
            .unwrap_err();
        assert!(
            problem.contains("looking at /probes/team/probe.wasm failed"),
            "{problem}"
        );
        looks.look_with(key, looked).await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_module_file_inside_any_of_is_a_module_problem() {
        let dir = tempfile::tempdir().unwrap();
        let any_of = probe(serde_json::json!({"anyOf": [
            {"module": {"location": "nvidia-gpu"}},
            {"module": {"location": "missing.wasm"}},
        ]}));
        let registry = crate::oci::Registry::new(crate::oci::Settings::default()).unwrap();
        let looks = FileLooks::default();
        let pinned = probe(serde_json::json!({"anyOf": [
            {"module": {"location": "nvidia-gpu"}},
            {"module": {"location": "missing.wasm", "sha256": "ab".repeat(32)}},
        ]}));
        let problem = module_problem(&pinned, dir.path(), &registry, &looks).await.unwrap();
        assert!(problem.contains("cannot read probe module missing.wasm"), "{problem}");
        let problem = module_problem(&any_of, dir.path(), &registry, &looks).await.unwrap();
        assert!(problem.contains("missing.wasm has no sha256"), "{problem}");
        std::fs::write(dir.path().join("missing.wasm"), b"x").unwrap();
        assert_eq!(module_problem(&pinned, dir.path(), &registry, &looks).await, None);
        let tag_only = probe(serde_json::json!({"module": {"location": "oci://registry.example/probe:v1"}}));
        let problem = module_problem(&tag_only, dir.path(), &registry, &looks).await.unwrap();
        assert!(problem.contains("names a tag only"), "{problem}");
    }

    #[test]
    fn a_jupyter_port_id_resolves_through_the_image_in_effect() {
        let (workspace, kind) = sample();
        let jupyter = probe(serde_json::json!({"jupyter": {"lastActivity": true, "portId": "jupyterlab"}}));
        let plan = only_plan(&jupyter, &workspace, &kind).unwrap();
        assert_eq!(plan.module, Module::Builtin("jupyter".into()));
        assert_eq!(plan.ports.len(), 1);
        assert_eq!(plan.ports[0].id, "jupyterlab");
        assert_eq!(plan.ports[0].number, 8888);
        assert_eq!(plan.config["removePathPrefix"], false);
        assert_eq!(plan.deadline, Duration::from_secs(10));

        let unknown = probe(serde_json::json!({"jupyter": {"lastActivity": true, "portId": "nope"}}));
        let error = only_plan(&unknown, &workspace, &kind).unwrap_err();
        assert!(error.contains("portId \"nope\" does not resolve"), "{error}");
    }

    #[test]
    fn a_script_probe_writes_to_a_file_of_its_own_workspace_and_keeps_its_timeout() {
        let (mut workspace, kind) = sample();
        workspace.metadata.uid = Some("u-1".into());
        let exec = probe(serde_json::json!({"podExec": {"script": "#!/bin/sh\n", "timeoutSeconds": 12}}));
        let plan = only_plan(&exec, &workspace, &kind).unwrap();
        assert_eq!(plan.module, Module::Builtin("exec-script".into()));
        assert_eq!(plan.deadline, Duration::from_secs(12));
        assert_eq!(plan.config["outputPath"], "/tmp/workspace-culler-activity-u-1.json");
    }

    #[test]
    fn a_module_file_must_lie_under_the_module_directory() {
        let dir = tempfile::tempdir().unwrap();
        let probes = dir.path().join("probes");
        std::fs::create_dir(&probes).unwrap();
        std::fs::write(probes.join("mine.wasm"), b"x").unwrap();
        std::fs::write(dir.path().join("outside.wasm"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.wasm"), probes.join("link.wasm")).unwrap();
        assert!(module_path(&probes, "mine.wasm").is_ok());
        for escape in ["../outside.wasm", "link.wasm"] {
            let error = module_path(&probes, escape).unwrap_err();
            assert!(error.contains("outside the module directory"), "{escape}: {error}");
        }
        let absolute = dir.path().join("outside.wasm");
        assert!(module_path(&probes, absolute.to_str().unwrap()).is_err());
        assert!(
            module_path(&probes, "missing.wasm")
                .unwrap_err()
                .contains("cannot read")
        );
    }

    fn pod(phase: &str, owner: Option<&str>, terminating: bool) -> CachedPod {
        let mut pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ws-a-0"},
            "spec": {"containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": phase},
        }))
        .unwrap();
        pod.statefulset = owner.map(Into::into);
        if terminating {
            pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        }
        pod
    }

    #[test]
    fn only_a_running_pod_controlled_by_a_statefulset_is_a_candidate() {
        assert_eq!(pod_candidate(&pod("Running", Some("ws-a"), false)), Ok("ws-a".into()));
        assert!(
            pod_candidate(&pod("Running", None, false))
                .unwrap_err()
                .contains("not controlled")
        );
        assert!(
            pod_candidate(&pod("Pending", Some("ws-a"), false))
                .unwrap_err()
                .contains("Pending")
        );
        assert!(
            pod_candidate(&pod("Running", Some("ws-a"), true))
                .unwrap_err()
                .contains("terminating")
        );
    }

    #[test]
    fn a_memo_drops_what_was_not_used_lately_and_keeps_what_was() {
        let memo = Memo::<String, u32>::default();
        memo.insert("used".into(), 1);
        memo.insert("unused".into(), 2);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(memo.get("used"), Some(1));
        assert_eq!(memo.prune(Duration::from_millis(20)), 1);
        assert_eq!(memo.get("unused"), None);
        assert_eq!(memo.get("used"), Some(1));
    }

    /// A module file holding `contents`, in a directory that lives as long as the first value.
    fn module_file(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.wasm");
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    type Loader =
        Arc<dyn Fn(Vec<u8>) -> futures::future::BoxFuture<'static, Result<Arc<Vec<u8>>, String>> + Send + Sync>;

    /// The module at `path` once it has loaded (or failed), each load counted in `loads`.
    async fn loaded_file(
        files: &ModuleFiles<Vec<u8>>,
        path: &Path,
        pinned: Option<&str>,
        load: &Loader,
    ) -> Result<Arc<Vec<u8>>, String> {
        loop {
            let load = load.clone();
            let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
            match files.get_or_start(path, &metadata, pinned, None, move |bytes| load(bytes)) {
                Load::Done(result) => return result,
                Load::Loading(landed) => landed.await,
            }
        }
    }

    /// A loader that counts its loads in `loads` and gives the bytes read (or `failure`).
    fn counting(loads: &Arc<std::sync::atomic::AtomicUsize>, failure: Option<&str>) -> Loader {
        let (loads, failure) = (loads.clone(), failure.map(str::to_owned));
        Arc::new(move |bytes| {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let failure = failure.clone();
            Box::pin(async move { failure.map_or(Ok(Arc::new(bytes)), Err) })
        })
    }

    #[tokio::test]
    async fn an_unchanged_module_file_is_read_and_loaded_once() {
        let (_dir, path) = module_file(b"first");
        let files = ModuleFiles::<Vec<u8>>::default();
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || loads.load(std::sync::atomic::Ordering::SeqCst);
        let load = counting(&loads, None);
        assert_eq!(*loaded_file(&files, &path, Some("a"), &load).await.unwrap(), b"first");
        assert_eq!(*loaded_file(&files, &path, Some("a"), &load).await.unwrap(), b"first");
        assert_eq!(count(), 1, "read once");
        // Another pin is checked again; a replaced file is read again.
        loaded_file(&files, &path, Some("b"), &load).await.unwrap();
        assert_eq!(count(), 2);
        std::fs::write(&path, b"second, longer").unwrap();
        assert_eq!(
            *loaded_file(&files, &path, Some("b"), &load).await.unwrap(),
            b"second, longer"
        );
        assert_eq!(count(), 3);
        // A load that failed is the answer for that file until it is due to be tried again;
        // the file replaced, it is read again at once.
        std::fs::write(&path, b"third, longer still").unwrap();
        let failing = counting(&loads, Some("digest mismatch"));
        assert_eq!(
            loaded_file(&files, &path, Some("b"), &failing).await.unwrap_err(),
            "digest mismatch"
        );
        assert_eq!(
            loaded_file(&files, &path, Some("b"), &load).await.unwrap_err(),
            "digest mismatch"
        );
        assert_eq!(count(), 4);
        std::fs::write(&path, b"fourth and longest of all").unwrap();
        assert_eq!(
            *loaded_file(&files, &path, Some("b"), &load).await.unwrap(),
            b"fourth and longest of all"
        );
        assert_eq!(count(), 5);
    }

    #[tokio::test]
    async fn probes_that_want_a_module_while_it_loads_share_that_one_load_and_none_waits_for_it() {
        let memo = Memo::<String, Arc<Vec<u8>>>::default();
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || loads.load(std::sync::atomic::Ordering::SeqCst);
        // A load that lands when told to (a registry that takes its time).
        let (release, released) = tokio::sync::watch::channel(false);
        let gated = |result: Result<Arc<Vec<u8>>, String>| {
            let (loads, mut released) = (loads.clone(), released.clone());
            move || {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(async move {
                    let _ = released.wait_for(|go| *go).await;
                    result
                })
            }
        };
        // Eight probes ask while it loads: each is told at once that it is loading.
        let mut landings = Vec::new();
        for _ in 0..8 {
            match memo.get_or_start("jupyter".into(), None, gated(Ok(Arc::new(b"code".to_vec())))) {
                Load::Loading(landed) => landings.push(landed),
                Load::Done(_) => panic!("nothing is loaded yet"),
            }
        }
        assert_eq!(count(), 1, "eight probes, one load");
        // Nobody waits for it, and it lands all the same.
        drop(landings);
        release.send(true).unwrap();
        let landed = match memo.get_or_start("jupyter".into(), None, gated(Ok(Arc::new(vec![])))) {
            Load::Loading(landed) => landed,
            Load::Done(_) => panic!("still loading until its task has run"),
        };
        landed.await;
        assert!(
            matches!(memo.get_or_start("jupyter".into(), None, gated(Ok(Arc::new(vec![])))),
                         Load::Done(Ok(code)) if *code == b"code")
        );
        assert_eq!(count(), 1);

        // A failure is the answer until it is due to be tried again, then it is loaded anew.
        let failing = || gated(Err("no such probe".into()));
        let Load::Loading(landed) = memo.get_or_start("broken".into(), None, failing()) else {
            panic!("loading")
        };
        landed.await;
        for _ in 0..3 {
            assert!(
                matches!(memo.get_or_start("broken".into(), None, failing()), Load::Done(Err(e)) if e == "no such probe")
            );
        }
        assert_eq!(count(), 2);
        // (As if RETRY_FAILED_LOAD_AFTER had passed.) A probe put off before that failure
        // landed takes it as its answer however old it is (else it would be put off again for
        // a new load, and again if that one too landed long before it came back); a probe put
        // off since, or never, has it loaded anew.
        let now = std::time::Instant::now();
        let landed_long_ago = now.checked_sub(RETRY_FAILED_LOAD_AFTER).unwrap();
        let (_, long_ago) = tokio::sync::watch::channel(Some(Err((landed_long_ago, "no such probe".to_string()))));
        lock(&memo.loading.running).insert("broken".into(), long_ago);
        let put_off_before = landed_long_ago.checked_sub(Duration::from_secs(60)).unwrap();
        assert!(
            matches!(memo.get_or_start("broken".into(), Some(put_off_before), failing()),
                     Load::Done(Err(e)) if e == "no such probe")
        );
        assert_eq!(count(), 2);
        let Load::Loading(landed) = memo.get_or_start("broken".into(), None, gated(Ok(Arc::new(b"fixed".to_vec()))))
        else {
            panic!("loaded anew")
        };
        landed.await;
        assert_eq!(*memo.get("broken").unwrap(), b"fixed");
        assert_eq!(count(), 3);

        // A load whose task ended without landing (the runtime shut down) is started again.
        let (gone, abandoned) = tokio::sync::watch::channel(None);
        drop(gone);
        lock(&memo.loading.running).insert("abandoned".into(), abandoned);
        let Load::Loading(landed) = memo.get_or_start("abandoned".into(), None, gated(Ok(Arc::new(vec![])))) else {
            panic!("loaded anew")
        };
        landed.await;
        assert!(memo.get("abandoned").is_some());
        assert_eq!(count(), 4);

        // A caller that missed just before a flight landed (and the flight is gone) finds the
        // value the flight kept, and loads nothing.
        let kept = memo.loading.join_or_start(
            "late".to_string(),
            None,
            || Some(Arc::new(b"kept".to_vec())),
            gated(Ok(Arc::new(vec![]))),
            |_| {},
        );
        assert!(matches!(kept, Load::Done(Ok(v)) if *v == b"kept"));
        assert_eq!(count(), 4);

        // What a load cannot prepare (its Secret missing) is the answer at once, and not kept.
        for _ in 0..2 {
            let unprepared = memo.get_or_start("unprepared".into(), None, || {
                Err::<futures::future::Ready<Result<Arc<Vec<u8>>, String>>, _>("no Secret".to_string())
            });
            assert!(matches!(unprepared, Load::Done(Err(e)) if e == "no Secret"));
            assert!(!lock(&memo.loading.running).contains_key("unprepared"));
        }
    }

    #[test]
    fn a_statefulset_belongs_to_the_workspace_whose_uid_controls_it() {
        let sts: CachedStatefulSet = serde_json::from_value(serde_json::json!({"metadata": {"name": "ws-a",
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Workspace", "name": "a",
                                 "uid": "uid-1", "controller": true}]}}))
        .unwrap();
        assert!(owned_by_workspace(&sts, "uid-1"));
        assert!(
            !owned_by_workspace(&sts, "uid-2"),
            "a workspace re-created under the same name"
        );
    }
}
