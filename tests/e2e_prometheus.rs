//! e2e: a real Prometheus (scripts/prometheus.sh, `TOOLWARDEN_PROMETHEUS`) scrapes the chart's gateway
//! and operator on a real cluster through their metrics Services, with the chart's alert rules loaded.
//! What tests/prometheus_alerts.rs cannot see without a cluster: the operator holds the Lease and
//! reconciles, the gateway applies the generation the operator wrote (no stale config), every
//! dashboard query returns series (reconciles and config staleness included), and reconcile errors
//! (a tenant whose ResourceQuota forbids NetworkPolicies) fire ToolwardenReconcileErrors.

mod e2e_support;
mod prometheus_support;

use std::time::{Duration, Instant};

use e2e_support::{HelmRelease, TestNamespace, enabled, kubectl_ok, kubectl_stdin, tool_image, wait_for};
use prometheus_support::{Prometheus, chart_dashboard, chart_rules, scrape_job};

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
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-may-echo}
spec:
  subjects: {users: [e2e]}
  tools: {names: [get-echo]}
  decision: allow
"#;

/// No NetworkPolicy may be created here: every reconcile of a tool fails with 403 (exceeded quota).
const NO_NETWORK_POLICIES: &str = r#"
apiVersion: v1
kind: ResourceQuota
metadata: {name: no-network-policies}
spec:
  hard: {count/networkpolicies.networking.k8s.io: "0"}
"#;

const FAST_ALERTS: &[&str] = &[
    "prometheusRule.alerts.reconcileErrors.window=2m",
    "prometheusRule.alerts.reconcileErrors.errors=2",
    "prometheusRule.alerts.reconcileErrors.for=1s",
    "prometheusRule.alerts.configStale.for=5s",
    "prometheusRule.alerts.gatewayDown.for=1s",
    "prometheusRule.alerts.operatorDown.for=1s",
    "prometheusRule.alerts.operatorNoLeader.for=1s",
];

/// Dashboard metrics the operator, and the config flow from operator to gateway, produce with no call.
const OPERATOR_SIDE: &[&str] = &[
    "toolwarden_reconcile_total",
    "toolwarden_reconcile_duration_seconds",
    "toolwarden_config_written_generation",
    "toolwarden_config_generation",
    "toolwarden_config_last_load_timestamp_seconds",
    "toolwarden_operator_leader",
    "toolwarden_sessions_active",
    "up{",
];

fn service_ip(release: &HelmRelease, service: &str) -> String {
    kubectl_ok(&["get", "service", &format!("{}-{service}", release.fullname), "-n", &release.namespace.0, "-o", "jsonpath={.spec.clusterIP}"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_chart_on_a_cluster_and_sees_reconciles_config_generations_and_reconcile_errors() {
    let test = "prometheus_scrapes_the_chart_on_a_cluster_and_sees_reconciles_config_generations_and_reconcile_errors";
    if !enabled(test) {
        return;
    }
    let Some(binary) = prometheus_support::binary(test) else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let release = HelmRelease::install(&["gateway.replicas=1"]);
    let ns = release.namespace.0.clone();
    let tenant = TestNamespace::create("tw-e2e-prom");
    let manifests = TENANT_MANIFESTS.replace("TOOL_IMAGE", &tool_image());
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant.0, "-f", "-"], &manifests);
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant.0, "--for=condition=Ready", "mcptool/get-echo", "--timeout=120s"]);

    // The Services the chart's ServiceMonitors select (this machine routes to Service addresses).
    let gateway = format!("{}:9090", service_ip(&release, "gateway-metrics"));
    let operator = format!("{}:8081", service_ip(&release, "operator"));
    let jobs = vec![scrape_job("toolwarden-gateway", &[gateway.as_str()], &ns), scrape_job("toolwarden-operator", &[operator.as_str()], &ns)];
    let prometheus = Prometheus::start(&binary, jobs, &chart_rules(&ns, FAST_ALERTS)).await;
    prometheus.wait_targets_up(2).await;

    // The operator leads and wrote the tenant's config; the gateway applies that generation.
    let tenant_selector = format!("namespace=\"{}\"", tenant.0);
    let in_step = format!(
        "max by (namespace) (toolwarden_config_written_generation{{job=\"toolwarden-operator\", {tenant_selector}}}) \
         - on (namespace) min by (namespace) (toolwarden_config_generation{{job=\"toolwarden-gateway\", {tenant_selector}}}) == 0"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = prometheus.query("max(toolwarden_operator_leader{job=\"toolwarden-operator\"}) == 1").await.expect("query");
        let same = prometheus.query(&in_step).await.expect("query");
        if !leader.is_empty() && !same.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "within 60 s: leader {leader:?}, gateway at the written generation {same:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reconciles = prometheus.query("sum by (controller) (toolwarden_reconcile_total{job=\"toolwarden-operator\", result=\"success\"}) > 0").await.expect("query");
    assert!(!reconciles.is_empty(), "no successful reconcile counted");
    println!("e2e_prometheus: PASS the operator leads and reconciled; the gateway applies the generation it wrote");

    // Healthy: after several evaluations with `for: 1s`, no down, no-leader or stale-config alert.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let unhealthy: Vec<_> = prometheus
        .alerts()
        .await
        .into_iter()
        .filter(|a| {
            let name = a["labels"]["alertname"].as_str().unwrap_or_default();
            name.ends_with("Down") || name == "ToolwardenOperatorNoLeader" || name == "ToolwardenGatewayConfigStale"
        })
        .collect();
    assert!(unhealthy.is_empty(), "a healthy install raises {unhealthy:#?}");

    // Every dashboard query parses; those on what the operator and the config flow produce return
    // series (the call, denial, approval and worker queries are proven by tests/prometheus_alerts.rs;
    // no call is made here). Reconcile errors: a healthy operator has none yet.
    let dashboard = chart_dashboard(&[]);
    let (queries, with_series, empty) = prometheus.check_dashboard(&dashboard, "5m", |expr| OPERATOR_SIDE.iter().any(|m| expr.contains(m))).await;
    println!("e2e_prometheus: PASS all {queries} dashboard queries parse; {with_series} return series; empty without calls or errors: {empty:?}");

    // A fault: a tenant where no NetworkPolicy may be created. Each reconcile of its tool fails (403).
    let quota_tenant = TestNamespace::create("tw-e2e-prom-quota");
    let (ok, out) = kubectl_stdin(&["apply", "-n", &quota_tenant.0, "-f", "-"], NO_NETWORK_POLICIES);
    assert!(ok, "{out}");
    wait_for("the ResourceQuota's status", Duration::from_secs(60), || {
        let hard = kubectl_ok(&["get", "resourcequota", "no-network-policies", "-n", &quota_tenant.0, "-o", "jsonpath={.status.hard}"]);
        (!hard.trim().is_empty()).then_some(())
    });
    let (ok, out) = kubectl_stdin(&["apply", "-n", &quota_tenant.0, "-f", "-"], &manifests);
    assert!(ok, "{out}");
    let alert = prometheus.wait_firing("ToolwardenReconcileErrors", &[("severity", "warning")], Duration::from_secs(180)).await;
    println!("e2e_prometheus: PASS ToolwardenReconcileErrors fired for controller {}", alert["labels"]["controller"]);
    let errors = prometheus
        .query("sum by (controller, error) (toolwarden_reconcile_errors_total{job=\"toolwarden-operator\"}) > 0")
        .await
        .expect("query");
    let kinds: Vec<String> = errors.iter().map(|s| format!("{}/{}", s["metric"]["controller"], s["metric"]["error"])).collect();
    println!("e2e_prometheus: reconcile errors by controller/kind: {kinds:?} (a quota refusal is HTTP 403: `forbidden`)");
    prometheus.check_dashboard(&dashboard, "5m", |expr| OPERATOR_SIDE.iter().any(|m| expr.contains(m)) || expr.contains("toolwarden_reconcile_errors_total")).await;
    println!("e2e_prometheus: PASS the reconcile error queries of the dashboard return series");
}
