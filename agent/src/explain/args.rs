//! The command line's FROM, TO and PORT/PROTO.

use std::{fmt, net::IpAddr, str::FromStr};

use super::ExplainError;
use crate::model::{ObjectRef, Protocol};

/// One side as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointArg {
    Pod(ObjectRef),
    /// The destination pod's node (kubelet probes, hostNetwork processes).
    Node,
    Address(IpAddr),
    /// `svc:NS/NAME`: the Service's frontend (of the client's family).
    Service(ObjectRef),
}

impl FromStr for EndpointArg {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "node" {
            return Ok(EndpointArg::Node);
        }
        if let Ok(ip) = s.parse() {
            return Ok(EndpointArg::Address(ip));
        }
        let (svc, key) = match s.strip_prefix("svc:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        match key.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                let r = ObjectRef::new(ns, name);
                Ok(if svc {
                    EndpointArg::Service(r)
                } else {
                    EndpointArg::Pod(r)
                })
            }
            _ => Err(ExplainError::Endpoint(s.to_string())),
        }
    }
}

impl fmt::Display for EndpointArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointArg::Pod(r) => write!(f, "{r}"),
            EndpointArg::Node => f.write_str("node"),
            EndpointArg::Address(ip) => write!(f, "{ip}"),
            EndpointArg::Service(r) => write!(f, "svc:{r}"),
        }
    }
}

/// `80`, `80/udp`, `http`, `dns/UDP`; TCP when no protocol is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortArg {
    pub port: PortName,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortName {
    Number(u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

impl Default for PortArg {
    fn default() -> Self {
        Self {
            port: PortName::Number(80),
            protocol: Protocol::Tcp,
        }
    }
}

impl FromStr for PortArg {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ExplainError::Port(s.to_string());
        let (port, protocol) = match s.split_once('/') {
            Some((p, proto)) => (
                p,
                Protocol::parse(&proto.to_ascii_uppercase()).ok_or_else(bad)?,
            ),
            None => (s, Protocol::Tcp),
        };
        let port = match port.parse::<u16>() {
            Ok(n) => PortName::Number(n),
            Err(_)
                if !port.is_empty()
                    && port.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                PortName::Named(port.to_string())
            }
            Err(_) => return Err(bad()),
        };
        Ok(Self { port, protocol })
    }
}

impl fmt::Display for PortArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortName::Number(n) => write!(f, "{n}/{}", self.protocol),
            PortName::Named(n) => write!(f, "{n}/{}", self.protocol),
        }
    }
}

/// What is asked: a connection from `from` to `to` on `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub from: EndpointArg,
    pub to: EndpointArg,
    pub port: PortArg,
}
