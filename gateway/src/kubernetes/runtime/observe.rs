//! What the runtime does about changes to its McpSessions that others made: `kubectl delete`, another
//! replica's claim, an approval decided on another replica. A watch on this gateway's McpSessions
//! feeds [`KubernetesRuntime::observe`].

use std::sync::Weak;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use toolwarden_core::resources::{ApprovalState, McpSession};

use super::super::pod::{LABEL_GATEWAY, label_value};
use super::super::session_store::merge_remote_decisions;
use super::super::status_writes::Unwritten;
use super::KubernetesRuntime;

impl KubernetesRuntime {
    /// Reacts to a change of one of this gateway's McpSessions seen by the watch.
    pub async fn observe(&self, session: McpSession, deleted: bool) {
        let (namespace, name) = (session.namespace().unwrap_or_default(), session.name_any());
        let id = self.lock().iter().find(|(_, s)| s.namespace == namespace && s.name == name).map(|(id, _)| id.clone());
        let Some(id) = id else { return };
        // A watch by label reports an object whose label changed as deleted: another replica claimed it.
        let claimed_elsewhere = session.labels().get(LABEL_GATEWAY).is_some_and(|holder| *holder != label_value(&self.config.gateway_id));
        if claimed_elsewhere && session.metadata.deletion_timestamp.is_none() {
            self.moved_away(&id);
            return;
        }
        if deleted || session.metadata.deletion_timestamp.is_some() {
            if let Err(e) = self.finish(&id, "deleted", false).await {
                tracing::warn!(session = %name, error = %e, "ending a deleted session");
            }
            return;
        }
        let remote = session.status.map(|s| s.pending_approvals).unwrap_or_default();
        let mut sessions = self.lock();
        if let Some(s) = sessions.get_mut(&id)
            && merge_remote_decisions(&mut s.status.pending_approvals, &remote)
        {
            s.status.pending_approval_count =
                s.status.pending_approvals.iter().filter(|a| a.state == ApprovalState::Pending).count() as u32;
            s.unwritten.note(Unwritten::Now);
        }
    }
}

pub(super) async fn watch_sessions(runtime: Weak<KubernetesRuntime>, client: Client, selector: String) {
    let api: Api<McpSession> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default().labels(&selector)).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let Some(rt) = runtime.upgrade() else { return };
        match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => rt.observe(s, false).await,
            Ok(watcher::Event::Delete(s)) => rt.observe(s, true).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching McpSessions"),
        }
    }
}
