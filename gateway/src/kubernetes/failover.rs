//! A session across gateway replicas. Its McpSession names the replica that holds it (the
//! `toolwarden.dev/gateway` label) and where that replica listens (the `toolwarden.dev/gateway-address`
//! annotation). Another replica that gets one of its requests forwards it there; when that replica is
//! gone, the first replica to claim the McpSession (an update conditional on the resourceVersion it
//! read, so two cannot both win) continues the session from what the McpSession recorded.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use toolwarden_core::resources::{McpSession, SessionPhase};

use super::pod::{LABEL_GATEWAY, label_value};
use super::restart::ANNOTATION_SESSION_ID;
use super::session_store::{SessionStore, session_object_name};
use super::{Error, Result, api_code, pods};

/// Annotation holding `host:port` of the replica that holds the session.
pub const ANNOTATION_GATEWAY_ADDRESS: &str = "toolwarden.dev/gateway-address";

/// Where a session lives, as its McpSession says.
#[derive(Clone, Debug)]
pub struct SessionHome {
    pub session: McpSession,
    /// The holder's gateway id label value.
    pub holder: String,
    /// The holder's `host:port`, when it advertised one.
    pub address: Option<String>,
}

impl SessionHome {
    pub fn subject(&self) -> &str {
        &self.session.spec.subject
    }

    /// Not ending or ended. A session just created has no status yet (its holder writes it within a
    /// second): it is active.
    pub fn active(&self) -> bool {
        self.session.metadata.deletion_timestamp.is_none()
            && self.session.status.as_ref().is_none_or(|s| s.phase == SessionPhase::Active)
    }

    /// Whether `gateway_id` holds it.
    pub fn held_by(&self, gateway_id: &str) -> bool {
        self.holder == label_value(gateway_id)
    }
}

/// Reads the McpSession of session `id` in `namespace`; `None` when there is none (or the object with
/// that name belongs to another id).
pub async fn locate(store: &SessionStore, namespace: &str, id: &str) -> Result<Option<SessionHome>> {
    let name = session_object_name(id);
    let session = match store.api(namespace).get_opt(&name).await {
        Ok(Some(session)) => session,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Error::api(format!("reading McpSession {namespace}/{name}"), e)),
    };
    if session.annotations().get(ANNOTATION_SESSION_ID).map(String::as_str) != Some(id) {
        return Ok(None);
    }
    let holder = session.labels().get(LABEL_GATEWAY).cloned().unwrap_or_default();
    let address = session.annotations().get(ANNOTATION_GATEWAY_ADDRESS).cloned();
    Ok(Some(SessionHome { session, holder, address }))
}

/// Makes `gateway_id` (listening at `address`) the session's holder, if the McpSession is still as
/// `home` read it; then deletes the previous holder's worker pods of the session (their tokens died
/// with it). Returns the updated object, or `Error::Moved` when another replica changed it first.
pub async fn claim(store: &SessionStore, home: &SessionHome, gateway_id: &str, address: Option<&str>) -> Result<McpSession> {
    let namespace = home.session.namespace().unwrap_or_default();
    let name = home.session.name_any();
    let patch = claim_patch(home, gateway_id, address);
    let claimed = match store.api(&namespace).patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(claimed) => claimed,
        Err(e) if matches!(api_code(&e), Some(409) | Some(404)) => {
            return Err(Error::Moved { session: format!("{namespace}/{name}") });
        }
        Err(e) => return Err(Error::api(format!("claiming McpSession {namespace}/{name}"), e)),
    };
    let api: Api<Pod> = Api::namespaced(store.client(), &namespace);
    pods::delete_session_pods(&api, &name).await?;
    Ok(claimed)
}

/// The merge patch of a claim: holder label and address, conditional on the resourceVersion read.
pub fn claim_patch(home: &SessionHome, gateway_id: &str, address: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "resourceVersion": home.session.resource_version(),
            "labels": { LABEL_GATEWAY: label_value(gateway_id) },
            "annotations": { ANNOTATION_GATEWAY_ADDRESS: address },
        }
    })
}

/// Whether the replica that listened at `address` is gone: no pod of `namespace` (the gateways' own)
/// has that IP any more, or only ones being deleted or finished. Asked only when a connection to it
/// does not come at once; an API error answers "not known to be gone", so the caller waits out its
/// connect timeout as before.
pub async fn holder_gone(client: &Client, namespace: &str, address: &str) -> bool {
    let Ok(address) = address.parse::<SocketAddr>() else { return false };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default().fields(&format!("status.podIP={}", address.ip()))).await {
        Ok(pods) => !pods.items.iter().any(serving),
        Err(e) => {
            tracing::debug!(%address, error = %e, "could not look up the pod of a gateway replica");
            false
        }
    }
}

/// A pod that may still be serving: not being deleted, not finished.
fn serving(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolwarden_core::resources::{McpSessionSpec, McpSessionStatus};

    fn home(holder: &str, phase: SessionPhase) -> SessionHome {
        let spec = McpSessionSpec {
            subject: "alice".into(),
            groups: vec![],
            client: Default::default(),
            protocol_version: None,
            gateway: None,
            started_at: None,
            idle_timeout_seconds: None,
            max_lifetime_seconds: None,
        };
        let mut session = McpSession::new("s-1", spec);
        session.metadata.resource_version = Some("42".into());
        session.status = Some(McpSessionStatus { phase, ..Default::default() });
        SessionHome { session, holder: holder.into(), address: Some("10.0.0.7:8080".into()) }
    }

    #[test]
    fn a_claim_is_conditional_on_what_was_read_and_moves_label_and_address() {
        let patch = claim_patch(&home("gw-a", SessionPhase::Active), "gw-b", Some("10.0.0.8:8080"));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["labels"][LABEL_GATEWAY], "gw-b");
        assert_eq!(patch["metadata"]["annotations"][ANNOTATION_GATEWAY_ADDRESS], "10.0.0.8:8080");
        let without = claim_patch(&home("gw-a", SessionPhase::Active), "gw-b", None);
        assert!(without["metadata"]["annotations"][ANNOTATION_GATEWAY_ADDRESS].is_null(), "no stale address is left");
    }

    #[test]
    fn only_an_active_session_is_continued_and_its_holder_is_known() {
        assert!(home("gw-a", SessionPhase::Active).active());
        assert!(!home("gw-a", SessionPhase::Ended).active());
        let mut new = home("gw-a", SessionPhase::Active);
        new.session.status = None;
        assert!(new.active(), "a session whose status is not written yet");
        assert!(home("gw-a", SessionPhase::Active).held_by("gw-a"));
        assert!(!home("gw-a", SessionPhase::Active).held_by("gw-b"));
    }

    #[test]
    fn a_holder_is_gone_only_when_no_pod_with_its_ip_may_still_serve() {
        let pod = |phase: &str, deleting: bool| -> Pod {
            let mut metadata = serde_json::json!({"name": "gw"});
            if deleting {
                metadata["deletionTimestamp"] = "2026-12-07T10:00:00Z".into();
            }
            serde_json::from_value(serde_json::json!({"metadata": metadata, "status": {"phase": phase}})).unwrap()
        };
        assert!(serving(&pod("Running", false)));
        assert!(serving(&pod("Pending", false)), "a container restarting in its pod keeps the IP");
        assert!(!serving(&pod("Running", true)), "being deleted");
        assert!(!serving(&pod("Failed", false)));
        assert!(!serving(&pod("Succeeded", false)));
    }
}
