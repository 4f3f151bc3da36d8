//! The agent's built-in protections (default deny, DNS, metadata block),
//! expressed as synthetic policies so they share the NetworkPolicy semantics.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::addr::canonical_ip;
use crate::model::policy::{NamespaceScope, Peer, Policy, PolicyOrigin, PortRef, PortSpec, Rule};
use crate::model::selector::Selector;
use crate::model::{Labels, Protocol};

pub const DEFAULT_DENY: &str = "default-deny";
pub const ALLOW_DNS: &str = "allow-dns";
pub const METADATA_BLOCK: &str = "metadata-block";

/// The default cloud metadata addresses: AWS, GCP, Azure, OpenStack and
/// others use 169.254.169.254, AWS's IPv6 one is fd00:ec2::254, Alibaba
/// Cloud's 100.100.100.200.
pub fn default_metadata_addresses() -> Vec<IpAddr> {
    vec![
        IpAddr::from([169, 254, 169, 254]),
        IpAddr::from([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]),
        IpAddr::from([100, 100, 100, 200]),
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
    /// The addresses the metadata block covers.
    pub metadata_addresses: Vec<IpAddr>,
    /// DNS (UDP and TCP 53) to a metadata address is not blocked but judged
    /// like any destination, and under default deny with `allowDNS` it
    /// counts as cluster DNS (GKE's metadata server is the pods' resolver).
    #[serde(rename = "metadataDNS")]
    pub metadata_dns: bool,
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
            metadata_addresses: default_metadata_addresses(),
            metadata_dns: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("dns.ports[{index}]: unknown protocol {value:?}")]
    DnsProtocol { index: usize, value: String },
    #[error("metadataAddresses[{index}]: {value} is an IPv4-mapped IPv6 address; write it as IPv4")]
    MetadataAddress { index: usize, value: IpAddr },
}

impl Profile {
    pub fn validate(&self) -> Result<(), ProfileError> {
        for (index, ip) in self.metadata_addresses.iter().enumerate() {
            if canonical_ip(*ip) != *ip {
                return Err(ProfileError::MetadataAddress { index, value: *ip });
            }
        }
        self.dns_ports().map(|_| ())
    }

    /// The metadata addresses as the prefixes the ipcache holds.
    pub fn metadata_prefixes(&self) -> Vec<IpNet> {
        self.metadata_addresses
            .iter()
            .map(|ip| IpNet::from(canonical_ip(*ip)))
            .collect()
    }

    /// Whether the metadata block holds `port` of `protocol` (DNS may be open).
    pub fn metadata_blocks_port(&self, protocol: Protocol, port: u16) -> bool {
        !(self.metadata_dns
            && matches!(protocol, Protocol::Tcp | Protocol::Udp)
            && port == palisade_common::DNS_PORT)
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
            // Where the metadata server resolves (GKE), it is cluster DNS.
            if self.metadata_dns {
                peers.extend(
                    self.metadata_prefixes()
                        .into_iter()
                        .map(|cidr| Peer::IpBlock {
                            cidr,
                            except: Vec::new(),
                        }),
                );
            }
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
