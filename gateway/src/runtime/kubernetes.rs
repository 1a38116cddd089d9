//! The `kubernetes` runtime behind the gateway's [`WorkerRuntime`] trait: sessions become McpSessions,
//! workers are pods (`crate::kubernetes`), calls go to the pod IP with the worker client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::resources::{ApprovalState, ClientInfo, McpSessionStatus, PendingApproval};
use toolwarden_worker::protocol::{CallRequest, CallResult};

use super::worker_client::{WorkerClient, WorkerEndpoint as ClientEndpoint};
use super::{EndedSession, RuntimeError, SessionHome, SessionInfo, SessionUse, SharedApproval, WorkerRuntime};
use crate::kubernetes::{self, KubernetesRuntime, SessionStart, WorkerEndpoint};

/// Time the gateway waits beyond the tool's own timeout (which the worker enforces) before it gives up
/// on the pod: connection set-up, result transfer, a slow node.
const CALL_MARGIN: Duration = Duration::from_secs(5);

/// Worker client errors that mean the pod itself may be gone, so the runtime should find out why.
const TRANSPORT_FAILURES: &[&str] = &["worker_died", "worker_unreachable", "worker_timeout"];

pub struct KubernetesWorkerRuntime {
    inner: Arc<KubernetesRuntime>,
    /// Keep-alive clients by pod name; dropped when the pod is replaced or its session ends.
    clients: Mutex<HashMap<String, (String, Arc<WorkerClient>)>>,
    ended: broadcast::Sender<EndedSession>,
}

impl KubernetesWorkerRuntime {
    /// Wraps a started [`KubernetesRuntime`] and forwards the sessions it ends on its own.
    pub fn new(inner: Arc<KubernetesRuntime>) -> Arc<Self> {
        let (ended, _) = broadcast::channel(256);
        let runtime = Arc::new(KubernetesWorkerRuntime { inner: inner.clone(), clients: Mutex::new(HashMap::new()), ended });
        let mut from_inner = inner.subscribe_ended();
        let weak = Arc::downgrade(&runtime);
        tokio::spawn(async move {
            loop {
                let event = match from_inner.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(runtime) = weak.upgrade() else { return };
                runtime.forget_session(&event.id);
                let _ = runtime.ended.send(EndedSession { namespace: event.namespace, id: event.id, reason: event.reason });
            }
        });
        runtime
    }

    pub fn inner(&self) -> &Arc<KubernetesRuntime> {
        &self.inner
    }

    fn client_for(&self, session_id: &str, endpoint: &WorkerEndpoint) -> Result<Arc<WorkerClient>, RuntimeError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // A pod keeps its IP and token for life, and a replacement pod has a new name.
        if let Some((_, client)) = clients.get(&endpoint.pod) {
            return Ok(client.clone());
        }
        let target: ClientEndpoint = endpoint
            .url
            .parse()
            .map_err(|e: String| RuntimeError::new("worker_protocol", format!("worker pod {}: {e}", endpoint.pod)))?;
        let client = Arc::new(WorkerClient::new(target, endpoint.token.clone()));
        clients.insert(endpoint.pod.clone(), (session_id.to_owned(), client.clone()));
        Ok(client)
    }

    fn forget_pod(&self, pod: &str) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(pod);
    }

    fn forget_session(&self, session_id: &str) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (session, _)| session != session_id);
    }
}

/// A Kubernetes runtime error as the gateway reports it: the runtime's own code and sentence.
pub fn runtime_error(error: kubernetes::Error) -> RuntimeError {
    RuntimeError { code: error.code(), transient: error.is_transient(), message: error.to_string() }
}

impl WorkerRuntime for KubernetesWorkerRuntime {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn start_session(&self, session: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            let start = SessionStart {
                namespace: session.namespace,
                id: session.id,
                subject: session.subject,
                groups: session.groups,
                client: ClientInfo {
                    name: session.client_name,
                    version: Some(session.client_version).filter(|v| !v.is_empty()),
                },
                protocol_version: session.protocol_version,
            };
            self.inner.start_session(start).await.map(|_| ()).map_err(runtime_error)
        })
    }

    fn call<'a>(
        &'a self,
        session_id: &'a str,
        tool: &'a ToolConfig,
        request: CallRequest,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        Box::pin(async move {
            let endpoint = self.inner.worker(session_id, tool).await.map_err(runtime_error)?;
            let client = self.client_for(session_id, &endpoint)?;
            let timeout = Duration::from_millis(tool.timeout_ms) + CALL_MARGIN;
            match super::unless_cancelled(cancel, client.call(&request, timeout)).await {
                Err(e) if TRANSPORT_FAILURES.contains(&e.code) => {
                    self.forget_pod(&endpoint.pod);
                    let why = self.inner.call_failed(session_id, tool, &endpoint).await;
                    Err(RuntimeError { message: format!("{why} ({})", e.message), ..runtime_error(why) })
                }
                other => other,
            }
        })
    }

    fn start_timeout(&self) -> Duration {
        self.inner.config().start_timeout
    }

    fn end_session<'a>(&'a self, session_id: &'a str, reason: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.forget_session(session_id);
            if let Err(e) = self.inner.end_session(session_id, reason).await {
                tracing::warn!(session = %session_id, error = %e, "ending the session left objects behind; the operator's session GC and pod deadlines remove them");
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.clients.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.inner.shutdown().await;
        })
    }

    fn record_call(&self, session_id: &str, denied: bool, tainted_by: Option<&str>) {
        self.inner.record_call(session_id, denied, tainted_by);
    }

    fn touch(&self, session_id: &str) {
        self.inner.touch(session_id);
    }

    fn set_pending_approvals(&self, session_id: &str, approvals: Vec<PendingApproval>) {
        self.inner.set_pending_approvals(session_id, approvals);
    }

    fn record_use<'a>(&'a self, session_id: &'a str, used: &'a SessionUse) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { self.inner.record_use(session_id, used).await.map_err(runtime_error) })
    }

    fn gateway_id(&self) -> Option<&str> {
        Some(&self.inner.config().gateway_id)
    }

    fn advertise_address(&self) -> Option<&str> {
        self.inner.config().advertise_address.as_deref()
    }

    fn locate_session<'a>(&'a self, namespace: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SessionHome>, RuntimeError>> {
        Box::pin(async move { kubernetes::failover::locate(self.inner.store(), namespace, id).await.map_err(runtime_error) })
    }

    fn take_over<'a>(&'a self, home: &'a SessionHome, id: &'a str) -> BoxFuture<'a, Result<McpSessionStatus, RuntimeError>> {
        Box::pin(async move { self.inner.take_over(home, id).await.map_err(runtime_error) })
    }

    fn holder_gone<'a>(&'a self, address: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match &self.inner.config().pod_namespace {
                Some(namespace) => kubernetes::failover::holder_gone(self.inner.client(), namespace, address).await,
                None => false,
            }
        })
    }

    fn subscribe_ended(&self) -> Option<broadcast::Receiver<EndedSession>> {
        Some(self.ended.subscribe())
    }

    fn remote_decisions(&self, session_id: &str) -> Vec<PendingApproval> {
        self.inner.pending_approvals(session_id).into_iter().filter(|a| a.state != ApprovalState::Pending).collect()
    }

    fn shared_approvals<'a>(&'a self, namespaces: &'a [String]) -> BoxFuture<'a, Result<Vec<SharedApproval>, RuntimeError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for namespace in namespaces {
                let found = self.inner.store().approvals(namespace).await.map_err(runtime_error)?;
                all.extend(found.into_iter().filter(|(_, _, a)| a.state == ApprovalState::Pending).map(
                    |(session, subject, approval)| SharedApproval { namespace: namespace.clone(), session, subject, approval },
                ));
            }
            Ok(all)
        })
    }

    fn decide_shared_approval<'a>(
        &'a self,
        shared: &'a SharedApproval,
        approve: bool,
        decided_by: &'a str,
        reason: Option<String>,
    ) -> BoxFuture<'a, Result<Option<PendingApproval>, RuntimeError>> {
        Box::pin(async move {
            let state = if approve { ApprovalState::Approved } else { ApprovalState::Denied };
            self.inner
                .store()
                .decide_approval(&shared.namespace, &shared.session, &shared.approval.id, state, decided_by, reason)
                .await
                .map_err(runtime_error)
        })
    }

    fn tools_changed<'a>(&'a self, namespace: &'a str, tools: &'a [ToolConfig]) -> BoxFuture<'a, ()> {
        Box::pin(self.inner.set_tools(namespace, tools))
    }
}
