//! Loading manifests from files and directories (multi-document YAML).
//!
//! Every problem in a set of files is collected and reported together, each naming the file, the
//! document, the object and the field path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resources::{API_VERSION, McpTool, ToolPolicy};

/// Namespace given to objects that do not name one (as `kubectl apply` would in the default context).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Largest manifest file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// An object with its source.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    pub object: T,
    pub source: Source,
}

/// A `v1` Secret found beside the manifests; only the local embedded default uses these, standing in for
/// the Secrets a cluster would hold.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalSecret {
    pub namespace: String,
    pub name: String,
    /// Decoded values of `data` and `stringData`.
    pub values: BTreeMap<String, String>,
}

/// Everything loaded from a set of manifest files.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub tools: Vec<Loaded<McpTool>>,
    pub policies: Vec<Loaded<ToolPolicy>>,
    pub secrets: Vec<Loaded<LocalSecret>>,
}

/// One problem in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    pub document: Option<usize>,
    /// `McpTool default/get-weather`, when known.
    pub object: Option<String>,
    /// Field path such as `spec.limits.timeout`, when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (&self.document, &self.object) {
            (Some(d), Some(o)) => write!(f, " (document {d}, {o})")?,
            (Some(d), None) => write!(f, " (document {d})")?,
            (None, Some(o)) => write!(f, " ({o})")?,
            (None, None) => {}
        }
        match &self.field {
            Some(field) => write!(f, ": {field}: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// Every problem found, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the manifests:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// Loads every `*.yaml`/`*.yml` file among `paths` (directories are read one level deep, sorted).
pub fn load_paths(paths: &[PathBuf]) -> Result<Manifests, ManifestErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match manifest_files(path) {
            Ok(mut found) => files.append(&mut found),
            Err(e) => errors.push(e),
        }
    }
    let mut manifests = Manifests::default();
    for file in files {
        match read_file(&file) {
            Ok(text) => load_str_into(&text, &file, &mut manifests, &mut errors),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(manifests) } else { Err(ManifestErrors(errors)) }
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io_error = |e: std::io::Error| file_error(path, format!("cannot read: {e}"));
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_error)? {
        let entry_path = entry.map_err(io_error)?.path();
        let is_yaml = entry_path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && entry_path.is_file() {
            files.push(entry_path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(file_error(path, "directory holds no .yaml or .yml files".into()));
    }
    Ok(files)
}

fn read_file(file: &Path) -> Result<String, ManifestError> {
    let meta = std::fs::metadata(file).map_err(|e| file_error(file, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(file_error(file, format!("file is {} bytes; the limit is {MAX_FILE_BYTES}", meta.len())));
    }
    let bytes = std::fs::read(file).map_err(|e| file_error(file, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| file_error(file, format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to())))
}

fn file_error(file: &Path, message: String) -> ManifestError {
    ManifestError { file: file.to_path_buf(), document: None, object: None, field: None, message }
}

/// Loads one file's text; `file` is used in messages only.
pub fn load_str(text: &str, file: &Path) -> Result<Manifests, ManifestErrors> {
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    load_str_into(text, file, &mut manifests, &mut errors);
    if errors.is_empty() { Ok(manifests) } else { Err(ManifestErrors(errors)) }
}

fn load_str_into(text: &str, file: &Path, out: &mut Manifests, errors: &mut Vec<ManifestError>) {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            errors.push(file_error(file, format!("invalid YAML: {e}")));
            return;
        }
    };
    for (index, doc) in documents.into_iter().enumerate() {
        if doc.is_null() {
            continue; // an empty document, such as a trailing `---`
        }
        let source = Source { file: file.to_path_buf(), document: index + 1 };
        if let Err(e) = load_document(doc, &source, out) {
            errors.push(e);
        }
    }
}

fn load_document(mut doc: Value, source: &Source, out: &mut Manifests) -> Result<(), ManifestError> {
    let error = |object: Option<String>, field: Option<&str>, message: String| ManifestError {
        file: source.file.clone(),
        document: Some(source.document),
        object,
        field: field.map(str::to_string),
        message,
    };
    let Some(map) = doc.as_object_mut() else {
        return Err(error(None, None, "a manifest must be a mapping with apiVersion, kind and metadata".into()));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = map.pointer_str("/metadata/name");
    let namespace = map.pointer_str("/metadata/namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let object = Some(format!("{kind} {namespace}/{}", name.as_deref().unwrap_or("<unnamed>")));
    if name.as_deref().unwrap_or_default().is_empty() {
        return Err(error(object, Some("metadata.name"), "every object needs a name".into()));
    }
    // Fill in the namespace so every loaded object carries one.
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(namespace.clone()));
    }
    match (api_version.as_str(), kind.as_str()) {
        (API_VERSION, "McpTool") => {
            let tool: McpTool = parse_object(doc, &kind).map_err(|(f, m)| error(object.clone(), f.as_deref(), m))?;
            out.tools.push(Loaded { object: tool, source: source.clone() });
        }
        (API_VERSION, "ToolPolicy") => {
            let policy: ToolPolicy =
                parse_object(doc, &kind).map_err(|(f, m)| error(object.clone(), f.as_deref(), m))?;
            out.policies.push(Loaded { object: policy, source: source.clone() });
        }
        (API_VERSION, "McpSession") => {
            return Err(error(object, Some("kind"), "McpSession objects are written by the gateway, not applied".into()));
        }
        ("v1", "Secret") => {
            let secret = parse_secret(&doc, namespace, name.unwrap_or_default())
                .map_err(|(f, m)| error(object.clone(), Some(&f), m))?;
            out.secrets.push(Loaded { object: secret, source: source.clone() });
        }
        (API_VERSION, other) => {
            return Err(error(object, Some("kind"), format!("unknown kind `{other}`: expected McpTool or ToolPolicy")));
        }
        ("", _) | (_, "") => {
            return Err(error(object, None, "apiVersion and kind are required".into()));
        }
        (other_version, other_kind) => {
            return Err(error(
                object,
                Some("apiVersion"),
                format!("`{other_version}` `{other_kind}` is not a Toolwarden resource: expected apiVersion {API_VERSION} with kind McpTool or ToolPolicy"),
            ));
        }
    }
    Ok(())
}

/// Deserializes with the failing field's path; unknown top-level keys are refused too.
fn parse_object<T: DeserializeOwned>(doc: Value, kind: &str) -> Result<T, (Option<String>, String)> {
    if let Some(map) = doc.as_object() {
        for key in map.keys() {
            if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
                return Err((Some(key.clone()), format!("unknown field `{key}` on {kind}")));
            }
        }
        if !map.contains_key("spec") {
            return Err((Some("spec".into()), "missing field `spec`".into()));
        }
    }
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { None } else { Some(path) };
        (field, e.into_inner().to_string())
    })
}

fn parse_secret(doc: &Value, namespace: String, name: String) -> Result<LocalSecret, (String, String)> {
    use base64::Engine;
    let mut values = BTreeMap::new();
    if let Some(data) = doc.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            let text = value.as_str().unwrap_or_default();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| (format!("data.{key}"), "not base64-encoded UTF-8 text".to_string()))?;
            values.insert(key.clone(), decoded);
        }
    }
    if let Some(data) = doc.get("stringData").and_then(Value::as_object) {
        for (key, value) in data {
            let text = value.as_str().ok_or_else(|| (format!("stringData.{key}"), "must be a string".to_string()))?;
            values.insert(key.clone(), text.to_string());
        }
    }
    Ok(LocalSecret { namespace, name, values })
}

trait PointerStr {
    fn pointer_str(&self, pointer: &str) -> Option<String>;
}

impl PointerStr for serde_json::Map<String, Value> {
    fn pointer_str(&self, pointer: &str) -> Option<String> {
        let mut parts = pointer.trim_start_matches('/').split('/');
        let first = self.get(parts.next()?)?;
        parts.try_fold(first, |v, p| v.get(p)).and_then(Value::as_str).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-weather}
spec:
  description: Weather for a city.
  effect: read
  inputSchema: {type: object, properties: {city: {type: string}}}
  runtime: {exec: {image: busybox, command: [/bin/echo], args: ["{{city}}"]}}
"#;

    fn load(text: &str) -> Result<Manifests, ManifestErrors> {
        load_str(text, Path::new("tools.yaml"))
    }

    #[test]
    fn loads_a_tool_into_the_default_namespace() {
        let m = load(TOOL).unwrap();
        assert_eq!(m.tools.len(), 1);
        assert_eq!(m.tools[0].object.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(m.tools[0].source.document, 1);
    }

    #[test]
    fn unknown_field_names_path_file_and_document() {
        let text = format!("{TOOL}---\n{}", TOOL.replace("effect: read", "effect: read\n  limits: {timoeut: 5s}"));
        let errors = load(&text).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        let e = &errors.0[0];
        assert_eq!(e.document, Some(2));
        assert_eq!(e.field.as_deref(), Some("spec.limits.timoeut"));
        let text = e.to_string();
        assert!(text.contains("tools.yaml (document 2, McpTool default/get-weather)"), "{text}");
        assert!(text.contains("unknown field `timoeut`"), "{text}");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = "kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}\n---\n".to_string()
            + &TOOL.replace("effect: read", "effect: reed")
            + "---\napiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {name: other}\nspec: {}\nextra: 1\n";
        let errors = load(&text).unwrap_err();
        assert_eq!(errors.0.len(), 3, "{errors}");
        assert!(errors.0[0].message.contains("not a Toolwarden resource"));
        assert_eq!(errors.0[1].field.as_deref(), Some("spec.effect"));
        assert_eq!(errors.0[2].field.as_deref(), Some("extra"));
    }

    #[test]
    fn malformed_yaml_is_one_error_naming_the_file() {
        let errors = load("kind: [unclosed").unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(errors.0[0].to_string().starts_with("tools.yaml: invalid YAML"), "{}", errors.0[0]);
    }

    #[test]
    fn missing_name_and_wrong_kind_are_refused() {
        let errors = load("apiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {}\nspec: {}\n").unwrap_err();
        assert_eq!(errors.0[0].field.as_deref(), Some("metadata.name"));
        let errors = load("apiVersion: toolwarden.dev/v1alpha1\nkind: McpThing\nmetadata: {name: a}\nspec: {}\n").unwrap_err();
        assert!(errors.0[0].message.contains("unknown kind `McpThing`"));
    }

    #[test]
    fn secrets_decode_data_and_string_data() {
        let m = load("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: aGVsbG8=}\nstringData: {b: world}\n").unwrap();
        let s = &m.secrets[0].object;
        assert_eq!(s.values.get("a").map(String::as_str), Some("hello"));
        assert_eq!(s.values.get("b").map(String::as_str), Some("world"));
    }
}
