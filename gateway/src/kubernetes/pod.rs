//! The worker pod, built as plain data: no client, no I/O, so every rule it must satisfy is unit-tested.
//!
//! The pod passes the Pod Security Standard `restricted`, carries the labels the tool's NetworkPolicy
//! selects, mounts only the tool's scoped Secret, and knows the session token's SHA-256 only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::resources::{Credential, RuntimeKind};

pub const WORKER_PORT: i32 = 8443;
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_TOOL: &str = "toolwarden.dev/tool";
pub const LABEL_SESSION: &str = "toolwarden.dev/session";
pub const LABEL_GATEWAY: &str = "toolwarden.dev/gateway";
/// Present only on warm-pool pods: `unbound` until a session takes the pod.
pub const LABEL_POOL: &str = "toolwarden.dev/pool";
pub const POOL_UNBOUND: &str = "unbound";
pub const APP_NAME: &str = "toolwarden";
pub const MANAGER: &str = "toolwarden-gateway";
/// The non-root user every worker runs as (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;

pub const BIN_DIR: &str = "/toolwarden/bin";
pub const WORKER_BIN: &str = "/toolwarden/bin/toolwarden-worker";
/// Where the worker binary sits in the worker image.
pub const IMAGE_WORKER_BIN: &str = "/toolwarden-worker";
pub const CREDENTIALS_DIR: &str = "/toolwarden/credentials";
pub const TMP_DIR: &str = "/tmp";
pub const SPEC_ENV: &str = "TOOLWARDEN_TOOL_SPEC";

pub const DEFAULT_CPU_LIMIT: &str = "500m";
pub const DEFAULT_MEMORY_LIMIT: &str = "256Mi";
pub const DEFAULT_CPU_REQUEST: &str = "50m";
pub const DEFAULT_MEMORY_REQUEST: &str = "64Mi";
pub const DEFAULT_TMP_SIZE: &str = "64Mi";

/// Why a pod could not be built for a tool. These are configuration errors: retrying does not help.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodBuildError {
    #[error("tool {tool}: runtime needs exactly one of exec, http or mcp")]
    NoRuntime { tool: String },
    #[error("tool {tool}: runtime {runtime} has no image")]
    NoImage { tool: String, runtime: &'static str },
    #[error("tool {tool}: McpTool name {resource} is longer than 63 characters, so no label can select its pods")]
    ResourceNameTooLong { tool: String, resource: String },
}

/// Who the pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Owned by this McpSession (name, uid); deleted with it.
    Session { name: String, uid: String },
    /// A warm-pool pod waiting for a session; owned by no one until bound.
    Warm,
}

/// Everything the pod depends on besides the tool.
#[derive(Clone, Debug)]
pub struct WorkerPodParams<'a> {
    pub tool: &'a ToolConfig,
    pub namespace: &'a str,
    pub pod_name: String,
    pub worker_image: &'a str,
    /// Hex SHA-256 of the token the gateway will present; the token itself never reaches the pod.
    pub token_sha256: &'a str,
    pub gateway_id: &'a str,
    pub binding: Binding,
    pub active_deadline_seconds: i64,
}

/// The name of the scoped Secret (and NetworkPolicy) the operator writes for a tool.
pub fn tool_object_name(resource: &str) -> String {
    format!("toolwarden-tool-{resource}")
}

/// The key a credential has in the tool's scoped Secret: the operator copies each referenced key under
/// its own name.
pub fn scoped_secret_key(credential: &Credential) -> &str {
    &credential.secret_ref.key
}

/// The file a `file` or `header` credential is mounted at (index keeps header credentials apart).
pub fn credential_path(credential: &Credential, index: usize) -> Option<String> {
    if let Some(file) = &credential.file {
        return Some(format!("{CREDENTIALS_DIR}/{file}"));
    }
    credential.header.as_ref().map(|_| format!("{CREDENTIALS_DIR}/header-{index}"))
}

/// The tool spec handed to the worker: the compiled tool, with `file`/`header` credentials pointing at
/// their mounted paths and `env` credentials naming variables already in the worker's environment.
pub fn worker_tool_spec(tool: &ToolConfig) -> serde_json::Value {
    let mut spec = serde_json::to_value(tool).unwrap_or(serde_json::Value::Null);
    let paths: Vec<serde_json::Value> = tool
        .credentials
        .iter()
        .enumerate()
        .map(|(i, c)| match credential_path(c, i) {
            Some(path) => serde_json::json!({ "path": path }),
            None => serde_json::json!({ "env": c.env }),
        })
        .collect();
    if let Some(object) = spec.as_object_mut() {
        object.insert("credentialSources".into(), serde_json::Value::Array(paths));
    }
    spec
}

/// Labels of every worker pod of `tool` for this gateway; the NetworkPolicy selects the first three.
pub fn worker_labels(resource: &str, gateway_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_COMPONENT.to_owned(), "worker".to_owned()),
        (LABEL_TOOL.to_owned(), resource.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (LABEL_GATEWAY.to_owned(), label_value(gateway_id)),
    ])
}

/// A label-safe form of a value (63 characters, alphanumeric ends).
pub fn label_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(63)
        .collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

/// A fresh pod name for a tool: `tw-<tool>-<random>`.
pub fn pod_name(resource: &str, suffix: &str) -> String {
    let tool: String = resource.chars().take(40).collect();
    format!("tw-{}-{suffix}", tool.trim_end_matches(['-', '.']))
}

/// The McpSession owner reference for a session's pods.
pub fn session_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: toolwarden_core::resources::API_VERSION.to_owned(),
        kind: "McpSession".to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        // The gateway may not set finalizers on sessions, so it does not ask to block their deletion.
        block_owner_deletion: None,
        controller: Some(true),
    }
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID),
        run_as_group: Some(WORKER_UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(read_only), ..Default::default() }
}

/// Limits from the tool (defaults otherwise); requests equal the limits the author set, so a tool that
/// asks for little is never given an invalid request above its limit.
fn resources(tool: &ToolConfig) -> ResourceRequirements {
    let cpu_limit = tool.cpu.as_deref().unwrap_or(DEFAULT_CPU_LIMIT);
    let memory_limit = tool.memory.as_deref().unwrap_or(DEFAULT_MEMORY_LIMIT);
    let cpu_request = tool.cpu.as_deref().unwrap_or(DEFAULT_CPU_REQUEST);
    let memory_request = tool.memory.as_deref().unwrap_or(DEFAULT_MEMORY_REQUEST);
    ResourceRequirements {
        limits: Some(BTreeMap::from([("cpu".into(), quantity(cpu_limit)), ("memory".into(), quantity(memory_limit))])),
        requests: Some(BTreeMap::from([
            ("cpu".into(), quantity(cpu_request)),
            ("memory".into(), quantity(memory_request)),
        ])),
        ..Default::default()
    }
}

/// What the init container that copies the worker may use. A pod is scheduled by the larger of its
/// init containers' and its containers' requests, so the copy never asks for more CPU than the tool
/// does: a tool limited to `5m` is a `5m` pod, and a node holds as many as their limits say.
fn install_resources(tool: &ToolConfig) -> ResourceRequirements {
    let tool_cpu = tool.cpu.as_deref().unwrap_or(DEFAULT_CPU_REQUEST);
    let cpu_request = match cpu_millis(tool_cpu) {
        Some(millis) if millis < 10.0 => tool_cpu,
        _ => "10m",
    };
    ResourceRequirements {
        limits: Some(BTreeMap::from([("cpu".into(), quantity("100m")), ("memory".into(), quantity("32Mi"))])),
        requests: Some(BTreeMap::from([("cpu".into(), quantity(cpu_request)), ("memory".into(), quantity("16Mi"))])),
        ..Default::default()
    }
}

/// A CPU quantity in millicores (`500m`, `0.5`, `2`); `None` for other forms, which keep the default.
fn cpu_millis(quantity: &str) -> Option<f64> {
    let millis = match quantity.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => quantity.parse::<f64>().ok()? * 1000.0,
    };
    (millis.is_finite() && millis > 0.0).then_some(millis)
}

/// Builds the worker pod for a tool.
pub fn build_worker_pod(params: &WorkerPodParams<'_>) -> Result<Pod, PodBuildError> {
    let tool = params.tool;
    if tool.resource.len() > 63 {
        return Err(PodBuildError::ResourceNameTooLong { tool: tool.name.clone(), resource: tool.resource.clone() });
    }
    let kind = tool.runtime.kind().ok_or_else(|| PodBuildError::NoRuntime { tool: tool.name.clone() })?;
    // exec and mcp tools run in their own image with the worker copied in; http needs no tool image.
    let tool_image = match kind {
        RuntimeKind::Exec => tool.runtime.exec.as_ref().map(|r| r.image.as_str()),
        RuntimeKind::Mcp => tool.runtime.mcp.as_ref().map(|r| r.image.as_str()),
        RuntimeKind::Http => None,
    };
    if matches!(tool_image, Some("")) || (kind != RuntimeKind::Http && tool_image.is_none()) {
        return Err(PodBuildError::NoImage { tool: tool.name.clone(), runtime: kind.as_str() });
    }

    let secret_name = tool_object_name(&tool.resource);
    let mut env = vec![EnvVar {
        name: SPEC_ENV.into(),
        value: Some(worker_tool_spec(tool).to_string()),
        value_from: None,
    }];
    let mut items = Vec::new();
    for (i, credential) in tool.credentials.iter().enumerate() {
        if let Some(var) = &credential.env {
            env.push(EnvVar {
                name: var.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret_name.clone(),
                        key: scoped_secret_key(credential).to_owned(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            });
        } else if let Some(path) = credential_path(credential, i) {
            let relative = path.trim_start_matches(CREDENTIALS_DIR).trim_start_matches('/').to_owned();
            items.push(KeyToPath { key: scoped_secret_key(credential).to_owned(), path: relative, mode: None });
        }
    }

    // A tmpfs: its size limit is the kernel's (a full /tmp is ENOSPC, visible as `size=` in the pod's
    // /proc/mounts), where a disk-backed emptyDir is only checked by eviction, which kills the worker.
    // Its contents count against the container's memory limit.
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(quantity(tool.tmp_size.as_deref().unwrap_or(DEFAULT_TMP_SIZE))),
        }),
        ..Default::default()
    }];
    let mut mounts = vec![mount("tmp", TMP_DIR, false)];
    let mut init_containers = Vec::new();
    let worker_bin = if tool_image.is_some() {
        volumes.push(Volume {
            name: "toolwarden-bin".into(),
            empty_dir: Some(EmptyDirVolumeSource { medium: None, size_limit: Some(quantity("64Mi")) }),
            ..Default::default()
        });
        mounts.push(mount("toolwarden-bin", BIN_DIR, true));
        // The worker image is static and may hold no `cp`, so the binary copies itself.
        init_containers.push(Container {
            name: "install-worker".into(),
            image: Some(params.worker_image.into()),
            command: Some(vec![IMAGE_WORKER_BIN.into(), "install".into(), WORKER_BIN.into()]),
            security_context: Some(hardened()),
            volume_mounts: Some(vec![mount("toolwarden-bin", BIN_DIR, false)]),
            resources: Some(install_resources(params.tool)),
            ..Default::default()
        });
        WORKER_BIN
    } else {
        IMAGE_WORKER_BIN
    };
    if !items.is_empty() {
        volumes.push(Volume {
            name: "credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name),
                items: Some(items),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(mount("credentials", CREDENTIALS_DIR, true));
    }

    let worker = Container {
        name: "worker".into(),
        image: Some(tool_image.unwrap_or(params.worker_image).into()),
        command: Some(vec![
            worker_bin.into(),
            "serve".into(),
            "--listen".into(),
            format!("0.0.0.0:{WORKER_PORT}"),
            "--token-sha256".into(),
            params.token_sha256.into(),
            "--work-dir".into(),
            TMP_DIR.into(),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("worker".into()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(WORKER_PORT),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(resources(tool)),
        security_context: Some(hardened()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let mut labels = worker_labels(&tool.resource, params.gateway_id);
    let owner_references = match &params.binding {
        Binding::Session { name, uid } => {
            labels.insert(LABEL_SESSION.into(), label_value(name));
            Some(vec![session_owner(name, uid)])
        }
        Binding::Warm => {
            labels.insert(LABEL_POOL.into(), POOL_UNBOUND.into());
            None
        }
    };

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(params.pod_name.clone()),
            namespace: Some(params.namespace.into()),
            labels: Some(labels),
            owner_references,
            ..Default::default()
        },
        spec: Some(PodSpec {
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![worker],
            volumes: Some(volumes),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: Some(params.active_deadline_seconds.max(1)),
            runtime_class_name: tool.sandbox.runtime_class_name.clone(),
            termination_grace_period_seconds: Some(5),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
#[path = "pod_tests.rs"]
pub(crate) mod tests;
