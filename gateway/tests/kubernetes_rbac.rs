//! The gateway's RBAC grants what the Kubernetes runtime calls, and nothing on Secrets.

const RBAC: &str = include_str!("../../deploy/rbac/gateway.yaml");

fn rules() -> Vec<(String, String)> {
    // (resources line, verbs line) pairs, in order: the file keeps each rule as three short lines.
    let lines: Vec<&str> = RBAC.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0].starts_with("resources:") && w[1].starts_with("verbs:"))
        .map(|w| (w[0].to_owned(), w[1].to_owned()))
        .collect()
}

#[test]
fn gateway_rbac_never_mentions_secrets() {
    for (resources, _) in rules() {
        assert!(!resources.contains("secrets"), "{resources}");
    }
    assert!(!RBAC.contains("\"*\""), "no wildcards");
}

#[test]
fn gateway_rbac_grants_what_the_runtime_calls() {
    let rules = rules();
    let verbs = |resource: &str| {
        rules.iter().find(|(r, _)| r.contains(&format!("\"{resource}\""))).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    for verb in ["create", "get", "list", "watch", "patch", "delete", "deletecollection"] {
        assert!(verbs("pods").contains(&format!("\"{verb}\"")), "pods {verb}");
    }
    for verb in ["create", "get", "list", "watch", "delete"] {
        assert!(verbs("mcpsessions").contains(&format!("\"{verb}\"")), "mcpsessions {verb}");
    }
    assert!(verbs("mcpsessions/status").contains("\"patch\""));
    assert!(verbs("mcpsessions/status").contains("\"update\""));
    assert_eq!(verbs("configmaps"), r#"verbs: ["get", "list", "watch"]"#);
    assert_eq!(verbs("tokenreviews"), r#"verbs: ["create"]"#);
    assert!(verbs("events").contains("\"create\""));
}
