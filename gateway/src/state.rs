//! The gateway's shared state: configs per namespace, sessions, approvals, rate limits, audit, metrics,
//! and the worker runtime. Request handlers share one `Arc<Gateway>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;
use toolwarden_core::config::GatewayConfig;
use toolwarden_core::policy::Engine;

use crate::approvals::Approvals;
use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::metrics::GatewayMetrics;
use crate::ratelimit::RateLimits;
use crate::runtime::WorkerRuntime;
use crate::sessions::{NewSession, SessionRecord, Sessions};
use toolwarden_core::resources::McpSessionStatus;

/// Limits and timers of one gateway.
#[derive(Clone, Debug)]
pub struct Settings {
    pub idle_timeout: Duration,
    pub max_session_lifetime: Duration,
    /// Largest HTTP request body on `/mcp/...`.
    pub max_body_bytes: usize,
    /// `Host` values accepted on `/mcp/...`; empty = any (a bearer token is required regardless).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted on `/mcp/...` and `/approvals...`; requests without `Origin` always are.
    pub allowed_origins: crate::origin::AllowedOrigins,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the gateway keeps serving with `/readyz` failing before it stops accepting
    /// connections: the time Service endpoints and kube-proxy take to stop sending it new ones.
    pub shutdown_delay: Duration,
    /// Open sessions one subject may hold; a new one beyond it is refused (see [`Gateway::admit_session`]).
    pub max_sessions_per_subject: usize,
    /// Open sessions this gateway holds in all; a new one beyond it is refused (HTTP 503).
    pub max_sessions: usize,
    /// How long a client may take to send a request's headers (see [`crate::serve`]).
    pub header_read_timeout: Duration,
    /// How long a connection's client may accept no byte of an answer before it is closed (see
    /// [`crate::write_stall`]).
    pub write_stall_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            idle_timeout: Duration::from_secs(30 * 60),
            max_session_lifetime: Duration::from_secs(8 * 3600),
            max_body_bytes: 1024 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: crate::origin::AllowedOrigins::default(),
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::ZERO,
            max_sessions_per_subject: 64,
            max_sessions: 10_000,
            header_read_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

pub struct Gateway {
    pub settings: Settings,
    pub auth: Authenticator,
    pub runtime: Arc<dyn WorkerRuntime>,
    pub audit: AuditLog,
    pub metrics: GatewayMetrics,
    pub registry: Registry,
    /// Tracing (docs/tracing.md); `None` when off, which costs nothing.
    pub telemetry: Option<Arc<toolwarden_telemetry::Telemetry>>,
    configs: RwLock<HashMap<String, Arc<Engine>>>,
    pub sessions: Sessions,
    pub approvals: Approvals,
    pub limits: RateLimits,
    /// Sessions held by other replicas, and the ones being taken over here.
    pub failover: crate::failover::Failover,
    /// Calls running in workers, so that disabling a tool stops them.
    pub running: crate::running::RunningCalls,
    ready: AtomicBool,
    /// False while the worker runtime is still starting (the kubernetes runtime waits for the API server).
    runtime_started: AtomicBool,
    in_flight: AtomicUsize,
    /// Session ends under way (workers stopping, pods being deleted): shutdown waits for them, or the
    /// process would exit halfway through and leave workers' directories or pods behind.
    ending: TaskTracker,
}

/// Why a new session was refused, with the sentence the client gets.
#[derive(Debug)]
pub enum SessionRefused {
    /// The subject holds `--max-sessions-per-subject` sessions (HTTP 429).
    SubjectLimit(String),
    /// This replica holds `--max-sessions` sessions in all (HTTP 503).
    GatewayFull(String),
}

impl SessionRefused {
    pub fn sentence(self) -> String {
        match self {
            SessionRefused::SubjectLimit(s) | SessionRefused::GatewayFull(s) => s,
        }
    }
}

/// Counts a call in flight until dropped (graceful shutdown waits for these).
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Gateway {
    pub fn new(
        settings: Settings,
        auth: Authenticator,
        runtime: Arc<dyn WorkerRuntime>,
        audit: AuditLog,
        metrics: GatewayMetrics,
        mut registry: Registry,
    ) -> Gateway {
        audit.register_metrics(&mut registry);
        Gateway {
            settings,
            auth,
            runtime,
            audit,
            metrics,
            registry,
            telemetry: None,
            configs: RwLock::default(),
            sessions: Sessions::default(),
            approvals: Approvals::default(),
            limits: RateLimits::default(),
            failover: Default::default(),
            running: Default::default(),
            ready: AtomicBool::new(false),
            runtime_started: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            ending: TaskTracker::new(),
        }
    }

    /// Signs and checks confirm tokens with the release's shared `key` (`--confirm-key-file`), so that
    /// every replica accepts the tokens of the others (set before the gateway is shared).
    pub fn with_confirm_key(mut self, key: Vec<u8>) -> Gateway {
        self.approvals = Approvals::with_key(key);
        self
    }

    /// Traces calls with `telemetry` (set before the gateway is shared).
    pub fn with_telemetry(mut self, telemetry: Option<Arc<toolwarden_telemetry::Telemetry>>) -> Gateway {
        self.telemetry = telemetry;
        self
    }

    pub fn engine(&self, namespace: &str) -> Option<Arc<Engine>> {
        self.configs.read().unwrap_or_else(|e| e.into_inner()).get(namespace).cloned()
    }

    pub fn namespaces(&self) -> Vec<String> {
        let mut list: Vec<String> = self.configs.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        list.sort();
        list
    }

    pub fn call_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&self.in_flight)
    }

    pub fn calls_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Config has been loaded once and the worker runtime has started (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.runtime_started.load(Ordering::SeqCst)
    }

    /// The worker runtime starts in the background: not ready until [`Gateway::set_runtime_started`].
    pub fn set_runtime_starting(&self) {
        self.runtime_started.store(false, Ordering::SeqCst);
    }

    pub fn set_runtime_started(&self) {
        self.runtime_started.store(true, Ordering::SeqCst);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Shutting down: `/readyz` fails from now on, so load balancers stop sending new connections.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Compiles and applies one namespace's config; on failure the last good config stays in force and
    /// every problem is returned (and counted).
    pub fn apply_config(&self, config: GatewayConfig) -> Result<(), Vec<String>> {
        let namespace = config.namespace.clone();
        let generation = config.generation;
        let engine = match Engine::new(config) {
            Ok(engine) => Arc::new(engine),
            Err(errors) => {
                self.metrics.config_failed(&namespace);
                return Err(errors);
            }
        };
        let previous = self.configs.write().unwrap_or_else(|e| e.into_inner()).insert(namespace.clone(), engine.clone());
        self.metrics.config_applied(&namespace, generation, unix_now());
        // After the swap: a call that registers later re-checks the config itself (see `call::dispatch`).
        self.stop_unserved_calls(&namespace, Some(&engine));
        let tools_changed = previous.as_ref().is_none_or(|p| p.config().tools != engine.config().tools);
        if tools_changed && let Ok(handle) = tokio::runtime::Handle::try_current() {
            // The runtime follows the tools (warm pools, replacing workers of changed tools).
            let (runtime, engine, ns) = (self.runtime.clone(), engine.clone(), namespace.clone());
            handle.spawn(async move { runtime.tools_changed(&ns, &engine.config().tools).await });
        }
        let changed = previous.is_none_or(|p| p.config().tools != engine.config().tools || p.config().policies != engine.config().policies);
        if changed {
            tracing::info!(namespace, generation, tools = engine.config().tools.len(), "config applied");
            self.notify_tools_changed(&namespace);
        }
        Ok(())
    }

    /// Stops serving a namespace (its config was deleted).
    pub fn remove_config(&self, namespace: &str) {
        if self.configs.write().unwrap_or_else(|e| e.into_inner()).remove(namespace).is_some() {
            tracing::info!(namespace, "config removed: the namespace serves no tools");
            self.stop_unserved_calls(namespace, None);
            self.notify_tools_changed(namespace);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (runtime, namespace) = (self.runtime.clone(), namespace.to_owned());
                handle.spawn(async move { runtime.tools_changed(&namespace, &[]).await });
            }
        }
    }

    /// The kill switch for calls already running: those of tools the new config disables or no longer
    /// has are cancelled (their workers stop them) and answered with the reason.
    fn stop_unserved_calls(&self, namespace: &str, config: Option<&Engine>) {
        let stopped = self.running.stop_unserved(namespace, config);
        if stopped > 0 {
            tracing::warn!(namespace, stopped, "stopped running calls of tools the config no longer serves");
        }
    }

    /// Tells every listening client of the namespace that its tool list may have changed.
    fn notify_tools_changed(&self, namespace: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        for session in self.sessions.in_namespace(namespace) {
            let peer = session.peer.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(peer) = peer {
                let id = session.id.clone();
                handle.spawn(async move {
                    if let Err(e) = peer.notify_tool_list_changed().await {
                        tracing::debug!(session = %id, error = %e, "could not send tools/list_changed");
                    }
                });
            }
        }
    }

    /// Registers a session and tells the runtime. A second start of the same id is ignored.
    pub async fn start_session(&self, new: NewSession) -> Arc<SessionRecord> {
        // The runtimes keep `toolwarden_sessions_active` and the session start histogram themselves.
        let (record, created) = self.sessions.insert(new);
        if created {
            if let Err(e) = self.runtime.start_session(record.info()).await {
                // Calls will report the runtime's problem; the session itself is usable for tools/list.
                tracing::warn!(session = %record.id, code = e.code, error = %e, "runtime could not record the session start");
            }
            tracing::info!(session = %record.id, namespace = %record.namespace, subject = %record.subject,
                client = %record.client_name, stateless = record.stateless, "session started");
        }
        record
    }

    /// Starts a session whose id other replicas can derive too (a stateless client's): the runtime records
    /// it first, and when another replica's record of it is already there (`session_exists`: it started the
    /// session at the same moment) nothing is kept here and the error says so; the caller then sends the
    /// request to that replica. Any other runtime problem is logged and the session held, as in
    /// [`Gateway::start_session`].
    pub async fn start_unique_session(&self, new: NewSession) -> Result<Arc<SessionRecord>, crate::runtime::RuntimeError> {
        if let Some(record) = self.sessions.get(&new.id) {
            return Ok(record);
        }
        match self.runtime.start_session(new.info()).await {
            Err(e) if e.code == crate::kubernetes::SESSION_EXISTS => return Err(e),
            Err(e) => tracing::warn!(session = %new.id, code = e.code, error = %e, "runtime could not record the session start"),
            Ok(()) => {}
        }
        let (record, created) = self.sessions.insert(new);
        if created {
            tracing::info!(session = %record.id, namespace = %record.namespace, subject = %record.subject,
                client = %record.client_name, stateless = record.stateless, "session started");
        }
        Ok(record)
    }

    /// Holds a session another replica (or this gateway's previous run) held, taken over by
    /// [`crate::failover`]: `carried` is what its McpSession recorded: the taint, and the approvals and
    /// used confirm tokens, taken into [`Approvals`] (the runtime already holds the counters).
    pub async fn resume_session(&self, new: NewSession, carried: Option<McpSessionStatus>) -> Arc<SessionRecord> {
        let (record, created) = self.sessions.insert(new);
        if created {
            let tainted_by = carried.as_ref().filter(|s| s.tainted).map(|s| s.tainted_by.clone().unwrap_or_default());
            if let Some(tool) = tainted_by {
                record.taint.lock().unwrap_or_else(|e| e.into_inner()).tainted_by = Some(tool);
            }
            if let Some(recorded) = &carried {
                let session = crate::approvals_carry::RestoredSession { id: &record.id, namespace: &record.namespace, subject: &record.subject };
                self.approvals.restore(&session, recorded, self.engine(&record.namespace).as_deref());
                self.approvals_changed(&record.id);
            }
            tracing::info!(session = %record.id, namespace = %record.namespace, subject = %record.subject,
                tainted = record.tainted(), "session continued on this gateway replica");
        }
        record
    }

    /// Whether `subject` may open one more session: each session can start workers (pods in a cluster),
    /// so one caller, by mistake or on purpose, must not open them without bound. The refusal says what
    /// to do. Concurrent first requests of one subject may overshoot the limit by their number.
    pub fn admit_session(&self, namespace: &str, subject: &str) -> Result<(), SessionRefused> {
        let held = self.sessions.len();
        if held >= self.settings.max_sessions {
            // A flood of session starts across many callers: bounded by what one replica holds.
            self.metrics.session_refused(namespace, "gateway_limit");
            tracing::warn!(held, limit = self.settings.max_sessions, "refused a new session: this gateway holds the most sessions allowed");
            return Err(SessionRefused::GatewayFull(format!(
                "this gateway replica holds {held} sessions, the most it allows (--max-sessions); retry later or through another replica"
            )));
        }
        let limit = self.settings.max_sessions_per_subject;
        let open = self.sessions.count_of(subject);
        if open < limit {
            return Ok(());
        }
        self.metrics.session_refused(namespace, "subject_limit");
        tracing::warn!(subject, open, limit, "refused a new session: the subject holds the most sessions allowed");
        Err(SessionRefused::SubjectLimit(format!(
            "{subject} already has {open} open sessions, the most this gateway allows per subject ({limit}); \
             end one (HTTP DELETE with its Mcp-Session-Id) or let idle ones time out"
        )))
    }

    /// Ends a session: stops its workers and forgets its state. Idempotent.
    pub async fn end_session(&self, id: &str, reason: &'static str) {
        // Counted before the record goes, so shutdown sees every session either still listed or ending.
        let _ending = self.ending.token();
        let Some(record) = self.sessions.remove(id) else { return };
        self.limits.end_session(id);
        if reason == "moved" {
            // Another replica continues it: its approvals are decided there or on its McpSession.
            self.approvals.forget_session(id);
        }
        self.runtime.end_session(id, reason).await;
        tracing::info!(session = %id, namespace = %record.namespace, reason, "session ended");
    }

    /// Refreshes the approval gauges (pending count, oldest age) for every namespace served.
    pub fn refresh_approval_metrics(&self) {
        let pending = self.approvals.pending_by_namespace();
        for namespace in self.namespaces() {
            let (count, oldest) = pending.get(&namespace).copied().unwrap_or_default();
            self.metrics.approvals(&namespace, count, oldest);
        }
    }

    /// Waits, up to `limit`, for the session ends under way to finish (shutdown). Returns whether they did.
    pub async fn sessions_ended(&self, limit: Duration) -> bool {
        self.ending.close();
        tokio::time::timeout(limit, self.ending.wait()).await.is_ok()
    }

    /// Tells the runtime about a session's pending approvals and refreshes the gauges.
    pub fn approvals_changed(&self, session_id: &str) {
        self.runtime.set_pending_approvals(session_id, self.approvals.of_session(session_id));
        self.refresh_approval_metrics();
    }
}

#[cfg(test)]
impl Gateway {
    /// A gateway over `runtime` for unit tests: default settings, one static token (`t` × 32, subject
    /// `s`), no audit sink.
    pub(crate) async fn for_tests(runtime: Arc<dyn WorkerRuntime>) -> Arc<Gateway> {
        Gateway::for_tests_with_audit(runtime, None).await
    }

    /// [`Gateway::for_tests`] writing its audit lines to `audit` (a file) when given.
    pub(crate) async fn for_tests_with_audit(runtime: Arc<dyn WorkerRuntime>, audit: Option<&std::path::Path>) -> Arc<Gateway> {
        let token = crate::auth::StaticToken { token: "t".repeat(32), subject: "s".into(), groups: vec![] };
        let auth = Authenticator::new(crate::auth::AuthConfig { static_tokens: vec![token], ..Default::default() }).await.unwrap();
        let (metrics, registry) = GatewayMetrics::new(crate::kubernetes::Metrics::default());
        let audit = AuditLog::open(audit, false, "test").unwrap();
        Arc::new(Gateway::new(Settings::default(), auth, runtime, audit, metrics, registry))
    }
}
