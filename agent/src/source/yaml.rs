//! Kubernetes objects from YAML or JSON text: multi-document files and
//! `kind: List`, strict about unknown fields.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::index::{Object, calico, cluster_network_policy, from_value_strict};

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{origin}: document {doc}: invalid YAML")]
    Yaml {
        origin: String,
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{origin}: document {doc}: {what}: {message}")]
    Object {
        origin: String,
        doc: usize,
        what: String,
        message: String,
    },
}

/// Every object in `text`, or why a document was rejected. Documents that
/// are empty are skipped; kinds the agent does not enforce are rejected
/// with their name, so a typo in `kind` is not silently ignored.
pub fn parse_objects(origin: &str, text: &str) -> Vec<Result<Object, ParseError>> {
    let mut out = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(de) {
            Ok(v) => v,
            Err(source) => {
                out.push(Err(ParseError::Yaml {
                    origin: origin.to_string(),
                    doc,
                    source,
                }));
                // The stream cannot continue past a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        // JSON has no NaN or infinity: converted, they would become null
        // (a Calico `order: .inf` would silently mean "no order").
        if let Some(path) = non_finite(&value, String::new()) {
            out.push(Err(object_error(
                origin,
                doc,
                "document",
                format!("{path}: not a finite number"),
            )));
            continue;
        }
        let json = match serde_json::to_value(&value) {
            Ok(j) => j,
            Err(e) => {
                out.push(Err(object_error(origin, doc, "document", e.to_string())));
                continue;
            }
        };
        if json.get("kind").and_then(Value::as_str) == Some("List") {
            for item in json
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(object(origin, doc, item));
            }
        } else {
            out.push(object(origin, doc, &json));
        }
    }
    out
}

/// The path of the first NaN or infinite number in `v`.
fn non_finite(v: &serde_yaml::Value, path: String) -> Option<String> {
    match v {
        serde_yaml::Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Some(path),
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| non_finite(item, format!("{path}[{i}]"))),
        serde_yaml::Value::Mapping(m) => m.iter().find_map(|(k, item)| {
            let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
            non_finite(
                item,
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                },
            )
        }),
        serde_yaml::Value::Tagged(t) => non_finite(&t.value, path),
        _ => None,
    }
}

fn object_error(origin: &str, doc: usize, what: impl Into<String>, message: String) -> ParseError {
    ParseError::Object {
        origin: origin.to_string(),
        doc,
        what: what.into(),
        message,
    }
}

/// Strict deserialization ([`from_value_strict`]): errors name the field.
fn typed<T: DeserializeOwned + serde::Serialize>(
    origin: &str,
    doc: usize,
    what: &str,
    v: &Value,
) -> Result<T, ParseError> {
    from_value_strict(v).map_err(|message| object_error(origin, doc, what, message))
}

fn object(origin: &str, doc: usize, v: &Value) -> Result<Object, ParseError> {
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(
            |n| match v.pointer("/metadata/namespace").and_then(Value::as_str) {
                Some(ns) => format!("{kind} {ns}/{n}"),
                None => format!("{kind} {n}"),
            },
        )
        .unwrap_or_else(|| format!("{kind} (unnamed)"));
    match (api_version, kind) {
        ("v1", "Namespace") => typed(origin, doc, &name, v).map(|o| Object::Namespace(Box::new(o))),
        ("v1", "Pod") => typed(origin, doc, &name, v).map(|o| Object::Pod(Box::new(o))),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            typed(origin, doc, &name, v).map(|o| Object::NetworkPolicy(Box::new(o)))
        }
        ("v1", "Service") => typed(origin, doc, &name, v).map(|o| Object::Service(Box::new(o))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            typed(origin, doc, &name, v).map(|o| Object::EndpointSlice(Box::new(o)))
        }
        (cluster_network_policy::API_VERSION, "ClusterNetworkPolicy") => {
            typed(origin, doc, &name, v).map(|o| Object::ClusterNetworkPolicy(Box::new(o)))
        }
        (calico::API_VERSION, "NetworkPolicy") => {
            typed(origin, doc, &name, v).map(|o| Object::CalicoNetworkPolicy(Box::new(o)))
        }
        (calico::API_VERSION, "GlobalNetworkPolicy") => {
            typed(origin, doc, &name, v).map(|o| Object::CalicoGlobalNetworkPolicy(Box::new(o)))
        }
        (calico::API_VERSION, "Tier") => {
            typed(origin, doc, &name, v).map(|o| Object::CalicoTier(Box::new(o)))
        }
        _ => Err(object_error(
            origin,
            doc,
            name,
            format!(
                "unsupported apiVersion/kind {api_version:?}/{kind:?} (want v1 Namespace, v1 Pod, networking.k8s.io/v1 NetworkPolicy, v1 Service, discovery.k8s.io/v1 EndpointSlice, {} ClusterNetworkPolicy, {} NetworkPolicy, GlobalNetworkPolicy or Tier)",
                cluster_network_policy::API_VERSION,
                calico::API_VERSION,
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_files_and_names_bad_ones() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelecter: {}}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: g}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: x}
spec: {clusterIP: 10.96.0.10, ports: [{port: 15432, targetPort: pg}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: x, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5], conditions: {ready: true}}]
ports: [{port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: x}
spec: {clusterIP: 10.96.0.11, ports: [{port: 1, targetPrt: 2}]}
"#;
        let r = parse_objects("f.yaml", text);
        assert_eq!(r.len(), 6);
        assert!(matches!(r[3], Ok(Object::Service(_))));
        assert!(matches!(r[4], Ok(Object::EndpointSlice(_))));
        let e5 = r[5]
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            e5.contains("Service x/bad") && e5.contains("spec.ports[0].targetPrt"),
            "{e5}"
        );
        assert!(matches!(r[0], Ok(Object::Namespace(_))));
        let e1 = r[1]
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            e1.contains("NetworkPolicy x/p") && e1.contains("spec.podSelecter"),
            "{e1}"
        );
        let e2 = r[2]
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(e2.contains("unsupported"), "{e2}");
    }
}
