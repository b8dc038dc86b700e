//! The built-in exec-script probe: runs the kind's script in the workspace's
//! main container and reads what the script wrote to `OUTPUT_JSON_PATH` as
//! Kubeflow's `podExec` probe does (the WorkspaceKind CRD's `podExec.script`):
//! a script reports inactivity only by writing JSON; no file, an empty one or
//! an object with neither key means the workspace is active.

use probe_sdk::{Activity, Command, ExecError, Host, Probe, ProbeError, ProbeInfo, Reply, Workspace};
use serde::Deserialize;

/// `activityProbe.exec` of the WorkspaceKind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecConfig {
    /// The script; its first line is a shebang.
    pub script: String,
    /// Where the script writes its JSON result.
    #[serde(default = "default_output_path")]
    pub output_path: String,
    /// The whole probe must finish within this.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
}

fn default_output_path() -> String {
    "/tmp/activity_probe.json".into()
}

fn default_timeout() -> u32 {
    60
}

/// Longest shebang line the kernel honours.
const MAX_SHEBANG: usize = 255;

/// Longest script: it travels as one argument, and Linux refuses a single
/// argument over 128 KiB (MAX_ARG_STRLEN) with a bare "argument list too long".
const MAX_SCRIPT_BYTES: usize = 128 * 1024 - 1;

/// Largest result file: the contract's cap on a probe's result (a result is a small JSON
/// object; the host may have cut a longer output already).
const MAX_FILE_BYTES: usize = 64 * 1024;

/// Marks the runner's own errors on stderr, to tell them from the script's.
const RUNNER_MARK: &str = "activity-probe-runner:";

/// Removes a stale result, stores the script (passed as an argument, so no
/// exec implementation needs to support closing stdin) in a temporary file,
/// runs it with its shebang's interpreter (so a `noexec` /tmp still works),
/// and prints the result file, if the script wrote one. The script's own
/// stdout goes to stderr so that stdout carries only the result.
const RUNNER: &str = r#"out="$1"; interp="$2"; body="$3"; arg="${4:-}"
fail() { echo "activity-probe-runner: $*" >&2; exit 125; }
rm -f -- "$out" || fail "cannot remove the stale output file $out"
script=$(mktemp "${TMPDIR:-/tmp}/activity-probe.XXXXXX") || fail "cannot create a temporary file"
printf '%s' "$body" > "$script" || fail "cannot write the script to $script"
if [ -n "$arg" ]; then OUTPUT_JSON_PATH="$out" "$interp" "$arg" "$script" >&2
else OUTPUT_JSON_PATH="$out" "$interp" "$script" >&2; fi
rc=$?
rm -f -- "$script"
[ "$rc" -eq 0 ] || exit "$rc"
[ -f "$out" ] || exit 0
cat -- "$out"
"#;

/// The exec-script probe.
pub struct ExecScript;

impl ExecConfig {
    /// The interpreter and its optional argument, from the shebang line.
    fn interpreter(&self) -> Result<(String, String), ProbeError> {
        let first = self.script.lines().next().unwrap_or("");
        let fail = |why: &str| ProbeError::Failure(format!("Exec probe failed: invalid script: {why}"));
        if self.script.len() > MAX_SCRIPT_BYTES {
            return Err(fail(&format!(
                "it is {} bytes; at most {MAX_SCRIPT_BYTES} bytes fit in one exec argument (keep the script small, \
                 or ship a larger program in the image and call it)",
                self.script.len()
            )));
        }
        let line = first
            .strip_prefix("#!")
            .ok_or_else(|| fail("it must start with a shebang line (#!...)"))?;
        if first.len() > MAX_SHEBANG {
            return Err(fail(&format!(
                "the shebang line is longer than {MAX_SHEBANG} characters"
            )));
        }
        let line = line.trim();
        let (interp, arg) = match line.split_once(char::is_whitespace) {
            Some((i, a)) => (i, a.trim()),
            None => (line, ""),
        };
        if interp.is_empty() {
            return Err(fail("the shebang line names no interpreter"));
        }
        Ok((interp.to_string(), arg.to_string()))
    }
}

impl Probe for ExecScript {
    const INFO: ProbeInfo = ProbeInfo {
        name: "exec-script",
        version: env!("CARGO_PKG_VERSION"),
        description: "Runs a script in the workspace's main container; the script writes the activity JSON",
        capabilities: &["exec"],
    };

    fn probe(host: &dyn Host, _workspace: &Workspace, config: &str) -> Result<Reply, ProbeError> {
        let config: ExecConfig = probe_sdk::parse_config("Exec", config)?;
        let (interp, arg) = config.interpreter()?;
        let timeout_ms = config.timeout_seconds.saturating_mul(1000);
        // The shebang's optional argument comes last, and only when there is one.
        let mut argv = vec![
            "/bin/sh",
            "-c",
            RUNNER,
            "activity-probe",
            &config.output_path,
            &interp,
            &config.script,
        ];
        if !arg.is_empty() {
            argv.push(&arg);
        }
        let command = Command::new(argv).timeout_ms(timeout_ms);
        let output = match host.exec(&command) {
            Ok(output) => output,
            Err(ExecError::Timeout) => {
                return Err(ProbeError::Timeout(format!(
                    "Exec probe failed: timeout after {timeout_ms}ms"
                )));
            }
            Err(e) => return Err(ProbeError::Failure(format!("Exec probe failed: {e}"))),
        };
        let stderr = output.stderr_tail();
        if let Some(why) = stderr.strip_prefix(RUNNER_MARK) {
            return Err(ProbeError::Failure(format!("Exec probe failed: {}", why.trim())));
        }
        if output.exit_code != 0 {
            let detail = if stderr.is_empty() {
                String::new()
            } else {
                format!(" ({stderr})")
            };
            return Err(ProbeError::Failure(format!(
                "Exec probe failed: unexpected exit code {}{detail}",
                output.exit_code
            )));
        }
        let text = String::from_utf8(output.stdout)
            .map_err(|_| ProbeError::Failure(format!("Exec probe failed: {} is not UTF-8 text", config.output_path)))?;
        reply_of(&text, &config.output_path)
    }
}

/// The result the script's file gives, in Kubeflow's `podExec` meaning: `has_activity` wins
/// when it is there (`last_activity` is then ignored); `last_activity` alone is relayed, for
/// the host to check as any probe's; an empty file, `null` or an object with neither key is
/// activity now; other keys are ignored. A file that is not such an object, or a key of the
/// wrong type, is a failure naming it.
fn reply_of(text: &str, path: &str) -> Result<Reply, ProbeError> {
    use serde_json::Value;
    let fail = |why: String| ProbeError::Failure(format!("Exec probe failed: {path}: {why}"));
    let kind = |value: &Value| match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "is {} bytes or more, over the cap of {MAX_FILE_BYTES} bytes",
            text.len()
        )));
    }
    let text = text.trim();
    if text.is_empty() {
        return Ok(Activity::active_now().into());
    }
    let object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) => return Ok(Activity::active_now().into()),
        Ok(Value::Object(object)) => object,
        Ok(other) => return Err(fail(format!("must hold a JSON object, got {}", kind(&other)))),
        Err(e) => return Err(fail(format!("is not valid JSON ({e})"))),
    };
    let has_activity = match object.get("has_activity") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(active)) => Some(*active),
        Some(other) => return Err(fail(format!("has_activity must be true or false, got {}", kind(other)))),
    };
    // With has_activity there, last_activity is "totally ignored (the probe does not fail)".
    match has_activity {
        Some(true) => return Ok(Activity::active_now().into()),
        Some(false) => return Ok(Activity::idle().into()),
        None => {}
    }
    Ok(match object.get("last_activity") {
        None | Some(Value::Null) => Activity::active_now().into(),
        Some(Value::String(time)) => Reply::Json(serde_json::json!({ "last_activity": time }).to_string()),
        Some(other) => {
            return Err(fail(format!(
                "last_activity must be a timestamp string, got {}",
                kind(other)
            )));
        }
    })
}

probe_sdk::export_probe!(ExecScript);

#[cfg(test)]
mod tests {
    use super::*;
    use probe_sdk::testing::FakeHost;

    fn config(script: &str) -> String {
        serde_json::json!({ "script": script, "timeoutSeconds": 5 }).to_string()
    }

    #[test]
    fn reads_the_result_file_and_runs_the_shebang_interpreter() {
        let host = FakeHost::new().exec_reply(0, r#"{"has_activity":true}"#, "");
        let reply = ExecScript::probe(
            &host,
            &Workspace::default(),
            &config("#!/usr/bin/env python3\nprint(1)"),
        );
        assert_eq!(reply, Ok(Reply::Activity(Activity::ActiveNow)));
        let cmd = &host.commands()[0];
        assert_eq!(
            cmd.argv[4..],
            [
                "/tmp/activity_probe.json",
                "/usr/bin/env",
                "#!/usr/bin/env python3\nprint(1)",
                "python3"
            ]
        );
        assert_eq!(cmd.timeout_ms, 5000);
        assert!(cmd.stdin.is_empty());
    }

    #[test]
    fn maps_exit_codes_timeouts_and_runner_errors() {
        let cases = [
            (
                FakeHost::new().exec_reply(100, "", ""),
                "Exec probe failed: unexpected exit code 100",
            ),
            (
                FakeHost::new().exec_reply(3, "", "oops\n"),
                "Exec probe failed: unexpected exit code 3 (oops)",
            ),
            (
                FakeHost::new().exec_reply(125, "", "activity-probe-runner: cannot create a temporary file"),
                "Exec probe failed: cannot create a temporary file",
            ),
        ];
        for (host, message) in cases {
            let reply = ExecScript::probe(&host, &Workspace::default(), &config("#!/bin/sh\nexit 1"));
            assert_eq!(reply, Err(ProbeError::Failure(message.into())));
        }
        let host = FakeHost::new().exec_result(Err(ExecError::Timeout));
        let reply = ExecScript::probe(&host, &Workspace::default(), &config("#!/bin/sh\nsleep 99"));
        assert_eq!(
            reply,
            Err(ProbeError::Timeout("Exec probe failed: timeout after 5000ms".into()))
        );
    }

    #[test]
    fn reads_the_file_as_kubeflow_s_pod_exec_probe_does() {
        let reply = |file: &str| {
            ExecScript::probe(
                &FakeHost::new().exec_reply(0, file, ""),
                &Workspace::default(),
                &config("#!/bin/sh"),
            )
        };
        let active = Ok(Reply::Activity(Activity::ActiveNow));
        // A script reports inactivity only by writing JSON: no file (the runner prints
        // nothing), an empty one, `null` or an object with neither key is activity.
        for file in [
            "",
            " \n",
            "null",
            "{}",
            r#"{"last_activity": null}"#,
            r#"{"has_activity": null}"#,
        ] {
            assert_eq!(reply(file), active, "{file:?}");
        }
        assert_eq!(reply(r#"{"has_activity": true, "note": "ignored"}"#), active);
        // has_activity wins over last_activity, whatever that holds.
        assert_eq!(reply(r#"{"has_activity": true, "last_activity": "soon"}"#), active);
        assert_eq!(reply(r#"{"has_activity": true, "last_activity": 0}"#), active);
        assert_eq!(
            reply(r#"{"has_activity": false, "last_activity": "2026-11-29T00:00:00Z"}"#),
            Ok(Reply::Activity(Activity::Idle))
        );
        // last_activity alone goes to the host, which checks its time as any probe's.
        assert_eq!(
            reply(r#"{"last_activity": "2026-11-29T00:00:00Z", "x": 1}"#),
            Ok(Reply::Json(r#"{"last_activity":"2026-11-29T00:00:00Z"}"#.into()))
        );
        for (file, why) in [
            (
                r#"{"has_activity": "yes"}"#,
                "has_activity must be true or false, got a string",
            ),
            (
                r#"{"last_activity": 5}"#,
                "last_activity must be a timestamp string, got a number",
            ),
            ("[true]", "must hold a JSON object, got an array"),
            ("has_activity=true", "is not valid JSON"),
        ] {
            assert!(
                matches!(reply(file), Err(ProbeError::Failure(ref m)) if m.starts_with("Exec probe failed: /tmp/activity_probe.json: ") && m.contains(why)),
                "{file}: {:?}",
                reply(file)
            );
        }
    }

    #[test]
    fn rejects_scripts_without_a_usable_shebang_before_running_anything() {
        for script in ["echo hi", "#!\n", &format!("#!/bin/{}", "x".repeat(300))] {
            let host = FakeHost::new();
            let reply = ExecScript::probe(&host, &Workspace::default(), &config(script));
            assert!(
                matches!(reply, Err(ProbeError::Failure(ref m)) if m.contains("invalid script")),
                "{reply:?}"
            );
            assert!(host.commands().is_empty());
        }
        let reply = ExecScript::probe(&FakeHost::new(), &Workspace::default(), r##"{"scrpt":"#!/bin/sh"}"##);
        assert!(
            matches!(reply, Err(ProbeError::Failure(ref m)) if m.contains("unknown field `scrpt`")),
            "{reply:?}"
        );
    }

    #[test]
    fn a_script_too_long_for_one_argument_is_refused_by_its_size() {
        let long = format!("#!/bin/sh\n{}", "# padding\n".repeat(14_000));
        let host = FakeHost::new();
        match ExecScript::probe(&host, &Workspace::default(), &config(&long)) {
            Err(ProbeError::Failure(m)) => assert!(
                m.contains(&format!("it is {} bytes; at most 131071 bytes", long.len())),
                "{m}"
            ),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(host.commands().is_empty());
        let fits = format!("#!/bin/sh\n{}", "x".repeat(MAX_SCRIPT_BYTES - 10));
        let host = FakeHost::new().exec_reply(0, r#"{"has_activity": true}"#, "");
        assert!(ExecScript::probe(&host, &Workspace::default(), &config(&fits)).is_ok());
    }
}
