//! The property `palisade advise` promises, checked the way the agent
//! would enforce its output: the YAML parsed back strictly (as a
//! directory's files are), into a model with the pods the flows name, then
//! judged by the reference evaluator and by the compiled maps.

use std::net::IpAddr;

use super::{Advice, Options, advise};
use crate::{
    flows::observed::{ObservedFlow, Peer, PeerKind},
    index::Index,
    model::{ContainerPort, Model, Node, ObjectRef, Pod, Protocol},
    policy::{
        Profile, compile,
        reference::{self, Party},
        sim,
    },
    source::yaml::parse_objects,
};

pub(super) const NODE: &str = "n1";

/// A model of the pods in `flows` and `probes` (all on [`NODE`], each with
/// the named ports its workload was seen serving) and the policies in
/// `yaml`, which must parse and index without a single rejection.
pub(super) fn model_of(yaml: &str, flows: &[ObservedFlow], probes: &[Peer]) -> Model {
    let mut index = Index::default();
    for o in parse_objects("advice.yaml", yaml) {
        let o = o.unwrap_or_else(|e| panic!("advice does not parse: {e}\n{yaml}"));
        index
            .apply(&o)
            .unwrap_or_else(|e| panic!("advice rejected: {e:?}\n{yaml}"));
    }
    let mut model = index.model().clone();
    // Every pod of a workload has its template's ports.
    let mut ports: std::collections::BTreeMap<super::End, Vec<ContainerPort>> = Default::default();
    for f in flows {
        let c = &f.connection;
        if let (Some(name), Some(port), Some(protocol)) =
            (&c.named_port, c.port, Protocol::parse(&c.protocol))
        {
            let cp = ContainerPort {
                name: Some(name.clone()),
                port,
                protocol,
            };
            let v = ports.entry(super::end(&c.dst)).or_default();
            if !v.contains(&cp) {
                v.push(cp);
            }
        }
    }
    let sides = flows
        .iter()
        .flat_map(|f| [&f.connection.src, &f.connection.dst])
        .chain(probes);
    {
        for p in sides {
            let (PeerKind::Pod, Some(ns)) = (p.kind, &p.namespace) else {
                continue;
            };
            let key = pod_key(p, ns);
            model.pods.insert(
                key.clone(),
                Pod {
                    namespace: key.namespace,
                    name: key.name,
                    uid: String::new(),
                    labels: p.labels.clone(),
                    ips: vec![p.ip],
                    node: NODE.into(),
                    host_network: false,
                    ports: ports.get(&super::end(p)).cloned().unwrap_or_default(),
                    workload: None,
                },
            );
        }
    }
    model
}

fn pod_key(p: &Peer, ns: &str) -> ObjectRef {
    ObjectRef::new(ns, p.pod.clone().unwrap_or_else(|| p.ip.to_string()))
}

/// Judges connections against one model, both ways the agent can.
pub(super) struct Judge {
    pub(super) model: Model,
    profile: Profile,
    maps: crate::policy::Maps,
}

impl Judge {
    pub(super) fn new(model: Model) -> Self {
        let profile = Profile {
            block_metadata: false,
            ..Profile::default()
        };
        let node = Node {
            name: NODE.into(),
            ..Node::default()
        };
        let maps = compile(&model, &node, &profile).maps;
        Self {
            model,
            profile,
            maps,
        }
    }

    fn party(&self, p: &Peer) -> Party<'_> {
        match (p.kind, &p.namespace) {
            (PeerKind::Pod, Some(ns)) => Party::Pod(&self.model.pods[&pod_key(p, ns)], p.ip),
            // A node other than the server's: an ordinary peer (the
            // server's own node would be allowed anyway).
            _ => Party::External(p.ip),
        }
    }

    /// Whether a new connection `src` -> `dst` on (protocol, port) passes;
    /// panics where the reference and the compiled maps disagree.
    pub(super) fn allowed(&self, src: &Peer, dst: &Peer, protocol: Protocol, port: u16) -> bool {
        let by_reference = reference::allowed(
            &self.model,
            &self.profile,
            self.party(src),
            self.party(dst),
            protocol,
            port,
        );
        let by_maps = sim::connection_allowed(&self.maps, src.ip, dst.ip, protocol.number(), port);
        assert_eq!(
            by_reference, by_maps,
            "reference and maps disagree on {protocol} {} -> {}:{port}",
            src.ip, dst.ip
        );
        by_reference
    }
}

impl Judge {
    /// Whether `src` may open a connection to a Service frontend, as the
    /// client's veth judges it (every backend allowed on its target port).
    pub(super) fn service_allowed(
        &self,
        src: &Peer,
        frontend: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let by_reference = reference::service_egress_allowed(
            &self.model,
            &self.profile,
            self.party(src),
            frontend,
            protocol,
            port,
        );
        let by_maps = sim::judge(
            &self.maps,
            src.ip,
            frontend,
            crate::policy::Direction::Egress,
            protocol.number(),
            port,
        )
        .allows();
        assert_eq!(
            by_reference, by_maps,
            "reference and maps disagree on {src:?} -> {frontend}:{port}"
        );
        by_reference
    }
}

/// The advice for `flows`, its YAML, and a judge of it that knows the
/// pods of `probes` too.
pub(super) fn advise_and_judge(
    flows: &[ObservedFlow],
    options: &Options,
    probes: &[Peer],
) -> (Advice, String, Judge) {
    let advice = advise(flows, options);
    let yaml = advice.to_yaml().expect("renders");
    let judge = Judge::new(model_of(&yaml, flows, probes));
    (advice, yaml, judge)
}

/// Every observed connection is allowed.
pub(super) fn assert_observed_allowed(judge: &Judge, flows: &[ObservedFlow], yaml: &str) {
    for f in flows {
        let c = &f.connection;
        let (Some(protocol), Some(port)) = (Protocol::parse(&c.protocol), c.port) else {
            continue;
        };
        assert!(
            judge.allowed(&c.src, &c.dst, protocol, port),
            "observed {protocol} {:?} -> {:?}:{port} is denied by\n{yaml}",
            c.src
                .pod
                .as_ref()
                .map_or(c.src.ip.to_string(), Clone::clone),
            c.dst
                .pod
                .as_ref()
                .map_or(c.dst.ip.to_string(), Clone::clone),
        );
    }
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}
