//! Label selectors (metav1.LabelSelector), validated once and matched often.

use std::collections::BTreeSet;

use crate::model::Labels;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

/// A conjunction of requirements; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unknown operator {operator:?} for key {key:?}")]
    UnknownOperator { key: String, operator: String },
    #[error("operator {operator} on key {key:?} needs at least one value")]
    MissingValues { key: String, operator: &'static str },
    #[error("operator {operator} on key {key:?} takes no values")]
    UnexpectedValues { key: String, operator: &'static str },
    #[error("invalid label key {0:?}")]
    InvalidKey(String),
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn from_labels(labels: &Labels) -> Self {
        Self {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    operator: Operator::In,
                    values: BTreeSet::from([v.clone()]),
                })
                .collect(),
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Validates and builds a selector from the API type.
    pub fn from_api(
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            check_key(k)?;
            requirements.push(Requirement {
                key: k.clone(),
                operator: Operator::In,
                values: BTreeSet::from([v.clone()]),
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            check_key(&e.key)?;
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::UnknownOperator {
                        key: e.key.clone(),
                        operator: other.to_string(),
                    });
                }
            };
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(SelectorError::MissingValues {
                        key: e.key.clone(),
                        operator: if operator == Operator::In {
                            "In"
                        } else {
                            "NotIn"
                        },
                    });
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues {
                        key: e.key.clone(),
                        operator: if operator == Operator::Exists {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                    });
                }
                _ => {}
            }
            requirements.push(Requirement {
                key: e.key.clone(),
                operator,
                values,
            });
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// Label keys: optional DNS prefix and a name of at most 63 characters.
fn check_key(key: &str) -> Result<(), SelectorError> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && key.len() <= 317;
    if ok {
        Ok(())
    } else {
        Err(SelectorError::InvalidKey(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::from_api(&LabelSelector::default()).expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_the_api() {
        let sel = |e| {
            Selector::from_api(&LabelSelector {
                match_expressions: Some(vec![e]),
                ..Default::default()
            })
            .expect("valid")
        };
        let env_in = sel(expr("env", "In", &["prod", "stage"]));
        assert!(env_in.matches(&labels(&[("env", "prod")])));
        assert!(!env_in.matches(&labels(&[("env", "dev")])));
        assert!(!env_in.matches(&labels(&[])));
        let not_in = sel(expr("env", "NotIn", &["prod"]));
        assert!(not_in.matches(&labels(&[("env", "dev")])));
        assert!(not_in.matches(&labels(&[])), "NotIn matches a missing key");
        assert!(!not_in.matches(&labels(&[("env", "prod")])));
        let exists = sel(expr("env", "Exists", &[]));
        assert!(exists.matches(&labels(&[("env", "")])));
        assert!(!exists.matches(&labels(&[])));
        let absent = sel(expr("env", "DoesNotExist", &[]));
        assert!(absent.matches(&labels(&[])));
        assert!(!absent.matches(&labels(&[("env", "x")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = Selector::from_api(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![expr("tier", "In", &["front"])]),
        })
        .expect("valid");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        let bad = |e| {
            Selector::from_api(&LabelSelector {
                match_expressions: Some(vec![e]),
                ..Default::default()
            })
        };
        assert!(matches!(
            bad(expr("a", "Like", &["x"])),
            Err(SelectorError::UnknownOperator { .. })
        ));
        assert!(matches!(
            bad(expr("a", "In", &[])),
            Err(SelectorError::MissingValues { .. })
        ));
        assert!(matches!(
            bad(expr("a", "Exists", &["x"])),
            Err(SelectorError::UnexpectedValues { .. })
        ));
        assert!(matches!(
            bad(expr("bad key!", "Exists", &[])),
            Err(SelectorError::InvalidKey(_))
        ));
    }
}
