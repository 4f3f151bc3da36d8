//! Services and EndpointSlices to model types: the addresses kube-proxy
//! translates and the backends it translates them to.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service as ApiService, discovery::v1::EndpointSlice as ApiSlice};

use super::convert::ConvertError;
use crate::model::{EndpointSlice, Protocol, SERVICE_NAME_LABEL, Service, ServicePort, SlicePort};

fn name_and_namespace(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(String, String), ConvertError> {
    let name = meta.name.clone().ok_or(ConvertError::MissingName)?;
    let namespace = meta
        .namespace
        .clone()
        .ok_or(ConvertError::MissingNamespace)?;
    Ok((name, namespace))
}

fn protocol(field: String, value: Option<&str>) -> Result<Protocol, ConvertError> {
    match value {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| ConvertError::BadProtocol {
            field,
            value: s.to_string(),
        }),
    }
}

fn port(field: String, value: i32) -> Result<u16, ConvertError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ConvertError::PortOutOfRange { field, value })
}

fn ip(field: String, value: &str) -> Result<IpAddr, ConvertError> {
    value.parse().map_err(|_| ConvertError::BadIp {
        field,
        value: value.to_string(),
    })
}

pub fn service_from_api(svc: &ApiService) -> Result<Service, ConvertError> {
    let (name, namespace) = name_and_namespace(&svc.metadata)?;
    let spec = svc.spec.as_ref();
    let mut frontends: Vec<IpAddr> = Vec::new();
    let mut push = |field: String, value: &str| -> Result<(), ConvertError> {
        let addr = ip(field, value)?;
        if !frontends.contains(&addr) {
            frontends.push(addr);
        }
        Ok(())
    };
    // ExternalName Services are DNS aliases: kube-proxy translates nothing.
    if let Some(spec) = spec.filter(|s| s.type_.as_deref() != Some("ExternalName")) {
        // "None" is a headless Service: no virtual address.
        let real = |s: &&String| !s.is_empty() && s.as_str() != "None";
        for (i, a) in spec.cluster_ips.iter().flatten().enumerate() {
            if real(&a) {
                push(format!("spec.clusterIPs[{i}]"), a)?;
            }
        }
        if let Some(a) = spec.cluster_ip.as_ref().filter(real) {
            push("spec.clusterIP".into(), a)?;
        }
        for (i, a) in spec.external_ips.iter().flatten().enumerate() {
            push(format!("spec.externalIPs[{i}]"), a)?;
        }
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, lb) in ingress.into_iter().flatten().enumerate() {
            // A hostname-only ingress has no address to translate here.
            if let Some(a) = &lb.ip {
                push(format!("status.loadBalancer.ingress[{i}].ip"), a)?;
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.ports[{i}]");
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: port(format!("{field}.port"), p.port)?,
            protocol: protocol(format!("{field}.protocol"), p.protocol.as_deref())?,
            node_port: p
                .node_port
                .map(|n| port(format!("{field}.nodePort"), n))
                .transpose()?,
        });
    }
    Ok(Service {
        namespace,
        name,
        frontends,
        ports,
    })
}

pub fn endpoint_slice_from_api(slice: &ApiSlice) -> Result<EndpointSlice, ConvertError> {
    let (name, namespace) = name_and_namespace(&slice.metadata)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned();
    let family = match slice.address_type.as_str() {
        "IPv4" => Some("IPv4"),
        "IPv6" => Some("IPv6"),
        // FQDN slices are not translated by kube-proxy.
        _ => None,
    };
    let mut addresses = Vec::new();
    if let Some(address_type) = family {
        let want_v6 = address_type == "IPv6";
        for (ei, e) in slice.endpoints.iter().flatten().enumerate() {
            for (ai, a) in e.addresses.iter().enumerate() {
                let field = format!("endpoints[{ei}].addresses[{ai}]");
                let addr = ip(field.clone(), a)?;
                if addr.is_ipv6() != want_v6 {
                    return Err(ConvertError::WrongFamily {
                        field,
                        value: a.clone(),
                        address_type,
                    });
                }
                if !addresses.contains(&addr) {
                    addresses.push(addr);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        // A port without a number means "all ports": kube-proxy skips it.
        let Some(number) = p.port else {
            continue;
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            port: port(format!("{field}.port"), number)?,
            protocol: protocol(format!("{field}.protocol"), p.protocol.as_deref())?,
        });
    }
    Ok(EndpointSlice {
        namespace,
        name,
        service,
        addresses,
        ports,
    })
}
