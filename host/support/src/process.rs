//! What a process on this machine uses, from `/proc`: for the suites and benchmarks that
//! report a controller's memory and CPU.

/// The peak resident memory (`VmHWM`) of process `pid`, in MiB (0 if it cannot be read).
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// The CPU time (user + system) process `pid` has used, in seconds (0 if it cannot be read).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces, so split at its closing parenthesis),
    // utime and stime are the 12th and 13th fields, in clock ticks of 1/100 s.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_memory_and_has_used_cpu() {
        let pid = std::process::id();
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = std::hint::black_box(spin.wrapping_add(i));
        }
        assert!(super::peak_rss_mib(pid) > 0);
        assert!(super::cpu_seconds(pid) > 0.0);
        assert_eq!(super::peak_rss_mib(u32::MAX), 0);
    }
}
