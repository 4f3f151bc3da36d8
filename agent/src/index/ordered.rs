//! What the converters of the ordered kinds (ClusterNetworkPolicy, Calico
//! v3) share: their error, and the parsing of CIDRs and label selectors
//! into the model's types, naming the field on failure.

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{label_selector::selector_from_api, unknown_fields};
use crate::{
    model::{
        calico_selector::{CalicoSelector, CalicoSelectorError},
        ordered::LabelMatch,
        selector::SelectorError,
    },
    policy::addr::{canonical_net, is_v4_mapped},
};

/// Why an ordered policy or a tier was rejected; every variant but the
/// missing name names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderedError {
    #[error(transparent)]
    Mode(#[from] super::ModeError),
    #[error("metadata.name is required")]
    MissingName,
    #[error("metadata.namespace is required")]
    MissingNamespace,
    #[error("{field}: not supported by palisade ({what})")]
    Unsupported { field: String, what: &'static str },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}")]
    CalicoSelector {
        field: String,
        #[source]
        source: CalicoSelectorError,
    },
    #[error("{field}")]
    Selector {
        field: String,
        #[source]
        source: SelectorError,
    },
}

/// `metadata.name`, required and not empty.
pub(super) fn required_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<String, OrderedError> {
    meta.name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(OrderedError::MissingName)
}

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OrderedError {
    OrderedError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(super) fn unsupported(field: impl Into<String>, what: &'static str) -> OrderedError {
    OrderedError::Unsupported {
        field: field.into(),
        what,
    }
}

/// A CIDR (a bare address when `bare_address`, as Calico allows: a host
/// route), truncated to its network; IPv4-mapped IPv6 is refused, as for
/// NetworkPolicy ipBlocks (the kernel keys IPv4 that way).
pub(super) fn cidr(field: &str, s: &str, bare_address: bool) -> Result<IpNet, OrderedError> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n.trunc(),
        Err(_) if bare_address => s
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| invalid(field, format!("invalid CIDR or address {s:?}")))?,
        Err(_) => return Err(invalid(field, format!("invalid CIDR {s:?}"))),
    };
    match net {
        IpNet::V6(v6) if is_v4_mapped(&v6) => Err(invalid(
            field,
            format!(
                "{net} is IPv4-mapped IPv6; write it as IPv4: {}",
                canonical_net(net)
            ),
        )),
        _ => Ok(net),
    }
}

/// A Calico selector; `None` and blank select everything.
pub(super) fn calico_selector(
    field: &str,
    s: Option<&str>,
) -> Result<CalicoSelector, OrderedError> {
    match s {
        None => Ok(CalicoSelector::all()),
        Some(s) => CalicoSelector::parse(s).map_err(|source| OrderedError::CalicoSelector {
            field: field.to_string(),
            source,
        }),
    }
}

/// A metav1.LabelSelector as a [`LabelMatch`].
pub(super) fn kube_selector(field: &str, s: &LabelSelector) -> Result<LabelMatch, OrderedError> {
    selector_from_api(s)
        .map(LabelMatch::Kube)
        .map_err(|source| OrderedError::Selector {
            field: field.to_string(),
            source,
        })
}

/// Deserializes an object strictly: a serde error names the path of the
/// field, and fields the typed form would drop (inside embedded API types
/// such as LabelSelector, which ignore unknown fields) are refused.
pub fn from_value_strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, String> {
    let t: T = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let unknown = unknown_fields(v, &back);
    if unknown.is_empty() {
        Ok(t)
    } else {
        Err(format!("unknown field(s): {}", unknown.join(", ")))
    }
}

/// Helpers for the converters' tests: YAML through the directory source's
/// parser and the index, as an object takes in the agent.
#[cfg(test)]
pub(super) mod test_support {
    use crate::{
        index::{Index, Object},
        model::ordered::OrderedPolicy,
        source::yaml::parse_objects,
    };

    /// The objects of `text`; a parse error as its message.
    pub(in crate::index) fn objects(text: &str) -> Result<Vec<Object>, String> {
        parse_objects("test.yaml", text)
            .into_iter()
            .map(|r| r.map_err(|e| crate::error_chain::chain(&e)))
            .collect()
    }

    /// Applies every object of `text`; the first error as its message.
    pub(in crate::index) fn index(text: &str) -> Result<Index, String> {
        let mut index = Index::default();
        for o in objects(text)? {
            index.apply(&o).map_err(|e| crate::error_chain::chain(&e))?;
        }
        Ok(index)
    }

    /// The one ordered policy of `text`.
    pub(in crate::index) fn policy(text: &str) -> OrderedPolicy {
        let index = match index(text) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        let mut all = index.model().ordered.values().cloned();
        let p = all.next().expect("one policy");
        assert!(all.next().is_none(), "exactly one policy");
        p
    }

    /// Why `text` was rejected (by the parser or the index).
    pub(in crate::index) fn error(text: &str) -> String {
        match index(text) {
            Ok(i) => panic!("accepted: {:?}", i.model().ordered),
            Err(e) => e,
        }
    }
}
