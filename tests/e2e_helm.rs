//! e2e: the chart on a real cluster, as a platform team uses it (scripts/e2e.sh loads the images the
//! chart names by default, built FROM scratch by deploy/build-images.sh).
//!
//! `helm install` into a namespace enforcing Pod Security `restricted`: the operator and gateway pods
//! become Ready; tools applied in a tenant namespace are compiled by the operator; an MCP client calls
//! one through the gateway's Service and gets the output from a worker pod; `spec.disabled` reaches the
//! running gateway; `helm upgrade` keeps serving while pods roll; least-privilege RBAC as the API server
//! evaluates it; `helm uninstall` leaves no pod, Secret, NetworkPolicy or ConfigMap of ours behind.

mod e2e_support;
mod gateway_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e_support::{AGENT_TOKEN, HelmRelease, TestNamespace, enabled, helm, items, json_of, kubectl, kubectl_ok, kubectl_stdin, tool_image, wait_for};
use gateway_support::{Client, code, text};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

fn can_i(service_account: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let (_, out) = kubectl(&["auth", "can-i", verb, resource, "-n", namespace, "--as", service_account]);
    out.trim() == "yes"
}

const TENANT_MANIFESTS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-echo}
spec:
  description: Returns its text (an echo).
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}
  outputTrust: trusted
  credentials:
  - {secretRef: {name: echo-credentials, key: token}, env: ECHO_TOKEN}
---
apiVersion: v1
kind: Secret
metadata: {name: echo-credentials}
stringData: {token: e2e-not-a-real-secret}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-may-echo}
spec:
  subjects: {users: [e2e]}
  tools: {names: [get-echo]}
  decision: allow
"#;

async fn connect(url: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(AGENT_TOKEN));
    let info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("e2e-helm", "1.0"));
    rmcp::ServiceExt::serve(info, transport).await.expect("the MCP client connects through the gateway Service")
}

async fn echo(client: &Client, text_arg: &str) -> rmcp::model::CallToolResult {
    let mut params = CallToolRequestParams::new("get_echo");
    params.arguments = json!({"text": text_arg}).as_object().cloned();
    client.call_tool(params).await.expect("tools/call answers")
}

/// Objects of ours in `namespace`: anything a Toolwarden component created or labelled.
fn leftovers(namespace: &str) -> Vec<String> {
    let mut found = Vec::new();
    for kind in ["pods", "secrets", "networkpolicies", "configmaps", "mcpsessions"] {
        for item in items(&json_of(&["get", kind, "-n", namespace, "-o", "json"])) {
            let name = item["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let labels = item["metadata"]["labels"].to_string();
            if name.starts_with("toolwarden-") || labels.contains("toolwarden") || kind == "mcpsessions" {
                found.push(format!("{kind}/{name}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_serves_tools_upgrades_and_uninstalls_cleanly() {
    if !enabled("helm_install_serves_tools_upgrades_and_uninstalls_cleanly") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut release = HelmRelease::install(&["operator.replicas=2"]);
    let tenant_namespace = TestNamespace::create("tw-e2e-tenant");
    let (name, ns, tenant) = (release.name.clone(), release.namespace.0.clone(), tenant_namespace.0.clone());
    let fullname = release.fullname.clone();
    let chart = release.chart.clone();
    // Admitted under Pod Security `restricted`, and Ready.
    let pods = items(&json_of(&["get", "pods", "-n", &ns, "-l", &format!("app.kubernetes.io/instance={name}"), "-o", "json"]));
    assert_eq!(pods.len(), 4, "two gateway and two operator pods: {pods:?}");
    for pod in &pods {
        let ready = e2e_support::is_ready(pod);
        assert!(ready, "pod {} is not Ready: {}", pod["metadata"]["name"], pod["status"]);
    }

    // The operator compiles the tenant's tools; the gateway serves them.
    let manifests = TENANT_MANIFESTS.replace("TOOL_IMAGE", &tool_image());
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant, "-f", "-"], &manifests);
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant, "--for=condition=Ready", "mcptool/get-echo", "--timeout=60s"]);
    let url = release.mcp_url(&tenant);
    let client = wait_for_tools(&url).await;
    let result = echo(&client, "through the Service and a worker pod").await;
    assert_eq!(result.is_error, Some(false), "{}", text(&result));
    assert!(text(&result).contains("through the Service and a worker pod"), "{}", text(&result));
    let workers = items(&json_of(&["get", "pods", "-n", &tenant, "-l", "app.kubernetes.io/component=worker", "-o", "json"]));
    assert_eq!(workers.len(), 1, "one worker pod for the session: {workers:?}");

    // The kill switch: one patch, and the running gateway refuses the tool with the reason.
    let patch = r#"{"spec": {"disabled": true, "disabledReason": "e2e: switched off"}}"#;
    kubectl_ok(&["patch", "mcptool", "get-echo", "-n", &tenant, "--type", "merge", "-p", patch]);
    let patched = Instant::now();
    loop {
        let result = echo(&client, "still there?").await;
        if result.is_error == Some(true) {
            assert_eq!(code(&result).as_deref(), Some("tool_disabled"), "{}", text(&result));
            assert!(text(&result).contains("e2e: switched off"), "{}", text(&result));
            break;
        }
        assert!(patched.elapsed() < Duration::from_secs(20), "the disabled tool still ran 20 s after the patch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("e2e_helm: spec.disabled took effect {} ms after the patch", patched.elapsed().as_millis());
    kubectl_ok(&["patch", "mcptool", "get-echo", "-n", &tenant, "--type", "merge", "-p", r#"{"spec": {"disabled": false}}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while echo(&client, "back").await.is_error != Some(false) {
        assert!(Instant::now() < deadline, "the tool was not enabled again within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `helm upgrade` rolls both Deployments; calls keep being answered all along (a client whose
    // replica goes away opens a new session on another one: rmcp does that on the gateway's 404).
    let upgraded = Arc::new(AtomicBool::new(false));
    let calls = tokio::spawn({
        let (url, upgraded) = (url.clone(), upgraded.clone());
        async move {
            let client = connect(&url).await;
            let (mut answered, mut failed) = (0, Vec::new());
            while !upgraded.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(30), echo(&client, "during the upgrade")).await {
                    Ok(r) if r.is_error == Some(false) => answered += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (answered, failed)
        }
    });
    // The confirm-token key every replica shares was made at install; the upgrade must keep it (tokens
    // handed out before it stay valid).
    let confirm_key = || kubectl_ok(&["get", "secret", &format!("{fullname}-gateway-confirm-key"), "-n", &ns, "-o", "jsonpath={.data.key}"]);
    let key_before = confirm_key();
    assert_eq!(key_before.len(), 88, "64 random characters, base64-encoded: {} bytes", key_before.len());
    helm(&["upgrade", &name, &chart, "--namespace", &ns, "--reuse-values", "--set-string", "gateway.podAnnotations.e2e-rollout=1",
        "--set-string", "operator.podAnnotations.e2e-rollout=1", "--wait", "--timeout", "5m"]);
    upgraded.store(true, Ordering::Relaxed);
    let (answered, failed) = calls.await.unwrap();
    println!("e2e_helm: {answered} calls answered during the upgrade, {} failed", failed.len());
    assert!(failed.is_empty(), "calls failed during helm upgrade: {failed:#?}");
    assert!(answered > 0);
    let after = connect(&url).await;
    assert_eq!(echo(&after, "after the upgrade").await.is_error, Some(false));
    assert!(confirm_key() == key_before, "helm upgrade made a new confirm-token key");

    // Least privilege, as the API server evaluates it.
    let gateway = format!("system:serviceaccount:{ns}:{fullname}-gateway");
    let operator = format!("system:serviceaccount:{ns}:{fullname}-operator");
    assert!(can_i(&gateway, "create", "pods", &tenant), "the gateway must create worker pods");
    assert!(can_i(&gateway, "watch", "mcpsessions.toolwarden.dev", &tenant), "the gateway must watch McpSessions");
    assert!(!can_i(&gateway, "get", "secrets", &tenant), "the gateway must never read Secrets");
    assert!(!can_i(&gateway, "get", "secrets", &ns), "the gateway reads its mounted Secrets (tokens, confirm key) as files only");
    assert!(!can_i(&gateway, "create", "networkpolicies.networking.k8s.io", &tenant), "NetworkPolicies are the operator's");
    assert!(can_i(&operator, "patch", "networkpolicies.networking.k8s.io", &tenant), "the operator writes NetworkPolicies");
    assert!(can_i(&operator, "watch", "mcptools.toolwarden.dev", &tenant), "the operator watches McpTools");
    assert!(can_i(&operator, "update", "leases.coordination.k8s.io", &ns), "the operator elects a leader in its namespace");
    assert!(!can_i(&operator, "update", "leases.coordination.k8s.io", &tenant), "leases only in its own namespace");
    assert!(!can_i(&operator, "create", "pods", &tenant), "the operator never starts pods");
    drop(client);
    drop(after);

    // `helm uninstall` leaves nothing of ours: not in the release namespace, not in the tenant's, not
    // cluster-wide. The tenant's own McpTools, ToolPolicies and Secret stay (they are the user's).
    helm(&["uninstall", &name, "--namespace", &ns, "--wait", "--timeout", "3m"]);
    release.installed = false;
    wait_for("nothing of ours left in the release namespace", Duration::from_secs(120), || leftovers(&ns).is_empty().then_some(()));
    let left = wait_for("nothing of ours left in the tenant namespace", Duration::from_secs(120), || {
        let left = leftovers(&tenant);
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
    for object in [format!("clusterrole/{fullname}-gateway"), format!("clusterrole/{fullname}-operator"),
        format!("clusterrolebinding/{fullname}-gateway"), format!("clusterrolebinding/{fullname}-operator")] {
        let (exists, _) = kubectl(&["get", &object]);
        assert!(!exists, "{object} survived helm uninstall");
    }
    kubectl_ok(&["get", "mcptool/get-echo", "toolpolicy/e2e-may-echo", "secret/echo-credentials", "-n", &tenant]);
}

/// A client once the gateway lists the tenant's tool (the operator's config may still be on its way).
async fn wait_for_tools(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let client = connect(url).await;
        let tools: Vec<String> = client.list_all_tools().await.map(|t| t.iter().map(|t| t.name.to_string()).collect()).unwrap_or_default();
        if tools == ["get_echo"] {
            return client;
        }
        assert!(Instant::now() < deadline, "the gateway did not list get_echo within 60 s (it lists {tools:?})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

