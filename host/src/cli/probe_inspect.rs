//! `workspace-culler probe inspect`: what a probe says about itself, what
//! it imports and exports, and its digest.

use super::probe::{ProbeArg, load};
use std::process::ExitCode;
use workspace_culler_engine::{WIT_PACKAGE, WIT_VERSION, capability_warnings};

/// What the world `activity-probe` exports.
const CONTRACT_EXPORTS: &[&str] = &["info", "probe"];

fn join(names: &[&String]) -> String {
    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// What the host links for an import a language runtime brings along but the contract does
/// not give a probe (docs/contract.md, "What a probe cannot do").
fn what_the_host_gives(import: &str) -> Option<&'static str> {
    let interface = import.split('@').next().unwrap_or(import);
    Some(match interface {
        i if i.starts_with("wasi:filesystem/") => "linked, with no directory open: every path fails",
        i if i.starts_with("wasi:sockets/") => "linked, refused: no socket, no name lookup",
        "wasi:cli/environment" => "linked, empty: no variables, no arguments",
        "wasi:cli/stdin" => "linked, empty",
        _ => return None,
    })
}

/// Prints the probe's description.
pub async fn run(arg: ProbeArg) -> anyhow::Result<ExitCode> {
    let (engine, probe, _) = load(&arg).await?;
    let info = engine.info(&probe).await?;
    let unknown = "(none: it imports nothing of the contract)".to_string();
    println!("name          {}", info.name);
    println!("version       {}", info.version);
    println!("description   {}", info.description);
    println!("capabilities  {}", info.capabilities.join(", "));
    println!("world         {WIT_PACKAGE}/activity-probe");
    println!(
        "wit version   {} (this host: {WIT_VERSION})",
        probe.wit_version.as_ref().unwrap_or(&unknown)
    );
    println!("sha256        {}", probe.digest);
    println!("size          {} KiB", probe.size.div_ceil(1024));
    for (i, import) in probe.imports.iter().enumerate() {
        let label = if i == 0 { "imports" } else { "" };
        match what_the_host_gives(import) {
            Some(note) => println!("{label:<13} {import}   ({note})"),
            None => println!("{label:<13} {import}"),
        }
    }
    let (contract, other): (Vec<&String>, Vec<&String>) = probe
        .exports
        .iter()
        .partition(|e| CONTRACT_EXPORTS.contains(&e.as_str()));
    println!("exports       {}", join(&contract));
    if !other.is_empty() {
        println!("also exports  {}   (the host calls only info and probe)", join(&other));
    }
    for warning in capability_warnings(&info.capabilities, &probe.imports) {
        println!("warning       {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
