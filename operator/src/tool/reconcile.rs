//! Reconcile one McpTool: validate → dereference its Secrets → build NetworkPolicy and scoped Secret
//! (pure) → apply them by server-side apply → write status and Events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use toolwarden_core::compiler::compile_tool;
use toolwarden_core::resources::{API_VERSION, McpTool};

use super::build::build_network_policy;
use super::secret::{build_scoped_secret, key_collisions, referenced_secrets};
use super::status::{ToolFacts, build_tool_status, transition_events};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::namespace::reconcile::publish;
use crate::objects::*;

pub const CONTROLLER: &str = "mcptool";
/// Label values are at most 63 characters, and the tool's name is the label its worker pods carry.
const MAX_NAME: usize = 63;

pub async fn reconcile(tool: Arc<McpTool>, ctx: Arc<Context>) -> Result<Action> {
    let key = key_of(tool.as_ref());
    let started = Instant::now();
    let result = match tokio::time::timeout(ctx.settings.reconcile_timeout, reconcile_tool(&tool, &ctx)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout { object: format!("McpTool {key}"), seconds: ctx.settings.reconcile_timeout.as_secs() }),
    };
    ctx.metrics.reconciled(CONTROLLER, started.elapsed().as_secs_f64(), result.as_ref().err().map(Error::metric_label));
    ctx.metrics.trace_reconcile(CONTROLLER, &format!("McpTool {key}"), started.elapsed(), result.as_ref().err());
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// Backoff per object: one failing tool is retried on its own schedule and never holds up the others.
pub fn error_policy(tool: Arc<McpTool>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "reconcile failed");
    Action::requeue(ctx.failed(&key_of(tool.as_ref()), error.is_conflict()))
}

/// The reconcile itself, without metrics or deadline (tests and the benchmark call it directly).
pub async fn reconcile_tool(tool: &McpTool, ctx: &Context) -> Result<Action> {
    if tool.meta().deletion_timestamp.is_some() {
        // Owner references take the NetworkPolicy and Secret; the namespace reconciler drops the config.
        return Ok(Action::await_change());
    }
    let namespace = tool.namespace().unwrap_or_default();
    let name = tool.name_any();
    let object = format!("McpTool {namespace}/{name}");

    // Validate: the core compiler's checks, then what only the operator cares about.
    let mut invalid: Vec<String> = match compile_tool(tool) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|(field, message)| field.map_or(message.clone(), |f| format!("{f}: {message}"))).collect(),
    };
    if name.len() > MAX_NAME {
        invalid.push(format!(
            "metadata.name: at most {MAX_NAME} characters, because it becomes the label toolwarden.dev/tool selecting the tool's worker pods"
        ));
    }
    let network_policy = if invalid.is_empty() {
        build_network_policy(tool, &ctx.settings).map_err(|e| invalid.push(e)).ok()
    } else {
        None
    };
    let accepted = invalid.is_empty();

    // Dereference: read only the Secrets the tool names, and none at all when its keys collide.
    let mut sources = BTreeMap::new();
    if key_collisions(tool).is_empty() {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        for secret in referenced_secrets(tool) {
            let found = secrets.get_opt(&secret).await.map_err(|e| Error::api(&object, format!("read Secret {secret}"), e))?;
            sources.insert(secret, found.map(|s| s.data.unwrap_or_default()));
        }
    }
    let scoped = build_scoped_secret(tool, &sources);

    // Apply what is wanted, delete what no longer is.
    let object_name = tool_object_name(&name);
    let previous = tool.status.clone().unwrap_or_default();
    let np_api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let network_policy = match network_policy {
        Some(np) => {
            apply(&np_api, &object_name, &np).await.map_err(|e| Error::api(&object, format!("apply NetworkPolicy {object_name}"), e))?;
            Some(object_name.clone())
        }
        None => {
            // The namespace baseline policy keeps the tool's workers isolated meanwhile.
            if previous.network_policy.is_some() {
                delete_if_present(&np_api, &object_name)
                    .await
                    .map_err(|e| Error::api(&object, format!("delete NetworkPolicy {object_name}"), e))?;
            }
            None
        }
    };
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let (credentials, secret) = match scoped {
        Ok(Some(desired)) if accepted => {
            let keys = desired.data.as_ref().map_or(0, BTreeMap::len);
            apply(&secret_api, &object_name, &desired)
                .await
                .map_err(|e| Error::api(&object, format!("apply Secret {object_name}"), e))?;
            (Ok(keys), Some(object_name.clone()))
        }
        other => {
            // No credentials, a problem with them, or a tool not accepted: no copy may linger.
            if previous.secret.is_some() {
                delete_if_present(&secret_api, &object_name)
                    .await
                    .map_err(|e| Error::api(&object, format!("delete Secret {object_name}"), e))?;
            }
            (other.map(|s| s.and_then(|s| s.data).map_or(0, |d| d.len())), None)
        }
    };

    // Status and Events.
    let facts = ToolFacts { invalid, credentials, verdict: ctx.verdict(&namespace, &name), network_policy, secret };
    let status = build_tool_status(tool, &facts, &now_rfc3339());
    if tool.status.as_ref() != Some(&status) {
        let api: Api<McpTool> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({"apiVersion": API_VERSION, "kind": "McpTool", "status": status});
        match api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
            Ok(_) => {}
            // Deleted mid-reconcile: garbage collection takes what was applied.
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::api(&object, "write status", e)),
        }
        for event in transition_events(&previous.conditions, &status.conditions) {
            publish(ctx, tool.object_ref(&()), event.warning, &event.reason, &event.note, "Reconcile").await;
        }
    }
    Ok(Action::requeue(ctx.settings.resync_interval))
}
