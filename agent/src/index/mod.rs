//! The pure index: API objects in (apply / delete / reset), the engine's
//! [`Model`] out. No I/O; every source (API server, directory) feeds it.

mod convert;
mod label_selector;
mod network_policy;
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
pub use network_policy::{PolicyError, policy_from_api};
pub use service::{endpoint_slice_from_api, service_from_api};
pub use strict::unknown_fields;

use crate::model::{Model, ObjectRef};

/// An object the index understands.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<ApiNamespace>),
    Pod(Box<ApiPod>),
    NetworkPolicy(Box<NetworkPolicy>),
    Service(Box<ApiService>),
    EndpointSlice(Box<ApiEndpointSlice>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
}

impl Kind {
    /// Every kind, in the order sources list them.
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
    ];
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
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
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Namespace(o) => (Kind::Namespace, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::NetworkPolicy(o) => (Kind::NetworkPolicy, &o.metadata),
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
        };
        ObjectKey {
            kind,
            object: ObjectRef::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ),
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
                return match policy_from_api(np) {
                    Ok(p) => {
                        self.rejected.remove(&key);
                        self.model.policies.insert(key.object, p);
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
            }
            Kind::Service => {
                self.model.services.remove(&key.object);
            }
            Kind::EndpointSlice => {
                self.model.endpoint_slices.remove(&key.object);
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
            Kind::NetworkPolicy => refs(&mut self.model.policies.keys()),
            Kind::Service => refs(&mut self.model.services.keys()),
            Kind::EndpointSlice => refs(&mut self.model.endpoint_slices.keys()),
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
