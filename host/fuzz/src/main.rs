//! `cargo run --release -p workspace-culler-fuzz -- [ITERATIONS] [SEED]`: every target for
//! ITERATIONS inputs (default 1 000 000), reporting inputs per second and any failure.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0x5eed);
    // Panics are caught and reported as failures; keep their messages off the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, target, seeds) in workspace_culler_fuzz::targets() {
        let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let failures = workspace_culler_fuzz::run(target, &seeds, iterations, seed);
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{name:<14} {iterations} inputs in {seconds:.1} s ({:.0}/s), {} failing",
            iterations as f64 / seconds,
            failures.len()
        );
        for (input, why) in &failures {
            failed = true;
            println!("  {why}\n  input: {:?}", String::from_utf8_lossy(input));
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
