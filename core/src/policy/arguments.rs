//! Rewrites declared path arguments to their canonical form before any rule reads them.

use serde_json::Value;

use super::input_schema::{PathArgument, Step};
use super::path::{PathRefusal, canonical_path};

/// A path argument that has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPath {
    /// JSON pointer of the value (`/path`, `/files/2`).
    pub at: String,
    pub refusal: PathRefusal,
}

/// The arguments with every declared path in canonical form; `None` when nothing changed.
pub fn canonicalize(paths: &[PathArgument], args: &Value) -> Result<Option<Value>, BadPath> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut out = args.clone();
    let mut changed = false;
    for path in paths {
        rewrite(&mut out, &path.steps, &path.base, String::new(), &mut changed)?;
    }
    Ok(changed.then_some(out))
}

fn rewrite(value: &mut Value, steps: &[Step], base: &str, at: String, changed: &mut bool) -> Result<(), BadPath> {
    match steps.split_first() {
        None => {
            // The schema has already required a string; anything else is left for it to have refused.
            if let Value::String(text) = value {
                let canonical = canonical_path(base, text).map_err(|refusal| BadPath { at, refusal })?;
                if canonical != *text {
                    *text = canonical;
                    *changed = true;
                }
            }
            Ok(())
        }
        Some((Step::Key(key), rest)) => match value.get_mut(key.as_str()) {
            Some(child) => rewrite(child, rest, base, format!("{at}/{}", escape(key)), changed),
            None => Ok(()),
        },
        Some((Step::Items, rest)) => match value {
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    rewrite(item, rest, base, format!("{at}/{i}"), changed)?;
                }
                Ok(())
            }
            _ => Ok(()),
        },
    }
}

/// JSON pointer escaping of one key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared(steps: Vec<Step>) -> PathArgument {
        PathArgument { steps, base: "/docs".into() }
    }

    #[test]
    fn declared_paths_are_rewritten_wherever_they_sit() {
        let paths = vec![
            declared(vec![Step::Key("path".into())]),
            declared(vec![Step::Key("files".into()), Step::Items]),
            declared(vec![Step::Key("opts".into()), Step::Key("dir".into())]),
        ];
        let args = json!({"path": "./published/v1.md", "files": ["a/../b", "c"], "opts": {"dir": "/docs/x/"}, "other": "./x"});
        let out = canonicalize(&paths, &args).unwrap().unwrap();
        assert_eq!(out, json!({"path": "published/v1.md", "files": ["b", "c"], "opts": {"dir": "x"}, "other": "./x"}));
        assert_eq!(canonicalize(&paths, &out).unwrap(), None, "canonical arguments are left as they are");
        assert_eq!(canonicalize(&paths, &json!({})).unwrap(), None, "absent arguments are fine");
    }

    #[test]
    fn the_refusal_names_the_value() {
        let paths = vec![declared(vec![Step::Key("files".into()), Step::Items])];
        let err = canonicalize(&paths, &json!({"files": ["ok", "../etc/passwd"]})).unwrap_err();
        assert_eq!(err, BadPath { at: "/files/1".into(), refusal: PathRefusal::Leaves("/docs".into()) });
    }
}
