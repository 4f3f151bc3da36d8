//! The pure index: API objects in (apply / delete / reset), the engine's
//! [`Model`] out. No I/O; every source (API server, directory) feeds it.

pub mod calico;
pub mod cluster_network_policy;
mod convert;
mod label_selector;
mod mode;
mod network_policy;
mod ordered;
mod service;
mod strict;

use std::collections::BTreeMap;

pub use convert::{ConvertError, namespace_from_api, pod_from_api};
use k8s_openapi::api::{
    core::v1::{Namespace as ApiNamespace, Pod as ApiPod, Service as ApiService},
    discovery::v1::EndpointSlice as ApiEndpointSlice,
    networking::v1::NetworkPolicy,
};
pub use label_selector::selector_from_api;
pub use mode::{ANNOTATION_PREFIX, MODE_ANNOTATION, ModeError, mode_of};

use crate::model::Mode;
pub use network_policy::{PolicyError, policy_from_api};
pub use ordered::{OrderedError, from_value_strict};
pub use service::{endpoint_slice_from_api, service_from_api};
pub use strict::unknown_fields;

use crate::model::{
    Model, ObjectRef,
    ordered::{OrderedOrigin, OrderedRef},
};

/// An object the index understands.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<ApiNamespace>),
    Pod(Box<ApiPod>),
    NetworkPolicy(Box<NetworkPolicy>),
    Service(Box<ApiService>),
    EndpointSlice(Box<ApiEndpointSlice>),
    /// policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy.
    ClusterNetworkPolicy(Box<cluster_network_policy::ClusterNetworkPolicy>),
    /// projectcalico.org/v3 NetworkPolicy.
    CalicoNetworkPolicy(Box<calico::NetworkPolicy>),
    /// projectcalico.org/v3 GlobalNetworkPolicy.
    CalicoGlobalNetworkPolicy(Box<calico::GlobalNetworkPolicy>),
    /// projectcalico.org/v3 Tier.
    CalicoTier(Box<calico::Tier>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    ClusterNetworkPolicy,
    CalicoNetworkPolicy,
    CalicoGlobalNetworkPolicy,
    CalicoTier,
}

impl Kind {
    /// Every kind, in the order sources list them.
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ClusterNetworkPolicy,
        Kind::CalicoNetworkPolicy,
        Kind::CalicoGlobalNetworkPolicy,
        Kind::CalicoTier,
    ];

    /// The kinds every cluster has: the daemon programs nothing before each
    /// of these was listed once. The others are CRDs a cluster may lack (the
    /// API source then never lists them), so the wait does not include them.
    pub const REQUIRED: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
    ];

    /// Whether every kind of [`Kind::REQUIRED`] is in `listed`.
    pub fn all_required(listed: &std::collections::BTreeSet<Kind>) -> bool {
        Kind::REQUIRED.iter().all(|k| listed.contains(k))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::CalicoNetworkPolicy => "NetworkPolicy.projectcalico.org",
            Kind::CalicoGlobalNetworkPolicy => "GlobalNetworkPolicy.projectcalico.org",
            Kind::CalicoTier => "Tier.projectcalico.org",
        })
    }
}

/// Kind plus namespace/name (namespace empty for cluster-scoped objects).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub object: ObjectRef,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.object.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.object.name)
        } else {
            write!(f, "{} {}", self.kind, self.object)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{key}")]
    Policy {
        key: ObjectKey,
        #[source]
        source: Box<PolicyError>,
    },
    #[error("{key}")]
    Convert {
        key: ObjectKey,
        #[source]
        source: Box<ConvertError>,
    },
    #[error("{key}")]
    Ordered {
        key: ObjectKey,
        #[source]
        source: Box<OrderedError>,
    },
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Namespace(o) => (Kind::Namespace, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::NetworkPolicy(o) => (Kind::NetworkPolicy, &o.metadata),
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
            Object::ClusterNetworkPolicy(o) => (Kind::ClusterNetworkPolicy, &o.metadata),
            Object::CalicoNetworkPolicy(o) => (Kind::CalicoNetworkPolicy, &o.metadata),
            Object::CalicoGlobalNetworkPolicy(o) => (Kind::CalicoGlobalNetworkPolicy, &o.metadata),
            Object::CalicoTier(o) => (Kind::CalicoTier, &o.metadata),
        };
        // Cluster-scoped kinds: a namespace in their metadata means nothing.
        let namespace = match kind {
            Kind::Namespace
            | Kind::ClusterNetworkPolicy
            | Kind::CalicoGlobalNetworkPolicy
            | Kind::CalicoTier => String::new(),
            _ => meta.namespace.clone().unwrap_or_default(),
        };
        ObjectKey {
            kind,
            object: ObjectRef::new(namespace, meta.name.clone().unwrap_or_default()),
        }
    }
}

/// The model plus the errors of objects that were rejected.
#[derive(Debug, Default)]
pub struct Index {
    model: Model,
    /// Objects whose latest version was rejected, with why. An earlier valid
    /// version, if any, stays in force.
    rejected: BTreeMap<ObjectKey, String>,
    /// Calico Tier objects by name; Calico policies' tiers resolve from them.
    calico_tiers: BTreeMap<String, calico::TierInfo>,
}

impl Index {
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn rejected(&self) -> &BTreeMap<ObjectKey, String> {
        &self.rejected
    }

    /// Adds or replaces an object. An invalid object leaves the model as it
    /// was (its last good version stays) and is reported.
    pub fn apply(&mut self, obj: &Object) -> Result<(), IndexError> {
        let key = obj.key();
        let result = match obj {
            Object::Namespace(ns) => namespace_from_api(ns).map(|ns| {
                self.model.namespaces.insert(ns.name.clone(), ns);
            }),
            Object::Pod(pod) => pod_from_api(pod).map(|pod| match pod {
                Some(pod) => {
                    self.model.pods.insert(pod.key(), pod);
                }
                // Finished pods release their address: forget them.
                None => {
                    self.model.pods.remove(&key.object);
                }
            }),
            Object::NetworkPolicy(np) => {
                let converted = mode_of(&np.metadata)
                    .map_err(PolicyError::from)
                    .and_then(|mode| Ok((mode, policy_from_api(np)?)));
                return match converted {
                    Ok((mode, p)) => {
                        self.rejected.remove(&key);
                        let m = &mut self.model;
                        crate::model::place(
                            &mut m.policies,
                            &mut m.audited.policies,
                            key.object,
                            p,
                            mode,
                        );
                        Ok(())
                    }
                    Err(source) => {
                        self.rejected
                            .insert(key.clone(), crate::error_chain::chain(&source));
                        Err(IndexError::Policy {
                            key,
                            source: Box::new(source),
                        })
                    }
                };
            }
            Object::Service(svc) => service_from_api(svc).map(|svc| {
                self.model.services.insert(svc.key(), svc);
            }),
            Object::EndpointSlice(slice) => endpoint_slice_from_api(slice).map(|slice| {
                self.model
                    .endpoint_slices
                    .insert(ObjectRef::new(&slice.namespace, &slice.name), slice);
            }),
            Object::ClusterNetworkPolicy(_)
            | Object::CalicoNetworkPolicy(_)
            | Object::CalicoGlobalNetworkPolicy(_)
            | Object::CalicoTier(_) => {
                return match self.apply_ordered(obj) {
                    Ok(()) => {
                        self.rejected.remove(&key);
                        Ok(())
                    }
                    Err(source) => {
                        self.rejected
                            .insert(key.clone(), crate::error_chain::chain(&source));
                        Err(IndexError::Ordered {
                            key,
                            source: Box::new(source),
                        })
                    }
                };
            }
        };
        match result {
            Ok(()) => {
                self.rejected.remove(&key);
                Ok(())
            }
            Err(source) => {
                self.rejected
                    .insert(key.clone(), crate::error_chain::chain(&source));
                Err(IndexError::Convert {
                    key,
                    source: Box::new(source),
                })
            }
        }
    }

    pub fn delete(&mut self, key: &ObjectKey) {
        self.rejected.remove(key);
        match key.kind {
            Kind::Namespace => {
                self.model.namespaces.remove(&key.object.name);
            }
            Kind::Pod => {
                self.model.pods.remove(&key.object);
            }
            Kind::NetworkPolicy => {
                self.model.policies.remove(&key.object);
                self.model.audited.policies.remove(&key.object);
            }
            Kind::Service => {
                self.model.services.remove(&key.object);
            }
            Kind::EndpointSlice => {
                self.model.endpoint_slices.remove(&key.object);
            }
            Kind::ClusterNetworkPolicy
            | Kind::CalicoNetworkPolicy
            | Kind::CalicoGlobalNetworkPolicy => {
                if let Some(r) = ordered_ref(key) {
                    self.model.ordered.remove(&r);
                    self.model.audited.ordered.remove(&r);
                }
            }
            Kind::CalicoTier => {
                if self.calico_tiers.remove(&key.object.name).is_some() {
                    self.resolve_calico_tiers();
                }
            }
        }
    }

    /// The ordered kinds: converted, then put in the model (a Tier
    /// re-resolves every Calico policy's tier).
    fn apply_ordered(&mut self, obj: &Object) -> Result<(), OrderedError> {
        let meta = match obj {
            Object::ClusterNetworkPolicy(o) => &o.metadata,
            Object::CalicoNetworkPolicy(o) => &o.metadata,
            Object::CalicoGlobalNetworkPolicy(o) => &o.metadata,
            Object::CalicoTier(o) => &o.metadata,
            Object::Namespace(_)
            | Object::Pod(_)
            | Object::NetworkPolicy(_)
            | Object::Service(_)
            | Object::EndpointSlice(_) => return Ok(()),
        };
        let mode = mode_of(meta)?;
        let (r, policy) = match obj {
            Object::ClusterNetworkPolicy(o) => {
                cluster_network_policy::cluster_network_policy_from_api(o)?
            }
            Object::CalicoNetworkPolicy(o) => {
                calico::network_policy_from_api(o, &self.calico_tiers)?
            }
            Object::CalicoGlobalNetworkPolicy(o) => {
                calico::global_network_policy_from_api(o, &self.calico_tiers)?
            }
            Object::CalicoTier(o) => {
                if mode == Mode::Audit {
                    return Err(ModeError::NotAPolicy.into());
                }
                let (name, info) = calico::tier_from_api(o)?;
                if self.calico_tiers.insert(name, info) != Some(info) {
                    self.resolve_calico_tiers();
                }
                return Ok(());
            }
            Object::Namespace(_)
            | Object::Pod(_)
            | Object::NetworkPolicy(_)
            | Object::Service(_)
            | Object::EndpointSlice(_) => return Ok(()),
        };
        let m = &mut self.model;
        crate::model::place(&mut m.ordered, &mut m.audited.ordered, r, policy, mode);
        Ok(())
    }

    /// Every Calico policy's tier, from the Tier objects known now.
    fn resolve_calico_tiers(&mut self) {
        let m = &mut self.model;
        for p in m.ordered.values_mut().chain(m.audited.ordered.values_mut()) {
            if let OrderedOrigin::Calico { tier, .. } = &p.origin {
                p.tier = calico::resolve_tier(tier, &self.calico_tiers);
            }
        }
    }

    /// Replaces everything of `kind` with `objects` (a relist): what is
    /// missing from the list is deleted. Returns the rejected objects' errors.
    pub fn reset(&mut self, kind: Kind, objects: &[Object]) -> Vec<IndexError> {
        let keep: std::collections::BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
        let refs = |m: &mut dyn Iterator<Item = &ObjectRef>| -> Vec<ObjectKey> {
            m.map(|r| ObjectKey {
                kind,
                object: r.clone(),
            })
            .collect()
        };
        let existing: Vec<ObjectKey> = match kind {
            Kind::Namespace => self
                .model
                .namespaces
                .keys()
                .map(|n| ObjectKey {
                    kind,
                    object: ObjectRef::new("", n),
                })
                .collect(),
            Kind::Pod => refs(&mut self.model.pods.keys()),
            Kind::NetworkPolicy => refs(
                &mut self
                    .model
                    .policies
                    .keys()
                    .chain(self.model.audited.policies.keys()),
            ),
            Kind::Service => refs(&mut self.model.services.keys()),
            Kind::EndpointSlice => refs(&mut self.model.endpoint_slices.keys()),
            Kind::ClusterNetworkPolicy
            | Kind::CalicoNetworkPolicy
            | Kind::CalicoGlobalNetworkPolicy => self
                .model
                .ordered
                .keys()
                .chain(self.model.audited.ordered.keys())
                .map(ordered_key)
                .filter(|k| k.kind == kind)
                .collect(),
            Kind::CalicoTier => self
                .calico_tiers
                .keys()
                .map(|n| ObjectKey {
                    kind,
                    object: ObjectRef::new("", n),
                })
                .collect(),
        };
        for k in existing {
            if !keep.contains(&k) {
                self.delete(&k);
            }
        }
        self.rejected
            .retain(|k, _| k.kind != kind || keep.contains(k));
        objects
            .iter()
            .filter(|o| o.key().kind == kind)
            .filter_map(|o| self.apply(o).err())
            .collect()
    }
}

/// The model key of an object of an ordered policy kind.
fn ordered_ref(key: &ObjectKey) -> Option<OrderedRef> {
    match key.kind {
        Kind::ClusterNetworkPolicy => {
            Some(OrderedRef::ClusterNetworkPolicy(key.object.name.clone()))
        }
        Kind::CalicoNetworkPolicy => Some(OrderedRef::CalicoNetworkPolicy(key.object.clone())),
        Kind::CalicoGlobalNetworkPolicy => Some(OrderedRef::CalicoGlobalNetworkPolicy(
            key.object.name.clone(),
        )),
        Kind::CalicoTier => Some(OrderedRef::CalicoTier(key.object.name.clone())),
        Kind::Namespace | Kind::Pod | Kind::NetworkPolicy | Kind::Service | Kind::EndpointSlice => {
            None
        }
    }
}

/// The object key of a model key.
fn ordered_key(r: &OrderedRef) -> ObjectKey {
    let (kind, object) = match r {
        OrderedRef::ClusterNetworkPolicy(n) => (Kind::ClusterNetworkPolicy, ObjectRef::new("", n)),
        OrderedRef::CalicoNetworkPolicy(o) => (Kind::CalicoNetworkPolicy, o.clone()),
        OrderedRef::CalicoGlobalNetworkPolicy(n) => {
            (Kind::CalicoGlobalNetworkPolicy, ObjectRef::new("", n))
        }
        OrderedRef::CalicoTier(n) => (Kind::CalicoTier, ObjectRef::new("", n)),
    };
    ObjectKey { kind, object }
}
