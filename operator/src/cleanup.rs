//! `toolwarden cleanup`: removes what Toolwarden's components created at run time, once they are gone.
//! The chart runs it as a post-delete hook of `helm uninstall`, so no pod, Secret, NetworkPolicy,
//! ConfigMap, McpSession or Lease of ours stays behind; the user's McpTools, ToolPolicies and Secrets
//! stay (see docs/install.md).
//!
//! It first waits until the release's operator and gateway pods are gone: a running operator would
//! write back what this deletes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use toolwarden_core::config::{CONFIG_MAP_LABEL, CONFIG_MAP_NAME};
use toolwarden_core::resources::{McpSession, McpTool, ToolPolicy};

use crate::leader::LEASE_NAME;
use crate::objects::{CONFIG_MAP_LABEL_VALUE, COMPONENT_WORKER, LABEL_COMPONENT, delete_if_present, is_not_found, managed_selector};

/// Label of worker pods and McpSessions naming the gateway that started them (its pod name).
const LABEL_GATEWAY: &str = "toolwarden.dev/gateway";

/// Arguments of `toolwarden cleanup`.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Namespace the release ran in (its pods, the operator's Lease).
    #[arg(long, env = "POD_NAMESPACE")]
    pub release_namespace: String,
    /// Label selector of the release's operator and gateway pods; cleanup starts once none is left.
    #[arg(long)]
    pub release_pods: String,
    /// The release's gateway ids (their pod names) start with this: their McpSessions and warm pods go.
    #[arg(long)]
    pub gateway_prefix: String,
    /// How long to wait for the release's pods to go.
    #[arg(long, default_value = "3m", value_parser = toolwarden_core::duration::parse_duration)]
    pub wait: Duration,
}

/// What one cleanup removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub namespaces: usize,
    pub sessions: usize,
    pub worker_pods: usize,
    pub config_maps: usize,
    pub deleted_collections: usize,
}

impl CleanupArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = Client::try_default().await.context("connecting to the Kubernetes API server (in-cluster or KUBECONFIG)")?;
        wait_for_release_pods(&client, &self.release_namespace, &self.release_pods, self.wait).await?;
        let report = cleanup(&client, &self.release_namespace, &self.gateway_prefix).await?;
        println!(
            "cleanup: {} namespaces: {} McpSessions, {} worker pods, {} gateway ConfigMaps deleted; operator NetworkPolicies and Secrets removed",
            report.namespaces, report.sessions, report.worker_pods, report.config_maps
        );
        Ok(())
    }
}

async fn wait_for_release_pods(client: &Client, namespace: &str, selector: &str, wait: Duration) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let left = pods.list(&ListParams::default().labels(selector)).await.with_context(|| format!("listing pods {selector} in {namespace}"))?;
        if left.items.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= wait {
            let names: Vec<String> = left.items.iter().map(|p| p.name_any()).collect();
            bail!("the release's pods are still there after {wait:?}: {names:?}; cleaning up now would race them, so nothing was deleted (run `toolwarden cleanup` again once they are gone)");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes, in every namespace that has Toolwarden objects: this release's McpSessions (their worker
/// pods follow by owner reference) and warm pods, the gateway config ConfigMap, and the operator's
/// NetworkPolicies and scoped Secrets; then the operator's Lease.
pub async fn cleanup(client: &Client, release_namespace: &str, gateway_prefix: &str) -> anyhow::Result<CleanupReport> {
    let namespaces = namespaces_with_toolwarden_objects(client).await?;
    let mut report = CleanupReport { namespaces: namespaces.len(), ..CleanupReport::default() };
    let ours = |gateway: Option<&String>| gateway.is_some_and(|g| g.starts_with(gateway_prefix));
    for ns in &namespaces {
        let sessions: Api<McpSession> = Api::namespaced(client.clone(), ns);
        for session in sessions.list(&ListParams::default()).await.with_context(|| format!("listing McpSessions in {ns}"))? {
            if ours(session.spec.gateway.as_ref()) || ours(session.labels().get(LABEL_GATEWAY)) {
                report.sessions += usize::from(delete_if_present(&sessions, &session.name_any()).await.with_context(|| format!("deleting McpSession {ns}/{}", session.name_any()))?);
            }
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let workers = pods.list(&ListParams::default().labels(&format!("{LABEL_COMPONENT}={COMPONENT_WORKER}"))).await.with_context(|| format!("listing worker pods in {ns}"))?;
        for pod in workers {
            if ours(pod.labels().get(LABEL_GATEWAY)) {
                report.worker_pods += usize::from(delete_if_present(&pods, &pod.name_any()).await.with_context(|| format!("deleting pod {ns}/{}", pod.name_any()))?);
            }
        }
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        report.config_maps += usize::from(delete_if_present(&config_maps, CONFIG_MAP_NAME).await.with_context(|| format!("deleting ConfigMap {ns}/{CONFIG_MAP_NAME}"))?);
        // Secrets by collection: the cleanup needs no right to read them.
        let managed = ListParams::default().labels(&managed_selector());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        secrets.delete_collection(&DeleteParams::default(), &managed).await.with_context(|| format!("deleting the operator's Secrets in {ns}"))?;
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
        policies.delete_collection(&DeleteParams::default(), &managed).await.with_context(|| format!("deleting the operator's NetworkPolicies in {ns}"))?;
        report.deleted_collections += 2;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), release_namespace);
    if let Err(e) = leases.delete(LEASE_NAME, &DeleteParams::default()).await
        && !is_not_found(&e)
    {
        return Err(e).with_context(|| format!("deleting Lease {release_namespace}/{LEASE_NAME}"));
    }
    Ok(report)
}

/// Namespaces holding McpTools, ToolPolicies, McpSessions or a gateway config ConfigMap: the only
/// places the operator and the gateway write to.
async fn namespaces_with_toolwarden_objects(client: &Client) -> anyhow::Result<BTreeSet<String>> {
    let mut namespaces = BTreeSet::new();
    let all = ListParams::default();
    let tools = Api::<McpTool>::all(client.clone()).list_metadata(&all).await.context("listing McpTools")?;
    namespaces.extend(tools.items.iter().filter_map(|o| o.namespace()));
    let policies = Api::<ToolPolicy>::all(client.clone()).list_metadata(&all).await.context("listing ToolPolicies")?;
    namespaces.extend(policies.items.iter().filter_map(|o| o.namespace()));
    let sessions = Api::<McpSession>::all(client.clone()).list_metadata(&all).await.context("listing McpSessions")?;
    namespaces.extend(sessions.items.iter().filter_map(|o| o.namespace()));
    let labelled = ListParams::default().labels(&format!("{CONFIG_MAP_LABEL}={CONFIG_MAP_LABEL_VALUE}"));
    let configs = Api::<ConfigMap>::all(client.clone()).list_metadata(&labelled).await.context("listing gateway ConfigMaps")?;
    namespaces.extend(configs.items.iter().filter_map(|o| o.namespace()));
    Ok(namespaces)
}
