//! Warm pools: per tool, `sandbox.warmPool` pods started ahead of need, labelled `toolwarden.dev/pool:
//! unbound` and owned by no one. A session's first call of the tool binds one (labels + owner reference
//! + a shorter deadline, one PATCH) instead of waiting for a pod to start; the pool is then topped up.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use toolwarden_core::config::ToolConfig;

use super::pod::{Binding, LABEL_POOL, LABEL_SESSION, MANAGER, WorkerPodParams, build_worker_pod, label_value, pod_name, session_owner};
use super::pod_watch::PodWatch;
use super::pods::{self, PodState};
use super::failover::ANNOTATION_GATEWAY_ADDRESS;
use super::{Error, KubernetesConfig, Metrics, Result, api_code, random_hex, sha256_hex};

/// How long a warm pod may wait for a session before its deadline retires it.
pub const WARM_MAX_AGE: Duration = Duration::from_secs(60 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A ready, unbound worker pod and the token only this gateway knows.
#[derive(Clone, Debug)]
pub struct WarmPod {
    pub name: String,
    pub ip: String,
    pub token: String,
    pub started: Instant,
}

#[derive(Debug)]
struct Pool {
    tool: ToolConfig,
    ready: VecDeque<WarmPod>,
    starting: u32,
    /// After a failed start, wait before trying again (doubling), so a bad image does not churn pods.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// Warm pools of one gateway, keyed by (namespace, McpTool name).
#[derive(Debug, Default)]
pub struct WarmPools {
    pools: Mutex<HashMap<(String, String), Pool>>,
}

/// What `configure` took out of service and must be deleted.
pub type WarmPods = Vec<(String, String)>;

impl WarmPools {
    /// Sets the tools of a namespace. Pools of tools that are gone, disabled, sized 0 or changed are
    /// emptied; their pods are returned for deletion (a changed tool must not serve from an old pod).
    pub fn configure(&self, namespace: &str, tools: &[ToolConfig]) -> WarmPods {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut retired = Vec::new();
        pools.retain(|(ns, resource), pool| {
            if ns != namespace {
                return true;
            }
            let keep = tools.iter().any(|t| &t.resource == resource && *t == pool.tool && wanted(t) > 0);
            if !keep {
                retired.extend(pool.ready.drain(..).map(|p| (ns.clone(), p.name)));
            }
            keep
        });
        for tool in tools.iter().filter(|t| wanted(t) > 0) {
            pools.entry((namespace.to_owned(), tool.resource.clone())).or_insert_with(|| Pool {
                tool: tool.clone(),
                ready: VecDeque::new(),
                starting: 0,
                retry_at: None,
                backoff: Duration::from_secs(5),
            });
        }
        retired
    }

    /// Takes a ready pod for this exact tool config, if one is waiting.
    pub fn take(&self, namespace: &str, tool: &ToolConfig) -> Option<WarmPod> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.get_mut(&(namespace.to_owned(), tool.resource.clone()))?;
        if pool.tool != *tool {
            return None;
        }
        // Oldest first: it has the least deadline left, so use it before it expires.
        while let Some(pod) = pool.ready.pop_front() {
            if pod.started.elapsed() < WARM_MAX_AGE {
                return Some(pod);
            }
        }
        None
    }

    /// Pods to start now, per pool, respecting backoff, at most `budget` in all; the caller starts them
    /// and reports back.
    pub fn deficits(&self, mut budget: u32) -> Vec<(String, ToolConfig, u32)> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out = Vec::new();
        for ((ns, _), pool) in pools.iter_mut() {
            if pool.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            pool.ready.retain(|p| p.started.elapsed() < WARM_MAX_AGE);
            let have = pool.ready.len() as u32 + pool.starting;
            let missing = wanted(&pool.tool).saturating_sub(have).min(budget);
            if missing > 0 {
                budget -= missing;
                pool.starting += missing;
                out.push((ns.clone(), pool.tool.clone(), missing));
            }
        }
        out
    }

    /// Records the outcome of a start `deficits` asked for. Returns the pod to delete when the pool no
    /// longer wants it (the tool changed meanwhile).
    pub fn started(&self, namespace: &str, tool: &ToolConfig, outcome: Option<WarmPod>) -> Option<String> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pool) = pools.get_mut(&(namespace.to_owned(), tool.resource.clone())).filter(|p| p.tool == *tool) else {
            return outcome.map(|p| p.name);
        };
        pool.starting = pool.starting.saturating_sub(1);
        match outcome {
            Some(pod) => {
                pool.retry_at = None;
                pool.backoff = Duration::from_secs(5);
                pool.ready.push_back(pod);
                None
            }
            None => {
                pool.retry_at = Some(Instant::now() + pool.backoff);
                pool.backoff = (pool.backoff * 2).min(MAX_BACKOFF);
                None
            }
        }
    }

    /// Every warm pod, for shutdown.
    pub fn drain(&self) -> WarmPods {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter_mut().flat_map(|((ns, _), p)| p.ready.drain(..).map(|w| (ns.clone(), w.name)).collect::<Vec<_>>()).collect()
    }

    /// The namespaces this gateway keeps warm pools in.
    pub fn namespaces(&self) -> Vec<String> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut namespaces: Vec<String> = pools.keys().map(|(ns, _)| ns.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }

    pub fn ready_count(&self) -> usize {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).values().map(|p| p.ready.len()).sum()
    }
}

fn wanted(tool: &ToolConfig) -> u32 {
    if tool.disabled { 0 } else { tool.sandbox.warm_pool.unwrap_or(0) }
}

/// Starts one warm pod and waits for it; on failure the pod is deleted and the failure counted.
pub async fn start_warm_pod(
    client: &Client,
    config: &KubernetesConfig,
    metrics: &Metrics,
    pod_watch: &PodWatch,
    namespace: &str,
    tool: &ToolConfig,
) -> Result<WarmPod> {
    let token = random_hex(32)?;
    let pod = build_worker_pod(&WorkerPodParams {
        tool,
        namespace,
        pod_name: pod_name(&tool.resource, &random_hex(4)?),
        worker_image: &config.worker_image,
        token_sha256: &sha256_hex(&token),
        gateway_id: &config.gateway_id,
        binding: Binding::Warm,
        active_deadline_seconds: (config.max_lifetime + WARM_MAX_AGE).as_secs() as i64,
    })?;
    let mut pod = pod;
    if let Some(address) = &config.advertise_address {
        // Other replicas delete this pod if this replica goes for good (`delete_orphans`).
        pod.metadata.annotations = Some([(ANNOTATION_GATEWAY_ADDRESS.to_owned(), address.clone())].into());
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let (name, ip) = pod_watch
        .start(&api, namespace, &pod, started + config.start_timeout, config.start_timeout)
        .await
        .inspect_err(|e| metrics.worker_failed("kubernetes-warm", e.code()))?;
    metrics.worker_pods_active.inc();
    Ok(WarmPod { name, ip, token, started })
}

/// Deletes the unbound warm pods in `namespace` of gateway replicas that are gone for good: the pod at
/// the address a warm pod recorded no longer serves in `pod_namespace` (the same check as a failover's,
/// `failover::holder_gone`). Nobody can bind such a pod (its token died with its replica), and it would
/// otherwise wait out its deadline, the maximum session lifetime plus an hour. A replica that restarts
/// in place (same pod) keeps its address and deletes its own leftovers at start. Returns how many went.
pub async fn delete_orphans(client: &Client, namespace: &str, own_address: &str, pod_namespace: &str) -> Result<usize> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let unbound = api
        .list(&ListParams::default().labels(&format!("{LABEL_POOL}=unbound")))
        .await
        .map_err(|e| Error::api(format!("listing warm pods in {namespace}"), e))?;
    let mut by_address: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pod in unbound.items {
        if let Some(address) = pod.annotations().get(ANNOTATION_GATEWAY_ADDRESS).filter(|a| a.as_str() != own_address) {
            by_address.entry(address.clone()).or_default().push(pod.name_any());
        }
    }
    let mut deleted = 0;
    for (address, names) in by_address {
        if !super::failover::holder_gone(client, pod_namespace, &address).await {
            continue;
        }
        for name in names {
            pods::delete(&api, &name).await?;
            deleted += 1;
        }
        tracing::info!(namespace, gateway_address = %address, "deleted the warm pods of a gateway replica that is gone");
    }
    Ok(deleted)
}

/// The merge patch that binds a warm pod to a session: session label, owner, and a deadline no later
/// than the session's own end (the pod's deadline counts from its start, not from the bind).
pub fn bind_patch(session: &str, session_uid: &str, pod_age: Duration, session_left: Duration) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "labels": { LABEL_POOL: null, LABEL_SESSION: label_value(session) },
            "ownerReferences": [session_owner(session, session_uid)],
        },
        "spec": { "activeDeadlineSeconds": (pod_age + session_left).as_secs().max(1) },
    })
}

/// Binds a warm pod to a session. `Ok(None)` when the pod is no longer usable (then it is deleted).
pub async fn bind(client: &Client, namespace: &str, warm: &WarmPod, session: &str, session_uid: &str, session_left: Duration) -> Result<Option<()>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = bind_patch(session, session_uid, warm.started.elapsed(), session_left);
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    match api.patch(&warm.name, &params, &Patch::Merge(&patch)).await {
        Ok(pod) if serves_at(&pod, &warm.ip) => Ok(Some(())),
        Ok(_) => {
            pods::delete(&api, &warm.name).await?;
            Ok(None)
        }
        Err(e) if api_code(&e) == Some(404) => Ok(None),
        // The deadline may only shrink; a pod past it is finished anyway.
        Err(e) if api_code(&e) == Some(422) => {
            pods::delete(&api, &warm.name).await?;
            Ok(None)
        }
        Err(e) => Err(Error::api(format!("binding warm pod {}", warm.name), e)),
    }
}

/// Whether a bound warm pod can take the session's calls: running, at the IP it had when it was ready.
/// Its Ready condition may be False for a moment (a readiness probe that timed out on a busy node); the
/// gateway talks to the pod directly, and a worker that really died fails its call like any dead worker.
fn serves_at(pod: &Pod, ip: &str) -> bool {
    match pods::classify(pod) {
        PodState::Ready { ip: now } => now == ip,
        PodState::Failed(_) => false,
        PodState::Starting(_) => {
            pod.status.as_ref().is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.as_deref() == Some(ip))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::pod::tests::tool;

    fn warm_tool(size: u32) -> ToolConfig {
        let mut t = tool(serde_json::json!({"exec": {"image": "i", "command": ["c"]}}));
        t.sandbox.warm_pool = Some(size);
        t
    }

    fn warm(name: &str) -> WarmPod {
        WarmPod { name: name.into(), ip: "10.0.0.1".into(), token: "t".into(), started: Instant::now() }
    }

    #[test]
    fn pool_asks_for_its_size_once_and_hands_out_ready_pods() {
        let pools = WarmPools::default();
        let t = warm_tool(2);
        assert!(pools.configure("a", std::slice::from_ref(&t)).is_empty());
        assert_eq!(pools.deficits(u32::MAX), vec![("a".to_owned(), t.clone(), 2)]);
        assert!(pools.deficits(u32::MAX).is_empty(), "starts in flight count towards the size");
        pools.started("a", &t, Some(warm("p1")));
        pools.started("a", &t, None);
        assert!(pools.deficits(u32::MAX).is_empty(), "a failure backs off");
        assert_eq!(pools.take("a", &t).map(|p| p.name), Some("p1".to_owned()));
        assert!(pools.take("a", &t).is_none());
    }

    #[test]
    fn a_pool_starts_no_more_than_the_turns_it_is_given() {
        let pools = WarmPools::default();
        let t = warm_tool(3);
        pools.configure("a", std::slice::from_ref(&t));
        assert!(pools.deficits(0).is_empty());
        assert_eq!(pools.deficits(1), vec![("a".to_owned(), t.clone(), 1)]);
        assert_eq!(pools.deficits(u32::MAX), vec![("a".to_owned(), t.clone(), 2)], "the rest at the next sweep");
    }

    #[test]
    fn changed_tool_retires_its_warm_pods() {
        let pools = WarmPools::default();
        let t = warm_tool(1);
        pools.configure("a", std::slice::from_ref(&t));
        pools.deficits(u32::MAX);
        pools.started("a", &t, Some(warm("p1")));
        let mut changed = t.clone();
        changed.timeout_ms = 1;
        assert!(pools.take("a", &changed).is_none(), "an old pod never serves a changed tool");
        assert_eq!(pools.configure("a", &[changed]), vec![("a".to_owned(), "p1".to_owned())]);
        assert_eq!(pools.configure("a", &[]), Vec::<(String, String)>::new());
    }

    fn pod_with(phase: &str, ip: &str, ready: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "a"},
            "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .expect("pod")
    }

    #[test]
    fn a_warm_pod_whose_readiness_flickered_is_still_bound_but_a_moved_or_finished_one_is_not() {
        assert!(serves_at(&pod_with("Running", "10.0.0.1", "True"), "10.0.0.1"));
        assert!(serves_at(&pod_with("Running", "10.0.0.1", "False"), "10.0.0.1"), "a probe that timed out once");
        assert!(!serves_at(&pod_with("Running", "10.0.0.2", "True"), "10.0.0.1"), "another IP: not the pod we know");
        assert!(!serves_at(&pod_with("Failed", "10.0.0.1", "False"), "10.0.0.1"));
        assert!(!serves_at(&pod_with("Pending", "10.0.0.1", "False"), "10.0.0.1"));
        let mut deleting = pod_with("Running", "10.0.0.1", "True");
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert!(!serves_at(&deleting, "10.0.0.1"), "a pod being deleted");
    }

    #[test]
    fn bind_patch_moves_the_pod_to_the_session() {
        let patch = bind_patch("s-1", "uid-1", Duration::from_secs(100), Duration::from_secs(3600));
        assert_eq!(patch["metadata"]["labels"][LABEL_POOL], serde_json::Value::Null);
        assert_eq!(patch["metadata"]["labels"][LABEL_SESSION], "s-1");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(patch["spec"]["activeDeadlineSeconds"], 3700);
    }
}
