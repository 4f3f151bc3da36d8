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

impl Operator {
    /// The metav1.LabelSelector spelling.
    pub fn api_name(&self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }

    pub fn from_api_name(s: &str) -> Option<Self> {
        [
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]
        .into_iter()
        .find(|o| o.api_name() == s)
    }
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

    /// Validates requirements into a selector: keys must be label keys, and
    /// each operator must have the values it needs.
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Result<Self, SelectorError> {
        let mut requirements: Vec<Requirement> = requirements.into_iter().collect();
        for r in &requirements {
            r.validate()?;
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }
}

impl Requirement {
    fn validate(&self) -> Result<(), SelectorError> {
        check_key(&self.key)?;
        let needs_values = matches!(self.operator, Operator::In | Operator::NotIn);
        match (needs_values, self.values.is_empty()) {
            (true, true) => Err(SelectorError::MissingValues {
                key: self.key.clone(),
                operator: self.operator.api_name(),
            }),
            (false, false) => Err(SelectorError::UnexpectedValues {
                key: self.key.clone(),
                operator: self.operator.api_name(),
            }),
            _ => Ok(()),
        }
    }

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
