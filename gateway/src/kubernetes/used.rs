//! Uses of a session's confirm tokens and approvals, recorded on its McpSession before the call runs, so
//! that a replica taking the session over refuses them again (docs/sessions-kubernetes.md, "Replicas").
//!
//! The write is conditional: it carries the resourceVersion just read, and only the replica the object
//! names as the session's holder makes it. A replica that claims the session moves the resourceVersion
//! on (and reads what was recorded before it), so two replicas can never both use one token or one
//! approval, and a use recorded before a holder died is known to the next.

use kube::ResourceExt;
use kube::api::PostParams;
use toolwarden_core::resources::{ApprovalState, McpSessionStatus, PendingApproval, UsedConfirmToken};

use super::pod::{LABEL_GATEWAY, MANAGER, label_value};
use super::runtime::KubernetesRuntime;
use super::session_store::SessionStore;
use super::{Error, Result, api_code};

/// Unexpired used confirm tokens one McpSession records at most: a session cannot grow its object
/// without bound by confirming calls.
pub const MAX_USED_TOKENS: usize = 1000;

/// What a call is about to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionUse {
    ConfirmToken(UsedConfirmToken),
    /// The approval as it is now used (its state is `used`).
    Approval(PendingApproval),
}

fn expired(token: &UsedConfirmToken, now: jiff::Timestamp) -> bool {
    token.expires_at.parse::<jiff::Timestamp>().map_or(true, |t| t <= now)
}

impl SessionUse {
    /// Writes the use into `status`, dropping the records of tokens expired by `now`. Writing it twice
    /// changes nothing. `Err` says why it cannot be recorded.
    pub fn apply(&self, status: &mut McpSessionStatus, now: jiff::Timestamp) -> Result<()> {
        match self {
            SessionUse::ConfirmToken(token) => {
                status.used_confirm_tokens.retain(|t| !expired(t, now));
                // An expired token is refused anyway: it needs no record.
                if expired(token, now) || status.used_confirm_tokens.iter().any(|t| t.nonce == token.nonce) {
                    return Ok(());
                }
                if status.used_confirm_tokens.len() >= MAX_USED_TOKENS {
                    return Err(Error::TooManyUsedTokens { limit: MAX_USED_TOKENS });
                }
                status.used_confirm_tokens.push(token.clone());
            }
            SessionUse::Approval(approval) => {
                let used = PendingApproval { state: ApprovalState::Used, ..approval.clone() };
                match status.pending_approvals.iter_mut().find(|a| a.id == approval.id) {
                    Some(recorded) => *recorded = used,
                    None => status.pending_approvals.push(used),
                }
                status.pending_approval_count = status.pending_approvals.iter().filter(|a| a.state == ApprovalState::Pending).count() as u32;
            }
        }
        Ok(())
    }

    /// Takes back a use that could not be recorded (nothing ran).
    pub fn undo(&self, status: &mut McpSessionStatus) {
        match self {
            SessionUse::ConfirmToken(token) => status.used_confirm_tokens.retain(|t| t.nonce != token.nonce),
            SessionUse::Approval(approval) => {
                if let Some(recorded) = status.pending_approvals.iter_mut().find(|a| a.id == approval.id && a.state == ApprovalState::Used) {
                    recorded.state = ApprovalState::Approved;
                }
            }
        }
    }
}

impl KubernetesRuntime {
    /// Records on the McpSession, before the call runs, that a confirm token or an approval of held
    /// session `session_id` is used. It goes into the status this gateway flushes first, so that no
    /// flush drops it, and is taken back if the write fails.
    pub async fn record_use(&self, session_id: &str, used: &SessionUse) -> Result<()> {
        let now = jiff::Timestamp::now();
        let applied = self.with_status(session_id, |namespace, name, status| used.apply(status, now).map(|()| (namespace.to_owned(), name.to_owned())));
        let (namespace, name) = applied.ok_or_else(|| Error::UnknownSession { session: session_id.to_owned() })??;
        let written = self.store().record_use(&namespace, &name, &self.config().gateway_id, used).await;
        if written.is_err() {
            self.with_status(session_id, |_, _, status| used.undo(status));
        }
        written
    }
}

/// Conflicting writes tried again (on fresh data) before the use is refused as not recorded.
const ATTEMPTS: usize = 5;

impl SessionStore {
    /// Records `used` on McpSession `namespace/name`, if `gateway_id` holds it: read, check the holder,
    /// write with the resourceVersion read; a conflict is tried again on fresh data.
    pub async fn record_use(&self, namespace: &str, name: &str, gateway_id: &str, used: &SessionUse) -> Result<()> {
        let api = self.api(namespace);
        let context = || format!("recording a use on McpSession {namespace}/{name}");
        for _ in 0..ATTEMPTS {
            let Some(mut object) = api.get_opt(name).await.map_err(|e| Error::api(context(), e))? else {
                return Err(Error::SessionEnded { session: format!("{namespace}/{name}") });
            };
            if object.labels().get(LABEL_GATEWAY) != Some(&label_value(gateway_id)) || object.metadata.deletion_timestamp.is_some() {
                return Err(Error::Moved { session: format!("{namespace}/{name}") });
            }
            used.apply(object.status.get_or_insert_with(Default::default), jiff::Timestamp::now())?;
            let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match api.replace_status(name, &params, &object).await {
                Ok(_) => return Ok(()),
                Err(e) if api_code(&e) == Some(409) => continue,
                Err(e) if api_code(&e) == Some(404) => return Err(Error::SessionEnded { session: format!("{namespace}/{name}") }),
                Err(e) => return Err(Error::api(context(), e)),
            }
        }
        Err(Error::api(
            context(),
            kube::Error::Api(Box::new(kube::core::Status::failure("too many conflicting writes", "Conflict").with_code(409))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(nonce: &str, expires_at: &str) -> SessionUse {
        SessionUse::ConfirmToken(UsedConfirmToken { nonce: nonce.into(), expires_at: expires_at.into() })
    }

    #[test]
    fn a_used_token_is_recorded_once_and_expired_records_go() {
        let now: jiff::Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let mut status = McpSessionStatus::default();
        token("old", "2026-12-07T11:59:59Z").apply(&mut status, now).unwrap();
        assert!(status.used_confirm_tokens.is_empty(), "an expired token needs no record");
        status.used_confirm_tokens.push(UsedConfirmToken { nonce: "stale".into(), expires_at: "2026-12-07T11:00:00Z".into() });
        let fresh = token("n1", "2026-12-07T12:05:00Z");
        fresh.apply(&mut status, now).unwrap();
        fresh.apply(&mut status, now).unwrap();
        assert_eq!(status.used_confirm_tokens.iter().map(|t| t.nonce.as_str()).collect::<Vec<_>>(), ["n1"]);
        fresh.undo(&mut status);
        assert!(status.used_confirm_tokens.is_empty());
    }

    #[test]
    fn a_session_records_a_bounded_number_of_used_tokens() {
        let now: jiff::Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let mut status = McpSessionStatus::default();
        for i in 0..MAX_USED_TOKENS {
            token(&format!("n{i}"), "2026-12-07T12:05:00Z").apply(&mut status, now).unwrap();
        }
        let refused = token("one-more", "2026-12-07T12:05:00Z").apply(&mut status, now).unwrap_err();
        assert_eq!(refused.code(), "too_many_used_tokens");
        assert!(refused.to_string().contains("1000 confirm tokens"), "{refused}");
    }

    #[test]
    fn a_used_approval_is_recorded_as_used_and_undone_back_to_approved() {
        let approved = PendingApproval { id: "ap-1".into(), state: ApprovalState::Approved, ..Default::default() };
        let mut status = McpSessionStatus { pending_approvals: vec![approved.clone()], ..Default::default() };
        let used = SessionUse::Approval(approved);
        used.apply(&mut status, jiff::Timestamp::now()).unwrap();
        assert_eq!(status.pending_approvals[0].state, ApprovalState::Used);
        used.undo(&mut status);
        assert_eq!(status.pending_approvals[0].state, ApprovalState::Approved);
        // Decided here and not flushed yet: the record is written whole.
        let mut empty = McpSessionStatus::default();
        used.apply(&mut empty, jiff::Timestamp::now()).unwrap();
        assert_eq!((empty.pending_approvals.len(), empty.pending_approvals[0].state), (1, ApprovalState::Used));
    }
}
