//! rmcp's in-memory session manager, wrapped so the gateway sees sessions start (after `initialize`)
//! and end (DELETE, idle keep-alive, worker exit, or the gateway's own reaper). rmcp may close a session
//! more than once; [`crate::state::Gateway::end_session`] is idempotent.

use std::sync::{Arc, Weak};

use futures::{Stream, StreamExt as _};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetExtensions, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{RestoreOutcome, ServerSseMessage, SessionId, SessionManager, SessionRestoreMarker};

use crate::parking::RmcpHold;
use crate::sessions::{Caller, NewSession, SessionRecord};
use crate::state::Gateway;

pub struct GatewaySessionManager {
    pub inner: LocalSessionManager,
    gateway: std::sync::OnceLock<Weak<Gateway>>,
}

impl GatewaySessionManager {
    pub fn new(inner: LocalSessionManager) -> Self {
        GatewaySessionManager { inner, gateway: std::sync::OnceLock::new() }
    }

    pub fn bind(&self, gateway: &Arc<Gateway>) {
        let _ = self.gateway.set(Arc::downgrade(gateway));
    }

    fn gateway(&self) -> Option<Arc<Gateway>> {
        self.gateway.get().and_then(Weak::upgrade)
    }
}

/// The caller and client of an `initialize` message (the HTTP parts carry the [`Caller`]).
fn new_session(id: &SessionId, message: &ClientJsonRpcMessage) -> Option<NewSession> {
    let ClientJsonRpcMessage::Request(request) = message else { return None };
    let ClientRequest::InitializeRequest(init) = &request.request else { return None };
    let parts = request.request.extensions().get::<http::request::Parts>()?;
    let caller = parts.extensions.get::<Caller>()?.clone();
    Some(NewSession {
        id: id.to_string(),
        caller,
        client_name: init.params.client_info.name.clone(),
        client_version: init.params.client_info.version.clone(),
        protocol_version: Some(init.params.protocol_version.to_string()),
        stateless: false,
    })
}

impl SessionManager for GatewaySessionManager {
    type Error = <LocalSessionManager as SessionManager>::Error;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<ServerJsonRpcMessage, Self::Error> {
        let new = new_session(id, &message);
        // rmcp replays the `initialize` of a session restored here (see `crate::failover`).
        let restored = matches!(&message, ClientJsonRpcMessage::Request(r) if r.request.extensions().get::<SessionRestoreMarker>().is_some());
        let response = self.inner.initialize_session(id, message).await?;
        let succeeded = matches!(response, ServerJsonRpcMessage::Response(_));
        if let (true, Some(new), Some(gateway)) = (succeeded, new, self.gateway()) {
            let unparked = restored && gateway.sessions.get(id).is_some_and(|s| s.rmcp.restored());
            if unparked {
                // A session parked here: its record went on all along.
            } else if restored {
                let carried = gateway.failover.restored(id);
                gateway.resume_session(new, carried).await;
            } else {
                gateway.start_session(new).await;
            }
        }
        Ok(response)
    }

    async fn restore_session(&self, id: SessionId) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let gateway = self.gateway();
        if let Some(record) = gateway.as_ref().and_then(|g| g.sessions.get(id))
            && record.rmcp.closed_by_parking()
        {
            // rmcp's session task ended because the session is being parked: the session goes on.
            return Ok(());
        }
        let result = self.inner.close_session(id).await;
        if let Some(gateway) = gateway {
            gateway.end_session(id, "closed").await;
        }
        result
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.inner.create_stream(id, message).await?;
        Ok(self.held(id, stream))
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.inner.create_standalone_stream(id).await?;
        Ok(self.held(id, stream))
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.inner.resume(id, last_event_id).await?;
        Ok(self.held(id, stream))
    }
}

impl GatewaySessionManager {
    /// `stream`, counted as the session's while it is open: a session with a stream is not parked.
    fn held<S: Stream<Item = ServerSseMessage> + Send + Sync + 'static>(&self, id: &SessionId, stream: S) -> impl Stream<Item = ServerSseMessage> + Send + Sync + 'static {
        let hold = self.gateway().and_then(|g| g.sessions.get(id)).map(|record| RmcpHold::stream(&record));
        stream.map(move |message| {
            let _ = &hold;
            message
        })
    }

    /// Parks the sessions quiet for `after` ([`crate::parking::PARK_AFTER`]) with nothing in rmcp.
    pub async fn park_idle(&self, gateway: &Gateway, after: std::time::Duration) {
        let mut parked = 0;
        for record in gateway.sessions.all() {
            if !record.stateless && record.idle_for() >= after && !record.rmcp.is_parked() && self.park(&record).await {
                parked += 1;
            }
        }
        if parked > 0 {
            release_free_memory();
        }
    }

    /// Parks one session; `false` when it was left alone.
    async fn park(&self, record: &SessionRecord) -> bool {
        // What rmcp replays to restore it; a client that never sent `notifications/initialized` has no
        // peer here, and its session is left alone.
        let params = record.peer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|p| p.peer_info());
        let Some(params) = params else { return false };
        if !record.rmcp.begin() {
            return false;
        }
        let id: SessionId = record.id.clone().into();
        let handle = self.inner.sessions.write().await.remove(&id);
        if let Some(handle) = handle
            && handle.close().await.is_ok()
            && !record.rmcp.wait_closed().await
        {
            tracing::warn!(session = %record.id, "rmcp's session task did not report its end while parking");
        }
        // The peer held rmcp's channels alive; the restore's `notifications/initialized` sets a new one.
        *record.peer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        record.rmcp.parked(Some(params));
        tracing::debug!(session = %record.id, "session parked");
        true
    }
}

/// Gives the pages freed by parking back to the system. glibc's allocator keeps freed memory in its
/// arenas for reuse and returns only the top of the heap by itself; the sessions' channels are spread
/// through it, between allocations that live on.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes the arenas' locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}
