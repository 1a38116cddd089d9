//! The CRDs' admission-time CEL rules, run client-side with kube's CEL validator: the examples pass,
//! and each kind of bad object is refused with its message — as the API server would at `kubectl apply`.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use serde_json::{Value, json};
use toolwarden_core::crdgen::crds;

fn schema(kind: &str) -> Value {
    let crd: CustomResourceDefinition = crds().into_iter().find(|c| c.spec.names.kind == kind).unwrap();
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

fn admit(object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap();
    Validator::new().validate(&schema(kind), object, None).map_err(|e| format!("{e:?}"))
}

fn example_objects() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut objects = Vec::new();
    for file in ["tools.yaml", "policies.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        objects.extend(serde_saphyr::from_multiple::<Value>(&text).unwrap().into_iter().filter(|v| !v.is_null()));
    }
    objects
}

#[test]
fn examples_pass_admission() {
    let objects = example_objects();
    assert!(objects.len() > 10);
    for object in &objects {
        admit(object).unwrap_or_else(|e| panic!("{}: {e}", object["metadata"]["name"]));
    }
}

fn tool(name: &str) -> Value {
    json!({
        "apiVersion": "toolwarden.dev/v1alpha1",
        "kind": "McpTool",
        "metadata": {"name": name},
        "spec": {
            "description": "d",
            "effect": "write",
            "inputSchema": {"type": "object"},
            "runtime": {"exec": {"image": "busybox", "command": ["/bin/true"]}},
        }
    })
}

#[test]
fn bad_tools_are_refused_at_admission_with_a_reason() {
    let cases: Vec<(Value, &str)> = vec![
        (tool("system-action"), "catch-all"),
        (tool("do-stuff"), "catch-all"),
        (tool("execute"), "catch-all"),
        ({ let mut t = tool("update-branch"); t["spec"]["effect"] = json!("destructive"); t }, "destructive tool's name"),
        ({ let mut t = tool("weather"); t["spec"]["effect"] = json!("read"); t }, "read verb"),
        (tool("delete-branch"), "must have effect destructive"),
        ({ let mut t = tool("write-file"); t["spec"]["runtime"]["http"] = json!({"url": "https://x"}); t }, "exactly one of exec, http or mcp"),
        ({ let mut t = tool("write-file"); t["spec"]["runtime"] = json!({}); t }, "exactly one of exec, http or mcp"),
        ({ let mut t = tool("write-file"); t["spec"]["limits"] = json!({"timeout": "2h"}); t }, "between 1s and 1h"),
        ({ let mut t = tool("write-file"); t["spec"]["limits"] = json!({"maxOutputBytes": 99999999}); t }, "maxOutputBytes"),
        ({ let mut t = tool("write-file"); t["spec"]["disabled"] = json!(true); t }, "disabledReason"),
    ];
    assert!(admit(&tool("write-file")).is_ok());
    for (object, fragment) in cases {
        let error = admit(&object).expect_err(&format!("{object} must be refused"));
        assert!(error.contains(fragment), "{}: {error}", object["metadata"]["name"]);
    }
}

#[test]
fn bad_policies_are_refused_at_admission() {
    let policy = |spec: Value| json!({"apiVersion": "toolwarden.dev/v1alpha1", "kind": "ToolPolicy", "metadata": {"name": "p"}, "spec": spec});
    let ok = json!({"subjects": {"groups": ["g"]}, "tools": {"names": ["t"]}, "decision": "allow"});
    assert!(admit(&policy(ok.clone())).is_ok());
    let mut no_subjects = ok.clone();
    no_subjects["subjects"] = json!({});
    assert!(admit(&policy(no_subjects)).unwrap_err().contains("at least one user"));
    let mut two_checks = ok.clone();
    two_checks["arguments"] = json!([{"argument": "a", "prefix": "x", "maxLength": 3}]);
    assert!(admit(&policy(two_checks)).unwrap_err().contains("exactly one of"));
    let mut no_argument = ok;
    no_argument["arguments"] = json!([{"prefix": "x"}]);
    assert!(admit(&policy(no_argument)).unwrap_err().contains("needs `argument`"));
}
