//! job-guard: a workspace whose notebook is idle may still be running a long
//! job (`nohup python train.py &`, a build, a render). This probe lists the
//! command lines of the container's processes and reports the workspace
//! active while one of them matches a configured pattern, idle otherwise.

use probe_sdk::{Activity, Command, ExecError, Host, LogLevel, Probe, ProbeError, ProbeInfo, Reply, Workspace};
use serde::Deserialize;

/// The probe's config (`activityProbe.module.config` of the WorkspaceKind).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Substrings of a command line that mark a job, e.g. "train.py".
    pub patterns: Vec<String>,
    /// How long listing the processes may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_timeout_ms() -> u32 {
    10_000
}

/// Marks the scanner's own process, so that it never matches itself.
const SELF_MARK: &str = "job-guard-scan";

/// Prints one command line per process (arguments joined by spaces), with
/// nothing but a POSIX shell and `tr`, which every notebook image has.
const SCAN: &str = r#"for p in /proc/[0-9]*; do
  [ -r "$p/cmdline" ] || continue
  line=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  [ -n "$line" ] && printf '%s\n' "$line"
done
exit 0"#;

/// The probe.
pub struct JobGuard;

impl Probe for JobGuard {
    const INFO: ProbeInfo = ProbeInfo {
        name: "job-guard",
        version: "0.1.0",
        description: "Active while a process whose command line matches a pattern runs in the container",
        capabilities: &["exec", "log"],
    };

    fn probe(host: &dyn Host, _workspace: &Workspace, config: &str) -> Result<Reply, ProbeError> {
        let config: Config = probe_sdk::parse_config("job-guard", config)?;
        if config.patterns.iter().all(|p| p.trim().is_empty()) {
            return Err(ProbeError::Failure(
                "job-guard probe config is invalid: `patterns` needs at least one non-empty pattern".into(),
            ));
        }
        let command = Command::new(["/bin/sh", "-c", SCAN, SELF_MARK]).timeout_ms(config.timeout_ms);
        let output = host.exec(&command).map_err(|e| match e {
            ExecError::Timeout => ProbeError::Timeout(format!(
                "job-guard: listing processes took longer than {} ms",
                config.timeout_ms
            )),
            other => ProbeError::Failure(format!("job-guard: cannot list processes: {other}")),
        })?;
        if output.exit_code != 0 {
            return Err(ProbeError::Failure(format!(
                "job-guard: listing processes exited {}: {}",
                output.exit_code,
                output.stderr_tail()
            )));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let job = text.lines().filter(|line| !line.contains(SELF_MARK)).find(|line| {
            config
                .patterns
                .iter()
                .any(|p| !p.trim().is_empty() && line.contains(p.as_str()))
        });
        Ok(match job {
            Some(line) => {
                host.log(LogLevel::Debug, &format!("job running: {line}"));
                Activity::active_now()
            }
            None => Activity::idle(),
        }
        .into())
    }
}

probe_sdk::export_probe!(JobGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use probe_sdk::testing::FakeHost;

    #[test]
    fn the_scanner_runs_as_one_marked_shell_command_with_the_configured_timeout() {
        let host = FakeHost::new().exec_reply(0, "", "");
        JobGuard::probe(
            &host,
            &Workspace::default(),
            r#"{"patterns": ["x"], "timeoutMs": 2500}"#,
        )
        .unwrap();
        let commands = host.commands();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].argv, ["/bin/sh", "-c", SCAN, SELF_MARK]);
        assert_eq!(commands[0].timeout_ms, 2500);
    }

    #[test]
    fn a_running_job_is_logged() {
        let host = FakeHost::new().exec_reply(0, "python train.py --epochs 90\n", "");
        let reply = JobGuard::probe(&host, &Workspace::default(), r#"{"patterns": ["train.py"]}"#).unwrap();
        assert_eq!(reply, Reply::Activity(Activity::ActiveNow));
        assert_eq!(
            host.logs(),
            [(LogLevel::Debug, "job running: python train.py --epochs 90".to_string())]
        );
    }
}
