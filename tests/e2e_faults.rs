//! e2e faults on a real cluster: the chart's gateway loses its process in the middle of a call, once by
//! SIGKILL (the kubelet restarts the container) and once by `kubectl delete pod` (SIGTERM, then a new
//! pod). Each time the client's call ends (a broken connection, or an `interrupted` answer), the audit
//! log has the call's decision line and a result line saying how it ended, and no worker pod or
//! McpSession is left behind. After the SIGKILL the session itself continues on the restarted gateway.

mod e2e_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_support::{AGENT_TOKEN, HelmRelease, TestNamespace, audit_lines, enabled, items, json_of, kubectl, kubectl_ok, kubectl_stdin, tool_image, wait_for};
use serde_json::{Value, json};

const MANIFESTS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: check-after}
spec:
  description: Waits the given number of seconds.
  effect: read
  inputSchema: {type: object, properties: {secs: {type: integer}}, required: [secs], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [sh, -c, 'sleep "$1"; echo woke', sh], args: ["{{secs}}"]}
  outputTrust: trusted
  limits: {timeout: 10m}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-may-wait}
spec:
  subjects: {users: [e2e]}
  tools: {names: [check-after]}
  decision: allow
"#;

fn post(url: &str, session: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    e2e_support::mcp_request(url, session, body)
}

async fn open_session(url: &str) -> String {
    e2e_support::open_raw_session(url, &["check_after"]).await
}

/// The one gateway pod of the release that is Ready, and its container's restart count.
fn ready_gateway(release: &HelmRelease) -> (String, u64) {
    ready_gateway_after(release, None)
}

/// [`ready_gateway`], once its container restarted more than `restarts` times (when given).
fn ready_gateway_after(release: &HelmRelease, restarts: Option<u64>) -> (String, u64) {
    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component=gateway", release.name);
    wait_for("one Ready gateway pod", Duration::from_secs(180), || {
        let pods = items(&json_of(&["get", "pods", "-n", &release.namespace.0, "-l", &selector, "-o", "json"]));
        let ready: Vec<_> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| e2e_support::is_ready(p))
            .collect();
        let count = ready.first().map(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0));
        (pods.len() == 1 && ready.len() == 1 && count > restarts).then(|| {
            (ready[0]["metadata"]["name"].as_str().unwrap_or_default().to_owned(), count.unwrap_or(0))
        })
    })
}

fn gateway_log(namespace: &str, pod: &str, previous: bool) -> String {
    let mut args = vec!["logs", "-n", namespace, pod, "-c", "gateway"];
    if previous {
        args.push("--previous");
    }
    kubectl(&args).1
}

/// The decision line of the `check_after` call waiting `secs`, once the gateway `pod` wrote it and the
/// call's worker pod is running.
fn started_call(namespace: &str, pod: &str, tenant: &str, secs: u64) -> Value {
    let decision = wait_for("the call's decision line", Duration::from_secs(60), || {
        audit_lines(&gateway_log(namespace, pod, false))
            .into_iter()
            .find(|l| l["event"] == "decision" && l["tool"] == "check_after" && l["arguments"]["secs"] == json!(secs))
    });
    wait_for("the call's worker pod runs", Duration::from_secs(120), || {
        let workers = items(&json_of(&["get", "pods", "-n", tenant, "-l", "toolwarden.dev/tool=check-after", "-o", "json"]));
        workers.iter().any(|p| p["status"]["phase"] == "Running").then_some(())
    });
    // The worker is Running; give the call a moment to reach it.
    std::thread::sleep(Duration::from_secs(2));
    decision
}

fn worker_pods(tenant: &str) -> Vec<String> {
    let pods = items(&json_of(&["get", "pods", "-n", tenant, "-l", "app.kubernetes.io/component=worker", "-o", "json"]));
    pods.iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned)).collect()
}

/// Worker pods and McpSessions in `tenant`, once the lost gateway's are gone.
fn wait_until_nothing_left(tenant: &str, what: &str) {
    wait_for(what, Duration::from_secs(90), || {
        let pods = items(&json_of(&["get", "pods", "-n", tenant, "-l", "app.kubernetes.io/component=worker", "-o", "json"]));
        let sessions = items(&json_of(&["get", "mcpsessions", "-n", tenant, "-o", "json"]));
        (pods.is_empty() && sessions.is_empty()).then_some(())
    });
}

fn start_call(url: &str, session: &str, secs: u64) -> tokio::task::JoinHandle<Result<String, reqwest::Error>> {
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "check_after", "arguments": {"secs": secs}}});
    let request = post(url, Some(session), &call);
    tokio::spawn(async move { request.send().await?.text().await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_or_deleted_mid_call_accounts_for_the_call_and_leaves_nothing_behind() {
    if !enabled("a_gateway_killed_or_deleted_mid_call_accounts_for_the_call_and_leaves_nothing_behind") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Counters written within a second (the default waits a minute), so the restart's carry-over shows.
    let release = HelmRelease::install(&[
        "gateway.replicas=1",
        "gateway.sessionCountersInterval=1s",
        "operator.replicas=2",
        "gateway.shutdownDelay=1s",
        "gateway.shutdownGrace=3s",
    ]);
    let tenant_namespace = TestNamespace::create("tw-e2e-faults");
    let (ns, tenant) = (release.namespace.0.clone(), tenant_namespace.0.clone());
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant, "-f", "-"], &MANIFESTS.replace("TOOL_IMAGE", &tool_image()));
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant, "--for=condition=Ready", "mcptool/check-after", "--timeout=60s"]);
    let url = release.mcp_url(&tenant);

    // 0. The worker pod is deleted mid-call: the client hears why, the audit log says how the call
    // ended, and the session's next call runs in a new pod.
    let (pod, _) = ready_gateway(&release);
    let session = open_session(&url).await;
    let answer = start_call(&url, &session, 600);
    let decision = started_call(&ns, &pod, &tenant, 600);
    let doomed = worker_pods(&tenant);
    kubectl_ok(&["delete", "pod", "-n", &tenant, &doomed[0], "--grace-period=0"]);
    let body = tokio::time::timeout(Duration::from_secs(60), answer).await.expect("answered").unwrap().expect("a response");
    assert!(body.contains(r#""isError":true"#) && body.contains("failed in its worker"), "{body}");
    let result = wait_for("the call's result line", Duration::from_secs(30), || {
        audit_lines(&gateway_log(&ns, &pod, false)).into_iter().find(|l| l["call_id"] == decision["call_id"] && l["event"] == "result")
    });
    assert_eq!(result["status"], "worker_failed", "{result}");
    let code = result["code"].as_str().unwrap_or_default().to_owned();
    assert!(["pod_deleted", "pod_failed", "worker_died", "worker_unreachable"].contains(&code.as_str()), "a specific code: {result}");
    assert!(body.contains(&code), "the client gets the same code: {body}");
    println!("e2e_faults: a worker pod deleted mid-call ended its call with {code}: {}", result["message"]);
    let next = tokio::time::timeout(Duration::from_secs(120), start_call(&url, &session, 1)).await.expect("answered").unwrap().unwrap();
    assert!(next.contains("woke"), "the next call starts a new worker: {next}");
    let ended = reqwest::Client::new().delete(&url).bearer_auth(AGENT_TOKEN).header("Mcp-Session-Id", &session).send().await.unwrap();
    assert!(ended.status().is_success());
    wait_until_nothing_left(&tenant, "no worker pod or McpSession left after the session ended");

    // 1. SIGKILL: no shutdown code runs; the kubelet restarts the container in the same pod.
    let (pod, restarts) = ready_gateway(&release);
    let session = open_session(&url).await;
    let first = tokio::time::timeout(Duration::from_secs(120), start_call(&url, &session, 1)).await.expect("answered").unwrap().unwrap();
    assert!(first.contains("woke"), "{first}");
    let answer = start_call(&url, &session, 601);
    let decision = started_call(&ns, &pod, &tenant, 601);
    let old_worker = worker_pods(&tenant);
    assert_eq!(old_worker.len(), 1, "{old_worker:?}");
    // The node shares this machine's PID namespace: the container's process is visible here.
    let pgrep = Command::new("pgrep").args(["-f", &format!("gateway-id {pod}( |$)")]).output().expect("pgrep runs");
    let pids = String::from_utf8_lossy(&pgrep.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(pids.len(), 1, "the gateway process of {pod} is on this node: {pids:?}");
    assert!(Command::new("kill").args(["-KILL", &pids[0]]).status().expect("kill runs").success());
    let ended = tokio::time::timeout(Duration::from_secs(60), answer).await.expect("the client's call ends").unwrap();
    assert!(ended.is_err() || !ended.as_deref().unwrap_or_default().contains("woke"), "the call cannot have completed: {ended:?}");
    let (same_pod, restarted) = ready_gateway_after(&release, Some(restarts));
    assert_eq!((same_pod.as_str(), restarted), (pod.as_str(), restarts + 1), "the container restarted in its pod");
    let previous = audit_lines(&gateway_log(&ns, &pod, true));
    assert!(previous.iter().any(|l| l["call_id"] == decision["call_id"] && l["event"] == "decision"), "the killed run wrote the decision");
    assert!(!previous.iter().any(|l| l["call_id"] == decision["call_id"] && l["event"] == "result"), "and no result");
    let closed = wait_for("the restarted gateway's interrupted line", Duration::from_secs(30), || {
        audit_lines(&gateway_log(&ns, &pod, false)).into_iter().find(|l| l["call_id"] == decision["call_id"] && l["event"] == "result")
    });
    assert_eq!(closed["status"], "interrupted", "{closed}");
    assert_eq!(closed["session_id"], decision["session_id"]);
    println!("e2e_faults: after SIGKILL the restarted gateway wrote: {}", closed["message"]);
    // The restarted gateway deleted the worker pod whose token died with the old process; the session
    // goes on: its next call runs in a new pod, and its counters continue.
    wait_for("the killed run's worker pod is gone", Duration::from_secs(60), || {
        let now = worker_pods(&tenant);
        (!now.iter().any(|p| old_worker.contains(p))).then_some(())
    });
    let again = tokio::time::timeout(Duration::from_secs(120), start_call(&url, &session, 2)).await.expect("answered").unwrap().unwrap();
    assert!(again.contains("woke"), "the session continues after the restart: {again}");
    wait_for("the McpSession counts both finished calls", Duration::from_secs(30), || {
        let sessions = items(&json_of(&["get", "mcpsessions", "-n", &tenant, "-o", "json"]));
        (sessions.len() == 1 && sessions[0]["status"]["calls"] == 2).then_some(())
    });
    let ended = reqwest::Client::new().delete(&url).bearer_auth(AGENT_TOKEN).header("Mcp-Session-Id", &session).send().await.unwrap();
    assert!(ended.status().is_success(), "DELETE ends the session: {}", ended.status());
    wait_until_nothing_left(&tenant, "no worker pod or McpSession left after the session ended");

    // 2. `kubectl delete pod`: SIGTERM; a call outliving the grace period is stopped and answered.
    let (pod, _) = ready_gateway(&release);
    let session = open_session(&url).await;
    let answer = start_call(&url, &session, 602);
    let decision = started_call(&ns, &pod, &tenant, 602);
    // The pod's log goes with it: follow it while it stops.
    let mut follow = Command::new(e2e_support::tool("kubectl"))
        .args(["logs", "-f", "-n", &ns, &pod, "-c", "gateway", "--since=10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = follow.stdout.take().unwrap();
    let followed = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    std::thread::sleep(Duration::from_secs(1));
    kubectl_ok(&["delete", "pod", "-n", &ns, &pod, "--wait=false"]);
    let body = tokio::time::timeout(Duration::from_secs(60), answer).await.expect("the client's call is answered").unwrap().expect("a response");
    assert!(body.contains(r#""toolwarden.dev/code":"interrupted""#), "the client hears why: {body}");
    let log = followed.join().unwrap();
    let _ = follow.wait();
    let lines: Vec<Value> = audit_lines(&log).into_iter().filter(|l| l["call_id"] == decision["call_id"]).collect();
    let events: Vec<_> = lines.iter().map(|l| (l["event"].as_str().unwrap_or_default(), l["status"].as_str())).collect();
    assert_eq!(events, [("decision", None), ("result", Some("interrupted"))], "{lines:#?}");
    // The stopping gateway ended its sessions: their pods and McpSessions are gone, and a new pod serves.
    wait_until_nothing_left(&tenant, "no worker pod or McpSession left after the pod was deleted");
    let (new_pod, _) = ready_gateway(&release);
    assert_ne!(new_pod, pod);
    let session = open_session(&url).await;
    let done = start_call(&url, &session, 1);
    let body = tokio::time::timeout(Duration::from_secs(120), done).await.expect("answered").unwrap().expect("a response");
    assert!(body.contains("woke"), "the new gateway serves calls: {body}");

    // 3. The operator's leader is killed (two replicas): the other takes over, and one change to a tool
    // becomes exactly one new config generation (no write lost, none repeated).
    let lease_holder = || json_of(&["get", "lease", "toolwarden-operator", "-n", &ns, "-o", "json"])["spec"]["holderIdentity"].as_str().unwrap_or_default().to_owned();
    let config = || json_of(&["get", "configmap", "toolwarden-gateway-config", "-n", &tenant, "-o", "json"]);
    let generation = |config: &Value| config["metadata"]["annotations"]["toolwarden.dev/generation"].as_str().and_then(|g| g.parse::<u64>().ok());
    let leader = lease_holder();
    assert!(!leader.is_empty(), "an operator replica leads");
    let before = generation(&config()).expect("the config has a generation");
    kubectl_ok(&["delete", "pod", "-n", &ns, &leader, "--grace-period=0", "--force"]);
    let patch = r#"{"spec": {"description": "Waits the given number of seconds (changed after the leader was killed)."}}"#;
    kubectl_ok(&["patch", "mcptool", "check-after", "-n", &tenant, "--type", "merge", "-p", patch]);
    let new_leader = wait_for("another operator replica leads", Duration::from_secs(90), || {
        let holder = lease_holder();
        (!holder.is_empty() && holder != leader).then_some(holder)
    });
    println!("e2e_faults: operator leadership moved from {leader} to {new_leader}");
    wait_for("the change reaches the config", Duration::from_secs(90), || config().to_string().contains("changed after the leader was killed").then_some(()));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(generation(&config()), Some(before + 1), "one change, one generation");
}
