//! e2e: `helm install` of charts/toolwarden into a real cluster. Runs only when `KUBECONFIG` is set;
//! otherwise it prints that it was skipped and passes.
//!
//! In a fresh namespace labelled `pod-security.kubernetes.io/enforce: restricted` it installs the chart,
//! then checks: the three CRDs are established; the operator and gateway Deployments, Services,
//! ServiceAccounts, PDB, NetworkPolicies and RBAC exist; the gateway's pods were admitted (they satisfy
//! Pod Security "restricted"); the service accounts can do what they need and nothing of what they must
//! not (`kubectl auth can-i`). It uninstalls afterwards, also when a check fails.
//!
//! Tools: `.tools/bin/helm` and `.tools/bin/kubectl` (scripts/install-tools.sh), else from PATH.
//! Images: the chart's defaults, which the cluster may not be able to pull; pods are then created but
//! not ready, which is enough for these checks. Set TOOLWARDEN_E2E_IMAGE and TOOLWARDEN_E2E_WORKER_IMAGE
//! (`repository:tag`) to images the cluster can pull, and the test also waits for both Deployments to
//! become available.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin").join(name);
    if local.exists() { local } else { PathBuf::from(name) }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install it with scripts/install-tools.sh): {e}"))
}

/// Runs and panics with the command's output when it fails.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn can_i(service_account: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let out = run("kubectl", &["auth", "can-i", verb, resource, "-n", namespace, "--as", service_account]);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// Uninstalls the release and deletes the namespace when dropped, so a failed check leaves nothing.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = run("helm", &["uninstall", &self.name, "--namespace", &self.namespace, "--wait", "--timeout", "2m"]);
        let _ = run("kubectl", &["delete", "namespace", &self.namespace, "--wait=false", "--ignore-not-found"]);
    }
}

#[test]
fn helm_install_creates_crds_operator_gateway_and_least_privilege_rbac() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!("skipped: KUBECONFIG is not set (e2e_helm needs a cluster)");
        return;
    }
    let suffix = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() % 100_000_000;
    let release = Release { name: format!("tw-e2e-{suffix}"), namespace: format!("tw-e2e-helm-{suffix}") };
    let (name, ns) = (release.name.clone(), release.namespace.clone());
    let fullname = format!("{name}-toolwarden");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/toolwarden");

    ok("kubectl", &["create", "namespace", &ns]);
    ok("kubectl", &["label", "namespace", &ns, "pod-security.kubernetes.io/enforce=restricted"]);
    // The gateway's static tokens (format of docs/install.md); no secret value reaches the test output.
    let tokens = "tokens:\n  - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n    subject: e2e\n    groups: [developers]\n";
    let tokens_file = std::env::temp_dir().join(format!("tw-e2e-tokens-{suffix}.yaml"));
    std::fs::write(&tokens_file, tokens).expect("write tokens file");
    ok("kubectl", &["create", "secret", "generic", "gateway-tokens", "-n", &ns,
        &format!("--from-file=tokens.yaml={}", tokens_file.display())]);
    let _ = std::fs::remove_file(&tokens_file);

    let mut args: Vec<String> = vec![
        "install".into(), name.clone(), chart.display().to_string(), "--namespace".into(), ns.clone(),
        "--set".into(), "gateway.auth.tokensSecret=gateway-tokens".into(),
        "--set".into(), "operator.replicas=2".into(),
    ];
    let images = (std::env::var("TOOLWARDEN_E2E_IMAGE"), std::env::var("TOOLWARDEN_E2E_WORKER_IMAGE"));
    let pullable = matches!(images, (Ok(_), Ok(_)));
    if let (Ok(image), Ok(worker)) = &images {
        let (repo, tag) = split_image(image);
        let (worker_repo, worker_tag) = split_image(worker);
        for set in [
            format!("image.repository={repo}"), format!("image.tag={tag}"),
            format!("worker.image.repository={worker_repo}"), format!("worker.image.tag={worker_tag}"),
        ] {
            args.push("--set".into());
            args.push(set);
        }
        args.extend(["--wait".into(), "--timeout".into(), "5m".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok("helm", &args);

    // CRDs installed from charts/toolwarden/crds/ (or already there) and established.
    ok("kubectl", &["wait", "--for", "condition=established", "--timeout=60s",
        "crd/mcptools.toolwarden.dev", "crd/toolpolicies.toolwarden.dev", "crd/mcpsessions.toolwarden.dev"]);

    // Namespaced objects.
    for object in [
        format!("deployment/{fullname}-gateway"), format!("deployment/{fullname}-operator"),
        format!("service/{fullname}-gateway"), format!("service/{fullname}-gateway-metrics"),
        format!("service/{fullname}-operator"), format!("serviceaccount/{fullname}-gateway"),
        format!("serviceaccount/{fullname}-operator"), format!("poddisruptionbudget/{fullname}-gateway"),
        format!("poddisruptionbudget/{fullname}-operator"), format!("networkpolicy/{fullname}-gateway"),
        format!("networkpolicy/{fullname}-operator"),
    ] {
        ok("kubectl", &["get", "-n", &ns, &object]);
    }
    // The operator's leader-election Role and its binding (names follow deploy/rbac/operator.yaml).
    let operator_labels = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=operator");
    for kind in ["role", "rolebinding"] {
        let found = ok("kubectl", &["get", kind, "-n", &ns, "-l", &operator_labels, "-o", "name"]);
        assert!(!found.trim().is_empty(), "no operator {kind} in {ns}");
    }
    // Cluster-scoped RBAC.
    for object in [
        format!("clusterrole/{fullname}-gateway"), format!("clusterrolebinding/{fullname}-gateway"),
        format!("clusterrole/{fullname}-operator"), format!("clusterrolebinding/{fullname}-operator"),
    ] {
        ok("kubectl", &["get", &object]);
    }

    // The gateway and operator pods were admitted in a namespace enforcing Pod Security "restricted".
    for component in ["gateway", "operator"] {
        let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component={component}");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pods = ok("kubectl", &["get", "pods", "-n", &ns, "-l", &selector, "-o", "name"]);
            if !pods.trim().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let events = ok("kubectl", &["get", "events", "-n", &ns, "--field-selector", "reason=FailedCreate"]);
                panic!("no {component} pod was created within 90s (Pod Security admission?):\n{events}");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    if pullable {
        for component in ["gateway", "operator"] {
            ok("kubectl", &["wait", "-n", &ns, "--for", "condition=available", "--timeout=120s",
                &format!("deployment/{fullname}-{component}")]);
        }
    }

    // Least privilege, as the API server evaluates it.
    let gateway = format!("system:serviceaccount:{ns}:{fullname}-gateway");
    let operator = format!("system:serviceaccount:{ns}:{fullname}-operator");
    assert!(can_i(&gateway, "create", "pods", "default"), "the gateway must create worker pods");
    assert!(can_i(&gateway, "watch", "mcpsessions.toolwarden.dev", "default"), "the gateway must watch McpSessions");
    assert!(!can_i(&gateway, "get", "secrets", "default"), "the gateway must never read Secrets");
    assert!(!can_i(&gateway, "create", "networkpolicies.networking.k8s.io", "default"), "NetworkPolicies are the operator's");
    assert!(can_i(&operator, "patch", "networkpolicies.networking.k8s.io", "default"), "the operator writes NetworkPolicies");
    assert!(can_i(&operator, "watch", "mcptools.toolwarden.dev", "default"), "the operator watches McpTools");
    assert!(can_i(&operator, "update", "leases.coordination.k8s.io", &ns), "the operator elects a leader in its namespace");
    assert!(!can_i(&operator, "update", "leases.coordination.k8s.io", "default"), "leases only in its own namespace");
    assert!(!can_i(&operator, "create", "pods", "default"), "the operator never starts pods");

    // Uninstall removes the cluster-scoped RBAC too (the namespace goes with the guard).
    ok("helm", &["uninstall", &name, "--namespace", &ns, "--wait", "--timeout", "2m"]);
    let left = run("kubectl", &["get", &format!("clusterrole/{fullname}-gateway")]);
    assert!(!left.status.success(), "clusterrole/{fullname}-gateway survived helm uninstall");
}
