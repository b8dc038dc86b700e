//! The built-in `nvidia-gpu` probe: a notebook whose kernel and terminals are quiet may still be
//! training on its GPUs. The probe samples every GPU the workspace's container sees with
//! `nvidia-smi` a few times over a short window and reports the workspace active while any GPU
//! is busy in any sample, idle when every GPU stays under the thresholds throughout.
//!
//! It runs one command in the container: a POSIX shell loop around
//! `nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits`,
//! which prints one line per GPU and sample, e.g. `0, 87, 30512`. A value nvidia-smi cannot
//! report (`[N/A]`, `[Not Supported]`: utilization of a GPU in MIG mode, for one) is judged by
//! the memory threshold when one is set, and is otherwise a `Failure` saying so: the probe never
//! calls a GPU idle that it could not measure.

use probe_sdk::{Activity, Command, ExecError, Host, LogLevel, Probe, ProbeError, ProbeInfo, Reply, Workspace};
use serde::Deserialize;

/// The probe's config (`activityProbe.module.config` of a CullingPolicy).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// How many times nvidia-smi is run (1 to 30).
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// Seconds between two samples (1 to 60).
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: u32,
    /// A GPU at or above this utilization (percent) in any sample makes the workspace active.
    #[serde(default = "default_utilization_percent")]
    pub utilization_percent: u32,
    /// When set, a GPU with at least this much memory in use (MiB) in any sample makes the
    /// workspace active; it also judges GPUs whose utilization cannot be read (MIG mode).
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: Option<u64>,
}

fn default_samples() -> u32 {
    3
}

fn default_interval_seconds() -> u32 {
    5
}

fn default_utilization_percent() -> u32 {
    10
}

/// Time the command may take beyond the window itself (nvidia-smi can be slow to start).
const SLACK_MS: u32 = 15_000;

/// Runs nvidia-smi `$1` times, `$2` seconds apart; the first failure ends the loop with its
/// exit status.
const SAMPLER: &str = r#"n=0
while :; do
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits || exit
  n=$((n + 1))
  [ "$n" -lt "$1" ] || exit 0
  sleep "$2"
done"#;

/// `$0` of the sampler: names it in the container's process list.
const SAMPLER_NAME: &str = "nvidia-gpu-sample";

/// What one line of nvidia-smi says about one GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The GPU's index.
    pub gpu: String,
    /// Utilization in percent; `None` when nvidia-smi cannot report it.
    pub utilization: Option<f64>,
    /// Memory in use, MiB; `None` when nvidia-smi cannot report it.
    pub memory_mib: Option<f64>,
}

/// A number, or `None` for nvidia-smi's bracketed "no value" words (`[N/A]`, `[Not Supported]`,
/// `[Unknown Error]`, ...); anything else is not nvidia-smi's output.
fn value(field: &str) -> Result<Option<f64>, ()> {
    let field = field.trim();
    if field.starts_with('[') && field.ends_with(']') {
        return Ok(None);
    }
    field.parse::<f64>().map(Some).map_err(|_| ())
}

/// The samples in nvidia-smi's output, one per non-empty line.
pub fn parse(stdout: &str) -> Result<Vec<Sample>, String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let unexpected = || {
                let shown: String = line.chars().take(120).collect();
                format!("nvidia-gpu: unexpected nvidia-smi output {shown:?} (expected \"index, utilization, memory\")")
            };
            let fields: Vec<&str> = line.split(',').collect();
            let [gpu, utilization, memory] = fields[..] else {
                return Err(unexpected());
            };
            Ok(Sample {
                gpu: gpu.trim().to_string(),
                utilization: value(utilization).map_err(|_| unexpected())?,
                memory_mib: value(memory).map_err(|_| unexpected())?,
            })
        })
        .collect()
}

/// What the samples say under `config`.
pub fn judge(samples: &[Sample], config: &Config) -> Result<Activity, ProbeError> {
    if samples.is_empty() {
        return Err(ProbeError::Failure("nvidia-gpu: nvidia-smi listed no GPU".into()));
    }
    let busy = |s: &Sample| {
        s.utilization
            .is_some_and(|u| u >= f64::from(config.utilization_percent))
            || matches!((s.memory_mib, config.memory_mib), (Some(used), Some(limit)) if used >= limit as f64)
    };
    if samples.iter().any(busy) {
        return Ok(Activity::active_now());
    }
    let unmeasured = samples.iter().find(|s| match config.memory_mib {
        None => s.utilization.is_none(),
        Some(_) => s.utilization.is_none() && s.memory_mib.is_none(),
    });
    if let Some(sample) = unmeasured {
        return Err(ProbeError::Failure(format!(
            "nvidia-gpu: GPU {} reports no utilization (nvidia-smi prints [N/A] for a GPU in MIG mode); \
             set config.memoryMiB to judge it by the memory in use",
            sample.gpu
        )));
    }
    Ok(Activity::idle())
}

fn first_line(output: &probe_sdk::ExecOutput) -> String {
    [&output.stderr, &output.stdout]
        .into_iter()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .find_map(|text| text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string))
        .map(|line| line.chars().take(200).collect())
        .unwrap_or_default()
}

fn check(config: &Config) -> Result<(), ProbeError> {
    let invalid = |what: String| {
        Err(ProbeError::Failure(format!(
            "nvidia-gpu probe config is invalid: {what}"
        )))
    };
    if !(1..=30).contains(&config.samples) {
        return invalid(format!("samples must be 1 to 30, got {}", config.samples));
    }
    if !(1..=60).contains(&config.interval_seconds) {
        return invalid(format!(
            "intervalSeconds must be 1 to 60, got {}",
            config.interval_seconds
        ));
    }
    if config.utilization_percent > 100 {
        return invalid(format!(
            "utilizationPercent must be 0 to 100, got {}",
            config.utilization_percent
        ));
    }
    Ok(())
}

/// The probe.
pub struct NvidiaGpu;

impl Probe for NvidiaGpu {
    const INFO: ProbeInfo = ProbeInfo {
        name: "nvidia-gpu",
        version: "0.1.0",
        description: "Active while a GPU of the container is busy, sampled with nvidia-smi over a short window",
        capabilities: &["exec", "log"],
    };

    fn probe(host: &dyn Host, _workspace: &Workspace, config: &str) -> Result<Reply, ProbeError> {
        let config: Config = probe_sdk::parse_config("nvidia-gpu", config)?;
        check(&config)?;
        let window_ms = (config.samples - 1) * config.interval_seconds * 1000;
        let command = Command::new([
            "/bin/sh".to_string(),
            "-c".into(),
            SAMPLER.into(),
            SAMPLER_NAME.into(),
            config.samples.to_string(),
            config.interval_seconds.to_string(),
        ])
        .timeout_ms(window_ms + SLACK_MS);
        let output = host.exec(&command).map_err(|e| match e {
            ExecError::Timeout => ProbeError::Timeout(format!(
                "nvidia-gpu: sampling {} times {} s apart did not finish in time",
                config.samples, config.interval_seconds
            )),
            other => ProbeError::Failure(format!("nvidia-gpu: cannot run nvidia-smi: {other}")),
        })?;
        match output.exit_code {
            0 => {}
            127 => {
                return Err(ProbeError::Failure(format!(
                    "nvidia-gpu: nvidia-smi is not in the workspace's container (exit 127: {}); \
                     the probe needs an image with the NVIDIA utilities and a GPU",
                    first_line(&output)
                )));
            }
            code => {
                return Err(ProbeError::Failure(format!(
                    "nvidia-gpu: nvidia-smi exited {code}: {}",
                    first_line(&output)
                )));
            }
        }
        let samples = parse(&String::from_utf8_lossy(&output.stdout)).map_err(ProbeError::Failure)?;
        let activity = judge(&samples, &config)?;
        let peak = samples.iter().filter_map(|s| s.utilization).fold(0.0, f64::max);
        host.log(
            LogLevel::Debug,
            &format!("{} samples, peak utilization {peak}%", samples.len()),
        );
        Ok(activity.into())
    }
}

probe_sdk::export_probe!(NvidiaGpu);

#[cfg(test)]
mod tests {
    use super::*;
    use probe_sdk::testing::FakeHost;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_sampler_runs_once_with_its_window_as_arguments_and_a_timeout_beyond_it() {
        let host = FakeHost::new().exec_reply(0, "0, 0, 10\n", "");
        NvidiaGpu::probe(&host, &Workspace::default(), r#"{"samples": 4, "intervalSeconds": 2}"#).unwrap();
        let commands = host.commands();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].argv, ["/bin/sh", "-c", SAMPLER, SAMPLER_NAME, "4", "2"]);
        assert_eq!(commands[0].timeout_ms, 6_000 + SLACK_MS);
    }

    #[test]
    fn a_busy_gpu_in_any_sample_is_activity_and_utilization_under_the_threshold_is_not() {
        let samples = parse("0, 9, 100\n1, 0, 0\n0, 10, 100\n").unwrap();
        let defaults = config("{}");
        assert_eq!(judge(&samples, &defaults).unwrap(), Activity::ActiveNow);
        assert_eq!(judge(&samples[..2], &defaults).unwrap(), Activity::Idle);
        let by_memory = config(r#"{"memoryMiB": 100}"#);
        assert_eq!(judge(&samples[1..2], &by_memory).unwrap(), Activity::Idle);
        assert_eq!(judge(&samples[..1], &by_memory).unwrap(), Activity::ActiveNow);
    }

    #[test]
    fn a_gpu_that_cannot_be_measured_is_never_called_idle() {
        let samples = parse("0, [N/A], 20\n").unwrap();
        let message = match judge(&samples, &config("{}")) {
            Err(ProbeError::Failure(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(message.contains("GPU 0 reports no utilization"), "{message}");
        assert_eq!(
            judge(&samples, &config(r#"{"memoryMiB": 500}"#)).unwrap(),
            Activity::Idle
        );
        let nothing = parse("0, [N/A], [N/A]\n").unwrap();
        assert!(judge(&nothing, &config(r#"{"memoryMiB": 500}"#)).is_err());
    }

    #[test]
    fn output_that_is_not_nvidia_smis_is_refused_by_line() {
        let error = parse("0, 5, 10\nWarning: persistence mode is disabled\n").unwrap_err();
        assert!(error.contains("\"Warning: persistence mode is disabled\""), "{error}");
        assert!(parse("0, five, 10\n").is_err());
        assert!(parse("0, 5\n").is_err());
    }
}
