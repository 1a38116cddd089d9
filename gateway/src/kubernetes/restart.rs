//! What a (re)starting gateway does with what its previous run left behind: sessions whose clients may
//! still come back are kept (without pods), the rest are ended, and no worker pod of this gateway
//! survives — their tokens died with the old process, so nobody could ever call them again.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use toolwarden_core::resources::{McpSession, McpSessionStatus, SessionPhase};

use super::pod::{LABEL_COMPONENT, LABEL_GATEWAY, label_value};
use super::pods;
use super::session_store::SessionStore;
use super::{Error, KubernetesConfig, Result};

/// Annotation holding the gateway's own session id (the object name may be a hash of it).
pub const ANNOTATION_SESSION_ID: &str = "toolwarden.dev/session-id";

/// What recovery found and did.
#[derive(Debug, Default)]
pub struct RestartReport {
    /// Sessions kept for their clients to resume, with their pods removed.
    pub resumed: Vec<McpSession>,
    /// `namespace/name` of sessions ended.
    pub ended: Vec<String>,
    /// Worker pods deleted (session pods and warm pods alike).
    pub pods_deleted: usize,
}

/// Whether a session found after a restart may be resumed: active, and neither idle nor too old. Its
/// client's next request continues it: rmcp restores an `Mcp-Session-Id` session through
/// `crate::failover`, and a stateless client sends the same derived id again.
pub fn resumable(session: &McpSession, config: &KubernetesConfig, now: jiff::Timestamp) -> bool {
    if !config.resume_sessions || session.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if !session.annotations().contains_key(ANNOTATION_SESSION_ID) {
        return false;
    }
    let status = session.status.clone().unwrap_or_default();
    if status.phase != SessionPhase::Active {
        return false;
    }
    let age = |at: Option<&str>| at.and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| now.duration_since(t));
    let within = |at: Option<&str>, limit: Duration| match age(at) {
        Some(elapsed) => elapsed.as_secs() >= 0 && (elapsed.as_secs() as u64) < limit.as_secs(),
        None => false,
    };
    let started = session.spec.started_at.as_deref();
    let last = status.last_activity.as_deref().or(started);
    within(started, config.max_lifetime) && within(last, config.idle_timeout)
}

/// Lists this gateway's sessions and pods and puts them in order.
pub async fn recover(client: &Client, store: &SessionStore, config: &KubernetesConfig) -> Result<RestartReport> {
    let mut report = RestartReport::default();
    let now = jiff::Timestamp::now();
    for session in store.list_owned(&config.gateway_id).await? {
        let namespace = session.namespace().unwrap_or_default();
        let name = session.name_any();
        if resumable(&session, config, now) {
            // The pods go below; the status must stop naming them.
            let status = McpSessionStatus {
                workers: Vec::new(),
                worker_count: 0,
                ..session.status.clone().unwrap_or_default()
            };
            store.apply_status(&namespace, &name, &status).await?;
            report.resumed.push(McpSession { status: Some(status), ..session });
        } else {
            store.delete(&namespace, &name).await?;
            report.ended.push(format!("{namespace}/{name}"));
        }
    }
    let all: Api<Pod> = Api::all(client.clone());
    let selector = format!("{LABEL_GATEWAY}={},{LABEL_COMPONENT}=worker", label_value(&config.gateway_id));
    let leftovers = all
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::api("listing this gateway's worker pods", e))?;
    for pod in leftovers.items {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        pods::delete(&api, &pod.name_any()).await?;
        report.pods_deleted += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolwarden_core::resources::McpSessionSpec;

    fn session(started: &str, last: Option<&str>, phase: SessionPhase) -> McpSession {
        with_id("sl-1", started, last, phase)
    }

    fn with_id(id: &str, started: &str, last: Option<&str>, phase: SessionPhase) -> McpSession {
        let mut s = McpSession::new(
            "s-1",
            McpSessionSpec {
                subject: "alice".into(),
                groups: vec![],
                client: Default::default(),
                protocol_version: None,
                gateway: None,
                started_at: Some(started.into()),
                idle_timeout_seconds: None,
                max_lifetime_seconds: None,
            },
        );
        s.metadata.annotations = Some([(ANNOTATION_SESSION_ID.to_owned(), id.to_owned())].into());
        s.status = Some(McpSessionStatus { phase, last_activity: last.map(Into::into), ..Default::default() });
        s
    }

    #[test]
    fn only_live_active_sessions_are_resumed() {
        let config = KubernetesConfig::default();
        let now: jiff::Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        assert!(resumable(&session("2026-01-01T11:00:00Z", Some("2026-01-01T11:59:00Z"), SessionPhase::Active), &config, now));
        assert!(!resumable(&session("2026-01-01T11:00:00Z", Some("2026-01-01T11:00:00Z"), SessionPhase::Active), &config, now), "idle");
        assert!(!resumable(&session("2026-01-01T01:00:00Z", Some("2026-01-01T11:59:00Z"), SessionPhase::Active), &config, now), "too old");
        assert!(!resumable(&session("2026-01-01T11:00:00Z", None, SessionPhase::Ended), &config, now));
        let stateful = with_id("0b5e3c1c-4a53-4d3f-9d2a-6c1b2f1e7a10", "2026-01-01T11:00:00Z", Some("2026-01-01T11:59:00Z"), SessionPhase::Active);
        assert!(resumable(&stateful, &config, now), "an Mcp-Session-Id session is restored on its next request");
        let off = KubernetesConfig { resume_sessions: false, ..KubernetesConfig::default() };
        assert!(!resumable(&session("2026-01-01T11:00:00Z", Some("2026-01-01T11:59:00Z"), SessionPhase::Active), &off, now));
    }
}
