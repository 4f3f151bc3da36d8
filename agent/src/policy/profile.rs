//! The agent's built-in protections (default deny, DNS, metadata block),
//! expressed as synthetic policies so they share the NetworkPolicy semantics.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    addr::canonical_ip,
    selector::Selector,
    types::{NamespaceScope, Peer, Policy, PolicyOrigin, PortRef, PortSpec, Rule},
};
use crate::model::{Labels, Protocol};

pub const DEFAULT_DENY: &str = "default-deny";
pub const ALLOW_DNS: &str = "allow-dns";
pub const METADATA_BLOCK: &str = "metadata-block";

/// The cloud metadata addresses (AWS, GCP, Azure, OpenStack use the IPv4 one;
/// AWS's IPv6 one is fd00:ec2::254).
pub fn metadata_prefixes() -> [IpNet; 2] {
    [
        IpNet::new(IpAddr::from([169, 254, 169, 254]), 32).expect("valid prefix"),
        IpNet::new(IpAddr::from([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]), 128).expect("valid prefix"),
    ]
}

/// Agent settings that shape enforcement. Field names are the config file's
/// (camelCase, as in the scenario format's `agent:` block).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Profile {
    /// Isolate every pod outside the exempt namespaces in both directions,
    /// as if a deny-all policy selected it.
    pub default_deny: bool,
    pub default_deny_exempt: BTreeSet<String>,
    /// Under default deny, keep DNS to the cluster resolver open.
    #[serde(rename = "allowDNS")]
    pub allow_dns: bool,
    pub dns: DnsSettings,
    /// Pods may not reach the cloud metadata address unless a policy ipBlock
    /// names it exactly or the pod/namespace carries the opt-out label.
    pub block_metadata: bool,
    /// Label (on the pod or its namespace) that exempts it from the metadata
    /// block, with the value "true".
    pub metadata_opt_out_label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DnsSettings {
    pub namespace: String,
    pub selector: Labels,
    pub ports: Vec<DnsPort>,
    /// Node-local DNS cache addresses (e.g. 169.254.20.10), opened too.
    pub node_local: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPort {
    pub protocol: String,
    pub port: u16,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            namespace: "kube-system".into(),
            selector: Labels::from([("k8s-app".into(), "kube-dns".into())]),
            ports: vec![
                DnsPort {
                    protocol: "UDP".into(),
                    port: 53,
                },
                DnsPort {
                    protocol: "TCP".into(),
                    port: 53,
                },
            ],
            node_local: Vec::new(),
        }
    }
}

pub const DEFAULT_EXEMPT: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "palisade-system",
];

impl Default for Profile {
    fn default() -> Self {
        Self {
            default_deny: false,
            default_deny_exempt: DEFAULT_EXEMPT.iter().map(|s| s.to_string()).collect(),
            allow_dns: true,
            dns: DnsSettings::default(),
            block_metadata: true,
            metadata_opt_out_label: "palisade.dev/allow-metadata".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("dns.ports[{index}]: unknown protocol {value:?}")]
    DnsProtocol { index: usize, value: String },
}

impl Profile {
    pub fn validate(&self) -> Result<(), ProfileError> {
        self.dns_ports().map(|_| ())
    }

    fn dns_ports(&self) -> Result<Vec<PortSpec>, ProfileError> {
        self.dns
            .ports
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let protocol =
                    Protocol::parse(&p.protocol).ok_or_else(|| ProfileError::DnsProtocol {
                        index,
                        value: p.protocol.clone(),
                    })?;
                Ok(PortSpec {
                    protocol,
                    port: Some(PortRef::Range {
                        start: p.port,
                        end: p.port,
                    }),
                })
            })
            .collect()
    }

    /// Whether a pod (by its labels and its namespace's) is exempt from the metadata block.
    pub fn metadata_opted_out(&self, pod: &Labels, namespace: &Labels) -> bool {
        let key = &self.metadata_opt_out_label;
        pod.get(key).is_some_and(|v| v == "true") || namespace.get(key).is_some_and(|v| v == "true")
    }

    /// The synthetic policies this profile adds for namespace `ns`.
    pub fn policies_for(&self, ns: &str) -> Vec<Policy> {
        let mut out = Vec::new();
        if !self.default_deny || self.default_deny_exempt.contains(ns) {
            return out;
        }
        out.push(Policy {
            origin: PolicyOrigin::Profile(DEFAULT_DENY),
            namespace: ns.to_string(),
            pod_selector: Selector::everything(),
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
        });
        if self.allow_dns {
            // validate() ran when the profile was loaded.
            let ports = self.dns_ports().unwrap_or_default();
            let resolver = Selector::from_labels(&self.dns.selector);
            let mut peers = vec![Peer::Pods {
                namespaces: NamespaceScope::Selected(Selector::from_labels(&Labels::from([(
                    crate::model::NAMESPACE_NAME_LABEL.to_string(),
                    self.dns.namespace.clone(),
                )]))),
                pods: resolver.clone(),
            }];
            peers.extend(self.dns.node_local.iter().map(|ip| Peer::IpBlock {
                cidr: IpNet::from(canonical_ip(*ip)),
                except: Vec::new(),
            }));
            out.push(Policy {
                origin: PolicyOrigin::Profile(ALLOW_DNS),
                namespace: ns.to_string(),
                pod_selector: Selector::everything(),
                ingress: None,
                egress: Some(vec![Rule {
                    peers,
                    ports: ports.clone(),
                }]),
            });
            // The resolver itself, when its namespace is under default deny too.
            if ns == self.dns.namespace {
                out.push(Policy {
                    origin: PolicyOrigin::Profile(ALLOW_DNS),
                    namespace: ns.to_string(),
                    pod_selector: resolver,
                    ingress: Some(vec![Rule {
                        peers: Vec::new(),
                        ports,
                    }]),
                    egress: None,
                });
            }
        }
        out
    }
}
