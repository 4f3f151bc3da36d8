//! Calico v3 (projectcalico.org/v3) `NetworkPolicy`, `GlobalNetworkPolicy`
//! and `Tier`, as API objects and validated into the engine's
//! [`OrderedPolicy`]. Fields palisade cannot enforce are refused with the
//! field's name rather than ignored: a policy that means less than it says
//! would open or close what its author did not intend.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    network_policy::valid_port_name,
    ordered::{OrderedError, calico_selector, cidr, invalid, required_name, unsupported},
};
use crate::model::{
    ObjectRef, Protocol,
    ordered::{
        Action, DEFAULT_TIER, DEFAULT_TIER_ORDER, IpProtocolNumber, LabelMatch, Namespaces, Order,
        OrderedOrigin, OrderedPolicy, OrderedRef, OrderedRule, PeerMatch, PolicyOrder, Stage,
        Subject, Tier as ModelTier, TierKey,
    },
    policy::{PortRef, PortSpec},
};

pub const API_VERSION: &str = "projectcalico.org/v3";

/// projectcalico.org/v3 NetworkPolicy (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PolicySpec,
}

/// projectcalico.org/v3 GlobalNetworkPolicy (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalNetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PolicySpec,
}

/// The spec of both policy kinds; the fields only a GlobalNetworkPolicy
/// has are refused on a NetworkPolicy by the converter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_not_track: Option<bool>,
    #[serde(default, rename = "preDNAT", skip_serializing_if = "Option::is_none")]
    pub pre_dnat: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_on_forward: Option<bool>,
    /// Hints for Calico's dataplane; they do not change what is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_hints: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Value>,
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_nets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<IntOrString>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ports: Option<Vec<IntOrString>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Value>,
}

/// Calico's numorstring: `protocol: 6` or `protocol: TCP`, `ports: [80]`
/// or `ports: ["8000:8080"]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

/// projectcalico.org/v3 Tier (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TierSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
}

/// What a Tier object says, as the index keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierInfo {
    /// `None`: after every tier with an order.
    pub order: Option<Order>,
    /// `defaultAction: Deny` (the default); `Pass` goes on to the next tier.
    pub end_of_tier_deny: bool,
}

/// The name and what it says of a Tier object.
pub fn tier_from_api(t: &Tier) -> Result<(String, TierInfo), OrderedError> {
    let name = t
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(OrderedError::MissingName)?;
    let order = finite_order("spec.order", t.spec.order)?;
    let end_of_tier_deny = match t.spec.default_action.as_deref() {
        None | Some("Deny") => true,
        Some("Pass") => false,
        Some(other) => {
            return Err(invalid(
                "spec.defaultAction",
                format!("unknown action {other:?} (want Deny or Pass)"),
            ));
        }
    };
    Ok((
        name,
        TierInfo {
            order,
            end_of_tier_deny,
        },
    ))
}

/// The tier a Calico policy sits in, from the Tier objects known. The
/// `default` tier always has order 1,000,000 (NetworkPolicy v1 sits in it
/// at that position); a tier without a Tier object yet sits last and
/// denies at its end, until its object arrives.
pub fn resolve_tier(name: &str, tiers: &BTreeMap<String, TierInfo>) -> ModelTier {
    let info = tiers.get(name);
    let order = if name == DEFAULT_TIER {
        Some(Order(DEFAULT_TIER_ORDER))
    } else {
        info.and_then(|i| i.order)
    };
    ModelTier {
        key: TierKey {
            stage: Stage::Calico,
            order,
            name: name.to_string(),
        },
        end_of_tier_deny: info.is_none_or(|i| i.end_of_tier_deny),
    }
}

/// A namespaced Calico NetworkPolicy, its tier resolved from `tiers`.
pub fn network_policy_from_api(
    np: &NetworkPolicy,
    tiers: &BTreeMap<String, TierInfo>,
) -> Result<(OrderedRef, OrderedPolicy), OrderedError> {
    let name = required_name(&np.metadata)?;
    let namespace = np
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(OrderedError::MissingNamespace)?;
    let spec = &np.spec;
    // Fields of GlobalNetworkPolicy only.
    for (field, given) in [
        ("spec.namespaceSelector", spec.namespace_selector.is_some()),
        ("spec.doNotTrack", spec.do_not_track.is_some()),
        ("spec.preDNAT", spec.pre_dnat.is_some()),
        ("spec.applyOnForward", spec.apply_on_forward.is_some()),
    ] {
        if given {
            return Err(invalid(field, "only a GlobalNetworkPolicy has this field"));
        }
    }
    let policy = policy(spec, Some(&namespace), &name, tiers)?;
    Ok((
        OrderedRef::CalicoNetworkPolicy(ObjectRef::new(namespace, name)),
        policy,
    ))
}

/// A GlobalNetworkPolicy, its tier resolved from `tiers`.
pub fn global_network_policy_from_api(
    gnp: &GlobalNetworkPolicy,
    tiers: &BTreeMap<String, TierInfo>,
) -> Result<(OrderedRef, OrderedPolicy), OrderedError> {
    let name = required_name(&gnp.metadata)?;
    let spec = &gnp.spec;
    for (field, on, what) in [
        (
            "spec.doNotTrack",
            spec.do_not_track,
            "untracked policy applies to host endpoints",
        ),
        (
            "spec.preDNAT",
            spec.pre_dnat,
            "pre-DNAT policy applies to host endpoints",
        ),
        (
            "spec.applyOnForward",
            spec.apply_on_forward,
            "forwarded traffic of host endpoints",
        ),
    ] {
        if on == Some(true) {
            return Err(unsupported(field, what));
        }
    }
    let policy = policy(spec, None, &name, tiers)?;
    Ok((OrderedRef::CalicoGlobalNetworkPolicy(name), policy))
}

fn finite_order(field: &str, order: Option<f64>) -> Result<Option<Order>, OrderedError> {
    match order {
        None => Ok(None),
        Some(o) if o.is_finite() => Ok(Some(Order(o))),
        Some(o) => Err(invalid(field, format!("order {o} is not a finite number"))),
    }
}

/// Blank selectors and lists mean "no condition".
fn given(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.trim().is_empty())
}

fn policy(
    spec: &PolicySpec,
    namespace: Option<&str>,
    name: &str,
    tiers: &BTreeMap<String, TierInfo>,
) -> Result<OrderedPolicy, OrderedError> {
    let tier_name = match spec.tier.as_deref() {
        None | Some("") => DEFAULT_TIER.to_string(),
        Some(t) => t.to_string(),
    };
    let order = finite_order("spec.order", spec.order)?;
    let pods = calico_selector("spec.selector", given(&spec.selector))?;
    if given(&spec.service_account_selector).is_some() {
        return Err(unsupported(
            "spec.serviceAccountSelector",
            "selecting pods by service account",
        ));
    }
    let namespaces = match namespace {
        Some(ns) => Namespaces::Named(ns.to_string()),
        None => Namespaces::Matching(LabelMatch::Calico(calico_selector(
            "spec.namespaceSelector",
            given(&spec.namespace_selector),
        )?)),
    };

    let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    let (has_ingress, has_egress) = policy_types(spec, ingress_rules, egress_rules)?;
    let rules = |list: &[Rule], direction: Direction| -> Result<Vec<OrderedRule>, OrderedError> {
        list.iter()
            .enumerate()
            .map(|(n, r)| {
                rule(
                    &format!("spec.{}[{n}]", direction.field()),
                    r,
                    direction,
                    namespace,
                )
            })
            .collect()
    };
    let ingress = if has_ingress {
        Some(rules(ingress_rules, Direction::Ingress)?)
    } else {
        None
    };
    let egress = if has_egress {
        Some(rules(egress_rules, Direction::Egress)?)
    } else {
        None
    };
    Ok(OrderedPolicy {
        origin: OrderedOrigin::Calico {
            tier: tier_name.clone(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        },
        tier: resolve_tier(&tier_name, tiers),
        order: PolicyOrder {
            order,
            name: match namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_string(),
            },
        },
        subject: Subject {
            namespaces,
            pods: LabelMatch::Calico(pods),
        },
        ingress,
        egress,
    })
}

/// `spec.types`, or Calico's defaulting: Ingress unless there are egress
/// rules; with egress rules, Egress, and Ingress as well if there are
/// ingress rules. Rules of a direction the types leave out are an error.
fn policy_types(
    spec: &PolicySpec,
    ingress_rules: &[Rule],
    egress_rules: &[Rule],
) -> Result<(bool, bool), OrderedError> {
    let (has_ingress, has_egress) = match spec.types.as_deref() {
        Some(types) if !types.is_empty() => {
            let (mut i, mut e) = (false, false);
            for (n, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => {
                        return Err(invalid(
                            format!("spec.types[{n}]"),
                            format!("unknown type {other:?} (want Ingress or Egress)"),
                        ));
                    }
                }
            }
            (i, e)
        }
        _ if egress_rules.is_empty() => (true, false),
        _ => (!ingress_rules.is_empty(), true),
    };
    if !has_ingress && !ingress_rules.is_empty() {
        return Err(invalid(
            "spec.ingress",
            "ingress rules given but spec.types does not include Ingress",
        ));
    }
    if !has_egress && !egress_rules.is_empty() {
        return Err(invalid(
            "spec.egress",
            "egress rules given but spec.types does not include Egress",
        ));
    }
    Ok((has_ingress, has_egress))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A protocol: its number, and the port-carrying protocol it is, if any.
fn protocol(
    field: &str,
    p: &IntOrString,
) -> Result<(IpProtocolNumber, Option<Protocol>), OrderedError> {
    let n: u8 = match p {
        IntOrString::Int(n) => u8::try_from(*n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| invalid(field, format!("protocol number {n} out of range 1-255")))?,
        IntOrString::String(s) => match s.as_str() {
            "TCP" => Protocol::Tcp.number(),
            "UDP" => Protocol::Udp.number(),
            "SCTP" => Protocol::Sctp.number(),
            "ICMP" => 1,
            "ICMPv6" => 58,
            "UDPLite" => 136,
            other => {
                return Err(invalid(
                    field,
                    format!(
                        "unknown protocol {other:?} (want TCP, UDP, SCTP, ICMP, ICMPv6, UDPLite or 1-255)"
                    ),
                ));
            }
        },
    };
    Ok((IpProtocolNumber(n), Protocol::from_number(n)))
}

fn rule(
    field: &str,
    r: &Rule,
    direction: Direction,
    namespace: Option<&str>,
) -> Result<OrderedRule, OrderedError> {
    let action = rule_action(field, r)?;
    refuse_unsupported(field, r)?;
    let protocol_given = r
        .protocol
        .as_ref()
        .map(|p| protocol(&format!("{field}.protocol"), p))
        .transpose()?;
    let not_protocol = r
        .not_protocol
        .as_ref()
        .map(|p| protocol(&format!("{field}.notProtocol"), p))
        .transpose()?
        .map(|(n, _)| n);

    let empty = EntityRule::default();
    let source = r.source.as_ref().unwrap_or(&empty);
    let destination = r.destination.as_ref().unwrap_or(&empty);
    for (name, ports) in [("ports", &source.ports), ("notPorts", &source.not_ports)] {
        if ports.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(unsupported(
                format!("{field}.source.{name}"),
                "matching on the source port",
            ));
        }
    }
    let (peer_name, peer, local_name, local) = match direction {
        Direction::Ingress => ("source", source, "destination", destination),
        Direction::Egress => ("destination", destination, "source", source),
    };
    let peer = entity(&format!("{field}.{peer_name}"), peer, namespace)?;
    let local = entity(&format!("{field}.{local_name}"), local, namespace)?;

    let port_protocol = protocol_given.and_then(|(_, p)| p);
    let ports = |name: &str,
                 list: &Option<Vec<IntOrString>>|
     -> Result<Option<Vec<PortSpec>>, OrderedError> {
        let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let field = format!("{field}.destination.{name}");
        let Some(protocol) = port_protocol else {
            return Err(invalid(
                field,
                "ports need protocol TCP, UDP or SCTP on the rule",
            ));
        };
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(PortSpec {
                    protocol,
                    port: Some(port(&format!("{field}[{i}]"), p)?),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let dst_ports = ports("ports", &destination.ports)?;
    let not_ports = ports("notPorts", &destination.not_ports)?.unwrap_or_default();
    Ok(OrderedRule {
        action,
        peers: peer.map(|p| vec![p]),
        protocol: protocol_given.map(|(n, _)| n),
        not_protocol,
        ports: dst_ports,
        not_ports,
        local,
    })
}

fn rule_action(field: &str, r: &Rule) -> Result<Action, OrderedError> {
    match r.action.as_deref() {
        Some("Allow") => Ok(Action::Allow),
        Some("Deny") => Ok(Action::Deny),
        Some("Pass") => Ok(Action::Pass),
        Some("Log") => Ok(Action::Log),
        Some(other) => Err(invalid(
            format!("{field}.action"),
            format!("unknown action {other:?} (want Allow, Deny, Pass or Log)"),
        )),
        None => Err(invalid(
            format!("{field}.action"),
            "required (Allow, Deny, Pass or Log)",
        )),
    }
}

/// Rule fields palisade cannot enforce: refused, never ignored.
fn refuse_unsupported(field: &str, r: &Rule) -> Result<(), OrderedError> {
    let refused = [
        (
            r.ip_version.is_some(),
            "ipVersion",
            "matching on IP version",
        ),
        (r.icmp.is_some(), "icmp", "matching on ICMP type and code"),
        (
            r.not_icmp.is_some(),
            "notICMP",
            "matching on ICMP type and code",
        ),
        (r.http.is_some(), "http", "matching on HTTP requests"),
    ];
    match refused.into_iter().find(|(given, ..)| *given) {
        Some((_, name, what)) => Err(unsupported(format!("{field}.{name}"), what)),
        None => Ok(()),
    }
}

/// A Calico port: a number, `"a:b"`, or a named port.
fn port(field: &str, p: &IntOrString) -> Result<PortRef, OrderedError> {
    let number = |s: &str| -> Result<u16, OrderedError> {
        s.trim()
            .parse::<u16>()
            .map_err(|_| invalid(field, format!("port {s:?} is not a number in 0-65535")))
    };
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .map(|n| PortRef::Range { start: n, end: n })
            .map_err(|_| invalid(field, format!("port {n} out of range 0-65535"))),
        IntOrString::String(s) => {
            if let Some((a, b)) = s.split_once(':') {
                let (start, end) = (number(a)?, number(b)?);
                if start > end {
                    return Err(invalid(
                        field,
                        format!("port range {s:?} ends before it starts"),
                    ));
                }
                Ok(PortRef::Range { start, end })
            } else if let Ok(n) = s.trim().parse::<u16>() {
                Ok(PortRef::Range { start: n, end: n })
            } else if s.chars().all(|c| c.is_ascii_digit()) {
                Err(invalid(field, format!("port {s} out of range 0-65535")))
            } else if valid_port_name(s) {
                Ok(PortRef::Named(s.clone()))
            } else {
                Err(invalid(field, format!("invalid port name {s:?}")))
            }
        }
    }
}

/// A Calico entity rule (less its ports) as a peer condition; `None` when
/// it sets none. Without namespaceSelector, the selectors of a namespaced
/// policy look in its own namespace; those of a global one anywhere.
fn entity(
    field: &str,
    e: &EntityRule,
    namespace: Option<&str>,
) -> Result<Option<PeerMatch>, OrderedError> {
    if e.service_accounts.is_some() {
        return Err(unsupported(
            format!("{field}.serviceAccounts"),
            "matching on service accounts",
        ));
    }
    if e.services.is_some() {
        return Err(unsupported(
            format!("{field}.services"),
            "matching on Services",
        ));
    }
    let nets = |name: &str, list: &Option<Vec<String>>| -> Result<Vec<_>, OrderedError> {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, n)| cidr(&format!("{field}.{name}[{i}]"), n, true))
            .collect()
    };
    let selector = |name: &str, s: &Option<String>| -> Result<Option<LabelMatch>, OrderedError> {
        given(s)
            .map(|s| calico_selector(&format!("{field}.{name}"), Some(s)).map(LabelMatch::Calico))
            .transpose()
    };
    let in_nets = nets("nets", &e.nets)?;
    let not_nets = nets("notNets", &e.not_nets)?;
    let pods = selector("selector", &e.selector)?;
    let not_pods = selector("notSelector", &e.not_selector)?;
    let namespace_selector = selector("namespaceSelector", &e.namespace_selector)?;
    let namespaces = match (namespace_selector, namespace) {
        (Some(m), _) => Some(Namespaces::Matching(m)),
        (None, Some(ns)) if pods.is_some() || not_pods.is_some() => {
            Some(Namespaces::Named(ns.to_string()))
        }
        (None, _) => None,
    };
    let peer = PeerMatch {
        namespaces,
        pods,
        not_pods,
        nets: (!in_nets.is_empty()).then_some(in_nets),
        not_nets,
    };
    Ok((peer != PeerMatch::default()).then_some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        index::{
            Index, Kind, ObjectKey,
            ordered::test_support::{error, index, objects, policy},
        },
        model::Labels,
    };

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn np(spec: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
        )
    }

    fn gnp(spec: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g}}\nspec:\n{spec}"
        )
    }

    fn calico(s: &str) -> LabelMatch {
        LabelMatch::Calico(CalicoSelector::parse(s).expect("selector"))
    }

    use crate::model::calico_selector::CalicoSelector;

    // Over 80 lines: one assertion per field of the converted policy.
    #[test]
    fn a_namespaced_policy_converts_field_by_field() {
        let p = policy(&np(r#"
  tier: security
  order: 10.5
  selector: app == "web"
  types: [Ingress, Egress]
  ingress:
    - action: Allow
      protocol: TCP
      source:
        selector: role == "lb"
        notNets: [10.0.9.0/24]
      destination:
        ports: [80, "443", "8000:8080", http]
        notPorts: [8081]
      metadata: {annotations: {why: lb}}
  egress:
    - action: Deny
      notProtocol: UDP
      destination:
        nets: [10.1.0.0/16, 10.2.0.1]
    - action: Log
    - action: Pass
      protocol: 1
"#));
        assert_eq!(
            p.origin,
            OrderedOrigin::Calico {
                tier: "security".into(),
                namespace: Some("shop".into()),
                name: "p".into()
            }
        );
        assert_eq!(p.origin.to_string(), "calico/security/shop/p");
        assert_eq!(
            p.order,
            PolicyOrder {
                order: Some(Order(10.5)),
                name: "shop/p".into()
            }
        );
        // No Tier object: last, denying at its end.
        assert_eq!(p.tier.key.order, None);
        assert!(p.tier.end_of_tier_deny);
        assert_eq!(p.subject.namespaces, Namespaces::Named("shop".into()));
        assert!(p.subject.pods.matches(&labels(&[("app", "web")])));
        assert!(!p.subject.pods.matches(&labels(&[("app", "db")])));

        let ingress = p.ingress.expect("ingress");
        assert_eq!(ingress.len(), 1);
        let r = &ingress[0];
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.protocol, Some(IpProtocolNumber(6)));
        assert_eq!(
            r.peers,
            Some(vec![PeerMatch {
                namespaces: Some(Namespaces::Named("shop".into())),
                pods: Some(calico(r#"role == "lb""#)),
                not_nets: vec!["10.0.9.0/24".parse().expect("net")],
                ..PeerMatch::default()
            }])
        );
        let tcp = |port| PortSpec {
            protocol: Protocol::Tcp,
            port: Some(port),
        };
        assert_eq!(
            r.ports,
            Some(vec![
                tcp(PortRef::Range { start: 80, end: 80 }),
                tcp(PortRef::Range {
                    start: 443,
                    end: 443
                }),
                tcp(PortRef::Range {
                    start: 8000,
                    end: 8080
                }),
                tcp(PortRef::Named("http".into())),
            ])
        );
        assert_eq!(
            r.not_ports,
            vec![tcp(PortRef::Range {
                start: 8081,
                end: 8081
            })]
        );
        assert_eq!(r.local, None, "destination has only ports");

        let egress = p.egress.expect("egress");
        assert_eq!(
            egress.iter().map(|r| r.action).collect::<Vec<_>>(),
            [Action::Deny, Action::Log, Action::Pass]
        );
        assert_eq!(egress[0].not_protocol, Some(IpProtocolNumber(17)));
        assert_eq!(
            egress[0].peers,
            Some(vec![PeerMatch {
                nets: Some(vec![
                    "10.1.0.0/16".parse().expect("net"),
                    "10.2.0.1/32".parse().expect("net")
                ]),
                ..PeerMatch::default()
            }]),
            "nets alone: addresses, a bare address a host"
        );
        assert_eq!(egress[1].peers, None, "no peer conditions: any peer");
        assert_eq!(egress[1].ports, None);
        assert_eq!(egress[2].protocol, Some(IpProtocolNumber(1)));
    }

    #[test]
    fn entity_selectors_look_in_the_right_namespaces() {
        let rule = |text: &str| {
            policy(text)
                .ingress
                .expect("ingress")
                .into_iter()
                .next()
                .expect("rule")
        };
        let entity =
            |source: &str| format!("  ingress:\n    - action: Allow\n      source: {source}\n");
        // Namespaced: a selector alone looks in the policy's namespace.
        let r = rule(&np(&entity(r#"{selector: app == "a"}"#)));
        let peer = &r.peers.expect("peer")[0];
        assert_eq!(peer.namespaces, Some(Namespaces::Named("shop".into())));
        // A notSelector alone too (Calico scopes it to the namespace).
        let r = rule(&np(&entity(r#"{notSelector: app == "a"}"#)));
        let peer = &r.peers.expect("peer")[0];
        assert_eq!(peer.namespaces, Some(Namespaces::Named("shop".into())));
        assert_eq!(peer.pods, None);
        assert_eq!(peer.not_pods, Some(calico(r#"app == "a""#)));
        // namespaceSelector alone: any pod of the matching namespaces.
        let r = rule(&np(&entity(r#"{namespaceSelector: team == "x"}"#)));
        let peer = &r.peers.expect("peer")[0];
        assert_eq!(
            peer.namespaces,
            Some(Namespaces::Matching(calico(r#"team == "x""#)))
        );
        assert_eq!(peer.pods, None);
        // Both: pods of those namespaces.
        let r = rule(&np(&entity(
            r#"{namespaceSelector: team == "x", selector: app == "a"}"#,
        )));
        let peer = &r.peers.expect("peer")[0];
        assert!(peer.namespaces.is_some() && peer.pods.is_some());
        // Global: a selector alone looks in every namespace.
        let r = rule(&gnp(&entity(r#"{selector: app == "a"}"#)));
        let peer = &r.peers.expect("peer")[0];
        assert_eq!(peer.namespaces, None);
        assert_eq!(peer.pods, Some(calico(r#"app == "a""#)));
        // Blank selectors are no condition.
        let r = rule(&np(&entity(r#"{selector: "", nets: []}"#)));
        assert_eq!(r.peers, None);
    }

    #[test]
    fn the_other_end_of_a_rule_restricts_the_local_pod() {
        let p = policy(&np(r#"
  ingress:
    - action: Allow
      protocol: TCP
      destination: {selector: app == "web", ports: [80]}
  egress:
    - action: Allow
      source: {selector: app == "web"}
      destination: {nets: [10.0.0.0/8]}
"#));
        let local = Some(PeerMatch {
            namespaces: Some(Namespaces::Named("shop".into())),
            pods: Some(calico(r#"app == "web""#)),
            ..PeerMatch::default()
        });
        let ingress = &p.ingress.expect("ingress")[0];
        assert_eq!(ingress.local, local);
        assert_eq!(ingress.peers, None);
        let egress = &p.egress.expect("egress")[0];
        assert_eq!(egress.local, local);
        assert!(egress.peers.is_some());
    }

    #[test]
    fn types_default_as_calico_defaults_them() {
        let dirs = |text: &str| {
            let p = policy(text);
            (p.ingress.is_some(), p.egress.is_some())
        };
        assert_eq!(
            dirs(&np("  selector: all()\n")),
            (true, false),
            "no rules: Ingress"
        );
        assert_eq!(dirs(&np("  ingress: [{action: Deny}]\n")), (true, false));
        assert_eq!(
            dirs(&np("  egress: [{action: Deny}]\n")),
            (false, true),
            "egress rules only: Egress only"
        );
        assert_eq!(
            dirs(&np(
                "  ingress: [{action: Deny}]\n  egress: [{action: Deny}]\n"
            )),
            (true, true)
        );
        assert_eq!(
            dirs(&np("  types: [Egress]\n")),
            (false, true),
            "given types win"
        );
        assert_eq!(
            dirs(&np("  types: [Ingress, Egress]\n")),
            (true, true),
            "given types without rules: the direction with no rules"
        );
        assert_eq!(
            policy(&np("  types: [Ingress, Egress]\n")).egress,
            Some(Vec::new())
        );
    }

    #[test]
    fn a_global_policy_selects_by_namespace_and_pod() {
        let p = policy(&gnp(
            "  namespaceSelector: env == \"prod\"\n  selector: app == \"web\"\n  order: 5\n  performanceHints: [AssumeNeededOnEveryNode]\n",
        ));
        assert_eq!(
            p.subject.namespaces,
            Namespaces::Matching(calico(r#"env == "prod""#))
        );
        assert_eq!(p.order.name, "g");
        assert_eq!(p.origin.to_string(), "calico/default/g");
        assert_eq!(p.tier.key, crate::model::ordered::default_tier());
        let all = policy(&gnp("  order: 5\n"));
        assert_eq!(
            all.subject.namespaces,
            Namespaces::Matching(LabelMatch::Calico(CalicoSelector::all()))
        );
        assert!(all.subject.pods.matches(&labels(&[])));
        // Turned off, the host-endpoint options are fine.
        policy(&gnp(
            "  doNotTrack: false\n  preDNAT: false\n  applyOnForward: false\n",
        ));
    }

    // Over 80 lines: one Tier object's whole life, step by step.
    #[test]
    fn tiers_resolve_and_re_resolve_as_tier_objects_come_and_go() {
        let tier = |name: &str, spec: &str| {
            format!(
                "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {spec}\n"
            )
        };
        let text = format!(
            "{}---\n{}",
            tier("security", "{order: 100, defaultAction: Pass}"),
            np("  tier: security\n")
        );
        let mut index = index(&text).expect("valid");
        let p = index
            .model()
            .ordered
            .values()
            .next()
            .expect("policy")
            .clone();
        assert_eq!(p.tier.key.order, Some(Order(100.0)));
        assert!(!p.tier.end_of_tier_deny, "defaultAction: Pass");

        // The Tier changes: the policy follows.
        for o in objects(&tier("security", "{order: 7}")).expect("tier") {
            index.apply(&o).expect("valid");
        }
        let p = index
            .model()
            .ordered
            .values()
            .next()
            .expect("policy")
            .clone();
        assert_eq!(p.tier.key.order, Some(Order(7.0)));
        assert!(p.tier.end_of_tier_deny, "defaultAction defaults to Deny");

        // A bad Tier is rejected and the last good one stays.
        for o in objects(&tier("security", "{order: 1, defaultAction: Allow}")).expect("tier") {
            let e = index.apply(&o).map_err(|e| crate::error_chain::chain(&e));
            let e = e.expect_err("rejected");
            assert!(
                e.contains("spec.defaultAction") && e.contains("Allow"),
                "{e}"
            );
        }
        let key = ObjectKey {
            kind: Kind::CalicoTier,
            object: ObjectRef::new("", "security"),
        };
        assert!(index.rejected().contains_key(&key));
        let p = index
            .model()
            .ordered
            .values()
            .next()
            .expect("policy")
            .clone();
        assert_eq!(p.tier.key.order, Some(Order(7.0)));

        // The Tier goes: last again, denying.
        index.delete(&key);
        let p = index
            .model()
            .ordered
            .values()
            .next()
            .expect("policy")
            .clone();
        assert_eq!(p.tier.key.order, None);
        assert!(p.tier.end_of_tier_deny);

        // A relist without tiers drops them too.
        let mut index2 = self::index(&text).expect("valid");
        let _ = index2.reset(Kind::CalicoTier, &[]);
        let p = index2
            .model()
            .ordered
            .values()
            .next()
            .expect("policy")
            .clone();
        assert_eq!(p.tier.key.order, None);
    }

    #[test]
    fn a_rejected_policy_keeps_its_last_good_version() {
        let mut index = Index::default();
        let good = objects(&np("  ingress: [{action: Deny}]\n")).expect("parse");
        index.apply(&good[0]).expect("valid");
        let bad = objects(&np(
            "  ingress: [{action: Deny, protocol: TCP, destination: {ports: [99999]}}]\n",
        ))
        .expect("parse");
        assert!(index.apply(&bad[0]).is_err());
        assert_eq!(index.rejected().len(), 1);
        let p = index.model().ordered.values().next().expect("kept");
        assert_eq!(p.ingress.as_ref().map(Vec::len), Some(1));
        assert_eq!(p.ingress.as_ref().expect("rules")[0].protocol, None);
        index.delete(&bad[0].key());
        assert!(index.model().ordered.is_empty());
        assert!(index.rejected().is_empty());
    }

    // Over 80 lines: a table of rejections, one case per refused field.
    #[test]
    fn every_rejection_names_its_field() {
        let cases: &[(String, &str)] = &[
            (np("  order: .nan\n"), "spec.order"),
            (np("  selector: app ==\n"), "spec.selector"),
            (
                np("  serviceAccountSelector: x == \"y\"\n"),
                "spec.serviceAccountSelector",
            ),
            (np("  namespaceSelector: all()\n"), "spec.namespaceSelector"),
            (np("  doNotTrack: true\n"), "spec.doNotTrack"),
            (gnp("  doNotTrack: true\n"), "spec.doNotTrack"),
            (gnp("  preDNAT: true\n"), "spec.preDNAT"),
            (gnp("  applyOnForward: true\n"), "spec.applyOnForward"),
            (np("  types: [Inbound]\n"), "spec.types[0]"),
            (
                np("  types: [Egress]\n  ingress: [{action: Deny}]\n"),
                "spec.ingress",
            ),
            (
                np("  ingress: [{protocol: TCP}]\n"),
                "spec.ingress[0].action",
            ),
            (
                np("  ingress: [{action: Drop}]\n"),
                "spec.ingress[0].action",
            ),
            (
                np("  ingress: [{action: Deny, protocol: GRE}]\n"),
                "spec.ingress[0].protocol",
            ),
            (
                np("  ingress: [{action: Deny, protocol: 256}]\n"),
                "spec.ingress[0].protocol",
            ),
            (
                np("  ingress: [{action: Deny, notProtocol: 0}]\n"),
                "spec.ingress[0].notProtocol",
            ),
            (
                np("  ingress: [{action: Deny, ipVersion: 4}]\n"),
                "spec.ingress[0].ipVersion",
            ),
            (
                np("  ingress: [{action: Deny, protocol: ICMP, icmp: {type: 8}}]\n"),
                "spec.ingress[0].icmp",
            ),
            (
                np("  ingress: [{action: Deny, protocol: ICMP, notICMP: {type: 8}}]\n"),
                "spec.ingress[0].notICMP",
            ),
            (
                np("  ingress: [{action: Allow, http: {methods: [GET]}}]\n"),
                "spec.ingress[0].http",
            ),
            (
                np("  ingress: [{action: Allow, destination: {ports: [80]}}]\n"),
                "spec.ingress[0].destination.ports",
            ),
            (
                np("  ingress: [{action: Allow, protocol: ICMP, destination: {ports: [80]}}]\n"),
                "spec.ingress[0].destination.ports",
            ),
            (
                np(
                    "  ingress: [{action: Allow, protocol: UDP, destination: {notPorts: [\"9:1\"]}}]\n",
                ),
                "spec.ingress[0].destination.notPorts[0]",
            ),
            (
                np("  ingress: [{action: Allow, protocol: UDP, destination: {ports: [70000]}}]\n"),
                "spec.ingress[0].destination.ports[0]",
            ),
            (
                np(
                    "  ingress: [{action: Allow, protocol: UDP, destination: {ports: [\"1:x\"]}}]\n",
                ),
                "spec.ingress[0].destination.ports[0]",
            ),
            (
                np(
                    "  ingress: [{action: Allow, protocol: UDP, destination: {ports: [Bad_Name]}}]\n",
                ),
                "spec.ingress[0].destination.ports[0]",
            ),
            (
                np("  ingress: [{action: Allow, protocol: TCP, source: {ports: [80]}}]\n"),
                "spec.ingress[0].source.ports",
            ),
            (
                np("  egress: [{action: Allow, protocol: TCP, source: {notPorts: [80]}}]\n"),
                "spec.egress[0].source.notPorts",
            ),
            (
                np("  ingress: [{action: Allow, source: {serviceAccounts: {names: [a]}}}]\n"),
                "spec.ingress[0].source.serviceAccounts",
            ),
            (
                np("  egress: [{action: Allow, destination: {services: {name: a}}}]\n"),
                "spec.egress[0].destination.services",
            ),
            (
                np("  ingress: [{action: Allow, source: {nets: [10.0.0.0/33]}}]\n"),
                "spec.ingress[0].source.nets[0]",
            ),
            (
                np("  ingress: [{action: Allow, source: {notNets: [\"::ffff:10.0.0.0/104\"]}}]\n"),
                "spec.ingress[0].source.notNets[0]",
            ),
            (
                np("  ingress: [{action: Allow, source: {selector: \"a ==\"}}]\n"),
                "spec.ingress[0].source.selector",
            ),
            (
                np("  ingress: [{action: Allow, source: {notSelector: \"(\"}}]\n"),
                "spec.ingress[0].source.notSelector",
            ),
            (
                np("  ingress: [{action: Allow, source: {namespaceSelector: \"!\"}}]\n"),
                "spec.ingress[0].source.namespaceSelector",
            ),
            (
                np("  egress: [{action: Allow, destination: {selector: \"a ==\"}}]\n"),
                "spec.egress[0].destination.selector",
            ),
            (
                np("  ingress: [{action: Allow, source: {selectr: all()}}]\n"),
                "spec.ingress[0].source",
            ),
            (np("  selectr: all()\n"), "spec"),
        ];
        for (text, field) in cases {
            let e = error(text);
            assert!(e.contains(*field), "{field} not named in: {e}");
        }
        // The unknown field itself is named, with its path.
        let e = error(&np(
            "  ingress: [{action: Allow, source: {selectr: all()}}]\n",
        ));
        assert!(
            e.contains("spec.ingress[0].source") && e.contains("selectr"),
            "{e}"
        );
        let e = error(&np(
            "  ingress: [{action: Allow, source: {ports: [80]}, protocol: TCP}]\n",
        ));
        assert!(e.contains("not supported"), "{e}");
        // A missing namespace or name.
        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n",
        );
        assert!(e.contains("metadata.namespace"), "{e}");
        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {}\nspec: {}\n",
        );
        assert!(e.contains("metadata.name"), "{e}");
    }

    /// The seed scenario's policies all convert, and mean what they say.
    fn seed_policies(text: &str) {
        let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
        let list = serde_yaml::to_string(&serde_yaml::Value::Mapping(
            [
                ("kind".into(), "List".into()),
                ("items".into(), doc["policies"].clone()),
            ]
            .into_iter()
            .collect(),
        ))
        .expect("yaml");
        let index = match index(&list) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        let ordered = &index.model().ordered;
        assert_eq!(ordered.len(), 8);
        let get = |r: OrderedRef| ordered.get(&r).cloned().expect("converted");
        let g = get(OrderedRef::CalicoGlobalNetworkPolicy(
            "global-default-deny".into(),
        ));
        assert_eq!(g.order.order, Some(Order(1000.0)));
        assert_eq!(g.ingress, Some(Vec::new()), "types: Ingress, no rules");
        let egress = g.egress.expect("egress");
        assert_eq!(egress.len(), 2);
        assert_eq!(egress[0].protocol, Some(IpProtocolNumber(17)));
        assert_eq!(
            egress[0].ports,
            Some(vec![PortSpec {
                protocol: Protocol::Udp,
                port: Some(PortRef::Range { start: 53, end: 53 })
            }])
        );
        let peer = &egress[0].peers.as_ref().expect("peer")[0];
        assert_eq!(peer.namespaces, None, "global: any namespace");
        assert!(
            peer.pods
                .as_ref()
                .expect("pods")
                .matches(&labels(&[("k8s-app", "kube-dns")]))
        );
        let system = labels(&[("kubernetes.io/metadata.name", "kube-system")]);
        assert!(!g.subject.namespaces.matches("kube-system", &system));
        let wp = labels(&[("kubernetes.io/metadata.name", "wordpress")]);
        assert!(g.subject.namespaces.matches("wordpress", &wp));

        let wp_ref = |n: &str| OrderedRef::CalicoNetworkPolicy(ObjectRef::new("wordpress", n));
        let deny = get(wp_ref("default-deny"));
        assert_eq!(deny.order.order, None);
        assert_eq!(deny.ingress.as_ref().map(Vec::len), Some(1));
        assert_eq!(deny.egress.as_ref().map(Vec::len), Some(1));
        let egress_only = get(wp_ref("allow-egress"));
        assert_eq!(egress_only.ingress, None);
        assert_eq!(egress_only.order.order, Some(Order(200.0)));
        let web = get(wp_ref("allow-ingress-to-wordpress-service"));
        let rule = &web.ingress.expect("ingress")[0];
        assert!(rule.local.is_some(), "destination selector: the local pod");
        assert_eq!(
            rule.peers.as_ref().expect("peer")[0].namespaces,
            Some(Namespaces::Matching(calico(r#"role == "ingress""#)))
        );
        for p in ordered.values() {
            assert_eq!(p.tier.key, crate::model::ordered::default_tier());
            assert!(p.tier.end_of_tier_deny);
        }
    }

    #[test]
    fn the_seed_scenarios_policies_convert() {
        seed_policies(include_str!(
            "testdata/seed-003-calico-wordpress-policies.yaml"
        ));
        // The scenario itself, where shared/ is beside the repository.
        let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/scenarios/calico/seed-003-calico-wordpress.yaml");
        if let Ok(text) = std::fs::read_to_string(&shared) {
            seed_policies(&text);
        }
    }
}
