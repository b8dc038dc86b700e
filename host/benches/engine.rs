//! Engine overhead per evaluation (fresh Store + instantiate + call +
//! validate) with pooling and on-demand allocation, and cold start from the
//! on-disk cache vs compiling. Run: `cargo bench -p workspace-culler --bench engine`.
//!
//! Criterion reports each case; the summary at the end measures the cases
//! side by side in one run and prints their p50s and ratios against the goals of
//! docs/performance.md: an evaluation against the floor (a component exporting one
//! no-op, instantiated from its `InstancePre` into a fresh Store of the same engine,
//! pool included), a minimal probe's evaluation (the engine's own work), the built-in
//! Jupyter probe as a component against the same Rust code compiled natively (both making
//! their real HTTP calls to a loopback server, and again with the HTTP answered
//! in-process, the CPU's caches warm and swept, to show where the difference between them
//! goes), loading from the cache against compiling, and evaluations per second on every
//! core.

use async_trait::async_trait;
use criterion::{Criterion, criterion_group};
use probe_sdk::Probe;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use workspace_culler_engine::builtin::builtin;
use workspace_culler_engine::{
    Allocation, Capabilities, EngineConfig, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, LoadedProbe,
    Port, ProbeEngine, ProbeOutcome, ProbeRequest, Workspace,
};

// The controller's allocator and settings: the evaluations measured here allocate as they do
// in the controller.
#[path = "../src/allocator.rs"]
mod allocator;

/// Answers exec instantly, so only the engine's own work is measured.
struct Instant0;

#[async_trait]
impl Capabilities for Instant0 {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        Ok(ExecOutput {
            exit_code: 0,
            stdout: br#"{"has_activity": true}"#.to_vec(),
            stderr: Vec::new(),
        })
    }
    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        Err("no HTTP in this benchmark".into())
    }
}

fn request(capabilities: Arc<dyn Capabilities>) -> ProbeRequest {
    ProbeRequest {
        workspace: Workspace {
            namespace: "ns".into(),
            name: "ws".into(),
            pod_name: "ws-0".into(),
            pod_ip: "10.0.0.7".into(),
            container: "main".into(),
            ports: vec![Port {
                id: "http".into(),
                number: 8888,
            }],
        },
        config: r##"{"script":"#!/bin/sh\necho '{\"has_activity\":true}' > $OUTPUT_JSON_PATH","timeoutSeconds":10}"##
            .into(),
        deadline: Duration::from_secs(15),
        capabilities,
        probe_name: "exec-script".into(),
        frozen_clock: false,
    }
}

fn exec_script() -> &'static [u8] {
    builtin("exec-script").expect("built-in exec-script").component
}

fn engine(allocation: Allocation, cache_dir: Option<std::path::PathBuf>) -> ProbeEngine {
    ProbeEngine::new(EngineConfig {
        concurrency: 4,
        allocation,
        cache_dir,
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn evaluate_once(
    rt: &tokio::runtime::Runtime,
    engine: &ProbeEngine,
    probe: &LoadedProbe,
    caps: &Arc<dyn Capabilities>,
) {
    let evaluation = rt.block_on(engine.evaluate(probe, request(caps.clone()), 1_795_951_704_000));
    assert!(
        matches!(evaluation.outcome, ProbeOutcome::Success(_)),
        "{:?}",
        evaluation.outcome
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn per_evaluation(c: &mut Criterion) {
    let rt = runtime();
    let caps: Arc<dyn Capabilities> = Arc::new(Instant0);
    let mut group = c.benchmark_group("evaluate exec-script");
    for (label, allocation) in [("pooling", Allocation::Pooling), ("on-demand", Allocation::OnDemand)] {
        let engine = engine(allocation, None);
        let probe = engine.load(exec_script(), None).expect("load");
        group.bench_function(label, |b| b.iter(|| evaluate_once(&rt, &engine, &probe, &caps)));
    }
    group.finish();
}

fn cold_start(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cached = engine(Allocation::OnDemand, Some(dir.path().to_path_buf()));
    cached.load(exec_script(), None).expect("fill the cache");
    let uncached = engine(Allocation::OnDemand, None);
    let mut group = c.benchmark_group("load exec-script");
    group.sample_size(10);
    group.bench_function("from disk cache", |b| {
        b.iter(|| {
            cached.unload_all();
            cached.load(exec_script(), None).expect("load")
        })
    });
    group.bench_function("compile", |b| {
        b.iter(|| {
            uncached.unload_all();
            uncached.load(exec_script(), None).expect("load")
        })
    });
    group.finish();
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_n(n: usize, mut f: impl FnMut()) -> Duration {
    p50((0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect())
}

/// A component exporting one function that does nothing: the floor of any evaluation.
const FLOOR_WAT: &str = r#"(component
  (core module $m (func (export "noop")))
  (core instance $i (instantiate $m))
  (func (export "noop") (canon lift (core func $i "noop"))))"#;

/// The smallest probe the contract allows: no imports, one page of memory, a fixed reply
/// (`{"has_activity":true}`). Evaluated by the engine like any probe, it shows the engine's own
/// work (sandbox state, instantiation, the call's arguments and result, validation) without
/// a real component's weight (its WASI imports, memory image and code). Its types are copied
/// from wit/probe.wit by hand, as WAT must: `load` type-checks the exports against the
/// contract, so a change there fails the bench rather than measuring the wrong thing.
const MINIMAL_PROBE_WAT: &str = r#"(component
  (type $port' (record (field "id" string) (field "number" u16)))
  (export $port "port" (type $port'))
  (type $workspace' (record
    (field "namespace" string) (field "name" string) (field "pod-name" string)
    (field "pod-ip" string) (field "container" string) (field "ports" (list $port))))
  (export $workspace "workspace" (type $workspace'))
  (type $probe-error' (variant (case "failure" string) (case "timeout" string)))
  (export $probe-error "probe-error" (type $probe-error'))
  (type $probe-info' (record
    (field "name" string) (field "version" string) (field "description" string)
    (field "capabilities" (list string))))
  (export $probe-info "probe-info" (type $probe-info'))
  (core module $m
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    ;; A bump allocator: a fresh instance per evaluation frees everything at once.
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at
        (i32.and
          (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $at) (local.get 3)))
      (local.get $at))
    ;; Ok("{\"has_activity\":true}"), laid out at 64: discriminant, pointer, length.
    (func (export "probe")
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (i32.const 64))
    (func (export "info") (result i32) (i32.const 128))
    (data (i32.const 64) "\00\00\00\00\00\02\00\00\15\00\00\00")
    (data (i32.const 128) "\00\03\00\00\07\00\00\00\10\03\00\00\05\00\00\00\20\03\00\00\0f\00\00\00\00\00\00\00\00\00\00\00")
    (data (i32.const 512) "{\"has_activity\":true}")
    (data (i32.const 768) "minimal")
    (data (i32.const 784) "0.1.0")
    (data (i32.const 800) "answers at once"))
  (core instance $i (instantiate $m))
  (func (export "info") (result $probe-info)
    (canon lift (core func $i "info") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
  (func (export "probe")
    (param "workspace" $workspace) (param "config" string)
    (result (result string (error $probe-error)))
    (canon lift (core func $i "probe") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
)"#;

/// The floor, prepared once: instantiated into a fresh Store and called per run.
struct Floor {
    engine: wasmtime::Engine,
    pre: wasmtime::component::InstancePre<()>,
}

impl Floor {
    fn new(engine: &ProbeEngine) -> Floor {
        let engine = engine.wasmtime().clone();
        let component = wasmtime::component::Component::new(&engine, FLOOR_WAT).expect("the floor compiles");
        let pre = wasmtime::component::Linker::<()>::new(&engine)
            .instantiate_pre(&component)
            .expect("the floor links");
        Floor { engine, pre }
    }

    async fn run(&self) {
        let mut store = wasmtime::Store::new(&self.engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = self.pre.instantiate_async(&mut store).await.expect("instantiate");
        let noop = instance
            .get_typed_func::<(), ()>(&mut store, "noop")
            .expect("the floor exports noop");
        noop.call_async(&mut store, ()).await.expect("noop");
    }
}

/// A Jupyter server on loopback that answers at once, one connection per request: the native
/// and the Wasm probe both connect once per call, so they differ only in where the code runs.
fn jupyter_on_loopback() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let body = jupyter_body(&String::from_utf8_lossy(&request));
            let _ = write!(
                socket,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// What the Jupyter stand-ins answer a request whose URL (or raw request) this is.
fn jupyter_body(request: &str) -> &'static str {
    if request.contains("api/status") {
        r#"{"started":"2026-01-01T00:00:00Z","last_activity":"2026-01-01T00:00:00Z","connections":0,"kernels":0}"#
    } else {
        "[]"
    }
}

/// Where the Jupyter probe's HTTP calls are answered.
#[derive(Clone, Copy)]
enum Replies {
    /// By the server on loopback (`jupyter_on_loopback`), over a new connection each.
    Loopback,
    /// In-process, at once: the probe's own work without a socket.
    AtOnce,
    /// In-process, after writing over 2 MiB of memory (a core's L2 cache here), so the probe's
    /// code and data must come back from L3, as they may after a socket's system calls.
    Swept,
}

/// The Jupyter probe's HTTP, for the native probe and the component alike; the time the
/// sweeps take adds up in `swept`, to be left out.
struct JupyterHttp {
    replies: Replies,
    swept: AtomicU64,
}

impl JupyterHttp {
    fn new(replies: Replies) -> Arc<Self> {
        Arc::new(JupyterHttp {
            replies,
            swept: AtomicU64::new(0),
        })
    }

    fn answer(&self, url: &str) -> (u16, Vec<u8>) {
        match self.replies {
            Replies::Loopback => return loopback_get(url),
            Replies::AtOnce => {}
            Replies::Swept => {
                let started = Instant::now();
                sweep_caches();
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.swept.fetch_add(nanos, Ordering::Relaxed);
            }
        }
        (200, jupyter_body(url).as_bytes().to_vec())
    }

    /// The time `f` took, the sweeps it made left out.
    fn time(&self, f: impl FnOnce()) -> Duration {
        let before = self.swept.load(Ordering::Relaxed);
        let started = Instant::now();
        f();
        let elapsed = started.elapsed();
        elapsed.saturating_sub(Duration::from_nanos(self.swept.load(Ordering::Relaxed) - before))
    }
}

/// Writes one byte in every cache line of 2 MiB.
fn sweep_caches() {
    thread_local!(static MEMORY: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![1; 2 << 20]));
    MEMORY.with_borrow_mut(|memory| {
        for line in memory.iter_mut().step_by(64) {
            *line = line.wrapping_add(1);
        }
        std::hint::black_box(memory);
    });
}

impl probe_sdk::Host for JupyterHttp {
    fn exec(&self, _: &probe_sdk::Command) -> Result<probe_sdk::ExecOutput, probe_sdk::ExecError> {
        Err(probe_sdk::ExecError::Refused("no exec here".into()))
    }
    fn http(&self, request: &probe_sdk::HttpRequest) -> Result<probe_sdk::HttpResponse, probe_sdk::HttpError> {
        let (status, body) = self.answer(&request.url);
        Ok(probe_sdk::HttpResponse { status, body })
    }
    fn log(&self, _: probe_sdk::LogLevel, _: &str) {}
}

#[async_trait]
impl Capabilities for JupyterHttp {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        Err(ExecError::Refused("no exec here".into()))
    }
    async fn http(&self, _: &Workspace, request: HttpRequest) -> Result<HttpResponse, String> {
        let (status, body) = self.answer(&request.uri.to_string());
        Ok(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        })
    }
}

/// One HTTP/1.1 GET over a new loopback connection: what both the native and the Wasm
/// Jupyter probe call, so they differ only in where the probe's code runs.
fn loopback_get(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut socket = std::net::TcpStream::connect(authority).expect("connect");
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = Vec::new();
    socket.read_to_end(&mut response).expect("receive");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a header");
    let status = String::from_utf8_lossy(&response[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, response[split + 4..].to_vec())
}

const JUPYTER_CONFIG: &str = r#"{"portId":"jupyterlab","removePathPrefix":true}"#;

fn jupyter_workspace(port: u16) -> Workspace {
    Workspace {
        namespace: "ns".into(),
        name: "ws".into(),
        pod_name: "ws-0".into(),
        pod_ip: "127.0.0.1".into(),
        container: "main".into(),
        ports: vec![Port {
            id: "jupyterlab".into(),
            number: port,
        }],
    }
}

fn native_jupyter(host: &impl probe_sdk::Host, port: u16) {
    let workspace = probe_sdk::Workspace {
        namespace: "ns".into(),
        name: "ws".into(),
        pod_name: "ws-0".into(),
        pod_ip: "127.0.0.1".into(),
        container: "main".into(),
        ports: vec![("jupyterlab".into(), port)],
    };
    let reply = probe_jupyter::Jupyter::probe(host, &workspace, JUPYTER_CONFIG).expect("native probe");
    // The same validation an evaluation ends with.
    let activity = workspace_culler_engine::contract::validate(&reply.into_json(), 1_795_951_704_000);
    assert!(activity.is_ok(), "{activity:?}");
}

fn wasm_jupyter(
    rt: &tokio::runtime::Runtime,
    engine: &ProbeEngine,
    probe: &LoadedProbe,
    port: u16,
    capabilities: Arc<dyn Capabilities>,
) {
    let request = ProbeRequest {
        workspace: jupyter_workspace(port),
        config: JUPYTER_CONFIG.into(),
        deadline: Duration::from_secs(15),
        capabilities,
        probe_name: "jupyter".into(),
        frozen_clock: false,
    };
    let evaluation = rt.block_on(engine.evaluate(probe, request, 1_795_951_704_000));
    assert!(
        matches!(evaluation.outcome, ProbeOutcome::Success(_)),
        "{:?}",
        evaluation.outcome
    );
}

/// Evaluations per second of exec-script with every core busy (as many runtime workers).
fn evaluations_per_second(engine: &Arc<ProbeEngine>, probe: &Arc<LoadedProbe>) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let caps: Arc<dyn Capabilities> = Arc::new(Instant0);
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let done: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..cores * 2)
            .map(|_| {
                let (engine, probe, caps) = (engine.clone(), probe.clone(), caps.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while started.elapsed() < window {
                        engine.evaluate(&probe, request(caps.clone()), 1_795_951_704_000).await;
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("evaluations");
        }
        total
    });
    done as f64 / started.elapsed().as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The side-by-side summary: each pair measured in one run, interleaved.
fn summary() {
    let rt = runtime();
    let caps: Arc<dyn Capabilities> = Arc::new(Instant0);
    let pooling = Arc::new(engine(Allocation::Pooling, None));
    let on_demand = engine(Allocation::OnDemand, None);
    let (pp, op) = (
        pooling.load(exec_script(), None).unwrap(),
        on_demand.load(exec_script(), None).unwrap(),
    );
    let floor = Floor::new(&pooling);
    for _ in 0..200 {
        evaluate_once(&rt, &pooling, &pp, &caps);
        evaluate_once(&rt, &on_demand, &op, &caps);
        rt.block_on(floor.run());
    }
    let floor_p50 = time_n(2000, || rt.block_on(floor.run()));
    // The same component, instantiated with the probe's sandbox state and asked only for its
    // `info` (no host call, no validation): where an evaluation's time goes.
    let info_p50 = time_n(2000, || {
        rt.block_on(pooling.info(&pp)).expect("info");
    });
    let pool_p50 = time_n(2000, || evaluate_once(&rt, &pooling, &pp, &caps));
    let demand_p50 = time_n(2000, || evaluate_once(&rt, &on_demand, &op, &caps));
    let minimal = pooling
        .load(
            &wat::parse_str(MINIMAL_PROBE_WAT).expect("the minimal probe parses"),
            None,
        )
        .expect("the minimal probe loads");
    for _ in 0..200 {
        evaluate_once(&rt, &pooling, &minimal, &caps);
    }
    let minimal_p50 = time_n(2000, || evaluate_once(&rt, &pooling, &minimal, &caps));

    let port = jupyter_on_loopback();
    let jupyter = pooling
        .load(builtin("jupyter").expect("built-in jupyter").component, None)
        .unwrap();
    // Native and Wasm interleaved, over loopback, then answered in-process with the caches
    // warm, and swept before each reply.
    let [
        (native_p50, wasm_p50),
        (warm_native, warm_wasm),
        (cold_native, cold_wasm),
    ] = [Replies::Loopback, Replies::AtOnce, Replies::Swept].map(|replies| {
        let host = JupyterHttp::new(replies);
        let (mut native, mut wasm) = (Vec::new(), Vec::new());
        for round in 0..1200 {
            let n = host.time(|| native_jupyter(host.as_ref(), port));
            let w = host.time(|| wasm_jupyter(&rt, &pooling, &jupyter, port, host.clone()));
            if round >= 200 {
                native.push(n);
                wasm.push(w);
            }
        }
        (p50(native), p50(wasm))
    });

    let dir = tempfile::tempdir().unwrap();
    let cached = engine(Allocation::OnDemand, Some(dir.path().to_path_buf()));
    let mut loads = Vec::new();
    for name in ["exec-script", "jupyter", "nvidia-gpu"] {
        let component = builtin(name).expect("a built-in probe").component;
        cached.load(component, None).unwrap();
        let cache_p50 = time_n(20, || {
            cached.unload_all();
            cached.load(component, None).unwrap();
        });
        let compile_p50 = time_n(10, || {
            on_demand.unload_all();
            on_demand.load(component, None).unwrap();
        });
        loads.push((name, cache_p50, compile_p50));
    }
    let throughput = evaluations_per_second(&pooling, &pp);

    println!("\nsummary (p50, measured side by side in this run)");
    println!(
        "  floor: fresh Store + instantiate + call a no-op   {:>9.1} µs",
        micros(floor_p50)
    );
    println!(
        "  exec-script instantiated in its sandbox + info  {:>9.1} µs   ({:.2}× the floor)",
        micros(info_p50),
        info_p50.as_secs_f64() / floor_p50.as_secs_f64()
    );
    println!(
        "  evaluation of exec-script, pooling              {:>9.1} µs   ({:.2}× the floor; goal ≤ 2×)",
        micros(pool_p50),
        pool_p50.as_secs_f64() / floor_p50.as_secs_f64()
    );
    println!(
        "  evaluation of exec-script, on-demand            {:>9.1} µs   ({:.2}× pooling)",
        micros(demand_p50),
        demand_p50.as_secs_f64() / pool_p50.as_secs_f64()
    );
    println!(
        "  evaluation of a minimal probe (WAT), pooling    {:>9.1} µs   ({:.2}× the floor)",
        micros(minimal_p50),
        minimal_p50.as_secs_f64() / floor_p50.as_secs_f64()
    );
    println!(
        "  jupyter, native, 2 loopback HTTP calls          {:>9.1} µs",
        micros(native_p50)
    );
    println!(
        "  jupyter, Wasm component, the same calls         {:>9.1} µs   ({:.2}× native; goal ≤ 1.05×)",
        micros(wasm_p50),
        wasm_p50.as_secs_f64() / native_p50.as_secs_f64()
    );
    println!(
        "  the same, HTTP answered in-process, caches warm {:>9.1} / {:.1} µs (native / Wasm)",
        micros(warm_native),
        micros(warm_wasm)
    );
    println!(
        "  the same, 2 MiB swept before each reply         {:>9.1} / {:.1} µs (the sweeps' own time left out)",
        micros(cold_native),
        micros(cold_wasm)
    );
    for (name, cache_p50, compile_p50) in loads {
        println!(
            "  load {name:<12} from disk cache {:>8.2} ms, compiling {:>8.2} ms   ({:.0}× ; goal ≥ 20×)",
            cache_p50.as_secs_f64() * 1e3,
            compile_p50.as_secs_f64() * 1e3,
            compile_p50.as_secs_f64() / cache_p50.as_secs_f64()
        );
    }
    println!(
        "  evaluations of exec-script per second, {} cores: {:.0}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        throughput
    );
}

criterion_group!(benches, per_evaluation, cold_start);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
