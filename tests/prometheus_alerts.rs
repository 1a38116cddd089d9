//! The chart's alerts and dashboard against a real Prometheus (built by scripts/prometheus.sh, found
//! through `TOOLWARDEN_PROMETHEUS`). Prometheus scrapes a running `toolwarden dev` gateway and a running
//! `toolwarden operator` with the chart's PrometheusRule loaded (rendered by helm, with short windows
//! set through the chart's values); the test causes a denial spike, failing worker starts, a waiting
//! human approval and refused config edits, and sees the matching alerts fire in `/api/v1/alerts`, and
//! no other. Then every query of the chart's Grafana dashboard must parse and return series.
//!
//! The operator runs without a cluster (its API server address answers nothing): it serves /metrics
//! but never holds the leader Lease, which is exactly what ToolwardenOperatorNoLeader says. Its
//! reconcile metrics need a cluster: tests/e2e_prometheus.rs checks them in the e2e tier.

mod gateway_support;
mod prometheus_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_support::*;
use prometheus_support::{Prometheus, chart_dashboard, chart_rules, free_port, scrape_job};
use serde_json::json;

/// Tools whose calls make the metrics the alerts and the dashboard read: one whose worker cannot start
/// (its Secret does not exist), one that outlives its timeout, one whose output is cut.
const EXTRA: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-inventory}
spec:
  description: Reads the inventory with a token from a Secret that does not exist here.
  effect: read
  inputSchema: {type: object, additionalProperties: false}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "print('inventory')"]
  credentials:
    - secretRef: {name: inventory-reader, key: token}
      env: INVENTORY_TOKEN
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: read-slowly}
spec:
  description: Sleeps past its timeout.
  effect: read
  inputSchema: {type: object, additionalProperties: false}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "import time; time.sleep(30)"]
  limits: {timeout: 1s}
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: read-a-lot}
spec:
  description: Prints more than its output cap.
  effect: read
  inputSchema: {type: object, additionalProperties: false}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "print('x' * 20000)"]
  limits: {maxOutputBytes: 1024}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: developers-prometheus-test-tools}
spec:
  subjects: {groups: [developers]}
  tools: {names: [get-inventory, read-slowly, read-a-lot]}
  decision: allow
"#;

/// The chart's alerts with `for:` short enough for a test; the expressions are the chart's. The windows
/// are long enough that an alert still fires when the test checks it, minutes after its cause at worst.
const FAST_ALERTS: &[&str] = &[
    "prometheusRule.alerts.denialSurge.window=2m",
    "prometheusRule.alerts.denialSurge.for=2s",
    "prometheusRule.alerts.denialSurge.perMinute=10",
    "prometheusRule.alerts.workerStartFailures.window=3m",
    "prometheusRule.alerts.workerStartFailures.for=2s",
    "prometheusRule.alerts.workerStartFailures.failures=2",
    "prometheusRule.alerts.approvalsWaiting.maxPendingSeconds=2",
    "prometheusRule.alerts.approvalsWaiting.for=1s",
    "prometheusRule.alerts.configLoadFailing.window=3m",
    "prometheusRule.alerts.configLoadFailing.for=1s",
    "prometheusRule.alerts.operatorNoLeader.for=2s",
    "prometheusRule.alerts.gatewayDown.for=1s",
    "prometheusRule.alerts.gatewayReplicaDown.for=1s",
    "prometheusRule.alerts.operatorDown.for=1s",
];

/// What the alerts are given to fire once their cause happened (the `for:` and a few scrapes and
/// evaluations, with ample slack for a busy machine).
const ALERT_WAIT: Duration = Duration::from_secs(90);

/// Dashboard metrics only an operator reconciling in a cluster produces (tests/e2e_prometheus.rs).
const NEEDS_CLUSTER_OPERATOR: &[&str] = &["toolwarden_reconcile_", "toolwarden_config_written_generation"];

/// `toolwarden operator` with an API server address that answers nothing, killed on drop.
struct Operator {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start() -> Operator {
        let dir = tempfile::tempdir().expect("tempdir");
        // Port 1 on loopback refuses at once: the operator is up, and can never reach a Lease.
        let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: [{name: none, cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}]\n\
             users: [{name: none, user: {token: unused}}]\ncontexts: [{name: none, context: {cluster: none, user: none}}]\ncurrent-context: none\n";
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
            .args(["operator", "--listen", &addr, "--identity", "prometheus-test", "--log-format", "text"])
            .env("KUBECONFIG", dir.path().join("kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("toolwarden operator starts");
        Operator { child, addr, _dir: dir }
    }

    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("toolwarden operator exited with {status}");
            }
            let answer = http().get(format!("http://{}/metrics", self.addr)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "toolwarden operator did not serve /metrics within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a scrape to have seen what just happened (the scrape interval is 1 s).
async fn next_scrape() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_the_charts_alerts_and_answers_every_dashboard_query() {
    let test = "a_real_prometheus_fires_the_charts_alerts_and_answers_every_dashboard_query";
    let Some(binary) = prometheus_support::binary(test) else { return };
    let dev = Dev::start(&[("zz-prometheus-test.yaml", EXTRA)]);
    let mut operator = Operator::start();
    operator.wait_serving().await;

    let rules = chart_rules("toolwarden", FAST_ALERTS);
    let jobs = vec![
        scrape_job("toolwarden-gateway", &[dev.addr.as_str()], "toolwarden"),
        scrape_job("toolwarden-operator", &[operator.addr.as_str()], "toolwarden"),
    ];
    let prometheus = Prometheus::start(&binary, jobs, &rules).await;
    prometheus.wait_targets_up(2).await;
    println!("prometheus: scraping the gateway ({}) and the operator ({}) with the chart's rules", dev.addr, operator.addr);

    let agent = dev.client(DEV_TOKEN).await;
    // Calls that run: worker starts, latency, a timeout, a truncation.
    for _ in 0..3 {
        let ok = call(&agent, "list_notes", json!({})).await;
        assert_ne!(ok.is_error, Some(true), "list_notes: {}", text(&ok));
    }
    let slow = call(&agent, "read_slowly", json!({})).await;
    assert_eq!(slow.is_error, Some(true), "read_slowly must time out: {}", text(&slow));
    let cut = call(&agent, "read_a_lot", json!({})).await;
    assert_ne!(cut.is_error, Some(true), "read_a_lot: {}", text(&cut));

    // A denial spike: one denial seen by a scrape, then a burst.
    let denied = call(&agent, "list_notes", json!({"limit": 1000})).await;
    assert_eq!(code(&denied).as_deref(), Some("argument_rule_failed"), "{}", text(&denied));
    next_scrape().await;
    for _ in 0..60 {
        let denied = call(&agent, "list_notes", json!({"limit": 1000})).await;
        assert_eq!(code(&denied).as_deref(), Some("argument_rule_failed"), "{}", text(&denied));
    }

    // Failing worker starts, each seen by a scrape (increase() needs the counter to move between two).
    for _ in 0..4 {
        let failed = call(&agent, "get_inventory", json!({})).await;
        assert_eq!(failed.is_error, Some(true), "get_inventory must fail to start: {}", text(&failed));
        assert!(text(&failed).contains("inventory-reader"), "the failure names the missing Secret: {}", text(&failed));
        next_scrape().await;
    }

    // A human approval left waiting.
    let parked = call(&agent, "delete_note", json!({"path": "old.md"})).await;
    assert_eq!(code(&parked).as_deref(), Some("approval_required"), "{}", text(&parked));

    // Two refused config edits, a scrape apart.
    for attempt in 0..2 {
        std::fs::write(dev.manifests().join("zz-broken.yaml"), format!("apiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {{name: broken-{attempt}}}\nspec: {{}}\n"))
            .expect("write a broken manifest");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let surge = prometheus.wait_firing("ToolwardenDenialSurge", &[("namespace", "default"), ("severity", "warning")], ALERT_WAIT).await;
    assert!(surge["annotations"]["summary"].as_str().is_some_and(|s| s.contains("default")), "{surge}");
    assert!(surge["annotations"]["runbook_url"].as_str().is_some_and(|s| s.ends_with("#toolwardendenialsurge")), "{surge}");
    let starts = prometheus.wait_firing("ToolwardenWorkerStartFailures", &[("runtime", "local"), ("reason", "missing_credential")], ALERT_WAIT).await;
    assert!(starts["annotations"]["summary"].as_str().is_some_and(|s| s.contains("missing_credential")), "{starts}");
    prometheus.wait_firing("ToolwardenApprovalsWaiting", &[("namespace", "default")], ALERT_WAIT).await;
    prometheus.wait_firing("ToolwardenConfigLoadFailing", &[("namespace", "default"), ("severity", "critical")], ALERT_WAIT).await;
    prometheus.wait_firing("ToolwardenOperatorNoLeader", &[("namespace", "toolwarden")], ALERT_WAIT).await;

    // Nothing else: both targets are up (no down alert even pending), the other thresholds are the
    // chart's defaults and were not reached.
    let mut firing: Vec<String> = prometheus
        .alerts()
        .await
        .iter()
        .filter(|a| a["state"] == "firing" || a["labels"]["alertname"].as_str().is_some_and(|n| n.ends_with("Down")))
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_owned())
        .collect();
    firing.sort();
    firing.dedup();
    assert_eq!(
        firing,
        ["ToolwardenApprovalsWaiting", "ToolwardenConfigLoadFailing", "ToolwardenDenialSurge", "ToolwardenOperatorNoLeader", "ToolwardenWorkerStartFailures"],
        "exactly the alerts whose cause happened fire"
    );
    println!("prometheus: PASS the chart's alerts fired for a denial spike, failing worker starts, a waiting approval, refused config edits and an operator without the Lease, and no other");

    // The dashboard, with the default job names the scrape jobs above use.
    let dashboard = chart_dashboard(&[]);
    let (queries, with_series, exempted) = prometheus.check_dashboard(&dashboard, "5m", |expr| !NEEDS_CLUSTER_OPERATOR.iter().any(|m| expr.contains(m))).await;
    println!(
        "prometheus: PASS all {queries} dashboard queries parse; {with_series} return series; {} use metrics only an operator \
         reconciling in a cluster produces (tests/e2e_prometheus.rs): {exempted:?}",
        exempted.len()
    );
}
