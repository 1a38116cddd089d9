//! `toolwarden gateway`'s config source: the operator's ConfigMaps (`toolwarden-gateway-config`, key
//! `config.json`, label `toolwarden.dev/config`), watched in every namespace (or the `--namespace` list)
//! and applied as they change. A bad ConfigMap keeps its namespace's last good config and is counted.
//! The gateway never reads Secrets.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use toolwarden_core::config::{CONFIG_MAP_KEY, CONFIG_MAP_LABEL, CONFIG_MAP_NAME, GatewayConfig};

use crate::state::Gateway;

/// The config a ConfigMap holds, or why it holds none.
pub fn config_of(cm: &ConfigMap) -> Result<GatewayConfig, String> {
    let namespace = cm.metadata.namespace.clone().unwrap_or_default();
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_MAP_KEY))
        .ok_or_else(|| format!("ConfigMap {namespace}/{CONFIG_MAP_NAME} has no key {CONFIG_MAP_KEY}"))?;
    let config = GatewayConfig::from_json(text).map_err(|e| format!("ConfigMap {namespace}/{CONFIG_MAP_NAME}: {e}"))?;
    if config.namespace != namespace {
        return Err(format!(
            "ConfigMap {namespace}/{CONFIG_MAP_NAME} holds the config of namespace {}: refused",
            config.namespace
        ));
    }
    Ok(config)
}

fn apply(gateway: &Gateway, cm: &ConfigMap) {
    let namespace = cm.metadata.namespace.clone().unwrap_or_default();
    match config_of(cm) {
        Ok(config) => {
            if let Err(errors) = gateway.apply_config(config) {
                tracing::error!(namespace, problems = ?errors, "gateway config refused; the last good config stays in force");
            }
        }
        Err(problem) => {
            gateway.metrics.config_failed(&namespace);
            tracing::error!(namespace, "{problem}; the last good config stays in force");
        }
    }
}

/// Watches one scope (`None` = all namespaces) until the process ends; the watcher retries with backoff.
async fn watch_scope(gateway: Arc<Gateway>, client: Client, namespace: Option<String>, ready: Arc<std::sync::atomic::AtomicUsize>) {
    let api: Api<ConfigMap> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let config = watcher::Config::default().labels(CONFIG_MAP_LABEL).fields(&format!("metadata.name={CONFIG_MAP_NAME}"));
    // With backoff: a watcher alone retries a failing API server without pause.
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut counted = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(cm)) | Ok(Event::InitApply(cm)) => apply(&gateway, &cm),
            Ok(Event::Delete(cm)) => {
                if let Some(ns) = &cm.metadata.namespace {
                    gateway.remove_config(ns);
                }
            }
            Ok(Event::Init) => {}
            Ok(Event::InitDone) => {
                if !counted {
                    counted = true;
                    if ready.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        gateway.set_ready();
                    }
                }
            }
            Err(e) => tracing::warn!(scope = ?namespace, error = %e, "watching gateway ConfigMaps failed; retrying"),
        }
    }
}

/// Starts the watches; `/readyz` turns ready once every scope has listed its ConfigMaps.
pub async fn start(gateway: Arc<Gateway>, namespaces: Vec<String>) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}"))?;
    start_with_client(gateway, client, namespaces);
    Ok(())
}

/// [`start`] with a given client.
pub fn start_with_client(gateway: Arc<Gateway>, client: Client, namespaces: Vec<String>) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
    for scope in scopes {
        let watch = watch_scope(gateway.clone(), client.clone(), scope, ready.clone());
        tokio::spawn(watch);
    }
}

#[cfg(test)]
#[path = "config_kube_tests.rs"]
mod watch_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(namespace: &str, data: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(namespace.into());
        cm.metadata.name = Some(CONFIG_MAP_NAME.into());
        cm.data = data.map(|d| [(CONFIG_MAP_KEY.to_string(), d.to_string())].into());
        cm
    }

    #[test]
    fn configmaps_are_checked_before_use() {
        let good = GatewayConfig { format: toolwarden_core::config::CONFIG_FORMAT, namespace: "team-a".into(), ..Default::default() };
        assert!(config_of(&cm("team-a", Some(&good.to_json()))).is_ok());
        assert!(config_of(&cm("team-b", Some(&good.to_json()))).unwrap_err().contains("holds the config of namespace team-a"));
        assert!(config_of(&cm("team-a", None)).unwrap_err().contains("has no key config.json"));
        assert!(config_of(&cm("team-a", Some("{"))).unwrap_err().contains("not valid"));
    }
}
