//! The probe contract (SPEC §5) at the host boundary: whatever a probe returns is judged here
//! ([`validate`]), and a mistake becomes a message that tells the probe's author exactly what
//! to fix; [`ProbeActivity`] is what a valid result says, and [`ProbeOutcome`] how an
//! evaluation ended. The engine produces outcomes and the decisions consume them: both use
//! these types, and neither depends on the other.

use chrono::DateTime;
use serde_json::Value;

/// Largest result text a probe may return.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// How far ahead of the probe's start a `last_activity` may be (clock skew).
pub const MAX_FUTURE_MS: i64 = 60_000;

const HAS_ACTIVITY: &str = "has_activity";
const LAST_ACTIVITY: &str = "last_activity";

/// What a valid probe result says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeActivity {
    /// `has_activity: true`: active in the last 60 seconds.
    ActiveNow,
    /// `has_activity: false`: not active now.
    Idle,
    /// `last_activity: <timestamp>`, in Unix milliseconds.
    LastAt(i64),
    /// `last_activity: null`: unknown.
    Unknown,
}

impl std::fmt::Display for ProbeActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeActivity::ActiveNow => f.write_str("active now"),
            ProbeActivity::Idle => f.write_str("not active now"),
            ProbeActivity::Unknown => f.write_str("last activity unknown"),
            ProbeActivity::LastAt(ms) => match DateTime::from_timestamp_millis(*ms) {
                Some(t) => write!(
                    f,
                    "last active at {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                None => write!(f, "last active at {ms} ms"),
            },
        }
    }
}

/// How an evaluation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A valid result.
    Success(ProbeActivity),
    /// No result; the message says why (becomes `lastProbe.message`).
    Failure(String),
    /// Out of time; the message says so.
    Timeout(String),
}

impl ProbeOutcome {
    /// `Success`, `Failure` or `Timeout`, as Kubeflow's `lastProbe.result` spells it.
    pub fn result(&self) -> &'static str {
        match self {
            ProbeOutcome::Success(_) => "Success",
            ProbeOutcome::Failure(_) => "Failure",
            ProbeOutcome::Timeout(_) => "Timeout",
        }
    }
}

/// The verdict of probes combined with `anyOf`, from each one's name and outcome: active when
/// any of them found activity now; otherwise a `Failure` (or a `Timeout`, when every probe that
/// did not succeed ran out of time) naming each probe that gave no answer, since it might have
/// found activity; otherwise, every probe having answered, the latest `last_activity` any of
/// them reported (a probe that found none adds nothing), or not active now.
pub fn any_of(outcomes: impl IntoIterator<Item = (String, ProbeOutcome)>) -> ProbeOutcome {
    let mut unanswered = Vec::new();
    let mut all_timeouts = true;
    let mut latest: Option<i64> = None;
    let mut idle = false;
    for (i, (name, outcome)) in outcomes.into_iter().enumerate() {
        match outcome {
            ProbeOutcome::Success(ProbeActivity::ActiveNow) => return ProbeOutcome::Success(ProbeActivity::ActiveNow),
            ProbeOutcome::Success(ProbeActivity::LastAt(at)) => latest = latest.max(Some(at)),
            ProbeOutcome::Success(ProbeActivity::Idle) => idle = true,
            ProbeOutcome::Success(ProbeActivity::Unknown) => {}
            ProbeOutcome::Failure(message) => {
                all_timeouts = false;
                unanswered.push(format!("anyOf[{i}] {name}: {message}"));
            }
            ProbeOutcome::Timeout(message) => unanswered.push(format!("anyOf[{i}] {name}: {message}")),
        }
    }
    match (unanswered.is_empty(), latest) {
        (false, _) if all_timeouts => ProbeOutcome::Timeout(unanswered.join("; ")),
        (false, _) => ProbeOutcome::Failure(unanswered.join("; ")),
        (true, Some(at)) => ProbeOutcome::Success(ProbeActivity::LastAt(at)),
        (true, None) if idle => ProbeOutcome::Success(ProbeActivity::Idle),
        (true, None) => ProbeOutcome::Success(ProbeActivity::Unknown),
    }
}

/// Why a probe's output breaks the contract. The text is the user's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// Nothing but whitespace.
    #[error("probe returned no output; expected a JSON object such as {{\"has_activity\": true}}")]
    Empty,
    /// Over [`MAX_RESULT_BYTES`].
    #[error("probe output is {0} bytes, over the cap of {MAX_RESULT_BYTES} bytes")]
    TooLarge(usize),
    /// Not JSON at all.
    #[error("probe output is not valid JSON ({0})")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("probe output must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// A key the contract does not have.
    #[error("probe output has unknown key \"{0}\" (allowed: has_activity, last_activity)")]
    UnknownKey(String),
    /// A key given twice: JSON parsers disagree on which one counts.
    #[error("probe output has the key \"{0}\" more than once")]
    DuplicateKey(String),
    /// Neither key present.
    #[error("probe output has neither has_activity nor last_activity")]
    MissingKeys,
    /// `has_activity` of the wrong type.
    #[error("has_activity must be true or false, got {0}")]
    HasActivityType(&'static str),
    /// `last_activity` of the wrong type.
    #[error("last_activity must be an RFC 3339 timestamp string or null, got {0}")]
    LastActivityType(&'static str),
    /// `last_activity` that does not parse.
    #[error("last_activity \"{0}\" is not an RFC 3339 timestamp (e.g. \"2026-01-02T03:04:05Z\")")]
    BadTimestamp(String),
    /// `last_activity` too far in the future.
    #[error("last_activity \"{0}\" is {1} s after the probe ended (more than 60 s in the future)")]
    FutureTimestamp(String, i64),
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validate a probe's output text against the contract; `ended_at_ms` is when the probe ended
/// (Unix milliseconds), for the future-timestamp rule (SPEC §5).
pub fn validate(output: &str, ended_at_ms: i64) -> Result<ProbeActivity, ContractError> {
    if output.len() > MAX_RESULT_BYTES {
        return Err(ContractError::TooLarge(output.len()));
    }
    if output.trim().is_empty() {
        return Err(ContractError::Empty);
    }
    let value: Value = serde_json::from_str(output).map_err(|e| ContractError::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(ContractError::NotObject(type_name(&value)));
    };
    if let Some(key) = object.keys().find(|k| *k != HAS_ACTIVITY && *k != LAST_ACTIVITY) {
        return Err(ContractError::UnknownKey(key.clone()));
    }
    if let Some(key) = first_duplicate_key(output) {
        return Err(ContractError::DuplicateKey(key));
    }
    let has_activity = match object.get(HAS_ACTIVITY) {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(ContractError::HasActivityType(type_name(other))),
    };
    let last_activity = match object.get(LAST_ACTIVITY) {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => {
            let at = DateTime::parse_from_rfc3339(s)
                .map_err(|_| ContractError::BadTimestamp(s.clone()))?
                .timestamp_millis();
            if at.saturating_sub(ended_at_ms) > MAX_FUTURE_MS {
                return Err(ContractError::FutureTimestamp(s.clone(), (at - ended_at_ms) / 1000));
            }
            Some(Some(at))
        }
        Some(other) => return Err(ContractError::LastActivityType(type_name(other))),
    };
    match (has_activity, last_activity) {
        (Some(true), _) => Ok(ProbeActivity::ActiveNow),
        (Some(false), _) => Ok(ProbeActivity::Idle),
        (None, Some(Some(at))) => Ok(ProbeActivity::LastAt(at)),
        (None, Some(None)) => Ok(ProbeActivity::Unknown),
        (None, None) => Err(ContractError::MissingKeys),
    }
}

/// The first key that a JSON object's text gives twice (a parsed `Value`
/// keeps only the last, silently).
fn first_duplicate_key(object_text: &str) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut seen = std::collections::HashSet::new();
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        if !seen.insert(key.clone()) {
                            return Ok(Keys(Some(key)));
                        }
                    }
                    Ok(Keys(None))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<Keys>(object_text).ok().and_then(|k| k.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(outcomes: &[ProbeOutcome]) -> Vec<(String, ProbeOutcome)> {
        outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("p{i}"), o.clone()))
            .collect()
    }

    #[test]
    fn any_of_is_active_when_one_probe_is_even_if_another_failed() {
        use ProbeOutcome::*;
        let outcomes = [
            Failure("down".into()),
            Success(ProbeActivity::Idle),
            Success(ProbeActivity::ActiveNow),
        ];
        assert_eq!(any_of(named(&outcomes)), Success(ProbeActivity::ActiveNow));
    }

    #[test]
    fn any_of_without_activity_is_no_answer_while_one_probe_gave_none() {
        use ProbeOutcome::*;
        let failed = any_of(named(&[
            Success(ProbeActivity::LastAt(5)),
            Timeout("slow".into()),
            Failure("no nvidia-smi".into()),
        ]));
        assert_eq!(failed, Failure("anyOf[1] p1: slow; anyOf[2] p2: no nvidia-smi".into()));
        let timed_out = any_of(named(&[Success(ProbeActivity::Idle), Timeout("slow".into())]));
        assert_eq!(timed_out, Timeout("anyOf[1] p1: slow".into()));
    }

    #[test]
    fn any_of_every_probe_answering_takes_the_latest_activity_reported() {
        use ProbeOutcome::*;
        let outcomes = [
            Success(ProbeActivity::LastAt(7)),
            Success(ProbeActivity::Idle),
            Success(ProbeActivity::LastAt(9)),
            Success(ProbeActivity::Unknown),
        ];
        assert_eq!(any_of(named(&outcomes)), Success(ProbeActivity::LastAt(9)));
        assert_eq!(
            any_of(named(&[Success(ProbeActivity::Unknown), Success(ProbeActivity::Idle)])),
            Success(ProbeActivity::Idle)
        );
        assert_eq!(
            any_of(named(&[Success(ProbeActivity::Unknown)])),
            Success(ProbeActivity::Unknown)
        );
    }

    /// 2026-11-29T11:28:24Z
    const START: i64 = 1_795_951_704_000;

    fn ok(s: &str) -> ProbeActivity {
        validate(s, START).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        validate(s, START).expect_err(s).to_string()
    }

    #[test]
    fn has_activity_alone() {
        assert_eq!(ok(r#"{"has_activity": true}"#), ProbeActivity::ActiveNow);
        assert_eq!(ok(r#"{"has_activity": false}"#), ProbeActivity::Idle);
    }

    #[test]
    fn last_activity_alone_and_null() {
        assert_eq!(
            ok(r#"{"last_activity": "2026-11-29T11:00:00Z"}"#),
            ProbeActivity::LastAt(START - 1_704_000)
        );
        assert_eq!(ok(r#"{"last_activity": null}"#), ProbeActivity::Unknown);
    }

    #[test]
    fn both_fields_has_activity_wins() {
        let both = r#"{"has_activity": true, "last_activity": "2020-01-01T00:00:00Z"}"#;
        assert_eq!(ok(both), ProbeActivity::ActiveNow);
        assert_eq!(
            ok(r#"{"has_activity": false, "last_activity": null}"#),
            ProbeActivity::Idle
        );
    }

    #[test]
    fn z_and_offset_and_fractional_seconds_agree() {
        let expected = ProbeActivity::LastAt(START - 60_000);
        for ts in [
            "2026-11-29T11:27:24Z",
            "2026-11-29T11:27:24+00:00",
            "2026-11-29T11:27:24.000Z",
            "2026-11-29T11:27:24.000000+00:00",
            "2026-11-29T12:27:24+01:00",
        ] {
            assert_eq!(ok(&format!(r#"{{"last_activity": "{ts}"}}"#)), expected, "{ts}");
        }
        assert_eq!(
            ok(r#"{"last_activity": "2026-11-29T11:27:24.123456Z"}"#),
            ProbeActivity::LastAt(START - 60_000 + 123)
        );
    }

    #[test]
    fn future_timestamps_beyond_sixty_seconds_fail() {
        assert_eq!(
            ok(r#"{"last_activity": "2026-11-29T11:29:24Z"}"#),
            ProbeActivity::LastAt(START + 60_000)
        );
        assert_eq!(
            err(r#"{"last_activity": "2026-11-29T11:30:24Z"}"#),
            "last_activity \"2026-11-29T11:30:24Z\" is 120 s after the probe ended (more than 60 s in the future)"
        );
    }

    #[test]
    fn unknown_keys_fail_by_name() {
        assert_eq!(
            err(r#"{"has_activity": true, "hasActivity": true}"#),
            "probe output has unknown key \"hasActivity\" (allowed: has_activity, last_activity)"
        );
    }

    #[test]
    fn a_key_given_twice_fails_by_name_whichever_value_comes_last() {
        for output in [
            r#"{"has_activity": true, "has_activity": false}"#,
            r#"{"has_activity": false, "has_activity": true}"#,
            r#"{"has_activity": false, "has_\u0061ctivity": true}"#,
        ] {
            assert_eq!(
                err(output),
                "probe output has the key \"has_activity\" more than once",
                "{output}"
            );
        }
        assert_eq!(
            err(r#"{"last_activity": null, "has_activity": true, "last_activity": null}"#),
            "probe output has the key \"last_activity\" more than once"
        );
    }

    #[test]
    fn wrong_types_fail_naming_the_type() {
        assert_eq!(
            err(r#"{"has_activity": "yes"}"#),
            "has_activity must be true or false, got a string"
        );
        assert_eq!(
            err(r#"{"has_activity": 1}"#),
            "has_activity must be true or false, got a number"
        );
        assert_eq!(
            err(r#"{"last_activity": 1700000000}"#),
            "last_activity must be an RFC 3339 timestamp string or null, got a number"
        );
        assert_eq!(
            err(r#"{"last_activity": "yesterday"}"#),
            "last_activity \"yesterday\" is not an RFC 3339 timestamp (e.g. \"2026-01-02T03:04:05Z\")"
        );
        assert!(err(r#"{"last_activity": "2026-11-29T11:27:24"}"#).contains("is not an RFC 3339 timestamp"));
    }

    #[test]
    fn non_objects_fail() {
        assert_eq!(err("[]"), "probe output must be a JSON object, got an array");
        assert_eq!(err("true"), "probe output must be a JSON object, got a boolean");
        assert_eq!(err(r#""{}""#), "probe output must be a JSON object, got a string");
        assert!(err("{has_activity: true}").starts_with("probe output is not valid JSON"));
        assert_eq!(err("{}"), "probe output has neither has_activity nor last_activity");
    }

    #[test]
    fn empty_and_oversize_fail() {
        assert!(err("").starts_with("probe returned no output"));
        assert!(err(" \n").starts_with("probe returned no output"));
        let big = format!(r#"{{"has_activity": true}}{}"#, " ".repeat(MAX_RESULT_BYTES));
        assert_eq!(
            err(&big),
            format!("probe output is {} bytes, over the cap of 65536 bytes", big.len())
        );
    }

    #[test]
    fn surrounding_whitespace_is_fine() {
        assert_eq!(ok("\n {\"has_activity\": true}\n"), ProbeActivity::ActiveNow);
    }

    #[test]
    fn the_authors_guide_quotes_every_message_exactly() {
        let guide = include_str!("../../../docs/contract.md");
        let big = format!(r#"{{"has_activity": true}}{}"#, " ".repeat(70_000 - 22));
        for output in [
            "",
            big.as_str(),
            r#"{"has_activity": tru"#,
            "[true]",
            r#"{"active": true}"#,
            r#"{"has_activity": true, "has_activity": false}"#,
            "{}",
            r#"{"has_activity": "yes"}"#,
            r#"{"last_activity": 1767322800}"#,
            r#"{"last_activity": "yesterday"}"#,
            r#"{"last_activity": "2026-11-29T11:30:24Z"}"#,
        ] {
            let message = validate(output, START).expect_err(output).to_string();
            assert!(
                guide.contains(&format!("`{message}`")),
                "docs/contract.md lacks {message:?}"
            );
        }
    }
}
