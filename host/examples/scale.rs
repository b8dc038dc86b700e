//! The scale benchmark (docs/performance.md): N Running workspaces of Kubeflow's sample kind on
//! the real test control plane (kube-apiserver, etcd, kwok), probed by the built-in Jupyter
//! probe against one local server that answers every pod's IP (kwok gives pods loopback
//! addresses) after a delay, so a probe takes `--delay-ms` (two calls, each half of it). One
//! full round (every workspace probed once) is timed twice in the same run: the controller as
//! configured here (`--concurrency`), and configured like Kubeflow's own probing (probes inside
//! the reconcile, 10 workers: `--concurrency 10`). Reported: round time, probes/s, the
//! controller's API requests per probe by verb (its own request counter), peak RSS and CPU
//! seconds per 1 000 probes, the apiserver's and etcd's CPU, and the ratio of the round times.
//!
//!     scripts/bench-scale                       # 1 000 workspaces, 200 ms probes
//!     scripts/bench-scale --workspaces 10000    # the issue's scale

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use workspace_culler_support::controlplane::{self, ControlPlane};
use workspace_culler_support::kubeflow::{self, KubeflowDouble};
use workspace_culler_support::process::{cpu_seconds, peak_rss_mib};

const NS: &str = "scale";
const CONTROLLER_NS: &str = "culler-system";
const PORT: u16 = 8888;

struct Args {
    workspaces: usize,
    delay_ms: u64,
    concurrency: u32,
    binary: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        workspaces: 1000,
        delay_ms: 200,
        concurrency: 64,
        binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/workspace-culler"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--workspaces" => args.workspaces = value.parse()?,
            "--delay-ms" => args.delay_ms = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--binary" => args.binary = value.into(),
            other => anyhow::bail!("unknown flag {other} (--workspaces, --delay-ms, --concurrency, --binary)"),
        }
    }
    Ok(args)
}

/// Answers Jupyter's API for every pod after `delay`: an idle server, last active long ago.
async fn jupyter(delay: Duration) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", PORT))
        .await
        .with_context(|| format!("port {PORT} is taken"))?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
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
                        r#"{"started":"2026-01-01T00:00:00Z","last_activity":"2026-01-01T00:00:00Z","connections":0,"kernels":0}"#
                    } else {
                        "[]"
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

/// `workspace_culler_api_requests_total` of a controller's /metrics, by (verb, resource).
async fn api_requests(metrics_port: u16) -> BTreeMap<(String, String), f64> {
    let request = workspace_culler_engine::HttpRequest {
        method: http::Method::GET,
        uri: format!("http://127.0.0.1:{metrics_port}/metrics").parse().unwrap(),
        headers: Default::default(),
        body: Default::default(),
        response_body_cap: 16 << 20,
    };
    let Ok(response) = workspace_culler::transport::http(request).await else {
        return BTreeMap::new();
    };
    let text = String::from_utf8_lossy(&response.body).into_owned();
    let label = |line: &str, name: &str| {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    };
    text.lines()
        .filter(|l| l.starts_with("workspace_culler_api_requests_total{"))
        .filter_map(|l| {
            let value: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some(((label(l, "verb"), label(l, "resource")), value))
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

struct Round {
    label: String,
    seconds: f64,
    probes_per_second: f64,
    rss_mib: u64,
    cpu_per_1000: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    requests: BTreeMap<(String, String), f64>,
}

/// One full round: start the controller, wait until every workspace has a probe that started
/// after the controller did, stop it.
async fn round(
    cp: &ControlPlane,
    client: &kube::Client,
    args: &Args,
    label: &str,
    concurrency: u32,
) -> anyhow::Result<Round> {
    let workspaces: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kubeflow::workspace_resource());
    let metrics_port = controlplane::free_port()?;
    let (apiserver, etcd) = (cp.pid("kube-apiserver").unwrap_or(0), cp.pid("etcd").unwrap_or(0));
    let (apiserver_before, etcd_before) = (cpu_seconds(apiserver), cpu_seconds(etcd));
    let since = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut controller = Command::new(&args.binary)
        .args(["controller", "--http-mode", "direct", "--namespace", NS])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--controller-namespace", CONTROLLER_NS])
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env("RUST_LOG", "warn")
        .env("WORKSPACE_CULLER_CACHE_DIR", cp.dir().join("probe-cache"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(cp.dir().join(format!("{label}.log")))?)
        .spawn()
        .with_context(|| format!("cannot start {}", args.binary.display()))?;
    let pid = controller.id();
    let mut probed = HashSet::new();
    let mut first_probe: Option<Instant> = None;
    let mut events = watcher(workspaces, watcher::Config::default())
        .applied_objects()
        .boxed();
    while probed.len() < args.workspaces {
        let next = tokio::time::timeout(Duration::from_secs(600), events.try_next()).await;
        let Ok(Ok(Some(workspace))) = next else {
            anyhow::bail!("{label}: only {} of {} probed", probed.len(), args.workspaces);
        };
        let start = workspace
            .data
            .pointer("/status/activity/lastProbe/startTime")
            .and_then(|t| t.as_i64())
            .unwrap_or(0);
        if start >= since {
            first_probe.get_or_insert_with(Instant::now);
            probed.insert(workspace.metadata.name.clone().unwrap_or_default());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let probing = first_probe.map_or(seconds, |t| t.elapsed().as_secs_f64()).max(0.001);
    let requests = api_requests(metrics_port).await;
    let (rss_mib, cpu) = (peak_rss_mib(pid), cpu_seconds(pid));
    let _ = controller.kill();
    let _ = controller.wait();
    Ok(Round {
        label: label.into(),
        seconds,
        probes_per_second: args.workspaces as f64 / probing,
        rss_mib,
        cpu_per_1000: cpu * 1000.0 / args.workspaces as f64,
        apiserver_cpu: cpu_seconds(apiserver) - apiserver_before,
        etcd_cpu: cpu_seconds(etcd) - etcd_before,
        requests,
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
    futures::stream::iter(names)
        .map(|name| {
            let workspaces = workspaces.clone();
            async move {
                let patch = serde_json::json!({"status": {"activity": {"lastProbe": null, "lastActivity": 0, "lastUpdate": 0}}});
                workspaces
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
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
    let _double = KubeflowDouble::start(client.clone(), cp.dir().join("pods"));
    jupyter(Duration::from_millis(args.delay_ms / 2)).await?;
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
        rule["config"]["secondsSinceActive"] = 86_400.into();
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

    let ours = round(&cp, &client, &args, "this controller", args.concurrency).await?;
    clear_status(&client).await?;
    let kubeflow_model = round(&cp, &client, &args, "Kubeflow's model", 10).await?;
    print(&args, &[&ours, &kubeflow_model]);
    Ok(())
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
        "{:<18} {:>9} {:>9} {:>9} {:>14} {:>14} {:>9}",
        "", "round", "probes/s", "peak RSS", "CPU/1000 probes", "apiserver CPU", "etcd CPU"
    );
    for r in rounds {
        println!(
            "{:<18} {:>8.1}s {:>9.0} {:>5} MiB {:>13.1}s {:>13.1}s {:>8.1}s",
            r.label, r.seconds, r.probes_per_second, r.rss_mib, r.cpu_per_1000, r.apiserver_cpu, r.etcd_cpu
        );
    }
    for r in rounds {
        let per_probe: Vec<String> = r
            .requests
            .iter()
            .map(|((verb, resource), n)| format!("{verb} {resource} {:.3}", n / args.workspaces as f64))
            .collect();
        println!("API requests per probe, {}: {}", r.label, per_probe.join(", "));
    }
    if let [ours, theirs] = rounds {
        println!(
            "ratio: Kubeflow's model takes {:.1}× as long per round (concurrency {} here, 10 there)",
            theirs.seconds / ours.seconds,
            args.concurrency
        );
    }
}
