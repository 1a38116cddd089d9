//! CRD YAML generated from the resource types. `crds/` holds the same text; a test fails on drift.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, ValidationRule,
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
    root.x_kubernetes_validations = Some(
        names::admission_rules()
            .into_iter()
            .map(|(rule, message)| ValidationRule { rule, message: Some(message), ..Default::default() })
            .collect(),
    );
    vec![tool, ToolPolicy::crd(), McpSession::crd()]
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
