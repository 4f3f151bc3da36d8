//! A Service frontend: the client's egress is judged against the frontend
//! with the verdict the compiler precomputes from the backends, and each
//! backend as a direct connection on its target port.

use std::net::IpAddr;

use super::{
    Cx, Decided, End, EndpointArg, ExplainError, Explanation, PortArg, PortName, Query, ServiceHop,
    Side,
};
use crate::{
    model::{Pod, Protocol},
    policy::{profile::DEFAULT_DENY, services, state::Direction},
};

impl<'a> Cx<'a> {
    /// Through a Service frontend: the client's egress against the
    /// frontend, then each backend as a direct connection on its target port.
    pub(super) fn through_service(
        &self,
        q: &Query,
        from: End<'a>,
        frontend: IpAddr,
        f: &services::Frontend,
        port: u16,
    ) -> Result<Explanation, ExplainError> {
        let protocol = q.port.protocol;
        let targets = f.ports.get(&(protocol, port)).cloned().unwrap_or_default();
        let mut backends = Vec::new();
        for (ip, target) in &targets {
            let sub = Query {
                from: q.from.clone(),
                to: EndpointArg::Address(*ip),
                port: PortArg {
                    port: PortName::Number(*target),
                    protocol,
                },
            };
            // The source is resolved afresh: `node` is each backend's node.
            let to = self.by_address(*ip);
            let (from, to) = match self.addresses(&sub.from, to) {
                Ok(pair) => pair,
                Err(ExplainError::NodeWithoutPod) => continue,
                Err(e) => return Err(e),
            };
            backends.push(self.direct(from, to, protocol, *target, None));
        }
        let egress = from
            .pod
            .filter(|p| !p.host_network)
            .map(|pod| self.frontend_egress(pod, from.ip, frontend, f, &backends, protocol, port));
        let all = !backends.is_empty() && backends.iter().all(|b| b.allowed);
        let mixed = backends.iter().any(|b| b.allowed) && !all;
        let allowed = all && egress.as_ref().is_none_or(|s| s.allowed);
        let checks = egress
            .iter()
            .filter_map(|s| s.maps.as_ref())
            .map(|c| c.agrees)
            .chain(backends.iter().filter_map(|b| b.maps_agree));
        let maps_agree = checks.fold(None, |acc: Option<bool>, a| Some(acc.unwrap_or(true) && a));
        Ok(Explanation {
            from: self.party(&from),
            to: self.party(&End {
                ip: Some(frontend),
                pod: None,
                node: None,
            }),
            protocol,
            port,
            named_port: None,
            allowed,
            egress: None,
            ingress: None,
            service: Some(ServiceHop {
                service: f.service.clone(),
                frontend,
                port,
                egress,
                backends,
                mixed,
            }),
            maps_agree,
        })
    }

    /// The client's egress to a frontend, as the compiler precomputes it:
    /// allowed when a direct connection to every backend would pass the
    /// client's egress (and there is one), or when nothing restricts it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one side of one connection, spelled out"
    )]
    fn frontend_egress(
        &self,
        pod: &'a Pod,
        local: Option<IpAddr>,
        frontend: IpAddr,
        f: &services::Frontend,
        backends: &[Explanation],
        protocol: Protocol,
        port: u16,
    ) -> Side {
        let selected_by = self.selected(pod, Direction::Egress);
        let mut profile = self.profile_part(pod);
        profile.default_deny &= selected_by.iter().any(|s| s == DEFAULT_DENY);
        let metadata_in_play = f.metadata_backed && !profile.metadata_opted_out;
        let unrestricted = selected_by.is_empty() && !metadata_in_play;
        let allowed = unrestricted
            || (!backends.is_empty()
                && backends
                    .iter()
                    .all(|b| b.egress.as_ref().is_none_or(|s| s.allowed)));
        let decided_by = if unrestricted {
            Decided::NotIsolated
        } else {
            Decided::Frontend
        };
        let maps = self.veth_check(
            pod,
            Direction::Egress,
            local,
            Some(frontend),
            protocol,
            port,
            allowed,
        );
        Side {
            pod: pod.key(),
            node: pod.node.clone(),
            direction: Direction::Egress,
            selected_by,
            allowed,
            decided_by,
            logged: Vec::new(),
            profile,
            maps,
        }
    }
}
