//! NetworkPolicy (networking.k8s.io/v1) validated into the engine's
//! [`Policy`]. Validation happens once, here; the compiler never sees an
//! invalid policy.

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::label_selector::selector_from_api;
use crate::{
    model::{
        ObjectRef, Protocol,
        policy::{NamespaceScope, Peer, Policy, PolicyOrigin, PortRef, PortSpec, Rule},
        selector::{Selector, SelectorError},
    },
    policy::addr::{canonical_net, is_v4_mapped},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(transparent)]
    Mode(#[from] super::ModeError),
    #[error("metadata.name and metadata.namespace are required")]
    MissingName,
    #[error("spec is required")]
    MissingSpec,
    #[error("{field}")]
    Selector {
        field: String,
        #[source]
        source: SelectorError,
    },
    #[error("{field}: unknown policyType {value:?} (want Ingress or Egress)")]
    PolicyType { field: String, value: String },
    #[error("{field}: unknown protocol {value:?} (want TCP, UDP or SCTP)")]
    Protocol { field: String, value: String },
    #[error("{field}: port {value} out of range 1-65535")]
    PortRange { field: String, value: i64 },
    #[error("{field}: endPort {end} is smaller than port {start}")]
    EndPortBeforePort { field: String, start: u16, end: i32 },
    #[error("{field}: endPort needs a numeric port")]
    EndPortWithoutNumber { field: String },
    #[error("{field}: invalid port name {value:?}")]
    PortName { field: String, value: String },
    #[error("{field}: invalid CIDR {value:?}")]
    Cidr { field: String, value: String },
    #[error("{field}: except {except} is not strictly inside cidr {cidr}")]
    ExceptOutside {
        field: String,
        cidr: IpNet,
        except: IpNet,
    },
    #[error("{field}: {value} is IPv4-mapped IPv6; write it as IPv4: {ipv4}")]
    V4MappedCidr {
        field: String,
        value: IpNet,
        ipv4: IpNet,
    },
    #[error("{field}: ipBlock cannot be combined with podSelector or namespaceSelector")]
    MixedPeer { field: String },
    #[error("{field}: a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer { field: String },
}

/// Validates a NetworkPolicy into the engine's form; the error names the field.
pub fn policy_from_api(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let (Some(name), Some(namespace)) = (&np.metadata.name, &np.metadata.namespace) else {
        return Err(PolicyError::MissingName);
    };
    let spec = np.spec.as_ref().ok_or(PolicyError::MissingSpec)?;
    let pod_selector = selector("spec.podSelector", spec.pod_selector.as_ref())?;

    // policyTypes: given, or Ingress plus Egress when egress rules exist.
    let (has_ingress, has_egress) = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut i = false;
            let mut e = false;
            for (n, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => {
                        return Err(PolicyError::PolicyType {
                            field: format!("spec.policyTypes[{n}]"),
                            value: other.to_string(),
                        });
                    }
                }
            }
            (i, e)
        }
        // Upstream defaulting tests the list's length: `egress: []` is no rule.
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };

    let ingress = if has_ingress {
        let rules = spec.ingress.as_deref().unwrap_or_default();
        Some(
            rules
                .iter()
                .enumerate()
                .map(|(n, r)| ingress_rule(namespace, n, r))
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    let egress = if has_egress {
        let rules = spec.egress.as_deref().unwrap_or_default();
        Some(
            rules
                .iter()
                .enumerate()
                .map(|(n, r)| egress_rule(namespace, n, r))
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    Ok(Policy {
        origin: PolicyOrigin::NetworkPolicy(ObjectRef::new(namespace, name)),
        namespace: namespace.clone(),
        pod_selector,
        ingress,
        egress,
    })
}

fn selector(
    field: &str,
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Selector, PolicyError> {
    match sel {
        None => Ok(Selector::everything()),
        Some(s) => selector_from_api(s).map_err(|source| PolicyError::Selector {
            field: field.to_string(),
            source,
        }),
    }
}

fn ingress_rule(
    namespace: &str,
    n: usize,
    r: &NetworkPolicyIngressRule,
) -> Result<Rule, PolicyError> {
    let field = format!("spec.ingress[{n}]");
    rule(
        namespace,
        &field,
        "from",
        r.from.as_deref(),
        r.ports.as_deref(),
    )
}

fn egress_rule(
    namespace: &str,
    n: usize,
    r: &NetworkPolicyEgressRule,
) -> Result<Rule, PolicyError> {
    let field = format!("spec.egress[{n}]");
    rule(namespace, &field, "to", r.to.as_deref(), r.ports.as_deref())
}

fn rule(
    namespace: &str,
    field: &str,
    peers_name: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, PolicyError> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| peer(namespace, &format!("{field}.{peers_name}[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| port(&format!("{field}.ports[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(Rule { peers, ports })
}

fn peer(namespace: &str, field: &str, p: &NetworkPolicyPeer) -> Result<Peer, PolicyError> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(block), None, None) => ip_block(&format!("{field}.ipBlock"), block),
        (Some(_), _, _) => Err(PolicyError::MixedPeer {
            field: field.to_string(),
        }),
        (None, None, None) => Err(PolicyError::EmptyPeer {
            field: field.to_string(),
        }),
        (None, pods, namespaces) => {
            let pods = selector(&format!("{field}.podSelector"), pods.as_ref())?;
            let namespaces = match namespaces {
                None => NamespaceScope::Own(namespace.to_string()),
                Some(ns) => NamespaceScope::Selected(selector(
                    &format!("{field}.namespaceSelector"),
                    Some(ns),
                )?),
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(field: &str, s: &str) -> Result<IpNet, PolicyError> {
    // The API accepts a bare address as a host route? It does not: a CIDR is required.
    let net = s
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| PolicyError::Cidr {
            field: field.to_string(),
            value: s.to_string(),
        })?;
    // The kernel keys IPv4 as ::ffff:a.b.c.d: a block in there would be the
    // same entry as an IPv4 one (a pod, the node, the metadata block).
    match net {
        IpNet::V6(v6) if is_v4_mapped(&v6) => Err(PolicyError::V4MappedCidr {
            field: field.to_string(),
            value: net,
            ipv4: canonical_net(net),
        }),
        _ => Ok(net),
    }
}

fn ip_block(field: &str, b: &IPBlock) -> Result<Peer, PolicyError> {
    let cidr = parse_cidr(&format!("{field}.cidr"), &b.cidr)?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let e = parse_cidr(&f, e)?;
        // A strict subset, as the API server requires.
        if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
            return Err(PolicyError::ExceptOutside {
                field: f,
                cidr,
                except: e,
            });
        }
        except.push(e);
    }
    except.sort();
    except.dedup();
    Ok(Peer::IpBlock { cidr, except })
}

fn port(field: &str, p: &NetworkPolicyPort) -> Result<PortSpec, PolicyError> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).ok_or_else(|| PolicyError::Protocol {
            field: format!("{field}.protocol"),
            value: s.to_string(),
        })?,
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => None,
        (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => {
            return Err(PolicyError::EndPortWithoutNumber {
                field: field.to_string(),
            });
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(&format!("{field}.port"), i64::from(*n))?;
            let end = match end {
                None => start,
                Some(e) => {
                    let end = port_number(&format!("{field}.endPort"), i64::from(e))?;
                    if end < start {
                        return Err(PolicyError::EndPortBeforePort {
                            field: field.to_string(),
                            start,
                            end: e,
                        });
                    }
                    end
                }
            };
            Some(PortRef::Range { start, end })
        }
        // A string is a name, never a number: the API server rejects "80".
        (Some(IntOrString::String(s)), None) if valid_port_name(s) => {
            Some(PortRef::Named(s.clone()))
        }
        (Some(IntOrString::String(s)), None) => {
            return Err(PolicyError::PortName {
                field: format!("{field}.port"),
                value: s.clone(),
            });
        }
    };
    Ok(PortSpec { protocol, port })
}

fn port_number(field: &str, n: i64) -> Result<u16, PolicyError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(PolicyError::PortRange {
            field: field.to_string(),
            value: n,
        })
}

/// IANA_SVC_NAME: 1-15 lowercase alphanumerics or '-', at least one letter,
/// no leading, trailing or double '-'.
pub(super) fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}
