//! The probe engine: loads probe components (pinned by sha256, compiled code
//! cached on disk), and evaluates them one fresh sandbox at a time under a
//! deadline, a memory cap and output caps. Nothing here knows Kubernetes;
//! what a probe can reach comes in through [`Capabilities`].

pub mod builtin;
pub mod cache;
pub mod capabilities;
pub use workspace_culler_contract as contract;
pub use workspace_culler_contract::ProbeOutcome;
mod state;

pub use capabilities::{
    Capabilities, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, NoCapabilities, Port, ReadMemory,
    Workspace,
};
use sha2::{Digest, Sha256};
use state::ProbeState;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

pub use state::LogLevel;

/// Bindings generated from `wit/`, the single source of the probe contract.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "activity-probe",
        imports: { default: async },
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

pub use bindings::workspace_culler::probe::types::ProbeInfo;

/// The WIT package of the probe contract.
pub const WIT_PACKAGE: &str = "workspace-culler:probe";
/// The version of the contract this host implements (`wit/probe.wit`).
pub const WIT_VERSION: &str = "0.1.0";

/// How often the epoch advances; the granularity of CPU deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Extra wall-clock time beyond a probe's deadline before the call is cut.
const WALL_CLOCK_GRACE: Duration = Duration::from_millis(500);

/// How long a probe may take to describe itself (`info`).
pub const INFO_DEADLINE: Duration = Duration::from_secs(5);

/// Caps applied to every evaluation.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory a probe may use.
    pub memory_bytes: usize,
    /// Bytes a probe may write to stdout and to stderr (each).
    pub stdio_bytes: usize,
    /// Bytes of stdout/stderr of one exec handed to the probe (each; the rest is cut).
    pub exec_output_bytes: usize,
    /// Bytes of one HTTP request or response body.
    pub http_body_bytes: usize,
    /// Lines a probe may log in one evaluation (the `log` import).
    pub log_lines: usize,
    /// Bytes a probe may log in one evaluation, all lines together.
    pub log_bytes: usize,
    /// Commands a probe may run in one evaluation.
    pub exec_calls: usize,
    /// Bytes of one command's argv and stdin together.
    pub exec_input_bytes: usize,
    /// HTTP requests a probe may send in one evaluation (so also at once).
    pub http_requests: usize,
    /// Resource handles (streams, HTTP fields and bodies, …) a probe may hold at once.
    pub resource_handles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            stdio_bytes: 1 << 20,
            exec_output_bytes: 1 << 20,
            http_body_bytes: 4 << 20,
            log_lines: 200,
            log_bytes: 64 << 10,
            exec_calls: 32,
            exec_input_bytes: 256 << 10,
            http_requests: 32,
            resource_handles: 1024,
        }
    }
}

/// How instance memory is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Pooling, falling back to on-demand if the pool cannot be reserved.
    Auto,
    /// Pooling only (fail if it cannot be reserved).
    Pooling,
    /// Allocate per instance.
    OnDemand,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Evaluations that may run at once (sizes the pool).
    pub concurrency: u32,
    /// Caps on every evaluation.
    pub limits: Limits,
    /// Where compiled components are cached (none: compile every load).
    pub cache_dir: Option<PathBuf>,
    /// The most the cache folder may hold: each write evicts the least recently used files
    /// beyond it ([`cache::bound`]).
    pub cache_max_bytes: u64,
    /// Instance allocation.
    pub allocation: Allocation,
    /// Linear memory all running evaluations may hold together (each also within
    /// `limits.memory_bytes`): bounds the process's memory whatever `concurrency` is.
    pub memory_budget_bytes: usize,
}

/// The default [`EngineConfig::memory_budget_bytes`]: four probes at their full cap.
pub const DEFAULT_MEMORY_BUDGET_BYTES: usize = 256 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            concurrency: 8,
            limits: Limits::default(),
            cache_dir: None,
            cache_max_bytes: cache::DEFAULT_CACHE_MAX_BYTES,
            allocation: Allocation::Auto,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
        }
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component's sha256 is not the pinned one.
    #[error("probe module digest mismatch: expected sha256 {expected}, the module is sha256 {actual}")]
    DigestMismatch {
        /// Pinned digest.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// Not a valid component.
    #[error("probe module is not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// It needs imports the host does not provide.
    #[error("probe module cannot be linked: {0} (probes may import only what workspace-culler:probe@0.1 provides)")]
    Link(String),
    /// It does not export the probe world.
    #[error("probe module does not implement the activity-probe world of workspace-culler:probe@0.1: {0}")]
    NotAProbe(String),
    /// It was built against a version of the contract this host does not speak.
    #[error(
        "probe module was built against {WIT_PACKAGE}@{found}, which this host cannot run: it implements \
         @{WIT_VERSION} and runs probes built against {compatible}"
    )]
    WitVersion {
        /// The contract version the component imports.
        found: String,
        /// The versions this host runs, e.g. `0.1.0`.
        compatible: String,
    },
}

/// The contract version a component was built against, from the names of
/// its imports of `workspace-culler:probe/*` (every probe imports at least
/// `types`, whose records the world's exports use).
pub fn wit_version_of(imports: &[String]) -> Option<String> {
    imports.iter().find_map(|name| {
        let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
        Some(rest.split_once('@').map(|(_, v)| v.to_string()).unwrap_or_default())
    })
}

/// Whether a probe built against contract `version` runs on this host: same
/// major version (same minor while the major is 0), and not newer than ours.
pub fn wit_version_runs_here(version: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let mut parts = v.split('-').next()?.splitn(3, '.').map(|p| p.parse::<u64>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    };
    let (Some(theirs), Some(ours)) = (parse(version), parse(WIT_VERSION)) else {
        return false;
    };
    let same_line = if ours.0 == 0 {
        (theirs.0, theirs.1) == (ours.0, ours.1)
    } else {
        theirs.0 == ours.0
    };
    same_line && theirs <= ours
}

fn compatible_range() -> String {
    let first = match WIT_VERSION.split('.').collect::<Vec<_>>().as_slice() {
        ["0", minor, _] => format!("0.{minor}.0"),
        [major, ..] => format!("{major}.0.0"),
        _ => WIT_VERSION.to_string(),
    };
    if first == WIT_VERSION {
        first
    } else {
        format!("{first} to {WIT_VERSION}")
    }
}

/// A component ready to evaluate (compiled and linked once, reused).
pub struct LoadedProbe {
    /// sha256 of the component bytes (hex).
    pub digest: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// What the component imports (instance and function names, e.g.
    /// `workspace-culler:probe/exec@0.1.0`), in its own order.
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
    /// The contract version it was built against.
    pub wit_version: Option<String>,
    pre: bindings::ActivityProbePre<ProbeState>,
}

/// One evaluation to run.
pub struct ProbeRequest {
    /// The workspace probed.
    pub workspace: Workspace,
    /// The probe's JSON config, unchanged.
    pub config: String,
    /// The whole evaluation must end within this.
    pub deadline: Duration,
    /// What the probe can reach.
    pub capabilities: Arc<dyn Capabilities>,
    /// Name used in logs (e.g. "jupyter").
    pub probe_name: String,
    /// The probe's wall clock stands still at the evaluation's start (for
    /// replaying fixtures) instead of advancing in real time.
    pub frozen_clock: bool,
}

/// The record of one evaluation.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// When it started (Unix ms, from the caller's clock).
    pub started_at_ms: i64,
    /// When it ended (start + elapsed).
    pub finished_at_ms: i64,
    /// The outcome.
    pub outcome: ProbeOutcome,
    /// The text the probe returned, if it returned any.
    pub raw_output: Option<String>,
    /// What the probe logged (log import and stderr).
    pub logs: Vec<(LogLevel, String)>,
}

/// The engine: one per process, shared by every evaluation.
pub struct ProbeEngine {
    engine: wasmtime::Engine,
    linker: Linker<ProbeState>,
    config: EngineConfig,
    pooling: bool,
    loaded: Mutex<HashMap<String, Arc<LoadedProbe>>>,
    /// Held while compiling, so a component wanted by many workspaces at once
    /// is compiled once (the others find it loaded).
    compiling: Mutex<()>,
    /// Evaluations beyond the pool's size wait here rather than fail.
    slots: tokio::sync::Semaphore,
    /// What all running evaluations' memories hold together.
    memory: Arc<state::MemoryBudget>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for ProbeEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The CPU deadline passed (raised from the epoch callback).
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn wasmtime_config(config: &EngineConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    if pooling {
        let n = config.concurrency.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * 16)
            .total_memories(n * 2)
            .total_tables(n * 16)
            .total_stacks(n)
            .max_memory_size(config.limits.memory_bytes)
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(16)
            // Reset small memories, tables and stacks in place rather than
            // through the kernel: most of the per-evaluation cost otherwise.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

impl ProbeEngine {
    /// Build the engine and its linker (once per process).
    pub fn new(config: EngineConfig) -> anyhow::Result<Self> {
        let (engine, pooling) = match config.allocation {
            Allocation::OnDemand => (
                wasmtime::Engine::new(&wasmtime_config(&config, false)).map_err(to_anyhow)?,
                false,
            ),
            Allocation::Pooling => (
                wasmtime::Engine::new(&wasmtime_config(&config, true)).map_err(to_anyhow)?,
                true,
            ),
            Allocation::Auto => match wasmtime::Engine::new(&wasmtime_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reserve the instance pool; allocating on demand");
                    (
                        wasmtime::Engine::new(&wasmtime_config(&config, false)).map_err(to_anyhow)?,
                        false,
                    )
                }
            },
        };
        let mut linker = Linker::new(&engine);
        state::add_to_linker(&mut linker)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new().name("probe-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            }
        })?;
        let slots = tokio::sync::Semaphore::new(config.concurrency.max(1) as usize);
        Ok(ProbeEngine {
            slots,
            memory: Arc::new(state::MemoryBudget::new(config.memory_budget_bytes)),
            engine,
            linker,
            config,
            pooling,
            loaded: Mutex::default(),
            compiling: Mutex::default(),
            ticker_stop,
        })
    }

    /// Linear memory the running evaluations hold now, in bytes.
    pub fn memory_in_use(&self) -> usize {
        self.memory.in_use()
    }

    /// Whether the pooling allocator is in use.
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// The Wasmtime engine evaluations run on (its configuration, pool included): what a
    /// benchmark instantiates its floor on, so the floor and an evaluation share every setting.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Load a component, checking its digest when one is pinned. Loads of the
    /// same bytes are shared.
    pub fn load(&self, bytes: &[u8], pinned_sha256: Option<&str>) -> Result<Arc<LoadedProbe>, LoadError> {
        let digest = sha256_hex(bytes);
        if let Some(expected) = pinned_sha256 {
            let expected = expected.trim().trim_start_matches("sha256:").to_ascii_lowercase();
            if expected != digest {
                return Err(LoadError::DigestMismatch {
                    expected,
                    actual: digest,
                });
            }
        }
        if let Some(probe) = self.lock_loaded().get(&digest) {
            return Ok(probe.clone());
        }
        // A panic while compiling cannot leave `()` inconsistent.
        let _compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(probe) = self.lock_loaded().get(&digest) {
            return Ok(probe.clone());
        }
        let component = self.compile(bytes, &digest)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let wit_version = wit_version_of(&imports);
        if let Some(found) = &wit_version
            && !wit_version_runs_here(found)
        {
            return Err(LoadError::WitVersion {
                found: found.clone(),
                compatible: compatible_range(),
            });
        }
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = bindings::ActivityProbePre::new(instance_pre).map_err(|e| LoadError::NotAProbe(format!("{e:#}")))?;
        let probe = Arc::new(LoadedProbe {
            digest: digest.clone(),
            size: bytes.len(),
            imports,
            exports,
            wit_version,
            pre,
        });
        self.lock_loaded().insert(digest, probe.clone());
        Ok(probe)
    }

    /// Forget every loaded component (the next load compiles or reads the disk cache).
    pub fn unload_all(&self) {
        self.lock_loaded().clear();
    }

    /// Forget the loaded components no one holds any more (a replaced module file, a pin no
    /// policy names): their compiled code is freed. Returns how many went.
    pub fn unload_unused(&self) -> usize {
        let mut loaded = self.lock_loaded();
        let before = loaded.len();
        loaded.retain(|_, probe| Arc::strong_count(probe) > 1);
        before - loaded.len()
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LoadedProbe>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key of compiled code for this engine's settings and version.
    fn compatibility_key(&self) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Compile, or load compiled code from the disk cache after verifying it.
    fn compile(&self, bytes: &[u8], digest: &str) -> Result<Component, LoadError> {
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")));
        };
        let key = format!("{digest}-{}", self.compatibility_key());
        let code_path = dir.join(format!("{key}.cwasm"));
        let sum_path = dir.join(format!("{key}.cwasm.sha256"));
        if let (Ok(code), Ok(sum)) = (std::fs::read(&code_path), std::fs::read_to_string(&sum_path)) {
            if sha256_hex(&code) == sum.trim() {
                cache::touch(&code_path);
                cache::touch(&sum_path);
                // SAFETY: the bytes were produced by `Component::serialize` of an
                // engine with the same compatibility hash (in the file name), and
                // their sha256 matches the one written beside them.
                match unsafe { Component::deserialize(&self.engine, &code) } {
                    Ok(component) => return Ok(component),
                    Err(e) => {
                        tracing::warn!(path = %code_path.display(), error = %e, "cached probe code unusable; recompiling")
                    }
                }
            } else {
                tracing::warn!(path = %code_path.display(), "cached probe code does not match its checksum; recompiling");
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        match write_cache(dir, &code_path, &sum_path, &component) {
            Ok(()) => {
                cache::bound(dir, self.config.cache_max_bytes, &[&code_path, &sum_path]);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot cache compiled probe code"),
        }
        Ok(component)
    }

    /// Ask a probe to describe itself, within [`INFO_DEADLINE`] (its own code and any host
    /// call it waits in).
    pub async fn info(&self, probe: &LoadedProbe) -> anyhow::Result<ProbeInfo> {
        let _slot = self.slots.acquire().await.ok();
        let deadline_at = Instant::now() + INFO_DEADLINE;
        let state = ProbeState::new(
            &self.config.limits,
            self.memory.clone(),
            Workspace::empty(),
            Arc::new(NoCapabilities),
            deadline_at,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            false,
        );
        let mut store = self.store(state, deadline_at);
        let call = async {
            let instance = probe.pre.instantiate_async(&mut store).await.map_err(to_anyhow)?;
            instance.call_info(&mut store).await.map_err(to_anyhow)
        };
        tokio::time::timeout(INFO_DEADLINE + WALL_CLOCK_GRACE, call)
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the probe did not describe itself within {} s (its info waited on the host)",
                    INFO_DEADLINE.as_secs()
                ))
            })
    }

    fn store(&self, state: ProbeState, deadline_at: Instant) -> Store<ProbeState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s.memory_cap());
        store.set_epoch_deadline(1);
        // Each tick yields to the runtime (so one busy probe cannot starve
        // others) and traps once the deadline has passed.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline_at {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Evaluate a probe once, in a fresh sandbox. `now_ms` is the caller's
    /// clock (Unix ms) at this call; the wait for a free slot counts as time passed.
    /// Never panics on anything the probe does.
    pub async fn evaluate(&self, probe: &LoadedProbe, request: ProbeRequest, now_ms: i64) -> Evaluation {
        let span = tracing::info_span!(
            "probe",
            namespace = %request.workspace.namespace,
            name = %request.workspace.name,
            probe = %request.probe_name,
        );
        self.evaluate_in_span(probe, request, now_ms).instrument(span).await
    }

    async fn evaluate_in_span(&self, probe: &LoadedProbe, request: ProbeRequest, now_ms: i64) -> Evaluation {
        let entered = Instant::now();
        // The semaphore is never closed, so acquiring cannot fail.
        let _slot = self.slots.acquire().await.ok();
        let started = Instant::now();
        // The caller's clock runs on while the evaluation waits for a slot: the probe's clock,
        // the end it is judged by and the end recorded count that wait (a frozen clock, a
        // fixture's, does not).
        let origin = if request.frozen_clock { started } else { entered };
        let clock_ms =
            |at: Instant| now_ms.saturating_add(i64::try_from((at - origin).as_millis()).unwrap_or(i64::MAX));
        let deadline_at = started + request.deadline;
        let deadline_ms = request.deadline.as_millis();
        let state = ProbeState::new(
            &self.config.limits,
            self.memory.clone(),
            request.workspace.clone(),
            request.capabilities.clone(),
            deadline_at,
            clock_ms(started),
            request.frozen_clock,
        );
        let mut store = self.store(state, deadline_at);
        let call = async {
            let instance = probe.pre.instantiate_async(&mut store).await?;
            instance
                .call_probe(&mut store, &request.workspace, &request.config)
                .await
        };
        let result = tokio::time::timeout(request.deadline + WALL_CLOCK_GRACE, call).await;

        let state = store.data();
        let mut raw_output = None;
        let outcome = match result {
            Err(_elapsed) => ProbeOutcome::Timeout(format!(
                "probe did not finish within its deadline of {deadline_ms}ms (stopped while waiting on the host)"
            )),
            Ok(Err(e)) if is_deadline(&e) => ProbeOutcome::Timeout(format!(
                "probe ran past its deadline of {deadline_ms}ms and was stopped"
            )),
            Ok(Err(e)) => ProbeOutcome::Failure(state.describe_trap(&e)),
            Ok(Ok(Err(bindings::workspace_culler::probe::types::ProbeError::Failure(m)))) => {
                ProbeOutcome::Failure(state::one_line(&m))
            }
            Ok(Ok(Err(bindings::workspace_culler::probe::types::ProbeError::Timeout(m)))) => {
                ProbeOutcome::Timeout(state::one_line(&m))
            }
            Ok(Ok(Ok(text))) => {
                let ended_ms = clock_ms(Instant::now());
                let outcome = match contract::validate(&text, ended_ms) {
                    Ok(activity) => ProbeOutcome::Success(activity),
                    Err(e) => ProbeOutcome::Failure(format!("invalid probe result: {e}")),
                };
                if text.len() <= contract::MAX_RESULT_BYTES {
                    raw_output = Some(text);
                }
                outcome
            }
        };
        let outcome = match (outcome, state.stdio_overflow(), state.cap_exceeded()) {
            // A probe that ran into a cap fails for that reason, whatever it
            // returned, and even if it then looped on until its deadline.
            (_, _, Some(cap)) => ProbeOutcome::Failure(cap),
            (ProbeOutcome::Failure(_), Some(overflow), _) => ProbeOutcome::Failure(overflow),
            (outcome, _, _) => outcome,
        };
        let logs = state.finish_logs();
        let finished_at_ms = clock_ms(Instant::now());
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match &outcome {
            ProbeOutcome::Success(activity) => tracing::debug!(%activity, elapsed_ms = elapsed, "probe succeeded"),
            ProbeOutcome::Failure(m) | ProbeOutcome::Timeout(m) => {
                tracing::info!(result = outcome.result(), message = %m, elapsed_ms = elapsed, "probe did not succeed")
            }
        }
        Evaluation {
            started_at_ms: now_ms,
            finished_at_ms,
            outcome,
            raw_output,
            logs,
        }
    }
}

fn is_deadline(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<DeadlineExceeded>().is_some()
        || matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt))
}

fn to_anyhow(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn write_cache(
    dir: &std::path::Path,
    code_path: &PathBuf,
    sum_path: &PathBuf,
    component: &Component,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let code = component.serialize().map_err(to_anyhow)?;
    // Write to temporary names and rename, so a reader never sees half a file.
    let tmp_code = code_path.with_extension(format!("tmp{}", std::process::id()));
    let tmp_sum = sum_path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp_code, &code)
        .and_then(|()| std::fs::write(&tmp_sum, sha256_hex(&code)))
        .and_then(|()| std::fs::rename(&tmp_code, code_path))
        .and_then(|()| std::fs::rename(&tmp_sum, sum_path));
    if written.is_err() {
        // A full disk, say: what was written would only take room from the cache's bound.
        let _ = std::fs::remove_file(&tmp_code);
        let _ = std::fs::remove_file(&tmp_sum);
    }
    Ok(written?)
}

/// Where what a probe declares it uses (`info().capabilities`) and what it
/// imports disagree: a contract mistake worth a warning, not a refusal.
pub fn capability_warnings(declared: &[String], imports: &[String]) -> Vec<String> {
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

/// Where compiled components are cached when no folder is given:
/// `$XDG_CACHE_HOME/workspace-culler`, else `~/.cache/workspace-culler`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("workspace-culler"))
}

impl Workspace {
    /// A workspace with no identity (for calls that probe nothing).
    pub fn empty() -> Self {
        Workspace {
            namespace: String::new(),
            name: String::new(),
            pod_name: String::new(),
            pod_ip: String::new(),
            container: String::new(),
            ports: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_constant_is_the_wit_file_s() {
        let wit = include_str!("../../../wit/probe.wit");
        assert!(wit.contains(&format!("package {WIT_PACKAGE}@{WIT_VERSION};")));
    }

    #[test]
    fn the_contract_version_comes_from_the_package_s_imports() {
        let imports = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let probe = imports(&[
            "wasi:io/streams@0.2.12",
            "workspace-culler:probe/types@0.1.0",
            "workspace-culler:probe/exec@0.1.0",
        ]);
        assert_eq!(wit_version_of(&probe).as_deref(), Some("0.1.0"));
        assert_eq!(wit_version_of(&imports(&["wasi:cli/stdout@0.2.0"])), None);
        assert_eq!(
            wit_version_of(&imports(&["workspace-culler:probe-extra/x@9.0.0"])),
            None
        );
    }

    #[test]
    fn probes_of_the_same_minor_line_and_not_newer_run_here() {
        assert!(wit_version_runs_here(WIT_VERSION));
        assert!(!wit_version_runs_here("0.2.0"));
        assert!(!wit_version_runs_here("0.0.9"));
        assert!(!wit_version_runs_here("1.1.0"));
        assert!(!wit_version_runs_here("0.1.99"));
        assert!(!wit_version_runs_here("not-a-version"));
        assert!(!wit_version_runs_here(""));
    }
}
