//! rmcp's in-memory session manager, wrapped so the gateway sees sessions start (after `initialize`)
//! and end (DELETE, idle keep-alive, worker exit, or the gateway's own reaper). rmcp may close a session
//! more than once; [`crate::state::Gateway::end_session`] is idempotent.

use std::sync::{Arc, Weak};

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetExtensions, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{RestoreOutcome, ServerSseMessage, SessionId, SessionManager, SessionRestoreMarker};

use crate::sessions::{Caller, NewSession};
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
            if restored {
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
        let result = self.inner.close_session(id).await;
        if let Some(gateway) = self.gateway() {
            gateway.end_session(id, "closed").await;
        }
        result
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }
}
