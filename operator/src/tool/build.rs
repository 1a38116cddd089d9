//! The NetworkPolicy of one McpTool, as plain data. No client: every rule is unit-tested below.
//!
//! It selects the tool's worker pods (labels the gateway's pod builder sets) and allows exactly:
//! ingress from gateway pods on the worker port; egress to each declared CIDR and its ports (broad
//! CIDRs minus the metadata and cluster ranges), plus DNS to the cluster DNS when any egress is
//! declared. No egress declared means no egress at all.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use toolwarden_core::resources::McpTool;

use super::cidr::{METADATA_CIDRS, excepts};
use crate::context::Settings;
use crate::objects::*;

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        match_expressions: None,
    }
}

fn port(protocol: &str, number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { protocol: Some(protocol.into()), port: Some(IntOrString::Int(number)), end_port: None }
}

/// The pods of every tool's workers in a namespace.
pub fn worker_selector() -> LabelSelector {
    selector(&[(LABEL_APP_NAME, APP_NAME), (LABEL_COMPONENT, COMPONENT_WORKER)])
}

/// Ingress from the gateway pods (in the gateway namespace) to the worker port, and nothing else.
fn gateway_ingress(settings: &Settings) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, &settings.gateway_namespace)])),
            pod_selector: Some(selector(&[(LABEL_APP_NAME, APP_NAME), (LABEL_COMPONENT, COMPONENT_GATEWAY)])),
            ip_block: None,
        }]),
        ports: Some(vec![port("TCP", settings.worker_port)]),
    }
}

/// Desired NetworkPolicy `toolwarden-tool-<name>`. Fails only on an egress CIDR that does not parse
/// (the tool is then not accepted, and its workers stay under the namespace baseline: no network).
pub fn build_network_policy(tool: &McpTool, settings: &Settings) -> Result<NetworkPolicy, String> {
    let resource = tool.name_any();
    let mut protected: Vec<String> = METADATA_CIDRS.iter().map(|c| (*c).to_owned()).collect();
    protected.extend(settings.cluster_cidrs.iter().cloned());
    let listed: Vec<&str> = tool.spec.egress.iter().map(|e| e.cidr.as_str()).collect();

    let mut egress = Vec::new();
    for (i, rule) in tool.spec.egress.iter().enumerate() {
        let except = excepts(&rule.cidr, &listed, &protected).map_err(|e| format!("spec.egress[{i}].cidr: {e}"))?;
        if let Some(p) = rule.ports.iter().find(|p| **p == 0) {
            return Err(format!("spec.egress[{i}].ports: {p} is not a port (1 to 65535)"));
        }
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock { cidr: rule.cidr.trim().to_owned(), except: (!except.is_empty()).then_some(except) }),
                namespace_selector: None,
                pod_selector: None,
            }]),
            ports: (!rule.ports.is_empty()).then(|| rule.ports.iter().map(|p| port("TCP", i32::from(*p))).collect()),
        });
    }
    if !egress.is_empty() {
        let dns_labels: Vec<(&str, &str)> = settings.dns_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, &settings.dns_namespace)])),
                pod_selector: Some(selector(&dns_labels)),
                ip_block: None,
            }]),
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        });
    }

    Ok(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(tool_object_name(&resource)),
            namespace: tool.namespace(),
            labels: Some(tool_object_labels(&resource, "network-policy")),
            owner_references: tool_owner(tool).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&[
                (LABEL_APP_NAME, APP_NAME),
                (LABEL_COMPONENT, COMPONENT_WORKER),
                (LABEL_TOOL, &resource),
            ])),
            ingress: Some(vec![gateway_ingress(settings)]),
            // With `Egress` among the policy types, no rules denies all egress. An empty list must be left
            // out, not sent: the API server stores it as absent, so `[]` would change the object on every
            // apply (a new generation, a watch event, another reconcile: a write loop).
            egress: (!egress.is_empty()).then_some(egress),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
        }),
    })
}

/// The namespace baseline: every worker pod is isolated (no ingress, no egress) unless its tool's own
/// NetworkPolicy admits something. It covers pods of a tool that is invalid, deleted, or not yet
/// reconciled, which would otherwise have no policy at all (and so the network wide open).
pub fn build_baseline_policy(namespace: &str) -> NetworkPolicy {
    let labels = BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_COMPONENT.to_owned(), "network-policy".to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ]);
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(BASELINE_POLICY_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(worker_selector()),
            // No rules under both policy types: nothing in, nothing out (absent, not `[]`: see above).
            ingress: None,
            egress: None,
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub fn tool(spec_extra: Value) -> McpTool {
        let mut spec = json!({
            "description": "Fetches a page.",
            "effect": "read",
            "inputSchema": {"type": "object", "properties": {"url": {"type": "string"}}},
            "runtime": {"http": {"url": "https://example.com/{url}"}}
        });
        spec.as_object_mut().unwrap().extend(spec_extra.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool",
            "metadata": {"name": "fetch-page", "namespace": "team-a", "uid": "uid-1", "generation": 3},
            "spec": spec
        }))
        .unwrap()
    }

    fn policy(tool: &McpTool) -> Value {
        serde_json::to_value(build_network_policy(tool, &Settings::default()).unwrap()).unwrap()
    }

    #[test]
    fn tool_without_egress_gets_no_egress_at_all() {
        let np = policy(&tool(json!({})));
        assert!(np["spec"].get("egress").is_none(), "absent, as the API server stores it: {np}");
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    }

    #[test]
    fn policy_selects_only_this_tools_worker_pods() {
        let np = policy(&tool(json!({})));
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"],
            json!({"app.kubernetes.io/name": "toolwarden", "app.kubernetes.io/component": "worker", "toolwarden.dev/tool": "fetch-page"})
        );
        assert_eq!(np["metadata"]["name"], "toolwarden-tool-fetch-page");
        assert_eq!(np["metadata"]["namespace"], "team-a");
    }

    #[test]
    fn ingress_only_from_gateway_pods_in_the_gateway_namespace_on_the_worker_port() {
        let np = policy(&tool(json!({})));
        assert_eq!(
            np["spec"]["ingress"],
            json!([{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "toolwarden"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "toolwarden", "app.kubernetes.io/component": "gateway"}}
                }],
                "ports": [{"protocol": "TCP", "port": 8443}]
            }])
        );
    }

    #[test]
    fn declared_cidr_and_ports_become_one_egress_rule_plus_dns() {
        let np = policy(&tool(json!({"egress": [{"cidr": "140.82.112.0/20", "ports": [443, 22]}]})));
        let egress = np["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2);
        assert_eq!(
            egress[0],
            json!({"to": [{"ipBlock": {"cidr": "140.82.112.0/20"}}],
                   "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 22}]})
        );
        assert_eq!(
            egress[1],
            json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                   "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
        );
    }

    #[test]
    fn cidr_without_ports_allows_every_port() {
        let np = policy(&tool(json!({"egress": [{"cidr": "140.82.112.0/20"}]})));
        assert!(np["spec"]["egress"][0].get("ports").is_none());
    }

    #[test]
    fn broad_cidr_excepts_metadata_and_cluster_ranges() {
        let np = policy(&tool(json!({"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]})));
        assert_eq!(
            np["spec"]["egress"][0]["to"][0]["ipBlock"],
            json!({"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]})
        );
    }

    #[test]
    fn configured_cluster_cidrs_replace_the_defaults() {
        let settings = Settings { cluster_cidrs: vec!["10.96.0.0/12".into()], ..Settings::default() };
        let np = serde_json::to_value(build_network_policy(&tool(json!({"egress": [{"cidr": "0.0.0.0/0"}]})), &settings).unwrap()).unwrap();
        assert_eq!(np["spec"]["egress"][0]["to"][0]["ipBlock"]["except"], json!(["169.254.0.0/16", "10.96.0.0/12"]));
    }

    #[test]
    fn explicitly_listed_metadata_range_is_kept_open() {
        let np = policy(&tool(json!({"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}, {"cidr": "169.254.0.0/16", "ports": [80]}]})));
        let except = &np["spec"]["egress"][0]["to"][0]["ipBlock"]["except"];
        assert!(!except.as_array().unwrap().contains(&json!("169.254.0.0/16")), "{except}");
        assert_eq!(np["spec"]["egress"][1]["to"][0]["ipBlock"], json!({"cidr": "169.254.0.0/16"}));
    }

    #[test]
    fn invalid_cidr_is_refused_with_the_field() {
        let e = build_network_policy(&tool(json!({"egress": [{"cidr": "10.0.0.0/40"}]})), &Settings::default()).unwrap_err();
        assert!(e.starts_with("spec.egress[0].cidr:"), "{e}");
    }

    #[test]
    fn owned_by_the_tool_and_labelled_for_the_operator() {
        let np = policy(&tool(json!({})));
        assert_eq!(
            np["metadata"]["ownerReferences"],
            json!([{"apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool", "name": "fetch-page", "uid": "uid-1", "controller": true}])
        );
        assert_eq!(np["metadata"]["labels"]["app.kubernetes.io/managed-by"], "toolwarden-operator");
        assert_eq!(np["metadata"]["labels"]["toolwarden.dev/tool"], "fetch-page");
    }

    #[test]
    fn baseline_isolates_every_worker_pod() {
        let np = serde_json::to_value(build_baseline_policy("team-a")).unwrap();
        assert!(np["spec"].get("ingress").is_none() && np["spec"].get("egress").is_none(), "{np}");
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["podSelector"]["matchLabels"], json!({"app.kubernetes.io/name": "toolwarden", "app.kubernetes.io/component": "worker"}));
    }
}
