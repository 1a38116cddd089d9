use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;
use toolwarden_core::config::ToolConfig;

use super::*;

pub(crate) fn tool(runtime: serde_json::Value) -> ToolConfig {
    serde_json::from_value(json!({
        "name": "create_pull_request",
        "resource": "create-pull-request",
        "description": "Opens a pull request.",
        "effect": "write",
        "inputSchema": {"type": "object"},
        "runtime": runtime,
        "credentials": [
            {"secretRef": {"name": "github", "key": "token"}, "env": "GITHUB_TOKEN"},
            {"secretRef": {"name": "github", "key": "app-key"}, "file": "app.pem"},
            {"secretRef": {"name": "other", "key": "api"}, "header": {"name": "Authorization", "prefix": "Bearer "}}
        ],
        "timeoutMs": 30000,
        "maxOutputBytes": 65536,
        "memory": "128Mi",
        "tmpSize": "16Mi",
        "outputTrust": "trusted",
        "sandbox": {"runtimeClassName": "gvisor", "warmPool": 2}
    }))
    .expect("fixture tool")
}

fn exec_tool() -> ToolConfig {
    tool(json!({"exec": {"image": "ghcr.io/acme/gh:1", "command": ["gh", "pr", "create"]}}))
}

fn build(tool: &ToolConfig, binding: Binding) -> Pod {
    build_worker_pod(&WorkerPodParams {
        tool,
        namespace: "team-a",
        pod_name: pod_name(&tool.resource, "abc12345"),
        worker_image: "ghcr.io/toolwarden/worker:0.1.0",
        token_sha256: "ab".repeat(32).as_str(),
        gateway_id: "toolwarden-gateway-0",
        binding,
        active_deadline_seconds: 3600,
    })
    .expect("pod builds")
}

fn session() -> Binding {
    Binding::Session { name: "s-1".into(), uid: "uid-1".into() }
}

fn all_containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect()
}

/// Every check of the Pod Security Standard `restricted` profile (which includes `baseline`), as
/// listed at kubernetes.io/docs/concepts/security/pod-security-standards. Returns the rules broken.
fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut broken = Vec::new();
    let spec = pod.spec.as_ref().unwrap();
    let psc = spec.security_context.clone().unwrap_or_default();
    // baseline: host namespaces
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        broken.push("host namespaces".to_owned());
    }
    if psc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        broken.push("hostProcess".to_owned());
    }
    // baseline: sysctls only from the safe set (we set none at all)
    if psc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        broken.push("sysctls".to_owned());
    }
    // restricted: volume types
    for v in spec.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        if !allowed || v.host_path.is_some() {
            broken.push(format!("volume {} type", v.name));
        }
    }
    let pod_non_root = psc.run_as_non_root == Some(true);
    let pod_seccomp_ok =
        psc.seccomp_profile.as_ref().is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost");
    if psc.run_as_user == Some(0) {
        broken.push("pod runAsUser 0".to_owned());
    }
    if psc.app_armor_profile.as_ref().is_some_and(|p| p.type_ == "Unconfined") {
        broken.push("pod AppArmor".to_owned());
    }
    if let Some(se) = &psc.se_linux_options
        && (se.user.is_some() || se.role.is_some())
    {
        broken.push("pod SELinux".to_owned());
    }
    for c in all_containers(pod) {
        let n = &c.name;
        let sc = c.security_context.clone().unwrap_or_default();
        // baseline
        if sc.privileged == Some(true) {
            broken.push(format!("{n}: privileged"));
        }
        if c.ports.iter().flatten().any(|p| p.host_port.is_some_and(|h| h != 0)) {
            broken.push(format!("{n}: hostPort"));
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            broken.push(format!("{n}: procMount"));
        }
        if sc.app_armor_profile.as_ref().is_some_and(|p| p.type_ == "Unconfined") {
            broken.push(format!("{n}: AppArmor"));
        }
        if sc.se_linux_options.as_ref().is_some_and(|se| se.user.is_some() || se.role.is_some()) {
            broken.push(format!("{n}: SELinux"));
        }
        // restricted
        if sc.allow_privilege_escalation != Some(false) {
            broken.push(format!("{n}: allowPrivilegeEscalation must be false"));
        }
        if !(sc.run_as_non_root == Some(true) || (pod_non_root && sc.run_as_non_root.is_none())) {
            broken.push(format!("{n}: runAsNonRoot"));
        }
        if sc.run_as_user == Some(0) {
            broken.push(format!("{n}: runAsUser 0"));
        }
        let seccomp_ok = match &sc.seccomp_profile {
            Some(p) => p.type_ == "RuntimeDefault" || p.type_ == "Localhost",
            None => pod_seccomp_ok,
        };
        if !seccomp_ok {
            broken.push(format!("{n}: seccompProfile"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            broken.push(format!("{n}: capabilities must drop ALL"));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            broken.push(format!("{n}: capabilities add"));
        }
    }
    broken
}

#[test]
fn worker_pod_satisfies_every_restricted_rule() {
    for runtime in [
        json!({"exec": {"image": "ghcr.io/acme/gh:1", "command": ["gh"]}}),
        json!({"http": {"url": "https://api.github.com/repos/{repo}/pulls"}}),
        json!({"mcp": {"image": "ghcr.io/acme/mcp:1", "command": ["server"], "tool": "t"}}),
    ] {
        for binding in [session(), Binding::Warm] {
            let pod = build(&tool(runtime.clone()), binding);
            assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{runtime}");
        }
    }
}

#[test]
fn restricted_check_catches_a_privileged_pod() {
    let mut pod = build(&exec_tool(), session());
    let spec = pod.spec.as_mut().unwrap();
    spec.containers[0].security_context.as_mut().unwrap().allow_privilege_escalation = None;
    spec.host_network = Some(true);
    assert_eq!(restricted_violations(&pod).len(), 2);
}

#[test]
fn worker_pod_carries_the_labels_the_network_policy_selects() {
    let pod = build(&exec_tool(), session());
    let labels = pod.metadata.labels.unwrap();
    assert_eq!(labels[LABEL_APP_NAME], "toolwarden");
    assert_eq!(labels[LABEL_COMPONENT], "worker");
    assert_eq!(labels[LABEL_TOOL], "create-pull-request");
    assert_eq!(labels[LABEL_SESSION], "s-1");
    assert_eq!(labels[LABEL_GATEWAY], "toolwarden-gateway-0");
    assert!(!labels.contains_key(LABEL_POOL));
}

#[test]
fn warm_pod_is_unbound_and_owned_by_no_one() {
    let pod = build(&exec_tool(), Binding::Warm);
    let labels = pod.metadata.labels.unwrap();
    assert_eq!(labels[LABEL_POOL], POOL_UNBOUND);
    assert!(!labels.contains_key(LABEL_SESSION));
    assert!(pod.metadata.owner_references.is_none());
}

#[test]
fn session_pod_is_owned_by_its_mcp_session() {
    let pod = build(&exec_tool(), session());
    let owners = pod.metadata.owner_references.unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "McpSession");
    assert_eq!(owners[0].api_version, "toolwarden.dev/v1alpha1");
    assert_eq!((owners[0].name.as_str(), owners[0].uid.as_str()), ("s-1", "uid-1"));
}

#[test]
fn pod_has_no_service_account_token_links_or_restarts() {
    let spec = build(&exec_tool(), session()).spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(c.security_context.as_ref().unwrap().run_as_user, Some(65532));
    }
}

#[test]
fn init_container_copies_the_worker_into_the_tool_image() {
    let spec = build(&exec_tool(), session()).spec.unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("ghcr.io/toolwarden/worker:0.1.0"));
    assert_eq!(init.command.as_ref().unwrap().last().unwrap(), WORKER_BIN);
    let worker = &spec.containers[0];
    assert_eq!(worker.image.as_deref(), Some("ghcr.io/acme/gh:1"));
    let cmd = worker.command.as_ref().unwrap();
    assert_eq!(&cmd[..2], &[WORKER_BIN.to_owned(), "serve".to_owned()]);
    assert!(cmd.contains(&"0.0.0.0:8443".to_owned()));
    let probe = worker.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
}

#[test]
fn the_worker_copy_asks_for_no_more_cpu_than_the_tool() {
    let init_cpu = |cpu: Option<&str>| {
        let mut tool = exec_tool();
        tool.cpu = cpu.map(str::to_owned);
        let spec = build(&tool, session()).spec.unwrap();
        let init = &spec.init_containers.as_ref().unwrap()[0];
        init.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0.clone()
    };
    assert_eq!(init_cpu(Some("5m")), "5m", "a 5m tool is a 5m pod for the scheduler");
    assert_eq!(init_cpu(Some("0.002")), "0.002");
    assert_eq!(init_cpu(Some("500m")), "10m");
    assert_eq!(init_cpu(Some("2")), "10m");
    assert_eq!(init_cpu(None), "10m", "the default request (50m) is above the copy's 10m");
    assert_eq!(init_cpu(Some("1k")), "10m", "a form it does not read keeps the default");
}

#[test]
fn http_tool_runs_the_worker_image_without_an_init_container() {
    let spec = build(&tool(json!({"http": {"url": "https://example.com/x"}})), session()).spec.unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers[0].image.as_deref(), Some("ghcr.io/toolwarden/worker:0.1.0"));
    assert_eq!(spec.containers[0].command.as_ref().unwrap()[0], IMAGE_WORKER_BIN);
}

#[test]
fn pod_carries_the_token_hash_and_never_a_token() {
    let pod = build(&exec_tool(), session());
    let text = serde_json::to_string(&pod).unwrap();
    assert!(text.contains(&"ab".repeat(32)));
    let worker = &pod.spec.unwrap().containers[0];
    assert!(worker.env.iter().flatten().all(|e| !e.name.contains("TOKEN") || e.value_from.is_some()));
}

#[test]
fn only_the_tools_scoped_secret_is_mounted() {
    let spec = build(&exec_tool(), session()).spec.unwrap();
    let worker = &spec.containers[0];
    let env_secret = worker
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "GITHUB_TOKEN")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .unwrap();
    assert_eq!((env_secret.name.as_str(), env_secret.key.as_str()), ("toolwarden-tool-create-pull-request", "token"));
    let secrets: Vec<_> = spec.volumes.iter().flatten().filter_map(|v| v.secret.clone()).collect();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].secret_name.as_deref(), Some("toolwarden-tool-create-pull-request"));
    let items = secrets[0].items.clone().unwrap();
    let paths: Vec<_> = items.iter().map(|i| (i.key.as_str(), i.path.as_str())).collect();
    assert_eq!(paths, [("app-key", "app.pem"), ("api", "header-2")]);
    let mount = worker.volume_mounts.iter().flatten().find(|m| m.name == "credentials").unwrap();
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn tool_without_credentials_mounts_no_secret() {
    let mut t = exec_tool();
    t.credentials.clear();
    let spec = build(&t, session()).spec.unwrap();
    assert!(spec.volumes.iter().flatten().all(|v| v.secret.is_none()));
}

#[test]
fn temp_volume_and_resources_follow_the_tool_limits() {
    let spec = build(&exec_tool(), session()).spec.unwrap();
    let tmp = spec.volumes.iter().flatten().find(|v| v.name == "tmp").unwrap();
    assert_eq!(tmp.empty_dir.as_ref().unwrap().size_limit.as_ref().unwrap().0, "16Mi");
    assert_eq!(tmp.empty_dir.as_ref().unwrap().medium.as_deref(), Some("Memory"), "a tmpfs, limited by the kernel");
    let res = spec.containers[0].resources.clone().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, DEFAULT_CPU_LIMIT);
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, DEFAULT_CPU_REQUEST);
}

#[test]
fn tool_spec_points_credentials_at_mounted_files() {
    let spec = worker_tool_spec(&exec_tool());
    assert_eq!(
        spec["credentialSources"],
        json!([{"env": "GITHUB_TOKEN"}, {"path": "/toolwarden/credentials/app.pem"}, {"path": "/toolwarden/credentials/header-2"}])
    );
}

#[test]
fn broken_tools_are_refused_with_a_reason() {
    let mut t = exec_tool();
    t.runtime.exec.as_mut().unwrap().image.clear();
    let err = build_worker_pod(&WorkerPodParams {
        tool: &t,
        namespace: "a",
        pod_name: "p".into(),
        worker_image: "w",
        token_sha256: "h",
        gateway_id: "g",
        binding: Binding::Warm,
        active_deadline_seconds: 1,
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "tool create_pull_request: runtime exec has no image");
    t.resource = "x".repeat(64);
    t.runtime.exec.as_mut().unwrap().image = "i".into();
    let err = build_worker_pod(&WorkerPodParams {
        tool: &t,
        namespace: "a",
        pod_name: "p".into(),
        worker_image: "w",
        token_sha256: "h",
        gateway_id: "g",
        binding: Binding::Warm,
        active_deadline_seconds: 1,
    })
    .unwrap_err();
    assert!(matches!(err, PodBuildError::ResourceNameTooLong { .. }));
}

#[test]
fn names_and_label_values_stay_valid() {
    assert_eq!(pod_name(&"a".repeat(100), "x1"), format!("tw-{}-x1", "a".repeat(40)));
    assert_eq!(label_value("gw/pod 1"), "gw-pod-1");
    assert_eq!(label_value(&format!("-{}", "b".repeat(80))).len(), 62);
}
