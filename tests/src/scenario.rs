//! The scenario file format (shared/scenarios/FORMAT.md).

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::Deserialize;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
    Dual,
}

impl Family {
    pub fn v4(self) -> bool {
        matches!(self, Family::Ipv4 | Family::Dual)
    }
    pub fn v6(self) -> bool {
        matches!(self, Family::Ipv6 | Family::Dual)
    }
    /// The families probed, as `is IPv6` flags: IPv4 first.
    pub fn probed(self) -> Vec<bool> {
        [(self.v4(), false), (self.v6(), true)]
            .into_iter()
            .filter_map(|(on, v6)| on.then_some(v6))
            .collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub family: Family,
    /// Agent settings, passed to the agent as its config file.
    #[serde(default)]
    pub agent: Option<serde_yaml::Mapping>,
    /// How many nodes the local cluster has (named node-0, node-1, ...).
    #[serde(default = "one")]
    pub nodes: usize,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub externals: Vec<ExternalSpec>,
    #[serde(default)]
    pub policies: Vec<serde_yaml::Value>,
    pub expect: Vec<Expect>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default)]
    pub name: Option<String>,
}

fn tcp() -> String {
    "TCP".into()
}

fn one() -> usize {
    1
}

/// Ports a pod or external listens on when the scenario does not say.
pub fn default_ports() -> Vec<PortSpec> {
    let mut v = Vec::new();
    for port in [80, 81] {
        for protocol in ["TCP", "UDP"] {
            v.push(PortSpec {
                port,
                protocol: protocol.into(),
                name: None,
            });
        }
    }
    v
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    #[serde(default)]
    pub host_network: bool,
    /// `node-K`: where it runs; `None`: placed by the harness.
    #[serde(default)]
    pub node: Option<String>,
}

/// A ClusterIP Service; the harness picks its addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    /// `None`: a Service without selector (no endpoints from pods).
    #[serde(default)]
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    /// As in a Service; required by the API when there are several ports,
    /// so the harness makes one up when it is missing.
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// Defaults to `port`, as in the API.
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    #[serde(default = "tcp")]
    pub protocol: String,
}

/// A Service's targetPort: a number or a container port name.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    pub name: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub port: u16,
    pub protocol: String,
    pub default: Verdict,
    #[serde(default)]
    pub rules: Vec<ExpectRule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRule {
    pub from: String,
    pub to: String,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relabel {
    pub pod: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelNamespace {
    pub namespace: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub relabel: Vec<Relabel>,
    #[serde(default)]
    pub relabel_namespace: Vec<RelabelNamespace>,
    #[serde(default)]
    pub apply: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub delete: Vec<DeleteRef>,
    #[serde(default)]
    pub add_pods: Vec<PodSpec>,
    #[serde(default)]
    pub delete_pods: Vec<String>,
    pub expect: Vec<Expect>,
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Kinds this agent cannot enforce, as `apiVersion/kind`.
    pub fn unsupported_kinds(&self) -> Vec<String> {
        let all = self
            .policies
            .iter()
            .chain(self.steps.iter().flat_map(|s| s.apply.iter()));
        let mut out: Vec<String> = all
            .filter_map(|v| {
                let api = v
                    .get("apiVersion")
                    .and_then(|a| a.as_str())
                    .unwrap_or_default();
                let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
                let supported = matches!(
                    (api, kind),
                    ("networking.k8s.io/v1", "NetworkPolicy")
                        | ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy")
                        | (
                            "projectcalico.org/v3",
                            "NetworkPolicy" | "GlobalNetworkPolicy" | "Tier"
                        )
                );
                (!supported).then(|| format!("{api}/{kind}"))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A scenario policy as the objects to create: its placeholders filled in
/// with `ip(pod, is_ipv6)`, once per probed family when it has any (under
/// dual stack the IPv6 copy is named `NAME-v6`), else as it is.
pub fn expand_policy(
    policy: &serde_yaml::Value,
    family: Family,
    ip: &dyn Fn(&str, bool) -> Option<IpAddr>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let raw = serde_yaml::to_string(policy)?;
    let families = if raw.contains("{{") {
        family.probed()
    } else {
        vec![false]
    };
    let dual = families.len() > 1;
    let mut out = Vec::new();
    for v6 in families {
        let expanded = expand_placeholders(&raw, &|pod| ip(pod, v6))?;
        let mut obj: serde_json::Value = serde_yaml::from_str(&expanded)?;
        if dual && v6 {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            obj["metadata"]["name"] = serde_json::Value::String(format!("{name}-v6"));
        }
        out.push(obj);
    }
    Ok(out)
}

/// `{{ip NS/POD}}` and `{{net NS/POD LEN}}` in policy text.
pub fn expand_placeholders(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<IpAddr>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").context("unclosed {{ in policy")? + start;
        let inner = rest[start + 2..end].trim();
        let parts: Vec<&str> = inner.split_whitespace().collect();
        let ip = |pod: &str| {
            lookup(pod).with_context(|| format!("placeholder {{{{{inner}}}}}: no pod {pod}"))
        };
        match parts.as_slice() {
            ["ip", pod] => out.push_str(&ip(pod)?.to_string()),
            ["net", pod, len] => {
                let len: u8 = len
                    .parse()
                    .with_context(|| format!("placeholder {{{{{inner}}}}}: bad length"))?;
                // Clamped to the family's width, so `{{net P 128}}` is the host
                // prefix under both families of a dual-stack scenario.
                let addr = ip(pod)?;
                let len = len.min(if addr.is_ipv4() { 32 } else { 128 });
                let net = ipnet::IpNet::new(addr, len)
                    .context("prefix length")?
                    .trunc();
                out.push_str(&net.to_string());
            }
            _ => anyhow::bail!("unknown placeholder {{{{{inner}}}}}"),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
