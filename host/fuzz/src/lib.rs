//! A small mutational fuzzer (no nightly toolchain or sanitizer needed) for the parsers that
//! take untrusted input: a probe's result text (the contract validator), Kubeflow's Workspace
//! and WorkspaceKind objects and CullingPolicies as the controller decodes and validates them,
//! and the harness's fixture files. Each input is a seed from the repository, mutated by
//! random byte flips, insertions, deletions, splices and JSON/YAML tokens that break parsers
//! (deep nesting, huge numbers, odd escapes). A target passes an input when it returns without
//! panicking and what it accepts holds its invariants.
//!
//! `cargo run --release -p workspace-culler-fuzz -- [ITERATIONS] [SEED]` runs every target;
//! the test command runs a short pass of each.

use std::panic::AssertUnwindSafe;

/// A deterministic xorshift generator: a failing input is reproduced from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced, as xorshift cannot leave it).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that break parsers and arithmetic.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "-",
    "0",
    "-0",
    "1e309",
    "-1e309",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "2147483648",
    "\\u0000",
    "\\ud800",
    "\"has_activity\"",
    "\"last_activity\"",
    "\"2026-11-29T12:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"0000-01-01T00:00:00+23:59\"",
    "\n",
    "  ",
    "- ",
    ": ",
    "&a",
    "*a",
    "!!binary",
    "---",
    "~",
    "'",
    "#",
    "\t",
    "é",
    "\u{feff}",
    "timeoutSeconds",
    "secondsSinceActive",
    "minRunningSeconds",
];

/// One mutation of `input`, drawing on `seeds` for splices.
pub fn mutate(rng: &mut Rng, input: &[u8], seeds: &[&str]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.insert(at, rng.next() as u8),
            2 if !data.is_empty() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.bytes());
            }
            4 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(64)).min(data.len());
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            5 => {
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let start = rng.below(other.len());
                let end = (start + rng.below(128)).min(other.len());
                data.splice(at..at, other[start..end].iter().copied());
            }
            6 => {
                // Deep nesting.
                let depth = 1 + rng.below(300);
                let open = if rng.below(2) == 0 { "[" } else { "{\"a\":" };
                data.splice(at..at, open.repeat(depth).bytes());
            }
            _ => {
                if let Some(digit) = data.iter().position(|b| b.is_ascii_digit()) {
                    data.splice(digit..digit, b"99999999999999999999".iter().copied());
                }
            }
        }
    }
    data
}

/// A JSON value that breaks assumptions.
fn odd_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(14) {
        0 => json!(null),
        1 => json!(true),
        2 => json!(i64::MAX),
        3 => json!(i64::MIN),
        4 => json!(u64::MAX),
        5 => json!(-1),
        6 => json!(0),
        7 => json!(1.0e308),
        8 => json!(""),
        9 => json!("x".repeat(rng.below(5000))),
        10 => json!([]),
        11 => json!({}),
        12 => json!(i64::from(i32::MAX)),
        _ => json!("2026-11-29T12:00:00Z"),
    }
}

/// Replace a random node of `value` (or remove a key) `1..=4` times: structure-aware
/// mutation, so inputs get past the JSON syntax into the decoders and checks behind it.
pub fn mutate_json(rng: &mut Rng, value: &mut serde_json::Value) {
    for _ in 0..=rng.below(4) {
        mutate_node(rng, value);
    }
}

/// Walk down a random path, stopping at random, and replace (or remove) what is there.
fn mutate_node(rng: &mut Rng, node: &mut serde_json::Value) {
    let children = match &*node {
        serde_json::Value::Object(map) => map.len(),
        serde_json::Value::Array(items) => items.len(),
        _ => 0,
    };
    if children == 0 || rng.below(4) == 0 {
        *node = odd_value(rng);
        return;
    }
    let pick = rng.below(children);
    match node {
        serde_json::Value::Object(map) => {
            if rng.below(8) == 0 {
                let key = map.keys().nth(pick).cloned().unwrap_or_default();
                map.remove(&key);
            } else if let Some(child) = map.values_mut().nth(pick) {
                mutate_node(rng, child);
            }
        }
        serde_json::Value::Array(items) => mutate_node(rng, &mut items[pick]),
        _ => {}
    }
}

/// A target: takes one input, returns an error naming a broken invariant (a panic is one too).
pub type Target = fn(&[u8]) -> Result<(), String>;

/// The contract validator: what it accepts is a JSON object with only the two keys.
pub fn probe_result(input: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(());
    };
    let now = 1_780_000_000_000;
    if workspace_culler_engine::contract::validate(text, now).is_ok() {
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("accepted, but not a JSON object: {e}"))?;
        if value.keys().any(|k| k != "has_activity" && k != "last_activity") || value.is_empty() {
            return Err(format!("accepted keys {:?}", value.keys().collect::<Vec<_>>()));
        }
    }
    Ok(())
}

/// Kubeflow's objects and CullingPolicies as the controller reads them, then every decision
/// input taken from them.
pub fn resources(input: &[u8]) -> Result<(), String> {
    use workspace_culler_policy::{CullingPolicy, Workspace, WorkspaceKind, decode};
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) else {
        return Ok(());
    };
    if let Ok(ws) = decode::<Workspace>(value.clone()) {
        let _ = (
            ws.state(),
            ws.last_running_time(),
            ws.culling_disabled(),
            ws.pod_config_in_effect(),
        );
        let _ = ws.activity().map(|a| a.eligible_after());
    }
    if let Ok(kind) = decode::<WorkspaceKind>(value.clone()) {
        let _ = kind.kubeflow_probes_it();
        let _ = kind.pod_config_labels("tiny_cpu");
        let _ = kind.image_port("jupyter-scipy:v1.10.0", "jupyterlab");
    }
    if let Ok(policy) = decode::<CullingPolicy>(value) {
        let _ = workspace_culler_policy::validate(&policy.spec);
        for rule in &policy.spec.activity_rules {
            let selectors = rule
                .match_
                .iter()
                .flat_map(|m| [m.match_namespace.as_ref(), m.match_pod_config.as_ref()])
                .flatten();
            for selector in selectors {
                let _ = selector.selector.matches(&Default::default());
            }
        }
    }
    Ok(())
}

/// The harness's fixture files, and what the harness derives from one.
pub fn fixture(input: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(());
    };
    if let Ok(fixture) = serde_yaml::from_str::<probe_fixture::Fixture>(text) {
        let _ = (fixture.config_text(), fixture.deadline(), fixture.now_ms());
        for reply in &fixture.http {
            let _ = (reply.matches("/api/status"), reply.body_bytes());
        }
    }
    Ok(())
}

/// Run `target` on `iterations` mutated seeds (half byte-level, half structure-aware when the
/// seed is JSON or YAML); the inputs that failed, with why.
pub fn run(target: Target, seeds: &[&str], iterations: u64, seed: u64) -> Vec<(Vec<u8>, String)> {
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let structured: Vec<Option<serde_json::Value>> = seeds
        .iter()
        .map(|s| serde_yaml::from_str::<serde_json::Value>(s).ok())
        .collect();
    for _ in 0..iterations {
        let pick = rng.below(seeds.len());
        let input = match &structured[pick] {
            Some(value) if rng.below(2) == 0 => {
                let mut value = value.clone();
                mutate_json(&mut rng, &mut value);
                value.to_string().into_bytes()
            }
            _ => mutate(&mut rng, seeds[pick].as_bytes(), seeds),
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        let why = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(panic) => format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        failures.push((input, why));
        if failures.len() >= 5 {
            break;
        }
    }
    failures
}

/// Seeds from the repository: real probe outputs, Kubeflow's samples, policies, fixtures.
pub mod seeds {
    /// Probe results.
    pub const PROBE_RESULTS: &[&str] = &[
        r#"{"has_activity": true}"#,
        r#"{"has_activity": false}"#,
        r#"{"last_activity": "2026-11-29T12:30:00.250+01:00"}"#,
        r#"{"last_activity": null}"#,
        r#"{"has_activity": true, "last_activity": "2026-11-29T11:00:00Z"}"#,
        r#"{"has_activity": true, "has_activity": false}"#,
        "[true]",
        "",
    ];

    /// Kubeflow's samples and a policy, as JSON.
    pub fn resources() -> Vec<String> {
        let yaml = [
            include_str!("../../../tests/kubeflow/jupyterlab_v1beta1_workspace.yaml"),
            include_str!("../../../tests/kubeflow/jupyterlab_v1beta1_workspacekind.yaml"),
            include_str!("../../../tests/kubeflow/codeserver_v1beta1_workspacekind.yaml"),
            include_str!("../../../charts/workspace-culler/files/crds.yaml")
                .split("\n---\n")
                .nth(1)
                .unwrap_or(""),
        ];
        let mut seeds: Vec<String> = yaml
            .iter()
            .filter_map(|y| serde_yaml::from_str::<serde_json::Value>(y).ok())
            .map(|v| v.to_string())
            .collect();
        seeds.push(
            serde_json::json!({
                "apiVersion": "workspace-culler.io/v1alpha1", "kind": "CullingPolicy",
                "metadata": {"name": "p", "generation": 2},
                "spec": {"workspaceKinds": ["jupyterlab"], "dryRun": false,
                    "activityProbe": {"minProbeIntervalSeconds": 300, "probeIntervalSeconds": 3600,
                        "podExec": {"script": "#!/bin/sh\n", "timeoutSeconds": 60}},
                    "activityRules": [{"config": {"secondsSinceActive": 7200, "minRunningSeconds": 300},
                        "match": {"matchNamespace": {"selector": {"matchLabels": {"tier": "dev"},
                            "matchExpressions": [{"key": "gpu", "operator": "In", "values": ["1"]}]}}},
                        "effect": {"pauseWorkspace": true}}]},
                "status": {"activity": {"lastActivity": 1, "lastProbe": {"startTime": 1, "endTime": 2,
                    "result": "Success", "message": ""}}, "state": "Running", "lastRunningTime": 5}
            })
            .to_string(),
        );
        seeds
    }

    /// The harness fixtures of the built-in probes.
    pub const FIXTURES: &[&str] = &[
        include_str!("../../../tests/fixtures/jupyter/01-idle-server.yaml"),
        include_str!("../../../tests/fixtures/jupyter/02-busy-kernel.yaml"),
        include_str!("../../../tests/fixtures/exec-script/04-timeout.yaml"),
        include_str!("../../../tests/fixtures/exec-script/07-future-after-a-slow-probe.yaml"),
    ];
}

/// Every target with its seeds: (name, target, seeds).
pub fn targets() -> Vec<(&'static str, Target, Vec<String>)> {
    vec![
        (
            "probe-result",
            probe_result as Target,
            seeds::PROBE_RESULTS.iter().map(|s| s.to_string()).collect(),
        ),
        ("resources", resources as Target, seeds::resources()),
        (
            "fixture",
            fixture as Target,
            seeds::FIXTURES.iter().map(|s| s.to_string()).collect(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short pass of every target (the long run: `cargo run --release -p workspace-culler-fuzz`).
    #[test]
    fn a_short_fuzz_run_finds_nothing() {
        for (name, target, seeds) in targets() {
            let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
            let failures = run(target, &seeds, 20_000, 0x5eed);
            assert!(
                failures.is_empty(),
                "{name}: {} failing inputs, e.g. {:?}: {}",
                failures.len(),
                String::from_utf8_lossy(&failures[0].0),
                failures[0].1
            );
        }
    }

    #[test]
    fn mutation_is_reproducible_from_its_seed() {
        let seeds = ["{\"a\": 1}"];
        let a = mutate(&mut Rng::new(7), seeds[0].as_bytes(), &seeds);
        let b = mutate(&mut Rng::new(7), seeds[0].as_bytes(), &seeds);
        assert_eq!(a, b);
    }
}
