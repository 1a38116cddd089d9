//! Turning arguments into argv entries, URL paths, query strings and request bodies. Pure functions:
//! every value stays whole (never spliced into a string, never seen by a shell).

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

/// Arguments that do not fit the tool's templates (answered with 422 `invalid_arguments`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// `{{name}}` → `Some(("name", false))`, `{{name?}}` → `Some(("name", true))`, a literal → `None`.
/// The same reading as core's `compiler::template_argument`.
pub fn template_argument(entry: &str) -> Option<(&str, bool)> {
    let inner = entry.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    match inner.strip_suffix('?') {
        Some(name) => Some((name.trim(), true)),
        None => Some((inner, false)),
    }
}

/// Expands `templates` into argv entries. A string becomes one entry, a number or boolean its JSON text,
/// an array of those one entry per element; `null` counts as absent; an object (or nested array) cannot
/// be an argv entry.
pub fn expand_argv(templates: &[String], arguments: &Value) -> Result<Vec<String>, TemplateError> {
    let mut argv = Vec::with_capacity(templates.len());
    for (i, entry) in templates.iter().enumerate() {
        let Some((name, optional)) = template_argument(entry) else {
            argv.push(entry.clone());
            continue;
        };
        match arguments.get(name).filter(|v| !v.is_null()) {
            None if optional => {}
            None => {
                return Err(TemplateError(format!("args[{i}] `{entry}` needs argument `{name}`, which the call does not have")));
            }
            Some(Value::Array(items)) => {
                for (j, item) in items.iter().enumerate() {
                    argv.push(scalar(item).ok_or_else(|| {
                        TemplateError(format!("argument `{name}`[{j}] is {}; an argv entry must be a string, number or boolean", kind(item)))
                    })?);
                }
            }
            Some(value) => argv.push(scalar(value).ok_or_else(|| {
                TemplateError(format!("argument `{name}` is {}; an argv entry must be a string, number or boolean", kind(value)))
            })?),
        }
    }
    if let Some(bad) = argv.iter().position(|a| a.contains('\0')) {
        return Err(TemplateError(format!("argv entry {bad} contains a NUL byte, which no program can receive")));
    }
    Ok(argv)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Path segments keep only unreserved characters; `/`, `?`, `#`, `%`, `..` all get encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
/// Query components: as above (`.` may stay).
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes one path segment; `.` is encoded too so `.`/`..` can never climb the path.
fn encode_segment(value: &str) -> String {
    utf8_percent_encode(value, PATH_SEGMENT).to_string().replace('.', "%2E")
}

/// The request an HTTP tool makes: URL (with query) and optional JSON body, plus the argument names used
/// by the path and query (the `*` body takes the rest).
#[derive(Debug, PartialEq)]
pub struct HttpTarget {
    pub url: String,
    pub body: Option<Value>,
}

/// Fills `{name}` path parameters (percent-encoded, required), appends the query parameters whose argument
/// is present, and builds the JSON body from `body` (`["*"]`: every argument not used in path or query).
pub fn http_target(
    url: &str,
    query: &BTreeMap<String, String>,
    body: &[String],
    arguments: &Value,
) -> Result<HttpTarget, TemplateError> {
    let mut used = BTreeSet::new();
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(TemplateError(format!("url `{url}` has an unclosed `{{`")));
        };
        let name = &rest[start + 1..start + len];
        let value = arguments.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
            TemplateError(format!("url path parameter `{{{name}}}` needs argument `{name}`, which the call does not have"))
        })?;
        let text = scalar(value).ok_or_else(|| {
            TemplateError(format!("argument `{name}` is {}; a path parameter must be a string, number or boolean", kind(value)))
        })?;
        if text.is_empty() {
            return Err(TemplateError(format!("argument `{name}` is empty; a path parameter cannot be empty")));
        }
        out.push_str(&encode_segment(&text));
        used.insert(name.to_string());
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);

    let mut pairs = Vec::new();
    for (param, arg) in query {
        used.insert(arg.clone());
        match arguments.get(arg).filter(|v| !v.is_null()) {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let text = scalar(item).ok_or_else(|| {
                        TemplateError(format!("argument `{arg}` holds {}; a query value must be a string, number or boolean", kind(item)))
                    })?;
                    pairs.push((param.as_str(), text));
                }
            }
            Some(value) => pairs.push((
                param.as_str(),
                scalar(value).ok_or_else(|| {
                    TemplateError(format!("argument `{arg}` is {}; a query value must be a string, number or boolean", kind(value)))
                })?,
            )),
        }
    }
    if !pairs.is_empty() {
        out.push(if out.contains('?') { '&' } else { '?' });
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", utf8_percent_encode(k, QUERY_COMPONENT), utf8_percent_encode(v, QUERY_COMPONENT)))
            .collect();
        out.push_str(&encoded.join("&"));
    }

    let body = if body.is_empty() {
        None
    } else {
        let mut object = Map::new();
        let all = body.iter().any(|b| b == "*");
        if let Some(args) = arguments.as_object() {
            for (name, value) in args {
                let named = body.iter().any(|b| b == name);
                if named || (all && !used.contains(name)) {
                    object.insert(name.clone(), value.clone());
                }
            }
        }
        Some(Value::Object(object))
    };
    Ok(HttpTarget { url: out, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_become_whole_argv_entries() {
        let args = json!({"path": "a b; rm -rf /", "limit": 5, "tags": ["x", "y z"], "on": true});
        let argv = expand_argv(&t(&["read", "{{path}}", "{{limit}}", "{{tags}}", "{{on}}"]), &args).unwrap();
        assert_eq!(argv, ["read", "a b; rm -rf /", "5", "x", "y z", "true"]);
    }

    #[test]
    fn optional_entries_are_omitted_and_required_ones_refused() {
        let args = json!({"other": 1, "nothing": null});
        assert_eq!(expand_argv(&t(&["list", "{{limit?}}", "{{ nothing? }}"]), &args).unwrap(), ["list"]);
        let err = expand_argv(&t(&["read", "{{path}}"]), &args).unwrap_err();
        assert!(err.0.contains("`path`"), "{err}");
    }

    #[test]
    fn objects_and_nested_arrays_cannot_be_argv_entries() {
        assert!(expand_argv(&t(&["{{x}}"]), &json!({"x": {"a": 1}})).unwrap_err().0.contains("an object"));
        assert!(expand_argv(&t(&["{{x}}"]), &json!({"x": [[1]]})).unwrap_err().0.contains("an array"));
        assert!(expand_argv(&t(&["{{x}}"]), &json!({"x": "a\u{0}b"})).unwrap_err().0.contains("NUL"));
    }

    #[test]
    fn path_parameters_are_percent_encoded_and_cannot_climb() {
        let args = json!({"owner": "a/b", "repo": "..", "q": "x y&z", "title": "t", "extra": 1});
        let query = BTreeMap::from([("q".to_string(), "q".to_string()), ("missing".to_string(), "nope".to_string())]);
        let target = http_target("https://api.test/repos/{owner}/{repo}/pulls", &query, &t(&["*"]), &args).unwrap();
        assert_eq!(target.url, "https://api.test/repos/a%2Fb/%2E%2E/pulls?q=x%20y%26z");
        assert_eq!(target.body, Some(json!({"title": "t", "extra": 1})));
    }

    #[test]
    fn named_body_takes_only_those_arguments() {
        let target = http_target("https://x.test/a", &BTreeMap::new(), &t(&["title"]), &json!({"title": "t", "no": 2})).unwrap();
        assert_eq!(target.body, Some(json!({"title": "t"})));
        assert!(http_target("https://x.test/{id}", &BTreeMap::new(), &[], &json!({})).is_err());
    }
}
