//! The Helm chart ships the CRDs as copies of `crds/` (Helm installs `charts/toolwarden/crds/` before
//! anything else). A copy that drifts would install an old schema, so this test fails when the two
//! directories differ in file names or contents. Fix: `cp crds/*.yaml charts/toolwarden/crds/`.

use std::collections::BTreeMap;
use std::path::Path;

fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            files.insert(name, bytes);
        }
    }
    files
}

#[test]
fn chart_crds_are_identical_to_generated_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = yaml_files(&root.join("crds"));
    let chart = yaml_files(&root.join("charts/toolwarden/crds"));
    assert!(!generated.is_empty(), "crds/ holds no YAML files");

    let generated_names: Vec<_> = generated.keys().collect();
    let chart_names: Vec<_> = chart.keys().collect();
    assert_eq!(
        chart_names, generated_names,
        "charts/toolwarden/crds/ and crds/ hold different files; run `cp crds/*.yaml charts/toolwarden/crds/` \
         (and remove files no longer in crds/)"
    );
    for (name, bytes) in &generated {
        assert!(
            chart[name] == *bytes,
            "charts/toolwarden/crds/{name} differs from crds/{name}; run `cp crds/*.yaml charts/toolwarden/crds/`"
        );
    }
}

#[test]
fn chart_crds_install_every_toolwarden_kind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart = yaml_files(&root.join("charts/toolwarden/crds"));
    let all: String = chart.values().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    for kind in ["McpTool", "ToolPolicy", "McpSession"] {
        assert!(all.contains(&format!("kind: {kind}\n")), "the chart installs no CRD for {kind}");
    }
}
