//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, as in
//! network-policy-api v0.2.0) as an API object and validated into the
//! engine's [`OrderedPolicy`], with the limits of the upstream CRD's
//! validation. Experimental peers palisade cannot enforce (`nodes`,
//! `domainNames`) are refused with the field's name.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    network_policy::valid_port_name,
    ordered::{OrderedError, cidr, invalid, kube_selector, required_name, unsupported},
};
use crate::model::{
    Protocol,
    ordered::{
        Action, LabelMatch, Namespaces, Order, OrderedOrigin, OrderedPolicy, OrderedRef,
        OrderedRule, PeerMatch, PolicyOrder, Stage, Subject, Tier, TierKey,
    },
    policy::{PortRef, PortSpec},
};

pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// Upstream validation: at most this many rules per direction, peers per
/// rule, protocols per rule and networks per peer.
pub const MAX_ITEMS: usize = 25;
pub const MAX_PRIORITY: i64 = 1000;
pub const MAX_RULE_NAME: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    /// Written by implementations; never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
}

/// An ingress rule has `from`, an egress rule `to`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// The subject and every peer: exactly one field set. Only egress peers
/// have `networks`, `nodes` and `domainNames`; a subject has only
/// `namespaces` or `pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedPod {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtocolMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtocolPorts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// Exactly one of `number` and `range`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Validates a ClusterNetworkPolicy into the engine's form.
pub fn cluster_network_policy_from_api(
    cnp: &ClusterNetworkPolicy,
) -> Result<(OrderedRef, OrderedPolicy), OrderedError> {
    let name = required_name(&cnp.metadata)?;
    let spec = &cnp.spec;
    let (stage, origin, tier_name) = match spec.tier.as_deref() {
        Some("Admin") => (Stage::Admin, OrderedOrigin::Admin(name.clone()), "admin"),
        Some("Baseline") => (
            Stage::Baseline,
            OrderedOrigin::Baseline(name.clone()),
            "baseline",
        ),
        Some(other) => {
            return Err(invalid(
                "spec.tier",
                format!("unknown tier {other:?} (want Admin or Baseline)"),
            ));
        }
        None => return Err(invalid("spec.tier", "required (Admin or Baseline)")),
    };
    let priority = match spec.priority {
        Some(p) if (0..=MAX_PRIORITY).contains(&p) => u16::try_from(p).unwrap_or(u16::MAX),
        Some(p) => {
            return Err(invalid(
                "spec.priority",
                format!("{p} out of range 0-{MAX_PRIORITY}"),
            ));
        }
        None => return Err(invalid("spec.priority", "required (0-1000)")),
    };
    let subject = subject(spec.subject.as_ref())?;
    let ingress = rules("spec.ingress", spec.ingress.as_deref(), Direction::Ingress)?;
    let egress = rules("spec.egress", spec.egress.as_deref(), Direction::Egress)?;
    let order = Order(f64::from(priority));
    Ok((
        OrderedRef::ClusterNetworkPolicy(name.clone()),
        OrderedPolicy {
            origin,
            tier: Tier {
                key: TierKey {
                    stage,
                    order: None,
                    name: tier_name.to_string(),
                },
                end_of_tier_deny: false,
            },
            order: PolicyOrder {
                order: Some(order),
                name,
            },
            subject,
            ingress,
            egress,
        },
    ))
}

/// Exactly one field of a subject or peer.
fn one_field(field: &str, p: &Peer) -> Result<(), OrderedError> {
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.networks.is_some(),
        p.nodes.is_some(),
        p.domain_names.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    match set {
        1 => Ok(()),
        0 => Err(invalid(field, "exactly one field must be set (none is)")),
        _ => Err(invalid(
            field,
            "exactly one field must be set (several are)",
        )),
    }
}

fn subject(s: Option<&Peer>) -> Result<Subject, OrderedError> {
    let field = "spec.subject";
    let s = s.ok_or_else(|| invalid(field, "required (namespaces or pods)"))?;
    for (name, set) in [
        ("networks", s.networks.is_some()),
        ("nodes", s.nodes.is_some()),
        ("domainNames", s.domain_names.is_some()),
    ] {
        if set {
            return Err(invalid(
                format!("{field}.{name}"),
                "a subject has only namespaces or pods",
            ));
        }
    }
    one_field(field, s)?;
    if let Some(ns) = &s.namespaces {
        return Ok(Subject {
            namespaces: Namespaces::Matching(kube_selector(&format!("{field}.namespaces"), ns)?),
            pods: LabelMatch::everything(),
        });
    }
    let pods = s
        .pods
        .as_ref()
        .ok_or_else(|| invalid(field, "namespaces or pods required"))?;
    let (namespaces, pods) = namespaced_pod(&format!("{field}.pods"), pods)?;
    Ok(Subject {
        namespaces: Namespaces::Matching(namespaces),
        pods,
    })
}

fn namespaced_pod(
    field: &str,
    p: &NamespacedPod,
) -> Result<(LabelMatch, LabelMatch), OrderedError> {
    let namespaces = match &p.namespace_selector {
        None => LabelMatch::everything(),
        Some(s) => kube_selector(&format!("{field}.namespaceSelector"), s)?,
    };
    let pods = match &p.pod_selector {
        None => return Err(invalid(format!("{field}.podSelector"), "required")),
        Some(s) => kube_selector(&format!("{field}.podSelector"), s)?,
    };
    Ok((namespaces, pods))
}

fn too_many(field: &str, n: usize) -> Result<(), OrderedError> {
    if n > MAX_ITEMS {
        Err(invalid(
            field,
            format!("{n} items, more than the {MAX_ITEMS} allowed"),
        ))
    } else {
        Ok(())
    }
}

/// No rules (or none given) leave the direction alone: `None`.
fn rules(
    field: &str,
    rules: Option<&[Rule]>,
    direction: Direction,
) -> Result<Option<Vec<OrderedRule>>, OrderedError> {
    let rules = rules.unwrap_or_default();
    too_many(field, rules.len())?;
    if rules.is_empty() {
        return Ok(None);
    }
    rules
        .iter()
        .enumerate()
        .map(|(n, r)| rule(&format!("{field}[{n}]"), r, direction))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn rule(field: &str, r: &Rule, direction: Direction) -> Result<OrderedRule, OrderedError> {
    if let Some(name) = &r.name
        && name.chars().count() > MAX_RULE_NAME
    {
        return Err(invalid(
            format!("{field}.name"),
            format!("longer than {MAX_RULE_NAME} characters"),
        ));
    }
    let action = match r.action.as_deref() {
        Some("Accept") => Action::Allow,
        Some("Deny") => Action::Deny,
        Some("Pass") => Action::Pass,
        Some(other) => {
            return Err(invalid(
                format!("{field}.action"),
                format!("unknown action {other:?} (want Accept, Deny or Pass)"),
            ));
        }
        None => {
            return Err(invalid(
                format!("{field}.action"),
                "required (Accept, Deny or Pass)",
            ));
        }
    };
    let (peers_name, peers, wrong_name, wrong) = match direction {
        Direction::Ingress => ("from", &r.from, "to", &r.to),
        Direction::Egress => ("to", &r.to, "from", &r.from),
    };
    if wrong.is_some() {
        return Err(invalid(
            format!("{field}.{wrong_name}"),
            format!("this rule's peers are in {peers_name}"),
        ));
    }
    let peers_field = format!("{field}.{peers_name}");
    let peers = match peers.as_deref() {
        None | Some([]) => return Err(invalid(peers_field, "at least one peer is required")),
        Some(p) => p,
    };
    too_many(&peers_field, peers.len())?;
    let peers = peers
        .iter()
        .enumerate()
        .map(|(i, p)| peer(&format!("{peers_field}[{i}]"), p, direction))
        .collect::<Result<Vec<_>, _>>()?;

    let ports = rule_ports(field, r)?;
    // Upstream validation: networks have no named ports.
    let named = ports
        .iter()
        .flatten()
        .any(|p| matches!(p.port, Some(PortRef::Named(_))));
    if named && peers.iter().any(|p| p.nets.is_some()) {
        return Err(invalid(
            format!("{field}.protocols"),
            "destinationNamedPort cannot be used with a networks peer (networks have no named ports)",
        ));
    }
    Ok(OrderedRule {
        action,
        peers: Some(peers),
        protocol: None,
        not_protocol: None,
        ports,
        not_ports: Vec::new(),
        local: None,
    })
}

/// `protocols`: absent is every port; given, it needs one entry at least.
fn rule_ports(field: &str, r: &Rule) -> Result<Option<Vec<PortSpec>>, OrderedError> {
    match r.protocols.as_deref() {
        None => Ok(None),
        Some([]) => Err(invalid(
            format!("{field}.protocols"),
            "at least one protocol is required when the field is given",
        )),
        Some(list) => {
            too_many(&format!("{field}.protocols"), list.len())?;
            let mut specs = Vec::new();
            for (i, p) in list.iter().enumerate() {
                specs.extend(protocol(&format!("{field}.protocols[{i}]"), p)?);
            }
            Ok(Some(specs))
        }
    }
}

fn peer(field: &str, p: &Peer, direction: Direction) -> Result<PeerMatch, OrderedError> {
    if direction == Direction::Ingress {
        for (name, set) in [
            ("networks", p.networks.is_some()),
            ("nodes", p.nodes.is_some()),
            ("domainNames", p.domain_names.is_some()),
        ] {
            if set {
                return Err(invalid(
                    format!("{field}.{name}"),
                    "only egress peers have this field",
                ));
            }
        }
    }
    if p.nodes.is_some() {
        return Err(unsupported(format!("{field}.nodes"), "node peers"));
    }
    if p.domain_names.is_some() {
        return Err(unsupported(
            format!("{field}.domainNames"),
            "domain name peers",
        ));
    }
    one_field(field, p)?;
    if let Some(ns) = &p.namespaces {
        return Ok(PeerMatch {
            namespaces: Some(Namespaces::Matching(kube_selector(
                &format!("{field}.namespaces"),
                ns,
            )?)),
            ..PeerMatch::default()
        });
    }
    if let Some(pods) = &p.pods {
        let (namespaces, pods) = namespaced_pod(&format!("{field}.pods"), pods)?;
        return Ok(PeerMatch {
            namespaces: Some(Namespaces::Matching(namespaces)),
            pods: Some(pods),
            ..PeerMatch::default()
        });
    }
    let networks = p.networks.as_deref().unwrap_or_default();
    let nf = format!("{field}.networks");
    if networks.is_empty() {
        return Err(invalid(nf, "at least one CIDR is required"));
    }
    too_many(&nf, networks.len())?;
    let nets = networks
        .iter()
        .enumerate()
        .map(|(i, n)| cidr(&format!("{nf}[{i}]"), n, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PeerMatch {
        nets: Some(nets),
        ..PeerMatch::default()
    })
}

/// One entry of `protocols`, as port specs: a named port stands for that
/// name under each of the three protocols (the container port says which).
fn protocol(field: &str, p: &ProtocolMatch) -> Result<Vec<PortSpec>, OrderedError> {
    let set = [
        p.tcp.is_some(),
        p.udp.is_some(),
        p.sctp.is_some(),
        p.destination_named_port.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err(invalid(
            field,
            "exactly one of tcp, udp, sctp and destinationNamedPort must be set",
        ));
    }
    if let Some(name) = &p.destination_named_port {
        if !valid_port_name(name) {
            return Err(invalid(
                format!("{field}.destinationNamedPort"),
                format!("invalid port name {name:?}"),
            ));
        }
        return Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .map(|protocol| PortSpec {
                protocol,
                port: Some(PortRef::Named(name.clone())),
            })
            .collect());
    }
    let (name, protocol, ports) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(t), _, _) => ("tcp", Protocol::Tcp, t),
        (_, Some(u), _) => ("udp", Protocol::Udp, u),
        (_, _, Some(s)) => ("sctp", Protocol::Sctp, s),
        (None, None, None) => return Err(invalid(field, "no protocol set")),
    };
    let field = format!("{field}.{name}.destinationPort");
    let port = ports
        .destination_port
        .as_ref()
        .ok_or_else(|| invalid(&field, "required"))?;
    let number = |f: &str, n: Option<i64>| -> Result<u16, OrderedError> {
        let n = n.ok_or_else(|| invalid(f, "required"))?;
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| invalid(f, format!("port {n} out of range 1-65535")))
    };
    let port = match (port.number, &port.range) {
        (Some(n), None) => {
            let n = number(&format!("{field}.number"), Some(n))?;
            PortRef::Range { start: n, end: n }
        }
        (None, Some(r)) => {
            let start = number(&format!("{field}.range.start"), r.start)?;
            let end = number(&format!("{field}.range.end"), r.end)?;
            if start >= end {
                return Err(invalid(
                    format!("{field}.range"),
                    format!("start {start} must be less than end {end}"),
                ));
            }
            PortRef::Range { start, end }
        }
        _ => {
            return Err(invalid(
                field,
                "exactly one of number and range must be set",
            ));
        }
    };
    Ok(vec![PortSpec {
        protocol,
        port: Some(port),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        index::ordered::test_support::{error, index, policy},
        model::{Labels, ordered::Namespaces},
    };

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cnp(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"
        )
    }

    const ADMIN: &str = r#"
  tier: Admin
  priority: 10
  subject:
    namespaces: {matchLabels: {env: prod}}
  ingress:
    - name: pass-monitoring
      action: Pass
      from:
        - namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
    - name: deny-the-rest
      action: Deny
      from:
        - pods:
            namespaceSelector: {}
            podSelector: {matchLabels: {app: scanner}}
      protocols:
        - tcp: {destinationPort: {number: 80}}
        - udp: {destinationPort: {range: {start: 5000, end: 5010}}}
        - destinationNamedPort: metrics
  egress:
    - action: Accept
      to:
        - networks: [10.0.0.0/8, "fd00::/8"]
      protocols:
        - sctp: {destinationPort: {number: 9}}
"#;

    const BASELINE: &str = r#"
  tier: Baseline
  priority: 0
  subject:
    pods:
      namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}
      podSelector: {matchLabels: {app: web}}
  ingress:
    - action: Deny
      from:
        - namespaces: {}
"#;

    #[test]
    fn an_admin_policy_with_deny_and_pass_converts() {
        let p = policy(&cnp("admin-guard", ADMIN));
        assert_eq!(p.origin, OrderedOrigin::Admin("admin-guard".into()));
        assert_eq!(p.origin.to_string(), "admin/admin-guard");
        assert_eq!(p.tier.key.stage, Stage::Admin);
        assert_eq!(p.tier.key.order, None);
        assert!(!p.tier.end_of_tier_deny);
        assert_eq!(
            p.order,
            PolicyOrder {
                order: Some(Order(10.0)),
                name: "admin-guard".into()
            }
        );
        let prod = labels(&[("env", "prod")]);
        assert!(p.subject.namespaces.matches("shop", &prod));
        assert!(!p.subject.namespaces.matches("dev", &labels(&[])));
        assert!(p.subject.pods.matches(&labels(&[("any", "pod")])));

        let ingress = p.ingress.expect("ingress");
        assert_eq!(ingress[0].action, Action::Pass);
        let peer = &ingress[0].peers.as_ref().expect("peers")[0];
        assert!(matches!(peer.namespaces, Some(Namespaces::Matching(_))));
        assert_eq!(peer.pods, None, "namespaces: every pod in them");
        assert_eq!(ingress[0].ports, None);

        assert_eq!(ingress[1].action, Action::Deny);
        let peer = &ingress[1].peers.as_ref().expect("peers")[0];
        assert!(
            peer.pods
                .as_ref()
                .expect("pods")
                .matches(&labels(&[("app", "scanner")]))
        );
        let named = |protocol| PortSpec {
            protocol,
            port: Some(PortRef::Named("metrics".into())),
        };
        assert_eq!(
            ingress[1].ports,
            Some(vec![
                PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Range { start: 80, end: 80 })
                },
                PortSpec {
                    protocol: Protocol::Udp,
                    port: Some(PortRef::Range {
                        start: 5000,
                        end: 5010
                    })
                },
                named(Protocol::Tcp),
                named(Protocol::Udp),
                named(Protocol::Sctp),
            ])
        );

        let egress = p.egress.expect("egress");
        assert_eq!(egress[0].action, Action::Allow, "Accept is Allow");
        assert_eq!(
            egress[0].peers,
            Some(vec![PeerMatch {
                nets: Some(vec![
                    "10.0.0.0/8".parse().expect("net"),
                    "fd00::/8".parse().expect("net")
                ]),
                ..PeerMatch::default()
            }])
        );
        assert_eq!(
            egress[0].ports,
            Some(vec![PortSpec {
                protocol: Protocol::Sctp,
                port: Some(PortRef::Range { start: 9, end: 9 })
            }])
        );
    }

    #[test]
    fn a_baseline_policy_converts_and_no_rules_leave_a_direction_alone() {
        let p = policy(&cnp("baseline-web", BASELINE));
        assert_eq!(p.origin.to_string(), "baseline/baseline-web");
        assert_eq!(p.tier.key.stage, Stage::Baseline);
        assert_eq!(p.order.order, Some(Order(0.0)));
        assert!(
            p.subject
                .namespaces
                .matches("shop", &labels(&[("env", "prod")]))
        );
        assert!(p.subject.pods.matches(&labels(&[("app", "web")])));
        assert!(!p.subject.pods.matches(&labels(&[("app", "db")])));
        assert_eq!(p.ingress.as_ref().map(Vec::len), Some(1));
        assert_eq!(p.egress, None);
        // Both, with a status, in one index.
        let both = index(&format!(
            "{}status: {{conditions: []}}\n{}",
            cnp("a", ADMIN),
            cnp("b", BASELINE).replace("spec:\n", "status: {conditions: []}\nspec:\n")
        ));
        let both = match both {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(both.model().ordered.len(), 2);
    }

    // Over 80 lines: a table of rejections, one case per refused field.
    #[test]
    fn every_rejection_names_its_field() {
        let admin = |rules: &str| {
            cnp(
                "x",
                &format!("  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{}}}}\n{rules}"),
            )
        };
        let many = |n: usize, rule: &str| {
            let rules: Vec<&str> = std::iter::repeat_n(rule, n).collect();
            format!("[{}]", rules.join(", "))
        };
        let from_all = "{action: Deny, from: [{namespaces: {}}]}";
        let cases: Vec<(String, &str)> = vec![
            (
                cnp("x", "  priority: 1\n  subject: {namespaces: {}}\n"),
                "spec.tier",
            ),
            (
                cnp(
                    "x",
                    "  tier: Developer\n  priority: 1\n  subject: {namespaces: {}}\n",
                ),
                "spec.tier",
            ),
            (
                cnp("x", "  tier: Admin\n  subject: {namespaces: {}}\n"),
                "spec.priority",
            ),
            (
                cnp(
                    "x",
                    "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n",
                ),
                "spec.priority",
            ),
            (
                cnp(
                    "x",
                    "  tier: Admin\n  priority: -1\n  subject: {namespaces: {}}\n",
                ),
                "spec.priority",
            ),
            (cnp("x", "  tier: Admin\n  priority: 1\n"), "spec.subject"),
            (
                cnp("x", "  tier: Admin\n  priority: 1\n  subject: {}\n"),
                "spec.subject",
            ),
            (
                cnp(
                    "x",
                    "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n",
                ),
                "spec.subject",
            ),
            (
                cnp(
                    "x",
                    "  tier: Admin\n  priority: 1\n  subject: {networks: [10.0.0.0/8]}\n",
                ),
                "spec.subject.networks",
            ),
            (
                cnp(
                    "x",
                    "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n",
                ),
                "spec.subject.pods.podSelector",
            ),
            (
                cnp(
                    "x",
                    "  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchExpressions: [{key: a, operator: Like}]}}\n",
                ),
                "spec.subject.namespaces",
            ),
            (
                admin("  ingress: [{from: [{namespaces: {}}]}]\n"),
                "spec.ingress[0].action",
            ),
            (
                admin("  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n"),
                "spec.ingress[0].action",
            ),
            (
                admin("  ingress: [{action: Deny}]\n"),
                "spec.ingress[0].from",
            ),
            (
                admin("  ingress: [{action: Deny, from: []}]\n"),
                "spec.ingress[0].from",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, to: [{namespaces: {}}], from: [{namespaces: {}}]}]\n",
                ),
                "spec.ingress[0].to",
            ),
            (
                admin("  egress: [{action: Deny, from: [{namespaces: {}}]}]\n"),
                "spec.egress[0].from",
            ),
            (
                admin(&format!(
                    "  ingress: [{{name: {}, action: Deny, from: [{{namespaces: {{}}}}]}}]\n",
                    "n".repeat(101)
                )),
                "spec.ingress[0].name",
            ),
            (
                admin("  ingress: [{action: Deny, from: [{}]}]\n"),
                "spec.ingress[0].from[0]",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}, pods: {podSelector: {}}}]}]\n",
                ),
                "spec.ingress[0].from[0]",
            ),
            (
                admin("  ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]\n"),
                "spec.ingress[0].from[0].networks",
            ),
            (
                admin("  egress: [{action: Deny, to: [{nodes: {}}]}]\n"),
                "spec.egress[0].to[0].nodes",
            ),
            (
                admin("  egress: [{action: Accept, to: [{domainNames: [example.com]}]}]\n"),
                "spec.egress[0].to[0].domainNames",
            ),
            (
                admin("  egress: [{action: Deny, to: [{networks: []}]}]\n"),
                "spec.egress[0].to[0].networks",
            ),
            (
                admin("  egress: [{action: Deny, to: [{networks: [10.0.0.0/40]}]}]\n"),
                "spec.egress[0].to[0].networks[0]",
            ),
            (
                admin("  egress: [{action: Deny, to: [{networks: [10.0.0.1]}]}]\n"),
                "spec.egress[0].to[0].networks[0]",
            ),
            (
                admin(
                    "  egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}]\n",
                ),
                "spec.egress[0].protocols",
            ),
            (
                admin(&format!("  ingress: {}\n", many(MAX_ITEMS + 1, from_all))),
                "spec.ingress",
            ),
            (
                admin(&format!(
                    "  egress: [{{action: Deny, to: {}}}]\n",
                    many(MAX_ITEMS + 1, "{namespaces: {}}")
                )),
                "spec.egress[0].to",
            ),
            (
                admin("  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: []}]\n"),
                "spec.ingress[0].protocols",
            ),
            (
                admin("  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{}]}]\n"),
                "spec.ingress[0].protocols[0]",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}]}]\n",
                ),
                "spec.ingress[0].protocols[0]",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}]\n",
                ),
                "spec.ingress[0].protocols[0].tcp.destinationPort",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {}}}]}]\n",
                ),
                "spec.ingress[0].protocols[0].tcp.destinationPort",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 0}}}]}]\n",
                ),
                "spec.ingress[0].protocols[0].udp.destinationPort.number",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {range: {start: 9, end: 9}}}}]}]\n",
                ),
                "spec.ingress[0].protocols[0].udp.destinationPort.range",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {range: {start: 1, end: 70000}}}}]}]\n",
                ),
                "spec.ingress[0].protocols[0].sctp.destinationPort.range.end",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: Not_A_Name}]}]\n",
                ),
                "spec.ingress[0].protocols[0].destinationNamedPort",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 80}}]}]\n",
                ),
                "spec.ingress[0]",
            ),
            (
                admin(
                    "  ingress: [{action: Deny, from: [{pods: {podSelector: {matchLabel: {a: b}}}}]}]\n",
                ),
                "spec.ingress[0].from[0].pods.podSelector.matchLabel",
            ),
        ];
        for (text, field) in &cases {
            let e = error(text);
            assert!(e.contains(field), "{field} not named in: {e}");
        }
        let e = error(&admin("  egress: [{action: Deny, to: [{nodes: {}}]}]\n"));
        assert!(e.contains("not supported"), "{e}");
        // At the limit is fine.
        policy(&admin(&format!(
            "  ingress: {}\n",
            many(MAX_ITEMS, from_all)
        )));
        let e = error(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {}\nspec: {}\n",
        );
        assert!(e.contains("metadata.name"), "{e}");
    }
}
