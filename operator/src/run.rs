//! Wiring: the watches, the tool controller, the namespace queue and the session GC, run while this
//! replica holds the Lease.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::oneshot;
use toolwarden_core::config::CONFIG_MAP_LABEL;
use toolwarden_core::resources::{GROUP, McpTool, ToolPolicy};

use crate::context::Context;
use crate::namespace::queue::{self, Stores};
use crate::objects::{CONFIG_MAP_LABEL_VALUE, managed_selector};
use crate::{session_gc, tool};

/// Tool reconciles running at once.
pub const TOOL_CONCURRENCY: u16 = 16;

/// The tools to reconcile when a Secret changes: tools in its namespace that reference it, and the
/// tool owning it (someone edited or deleted a scoped Secret: put it back).
pub fn tools_for_secret<'a>(tools: impl IntoIterator<Item = &'a McpTool>, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<McpTool>> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let mut refs: Vec<ObjectRef<McpTool>> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "McpTool" && o.api_version.starts_with(GROUP))
        .map(|o| ObjectRef::new(&o.name).within(&namespace))
        .collect();
    for t in tools {
        if t.namespace().as_deref() == Some(namespace.as_str()) && t.spec.credentials.iter().any(|c| c.secret_ref.name == name) {
            let r = ObjectRef::new(&t.name_any()).within(&namespace);
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
    }
    refs
}

fn mapper(store: Store<McpTool>) -> impl Fn(PartialObjectMeta<Secret>) -> Vec<ObjectRef<McpTool>> + Send + Sync + 'static {
    move |secret| {
        let tools = store.state();
        tools_for_secret(tools.iter().map(|t| t.as_ref()), &secret)
    }
}

/// Runs every controller until the future is dropped (leadership lost or shutdown).
pub async fn controllers(ctx: Arc<Context>) {
    let client: Client = ctx.client.clone();
    let (trigger_tx, trigger_rx) = mpsc::unbounded();
    *ctx.tool_trigger.lock().unwrap_or_else(|e| e.into_inner()) = Some(trigger_tx);

    // Namespace side: its own caches of tools and policies; any change marks the namespace dirty.
    let (dirty_tx, dirty_rx) = mpsc::unbounded::<String>();
    let (tool_store, tool_writer) = reflector::store::<McpTool>();
    let (policy_store, policy_writer) = reflector::store::<ToolPolicy>();
    let mark = |tx: mpsc::UnboundedSender<String>| move |ns: Option<String>| {
        if let Some(ns) = ns {
            let _ = tx.unbounded_send(ns);
        }
    };
    let tool_watch = {
        let mark = mark(dirty_tx.clone());
        watcher(Api::<McpTool>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(tool_writer)
            .touched_objects()
            .for_each(move |r| {
                match r {
                    Ok(t) => mark(t.namespace()),
                    Err(e) => tracing::warn!(error = %e, "McpTool watch"),
                }
                futures::future::ready(())
            })
    };
    let policy_watch = {
        let mark = mark(dirty_tx.clone());
        watcher(Api::<ToolPolicy>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(policy_writer)
            .touched_objects()
            .for_each(move |r| {
                match r {
                    Ok(p) => mark(p.namespace()),
                    Err(e) => tracing::warn!(error = %e, "ToolPolicy watch"),
                }
                futures::future::ready(())
            })
    };
    // A ConfigMap edited or deleted by hand, or left from a namespace emptied while we were away.
    let config_watch = {
        let mark = mark(dirty_tx.clone());
        let selector = format!("{CONFIG_MAP_LABEL}={CONFIG_MAP_LABEL_VALUE}");
        watcher(Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()), watcher::Config::default().labels(&selector))
            .default_backoff()
            .touched_objects()
            .for_each(move |r| {
                match r {
                    Ok(cm) => mark(cm.namespace()),
                    Err(e) => tracing::warn!(error = %e, "ConfigMap watch"),
                }
                futures::future::ready(())
            })
    };
    let (first_tx, first_rx) = oneshot::channel();
    let namespaces = queue::run(ctx.clone(), Stores { tools: tool_store, policies: policy_store }, dirty_rx, first_tx);

    // Tool side: starts once the namespace verdicts exist, so first reconciles are final ones.
    let tool_controller = {
        let ctx = ctx.clone();
        let client = client.clone();
        async move {
            if tokio::time::timeout(Duration::from_secs(120), first_rx).await.is_err() {
                tracing::warn!("first namespace pass is slow; starting the tool controller anyway");
            }
            // Bounded concurrency keeps a burst of 500 tools from opening 500 API requests at once; the
            // short debounce folds a burst of events about one tool (spec, owned objects) into one reconcile.
            let config = kube::runtime::controller::Config::default().concurrency(TOOL_CONCURRENCY).debounce(Duration::from_millis(200));
            let controller = Controller::new(Api::<McpTool>::all(client.clone()), watcher::Config::default()).with_config(config);
            let store = controller.store();
            // Metadata only: the operator never lists Secret data; it reads referenced Secrets by name.
            let mut controller =
                controller.owns(Api::<NetworkPolicy>::all(client.clone()), watcher::Config::default().labels(&managed_selector()));
            if ctx.settings.watch_secrets {
                let secrets = watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), watcher::Config::default())
                    .default_backoff()
                    .touched_objects();
                controller = controller.watches_stream(secrets, mapper(store));
            }
            controller
                .reconcile_on(trigger_rx)
                .run(tool::reconcile, tool::error_policy, ctx)
                .for_each(|result| {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "tool controller");
                    }
                    futures::future::ready(())
                })
                .await;
        }
    };
    tokio::join!(tool_watch, policy_watch, config_watch, namespaces, tool_controller, session_gc::run(ctx.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, ns: &str, secret: &str) -> McpTool {
        serde_json::from_value(json!({
            "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"description": "d", "effect": "read", "inputSchema": {"type": "object"},
                     "runtime": {"http": {"url": "https://x.example"}},
                     "credentials": [{"secretRef": {"name": secret, "key": "token"}, "env": "T"}]}
        }))
        .unwrap()
    }

    fn secret(ns: &str, name: &str, owner: Option<&str>) -> PartialObjectMeta<Secret> {
        let mut meta = json!({"name": name, "namespace": ns});
        if let Some(owner) = owner {
            meta["ownerReferences"] = json!([{"apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool", "name": owner, "uid": "u"}]);
        }
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta})).unwrap()
    }

    #[test]
    fn source_secret_change_maps_to_the_tools_referencing_it_in_its_namespace() {
        let tools = [tool("a", "dev", "gh"), tool("b", "dev", "other"), tool("c", "prod", "gh")];
        let refs = tools_for_secret(tools.iter(), &secret("dev", "gh", None));
        assert_eq!(refs, vec![ObjectRef::new("a").within("dev")]);
    }

    #[test]
    fn scoped_secret_change_maps_to_its_owner() {
        let refs = tools_for_secret(std::iter::empty(), &secret("dev", "toolwarden-tool-a", Some("a")));
        assert_eq!(refs, vec![ObjectRef::new("a").within("dev")]);
    }
}
