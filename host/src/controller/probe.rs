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
    /// A component file under the module directory.
    File(PathBuf),
    /// An artifact in an OCI registry, pinned.
    Oci(crate::oci::Location),
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
            Module::File(path) => path
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
                    let path = module_path(module_dir, location)?;
                    if let Some(problem) = unpinned_file(module) {
                        return Err(problem);
                    }
                    Module::File(path)
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
pub fn module_problem(probe: &ActivityProbe, module_dir: &Path, registry: &crate::oci::Registry) -> Option<String> {
    probe
        .modules()
        .filter(|module| workspace_culler_engine::builtin::builtin(&module.location).is_none())
        .find_map(|module| {
            if crate::oci::is_oci(&module.location) {
                return crate::oci::parse(&module.location, module.sha256.as_deref())
                    .err()
                    .or_else(|| registry.problem(&module.location, module.sha256.as_deref()));
            }
            let path = match module_path(module_dir, &module.location) {
                Ok(path) => path,
                Err(problem) => return Some(problem),
            };
            std::fs::metadata(&path)
                .map_err(|e| format!("cannot read probe module {}: {e}", path.display()))
                .and_then(|metadata| usable_module_file(&path, &metadata))
                .err()
                .or_else(|| unpinned_file(module))
        })
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
    /// The key of the file at `path` as it is now.
    async fn of(path: &Path, pinned: Option<&str>) -> Result<FileKey, String> {
        let metadata = tokio::fs::metadata(path)
            .await
            .map_err(|e| format!("cannot read probe module {}: {e}", path.display()))?;
        Ok(FileKey {
            path: path.to_owned(),
            size: metadata.len(),
            modified: metadata.modified().ok(),
            pinned: pinned.map(str::to_owned),
        })
    }
}

/// Loaded module files by [`FileKey`]: a file that has not changed is neither read nor hashed
/// again (JavaScript and Python components are tens of MB). A replaced file has a new size or
/// time and is read, hashed and checked against its pin again. Only the latest version of each
/// path is kept.
pub struct ModuleFiles<T> {
    loaded: Memo<PathBuf, (FileKey, Arc<T>)>,
    loading: Flights<FileKey, Arc<T>>,
}

impl<T> Default for ModuleFiles<T> {
    fn default() -> Self {
        ModuleFiles {
            loaded: Memo::default(),
            loading: Flights::default(),
        }
    }
}

/// Loads in progress, by key: the callers that want the same module while it loads share that
/// one load and its result, failure included. Without it, the first round after a start loads
/// (or compiles, or pulls) a module once per probe in flight, and holds as many copies.
pub struct Flights<K, V> {
    running: std::sync::Mutex<std::collections::HashMap<K, Arc<Flight<V>>>>,
}

/// One load, and its result once it has landed.
type Flight<V> = tokio::sync::OnceCell<Result<V, String>>;

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            running: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// `load`'s result, or that of the load of `key` already running. A caller after the
    /// flight has landed starts a new one (a failed load is tried again then).
    pub async fn run<F, Fut>(&self, key: K, load: F) -> Result<V, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, String>>,
    {
        let flight = lock(&self.running).entry(key.clone()).or_default().clone();
        let result = flight.get_or_init(load).await.clone();
        let mut running = lock(&self.running);
        if running.get(&key).is_some_and(|current| Arc::ptr_eq(current, &flight)) {
            running.remove(&key);
        }
        result
    }
}

/// Values by key, each with when it was last used, so what has not been used for a while can
/// be dropped ([`Memo::prune`]): a module no policy names any more does not stay loaded.
pub struct Memo<K, V> {
    entries: std::sync::Mutex<std::collections::HashMap<K, (std::time::Instant, V)>>,
    loading: Flights<K, V>,
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

    /// The value for `key`, loaded by `load` and kept unless it is kept already or being
    /// loaded (then that load's result). A failed load is not kept.
    pub async fn get_or_load<F, Fut>(&self, key: K, load: F) -> Result<V, String>
    where
        K: Clone,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, String>>,
    {
        match self.get(&key) {
            Some(value) => Ok(value),
            None => self.load_unless_kept(key, load).await,
        }
    }

    /// `load`'s result in a flight of its own or the one running, unless the value is kept by
    /// the time the flight starts: a flight that landed between a caller's miss and its
    /// joining has kept its value and is gone, and must not be followed by a second load.
    async fn load_unless_kept<F, Fut>(&self, key: K, load: F) -> Result<V, String>
    where
        K: Clone,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, String>>,
    {
        self.loading
            .run(key.clone(), || async {
                if let Some(value) = self.get(&key) {
                    return Ok(value);
                }
                let value = load().await?;
                self.insert(key, value.clone());
                Ok(value)
            })
            .await
    }

    /// Drop what has not been used for `unused_for`; returns how many.
    pub fn prune(&self, unused_for: Duration) -> usize {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|_, (used, _)| used.elapsed() < unused_for);
        before - entries.len()
    }
}

impl<T> ModuleFiles<T> {
    /// The module at `path` (pinned to `pinned`), loaded by `load` from its bytes unless the
    /// same file was loaded before.
    pub async fn get_or_load<F, Fut>(&self, path: &Path, pinned: Option<&str>, load: F) -> Result<Arc<T>, String>
    where
        F: FnOnce(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<T>, String>>,
    {
        let key = FileKey::of(path, pinned).await?;
        match self.kept(&key) {
            Some(loaded) => Ok(loaded),
            None => self.load_unless_kept(key, load).await,
        }
    }

    /// What is kept for the file `key` names, if it is still that file.
    fn kept(&self, key: &FileKey) -> Option<Arc<T>> {
        self.loaded.get(&key.path).filter(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The file `key` names, read and loaded in a flight of its own or the one running, unless
    /// it is kept by the time the flight starts (a flight that landed since the caller's miss).
    async fn load_unless_kept<F, Fut>(&self, key: FileKey, load: F) -> Result<Arc<T>, String>
    where
        F: FnOnce(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<T>, String>>,
    {
        self.loading
            .run(key.clone(), || async {
                if let Some(loaded) = self.kept(&key) {
                    return Ok(loaded);
                }
                let loaded = load(read_module(&key.path).await?).await?;
                self.loaded.insert(key.path.clone(), (key, loaded.clone()));
                Ok(loaded)
            })
            .await
    }

    /// Drop the files not used for `unused_for`; returns how many.
    pub fn prune(&self, unused_for: Duration) -> usize {
        self.loaded.prune(unused_for)
    }
}

async fn load(ctx: &Context, prober: &EngineProber, plan: &Plan) -> Result<Arc<LoadedProbe>, String> {
    let engine = &prober.engine;
    let compile = |bytes: Vec<u8>| {
        // Compiling a large component (an interpreter inside) takes seconds of CPU: off the
        // async workers, so other workspaces' probes go on meanwhile.
        let engine = engine.clone();
        let pinned = plan.sha256.clone();
        async move {
            tokio::task::spawn_blocking(move || engine.load(&bytes, pinned.as_deref()))
                .await
                .map_err(|e| format!("loading the probe module failed: {e}"))?
                .map_err(|e| e.to_string())
        }
    };
    match &plan.module {
        Module::Builtin(name) => {
            prober
                .builtins
                .get_or_load(name.clone(), || async {
                    let component = workspace_culler_engine::builtin::builtin(name)
                        .ok_or_else(|| format!("no built-in probe named {name:?}"))?
                        .component
                        .to_vec();
                    compile(component).await
                })
                .await
        }
        Module::File(path) => prober.files.get_or_load(path, plan.sha256.as_deref(), compile).await,
        Module::Oci(location) => {
            // A pinned artifact never changes: pulled (or read from the disk cache) and
            // compiled once per process.
            let key = format!("{}#{}", location.text, plan.sha256.as_deref().unwrap_or_default());
            prober
                .pulled
                .get_or_load(key, || async {
                    let auth = match &plan.pull_secret {
                        Some(name) => registry_auth(ctx, name, location.reference.registry())?,
                        None => oci_client::secrets::RegistryAuth::Anonymous,
                    };
                    let fetched = ctx.settings.registry.fetch(location, &auth).await?;
                    if fetched.pulled {
                        tracing::info!(location = %location.text, sha256 = %fetched.sha256, "pulled a probe module");
                    }
                    compile(fetched.bytes).await
                })
                .await
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
    ) -> ProbeRun;
}

/// Probes through the Wasm engine, with the workspace's pod as its capabilities.
pub struct EngineProber {
    engine: Arc<ProbeEngine>,
    files: ModuleFiles<LoadedProbe>,
    /// `oci://` modules loaded, by location and pin.
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
    /// Probes evaluated by `engine`.
    pub fn new(engine: Arc<ProbeEngine>) -> EngineProber {
        EngineProber {
            engine,
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
    ) -> ProbeRun {
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
            (Err(message), _) | (_, Err(message)) => return failed(message),
        };
        let runs = futures::future::join_all(planned.into_iter().map(|(name, plan)| {
            let pod = &pod;
            async move {
                let run = match plan {
                    Ok(plan) => evaluate(ctx, self, plan, workspace, pod, start_ms).await,
                    Err(message) => Err(message),
                };
                (name, run.unwrap_or_else(failed))
            }
        }))
        .await;
        if probe.any_of.is_none() {
            return runs
                .into_iter()
                .next()
                .map_or_else(|| failed("no probe to run".into()), |(_, run)| run);
        }
        ProbeRun {
            start_ms: runs.iter().map(|(_, r)| r.start_ms).min().unwrap_or(start_ms),
            end_ms: runs.iter().map(|(_, r)| r.end_ms).max().unwrap_or(start_ms),
            outcome: workspace_culler_engine::contract::any_of(runs.into_iter().map(|(name, r)| (name, r.outcome))),
        }
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

/// Runs one planned probe against `pod`.
async fn evaluate(
    ctx: &Context,
    prober: &EngineProber,
    mut plan: Plan,
    workspace: &Workspace,
    pod: &CachedPod,
    start_ms: i64,
) -> Result<ProbeRun, String> {
    let namespace = workspace.namespace().unwrap_or_default();
    if let Some(secret) = &plan.token_secret {
        plan.config["token"] = read_secret(ctx, secret)?.into();
    }
    let loaded = load(ctx, prober, &plan).await?;
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
    // The clock read again: loading (a compile, a pull) may have taken a while since the
    // probe started, and the probe's end and its clock are now, not then.
    let evaluation = prober.engine.evaluate(&loaded, request, (ctx.clock)()).await;
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

    #[test]
    fn a_bad_module_file_inside_any_of_is_a_module_problem() {
        let dir = tempfile::tempdir().unwrap();
        let any_of = probe(serde_json::json!({"anyOf": [
            {"module": {"location": "nvidia-gpu"}},
            {"module": {"location": "missing.wasm"}},
        ]}));
        let registry = crate::oci::Registry::new(crate::oci::Settings::default()).unwrap();
        let problem = module_problem(&any_of, dir.path(), &registry).unwrap();
        assert!(problem.contains("missing.wasm"), "{problem}");
        std::fs::write(dir.path().join("missing.wasm"), b"x").unwrap();
        let problem = module_problem(&any_of, dir.path(), &registry).unwrap();
        assert!(problem.contains("missing.wasm has no sha256"), "{problem}");
        let pinned = probe(serde_json::json!({"anyOf": [
            {"module": {"location": "nvidia-gpu"}},
            {"module": {"location": "missing.wasm", "sha256": "ab".repeat(32)}},
        ]}));
        assert_eq!(module_problem(&pinned, dir.path(), &registry), None);
        let tag_only = probe(serde_json::json!({"module": {"location": "oci://registry.example/probe:v1"}}));
        let problem = module_problem(&tag_only, dir.path(), &registry).unwrap();
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

    #[tokio::test]
    async fn an_unchanged_module_file_is_read_and_loaded_once() {
        let (_dir, path) = module_file(b"first");
        let files = ModuleFiles::<Vec<u8>>::default();
        let loads = std::sync::atomic::AtomicUsize::new(0);
        let load = |bytes: Vec<u8>| {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(Arc::new(bytes)) }
        };
        assert_eq!(*files.get_or_load(&path, Some("a"), load).await.unwrap(), b"first");
        assert_eq!(*files.get_or_load(&path, Some("a"), load).await.unwrap(), b"first");
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1, "read once");
        // Another pin is checked again; a replaced file is read again.
        files.get_or_load(&path, Some("b"), load).await.unwrap();
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 2);
        std::fs::write(&path, b"second, longer").unwrap();
        assert_eq!(
            *files.get_or_load(&path, Some("b"), load).await.unwrap(),
            b"second, longer"
        );
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A load that fails is not kept.
        let failing = |_: Vec<u8>| async { Err::<Arc<Vec<u8>>, String>("digest mismatch".into()) };
        std::fs::write(&path, b"third, longer still").unwrap();
        assert!(files.get_or_load(&path, Some("b"), failing).await.is_err());
        assert_eq!(
            *files.get_or_load(&path, Some("b"), load).await.unwrap(),
            b"third, longer still"
        );
    }

    #[tokio::test]
    async fn probes_that_want_a_module_while_it_loads_share_that_one_load() {
        let (_dir, path) = module_file(b"module");
        let files = ModuleFiles::<Vec<u8>>::default();
        let memo = Memo::<String, Arc<Vec<u8>>>::default();
        let loads = std::sync::atomic::AtomicUsize::new(0);
        let slow = |result: Result<Arc<Vec<u8>>, String>| {
            let loads = &loads;
            async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                result
            }
        };
        let loads_now = || loads.load(std::sync::atomic::Ordering::SeqCst);

        let from_file = (0..8).map(|_| files.get_or_load(&path, None, |bytes| slow(Ok(Arc::new(bytes)))));
        for loaded in futures::future::join_all(from_file).await {
            assert_eq!(*loaded.unwrap(), b"module");
        }
        assert_eq!(loads_now(), 1, "eight probes, one load of the file");
        // A caller that missed just before that flight landed (and the flight is gone) finds
        // the module it kept, and reads and loads nothing.
        let key = FileKey::of(&path, None).await.unwrap();
        let again = files.load_unless_kept(key, |_| slow(Ok(Arc::new(b"again".to_vec()))));
        assert_eq!(*again.await.unwrap(), b"module");
        assert_eq!(loads_now(), 1);

        let by_name = (0..8).map(|_| memo.get_or_load("jupyter".into(), || slow(Ok(Arc::new(b"code".to_vec())))));
        assert!(futures::future::join_all(by_name).await.iter().all(Result::is_ok));
        assert_eq!(loads_now(), 2, "eight probes, one load by name");

        // A failure is shared by that flight, not kept: the next probe loads again.
        let failing = (0..8).map(|_| memo.get_or_load("broken".into(), || slow(Err("no such probe".into()))));
        for failed in futures::future::join_all(failing).await {
            assert_eq!(failed.unwrap_err(), "no such probe");
        }
        assert_eq!(loads_now(), 3);
        memo.get_or_load("broken".into(), || slow(Ok(Arc::new(vec![]))))
            .await
            .unwrap();
        assert_eq!(loads_now(), 4);

        // A caller that missed just before a flight landed (and the flight is gone) finds the
        // value the flight kept, and loads nothing.
        memo.load_unless_kept("jupyter".into(), || slow(Ok(Arc::new(b"again".to_vec()))))
            .await
            .unwrap();
        assert_eq!(loads_now(), 4);
        assert_eq!(*memo.get(&"jupyter".to_string()).unwrap(), b"code");
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
