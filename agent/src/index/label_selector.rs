//! metav1.LabelSelector validated into the engine's [`Selector`].

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::selector::{Operator, Requirement, Selector, SelectorError};

/// `matchLabels` and `matchExpressions`, ANDed; empty selects everything.
pub fn selector_from_api(sel: &LabelSelector) -> Result<Selector, SelectorError> {
    let labels = sel.match_labels.iter().flatten().map(|(k, v)| {
        Ok(Requirement {
            key: k.clone(),
            operator: Operator::In,
            values: BTreeSet::from([v.clone()]),
        })
    });
    let expressions = sel.match_expressions.iter().flatten().map(|e| {
        let operator =
            Operator::from_api_name(&e.operator).ok_or_else(|| SelectorError::UnknownOperator {
                key: e.key.clone(),
                operator: e.operator.clone(),
            })?;
        Ok(Requirement {
            key: e.key.clone(),
            operator,
            values: e.values.iter().flatten().cloned().collect(),
        })
    });
    Selector::new(labels.chain(expressions).collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;
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
        let s = selector_from_api(&LabelSelector::default()).expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_the_api() {
        let sel = |e| {
            selector_from_api(&LabelSelector {
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
        let s = selector_from_api(&LabelSelector {
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
            selector_from_api(&LabelSelector {
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
