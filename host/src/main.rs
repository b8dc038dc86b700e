//! `workspace-culler`: one binary, several subcommands. This file only
//! parses the command line, sets up logging and dispatches.

mod allocator;
mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use workspace_culler::controller::command::{self as controller, ControllerArgs};

#[derive(Parser)]
#[command(
    name = "workspace-culler",
    version,
    about = "Pauses idle notebook Workspaces; probes are Wasm components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with activity probes (run them in isolation, inspect them).
    #[command(subcommand)]
    Probe(cli::probe::ProbeCommand),
    /// Print the CullingPolicy CRD (YAML).
    Crds,
    /// Run the culling controller.
    Controller(ControllerArgs),
    /// Show each managed workspace: policy, last activity, last probe, eligibleAfter, keep-alive, and why it is not paused.
    Status(cli::status::StatusArgs),
    /// Run everything on this machine: a real control plane, Jupyter, sample workspaces, the controller.
    #[cfg(feature = "local")]
    Local,
}

fn init_logging(command: &Command) {
    let default_filter = match command {
        Command::Controller(_) => "workspace_culler=info,probe=info,warn",
        // The demo prints its own progress; the apiserver's start-up is not an error.
        #[cfg(feature = "local")]
        Command::Local => "error,kube_client=off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    // Colours only for a terminal: a pod's log, a file or a pipe gets plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Structured (JSON) logs for clusters: LOG_FORMAT=json.
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Probe(command) => cli::probe::run(command).await,
        Command::Controller(args) => controller::run(args).await,
        Command::Status(args) => cli::status::run(args).await,
        Command::Crds => {
            print!("{}", workspace_culler::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "local")]
        Command::Local => {
            let controlplane = workspace_culler_support::controlplane::binaries()?;
            let jupyter = workspace_culler_support::controlplane::jupyter_binaries()?;
            workspace_culler::local::run(&controlplane, &jupyter).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
