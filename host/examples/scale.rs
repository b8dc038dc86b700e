//! The scale benchmark (docs/performance.md): N Running workspaces of Kubeflow's sample kind on
//! the real test control plane (kube-apiserver, etcd, kwok), probed by the built-in Jupyter
//! probe against one local server that answers every pod's IP (kwok gives pods loopback
//! addresses) after a delay, so a probe takes `--delay-ms` (two calls, each half of it). One
//! full round (every workspace probed once) is timed twice in the same run: the controller as
//! configured here (`--concurrency`), and configured like Kubeflow's own probing (probes inside
//! the reconcile, 10 workers: `--concurrency 10`). Reported: round time, probes/s, the
//! controller's API requests per probe by verb (its own request counter, and the apiserver's
//! count of what it served meanwhile, `apiserver_request_total`), peak RSS and CPU
//! seconds per 1 000 probes, the apiserver's, etcd's and the rest's CPU (kwok, this benchmark), and
//! the ratio of the round times. Then the status writes alone: the same writes, as many at once,
//! sent from the benchmark with no probe and no controller — the least a round can take here.
//! Then the cull latency: the first `--latency-workspaces` become eligible one after another
//! over a minute (their Jupyter reports staggered last activity), the policy's
//! `minProbeIntervalSeconds` is 10, and each pause is timed against its `eligibleAfter` — twice:
//! with every other workspace in use and due again a minute after each probe (a busy
//! background), and with the others under the sample's rule of hours (probed hourly: what a
//! platform's background is). The timed workspaces have their own podConfig (`small_cpu`), which
//! the second phase's first rule matches.
//!
//!     scripts/bench-scale                                        # 1 000 workspaces, 200 ms probes
//!     scripts/bench-scale --workspaces 10000 --concurrency 256   # platform scale

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use workspace_culler_support::controlplane::{self, ControlPlane};
use workspace_culler_support::kubeflow::{self, KubeflowDouble};
use workspace_culler_support::process::{cpu_seconds, peak_rss_mib};

const NS: &str = "scale";
const CONTROLLER_NS: &str = "culler-system";
const PORT: u16 = 8888;
/// Connections the Jupyter stand-in accepted, from every controller.
static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The latency phase's policy: probes at most this often, pauses this long after activity.
const LATENCY_MIN_PROBE_INTERVAL: i64 = 10;
const LATENCY_IDLE_SECONDS: i64 = 60;
/// The rounds' rule, and the hourly background's: idle for a day before a pause.
const DAY_IDLE_SECONDS: i64 = 86_400;
/// Eligibility is spread over this long, starting this long after the phase's controller starts.
const LATENCY_SPREAD_MS: i64 = 60_000;
const LATENCY_LEAD_MS: i64 = 15_000;
/// What an idle server says when nothing else is set for its pod.
const LONG_AGO: &str = "2026-01-01T00:00:00Z";
/// Set for a pod whose server is in use: it says its last activity is now.
const IN_USE: &str = "now";
/// The podConfig of the timed workspaces, and the spawner label it has in Kubeflow's sample kind.
const TIMED_POD_CONFIG: &str = "small_cpu";
const TIMED_POD_CONFIG_LABEL: (&str, &str) = ("cpu", "1000m");

/// What the other workspaces do while the timed ones become eligible.
#[derive(Clone, Copy)]
enum Background {
    /// In use, under the same one-minute rule: each is due again a minute after its probe.
    Busy,
    /// In use, under a rule of hours: probed hourly (`probeIntervalSeconds`).
    Hourly,
}

impl Background {
    fn label(self) -> &'static str {
        match self {
            Background::Busy => "the others probed every minute",
            Background::Hourly => "the others probed hourly",
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

struct Args {
    workspaces: usize,
    delay_ms: u64,
    concurrency: u32,
    latency_workspaces: usize,
    binary: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        workspaces: 1000,
        delay_ms: 200,
        concurrency: 64,
        latency_workspaces: 1000,
        // The controller of the same build as this benchmark: target/<profile>/workspace-culler.
        binary: std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("where this benchmark runs from")?
            .join("workspace-culler"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--workspaces" => args.workspaces = value.parse()?,
            "--delay-ms" => args.delay_ms = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--latency-workspaces" => args.latency_workspaces = value.parse()?,
            "--binary" => args.binary = value.into(),
            other => anyhow::bail!(
                "unknown flag {other} (--workspaces, --delay-ms, --concurrency, --latency-workspaces, --binary)"
            ),
        }
    }
    args.latency_workspaces = args.latency_workspaces.min(args.workspaces);
    Ok(args)
}

/// The `last_activity` each workspace's server reports, by workspace name (others:
/// [`LONG_AGO`]).
type LastActivity = Arc<RwLock<HashMap<String, String>>>;

/// The workspace a request is for: Jupyter serves under
/// `/workspace/connect/<namespace>/<name>/<portId>/` (the sample kind keeps the prefix).
fn workspace_of(path: &str) -> Option<&str> {
    path.strip_prefix("/workspace/connect/")?.split('/').nth(1)
}

/// Answers Jupyter's API for every pod after `delay`: an idle server, whose last activity is
/// the workspace's entry in `last_activity` once that time has come (a server does not report
/// activity from the future: the controller refuses a result more than 60 s ahead).
async fn jupyter(delay: Duration, last_activity: LastActivity) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", PORT))
        .await
        .with_context(|| format!("port {PORT} is taken"))?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let last_activity = last_activity.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else { return };
                    if n == 0 {
                        return;
                    }
                    let request = String::from_utf8_lossy(&buffer[..n]);
                    let path = request.split_whitespace().nth(1).unwrap_or("");
                    let body = if path.contains("api/status") {
                        let at = workspace_of(path)
                            .and_then(|name| last_activity.read().ok()?.get(name).cloned())
                            .unwrap_or_else(|| LONG_AGO.to_string());
                        // In use, or in use until a time still to come: its last activity is now.
                        let now = chrono::Utc::now().timestamp_millis();
                        let later = chrono::DateTime::parse_from_rfc3339(&at).is_ok_and(|t| t.timestamp_millis() > now);
                        let at = if at == IN_USE || later { rfc3339(now) } else { at };
                        format!(r#"{{"started":"{LONG_AGO}","last_activity":"{at}","connections":0,"kernels":0}}"#)
                    } else {
                        "[]".to_string()
                    };
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

/// A controller's /metrics text (empty while it is not serving yet).
async fn metrics(port: u16) -> String {
    let request = workspace_culler_engine::HttpRequest {
        method: http::Method::GET,
        uri: format!("http://127.0.0.1:{port}/metrics").parse().unwrap(),
        headers: Default::default(),
        body: Default::default(),
        response_body_cap: 16 << 20,
        response_memory: Default::default(),
    };
    match workspace_culler::transport::http(request).await {
        Ok(response) => String::from_utf8_lossy(&response.body).into_owned(),
        Err(_) => String::new(),
    }
}

/// The samples of metric `name` summed by the values of `labels` (zero sums left out).
fn series(metrics: &str, name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    // A label is matched whole: `resource="` also stands inside `subresource="`. The patterns
    // are made once: the apiserver's /metrics has tens of thousands of lines.
    let patterns: Vec<[String; 2]> = labels
        .iter()
        .map(|label| [format!("{{{label}=\""), format!(",{label}=\"")])
        .collect();
    let label = |line: &str, patterns: &[String; 2]| {
        patterns
            .iter()
            .find_map(|pattern| line.split_once(pattern.as_str()))
            .and_then(|(_, rest)| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    };
    let prefix = format!("{name}{{");
    let mut sums = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key = patterns.iter().map(|p| label(line, p)).collect();
        *sums.entry(key).or_default() += value;
    }
    sums.retain(|_, v| *v > 0.0);
    sums
}

/// Requests by (verb, resource), as both counts give them.
type Requests = BTreeMap<(String, String), f64>;

/// `workspace_culler_api_requests_total` by (verb, resource).
fn api_requests(metrics: &str) -> Requests {
    series(metrics, "workspace_culler_api_requests_total", &["verb", "resource"])
        .into_iter()
        .map(|(key, n)| ((key[0].clone(), key[1].clone()), n))
        .collect()
}

/// The apiserver's own count of the requests it has served, by (verb, resource[/subresource]),
/// every client's: `apiserver_request_total` from its /metrics, its verbs named as the
/// controller's counter names them. A request answered with an error counts under its verb and
/// code (`patch 409`), so only successes count as served; requests for no resource (its
/// /metrics itself) are left out; a watch is counted when it ends.
async fn apiserver_requests(client: &kube::Client) -> anyhow::Result<Requests> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await
        .context("the apiserver's /metrics")?;
    let mut requests = Requests::new();
    for (key, n) in series(
        &text,
        "apiserver_request_total",
        &["verb", "resource", "subresource", "code"],
    ) {
        let [verb, resource, subresource, code] = &key[..] else {
            continue;
        };
        if resource.is_empty() {
            continue;
        }
        let verb = match verb.as_str() {
            "POST" => "create".to_string(),
            "PUT" => "update".to_string(),
            other => other.to_lowercase(),
        };
        let verb = if code.starts_with('2') {
            verb
        } else {
            format!("{verb} {code}")
        };
        let resource = match subresource.as_str() {
            "" => resource.clone(),
            subresource => format!("{resource}/{subresource}"),
        };
        *requests.entry((verb, resource)).or_default() += n;
    }
    Ok(requests)
}

/// What `after` counts more than `before` (zero differences left out).
fn counted_since(before: &Requests, after: Requests) -> Requests {
    after
        .into_iter()
        .map(|(key, n)| {
            let since = n - before.get(&key).copied().unwrap_or(0.0);
            (key, since)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// The status writes among `requests`: one per probe (nothing else writes Workspaces during a
/// round).
fn status_writes(requests: &Requests) -> f64 {
    requests
        .get(&("patch".to_string(), "workspaces/status".to_string()))
        .copied()
        .unwrap_or(0.0)
}

/// `requests` divided by `probes`, one `verb resource n` after the other.
fn per_probe(requests: &Requests, probes: usize) -> String {
    let each: Vec<String> = requests
        .iter()
        .map(|((verb, resource), n)| format!("{verb} {resource} {:.3}", n / probes as f64))
        .collect();
    each.join(", ")
}

/// Where the controllers' logs are kept after the run: `target/bench-scale/` (their level:
/// `BENCH_SCALE_LOG`, `warn` unless set).
fn log_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scale");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A controller process, killed when dropped (also when the benchmark fails half-way).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_controller(
    cp: &ControlPlane,
    args: &Args,
    label: &str,
    concurrency: u32,
    metrics_port: u16,
) -> anyhow::Result<Running> {
    let child = Command::new(&args.binary)
        .args(["controller", "--http-mode", "direct", "--namespace", NS])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--controller-namespace", CONTROLLER_NS])
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_SCALE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("WORKSPACE_CULLER_CACHE_DIR", cp.dir().join("probe-cache"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log_dir()?.join(format!("{label}.log")))?)
        .spawn()
        .with_context(|| format!("cannot start {}", args.binary.display()))?;
    Ok(Running(child))
}

struct Round {
    label: String,
    seconds: f64,
    probes_per_second: f64,
    rss_mib: u64,
    cpu_per_1000: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    /// kwok's and this benchmark's (the Jupyter stand-in answers every probe): the rest of the CPU.
    rest_cpu: f64,
    requests: Requests,
    /// The same round as the apiserver counted it (every client's requests).
    served: Requests,
    /// Connections to the pods' Jupyter per probe.
    connections: f64,
}

/// How long a round may take before the benchmark gives up.
const ROUND_LIMIT: Duration = Duration::from_secs(1800);

/// One full round: start the controller, wait until it has sent the status writes of as many
/// probes as there are workspaces (read from its own metrics, so watching costs nothing) and the
/// apiserver has served them (its own count), stop it.
async fn round(
    cp: &ControlPlane,
    client: &kube::Client,
    args: &Args,
    label: &str,
    concurrency: u32,
) -> anyhow::Result<Round> {
    let metrics_port = controlplane::free_port()?;
    let served_before = apiserver_requests(client).await?;
    let (apiserver, etcd) = (cp.pid("kube-apiserver").unwrap_or(0), cp.pid("etcd").unwrap_or(0));
    let (apiserver_before, etcd_before) = (cpu_seconds(apiserver), cpu_seconds(etcd));
    let rest = || cpu_seconds(cp.pid("kwok").unwrap_or(0)) + cpu_seconds(std::process::id());
    let rest_before = rest();
    let connections = CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut controller = start_controller(cp, args, label, concurrency, metrics_port)?;
    let pid = controller.0.id();
    let mut first_probe: Option<Instant> = None;
    loop {
        let written = status_writes(&api_requests(&metrics(metrics_port).await));
        if written > 0.0 {
            first_probe.get_or_insert_with(Instant::now);
        }
        if written >= args.workspaces as f64 {
            break;
        }
        if started.elapsed() > ROUND_LIMIT || controller.0.try_wait()?.is_some() {
            anyhow::bail!("{label}: only {written} of {} probed", args.workspaces);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The controller counts a request as it sends it, so the last writes are still in flight:
    // the round ends when the apiserver has served every one successfully (its /metrics, polled
    // only now). The end is when the fetch that shows it returns, so it is late, never early,
    // by up to one poll's pause and one fetch.
    let sent = started.elapsed();
    let mut so_far = Requests::new();
    let (served, fetch) = loop {
        let asked = Instant::now();
        match apiserver_requests(client).await {
            Ok(served) => {
                let served = counted_since(&served_before, served);
                if status_writes(&served) >= args.workspaces as f64 {
                    break (served, asked.elapsed());
                }
                so_far = served;
            }
            Err(e) => eprintln!("{label}: {e:#}; asking again"),
        }
        anyhow::ensure!(
            started.elapsed() < ROUND_LIMIT && controller.0.try_wait()?.is_none(),
            "{label}: the apiserver has served only these: {so_far:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{label}: the apiserver's count showed every status write served {:.2}s after the controller had sent \
         them (polled every 0.1 s; the fetch that showed it took {:.2}s)",
        seconds - sent.as_secs_f64(),
        fetch.as_secs_f64()
    );
    let probing = first_probe.map_or(seconds, |t| t.elapsed().as_secs_f64()).max(0.001);
    let text = metrics(metrics_port).await;
    let requests = api_requests(&text);
    let (rss_mib, cpu) = (peak_rss_mib(pid), cpu_seconds(pid));
    drop(controller);
    Ok(Round {
        label: label.into(),
        seconds,
        probes_per_second: args.workspaces as f64 / probing,
        rss_mib,
        cpu_per_1000: cpu * 1000.0 / args.workspaces as f64,
        apiserver_cpu: cpu_seconds(apiserver) - apiserver_before,
        etcd_cpu: cpu_seconds(etcd) - etcd_before,
        rest_cpu: rest() - rest_before,
        requests,
        served,
        connections: (CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed) - connections) as f64
            / args.workspaces as f64,
    })
}

/// The status writes alone: what a round cannot do without.
struct Writes {
    in_flight: usize,
    seconds: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    /// This benchmark's, which sends them.
    sender_cpu: f64,
}

/// The status writes a round requires and nothing else: one merge patch of `status.activity`
/// per workspace, shaped, preconditioned and answered as the controller's are
/// (`controller::patch_workspace_status`), `in_flight` at a time, sent from here after one list.
/// No controller can make a round on this machine shorter than these take.
async fn writes_alone(cp: &ControlPlane, client: &kube::Client, in_flight: usize) -> anyhow::Result<Writes> {
    let workspaces: Api<workspace_culler_policy::Workspace> = Api::namespaced(client.clone(), NS);
    let listed = workspaces.list(&Default::default()).await?.items;
    let (apiserver, etcd) = (cp.pid("kube-apiserver").unwrap_or(0), cp.pid("etcd").unwrap_or(0));
    let (apiserver_before, etcd_before) = (cpu_seconds(apiserver), cpu_seconds(etcd));
    let sender_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    futures::stream::iter(listed)
        .map(|workspace| async move {
            let end = chrono::Utc::now().timestamp_millis();
            let active = end - 60_000;
            let activity: workspace_culler_policy::Activity = serde_json::from_value(serde_json::json!({
                "lastActivity": active,
                "lastUpdate": end,
                "lastProbe": {"startTime": end - 200, "endTime": end, "result": "Success",
                              "message": format!("probe succeeded: last active at {}", rfc3339(active))},
                "rules": {"pauseWorkspace": {"eligibleAfter": active + DAY_IDLE_SECONDS * 1000}},
            }))?;
            let mut patch = workspace_culler_policy::activity_patch(&activity);
            patch["metadata"] = serde_json::json!({"resourceVersion": workspace.metadata.resource_version});
            let name = workspace.metadata.name.unwrap_or_default();
            workspace_culler::controller::patch_workspace_status(client, NS, &name, &patch).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(Writes {
        in_flight,
        seconds: started.elapsed().as_secs_f64(),
        apiserver_cpu: cpu_seconds(apiserver) - apiserver_before,
        etcd_cpu: cpu_seconds(etcd) - etcd_before,
        sender_cpu: cpu_seconds(std::process::id()) - sender_before,
    })
}

async fn clear_status(client: &kube::Client) -> anyhow::Result<()> {
    let workspaces: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kubeflow::workspace_resource());
    let names: Vec<String> = workspaces
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|w| w.metadata.name)
        .collect();
    let cleared = serde_json::json!({"status": {"activity": {"lastProbe": null, "lastActivity": 0, "lastUpdate": 0}}});
    patch_each(&workspaces, names, Subresource::Status, cleared).await
}

/// Which part of a workspace a patch is for.
enum Subresource {
    Spec,
    Status,
}

/// Merge `patch` into each of the workspaces `names`, 16 at a time.
async fn patch_each(
    workspaces: &Api<DynamicObject>,
    names: Vec<String>,
    part: Subresource,
    patch: serde_json::Value,
) -> anyhow::Result<()> {
    let (part, patch) = (&part, &patch);
    futures::stream::iter(names)
        .map(|name| async move {
            let (params, patch) = (PatchParams::default(), Patch::Merge(patch));
            match part {
                Subresource::Spec => workspaces.patch(&name, &params, &patch).await,
                Subresource::Status => workspaces.patch_status(&name, &params, &patch).await,
            }
            .map(|_| ())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    anyhow::ensure!(
        args.binary.exists(),
        "{} is missing: cargo build -p workspace-culler first",
        args.binary.display()
    );
    let bin = controlplane::binaries()?;
    let cp = ControlPlane::start_with_pod_cidr(&bin, "127.64.0.1/16").await?;
    let client = cp.client().await?;
    cp.install_crds(&kubeflow::crds_yaml()).await?;
    cp.install_crds(&workspace_culler::crds_yaml()).await?;
    let double = KubeflowDouble::start(client.clone(), cp.dir().join("pods"));
    let last_activity = LastActivity::default();
    jupyter(Duration::from_millis(args.delay_ms / 2), last_activity.clone()).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for name in [NS, CONTROLLER_NS] {
        let ns =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"tier": "development"}}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let kinds: Api<DynamicObject> = Api::all_with(client.clone(), &kubeflow::kind_resource());
    kinds
        .create(
            &PostParams::default(),
            &serde_json::from_value(kubeflow::kind_without_probe(kubeflow::JUPYTERLAB_KIND))?,
        )
        .await?;
    let mut policy = kubeflow::policy_from_kind(kubeflow::JUPYTERLAB_KIND, "scale");
    policy["spec"]["activityProbe"]["minProbeIntervalSeconds"] = 3600.into();
    policy["spec"]["activityProbe"]["probeIntervalSeconds"] = 3600.into();
    for rule in policy["spec"]["activityRules"]
        .as_array_mut()
        .context("the sample's rules")?
    {
        rule["config"]["secondsSinceActive"] = DAY_IDLE_SECONDS.into();
    }
    let policies: Api<workspace_culler_policy::CullingPolicy> = Api::all(client.clone());
    policies
        .create(&PostParams::default(), &serde_json::from_value(policy)?)
        .await?;

    let created = Instant::now();
    let workspaces: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kubeflow::workspace_resource());
    futures::stream::iter(0..args.workspaces)
        .map(|i| {
            let workspaces = workspaces.clone();
            async move {
                let mut workspace = kubeflow::sample(kubeflow::JUPYTERLAB_WORKSPACE);
                workspace["metadata"] = serde_json::json!({"name": format!("ws-{i:05}"), "namespace": NS});
                if i < args.latency_workspaces {
                    workspace["spec"]["podTemplate"]["options"]["podConfig"] = TIMED_POD_CONFIG.into();
                }
                workspaces
                    .create(&PostParams::default(), &serde_json::from_value(workspace)?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    loop {
        let running = workspaces
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|w| w.data.pointer("/status/state").and_then(|s| s.as_str()) == Some("Running"))
            .count();
        if running == args.workspaces {
            break;
        }
        anyhow::ensure!(created.elapsed() < Duration::from_secs(3600), "only {running} Running");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "{} workspaces Running in {:.0?} (kwok, Kubeflow's controller played by the double)",
        args.workspaces,
        created.elapsed()
    );

    // The double lists every workspace, StatefulSet and pod five times a second to bring them
    // up; nothing it does changes during a round, and its polling would be the apiserver's
    // largest load (Kubeflow's real controller reconciles from its informers' caches).
    drop(double);

    let ours = round(&cp, &client, &args, "this controller", args.concurrency).await?;
    clear_status(&client).await?;
    let kubeflow_model = round(&cp, &client, &args, "Kubeflow's model", 10).await?;
    print(&args, &[&ours, &kubeflow_model]);
    clear_status(&client).await?;
    let writes = writes_alone(&cp, &client, args.concurrency as usize).await?;
    print_writes(&args, &writes, &ours);
    if args.latency_workspaces > 0 {
        for background in [Background::Busy, Background::Hourly] {
            let latencies = cull_latency(&cp, &client, &args, &last_activity, background).await?;
            print_latency(&latencies, background);
        }
    }
    Ok(())
}

/// The cull latency: the first `--latency-workspaces` (by name) become eligible one after another
/// over [`LATENCY_SPREAD_MS`]; every other workspace's server says it is in use, and `background`
/// says how often those are probed. Returns each pause's delay after the `eligibleAfter` the
/// controller wrote, in seconds, and how many were not paused in time.
async fn cull_latency(
    cp: &ControlPlane,
    client: &kube::Client,
    args: &Args,
    last_activity: &LastActivity,
    background: Background,
) -> anyhow::Result<Latency> {
    let policies: Api<workspace_culler_policy::CullingPolicy> = Api::all(client.clone());
    let mut policy = serde_json::to_value(policies.get("scale").await?)?;
    policy["spec"]["activityProbe"]["minProbeIntervalSeconds"] = LATENCY_MIN_PROBE_INTERVAL.into();
    let rules = policy["spec"]["activityRules"]
        .as_array_mut()
        .context("the policy's rules")?;
    let one_minute = serde_json::json!({"secondsSinceActive": LATENCY_IDLE_SECONDS, "minRunningSeconds": 0});
    match background {
        Background::Busy => rules.iter_mut().for_each(|rule| rule["config"] = one_minute.clone()),
        Background::Hourly => {
            rules
                .iter_mut()
                .for_each(|rule| rule["config"]["secondsSinceActive"] = DAY_IDLE_SECONDS.into());
            let (key, value) = TIMED_POD_CONFIG_LABEL;
            rules.insert(
                0,
                serde_json::json!({"config": one_minute,
                                   "match": {"matchPodConfig": {"selector": {"matchLabels": {key: value}}}},
                                   "effect": {"pauseWorkspace": true}}),
            );
        }
    }
    policies
        .replace("scale", &PostParams::default(), &serde_json::from_value(policy)?)
        .await?;

    // No probe on record: the controller probes every workspace as it starts, and learns when
    // each becomes eligible from its server. Those an earlier phase paused run again.
    clear_status(client).await?;
    let workspaces: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kubeflow::workspace_resource());
    let listed = workspaces.list(&Default::default()).await?.items;
    let paused: Vec<String> = listed
        .iter()
        .filter(|w| w.data.pointer("/spec/paused").and_then(|p| p.as_bool()) == Some(true))
        .filter_map(|w| w.metadata.name.clone())
        .collect();
    patch_each(
        &workspaces,
        paused,
        Subresource::Spec,
        serde_json::json!({"spec": {"paused": false}}),
    )
    .await?;
    let last_started = listed
        .iter()
        .filter_map(|w| w.data.pointer("/status/lastRunningTime")?.as_i64())
        .max()
        .unwrap_or(0);
    let mut names: Vec<String> = listed.into_iter().filter_map(|w| w.metadata.name).collect();
    names.sort();
    // Eligible only after the controller's first round (~5 ms a workspace here), and from
    // activity after each workspace last started (SPEC §4 counts none from before).
    let start = (chrono::Utc::now().timestamp_millis() + LATENCY_LEAD_MS + 5 * names.len() as i64)
        .max(last_started + LATENCY_IDLE_SECONDS * 1000 + 1000);
    let participants: HashMap<String, i64> = {
        let mut by_name = last_activity.write().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut participants = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let at = if i < args.latency_workspaces {
                let eligible = start + i as i64 * LATENCY_SPREAD_MS / args.latency_workspaces as i64;
                participants.insert(name.clone(), eligible);
                rfc3339(eligible - LATENCY_IDLE_SECONDS * 1000)
            } else {
                IN_USE.to_string()
            };
            by_name.insert(name.clone(), at);
        }
        participants
    };

    let mut events = watcher(workspaces, watcher::Config::default())
        .applied_objects()
        .boxed();
    let metrics_port = controlplane::free_port()?;
    let controller = start_controller(cp, args, background.label(), args.concurrency, metrics_port)?;
    let mut latencies = HashMap::new();
    let last_eligible = start + LATENCY_SPREAD_MS - chrono::Utc::now().timestamp_millis();
    let until = Instant::now() + Duration::from_millis(u64::try_from(last_eligible).unwrap_or(0) + 120_000);
    while latencies.len() < participants.len() {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Ok(Some(workspace))) = tokio::time::timeout(left, events.try_next()).await else {
            break;
        };
        let name = workspace.metadata.name.clone().unwrap_or_default();
        let paused = workspace.data.pointer("/spec/paused").and_then(|p| p.as_bool()) == Some(true);
        if !paused || latencies.contains_key(&name) {
            continue;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let eligible = workspace
            .data
            .pointer("/status/activity/rules/pauseWorkspace/eligibleAfter")
            .and_then(|e| e.as_i64())
            .unwrap_or(0);
        let Some(expected) = participants.get(&name) else {
            anyhow::bail!("{name} was paused, but its server said it was in use");
        };
        anyhow::ensure!(
            (eligible - expected).abs() < 1000,
            "{name}: eligibleAfter {eligible}, expected {expected}"
        );
        anyhow::ensure!(
            now >= eligible,
            "{name} paused {} ms before it was eligible",
            eligible - now
        );
        latencies.insert(name, (now - eligible) as f64 / 1000.0);
    }
    let results = probe_results(&metrics(metrics_port).await);
    drop(controller);
    let missed = participants.len() - latencies.len();
    let mut latencies: Vec<f64> = latencies.into_values().collect();
    latencies.sort_by(f64::total_cmp);
    Ok(Latency {
        latencies,
        missed,
        results,
    })
}

/// The cull-latency phase's figures.
struct Latency {
    /// Each pause's delay after its eligibleAfter, in seconds, sorted.
    latencies: Vec<f64>,
    /// Workspaces not paused in time.
    missed: usize,
    /// Probes of the phase by result.
    results: BTreeMap<String, f64>,
}

/// `workspace_culler_probes_total` by result.
fn probe_results(metrics: &str) -> BTreeMap<String, f64> {
    series(metrics, "workspace_culler_probes_total", &["result"])
        .into_iter()
        .map(|(key, n)| (key[0].clone(), n))
        .collect()
}

fn print_latency(
    Latency {
        latencies,
        missed,
        results,
    }: &Latency,
    background: Background,
) {
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "cull latency (pause − eligibleAfter), {}: {} workspaces eligible over {} s, minProbeIntervalSeconds {}: \
         p50 {:.1} s, p90 {:.1} s, p99 {:.1} s, max {:.1} s (goal: p99 ≤ {} s); not paused in time: {missed}",
        background.label(),
        latencies.len() + missed,
        LATENCY_SPREAD_MS / 1000,
        LATENCY_MIN_PROBE_INTERVAL,
        at(0.5),
        at(0.9),
        at(0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        LATENCY_MIN_PROBE_INTERVAL + 5,
    );
    println!("probes of that phase by result: {results:?}");
}

fn print(args: &Args, rounds: &[&Round]) {
    println!(
        "{} workspaces, {} ms per probe (the built-in Jupyter probe: 2 calls of {} ms), this machine: {} cores",
        args.workspaces,
        args.delay_ms,
        args.delay_ms / 2,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>14} {:>14} {:>9} {:>10}",
        "", "round", "probes/s", "peak RSS", "CPU/1000 probes", "apiserver CPU", "etcd CPU", "other CPU"
    );
    for r in rounds {
        println!(
            "{:<18} {:>8.1}s {:>9.0} {:>5} MiB {:>13.1}s {:>13.1}s {:>8.1}s {:>9.1}s",
            r.label, r.seconds, r.probes_per_second, r.rss_mib, r.cpu_per_1000, r.apiserver_cpu, r.etcd_cpu, r.rest_cpu
        );
    }
    println!(
        "(other CPU: kwok's, and this benchmark's: its Jupyter stand-in answers every probe, and it reads the \
         controller's metrics and, at the round's end, the apiserver's, which the apiserver's CPU includes)"
    );
    for r in rounds {
        println!(
            "API requests per probe, {}: {}",
            r.label,
            per_probe(&r.requests, args.workspaces)
        );
    }
    for r in rounds {
        println!(
            "requests per probe the apiserver served during the round of {} (every client's; watches count when they end): {}",
            r.label,
            per_probe(&r.served, args.workspaces)
        );
        let (counted, served) = (status_writes(&r.requests), status_writes(&r.served));
        if counted != served {
            println!("  status writes: the controller sent {counted}, the apiserver served {served}");
        }
    }
    for r in rounds {
        println!(
            "connections to the pods' Jupyter per probe, {}: {:.2}",
            r.label, r.connections
        );
    }
    if let [ours, theirs] = rounds {
        println!(
            "ratio: Kubeflow's model takes {:.1}× as long per round (concurrency {} here, 10 there)",
            theirs.seconds / ours.seconds,
            args.concurrency
        );
    }
}

fn print_writes(args: &Args, writes: &Writes, ours: &Round) {
    println!(
        "the status writes alone ({} of them, {} in flight, sent from this benchmark after one list): {:.1}s, \
         apiserver CPU {:.1}s ({:.1} ms per write), etcd CPU {:.1}s, the sender's CPU {:.1}s",
        args.workspaces,
        writes.in_flight,
        writes.seconds,
        writes.apiserver_cpu,
        writes.apiserver_cpu * 1000.0 / args.workspaces as f64,
        writes.etcd_cpu,
        writes.sender_cpu
    );
    println!(
        "ratio: this controller's round takes {:.2}× as long as its status writes alone",
        ours.seconds / writes.seconds
    );
}
