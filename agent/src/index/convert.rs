//! API objects to model types, keeping only what enforcement needs.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as ApiNamespace, Pod as ApiPod};

use crate::model::{
    ContainerPort, Labels, NAMESPACE_NAME_LABEL, Namespace, Pod, Protocol, Workload,
};
use crate::policy::addr::canonical_ip;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("metadata.name is required")]
    MissingName,
    #[error("metadata.namespace is required")]
    MissingNamespace,
    #[error("{field}: invalid IP address {value:?}")]
    BadIp { field: String, value: String },
    #[error("{field}: {value} is IPv4-mapped IPv6; write it as IPv4: {ipv4}")]
    V4MappedIp {
        field: String,
        value: IpAddr,
        ipv4: IpAddr,
    },
    #[error("{field}: container port {value} out of range 1-65535")]
    BadPort { field: String, value: i32 },
    #[error("{field}: unknown protocol {value:?}")]
    BadProtocol { field: String, value: String },
    #[error("{field}: port {value} out of range 1-65535")]
    PortOutOfRange { field: String, value: i32 },
    #[error("{field}: address {value:?} is not of addressType {address_type}")]
    WrongFamily {
        field: String,
        value: String,
        address_type: &'static str,
    },
}

pub fn namespace_from_api(ns: &ApiNamespace) -> Result<Namespace, ConvertError> {
    let name = ns.metadata.name.clone().ok_or(ConvertError::MissingName)?;
    let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
    Ok(Namespace { name, labels })
}

/// `Ok(None)` for a pod that has finished (Succeeded/Failed): it holds no address.
pub fn pod_from_api(pod: &ApiPod) -> Result<Option<Pod>, ConvertError> {
    let name = pod.metadata.name.clone().ok_or(ConvertError::MissingName)?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .ok_or(ConvertError::MissingNamespace)?;
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let spec = pod.spec.as_ref();

    let mut ips: Vec<IpAddr> = Vec::new();
    let mut push_ip = |field: String, value: &str| -> Result<(), ConvertError> {
        let ip = pod_ip(field, value)?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        Ok(())
    };
    if let Some(s) = status {
        for (i, p) in s.pod_ips.iter().flatten().enumerate() {
            push_ip(format!("status.podIPs[{i}]"), &p.ip)?;
        }
        if let Some(ip) = &s.pod_ip {
            push_ip("status.podIP".into(), ip)?;
        }
    }

    let mut ports = Vec::new();
    for (ci, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(ConvertError::BadPort {
                    field: field.clone(),
                    value: p.container_port,
                })?;
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => Protocol::parse(s).ok_or_else(|| ConvertError::BadProtocol {
                    field: format!("{field}.protocol"),
                    value: s.to_string(),
                })?,
            };
            ports.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
            });
        }
    }

    Ok(Some(Pod {
        namespace,
        name,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
        workload: workload_of(pod),
    }))
}

/// The pod's controller, with a Deployment's ReplicaSet seen through: a
/// ReplicaSet named `<deployment>-<pod-template-hash>` stands for the
/// Deployment, as `kubectl` shows it.
fn workload_of(pod: &ApiPod) -> Option<Workload> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    if owner.kind == "ReplicaSet"
        && let Some(deployment) = hash.and_then(|h| {
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|n| n.strip_suffix('-'))
        })
    {
        return Some(Workload {
            kind: "Deployment".to_string(),
            name: deployment.to_string(),
        });
    }
    Some(Workload {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

fn pod_ip(field: String, value: &str) -> Result<IpAddr, ConvertError> {
    let Ok(ip) = value.parse::<IpAddr>() else {
        return Err(ConvertError::BadIp {
            field,
            value: value.to_string(),
        });
    };
    // The kernel keys IPv4 as ::ffff:a.b.c.d: this would be another pod's entry.
    let ipv4 = canonical_ip(ip);
    if ipv4 != ip {
        return Err(ConvertError::V4MappedIp {
            field,
            value: ip,
            ipv4,
        });
    }
    Ok(ip)
}
