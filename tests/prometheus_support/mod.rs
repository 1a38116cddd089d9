//! A real Prometheus server for the tests: the binary scripts/prometheus.sh builds (found through
//! `TOOLWARDEN_PROMETHEUS`), the chart's alert rules and dashboard rendered with helm, and the HTTP API
//! (`/api/v1/query`, `/api/v1/alerts`, `/api/v1/targets`, `/api/v1/label/.../values`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The Prometheus binary, or `None` (with a loud line) when the test should skip. It never skips when
/// `TOOLWARDEN_E2E_REQUIRED` is set: a missing binary is then a failure.
pub fn binary(test: &str) -> Option<PathBuf> {
    match std::env::var_os("TOOLWARDEN_PROMETHEUS") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{test}: TOOLWARDEN_PROMETHEUS={} is not a file (scripts/prometheus.sh build makes it)", path.display());
            Some(path)
        }
        None => {
            assert!(
                std::env::var_os("TOOLWARDEN_E2E_REQUIRED").is_none(),
                "{test}: TOOLWARDEN_E2E_REQUIRED is set but TOOLWARDEN_PROMETHEUS is not: run `scripts/prometheus.sh test` \
                 (or `eval \"$(scripts/prometheus.sh env)\"` first)"
            );
            eprintln!("skipping {test}: TOOLWARDEN_PROMETHEUS is not set (`scripts/prometheus.sh test` builds Prometheus and runs it)");
            None
        }
    }
}

fn helm() -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/helm");
    if local.exists() { local } else { PathBuf::from("helm") }
}

/// `helm template` of one template of charts/toolwarden (release `toolwarden` in `namespace`) with
/// `--set` values, parsed.
pub fn render(namespace: &str, template: &str, sets: &[&str]) -> Value {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/toolwarden");
    let mut command = Command::new(helm());
    command.args(["template", "toolwarden"]).arg(&chart).args(["--namespace", namespace, "--show-only", template]);
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output().unwrap_or_else(|e| panic!("cannot run helm (scripts/install-tools.sh installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "helm template {template} {sets:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("helm rendered {template} as YAML that does not parse ({e}):\n{text}"))
}

/// The chart's PrometheusRule for a release in `namespace` as a Prometheus rule file (its `spec`: the
/// rule groups), in JSON, which Prometheus reads as YAML.
pub fn chart_rules(namespace: &str, sets: &[&str]) -> String {
    let mut all = vec!["prometheusRule.enabled=true"];
    all.extend_from_slice(sets);
    let rule = render(namespace, "templates/prometheusrule.yaml", &all);
    assert_eq!(rule["kind"], "PrometheusRule", "{rule}");
    serde_json::to_string_pretty(&rule["spec"]).expect("JSON")
}

/// The chart's Grafana dashboard, from its ConfigMap.
pub fn chart_dashboard(sets: &[&str]) -> Value {
    let mut all = vec!["grafanaDashboard.enabled=true"];
    all.extend_from_slice(sets);
    let map = render("toolwarden", "templates/grafana-dashboard.yaml", &all);
    let text = map["data"]["toolwarden.json"].as_str().unwrap_or_else(|| panic!("the dashboard ConfigMap has no toolwarden.json: {map}"));
    serde_json::from_str(text).expect("the dashboard is JSON")
}

/// A free loopback port (bound then released: a small race that the tests accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A scrape job of the Prometheus config: `job_name`, targets, and the labels the chart's
/// ServiceMonitor gives its targets (`namespace`).
pub fn scrape_job(job: &str, targets: &[&str], namespace: &str) -> Value {
    // honor_labels as the chart's ServiceMonitor: the gateway's own `namespace` label (the tenant) wins.
    json!({
        "job_name": job,
        "honor_labels": true,
        "static_configs": [{"targets": targets, "labels": {"namespace": namespace}}],
    })
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Prometheus {
    /// Starts `binary` scraping `jobs` every second, evaluating `rules` (a rule file) every second.
    pub async fn start(binary: &Path, jobs: Vec<Value>, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.yaml"), rules).expect("write rules");
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [dir.path().join("rules.yaml")],
            "scrape_configs": jobs,
        });
        std::fs::write(dir.path().join("prometheus.yml"), config.to_string()).expect("write config");
        let port = free_port();
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let mut prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), dir, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log_text());
            }
            let ready = http().get(format!("{}/-/ready", prometheus.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus was not ready within 60 s:\n{}", prometheus.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The rule file must have loaded: a broken one leaves Prometheus up with no rules.
        let groups = prometheus.api("/api/v1/rules", &[]).await.expect("/api/v1/rules answers");
        assert!(groups["groups"].as_array().is_some_and(|g| !g.is_empty()), "prometheus loaded no rule group: {groups}\n{}", prometheus.log_text());
        prometheus
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// GET `path` of the HTTP API: its `data` when `status` is `success`, else the error it gave.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query).map_err(|e| format!("{path}: {e}"))?;
        let response = http().get(url).send().await.map_err(|e| format!("{path}: {e}"))?;
        let body: Value = response.json().await.map_err(|e| format!("{path}: the answer is not JSON: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"].as_str().unwrap_or("?"), body["error"].as_str().unwrap_or("?")))
        }
    }

    /// An instant query: its result vector (or scalar as a one-element list).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            _ => vec![data["result"].clone()],
        })
    }

    /// The alerts Prometheus holds now (pending and firing), from `/api/v1/alerts`.
    pub async fn alerts(&self) -> Vec<Value> {
        let data = self.api("/api/v1/alerts", &[]).await.expect("/api/v1/alerts answers");
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (bounded) until every target is up; returns the active targets.
    pub async fn wait_targets_up(&self, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let data = self.api("/api/v1/targets", &[]).await.expect("/api/v1/targets answers");
            let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
            if targets.len() == want && targets.iter().all(|t| t["health"] == "up") {
                return targets;
            }
            assert!(Instant::now() < deadline, "targets not all up within 60 s: {targets:#?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits (bounded by `limit`) until alert `name` is firing with `labels`; returns it.
    pub async fn wait_firing(&self, name: &str, labels: &[(&str, &str)], limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let alerts = self.alerts().await;
            let found = alerts.iter().find(|a| {
                a["labels"]["alertname"] == name && a["state"] == "firing" && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            });
            if let Some(alert) = found {
                println!("prometheus: {name} {labels:?} firing (waited {:.1} s for it)", started.elapsed().as_secs_f64());
                return alert.clone();
            }
            assert!(started.elapsed() < limit, "{name} {labels:?} did not fire within {limit:?}; alerts now: {alerts:#?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Prometheus {
    /// Runs every query of `dashboard` (Grafana's variables replaced, `$__rate_interval` by
    /// `rate_interval`): each must parse, and each for which `required(expr)` holds must return series.
    /// Returns (queries, queries with series, panels of the empty ones that were not required).
    pub async fn check_dashboard(&self, dashboard: &Value, rate_interval: &str, required: impl Fn(&str) -> bool) -> (usize, usize, Vec<String>) {
        let queries = dashboard_queries(dashboard, rate_interval);
        assert!(queries.len() >= 20, "the dashboard has only {} queries", queries.len());
        let (mut with_series, mut exempted) = (0, Vec::new());
        for (panel, expr) in &queries {
            let series = match label_values(expr) {
                Some((selector, label)) => {
                    let values = self.api(&format!("/api/v1/label/{label}/values"), &[("match[]", selector.as_str())]).await;
                    values.unwrap_or_else(|e| panic!("{panel}: `{expr}` is refused: {e}")).as_array().map_or(0, Vec::len)
                }
                None => self.query(expr).await.unwrap_or_else(|e| panic!("{panel}: `{expr}` is refused: {e}")).len(),
            };
            if series > 0 {
                with_series += 1;
            } else if required(expr) {
                panic!("{panel}: `{expr}` returns no series although the running components produce its metrics");
            } else {
                exempted.push(panel.clone());
            }
        }
        (queries.len(), with_series, exempted)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

/// Every query of `dashboard` (panel targets and `label_values` variables), with Grafana's variables
/// replaced as Grafana would for "All" namespaces: `(panel title, expr)`.
pub fn dashboard_queries(dashboard: &Value, rate_interval: &str) -> Vec<(String, String)> {
    let constants: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "constant")
        .map(|v| (v["name"].as_str().expect("name").to_owned(), v["query"].as_str().expect("query").to_owned()))
        .collect();
    let substitute = |expr: &str| {
        let mut out = expr.replace("$__rate_interval", rate_interval).replace("$namespace", ".*");
        for (name, value) in &constants {
            out = out.replace(&format!("${name}"), value);
        }
        out
    };
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((panel["title"].as_str().unwrap_or("?").to_owned(), substitute(expr)));
        }
    }
    for var in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if var["type"] == "query" {
            let query = var["query"]["query"].as_str().or(var["query"].as_str()).expect("variable query");
            queries.push((format!("variable {}", var["name"].as_str().unwrap_or("?")), substitute(query)));
        }
    }
    queries
}

/// `label_values(SELECTOR, LABEL)` (a Grafana variable query) as (selector, label).
pub fn label_values(query: &str) -> Option<(String, String)> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_owned(), label.trim().to_owned()))
}
