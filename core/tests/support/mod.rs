//! Helpers shared by core's integration tests: manifests from inline YAML.
#![allow(dead_code)] // each test file uses a subset

use std::path::Path;

use toolwarden_core::compiler::{CompileErrors, compile_manifests};
use toolwarden_core::manifest::load_str;
use toolwarden_core::policy::Engine;

/// Compiles inline manifests into the `default` namespace's engine.
pub fn engine(yaml: &str) -> Engine {
    let manifests = load_str(yaml, Path::new("inline.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let (mut configs, _) = compile_manifests(&manifests).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(configs.remove("default").expect("default namespace")).unwrap()
}

/// The compile errors of inline manifests (which must load).
pub fn compile_errors(yaml: &str) -> CompileErrors {
    let manifests = load_str(yaml, Path::new("inline.yaml")).unwrap_or_else(|e| panic!("{e}"));
    compile_manifests(&manifests).map(|_| ()).expect_err("expected compile errors")
}

/// An McpTool with an exec runtime; `extra` is appended to its spec.
pub fn tool(name: &str, effect: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {{name: {name}}}
spec:
  description: A test tool.
  effect: {effect}
  inputSchema:
    type: object
    properties:
      path: {{type: string}}
      title: {{type: string}}
      count: {{type: integer}}
  runtime: {{exec: {{image: busybox, command: [/bin/true]}}}}
{extra}
"#
    )
}

/// A ToolPolicy; `spec` is its spec body, indented two spaces.
pub fn policy(name: &str, spec: &str) -> String {
    format!("---\napiVersion: toolwarden.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
}
