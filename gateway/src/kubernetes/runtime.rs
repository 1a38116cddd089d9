//! The Kubernetes runtime: sessions held by this gateway, their McpSessions and worker pods.
//!
//! Calls never wait on status writes: counters change in memory and a flusher applies at most one
//! status per session per `status_interval`, counters alone only every `counters_interval`
//! (`status_writes`). A watch on this gateway's McpSessions ends a session
//! within seconds of `kubectl delete mcpsession`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::resources::{
    ApprovalState, ClientInfo, McpSession, McpSessionSpec, McpSessionStatus, PendingApproval, SessionPhase, WorkerRef,
};

use super::failover::{self, SessionHome};
use super::pod::{Binding, WORKER_PORT, WorkerPodParams, build_worker_pod, pod_name};
use super::pod_watch::PodWatch;
use super::restart::{ANNOTATION_SESSION_ID, RestartReport, recover};
use super::session_store::{SessionStore, gateway_selector, merge_remote_decisions, session_object_name};
use super::start_queue::StartQueue;
use super::status_writes::Unwritten;
use super::warm_pool::{WarmPods, WarmPools, bind, delete_orphans, start_warm_pod};

mod observe;
use observe::watch_sessions;
use super::{Error, KubernetesConfig, Metrics, Result, now_rfc3339, pods, random_hex, sha256_hex};

/// How often warm pods of gateway replicas that are gone are looked for.
const ORPHANS_INTERVAL: Duration = Duration::from_secs(60);

/// What the gateway knows when a session starts.
#[derive(Clone, Debug, Default)]
pub struct SessionStart {
    pub namespace: String,
    /// The gateway's session id (`Mcp-Session-Id` or the stateless key).
    pub id: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub client: ClientInfo,
    pub protocol_version: Option<String>,
}

/// Where to send a session's calls of one tool, and the bearer token the worker checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEndpoint {
    pub namespace: String,
    pub pod: String,
    /// `http://<pod IP>:8443`.
    pub url: String,
    pub token: String,
    pub warm: bool,
}

/// Why a session ended, for the gateway to drop its own state and tell the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnded {
    pub namespace: String,
    pub id: String,
    /// `closed`, `deleted`, `idle`, `expired`, `shutdown`, `moved`.
    pub reason: &'static str,
}

type Slot = Arc<tokio::sync::Mutex<Option<WorkerEndpoint>>>;

struct Session {
    namespace: String,
    name: String,
    uid: String,
    started: Instant,
    last_activity: Instant,
    status: McpSessionStatus,
    unwritten: Unwritten,
    /// When its status was last written (or the McpSession created).
    written: Instant,
    /// By McpTool name; the async lock makes concurrent first calls share one pod start.
    workers: HashMap<String, Slot>,
}

pub struct KubernetesRuntime {
    client: Client,
    config: KubernetesConfig,
    metrics: Metrics,
    store: SessionStore,
    sessions: Mutex<HashMap<String, Session>>,
    pools: WarmPools,
    starts: StartQueue,
    pod_watch: PodWatch,
    ended_tx: broadcast::Sender<SessionEnded>,
}

impl KubernetesRuntime {
    pub fn new(client: Client, config: KubernetesConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new(KubernetesRuntime {
            starts: StartQueue::new(config.max_pod_starts),
            store: SessionStore::new(client.clone()),
            pod_watch: PodWatch::new(client.clone(), &config.gateway_id),
            client,
            config,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            pools: WarmPools::default(),
            ended_tx: broadcast::channel(256).0,
        })
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cleans up after a previous run, then starts the background duties (status flusher, sweeper,
    /// McpSession watch). They stop when the runtime is dropped.
    pub async fn start(self: &Arc<Self>) -> Result<RestartReport> {
        let report = recover(&self.client, &self.store, &self.config).await?;
        self.adopt_resumed(&report);
        let weak = Arc::downgrade(self);
        tokio::spawn(every(weak.clone(), self.config.status_interval, |rt| async move { rt.flush().await }));
        tokio::spawn(every(weak.clone(), self.config.sweep_interval, |rt| async move { rt.sweep().await }));
        if let (Some(own), Some(pod_namespace)) = (self.config.advertise_address.clone(), self.config.pod_namespace.clone()) {
            tokio::spawn(every(weak.clone(), ORPHANS_INTERVAL, move |rt| {
                let (own, pod_namespace) = (own.clone(), pod_namespace.clone());
                async move { rt.delete_orphan_warm_pods(&own, &pod_namespace).await }
            }));
        }
        tokio::spawn(watch_sessions(weak, self.client.clone(), gateway_selector(&self.config.gateway_id)));
        Ok(report)
    }

    /// Holds the sessions recovery kept, so returning clients find them.
    pub fn adopt_resumed(&self, report: &RestartReport) {
        for session in &report.resumed {
            self.adopt(session);
        }
    }

    fn adopt(&self, session: &McpSession) {
        let Some(id) = session.annotations().get(ANNOTATION_SESSION_ID).cloned() else { return };
        let entry = Session {
            namespace: session.namespace().unwrap_or_default(),
            name: session.name_any(),
            uid: session.uid().unwrap_or_default(),
            started: Instant::now(),
            // The client gets a full idle period to come back.
            last_activity: Instant::now(),
            status: session.status.clone().unwrap_or_default(),
            unwritten: Unwritten::Nothing,
            written: Instant::now(),
            workers: HashMap::new(),
        };
        if self.lock().insert(id, entry).is_none() {
            self.metrics.sessions_active.inc();
        }
    }

    /// Ids of the sessions this gateway holds (resumed ones included), with their namespace and spec
    /// fields as recorded, so the gateway can rebuild its own state for returning clients.
    pub fn sessions(&self) -> Vec<(String, String)> {
        self.lock().iter().map(|(id, s)| (s.namespace.clone(), id.clone())).collect()
    }

    /// Creates the session's McpSession. A session already held (resumed after a restart) is reused.
    pub async fn start_session(&self, start: SessionStart) -> Result<String> {
        if let Some(s) = self.lock().get_mut(&start.id) {
            s.last_activity = Instant::now();
            return Ok(s.name.clone());
        }
        let began = Instant::now();
        let name = session_object_name(&start.id);
        let spec = McpSessionSpec {
            subject: start.subject,
            groups: start.groups,
            client: start.client,
            protocol_version: start.protocol_version,
            gateway: Some(self.config.gateway_id.clone()),
            started_at: Some(now_rfc3339()),
            idle_timeout_seconds: Some(self.config.idle_timeout.as_secs()),
            max_lifetime_seconds: Some(self.config.max_lifetime.as_secs()),
        };
        let address = self.config.advertise_address.as_deref();
        let created = self.store.create(&start.namespace, &name, &self.config.gateway_id, spec, &start.id, address).await?;
        let status = McpSessionStatus { phase: SessionPhase::Active, last_activity: Some(now_rfc3339()), ..Default::default() };
        let session = Session {
            namespace: start.namespace,
            name: name.clone(),
            uid: created.uid().unwrap_or_default(),
            started: Instant::now(),
            last_activity: Instant::now(),
            status,
            // `kubectl get mcpsessions` shows it Active within a second.
            unwritten: Unwritten::Now,
            written: Instant::now(),
            workers: HashMap::new(),
        };
        self.lock().insert(start.id, session);
        self.metrics.sessions_active.inc();
        self.metrics.session_start.observe(began.elapsed().as_secs_f64());
        Ok(name)
    }

    /// Continues session `id` on this gateway (docs/sessions-kubernetes.md, "Replicas"): claims its
    /// McpSession from the replica that held it, unless this gateway already does (it restarted), and
    /// holds it with the counters, taint and approvals its status recorded, without workers: the old
    /// ones' tokens died with their holder. Returns that status.
    pub async fn take_over(&self, home: &SessionHome, id: &str) -> Result<McpSessionStatus> {
        if let Some(s) = self.lock().get(id) {
            return Ok(s.status.clone());
        }
        let session = if home.held_by(&self.config.gateway_id) {
            home.session.clone()
        } else {
            failover::claim(&self.store, home, &self.config.gateway_id, self.config.advertise_address.as_deref()).await?
        };
        let mut status = session.status.clone().unwrap_or_default();
        status.workers.clear();
        status.worker_count = 0;
        status.last_activity = Some(now_rfc3339());
        let age = session
            .spec
            .started_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .and_then(|t| jiff::Timestamp::now().duration_since(t).try_into().ok())
            .unwrap_or_default();
        let entry = Session {
            namespace: session.namespace().unwrap_or_default(),
            name: session.name_any(),
            uid: session.uid().unwrap_or_default(),
            // Its maximum lifetime counts from its start on the first replica.
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            last_activity: Instant::now(),
            status: status.clone(),
            unwritten: Unwritten::Now,
            written: Instant::now(),
            workers: HashMap::new(),
        };
        let mut sessions = self.lock();
        if !sessions.contains_key(id) {
            sessions.insert(id.to_owned(), entry);
            self.metrics.sessions_active.inc();
        }
        Ok(status)
    }

    /// This session's worker for `tool`: the one already running, a warm pod bound now, or a new pod.
    pub async fn worker(&self, session_id: &str, tool: &ToolConfig) -> Result<WorkerEndpoint> {
        let (slot, namespace, name, uid, left) = {
            let mut sessions = self.lock();
            let s = sessions.get_mut(session_id).ok_or_else(|| Error::UnknownSession { session: session_id.to_owned() })?;
            s.last_activity = Instant::now();
            let slot = s.workers.entry(tool.resource.clone()).or_default().clone();
            let left = self.config.max_lifetime.saturating_sub(s.started.elapsed());
            (slot, s.namespace.clone(), s.name.clone(), s.uid.clone(), left)
        };
        let mut slot = slot.lock().await;
        if let Some(endpoint) = slot.as_ref() {
            return Ok(endpoint.clone());
        }
        let began = Instant::now();
        let warm = self.bind_warm(&namespace, tool, &name, &uid, left).await.inspect_err(|e| crate::trace::note_worker_start("warm", began, Some(e.code())))?;
        let endpoint = match warm {
            Some(endpoint) => {
                self.metrics.warm_pool_hits.inc();
                self.metrics.worker_started("kubernetes-warm", began.elapsed().as_secs_f64());
                crate::trace::note_worker_start("warm", began, None);
                endpoint
            }
            None => {
                if tool.sandbox.warm_pool.unwrap_or(0) > 0 {
                    self.metrics.warm_pool_misses.inc();
                }
                let endpoint = self.start_pod(&namespace, tool, &name, &uid, left).await.inspect_err(|e| crate::trace::note_worker_start("cold", began, Some(e.code())))?;
                self.metrics.worker_started("kubernetes", began.elapsed().as_secs_f64());
                crate::trace::note_worker_start("cold", began, None);
                endpoint
            }
        };
        // The session may have ended while the pod started: then the pod must not outlive it.
        let still_there = self.with_session(session_id, |s| {
            s.status.workers.retain(|w| w.tool != tool.resource);
            s.status.workers.push(WorkerRef {
                tool: tool.resource.clone(),
                pod: Some(endpoint.pod.clone()),
                ready: true,
                started_at: Some(now_rfc3339()),
            });
            s.status.worker_count = s.status.workers.len() as u32;
        });
        if still_there.is_none() {
            let _ = pods::delete(&Api::namespaced(self.client.clone(), &namespace), &endpoint.pod).await;
            self.metrics.worker_pods_active.dec();
            return Err(Error::SessionEnded { session: session_id.to_owned() });
        }
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn bind_warm(&self, namespace: &str, tool: &ToolConfig, session: &str, uid: &str, left: Duration) -> Result<Option<WorkerEndpoint>> {
        while let Some(warm) = self.pools.take(namespace, tool) {
            if bind(&self.client, namespace, &warm, session, uid, left).await?.is_some() {
                return Ok(Some(WorkerEndpoint {
                    namespace: namespace.to_owned(),
                    pod: warm.name,
                    url: format!("http://{}:{WORKER_PORT}", bracket(&warm.ip)),
                    token: warm.token,
                    warm: true,
                }));
            }
            self.metrics.worker_pods_active.dec();
        }
        Ok(None)
    }

    async fn start_pod(&self, namespace: &str, tool: &ToolConfig, session: &str, uid: &str, left: Duration) -> Result<WorkerEndpoint> {
        let fail = |e: Error| {
            self.metrics.worker_failed("kubernetes", e.code());
            e
        };
        // The start timeout covers the wait for a turn: a start that never got one creates no pod.
        let deadline = Instant::now() + self.config.start_timeout;
        let _turn = self.starts.session_turn(deadline, self.config.start_timeout.as_secs()).await.map_err(fail)?;
        let token = random_hex(32).map_err(fail)?;
        let pod = build_worker_pod(&WorkerPodParams {
            tool,
            namespace,
            pod_name: pod_name(&tool.resource, &random_hex(4).map_err(fail)?),
            worker_image: &self.config.worker_image,
            token_sha256: &sha256_hex(&token),
            gateway_id: &self.config.gateway_id,
            binding: Binding::Session { name: session.to_owned(), uid: uid.to_owned() },
            active_deadline_seconds: left.as_secs() as i64,
        })
        .map_err(|e| fail(e.into()))?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let (name, ip) = self.pod_watch.start(&api, namespace, &pod, deadline, self.config.start_timeout).await.map_err(fail)?;
        self.metrics.worker_pods_active.inc();
        Ok(WorkerEndpoint {
            namespace: namespace.to_owned(),
            url: format!("http://{}:{WORKER_PORT}", bracket(&ip)),
            pod: name,
            token,
            warm: false,
        })
    }

    /// After a call to `endpoint` failed in transport: says why (pod killed, evicted, OOM…), forgets
    /// the worker so the next call starts a fresh one, and deletes the pod unless it is still healthy.
    pub async fn call_failed(&self, session_id: &str, tool: &ToolConfig, endpoint: &WorkerEndpoint) -> Error {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &endpoint.namespace);
        let error = pods::diagnose(&api, &endpoint.pod).await;
        if matches!(error, Error::PodFailed { ref reason, .. } if reason == "CallFailed") {
            return error;
        }
        let slot = self.with_session(session_id, |s| {
            s.status.workers.retain(|w| w.tool != tool.resource);
            s.status.worker_count = s.status.workers.len() as u32;
            s.workers.remove(&tool.resource)
        });
        if let Some(Some(slot)) = slot {
            let mut slot = slot.lock().await;
            if slot.as_ref() == Some(endpoint) {
                *slot = None;
            }
        }
        if pods::delete(&api, &endpoint.pod).await.is_ok() {
            self.metrics.worker_pods_active.dec();
        }
        error
    }

    fn with_session<T>(&self, id: &str, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let mut sessions = self.lock();
        let s = sessions.get_mut(id)?;
        s.unwritten.note(Unwritten::Now);
        Some(f(s))
    }

    /// Changes the status of held session `id` (`f` gets its namespace, McpSession name and status); the
    /// flusher writes it. `None` when this gateway does not hold `id`.
    pub(super) fn with_status<T>(&self, id: &str, f: impl FnOnce(&str, &str, &mut McpSessionStatus) -> T) -> Option<T> {
        self.with_session(id, |s| f(&s.namespace, &s.name, &mut s.status))
    }

    /// Counts a call (or a refusal) and notes a taint: the taint shows on the McpSession within a
    /// second, counters alone within `counters_interval`.
    pub fn record_call(&self, session_id: &str, denied: bool, tainted_by: Option<&str>) {
        if let Some(s) = self.lock().get_mut(session_id) {
            s.last_activity = Instant::now();
            s.status.last_activity = Some(now_rfc3339());
            if denied {
                s.status.denials += 1;
            } else {
                s.status.calls += 1;
            }
            s.unwritten.note(Unwritten::Counters);
            // The taint is what a replica taking the session over must know: written at once.
            if let Some(tool) = tainted_by
                && !s.status.tainted
            {
                s.status.tainted = true;
                s.status.tainted_by = Some(tool.to_owned());
                s.unwritten.note(Unwritten::Now);
            }
        }
    }

    /// Keeps the session alive without counting anything (`tools/list`, pings).
    pub fn touch(&self, session_id: &str) {
        if let Some(s) = self.lock().get_mut(session_id) {
            s.last_activity = Instant::now();
        }
    }

    /// Replaces the session's pending approvals (written to the McpSession so any replica can decide).
    /// A decision another replica made, folded in by the watch, is kept over a stale `Pending`.
    pub fn set_pending_approvals(&self, session_id: &str, mut approvals: Vec<PendingApproval>) {
        self.with_session(session_id, |s| {
            merge_remote_decisions(&mut approvals, &s.status.pending_approvals);
            s.status.pending_approval_count = approvals.iter().filter(|a| a.state == ApprovalState::Pending).count() as u32;
            s.status.pending_approvals = approvals;
        });
    }

    /// The session's approvals as this replica knows them, decisions by other replicas merged in.
    pub fn pending_approvals(&self, session_id: &str) -> Vec<PendingApproval> {
        self.lock().get(session_id).map(|s| s.status.pending_approvals.clone()).unwrap_or_default()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Tells the warm pools which tools a namespace has now; pods of changed or removed tools go.
    pub async fn set_tools(&self, namespace: &str, tools: &[ToolConfig]) {
        let retired = self.pools.configure(namespace, tools);
        self.delete_warm(retired).await;
    }

    async fn delete_warm(&self, pods_to_delete: WarmPods) {
        for (namespace, name) in pods_to_delete {
            if pods::delete(&Api::namespaced(self.client.clone(), &namespace), &name).await.is_ok() {
                self.metrics.worker_pods_active.dec();
            }
        }
    }

    /// Ends a session: its McpSession is deleted, and with it (by Kubernetes' garbage collector) its pods.
    pub async fn end_session(&self, session_id: &str, reason: &'static str) -> Result<()> {
        self.finish(session_id, reason, true).await
    }

    /// Forgets a session another replica claimed: its McpSession and pods are the new holder's now
    /// (the claim deleted this gateway's pods of it).
    fn moved_away(&self, session_id: &str) {
        let Some(session) = self.lock().remove(session_id) else { return };
        self.metrics.sessions_active.dec();
        self.metrics.worker_pods_active.dec_by(session.status.workers.len() as i64);
        tracing::info!(session = %session.name, "another gateway replica continues this session");
        let _ = self.ended_tx.send(SessionEnded { namespace: session.namespace, id: session_id.to_owned(), reason: "moved" });
    }

    async fn finish(&self, session_id: &str, reason: &'static str, delete_object: bool) -> Result<()> {
        let Some(session) = self.lock().remove(session_id) else { return Ok(()) };
        self.metrics.sessions_active.dec();
        self.metrics.worker_pods_active.dec_by(session.status.workers.len() as i64);
        // The session's pods are its McpSession's dependents: deleting the McpSession is one request,
        // and Kubernetes' garbage collector deletes the pods. Explicitly only when that cannot work:
        // the McpSession was deleted by someone else (maybe orphaning them), or deleting it failed.
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &session.namespace);
        let result = if delete_object {
            let deleted = self.store.delete(&session.namespace, &session.name).await;
            if deleted.is_err() {
                let _ = pods::delete_session_pods(&api, &session.name).await;
            }
            deleted
        } else {
            pods::delete_session_pods(&api, &session.name).await
        };
        let _ = self.ended_tx.send(SessionEnded { namespace: session.namespace, id: session_id.to_owned(), reason });
        result
    }

    /// Sessions ended by anything but the gateway's own `end_session` (kubectl delete, idle, lifetime).
    pub fn subscribe_ended(&self) -> broadcast::Receiver<SessionEnded> {
        self.ended_tx.subscribe()
    }

    /// Writes the status of every session whose changes are due (one write each; see `status_writes`).
    pub async fn flush(&self) {
        let now = Instant::now();
        let batch: Vec<(String, String, String, McpSessionStatus)> = self
            .lock()
            .iter_mut()
            .filter(|(_, s)| s.unwritten.due(s.written, now, self.config.counters_interval))
            .map(|(id, s)| {
                s.unwritten = Unwritten::Nothing;
                s.written = now;
                (id.clone(), s.namespace.clone(), s.name.clone(), s.status.clone())
            })
            .collect();
        for (id, namespace, name, status) in batch {
            if let Err(e) = self.store.apply_status(&namespace, &name, &status).await {
                tracing::warn!(session = %name, error = %e, "McpSession status not written; will retry");
                self.with_session(&id, |_| ());
            }
        }
    }

    /// Deletes the warm pods that gateway replicas gone for good left in this gateway's pool namespaces.
    async fn delete_orphan_warm_pods(&self, own_address: &str, pod_namespace: &str) {
        for namespace in self.pools.namespaces() {
            if let Err(e) = delete_orphans(&self.client, &namespace, own_address, pod_namespace).await {
                tracing::warn!(namespace, error = %e, "looking for warm pods of gone gateway replicas");
            }
        }
    }

    /// Ends idle and expired sessions and tops up warm pools.
    pub async fn sweep(self: Arc<Self>) {
        let now = Instant::now();
        let due: Vec<(String, &'static str)> = self
            .lock()
            .iter()
            .filter_map(|(id, s)| {
                if now.duration_since(s.started) >= self.config.max_lifetime {
                    Some((id.clone(), "expired"))
                } else if now.duration_since(s.last_activity) >= self.config.idle_timeout {
                    Some((id.clone(), "idle"))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in due {
            if let Err(e) = self.finish(&id, reason, true).await {
                tracing::warn!(session = %id, error = %e, "ending a {reason} session");
            }
        }
        let mut turns = self.starts.spare_turns();
        for (namespace, tool, count) in self.pools.deficits(turns.len() as u32) {
            for turn in turns.drain(..count as usize) {
                let rt = self.clone();
                let (namespace, tool) = (namespace.clone(), tool.clone());
                tokio::spawn(async move {
                    let outcome = start_warm_pod(&rt.client, &rt.config, &rt.metrics, &rt.pod_watch, &namespace, &tool).await;
                    drop(turn);
                    let warm = outcome.inspect_err(|e| tracing::warn!(tool = %tool.name, error = %e, "warm pod")).ok();
                    if let Some(stale) = rt.pools.started(&namespace, &tool, warm) {
                        rt.delete_warm(vec![(namespace, stale)]).await;
                    }
                });
            }
        }
    }

    /// Ends every session and deletes every warm pod (graceful shutdown).
    pub async fn shutdown(&self) {
        self.starts.close();
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.finish(&id, "shutdown", true).await {
                tracing::warn!(session = %id, error = %e, "ending a session at shutdown");
            }
        }
        let warm = self.pools.drain();
        self.delete_warm(warm).await;
    }

    /// Ready warm pods across all pools.
    pub fn warm_ready(&self) -> usize {
        self.pools.ready_count()
    }
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() }
}

async fn every<F, Fut>(runtime: Weak<KubernetesRuntime>, interval: Duration, f: F)
where
    F: Fn(Arc<KubernetesRuntime>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(rt) = runtime.upgrade() else { return };
        f(rt).await;
    }
}
