//! Unknown-field detection. The API types ignore fields they do not know;
//! a policy with a misspelt field (`podSelecter`) would then silently mean
//! something else, so sources reject such objects.

use serde_json::Value;

/// Paths of fields present in `input` but absent after a round trip through
/// the typed object (`parsed`, serialized back).
pub fn unknown_fields(input: &Value, parsed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, parsed, String::new(), &mut out);
    out
}

fn walk(input: &Value, parsed: &Value, path: String, out: &mut Vec<String>) {
    match (input, parsed) {
        (Value::Object(i), Value::Object(p)) => {
            for (k, v) in i {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match p.get(k) {
                    Some(pv) => walk(v, pv, sub, out),
                    None if v.is_null() => {}
                    None => out.push(sub),
                }
            }
        }
        (Value::Array(i), Value::Array(p)) => {
            for (n, (iv, pv)) in i.iter().zip(p).enumerate() {
                walk(iv, pv, format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_misspelt_fields() {
        let input = json!({"spec": {"podSelecter": {}, "ingress": [{"form": []}, {"from": []}]}});
        let parsed = json!({"spec": {"ingress": [{}, {"from": []}]}});
        assert_eq!(
            unknown_fields(&input, &parsed),
            vec![
                "spec.ingress[0].form".to_string(),
                "spec.podSelecter".to_string()
            ]
        );
        let input = json!({"spec": {"ingress": [{"form": [{"x": 1}]}]}});
        let parsed = json!({"spec": {"ingress": [{}]}});
        assert_eq!(
            unknown_fields(&input, &parsed),
            vec!["spec.ingress[0].form".to_string()]
        );
    }
}
