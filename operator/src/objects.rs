//! Names, labels and owner references shared by everything the operator writes, and the few API
//! helpers every controller uses (server-side apply under one field manager, delete that tolerates 404).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use toolwarden_core::resources::McpTool;

/// The one field manager of every write the operator makes.
pub const MANAGER: &str = "toolwarden-operator";
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_TOOL: &str = "toolwarden.dev/tool";
pub const APP_NAME: &str = "toolwarden";
/// Component label of worker pods (written by the gateway's pod builder) and of gateway pods.
pub const COMPONENT_WORKER: &str = "worker";
pub const COMPONENT_GATEWAY: &str = "gateway";
/// Label every gateway config ConfigMap carries (`toolwarden.dev/config: gateway`).
pub const CONFIG_MAP_LABEL_VALUE: &str = "gateway";
/// The namespace-wide NetworkPolicy that isolates every worker pod no tool policy admits.
pub const BASELINE_POLICY_NAME: &str = "toolwarden-workers-baseline";
/// The label Kubernetes puts on every namespace with its own name (NetworkPolicy namespaceSelector).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The name of the NetworkPolicy and the scoped Secret of an McpTool (same as the gateway's
/// `pod::tool_object_name`).
pub fn tool_object_name(resource: &str) -> String {
    format!("toolwarden-tool-{resource}")
}

/// Labels of every object the operator writes for one tool.
pub fn tool_object_labels(resource: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (LABEL_TOOL.to_owned(), resource.to_owned()),
    ])
}

/// `app.kubernetes.io/managed-by=toolwarden-operator`, to find what the operator wrote.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

/// The controller owner reference to an McpTool: its objects go with it through garbage collection.
/// `blockOwnerDeletion` stays unset, so the operator needs no rights on `mcptools/finalizers`.
pub fn tool_owner(tool: &McpTool) -> Option<OwnerReference> {
    let mut owner = tool.controller_owner_ref(&())?;
    owner.block_owner_deletion = None;
    Some(owner)
}

/// Whether an API error is `404 Not Found`.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Whether an API error is `409 Conflict` (stale resourceVersion or an object that already exists).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Server-side apply under [`MANAGER`], forcing ownership of the fields the operator declares.
pub async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object)).await
}

/// Deletes an object; one that is already gone counts as deleted. Returns whether it existed.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `namespace/name` of any object, for error context and logs.
pub fn key_of<K: ResourceExt>(object: &K) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

/// The current time as RFC 3339 (the condition timestamp format).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}
