//! `McpSession` objects: created when a session starts (owner-less, labelled with the gateway), status
//! written by server-side apply under one field manager, deleted when the session ends.

use std::collections::BTreeMap;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use toolwarden_core::resources::{
    API_VERSION, ApprovalState, McpSession, McpSessionSpec, McpSessionStatus, PendingApproval,
};

use super::pod::{APP_NAME, LABEL_APP_NAME, LABEL_GATEWAY, LABEL_MANAGED_BY, MANAGER, label_value};
use super::{Error, Result, api_code, sha256_hex};

/// The McpSession name for a gateway session id: the id itself when it is a valid name, else a hash.
pub fn session_object_name(id: &str) -> String {
    let valid = !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if valid { id.to_owned() } else { format!("s-{}", &sha256_hex(id)[..40]) }
}

/// Labels of every McpSession this gateway writes; restart recovery and the watch select on them.
pub fn session_labels(gateway_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (LABEL_GATEWAY.to_owned(), label_value(gateway_id)),
    ])
}

pub fn gateway_selector(gateway_id: &str) -> String {
    format!("{LABEL_GATEWAY}={}", label_value(gateway_id))
}

/// The server-side-apply body of a status: only the fields this manager owns.
pub fn status_patch(name: &str, status: &McpSessionStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "McpSession",
        "metadata": { "name": name },
        "status": status,
    })
}

#[derive(Clone)]
pub struct SessionStore {
    client: Client,
}

impl SessionStore {
    pub fn new(client: Client) -> Self {
        SessionStore { client }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn api(&self, namespace: &str) -> Api<McpSession> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates the McpSession; returns it with its uid (the pods' owner reference needs it).
    pub async fn create(
        &self,
        namespace: &str,
        name: &str,
        gateway_id: &str,
        spec: McpSessionSpec,
        session_id: &str,
        address: Option<&str>,
    ) -> Result<McpSession> {
        let mut session = McpSession::new(name, spec);
        session.metadata.labels = Some(session_labels(gateway_id));
        // The name may be a hash of the id; a restarted gateway needs the id itself to resume.
        let mut annotations = BTreeMap::from([(super::restart::ANNOTATION_SESSION_ID.to_owned(), session_id.to_owned())]);
        if let Some(address) = address {
            annotations.insert(super::failover::ANNOTATION_GATEWAY_ADDRESS.to_owned(), address.to_owned());
        }
        session.metadata.annotations = Some(annotations);
        session.metadata.namespace = Some(namespace.to_owned());
        match self.api(namespace).create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &session).await {
            Ok(created) => Ok(created),
            Err(e) if api_code(&e) == Some(409) => Err(Error::SessionExists { session: format!("{namespace}/{name}") }),
            Err(e) if api_code(&e) == Some(403) => Err(Error::Forbidden {
                action: "create McpSessions",
                namespace: namespace.to_owned(),
                message: e.to_string(),
            }),
            Err(e) => Err(Error::api(format!("creating McpSession {namespace}/{name}"), e)),
        }
    }

    /// Writes the whole status with server-side apply (field manager `toolwarden-gateway`).
    pub async fn apply_status(&self, namespace: &str, name: &str, status: &McpSessionStatus) -> Result<()> {
        let params = PatchParams::apply(MANAGER).force();
        match self.api(namespace).patch_status(name, &params, &Patch::Apply(status_patch(name, status))).await {
            Ok(_) => Ok(()),
            // Deleted under us: the watch ends the session; nothing to write.
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(Error::api(format!("writing status of McpSession {namespace}/{name}"), e)),
        }
    }

    /// Deletes the McpSession; its pods go with it through their owner references.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<()> {
        match self.api(namespace).delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(Error::api(format!("deleting McpSession {namespace}/{name}"), e)),
        }
    }

    /// Every McpSession this gateway wrote, in every namespace.
    pub async fn list_owned(&self, gateway_id: &str) -> Result<Vec<McpSession>> {
        let api: Api<McpSession> = Api::all(self.client.clone());
        api.list(&ListParams::default().labels(&gateway_selector(gateway_id)))
            .await
            .map(|list| list.items)
            .map_err(|e| Error::api("listing this gateway's McpSessions", e))
    }

    /// Pending approvals of every session in a namespace, whichever replica holds the session.
    /// `(McpSession name, session subject, approval)`.
    pub async fn approvals(&self, namespace: &str) -> Result<Vec<(String, String, PendingApproval)>> {
        let list = self
            .api(namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::api(format!("listing McpSessions in {namespace}"), e))?;
        Ok(list
            .items
            .into_iter()
            .flat_map(|s| {
                let name = s.metadata.name.clone().unwrap_or_default();
                let subject = s.spec.subject.clone();
                s.status
                    .map(|st| st.pending_approvals)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |a| (name.clone(), subject.clone(), a))
            })
            .collect())
    }

    /// Decides a pending approval on the McpSession itself, so any replica can do it. Optimistic: the
    /// write carries the resourceVersion read, and a conflict is retried on fresh data.
    pub async fn decide_approval(
        &self,
        namespace: &str,
        session: &str,
        id: &str,
        state: ApprovalState,
        decided_by: &str,
        reason: Option<String>,
    ) -> Result<Option<PendingApproval>> {
        let api = self.api(namespace);
        for _ in 0..5 {
            let Some(mut object) = api.get_opt(session).await.map_err(|e| Error::api(format!("reading McpSession {session}"), e))?
            else {
                return Err(Error::SessionEnded { session: session.to_owned() });
            };
            let status = object.status.get_or_insert_with(Default::default);
            let Some(approval) = status.pending_approvals.iter_mut().find(|a| a.id == id && a.state == ApprovalState::Pending)
            else {
                return Ok(None);
            };
            approval.state = state;
            approval.decided_by = Some(decided_by.to_owned());
            approval.reason = reason.clone();
            let decided = approval.clone();
            status.pending_approval_count =
                status.pending_approvals.iter().filter(|a| a.state == ApprovalState::Pending).count() as u32;
            let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match api.replace_status(session, &params, &object).await {
                Ok(_) => return Ok(Some(decided)),
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) => return Err(Error::api(format!("deciding approval {id} on McpSession {session}"), e)),
            }
        }
        Err(Error::api(
            format!("deciding approval {id} on McpSession {session}"),
            kube::Error::Api(Box::new(kube::core::Status::failure("too many conflicting writes", "Conflict").with_code(409))),
        ))
    }
}

/// Folds approvals decided elsewhere (another replica, the CLI) into this replica's list: a decision
/// is never undone by a stale local `Pending`.
pub fn merge_remote_decisions(local: &mut [PendingApproval], remote: &[PendingApproval]) -> bool {
    let mut changed = false;
    for approval in local.iter_mut().filter(|a| a.state == ApprovalState::Pending) {
        if let Some(r) = remote.iter().find(|r| r.id == approval.id && r.state != ApprovalState::Pending) {
            approval.state = r.state;
            approval.decided_by = r.decided_by.clone();
            approval.reason = r.reason.clone();
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_valid_kubernetes_names() {
        assert_eq!(session_object_name("3f2a-77"), "3f2a-77");
        let hashed = session_object_name("Mcp_Session/ABC");
        assert!(hashed.starts_with("s-") && hashed.len() == 42, "{hashed}");
        assert_eq!(hashed, session_object_name("Mcp_Session/ABC"));
        assert!(session_object_name(&"a".repeat(64)).starts_with("s-"));
    }

    #[test]
    fn status_patch_names_kind_and_owner_fields_only() {
        let status = McpSessionStatus { calls: 3, tainted: true, ..Default::default() };
        let patch = status_patch("s-1", &status);
        assert_eq!(patch["kind"], "McpSession");
        assert_eq!(patch["metadata"], serde_json::json!({"name": "s-1"}));
        assert_eq!(patch["status"]["calls"], 3);
        assert_eq!(patch["status"]["tainted"], true);
    }

    #[test]
    fn remote_decisions_win_over_local_pending() {
        let pending = PendingApproval { id: "a1".into(), ..Default::default() };
        let mut local = vec![pending.clone(), PendingApproval { id: "a2".into(), ..Default::default() }];
        let remote = vec![PendingApproval {
            state: ApprovalState::Approved,
            decided_by: Some("alice".into()),
            ..pending
        }];
        assert!(merge_remote_decisions(&mut local, &remote));
        assert_eq!(local[0].state, ApprovalState::Approved);
        assert_eq!(local[0].decided_by.as_deref(), Some("alice"));
        assert_eq!(local[1].state, ApprovalState::Pending);
        assert!(!merge_remote_decisions(&mut local, &remote));
    }
}
