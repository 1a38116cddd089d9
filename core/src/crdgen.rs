//! CRD YAML generated from the resource types. `crds/` holds the same text; a test fails on drift.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use kube::CustomResourceExt;

use crate::names;
use crate::resources::{McpSession, McpTool, ToolPolicy};

/// Every Toolwarden CRD, with the admission rules schemars cannot attach (rules on `metadata.name`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut tool = McpTool::crd();
    let root = tool.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .expect("kube-derive always writes an openAPIV3Schema");
    // The API server prices each CEL rule from the schema's bounds and refuses rules over budget. It
    // takes `metadata.name`'s bound from the CRD schema only when the schema declares `kind`, `apiVersion`,
    // `metadata.name` and `metadata.generateName` (otherwise the name counts as 3 MB long, and the regular
    // expressions below are refused); 253 is what the API server allows a name anyway.
    let string = |max_length: Option<i64>| JSONSchemaProps { type_: Some("string".into()), max_length, ..Default::default() };
    let metadata = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some([("name".to_string(), string(Some(253))), ("generateName".to_string(), string(Some(253)))].into()),
        ..Default::default()
    };
    let properties = root.properties.get_or_insert_default();
    properties.insert("apiVersion".into(), string(None));
    properties.insert("kind".into(), string(None));
    properties.insert("metadata".into(), metadata);
    root.x_kubernetes_validations = Some(
        names::admission_rules()
            .into_iter()
            .map(|(rule, message)| ValidationRule { rule, message: Some(message), ..Default::default() })
            .collect(),
    );
    let mut crds = vec![tool, ToolPolicy::crd(), McpSession::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                kubernetes_integer_formats(schema);
            }
        }
    }
    crds
}

/// schemars names Rust's unsigned integers `uint16`/`uint32`/`uint64`, formats Kubernetes does not know
/// (`kubectl apply` warns about each). The schema's `minimum: 0` already says "unsigned"; the format
/// becomes the OpenAPI one wide enough for the value.
fn kubernetes_integer_formats(schema: &mut JSONSchemaProps) {
    schema.format = match schema.format.take().as_deref() {
        Some("uint8" | "uint16") => Some("int32".into()),
        Some("uint" | "uint32" | "uint64") => Some("int64".into()),
        other => other.map(str::to_string),
    };
    let children = schema.properties.iter_mut().flat_map(|p| p.values_mut());
    let items: Vec<&mut JSONSchemaProps> = match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => vec![s.as_mut()],
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().collect(),
        None => vec![],
    };
    let additional = match schema.additional_properties.as_mut() {
        Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s.as_mut()),
        _ => None,
    };
    let combinators = [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of].into_iter().flatten().flatten();
    for child in children.chain(items).chain(additional).chain(combinators).chain(schema.not.as_deref_mut()) {
        kubernetes_integer_formats(child);
    }
}

/// One CRD as YAML, as written to `crds/<name>.yaml`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_saphyr::to_string(crd).expect("a CRD always serialises")
}

/// `(file name, YAML)` for each CRD: what `crds/` must hold.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| (format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd")), crd_yaml(crd)))
        .collect()
}

/// All CRDs as one multi-document YAML stream (`toolwarden crd`).
pub fn all_crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn crds_dir_matches_the_rust_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        let mut stale = Vec::new();
        for (file, yaml) in crd_files() {
            let path = dir.join(&file);
            if std::env::var_os("TOOLWARDEN_UPDATE_CRDS").is_some() {
                std::fs::write(&path, &yaml).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(on_disk) if on_disk == yaml => {}
                _ => stale.push(file),
            }
        }
        assert!(
            stale.is_empty(),
            "crds/ drifted from the Rust types: {stale:?}. Regenerate with \
             `TOOLWARDEN_UPDATE_CRDS=1 cargo test -p toolwarden-core crds_dir_matches`"
        );
    }

    #[test]
    fn crds_have_short_names_category_and_status() {
        for (crd, short) in crds().iter().zip(["mcpt", "tpol", "mcps"]) {
            let names = &crd.spec.names;
            assert_eq!(names.short_names.as_deref(), Some(&[short.to_string()][..]));
            assert_eq!(names.categories.as_deref(), Some(&["toolwarden".to_string()][..]));
            assert_eq!(crd.spec.scope, "Namespaced");
            let version = &crd.spec.versions[0];
            assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
            assert!(version.additional_printer_columns.as_ref().is_some_and(|c| c.len() >= 4));
        }
    }

    #[test]
    fn mcptool_crd_carries_admission_rules() {
        let yaml = all_crds_yaml();
        assert!(yaml.contains("runtime needs exactly one of exec, http or mcp"));
        assert!(yaml.contains("catch-all names"));
        assert!(yaml.contains("limits.timeout must be between 1s and 1h"));
    }
}
