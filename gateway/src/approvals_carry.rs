//! What lets a session's approvals outlive the gateway replica holding it (docs/approvals.md, "Several
//! gateway replicas"): one confirm-token key for every replica of a release (`--confirm-key-file`), and a
//! session's approvals and used confirm tokens restored from its McpSession when a replica takes the
//! session over. Recording a use before the call runs is the runtime's part (`WorkerRuntime::record_use`).

use std::path::Path;
use std::time::SystemTime;

use toolwarden_core::policy::Engine;
use toolwarden_core::resources::{ApprovalState, Approvers, McpSessionStatus, PendingApproval};

use crate::approvals::{Approval, Approvals, unix_ms};

/// The shortest confirm-token key accepted: an HMAC-SHA-256 key should carry at least 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfirmKeyError {
    #[error("--confirm-key-file {path}: cannot read it: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--confirm-key-file {path}: the key is {len} bytes long; at least {MIN_KEY_BYTES} are needed (the chart's Secret holds 64 random characters; make one with `head -c 48 /dev/urandom | base64`)"
    )]
    TooShort { path: String, len: usize },
}

/// Reads the release's confirm-token key: the file's bytes without surrounding whitespace (a trailing
/// newline from `echo` or an editor is not part of the key).
pub fn read_confirm_key(path: &Path) -> Result<Vec<u8>, ConfirmKeyError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ConfirmKeyError::Unreadable { path: shown.clone(), source })?;
    let key = bytes.trim_ascii();
    if key.len() < MIN_KEY_BYTES {
        return Err(ConfirmKeyError::TooShort { path: shown, len: key.len() });
    }
    Ok(key.to_vec())
}

/// The session whose record is restored.
pub struct RestoredSession<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub subject: &'a str,
}

fn system_time(rfc3339: &str) -> Option<SystemTime> {
    rfc3339.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// An approval as its McpSession recorded it. Its approvers are those of the policy that asked for it
/// in `engine` (the record does not carry them; every replica serves the same config), so a listed
/// approver can decide it here and its retry is judged as on the replica that parked it.
fn approval_from_record(session: &RestoredSession<'_>, r: &PendingApproval, engine: Option<&Engine>) -> Option<Approval> {
    let (created_at, expires_at) = (system_time(&r.requested_at)?, system_time(&r.expires_at)?);
    let policy = engine.and_then(|e| e.config().policies.iter().find(|p| p.name == r.policy)).and_then(|p| p.approval.as_ref());
    let (approvers, allow_self_approval) = policy.map(|a| (a.approvers.clone(), a.allow_self_approval)).unwrap_or((Approvers::default(), false));
    let pending = r.state == ApprovalState::Pending;
    let preview = r.arguments_preview.as_deref().unwrap_or("{}");
    Some(Approval {
        id: r.id.clone(),
        namespace: session.namespace.to_owned(),
        tool: r.tool.clone(),
        subject: session.subject.to_owned(),
        session_id: session.id.to_owned(),
        arguments: serde_json::from_str(preview).unwrap_or_else(|_| serde_json::Value::String(preview.to_owned())),
        arguments_hash: r.arguments_hash.clone(),
        reason: if pending { r.reason.clone() } else { None }
            .unwrap_or_else(|| format!("{} needs human approval under policy {}", r.tool, r.policy)),
        policy: r.policy.clone(),
        approvers,
        allow_self_approval,
        created_at,
        expires_at,
        state: r.state,
        decided_by: r.decided_by.clone(),
        // Who decided is recorded, not their groups: judged as a decision made on another replica.
        decided_groups: None,
        decision_reason: if pending { None } else { r.reason.clone() },
        call_id: r.call_id.clone().unwrap_or_default(),
        denial_reported: false,
    })
}

impl Approvals {
    /// Takes in what session `session`'s McpSession recorded, when this replica continues the session:
    /// its confirm tokens already used are refused here too, and its approvals pending, approved (not
    /// yet used) or denied (not yet told) are found by the agent's identical retry. Approvals this
    /// replica already knows are kept as they are.
    pub fn restore(&self, session: &RestoredSession<'_>, recorded: &McpSessionStatus, engine: Option<&Engine>) {
        let now = SystemTime::now();
        {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            for token in &recorded.used_confirm_tokens {
                if let Some(expires) = system_time(&token.expires_at) {
                    used.load(&token.nonce, unix_ms(expires), unix_ms(now));
                }
            }
        }
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        for record in &recorded.pending_approvals {
            if !matches!(record.state, ApprovalState::Pending | ApprovalState::Approved | ApprovalState::Denied) || map.contains_key(&record.id) {
                continue;
            }
            match approval_from_record(session, record, engine) {
                Some(approval) if approval.expires_at > now => {
                    map.insert(approval.id.clone(), approval);
                }
                Some(_) => {}
                None => tracing::warn!(approval = %record.id, session = %session.id, "an approval recorded with unreadable times was not restored"),
            }
        }
    }

    /// Forgets a session another replica continues: its approvals are decided there (or on its
    /// McpSession), never in this replica's memory, where a decision would be lost.
    pub fn forget_session(&self, session_id: &str) {
        self.human.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, a| a.session_id != session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_key_file_must_hold_a_long_enough_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::File::create(&path).unwrap().write_all(b"  0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(read_confirm_key(&path).unwrap(), b"0123456789abcdef0123456789abcdef", "surrounding whitespace is not key");
        std::fs::write(&path, "short\n").unwrap();
        let short = read_confirm_key(&path).unwrap_err().to_string();
        assert!(short.contains("the key is 5 bytes long; at least 32 are needed"), "{short}");
        let missing = read_confirm_key(&dir.path().join("absent")).unwrap_err().to_string();
        assert!(missing.starts_with("--confirm-key-file ") && missing.contains("cannot read it"), "{missing}");
    }
}
