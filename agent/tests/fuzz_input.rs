//! Hostile input never panics and never stops the rest from compiling:
//! arbitrary text, and valid policies with random mutations (values swapped
//! for others of any type, fields dropped or duplicated, huge selectors),
//! go through the parser, the index and the compiler. Failures proptest
//! finds are kept in `proptest-regressions/` (the corpus) and replayed first.

mod support;

use palisade_agent::{
    index::Index,
    policy::{Profile, compile},
    source::yaml::parse_objects,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn valid_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                         "ports": [{"port": 80}, {"port": "http", "protocol": "TCP"}, {"port": 1000, "endPort": 2000}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8"}}], "ports": [{"protocol": "UDP"}]}]
        }
    })
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!("10.0.0.0/33")),
        Just(json!("::/129")),
        Just(json!(-1)),
        Just(json!(65536)),
        (1usize..2000)
            .prop_map(|n| Value::from((0..n).map(|i| format!("v{i}")).collect::<Vec<_>>())),
    ]
}

/// Every path (as JSON pointer) in a value.
fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| paths(c, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| paths(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn mutated() -> impl Strategy<Value = Value> {
    let mut all = Vec::new();
    paths(&valid_policy(), String::new(), &mut all);
    prop::collection::vec(
        (prop::sample::select(all), any_value(), any::<bool>()),
        1..6,
    )
    .prop_map(|muts| {
        let mut v = valid_policy();
        for (path, new, delete) in muts {
            if path.is_empty() {
                continue;
            }
            let (parent, key) = path.rsplit_once('/').expect("a path");
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) if delete => {
                    m.remove(key);
                }
                Some(Value::Object(m)) => {
                    m.insert(key.to_string(), new);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>()
                        && i < a.len()
                    {
                        if delete {
                            a.remove(i);
                        } else {
                            a[i] = new;
                        }
                    }
                }
                _ => {}
            }
        }
        v
    })
}

/// Parses, indexes and compiles; the objects of another file (as in the
/// standalone source) must survive whatever this one holds. (Within one
/// file a YAML syntax error ends the stream.)
fn survive(text: &str) {
    let good = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: good, namespace: x}\nspec: {podSelector: {}}\n";
    let mut index = Index::default();
    let files = [
        parse_objects("good.yaml", &format!("{}{good}", support::xyz())),
        parse_objects("fuzz.yaml", text),
    ];
    for o in files.into_iter().flatten().flatten() {
        let _ = index.apply(&o);
    }
    assert!(
        index.model().policies.keys().any(|k| k.name == "good"),
        "the rest still compiles"
    );
    let state = compile(index.model(), &support::node(), &Profile::default());
    assert!(!state.maps.endpoints.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_policies_never_panic(v in mutated()) {
        let yaml = format!("---\n{}\n", serde_yaml::to_string(&v).expect("yaml"));
        survive(&yaml);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\n\t]{0,400}") {
        survive(&format!("---\n{text}\n"));
    }
}

#[test]
fn thousands_of_policies_at_once_with_bad_ones_among_them() {
    let mut text = support::xyz();
    for i in 0..3000 {
        // Every tenth is invalid in a different way.
        let ports = match i % 30 {
            0 => "[{port: 0}]".to_string(),
            10 => "[{port: 80, endPort: 10}]".to_string(),
            20 => "[{protocol: GRE}]".to_string(),
            _ => format!("[{{port: {}}}]", 1000 + i),
        };
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: {ports}}}]\n"
        ));
    }
    let mut index = Index::default();
    let mut errors = Vec::new();
    for o in parse_objects("many.yaml", &text) {
        if let Err(e) = index.apply(&o.expect("well-formed YAML")) {
            errors.push(e.to_string());
        }
    }
    assert_eq!(errors.len(), 300, "every invalid policy is rejected");
    assert!(
        errors.iter().all(|e| e.contains("NetworkPolicy x/p")),
        "each error names its object"
    );
    assert_eq!(index.model().policies.len(), 2700, "the rest is in");
    let state = compile(index.model(), &support::node(), &Profile::default());
    // x/a admits x/b on 2,700 distinct ports.
    assert_eq!(state.maps.policy.values().count(), 2700);
}
