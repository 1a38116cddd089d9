//! The operator's RBAC grants what the controllers call, and no more.

const RBAC: &str = include_str!("../../deploy/rbac/operator.yaml");

fn documents() -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(RBAC).expect("deploy/rbac/operator.yaml parses")
}

/// (apiGroup, resource) → verbs, over every rule of kind `kind`.
fn verbs(kind: &str, group: &str, resource: &str) -> Vec<String> {
    let mut out = Vec::new();
    for doc in documents().iter().filter(|d| d["kind"] == kind) {
        for rule in doc["rules"].as_array().unwrap() {
            let groups: Vec<&str> = rule["apiGroups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
            let resources: Vec<&str> = rule["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            if groups.contains(&group) && resources.contains(&resource) {
                out.extend(rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()));
            }
        }
    }
    out.sort();
    out
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn operator_rbac_grants_exactly_what_the_controllers_call() {
    assert_eq!(verbs("ClusterRole", "toolwarden.dev", "mcptools"), sorted(&["get", "list", "watch"]));
    assert_eq!(verbs("ClusterRole", "toolwarden.dev", "toolpolicies"), sorted(&["get", "list", "watch"]));
    assert_eq!(verbs("ClusterRole", "toolwarden.dev", "mcptools/status"), sorted(&["patch"]));
    assert_eq!(verbs("ClusterRole", "toolwarden.dev", "mcpsessions"), sorted(&["list", "delete"]));
    assert_eq!(verbs("ClusterRole", "toolwarden.dev", "mcpsessions/status"), sorted(&["patch"]));
    let writer = sorted(&["get", "list", "watch", "create", "patch", "delete"]);
    assert_eq!(verbs("ClusterRole", "networking.k8s.io", "networkpolicies"), writer);
    assert_eq!(verbs("ClusterRole", "", "secrets"), writer);
    assert_eq!(verbs("ClusterRole", "", "configmaps"), writer);
    assert_eq!(verbs("ClusterRole", "events.k8s.io", "events"), sorted(&["create", "patch"]));
    assert_eq!(verbs("Role", "coordination.k8s.io", "leases"), sorted(&["get", "create", "update"]));
    assert!(verbs("ClusterRole", "coordination.k8s.io", "leases").is_empty(), "leases only in the operator's namespace");
}

#[test]
fn operator_rbac_has_no_wildcards_and_never_touches_pods() {
    assert!(!RBAC.contains("\"*\""));
    assert!(verbs("ClusterRole", "", "pods").is_empty());
    for doc in documents() {
        if let Some(rules) = doc["rules"].as_array() {
            for rule in rules {
                assert!(rule.get("resourceNames").is_none());
            }
        }
    }
}

#[test]
fn every_rule_says_why() {
    let lines: Vec<&str> = RBAC.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") && lines[..i].iter().rev().take_while(|l| !l.contains("rules:")).count() > 0 {
            assert!(lines[i - 1].trim_start().starts_with('#'), "rule at line {} has no comment", i + 1);
        }
    }
}
