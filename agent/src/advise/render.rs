//! [`Advice`] as `networking.k8s.io/v1` NetworkPolicy objects (k8s-openapi
//! types, so the output is the API's own shape) and multi-document YAML
//! with comments saying where it came from.

use std::fmt::Write as _;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{Advice, AdvisedPolicy, Port, PortRef, Rule, Selection, Target, labels::show};
use crate::model::{MODE_ANNOTATION as AUDIT_ANNOTATION, NAMESPACE_NAME_LABEL, Protocol};

fn selector(s: &Selection) -> LabelSelector {
    LabelSelector {
        match_labels: (!s.match_labels.is_empty()).then(|| s.match_labels.clone()),
        match_expressions: (!s.absent.is_empty()).then(|| {
            s.absent
                .iter()
                .map(|k| LabelSelectorRequirement {
                    key: k.clone(),
                    operator: "DoesNotExist".into(),
                    values: None,
                })
                .collect()
        }),
    }
}

fn peer(t: &Target, own_namespace: &str) -> NetworkPolicyPeer {
    match t {
        Target::Pods {
            namespace,
            selection,
        } => NetworkPolicyPeer {
            pod_selector: Some(selector(selection)),
            // The policy's own namespace is what a peer without one means.
            namespace_selector: (namespace != own_namespace).then(|| LabelSelector {
                match_labels: Some([(NAMESPACE_NAME_LABEL.to_string(), namespace.clone())].into()),
                match_expressions: None,
            }),
            ip_block: None,
        },
        Target::Block(net) => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: net.to_string(),
                except: None,
            }),
            ..Default::default()
        },
    }
}

fn port(p: &Port) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(p.protocol.to_string()),
        port: Some(match &p.port {
            PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
            PortRef::Named(s) => IntOrString::String(s.clone()),
        }),
        end_port: None,
    }
}

fn parts(r: &Rule, ns: &str) -> (Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>) {
    (
        r.peers.iter().map(|t| peer(t, ns)).collect(),
        r.ports.iter().map(port).collect(),
    )
}

impl Advice {
    /// The DNS rule every policy ends its egress with.
    pub fn dns_rule(&self) -> Rule {
        Rule {
            peers: vec![Target::Pods {
                namespace: self.options.dns_namespace.clone(),
                selection: Selection {
                    match_labels: self.options.dns_selector.clone(),
                    absent: Default::default(),
                },
            }],
            ports: [Protocol::Udp, Protocol::Tcp]
                .into_iter()
                .map(|protocol| Port {
                    protocol,
                    port: PortRef::Number(53),
                })
                .collect(),
        }
    }

    pub fn network_policy(&self, p: &AdvisedPolicy) -> NetworkPolicy {
        let ns = &p.workload.namespace;
        let ingress = p
            .ingress
            .iter()
            .map(|r| {
                let (from, ports) = parts(r, ns);
                NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(ports),
                }
            })
            .collect();
        let egress = p
            .egress
            .iter()
            .chain([&self.dns_rule()])
            .map(|r| {
                let (to, ports) = parts(r, ns);
                NetworkPolicyEgressRule {
                    to: Some(to),
                    ports: Some(ports),
                }
            })
            .collect();
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(p.name.clone()),
                namespace: Some(ns.clone()),
                annotations: self
                    .options
                    .audit
                    .then(|| [(AUDIT_ANNOTATION.to_string(), "audit".to_string())].into()),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(&p.selection)),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(ingress),
                egress: Some(egress),
            }),
        }
    }

    /// Every policy as one YAML document, after a header comment.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# NetworkPolicies proposed by `palisade advise` from {} observed connection{} ({} record{}){}.",
            self.connections,
            plural(self.connections),
            self.records,
            plural(self.records),
            match self.span {
                Some((a, b)) => format!(
                    ", seen between {} and {}",
                    humantime::format_rfc3339_seconds(a),
                    humantime::format_rfc3339_seconds(b)
                ),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "# Each isolates one workload both ways and allows what was seen, plus DNS to\n# pods {} in namespace {} (UDP and TCP 53). Connections not seen are denied.",
            show(&self.options.dns_selector),
            self.options.dns_namespace
        );
        if self.options.audit {
            let _ = writeln!(
                out,
                "# {AUDIT_ANNOTATION}: audit: evaluated and logged, not enforced; remove it to enforce."
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "# {n}");
        }
        for p in &self.policies {
            let _ = writeln!(out, "---\n# {} ({})", p.workload, describe(&p.selection));
            for n in &p.notes {
                let _ = writeln!(out, "# {n}");
            }
            if p.ingress.is_empty() {
                let _ = writeln!(
                    out,
                    "# nothing was seen connecting to it: all ingress denied"
                );
            }
            out.push_str(&serde_yaml::to_string(&self.network_policy(p))?);
        }
        Ok(out)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn describe(s: &Selection) -> String {
    let mut d = show(&s.match_labels);
    for k in &s.absent {
        let _ = write!(d, ",!{k}");
    }
    d
}
