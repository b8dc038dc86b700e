//! Kubernetes label selectors, with the apiserver's semantics: `matchLabels` AND
//! `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`); an empty selector matches
//! everything; an invalid selector matches nothing and says why.
//!
//! The wire type keeps `operator` a string, as in Kubeflow's schema (so a policy pasted from a
//! WorkspaceKind reads the same); it becomes an [`Operator`] when a selector is checked.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A standard Kubernetes label selector (`metav1.LabelSelector`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct LabelSelector {
    /// matchExpressions is a list of label selector requirements. The requirements are ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    /// matchLabels is a map of {key,value} pairs, each equivalent to an `In` with one value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// One requirement of a selector: a key, an operator, and values.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// key is the label key that the selector applies to.
    pub key: String,
    /// operator is one of In, NotIn, Exists and DoesNotExist.
    pub operator: String,
    /// values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub values: Vec<String>,
}

/// A requirement's operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label is set to one of the values.
    In,
    /// The label is not set, or set to none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is not set.
    DoesNotExist,
}

impl std::str::FromStr for Operator {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "In" => Ok(Operator::In),
            "NotIn" => Ok(Operator::NotIn),
            "Exists" => Ok(Operator::Exists),
            "DoesNotExist" => Ok(Operator::DoesNotExist),
            _ => Err(()),
        }
    }
}

/// Why a selector is invalid (it then matches nothing).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator other than the four.
    #[error(
        "\"{operator}\" is not a valid label selector operator for key \"{key}\" (use In, NotIn, Exists or DoesNotExist)"
    )]
    InvalidOperator {
        /// The requirement's key.
        key: String,
        /// The operator given.
        operator: String,
    },
    /// `In`/`NotIn` without values.
    #[error("operator {operator} on key \"{key}\" needs at least one value")]
    ValuesRequired {
        /// The requirement's key.
        key: String,
        /// `In` or `NotIn`.
        operator: String,
    },
    /// `Exists`/`DoesNotExist` with values.
    #[error("operator {operator} on key \"{key}\" takes no values")]
    ValuesNotAllowed {
        /// The requirement's key.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: String,
    },
    /// A key that is not a valid label key.
    #[error("\"{key}\" is not a valid label key: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value that is not a valid label value.
    #[error("\"{value}\" (for key \"{key}\") is not a valid label value: {reason}")]
    InvalidValue {
        /// The key it is for.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl LabelSelector {
    /// Whether the selector has no requirements (it then matches every label set).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Check the selector as the apiserver would when converting it to a selector.
    pub fn validate(&self) -> Result<(), SelectorError> {
        for (key, value) in &self.match_labels {
            check_key(key)?;
            check_value(key, value)?;
        }
        for requirement in &self.match_expressions {
            requirement.operator()?;
        }
        Ok(())
    }

    /// Whether `labels` satisfy every requirement. `Err` means the selector is invalid and
    /// matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
        self.validate()?;
        let labels_hold = self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
        let expressions_hold = self.match_expressions.iter().all(|r| r.holds(labels));
        Ok(labels_hold && expressions_hold)
    }
}

impl LabelSelectorRequirement {
    /// The operator, once the key, operator and values are checked.
    pub fn operator(&self) -> Result<Operator, SelectorError> {
        check_key(&self.key)?;
        let operator: Operator = self.operator.parse().map_err(|()| SelectorError::InvalidOperator {
            key: self.key.clone(),
            operator: self.operator.clone(),
        })?;
        match operator {
            Operator::In | Operator::NotIn if self.values.is_empty() => Err(SelectorError::ValuesRequired {
                key: self.key.clone(),
                operator: self.operator.clone(),
            }),
            Operator::Exists | Operator::DoesNotExist if !self.values.is_empty() => {
                Err(SelectorError::ValuesNotAllowed {
                    key: self.key.clone(),
                    operator: self.operator.clone(),
                })
            }
            _ => {
                for value in &self.values {
                    check_value(&self.key, value)?;
                }
                Ok(operator)
            }
        }
    }

    // Only called on a validated requirement.
    fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator.parse() {
            Ok(Operator::In) => value.is_some_and(|v| self.values.contains(v)),
            Ok(Operator::NotIn) => value.is_none_or(|v| !self.values.contains(v)),
            Ok(Operator::Exists) => value.is_some(),
            Ok(Operator::DoesNotExist) => value.is_none(),
            Err(()) => false,
        }
    }
}

const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str) -> Result<(), SelectorError> {
    let invalid = |reason| SelectorError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(invalid("its prefix must be a DNS subdomain of at most 253 characters"));
    }
    if name.is_empty() {
        return Err(invalid("its name part must not be empty"));
    }
    if !is_label_name(name) {
        return Err(invalid(
            "its name part must be at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
        ));
    }
    Ok(())
}

/// A label value: empty, or like a key's name part.
fn check_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        return Ok(());
    }
    Err(SelectorError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: "must be empty or at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
    })
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An RFC 1123 subdomain: dot-separated lowercase labels of alphanumerics and `-`.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_PREFIX
        && s.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
            ..LabelSelector::default()
        }
    }

    #[test]
    fn an_empty_selector_matches_everything() {
        let empty = LabelSelector::default();
        assert!(empty.is_empty());
        assert_eq!(empty.matches(&labels(&[])), Ok(true));
        assert_eq!(empty.matches(&labels(&[("a", "b")])), Ok(true));
    }

    #[test]
    fn match_labels_are_anded() {
        let selector = LabelSelector {
            match_labels: labels(&[("tier", "development"), ("team", "a")]),
            ..LabelSelector::default()
        };
        assert_eq!(
            selector.matches(&labels(&[("tier", "development"), ("team", "a"), ("x", "y")])),
            Ok(true)
        );
        assert_eq!(selector.matches(&labels(&[("tier", "development")])), Ok(false));
        assert_eq!(
            selector.matches(&labels(&[("tier", "production"), ("team", "a")])),
            Ok(false)
        );
    }

    #[test]
    fn match_labels_and_match_expressions_are_anded() {
        let mut selector = expression("gpu", "Exists", &[]);
        selector.match_labels = labels(&[("tier", "development")]);
        assert_eq!(
            selector.matches(&labels(&[("tier", "development"), ("gpu", "1")])),
            Ok(true)
        );
        assert_eq!(selector.matches(&labels(&[("tier", "development")])), Ok(false));
        assert_eq!(selector.matches(&labels(&[("gpu", "1")])), Ok(false));
    }

    #[test]
    fn match_expressions_in() {
        let selector = expression("tier", "In", &["development", "staging"]);
        assert_eq!(selector.matches(&labels(&[("tier", "staging")])), Ok(true));
        assert_eq!(selector.matches(&labels(&[("tier", "production")])), Ok(false));
        assert_eq!(selector.matches(&labels(&[])), Ok(false));
    }

    #[test]
    fn match_expressions_not_in() {
        let selector = expression("workspace_team", "NotIn", &["team_1"]);
        assert_eq!(selector.matches(&labels(&[("workspace_team", "team_2")])), Ok(true));
        assert_eq!(
            selector.matches(&labels(&[])),
            Ok(true),
            "an absent label is not in the set"
        );
        assert_eq!(selector.matches(&labels(&[("workspace_team", "team_1")])), Ok(false));
    }

    #[test]
    fn match_expressions_exists_and_does_not_exist() {
        let exists = expression("nvidia.com/gpu", "Exists", &[]);
        let absent = expression("nvidia.com/gpu", "DoesNotExist", &[]);
        let with = labels(&[("nvidia.com/gpu", "")]);
        assert_eq!(exists.matches(&with), Ok(true));
        assert_eq!(exists.matches(&labels(&[])), Ok(false));
        assert_eq!(absent.matches(&with), Ok(false));
        assert_eq!(absent.matches(&labels(&[])), Ok(true));
    }

    #[test]
    fn an_invalid_operator_matches_nothing_with_an_error() {
        let selector = expression("tier", "Equals", &["x"]);
        let err = selector.matches(&labels(&[("tier", "x")])).unwrap_err();
        assert!(matches!(err, SelectorError::InvalidOperator { .. }));
        assert!(
            err.to_string()
                .contains("\"Equals\" is not a valid label selector operator")
        );
        // Operators are case-sensitive, as in Kubernetes.
        assert!(expression("tier", "in", &["x"]).validate().is_err());
    }

    #[test]
    fn values_must_fit_the_operator() {
        assert!(matches!(
            expression("tier", "In", &[]).validate(),
            Err(SelectorError::ValuesRequired { .. })
        ));
        assert!(matches!(
            expression("tier", "NotIn", &[]).validate(),
            Err(SelectorError::ValuesRequired { .. })
        ));
        assert!(matches!(
            expression("tier", "Exists", &["x"]).validate(),
            Err(SelectorError::ValuesNotAllowed { .. })
        ));
        assert!(matches!(
            expression("tier", "DoesNotExist", &["x"]).validate(),
            Err(SelectorError::ValuesNotAllowed { .. })
        ));
    }

    #[test]
    fn keys_and_values_must_be_valid_labels() {
        for key in ["", "/x", "Bad_Prefix/x", "a/", "-x", "x-", &"k".repeat(64)] {
            assert!(
                matches!(
                    expression(key, "Exists", &[]).validate(),
                    Err(SelectorError::InvalidKey { .. })
                ),
                "{key:?}"
            );
        }
        for key in ["x", "a.b-c_d", "example.com/x", "nvidia.com/gpu", &"k".repeat(63)] {
            assert_eq!(expression(key, "Exists", &[]).validate(), Ok(()), "{key:?}");
        }
        let bad_value = LabelSelector {
            match_labels: labels(&[("tier", "not ok")]),
            ..LabelSelector::default()
        };
        assert!(matches!(bad_value.validate(), Err(SelectorError::InvalidValue { .. })));
        assert!(matches!(
            expression("tier", "In", &["-x"]).validate(),
            Err(SelectorError::InvalidValue { .. })
        ));
        assert_eq!(expression("tier", "In", &[""]).validate(), Ok(()));
    }
}
