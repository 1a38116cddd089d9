//! One namespace: compile every McpTool and ToolPolicy (core compiler), write the gateway config when
//! its content changed, keep the worker baseline NetworkPolicy, write ToolPolicy status, and publish
//! per-tool verdicts (re-triggering the tools whose verdict changed).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use toolwarden_core::compiler::compile_namespace;
use toolwarden_core::config::CONFIG_MAP_NAME;
use toolwarden_core::resources::{McpTool, ToolPolicy};

use super::build::*;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::objects::*;
use crate::tool::build::build_baseline_policy;
use crate::tool::status::transition_events;

pub const CONTROLLER: &str = "namespace";
/// Conditional writes of the ConfigMap retried at once on 409 before the reconcile gives up.
const CONFLICT_ATTEMPTS: usize = 3;

/// What one namespace reconcile did (for tests, logs and the benchmark).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceOutcome {
    /// `None` when the namespace has no tools or policies (the ConfigMap was removed).
    pub plan: Option<ConfigPlan>,
    pub policy_status_writes: usize,
    pub tools_triggered: usize,
}

pub async fn reconcile_namespace(
    ctx: &Context,
    namespace: &str,
    tools: &[Arc<McpTool>],
    policies: &[Arc<ToolPolicy>],
) -> Result<NamespaceOutcome> {
    let object = format!("namespace {namespace}");
    // Objects being deleted leave the config at once; their owned objects go through garbage collection.
    let tools: Vec<&McpTool> = tools.iter().map(|t| t.as_ref()).filter(|t| t.meta().deletion_timestamp.is_none()).collect();
    let policies: Vec<&ToolPolicy> =
        policies.iter().map(|p| p.as_ref()).filter(|p| p.meta().deletion_timestamp.is_none()).collect();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let network_policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);

    if tools.is_empty() && policies.is_empty() {
        delete_if_present(&config_maps, CONFIG_MAP_NAME)
            .await
            .map_err(|e| Error::api(&object, format!("delete ConfigMap {CONFIG_MAP_NAME}"), e))?;
        delete_if_present(&network_policies, BASELINE_POLICY_NAME)
            .await
            .map_err(|e| Error::api(&object, format!("delete NetworkPolicy {BASELINE_POLICY_NAME}"), e))?;
        ctx.baselines.lock().unwrap_or_else(|e| e.into_inner()).remove(namespace);
        ctx.verdicts.write().unwrap_or_else(|e| e.into_inner()).retain(|(ns, _), _| ns != namespace);
        ctx.metrics.config_removed(namespace);
        return Ok(NamespaceOutcome { plan: None, policy_status_writes: 0, tools_triggered: 0 });
    }

    let compiled = compile_namespace(namespace, &tools, &policies);
    let plan = write_config(ctx, &config_maps, namespace, &compiled.config).await?;

    let baseline_applied = ctx.baselines.lock().unwrap_or_else(|e| e.into_inner()).contains(namespace);
    if !baseline_applied {
        apply(&network_policies, BASELINE_POLICY_NAME, &build_baseline_policy(namespace))
            .await
            .map_err(|e| Error::api(&object, format!("apply NetworkPolicy {BASELINE_POLICY_NAME}"), e))?;
        ctx.baselines.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_owned());
    }

    let config_problem = match &plan {
        ConfigPlan::TooLarge { bytes, limit } => Some(too_large_message(namespace, *bytes, *limit)),
        _ => None,
    };
    let now = now_rfc3339();
    let policy_api: Api<ToolPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let mut policy_status_writes = 0;
    for policy in &policies {
        let status = build_policy_status(policy, &compiled, config_problem.as_deref(), &now);
        let old = policy.status.clone().unwrap_or_default();
        if policy.status.as_ref() == Some(&status) {
            continue;
        }
        let name = policy.name_any();
        let patch = serde_json::json!({"apiVersion": toolwarden_core::resources::API_VERSION, "kind": "ToolPolicy", "status": status});
        match policy_api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
            Ok(_) => policy_status_writes += 1,
            // Deleted while we compiled: nothing left to report on.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(Error::api(format!("ToolPolicy {namespace}/{name}"), "write status", e)),
        }
        for event in transition_events(&old.conditions, &status.conditions) {
            publish(ctx, policy.object_ref(&()), event.warning, &event.reason, &event.note, "Compile").await;
        }
    }

    let verdicts = tool_verdicts(namespace, &tools, &compiled, &plan);
    let mut changed = Vec::new();
    {
        let mut all = ctx.verdicts.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|(ns, name), _| ns != namespace || verdicts.contains_key(name));
        for (name, verdict) in verdicts {
            let key = (namespace.to_owned(), name.clone());
            if all.get(&key) != Some(&verdict) {
                all.insert(key, verdict);
                changed.push(name);
            }
        }
    }
    let trigger = ctx.tool_trigger.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(trigger) = trigger {
        for name in &changed {
            let _ = trigger.unbounded_send(ObjectRef::new(name).within(namespace));
        }
    }
    Ok(NamespaceOutcome { plan: Some(plan), policy_status_writes, tools_triggered: changed.len() })
}

/// Writes the config if its content changed, conditionally on the resourceVersion read, retrying on 409.
async fn write_config(
    ctx: &Context,
    api: &Api<ConfigMap>,
    namespace: &str,
    config: &toolwarden_core::config::GatewayConfig,
) -> Result<ConfigPlan> {
    let object = format!("ConfigMap {namespace}/{CONFIG_MAP_NAME}");
    let mut last_conflict = None;
    for _ in 0..CONFLICT_ATTEMPTS {
        let current = api.get_opt(CONFIG_MAP_NAME).await.map_err(|e| Error::api(&object, "read", e))?;
        let found = current.as_ref().and_then(existing);
        let remembered = ctx.generations.lock().unwrap_or_else(|e| e.into_inner()).get(namespace).copied().unwrap_or(0);
        let plan = plan_config(config.clone(), found.as_ref(), remembered, ctx.settings.config_max_bytes);
        let generation = match &plan {
            ConfigPlan::Unchanged { generation } => *generation,
            ConfigPlan::TooLarge { bytes, limit } => {
                tracing::warn!(namespace, bytes, limit, "gateway config too large; not written");
                return Ok(plan);
            }
            ConfigPlan::Write { generation, json, hash } => {
                let resource_version = current.as_ref().and_then(|c| c.metadata.resource_version.clone());
                let desired = build_config_map(namespace, *generation, json.clone(), hash.clone(), resource_version);
                match apply(api, CONFIG_MAP_NAME, &desired).await {
                    Ok(_) => {
                        tracing::info!(namespace, generation, bytes = json.len(), "gateway config written");
                        *generation
                    }
                    Err(e) if is_conflict(&e) => {
                        last_conflict = Some(e);
                        continue;
                    }
                    Err(e) => return Err(Error::api(&object, format!("write generation {generation}"), e)),
                }
            }
        };
        ctx.generations.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_owned(), generation);
        ctx.metrics.config_written(namespace, generation);
        return Ok(plan);
    }
    Err(Error::api(object, "write", last_conflict.expect("a conflict ended the loop")))
}

/// Publishes an Event; a failure is logged, never fails the reconcile (Events are best effort).
pub async fn publish(ctx: &Context, reference: k8s_openapi::api::core::v1::ObjectReference, warning: bool, reason: &str, note: &str, action: &str) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(object = reference.name.as_deref().unwrap_or_default(), reason, error = %e, "could not publish Event");
    }
}

/// Deletes what the operator labelled for tools and nobody else will clean up (see [`orphans`]).
/// Runs on the first pass and every resync, not on every change: owner references and the tool
/// controller handle the common cases at once.
pub async fn sweep_orphans(ctx: &Context, namespace: &str, tools: &[Arc<McpTool>]) -> Result<usize> {
    let tools: Vec<&McpTool> = tools.iter().map(|t| t.as_ref()).filter(|t| t.meta().deletion_timestamp.is_none()).collect();
    let selector = ListParams::default().labels(&format!("{},{LABEL_TOOL}", managed_selector()));
    let np_api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let object = format!("namespace {namespace}");
    let np_list = np_api.list_metadata(&selector).await.map_err(|e| Error::api(&object, "list NetworkPolicies", e))?;
    let secret_list = secret_api.list_metadata(&selector).await.map_err(|e| Error::api(&object, "list Secrets", e))?;
    let mut deleted = 0;
    let np_objects: Vec<Labelled> = np_list.items.iter().filter_map(|m| labelled(m, false)).collect();
    for name in orphans(&np_objects, &tools) {
        let gone = delete_if_present(&np_api, &name).await.map_err(|e| Error::api(&object, format!("delete NetworkPolicy {name}"), e))?;
        deleted += usize::from(gone);
    }
    let secret_objects: Vec<Labelled> = secret_list.items.iter().filter_map(|m| labelled(m, true)).collect();
    for name in orphans(&secret_objects, &tools) {
        let gone = delete_if_present(&secret_api, &name).await.map_err(|e| Error::api(&object, format!("delete Secret {name}"), e))?;
        deleted += usize::from(gone);
    }
    if deleted > 0 {
        tracing::info!(namespace, deleted, "orphaned objects deleted");
    }
    Ok(deleted)
}

/// `None` for anything not carrying both the operator's managed-by label and a tool label: never ours
/// to delete, whatever a list returned.
fn labelled<K: Resource>(meta: &PartialObjectMeta<K>, is_secret: bool) -> Option<Labelled> {
    let labels = meta.labels();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGER) {
        return None;
    }
    let tool = labels.get(LABEL_TOOL).filter(|t| !t.is_empty())?.clone();
    Some(Labelled {
        name: meta.name_any(),
        tool,
        owned_by_tool: meta.owner_references().iter().any(|o| o.kind == "McpTool"),
        is_secret,
    })
}
