//! `workspace-culler probe test`: run a probe against fixtures or live
//! targets, compare with what each fixture expects, and record live runs.

use super::probe::{ProbeArg, fixtures, load};
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use workspace_culler::harness::{self, Expectation, LiveMode};

#[derive(Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub probe: ProbeArg,
    /// A fixture file (YAML or JSON), or a directory of them.
    #[arg(long)]
    pub fixture: Option<PathBuf>,
    /// The probe's JSON config (replaces the fixture's).
    #[arg(long)]
    pub config: Option<String>,
    /// Expected result (Success, Failure, Timeout); exit 1 if it differs.
    #[arg(long)]
    pub expect: Option<String>,
    /// Run exec calls as local processes.
    #[arg(long)]
    pub live_exec: bool,
    /// Send HTTP calls to the real address (the workspace's pod IP).
    #[arg(long)]
    pub live_http: bool,
    /// The workspace's pod IP (default 127.0.0.1).
    #[arg(long)]
    pub pod_ip: Option<String>,
    /// A port of the workspace, `id=number` (repeatable).
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<(String, u16)>,
    /// Workspace as `namespace/name`.
    #[arg(long, value_parser = parse_workspace)]
    pub workspace: Option<(String, String)>,
    /// Write a fixture that replays this run (the replies of the live calls,
    /// the clock, and the outcome as expectation) to this file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

fn parse_port(s: &str) -> Result<(String, u16), String> {
    let (id, n) = s.split_once('=').ok_or("expected id=number, e.g. jupyterlab=8888")?;
    Ok((
        id.to_string(),
        n.parse().map_err(|_| format!("{n:?} is not a port number"))?,
    ))
}

fn parse_workspace(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => Err("expected namespace/name, e.g. team-a/notebook".into()),
    }
}

/// Runs every case; exit 1 when one differs from what it expects.
pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (engine, probe, label) = load(&args.probe).await?;
    // The name the probe gives itself (`info().name`), not its file's; the label if it has none.
    let name = match engine.info(&probe).await {
        Ok(info) if !info.name.is_empty() => info.name,
        _ => label,
    };
    let live = LiveMode {
        exec: args.live_exec,
        http: args.live_http,
    };
    let cases = fixtures(args.fixture.as_deref())?;
    if args.record.is_some() && cases.len() != 1 {
        bail!("--record writes one case; give one fixture file (or none), not a directory");
    }
    if args.record.is_some() && !args.live_exec && !args.live_http {
        bail!("--record records live calls; add --live-exec and/or --live-http");
    }
    // A folder is a test suite: each of its fixtures must say what should come of it.
    let suite = args.fixture.as_deref().is_some_and(Path::is_dir);
    let (mut passed, mut failed) = (0, 0);
    for (source, mut fixture) in cases {
        if let Some(config) = &args.config {
            fixture.config = serde_json::from_str(config).context("--config is not JSON")?;
        }
        if let Some(result) = &args.expect {
            let expect = fixture.expect.get_or_insert_with(Expectation::default);
            expect.result = result.clone();
        }
        if let Some(ip) = &args.pod_ip {
            fixture.workspace.pod_ip = ip.clone();
        }
        fixture.workspace.ports.extend(args.ports.iter().cloned());
        if let Some((namespace, name)) = &args.workspace {
            fixture.workspace.namespace = namespace.clone();
            fixture.workspace.name = name.clone();
        }
        let report = harness::run_case(&engine, &probe, &name, &fixture, live).await?;
        println!("── {source}");
        print!(
            "{}",
            harness::render(&format!("{name} (sha256 {})", &probe.digest[..16]), &fixture, &report)
        );
        if let Some(path) = &args.record {
            let mut recording = report.recording.clone();
            recording
                .description
                .get_or_insert_with(|| format!("recorded from a live run of {name}"));
            let yaml = serde_yaml::to_string(&recording)?;
            std::fs::write(path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "recorded   {} (replay: probe test {} --fixture {})",
                path.display(),
                args.probe.probe,
                path.display()
            );
        }
        if suite && fixture.expect.is_none() {
            println!("UNCHECKED  it has no `expect`, so nothing was compared (add one, or --expect)");
            failed += 1;
        } else if report.mismatches.is_empty() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if passed + failed > 1 || failed > 0 {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
