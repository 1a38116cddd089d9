//! Canonical JSON: key order and whitespace do not matter, every value does. Used to bind approvals to
//! the exact arguments of a call.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serialises `value` with object keys sorted, no whitespace, and integral numbers written as integers
/// (so `1` and `1.0` are the same argument).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                out.push_str(&(f as i64).to_string())
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// Hex SHA-256 of the canonical JSON of `value`.
pub fn arguments_hash(value: &Value) -> String {
    hex(&Sha256::digest(canonical_json(value).as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(arguments_hash(&a), arguments_hash(&b));
        assert_eq!(canonical_json(&a), r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#);
        assert_eq!(arguments_hash(&json!({"n": 1})), arguments_hash(&json!({"n": 1.0})));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\ ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Changes one leaf somewhere in the value; `None` when there is no leaf to change.
    fn mutate(value: &mut Value, choice: usize) -> bool {
        match value {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(choice % map.len()).unwrap().clone();
                mutate(map.get_mut(&key).unwrap(), choice / 3)
            }
            Value::Array(items) if !items.is_empty() => {
                let len = items.len();
                mutate(&mut items[choice % len], choice / 3)
            }
            Value::Object(map) => {
                map.insert("added".into(), Value::Null);
                true
            }
            Value::Array(items) => {
                items.push(Value::Null);
                true
            }
            Value::Null => {
                *value = Value::Bool(false);
                true
            }
            Value::Bool(b) => {
                *b = !*b;
                true
            }
            Value::Number(n) => {
                *value = Value::from(n.as_i64().unwrap_or(0).wrapping_add(1));
                true
            }
            Value::String(s) => {
                s.push('!');
                true
            }
        }
    }

    proptest! {
        /// Re-serialising with any formatting and reparsing gives the same hash.
        #[test]
        fn hash_ignores_formatting(value in arb_json()) {
            let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&value).unwrap()).unwrap();
            prop_assert_eq!(arguments_hash(&value), arguments_hash(&pretty));
            let canonical: Value = serde_json::from_str(&canonical_json(&value)).unwrap();
            prop_assert_eq!(canonical, value);
        }

        /// Any changed value changes the hash.
        #[test]
        fn any_changed_value_changes_the_hash(value in arb_json(), choice in any::<usize>()) {
            let mut changed = value.clone();
            prop_assume!(mutate(&mut changed, choice));
            prop_assert_ne!(arguments_hash(&value), arguments_hash(&changed));
        }
    }
}
