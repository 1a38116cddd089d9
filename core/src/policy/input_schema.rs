//! A tool's inputSchema: compiled with its formats asserted, and read for what Toolwarden itself uses
//! (`x-toolwarden-path` declarations) or cannot check (formats it does not know).

use serde_json::Value;

use super::path::check_base;

/// The schema keyword that declares a string argument a path under a base directory.
pub const PATH_KEYWORD: &str = "x-toolwarden-path";

/// Formats the gateway asserts: a value that does not match is refused like any schema violation.
/// `email` is Toolwarden's own strict reading (see [`is_plain_email`]); the rest are the jsonschema
/// crate's.
pub const ASSERTED_FORMATS: &[&str] = &[
    "date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference", "iri",
    "iri-reference", "uri-template", "uuid", "json-pointer", "relative-json-pointer", "regex",
];

/// Compiles a JSON Schema (draft 2020-12 unless `$schema` says otherwise) with formats asserted; refuses
/// non-object schemas.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        return Err("must be a JSON Schema with `type: object` (tool arguments are an object)".into());
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_format("email", is_plain_email)
        .build(schema)
        .map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// `local@domain` and nothing else: a dot-atom local part without `%` or `!` (which old relays read as
/// routing), one `@`, a DNS name of letter-digit-hyphen labels. No display names (`Name <a@b>`), quoted
/// local parts, comments, domain literals or lists: the forms mail software reads in different ways.
pub fn is_plain_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else { return false };
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"#$&'*+-/=?^_`{|}~".contains(&b);
    let local_ok = !local.is_empty() && local.len() <= 64 && local.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(atext));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit());
    local_ok && domain_ok && text.len() <= 254
}

/// One step from an argument object to a declared path: a property, or every item of an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Items,
}

/// An argument declared a path (`x-toolwarden-path: /base` on its schema).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathArgument {
    pub steps: Vec<Step>,
    pub base: String,
}

impl PathArgument {
    /// Whether a rule's `argument` (`a.b`) names this path (a path inside arrays cannot be named).
    pub fn is_named_by(&self, argument: &[String]) -> bool {
        self.steps.len() == argument.len()
            && self.steps.iter().zip(argument).all(|(step, name)| matches!(step, Step::Key(k) if k == name))
    }
}

/// What reading a schema found: path declarations, problems with them, and formats that are not checked.
#[derive(Debug, Default)]
pub struct SchemaFacts {
    pub paths: Vec<PathArgument>,
    pub errors: Vec<String>,
    pub unchecked_formats: Vec<String>,
}

/// Keywords whose value is one subschema, a map of them, or a list of them (draft 2020-12 and older).
const ONE: &[&str] = &[
    "additionalProperties", "additionalItems", "contains", "propertyNames", "not", "if", "then", "else",
    "unevaluatedItems", "unevaluatedProperties", "items",
];
const MAP: &[&str] = &["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];
const LIST: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems", "items"];

/// Walks every subschema (without recursion, so deep schemas cannot exhaust the stack). A node keeps its
/// argument steps only when reached through `properties` and `items` from the root: only there is it
/// clear which argument value it describes.
pub fn read_schema(schema: &Value) -> SchemaFacts {
    let mut facts = SchemaFacts::default();
    let mut stack: Vec<(&Value, String, Option<Vec<Step>>)> = vec![(schema, String::new(), Some(Vec::new()))];
    while let Some((node, at, steps)) = stack.pop() {
        let Value::Object(map) = node else { continue };
        let place = if at.is_empty() { "the root".to_string() } else { format!("`{}`", &at[1..]) };
        if let Some(format) = map.get("format").and_then(Value::as_str)
            && !ASSERTED_FORMATS.contains(&format)
        {
            facts.unchecked_formats.push(format!("{place}: format `{format}`"));
        }
        if let Some(base) = map.get(PATH_KEYWORD) {
            match (steps.as_ref().filter(|s| !s.is_empty()), base.as_str()) {
                (None, _) => facts.errors.push(format!(
                    "{place}: {PATH_KEYWORD} is read only on an argument reached through `properties` (and `items`), not here"
                )),
                (_, None) => facts.errors.push(format!("{place}: {PATH_KEYWORD} must be the base directory, such as /workspace")),
                (Some(steps), Some(base)) => match check_base(base) {
                    Err(e) => facts.errors.push(format!("{place}: {PATH_KEYWORD}: {e}")),
                    Ok(()) if map.get("type").and_then(Value::as_str) != Some("string") => {
                        facts.errors.push(format!("{place}: an argument with {PATH_KEYWORD} needs `type: string`"))
                    }
                    Ok(()) => facts.paths.push(PathArgument { steps: steps.clone(), base: base.to_string() }),
                },
            }
        }
        for (keyword, value) in map {
            let k = keyword.as_str();
            let child_at = |key: &str| format!("{at}.{key}");
            if MAP.contains(&k)
                && let Value::Object(children) = value
            {
                for (name, child) in children {
                    let child_steps = match (&steps, k) {
                        (Some(s), "properties") => Some([s.clone(), vec![Step::Key(name.clone())]].concat()),
                        _ => None,
                    };
                    stack.push((child, format!("{}.{name}", child_at(k)), child_steps));
                }
            } else if ONE.contains(&k) && value.is_object() {
                let child_steps = match (&steps, k) {
                    (Some(s), "items") => Some([s.clone(), vec![Step::Items]].concat()),
                    _ => None,
                };
                stack.push((value, child_at(k), child_steps));
            } else if LIST.contains(&k)
                && let Value::Array(children) = value
            {
                for (i, child) in children.iter().enumerate() {
                    stack.push((child, format!("{}[{i}]", child_at(k)), None));
                }
            }
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_addresses_only() {
        for ok in ["team@example.com", "a.b+tag@example.com", "o'brien@mail.example.co", "x@localhost"] {
            assert!(is_plain_email(ok), "{ok}");
        }
        for bad in [
            "not an address <x@evil.test> @example.com",
            "Name <x@example.com>",
            "a@evil.test;b@example.com",
            "a@evil.test,b@example.com",
            "\"a@evil.test\"@example.com",
            "a@evil.test@example.com",
            "a%evil.test@example.com",
            "evil.test!a@example.com",
            "a(comment)@example.com",
            "a@[127.0.0.1]",
            "a@1.2.3.4",
            "a..b@example.com",
            ".a@example.com",
            "a@example.com.",
            "a@-example.com",
            "a@exa_mple.com",
            "a@example.com\n",
            "a @example.com",
            "@example.com",
            "a@",
            "",
        ] {
            assert!(!is_plain_email(bad), "{bad:?}");
        }
    }

    #[test]
    fn formats_are_asserted() {
        let schema = json!({"type": "object", "properties": {
            "to": {"type": "string", "format": "email"},
            "url": {"type": "string", "format": "uri"},
            "host": {"type": "string", "format": "hostname"},
            "when": {"type": "string", "format": "date-time"},
        }});
        let validator = compile_schema(&schema).unwrap();
        assert!(validator.is_valid(&json!({"to": "a@example.com", "url": "https://x.test/", "host": "x.test", "when": "2026-01-02T03:04:05Z"})));
        for bad in [
            json!({"to": "not an address <x@evil.test> @example.com"}),
            json!({"to": "a@evil.test;b@example.com"}),
            json!({"url": "http://docs.example.test\\@evil.test/"}),
            json!({"url": "not a uri"}),
            json!({"host": "evil.test/x"}),
            json!({"when": "tomorrow"}),
        ] {
            assert!(!validator.is_valid(&bad), "{bad}");
        }
    }

    #[test]
    fn path_declarations_are_found_where_they_name_an_argument() {
        let schema = json!({"type": "object", "properties": {
            "path": {"type": "string", "x-toolwarden-path": "/notes"},
            "files": {"type": "array", "items": {"type": "string", "x-toolwarden-path": "/notes"}},
            "opts": {"type": "object", "properties": {"dir": {"type": "string", "x-toolwarden-path": "/"}}},
            "kind": {"type": "string", "format": "int32"},
        }});
        let facts = read_schema(&schema);
        assert!(facts.errors.is_empty(), "{:?}", facts.errors);
        let mut found: Vec<_> = facts.paths.iter().map(|p| (p.steps.clone(), p.base.clone())).collect();
        found.sort_by_key(|(s, _)| format!("{s:?}"));
        assert_eq!(found, vec![
            (vec![Step::Key("files".into()), Step::Items], "/notes".to_string()),
            (vec![Step::Key("opts".into()), Step::Key("dir".into())], "/".to_string()),
            (vec![Step::Key("path".into())], "/notes".to_string()),
        ]);
        assert_eq!(facts.unchecked_formats, vec!["`properties.kind`: format `int32`".to_string()]);
    }

    #[test]
    fn misplaced_or_malformed_declarations_are_errors() {
        let cases = [
            (json!({"type": "object", "x-toolwarden-path": "/a"}), "read only on an argument"),
            (json!({"type": "object", "properties": {"p": {"anyOf": [{"type": "string", "x-toolwarden-path": "/a"}]}}}), "read only on an argument"),
            (json!({"type": "object", "$defs": {"p": {"type": "string", "x-toolwarden-path": "/a"}}}), "read only on an argument"),
            (json!({"type": "object", "properties": {"p": {"type": "string", "x-toolwarden-path": true}}}), "must be the base directory"),
            (json!({"type": "object", "properties": {"p": {"type": "string", "x-toolwarden-path": "notes"}}}), "absolute"),
            (json!({"type": "object", "properties": {"p": {"type": "string", "x-toolwarden-path": "/notes/"}}}), "canonical"),
            (json!({"type": "object", "properties": {"p": {"x-toolwarden-path": "/notes"}}}), "type: string"),
        ];
        for (schema, want) in cases {
            let facts = read_schema(&schema);
            assert!(facts.paths.is_empty(), "{schema}");
            assert!(facts.errors.iter().any(|e| e.contains(want)), "{schema}: {:?}", facts.errors);
        }
    }
}
