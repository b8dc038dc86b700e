//! Hostile components are contained: every kind of misbehaviour ends as an
//! outcome with a clear message, the host survives, and the next evaluation works.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use workspace_culler_engine::contract::ProbeActivity;
use workspace_culler_engine::{
    Allocation, Capabilities, EngineConfig, ExecCommand, ExecError, ExecOutput, HttpRequest, HttpResponse, Limits,
    LoadError, LoadedProbe, Port, ProbeEngine, ProbeOutcome, ProbeRequest, Workspace,
};

/// The hostile probe's component (tests/probes/hostile), built on first use.
fn hostile() -> &'static [u8] {
    static HOSTILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HOSTILE.get_or_init(|| std::fs::read(workspace_culler_support::test_probes::hostile()).unwrap())
}
const NOW_MS: i64 = 1_795_951_704_000;

/// Capabilities that hang in exec (ignoring the timeout they are given) and
/// answer HTTP with 200, counting every call that reaches them.
#[derive(Default)]
struct Stubborn {
    http_calls: AtomicUsize,
}

#[async_trait]
impl Capabilities for Stubborn {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Err(ExecError::Failed("unreachable".into()))
    }

    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        self.http_calls.fetch_add(1, Ordering::SeqCst);
        Ok(HttpResponse {
            status: 200,
            ..HttpResponse::default()
        })
    }
}

fn workspace() -> Workspace {
    Workspace {
        namespace: "ns".into(),
        name: "ws".into(),
        pod_name: "ws-0".into(),
        pod_ip: "10.0.0.7".into(),
        container: "main".into(),
        ports: vec![Port {
            id: "http".into(),
            number: 8888,
        }],
    }
}

fn engine(allocation: Allocation) -> ProbeEngine {
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    ProbeEngine::new(EngineConfig {
        concurrency: 2,
        limits,
        cache_dir: None,
        allocation,
        ..EngineConfig::default()
    })
    .expect("engine")
}

/// An evaluation of the hostile probe with `config`, against `workspace()`.
fn request(config: serde_json::Value, deadline: Duration, caps: Arc<dyn Capabilities>) -> ProbeRequest {
    ProbeRequest {
        workspace: workspace(),
        config: config.to_string(),
        deadline,
        capabilities: caps,
        probe_name: "hostile".into(),
        frozen_clock: false,
    }
}

async fn run(
    engine: &ProbeEngine,
    probe: &LoadedProbe,
    config: serde_json::Value,
    deadline: Duration,
    caps: Arc<dyn Capabilities>,
) -> (ProbeOutcome, Duration) {
    let request = request(config, deadline, caps);
    let started = Instant::now();
    let evaluation = engine.evaluate(probe, request, NOW_MS).await;
    (evaluation.outcome, started.elapsed())
}

fn failure_containing(outcome: &ProbeOutcome, needle: &str) {
    match outcome {
        ProbeOutcome::Failure(m) if m.contains(needle) => {}
        other => panic!("expected a Failure containing {needle:?}, got {other:?}"),
    }
}

async fn assert_still_works(engine: &ProbeEngine, probe: &LoadedProbe) {
    let (outcome, _) = run(
        engine,
        probe,
        serde_json::json!({"mode": "echo", "json": "{\"has_activity\": true}"}),
        Duration::from_secs(5),
        Arc::new(Stubborn::default()),
    )
    .await;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
}

async fn every_misbehaviour_is_contained(allocation: Allocation) {
    let engine = engine(allocation);
    let probe = engine.load(hostile(), None).expect("hostile probe loads");
    let caps: Arc<dyn Capabilities> = Arc::new(Stubborn::default());
    let second = Duration::from_secs(1);

    // An infinite loop ends as Timeout near its deadline (epoch interruption).
    let (outcome, took) = run(
        &engine,
        &probe,
        serde_json::json!({"mode": "loop"}),
        second,
        caps.clone(),
    )
    .await;
    assert!(
        matches!(&outcome, ProbeOutcome::Timeout(m) if m.contains("deadline of 1000ms")),
        "{outcome:?}"
    );
    assert!(took < Duration::from_millis(1500), "loop stopped after {took:?}");
    assert_still_works(&engine, &probe).await;

    // A guest blocked in a host call that never returns is cut by the wall clock.
    let (outcome, took) = run(
        &engine,
        &probe,
        serde_json::json!({"mode": "block-in-exec"}),
        second,
        caps.clone(),
    )
    .await;
    assert!(
        took < Duration::from_millis(2000),
        "blocked call stopped after {took:?}"
    );
    match &outcome {
        // The exec is cut (the probe sees Timeout and reports it), or the whole call is.
        ProbeOutcome::Failure(m) => assert!(m.contains("Timeout"), "{m}"),
        ProbeOutcome::Timeout(_) => {}
        other => panic!("blocked probe ended as {other:?}"),
    }
    assert_still_works(&engine, &probe).await;

    // Unbounded memory growth ends at the cap.
    let (outcome, _) = run(
        &engine,
        &probe,
        serde_json::json!({"mode": "grow"}),
        second * 10,
        caps.clone(),
    )
    .await;
    failure_containing(&outcome, "memory cap of 32 MiB");
    assert_still_works(&engine, &probe).await;

    // 100 MB to stdout ends at the stdio cap.
    let flood = serde_json::json!({"mode": "flood-stdout", "bytes": 100 << 20});
    let (outcome, _) = run(&engine, &probe, flood, second * 10, caps.clone()).await;
    failure_containing(&outcome, "wrote more than the cap of 1048576 bytes to stdout");
    assert_still_works(&engine, &probe).await;

    // An 8 MB result ends at the result cap.
    let big = serde_json::json!({"mode": "big-result", "bytes": 8 << 20});
    let (outcome, _) = run(&engine, &probe, big, second * 10, caps.clone()).await;
    failure_containing(&outcome, "over the cap of 65536 bytes");

    // A trap (a panic in the guest) is a Failure that carries the panic message.
    let (outcome, _) = run(
        &engine,
        &probe,
        serde_json::json!({"mode": "trap"}),
        second * 5,
        caps.clone(),
    )
    .await;
    failure_containing(&outcome, "probe trapped");
    failure_containing(&outcome, "panics on purpose");
    assert_still_works(&engine, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaviour_is_contained_with_pooling() {
    every_misbehaviour_is_contained(Allocation::Pooling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaviour_is_contained_on_demand() {
    every_misbehaviour_is_contained(Allocation::OnDemand).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reaches_only_the_workspace_pod() {
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let caps = Arc::new(Stubborn::default());
    for url in [
        "http://example.com/",
        "http://10.0.0.8:8888/",
        "http://127.0.0.1:8888/",
        "http://[::1]:8888/",
        // The cloud metadata service, the apiserver, the node's kubelet.
        "http://169.254.169.254/latest/meta-data/",
        "https://kubernetes.default.svc/api",
        "http://10.96.0.1:443/",
        "http://10.0.0.1:10250/pods",
    ] {
        let config = serde_json::json!({"mode": "http", "url": url});
        let (outcome, _) = run(&engine, &probe, config, Duration::from_secs(5), caps.clone()).await;
        failure_containing(&outcome, "request denied");
    }
    assert_eq!(
        caps.http_calls.load(Ordering::SeqCst),
        0,
        "a refused request reached the capability"
    );

    let config = serde_json::json!({"mode": "http", "url": "http://10.0.0.7:8888/api/status"});
    let (outcome, _) = run(&engine, &probe, config, Duration::from_secs(5), caps.clone()).await;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
    assert_eq!(caps.http_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_stderr_are_captured() {
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let request = request(
        serde_json::json!({"mode": "log"}),
        Duration::from_secs(5),
        Arc::new(Stubborn::default()),
    );
    let evaluation = engine.evaluate(&probe, request, NOW_MS).await;
    assert_eq!(evaluation.outcome, ProbeOutcome::Success(ProbeActivity::Idle));
    let lines: Vec<String> = evaluation.logs.iter().map(|(_, m)| m.clone()).collect();
    assert!(lines.contains(&"hello from the probe".to_string()), "{lines:?}");
    assert!(
        lines.contains(&"[stderr] stderr line from the probe".to_string()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn no_filesystem_socket_name_lookup_or_environment_reaches_a_probe() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let request = request(
        serde_json::json!({"mode": "escape", "port": port}),
        Duration::from_secs(5),
        Arc::new(Stubborn::default()),
    );
    let evaluation = engine.evaluate(&probe, request, NOW_MS).await;
    assert_eq!(evaluation.outcome, ProbeOutcome::Success(ProbeActivity::Idle));
    let line = evaluation
        .logs
        .iter()
        .map(|(_, m)| m.as_str())
        .find(|m| m.contains("read_dir"))
        .unwrap();
    assert!(!line.contains("ESCAPED"), "{line}");
    for attempt in [
        "read_dir /: refused",
        "read /etc/passwd: refused",
        "tcp 127.0.0.1: refused",
        "lookup kubernetes.default.svc: refused",
        "environment: 0 variables, 0 arguments",
    ] {
        assert!(line.contains(attempt), "{attempt:?} not in {line}");
    }
    assert!(
        listener.accept().is_err(),
        "the probe connected to a socket of this machine"
    );
}

#[test]
fn loading_checks_digest_and_world() {
    let engine = engine(Allocation::OnDemand);
    let digest = workspace_culler_engine::sha256_hex(hostile());
    assert!(engine.load(hostile(), Some(&digest)).is_ok());
    assert!(
        engine
            .load(hostile(), Some(&format!("sha256:{}", digest.to_uppercase())))
            .is_ok()
    );

    let wrong = "0".repeat(64);
    match engine.load(hostile(), Some(&wrong)) {
        Err(e @ LoadError::DigestMismatch { .. }) => {
            let m = e.to_string();
            assert!(m.contains(&wrong) && m.contains(&digest), "{m}");
        }
        other => panic!("expected a digest mismatch, got {:?}", other.map(|p| p.digest.clone())),
    }
    assert!(matches!(engine.load(b"not wasm", None), Err(LoadError::Invalid(_))));
    let core_module = wat::parse_str("(module)").unwrap();
    assert!(matches!(engine.load(&core_module, None), Err(LoadError::Invalid(_))));

    // A valid component that exports nothing does not implement the world.
    let empty = wat::parse_str("(component)").unwrap();
    let err = engine
        .load(&empty, None)
        .err()
        .expect("an empty component is not a probe");
    assert!(matches!(err, LoadError::NotAProbe(_)), "{err}");
    assert!(err.to_string().contains("activity-probe"), "{err}");

    // A component importing something the host does not provide cannot link.
    let alien = wat::parse_str(r#"(component (import "acme:net/raw-socket@1.0.0" (instance (export "open" (func)))))"#)
        .unwrap();
    let err = engine.load(&alien, None).err().expect("an alien import cannot link");
    assert!(matches!(err, LoadError::Link(_)), "{err}");

    // A component built against another version of the contract says which.
    for version in ["0.2.0", "0.1.7", "1.0.0"] {
        let other = wat::parse_str(format!(
            r#"(component (import "workspace-culler:probe/types@{version}" (instance)))"#
        ))
        .unwrap();
        let err = engine
            .load(&other, None)
            .err()
            .expect("another contract version cannot run");
        assert!(matches!(err, LoadError::WitVersion { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "probe module was built against workspace-culler:probe@{version}, which this host cannot run: \
                 it implements @0.1.0 and runs probes built against 0.1.0"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_verified_and_recompiled_when_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        concurrency: 1,
        cache_dir: Some(dir.path().to_path_buf()),
        allocation: Allocation::OnDemand,
        ..EngineConfig::default()
    };
    let first = ProbeEngine::new(config()).unwrap();
    first.load(hostile(), None).unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let code = cached
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a .cwasm entry");
    assert!(
        code.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&workspace_culler_engine::sha256_hex(hostile()))
    );

    // A fresh engine loads from the cache and the probe works.
    let second = ProbeEngine::new(config()).unwrap();
    let probe = second.load(hostile(), None).unwrap();
    assert_still_works(&second, &probe).await;

    // Corrupt the cached code: the checksum catches it and the engine recompiles.
    let mut bytes = std::fs::read(code).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(code, &bytes).unwrap();
    let third = ProbeEngine::new(config()).unwrap();
    let probe = third.load(hostile(), None).unwrap();
    assert_still_works(&third, &probe).await;
    assert_ne!(std::fs::read(code).unwrap(), bytes, "the corrupt entry was rewritten");
}

#[test]
fn the_code_cache_keeps_within_its_bound_by_evicting_what_was_used_least_recently() {
    let dir = tempfile::tempdir().unwrap();
    let builtin = |name| workspace_culler_engine::builtin::builtin(name).unwrap().component;
    let cached_bytes = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let code_of = |bytes: &[u8]| {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&workspace_culler_engine::sha256_hex(bytes)) && name.ends_with(".cwasm")
            })
    };
    // Measure one compiled component, then allow a little more than the largest.
    let unbounded = ProbeEngine::new(EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        allocation: Allocation::OnDemand,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut sizes = Vec::new();
    for component in [
        hostile(),
        builtin("exec-script"),
        builtin("jupyter"),
        builtin("nvidia-gpu"),
    ] {
        let before = cached_bytes();
        unbounded.load(component, None).unwrap();
        sizes.push(cached_bytes() - before);
        std::thread::sleep(Duration::from_millis(20));
    }
    let max = *sizes.iter().max().unwrap() * 3 / 2;
    // The hostile probe's entry is written again below, by an engine with the bound.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&workspace_culler_engine::sha256_hex(hostile()))
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(cached_bytes() > max, "three entries outgrow the bound");

    let bounded = ProbeEngine::new(EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        cache_max_bytes: max,
        allocation: Allocation::OnDemand,
        ..EngineConfig::default()
    })
    .unwrap();
    // exec-script is used (read from the cache: now the most recent), then the hostile probe is
    // compiled and written: the others go, oldest first, until the cache fits.
    bounded.load(builtin("exec-script"), None).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    bounded.load(hostile(), None).unwrap();
    assert!(cached_bytes() <= max, "{} > {max}", cached_bytes());
    assert!(code_of(hostile()).is_some(), "what was just written stays");
    assert!(
        code_of(builtin("jupyter")).is_none(),
        "the least recently used went first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_no_one_holds_are_unloaded_and_held_ones_stay() {
    let engine = engine(Allocation::OnDemand);
    let held = engine.load(hostile(), None).unwrap();
    let dropped = engine
        .load(
            workspace_culler_engine::builtin::builtin("exec-script")
                .unwrap()
                .component,
            None,
        )
        .unwrap();
    drop(dropped);
    assert_eq!(engine.unload_unused(), 1);
    assert_eq!(engine.unload_unused(), 0);
    // The one still held is the one a new load finds (no second compile).
    assert!(Arc::ptr_eq(&held, &engine.load(hostile(), None).unwrap()));
    assert_still_works(&engine, &held).await;
}

/// Answers exec after a pause, so evaluations overlap.
struct Slow;

#[async_trait]
impl Capabilities for Slow {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(ExecOutput {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        Err("no HTTP".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_evaluations_than_pool_slots_wait_instead_of_failing() {
    // The pool holds 2 instances; 6 evaluations that each wait 300 ms in exec overlap.
    let engine = Arc::new(engine(Allocation::Pooling));
    let probe = engine.load(hostile(), None).unwrap();
    let started = Instant::now();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let (engine, probe) = (engine.clone(), probe.clone());
            tokio::spawn(async move {
                let config = serde_json::json!({"mode": "block-in-exec"});
                run(&engine, &probe, config, Duration::from_secs(10), Arc::new(Slow))
                    .await
                    .0
            })
        })
        .collect();
    for run in runs {
        failure_containing(&run.await.unwrap(), "exec returned: Ok");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "6 runs through 2 slots take 3 rounds"
    );
}

/// A probe whose `info` sleeps for an hour on WASI's monotonic clock: a wait in the host,
/// which no epoch deadline interrupts.
const SLEEPS_IN_INFO_WAT: &str = r#"(component
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
  (type $poll-type (instance
    (export "pollable" (type (sub resource)))
    (type (borrow 0))
    (type (func (param "self" 1)))
    (export "[method]pollable.block" (func (type 2)))))
  (import "wasi:io/poll@0.2.0" (instance $poll (type $poll-type)))
  (alias export $poll "pollable" (type $pollable))
  (type $clock-type (instance
    (alias outer 1 $pollable (type))
    (export "pollable" (type (eq 0)))
    (type (own 1))
    (type (func (param "when" u64) (result 2)))
    (export "subscribe-duration" (func (type 3)))))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock (type $clock-type)))
  (core func $block (canon lower (func $poll "[method]pollable.block")))
  (core func $subscribe (canon lower (func $clock "subscribe-duration")))
  (core module $m
    (import "host" "block" (func $block (param i32)))
    (import "host" "subscribe" (func $subscribe (param i64) (result i32)))
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 2048))
    (func (export "probe")
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (i32.const 64))
    (func (export "info") (result i32)
      (call $block (call $subscribe (i64.const 3600000000000)))
      (i32.const 128))
    (data (i32.const 64) "\00\00\00\00\00\02\00\00\15\00\00\00")
    (data (i32.const 128) "\00\03\00\00\06\00\00\00\10\03\00\00\05\00\00\00\20\03\00\00\06\00\00\00\00\00\00\00\00\00\00\00")
    (data (i32.const 512) "{\"has_activity\":true}")
    (data (i32.const 768) "sleepy")
    (data (i32.const 784) "0.1.0")
    (data (i32.const 800) "sleeps"))
  (core instance $host (export "block" (func $block)) (export "subscribe" (func $subscribe)))
  (core instance $i (instantiate $m (with "host" (instance $host))))
  (func (export "info") (result $probe-info)
    (canon lift (core func $i "info") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
  (func (export "probe")
    (param "workspace" $workspace) (param "config" string)
    (result (result string (error $probe-error)))
    (canon lift (core func $i "probe") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_waits_in_its_info_is_stopped_at_the_info_deadline() {
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(&wat::parse_str(SLEEPS_IN_INFO_WAT).unwrap(), None).unwrap();
    let started = Instant::now();
    let info = tokio::time::timeout(Duration::from_secs(60), engine.info(&probe))
        .await
        .expect("info outlived its deadline");
    let error = info.unwrap_err().to_string();
    assert!(error.contains("did not describe itself within 5 s"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Answers every HTTP request with a body one byte under the response cap, or one byte over
/// it (`over`).
struct BigAnswers {
    over: bool,
}

const UNDER_THE_CAP: BigAnswers = BigAnswers { over: false };
const OVER_THE_CAP: BigAnswers = BigAnswers { over: true };

#[async_trait]
impl Capabilities for BigAnswers {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        Err(ExecError::Refused("no exec".into()))
    }

    async fn http(&self, _: &Workspace, request: HttpRequest) -> Result<HttpResponse, String> {
        let bytes = if self.over {
            request.response_body_cap + 1
        } else {
            request.response_body_cap - 1
        };
        Ok(HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: vec![b'x'; bytes].into(),
        })
    }
}

/// Answers HTTP after a pause, counting the calls in progress at once.
#[derive(Default)]
struct Overlapping {
    now: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait]
impl Capabilities for Overlapping {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        Err(ExecError::Refused("no exec".into()))
    }

    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: b"{}".to_vec().into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_s_http_calls_reach_its_pod_one_at_a_time() {
    // Four requests sent at once: each is answered, one after the other.
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let pod = Arc::new(Overlapping::default());
    let config = serde_json::json!({"mode": "http-parallel", "requests": 4});
    let (outcome, _) = run(&engine, &probe, config, Duration::from_secs(10), pod.clone()).await;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
    assert_eq!(pod.most.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_the_host_holds_for_a_probe_count_in_its_memory_cap() {
    // Sixteen request bodies of almost 4 MiB that the probe never finishes, or sixteen
    // responses of almost 4 MiB it never reads: 64 MiB the host would hold, past the cap of 32.
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    for config in [
        serde_json::json!({"mode": "hold-http", "requests": 16, "bytes": (4 << 20) - 4096}),
        serde_json::json!({"mode": "hold-http", "requests": 16, "responses": true}),
    ] {
        let (outcome, _) = run(
            &engine,
            &probe,
            config.clone(),
            Duration::from_secs(10),
            Arc::new(UNDER_THE_CAP),
        )
        .await;
        failure_containing(&outcome, "memory cap of 32 MiB");
        // Given back as the evaluation's HTTP tasks, aborted with its store, wind down.
        let ended = Instant::now();
        while engine.memory_in_use() > 0 {
            assert!(
                ended.elapsed() < Duration::from_secs(5),
                "{config}: {} bytes still held",
                engine.memory_in_use()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_still_works(&engine, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_of_up_to_32_kib_may_be_written_before_the_request_is_sent() {
    // wasmtime's own helpers write the whole body, then send: a body the host buffers until
    // then must fit what it buffers, or the write waits until the deadline.
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let config = serde_json::json!({"mode": "post-first", "bytes": 30 << 10});
    let (outcome, _) = run(
        &engine,
        &probe,
        config,
        Duration::from_secs(10),
        Arc::new(UNDER_THE_CAP),
    )
    .await;
    assert_eq!(outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_a_probe_never_sends_hold_a_few_kib_of_the_host_s_memory_each() {
    // The host buffers a body's writes until the request is sent, and counts them then; a
    // probe that never sends holds only what one body buffers, per request handle (of 1 024).
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let config = serde_json::json!({"mode": "unsent-bodies", "requests": 4});
    let (outcome, _) = run(
        &engine,
        &probe,
        config,
        Duration::from_secs(10),
        Arc::new(UNDER_THE_CAP),
    )
    .await;
    let ProbeOutcome::Failure(message) = &outcome else {
        panic!("expected the probe's report, got {outcome:?}")
    };
    let took: usize = message
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {message:?}"));
    assert!(took > 0, "{message}");
    assert!(took <= 32 << 10, "{message}");
    assert_still_works(&engine, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_probe_says_is_cut_to_a_line_before_it_is_logged_or_kept() {
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    // A failure message of a MiB: the probe names the unknown mode it was given.
    let mode = "x".repeat(1 << 20);
    let (outcome, _) = run(
        &engine,
        &probe,
        serde_json::json!({"mode": mode}),
        Duration::from_secs(10),
        Arc::new(Stubborn::default()),
    )
    .await;
    match outcome {
        ProbeOutcome::Failure(m) => {
            assert!(m.starts_with("unknown mode \"xxx"), "{}", &m[..40]);
            assert!(
                m.len() < 4200 && m.ends_with("(cut at 4096 characters)"),
                "{} bytes",
                m.len()
            );
        }
        other => panic!("expected a Failure, got {other:?}"),
    }
    // A long path to a pod that answers past the body cap: the host's own warning names the
    // path, and is cut too.
    let url = format!("http://10.0.0.7:8888/{}", "p".repeat(60_000));
    let config = serde_json::json!({"mode": "http", "url": url});
    let evaluation = engine
        .evaluate(
            &probe,
            request(config, Duration::from_secs(10), Arc::new(OVER_THE_CAP)),
            NOW_MS,
        )
        .await;
    assert!(
        evaluation.logs.iter().any(|(_, line)| line.contains("over the cap")),
        "{:?}",
        evaluation.logs
    );
    for (_, line) in &evaluation.logs {
        assert!(line.len() < 4200, "a log line of {} bytes", line.len());
    }
    // Half a MiB on stdout in one line, within the stdout cap.
    let flood = serde_json::json!({"mode": "flood-stdout", "bytes": 512 << 10});
    let request = request(flood, Duration::from_secs(10), Arc::new(Stubborn::default()));
    let evaluation = engine.evaluate(&probe, request, NOW_MS).await;
    assert_eq!(evaluation.outcome, ProbeOutcome::Success(ProbeActivity::ActiveNow));
    assert!(!evaluation.logs.is_empty());
    for (_, line) in &evaluation.logs {
        assert!(line.len() < 4200, "a log line of {} bytes", line.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_slot_counts_in_the_probe_s_clock_and_its_end() {
    // One slot, held by evaluations that each wait 300 ms in exec; a probe that reads its
    // clock, submitted behind them at NOW_MS, runs that much later by the caller's clock.
    let engine = Arc::new(
        ProbeEngine::new(EngineConfig {
            concurrency: 1,
            ..EngineConfig::default()
        })
        .unwrap(),
    );
    let probe = engine.load(hostile(), None).unwrap();
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let (engine, probe) = (engine.clone(), probe.clone());
            tokio::spawn(async move {
                let config = serde_json::json!({"mode": "block-in-exec"});
                run(&engine, &probe, config, Duration::from_secs(10), Arc::new(Slow)).await
            })
        })
        .collect();
    // The first holds the slot (its memory is in use) before the probe is submitted.
    while engine.memory_in_use() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let request = request(
        serde_json::json!({"mode": "clock"}),
        Duration::from_secs(10),
        Arc::new(Obliging::default()),
    );
    let submitted = Instant::now();
    let evaluation = engine.evaluate(&probe, request, NOW_MS).await;
    let took = i64::try_from(submitted.elapsed().as_millis()).unwrap();
    for holder in holders {
        holder.await.unwrap();
    }
    assert!(took >= 250, "it waited behind a 300-ms holder: {took} ms");
    assert_eq!(evaluation.started_at_ms, NOW_MS);
    let recorded = evaluation.finished_at_ms - NOW_MS;
    assert!(
        recorded >= took - 50,
        "the end recorded leaves out the wait: {recorded} of {took} ms"
    );
    match evaluation.outcome {
        ProbeOutcome::Success(ProbeActivity::LastAt(ms)) => {
            assert!(
                ms - NOW_MS >= took / 2,
                "the probe's clock left out the wait: {} of {took} ms",
                ms - NOW_MS
            )
        }
        other => panic!("expected the probe's clock reading, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_s_wall_clock_is_the_evaluation_s_clock() {
    // The controller passes the real time; the harness a fixture's `now`, so
    // a probe that reads the time gives the same result on every replay.
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let (outcome, _) = run(
        &engine,
        &probe,
        serde_json::json!({"mode": "clock"}),
        Duration::from_secs(5),
        Arc::new(Stubborn::default()),
    )
    .await;
    match outcome {
        ProbeOutcome::Success(ProbeActivity::LastAt(ms)) => {
            assert!(
                (NOW_MS..NOW_MS + 5_000).contains(&ms),
                "{ms} is not the evaluation's {NOW_MS}"
            )
        }
        other => panic!("expected the probe's clock reading, got {other:?}"),
    }
}

/// Capabilities that answer every exec and HTTP call at once, counting them.
#[derive(Default)]
struct Obliging {
    exec_calls: AtomicUsize,
    http_calls: AtomicUsize,
}

#[async_trait]
impl Capabilities for Obliging {
    async fn exec(
        &self,
        _: &Workspace,
        _: ExecCommand,
        _: workspace_culler_engine::ReadMemory,
    ) -> Result<ExecOutput, ExecError> {
        self.exec_calls.fetch_add(1, Ordering::SeqCst);
        Ok(ExecOutput {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    async fn http(&self, _: &Workspace, _: HttpRequest) -> Result<HttpResponse, String> {
        self.http_calls.fetch_add(1, Ordering::SeqCst);
        Ok(HttpResponse {
            status: 200,
            ..HttpResponse::default()
        })
    }
}

/// Each allowance a probe could otherwise use to make the host hold memory
/// (or hammer the user's pod) is capped per evaluation: the probe fails with
/// a message naming the cap, the capabilities never see more than the cap,
/// and the engine goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_per_evaluation_allowance_is_capped_and_named() {
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let limits = Limits::default();
    let url = "http://10.0.0.7:8888/api/status";
    let cases = [
        (
            serde_json::json!({"mode": "log-flood", "lines": 100_000, "bytes": 16}),
            format!("cap of {} lines", limits.log_lines),
        ),
        (
            serde_json::json!({"mode": "log-flood", "lines": 150, "bytes": 4096}),
            format!("cap of {} bytes per evaluation", limits.log_bytes),
        ),
        (
            serde_json::json!({"mode": "exec-many", "calls": 10_000}),
            format!("cap of {} commands", limits.exec_calls),
        ),
        (
            serde_json::json!({"mode": "exec-big", "bytes": 1 << 20}),
            format!("over its cap of {} bytes", limits.exec_input_bytes),
        ),
        // Empty arguments are bytes too: each costs the host a string, and a copy or two.
        (
            serde_json::json!({"mode": "exec-big", "args": 1_000_000}),
            format!("over its cap of {} bytes", limits.exec_input_bytes),
        ),
        (
            serde_json::json!({"mode": "http-many", "url": url, "requests": 10_000}),
            format!("cap of {} HTTP requests", limits.http_requests),
        ),
        (
            serde_json::json!({"mode": "handles"}),
            format!("cap of {} resource handles", limits.resource_handles),
        ),
        // Refused requests count too: each costs the host a log line.
        (
            serde_json::json!({"mode": "http-many", "url": "http://10.0.0.99/", "requests": 10_000}),
            format!("cap of {} HTTP requests", limits.http_requests),
        ),
    ];
    for (config, needle) in cases {
        let caps = Arc::new(Obliging::default());
        let (outcome, _) = run(&engine, &probe, config.clone(), Duration::from_secs(20), caps.clone()).await;
        failure_containing(&outcome, &needle);
        assert!(caps.exec_calls.load(Ordering::SeqCst) <= limits.exec_calls, "{config}");
        assert!(
            caps.http_calls.load(Ordering::SeqCst) <= limits.http_requests,
            "{config}"
        );
        assert_still_works(&engine, &probe).await;
    }
}

#[tokio::test]
async fn log_lines_under_the_caps_are_all_kept() {
    let engine = engine(Allocation::OnDemand);
    let probe = engine.load(hostile(), None).unwrap();
    let request = ProbeRequest {
        workspace: workspace(),
        config: serde_json::json!({"mode": "log-flood", "lines": 50, "bytes": 8}).to_string(),
        deadline: Duration::from_secs(5),
        capabilities: Arc::new(Obliging::default()),
        probe_name: "hostile".into(),
        frozen_clock: false,
    };
    let evaluation = engine.evaluate(&probe, request, NOW_MS).await;
    assert_eq!(evaluation.outcome, ProbeOutcome::Success(ProbeActivity::Idle));
    assert_eq!(evaluation.logs.len(), 50);
}
