//! `workspace-culler probe inspect`: what a probe says about itself, what
//! it imports and exports, and its digest.

use super::probe::{ProbeArg, load};
use std::process::ExitCode;
use workspace_culler_engine::{WIT_PACKAGE, WIT_VERSION, capability_warnings};

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
        println!("{:<13} {import}", if i == 0 { "imports" } else { "" });
    }
    println!("exports       {}", probe.exports.join(", "));
    for warning in capability_warnings(&info.capabilities, &probe.imports) {
        println!("warning       {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
