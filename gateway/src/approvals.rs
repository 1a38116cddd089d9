//! Approvals held by the gateway: human approvals (pending until a listed approver decides, then good for
//! exactly one identical retry) and confirm tokens (core `approval`: single use, bound to session, tool
//! and the canonical argument hash).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use toolwarden_core::approval::{TokenBinding, TokenError, UsedTokens, VerifiedToken, issue_token, verify_token};
use toolwarden_core::resources::{ApprovalState, Approvers, PendingApproval};

use crate::audit::rfc3339;

#[derive(Clone, Debug)]
pub struct Approval {
    pub id: String,
    pub namespace: String,
    pub tool: String,
    pub subject: String,
    pub session_id: String,
    /// Sanitised (secrets and long values redacted).
    pub arguments: Value,
    pub arguments_hash: String,
    pub reason: String,
    pub policy: String,
    pub approvers: Approvers,
    pub allow_self_approval: bool,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    pub state: ApprovalState,
    pub decided_by: Option<String>,
    /// The decider's groups when decided here; `None` when decided on another replica (the McpSession
    /// shows who decided, not their groups).
    pub decided_groups: Option<Vec<String>>,
    pub decision_reason: Option<String>,
    /// The call that asked for it (its audit lines carry this id).
    pub call_id: String,
    /// A denial is told to the agent once; its next identical call asks anew.
    pub denial_reported: bool,
}

/// The JSON of `GET /approvals` entries.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalView {
    pub id: String,
    pub namespace: String,
    pub tool: String,
    pub subject: String,
    pub session_id: String,
    pub arguments: Value,
    pub reason: String,
    pub policy: String,
    pub created_at: String,
    pub expires_at: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
}

/// Whether `subject` (with `groups`) may decide a call `requester` asked for; `Err` says why not.
pub fn may_decide(
    approvers: &toolwarden_core::resources::Approvers,
    allow_self_approval: bool,
    requester: &str,
    subject: &str,
    groups: &[String],
) -> Result<(), &'static str> {
    let listed = approvers.users.iter().any(|u| u == subject || u == "*") || approvers.groups.iter().any(|g| groups.contains(g));
    if !listed {
        return Err("you are not an approver for this call: the policy names who may approve it");
    }
    if subject == requester && !allow_self_approval {
        return Err("you requested this call, and the policy does not allow self-approval: another approver must decide");
    }
    Ok(())
}

pub fn state_str(state: ApprovalState) -> &'static str {
    match state {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
        ApprovalState::Expired => "expired",
        ApprovalState::Used => "used",
    }
}

impl Approval {
    pub fn view(&self) -> ApprovalView {
        ApprovalView {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            tool: self.tool.clone(),
            subject: self.subject.clone(),
            session_id: self.session_id.clone(),
            arguments: self.arguments.clone(),
            reason: self.reason.clone(),
            policy: self.policy.clone(),
            created_at: rfc3339(self.created_at),
            expires_at: rfc3339(self.expires_at),
            state: state_str(self.state),
            decided_by: self.decided_by.clone(),
            decision_reason: self.decision_reason.clone(),
        }
    }

    /// Whether `subject` (with `groups`) may decide this approval; `Err` says why not.
    pub fn may_decide(&self, subject: &str, groups: &[String]) -> Result<(), &'static str> {
        may_decide(&self.approvers, self.allow_self_approval, &self.subject, subject, groups)
    }

    pub fn pending_approval(&self) -> PendingApproval {
        PendingApproval {
            id: self.id.clone(),
            tool: self.tool.clone(),
            arguments_hash: self.arguments_hash.clone(),
            arguments_preview: Some(self.arguments.to_string()),
            policy: self.policy.clone(),
            requested_at: rfc3339(self.created_at),
            expires_at: rfc3339(self.expires_at),
            state: self.state,
            decided_by: self.decided_by.clone(),
            // Once decided, the record carries the decider's reason (as another replica writes it).
            reason: if self.state == ApprovalState::Pending { Some(self.reason.clone()) } else { self.decision_reason.clone() },
            call_id: Some(self.call_id.clone()).filter(|c| !c.is_empty()),
        }
    }
}

/// What an identical retry of a call needing human approval finds.
#[derive(Debug, PartialEq)]
pub enum HumanStatus {
    /// Approved and now used: run the call.
    Approved { id: String, decided_by: String },
    Pending { id: String, expires_at: SystemTime },
    Denied { id: String, decided_by: String, reason: Option<String> },
    /// A new pending approval was created.
    Created { id: String, expires_at: SystemTime },
    /// The session already has [`MAX_PENDING_PER_SESSION`] approvals waiting.
    TooMany,
    /// Approved, but it no longer counts under the session's current state and config (see
    /// [`crate::approvals_check::still_counts`]); it is now expired.
    Invalidated { id: String, decided_by: String, why: String },
}

/// Pending approvals one session may hold: an agent cannot flood approvers (or the gateway's memory).
pub const MAX_PENDING_PER_SESSION: usize = 20;

#[derive(Debug, PartialEq)]
pub enum DecideError {
    Unknown,
    NotAnApprover(String),
    AlreadyDecided(&'static str),
    /// The call can no longer run (its session ended, its tool is disabled...): nothing to approve.
    Stale(String),
}

pub struct Approvals {
    /// The HMAC key of confirm tokens: drawn at start, or the release's shared key
    /// (`--confirm-key-file`) so that every replica accepts the tokens of the others.
    key: Vec<u8>,
    pub(crate) used: Mutex<UsedTokens>,
    pub(crate) human: Mutex<HashMap<String, Approval>>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Default for Approvals {
    /// With a key of this process only: its confirm tokens are valid on this gateway alone.
    fn default() -> Self {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source works");
        Approvals::with_key(key)
    }
}

/// The request a new human approval is made from.
pub struct HumanRequest<'a> {
    pub namespace: &'a str,
    pub tool: &'a str,
    pub subject: &'a str,
    pub session_id: &'a str,
    pub arguments: Value,
    pub arguments_hash: &'a str,
    pub request: &'a toolwarden_core::policy::ApprovalRequest,
    pub call_id: &'a str,
}

impl Approvals {
    /// Signs confirm tokens with `key` (see [`crate::approvals_carry::read_confirm_key`]).
    pub fn with_key(key: Vec<u8>) -> Self {
        Approvals { key, used: Mutex::default(), human: Mutex::default() }
    }

    pub fn issue_confirm(&self, binding: TokenBinding<'_>, ttl: Duration) -> (String, SystemTime) {
        let now = SystemTime::now();
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let token = issue_token(&self.key, binding, unix_ms(now), ttl.as_millis() as u64, nonce);
        (token, now + ttl)
    }

    /// Verifies and consumes a confirm token; returns its nonce and expiry, which the runtime records
    /// where other replicas see them before the call runs (else [`Approvals::release_confirm`]).
    pub fn use_confirm(&self, token: &str, binding: TokenBinding<'_>) -> Result<VerifiedToken, TokenError> {
        let now = unix_ms(SystemTime::now());
        let verified = verify_token(&self.key, token, binding, now)?;
        self.used.lock().unwrap_or_else(|e| e.into_inner()).consume(&verified, now)?;
        Ok(verified)
    }

    /// The use of a confirm token could not be recorded and nothing ran: the token counts again.
    pub fn release_confirm(&self, nonce: &str) {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).release(nonce);
    }

    /// The use of approved `id` could not be recorded and nothing ran: it is approved again, for the
    /// agent's next identical call.
    pub fn unuse(&self, id: &str) {
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = map.get_mut(id).filter(|a| a.state == ApprovalState::Used) {
            a.state = ApprovalState::Approved;
        }
    }

    fn expire(map: &mut HashMap<String, Approval>, now: SystemTime) {
        for a in map.values_mut() {
            if matches!(a.state, ApprovalState::Pending | ApprovalState::Approved) && a.expires_at <= now {
                a.state = ApprovalState::Expired;
            }
        }
        // Keep decided records an hour past expiry for `GET /approvals`, then forget them.
        map.retain(|_, a| a.expires_at + Duration::from_secs(3600) > now);
    }

    /// Finds this call's approval (same session, tool and argument hash) or parks a new one. An approved
    /// one is used only when `still_counts` accepts it (checked under the lock, so it is used once);
    /// otherwise it expires and the call is told why.
    pub fn human(&self, req: HumanRequest<'_>, still_counts: impl FnOnce(&Approval) -> Result<(), String>) -> HumanStatus {
        let now = SystemTime::now();
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut map, now);
        let matching = map.values_mut().find(|a| {
            a.session_id == req.session_id
                && a.tool == req.tool
                && a.arguments_hash == req.arguments_hash
                && match a.state {
                    ApprovalState::Pending | ApprovalState::Approved => true,
                    ApprovalState::Denied => !a.denial_reported,
                    _ => false,
                }
        });
        if let Some(a) = matching {
            let decided_by = a.decided_by.clone().unwrap_or_default();
            return match a.state {
                ApprovalState::Approved => match still_counts(a) {
                    Ok(()) => {
                        a.state = ApprovalState::Used;
                        HumanStatus::Approved { id: a.id.clone(), decided_by }
                    }
                    Err(why) => {
                        a.state = ApprovalState::Expired;
                        HumanStatus::Invalidated { id: a.id.clone(), decided_by, why }
                    }
                },
                ApprovalState::Denied => {
                    a.denial_reported = true;
                    HumanStatus::Denied { id: a.id.clone(), decided_by, reason: a.decision_reason.clone() }
                }
                _ => HumanStatus::Pending { id: a.id.clone(), expires_at: a.expires_at },
            };
        }
        let pending = map.values().filter(|a| a.session_id == req.session_id && a.state == ApprovalState::Pending).count();
        if pending >= MAX_PENDING_PER_SESSION {
            return HumanStatus::TooMany;
        }
        let id = format!("ap-{}", random_hex(8));
        let expires_at = now + req.request.ttl;
        map.insert(
            id.clone(),
            Approval {
                id: id.clone(),
                namespace: req.namespace.to_owned(),
                tool: req.tool.to_owned(),
                subject: req.subject.to_owned(),
                session_id: req.session_id.to_owned(),
                arguments: req.arguments,
                arguments_hash: req.arguments_hash.to_owned(),
                reason: req.request.reason.clone(),
                policy: req.request.policy.clone(),
                approvers: req.request.approvers.clone(),
                allow_self_approval: req.request.allow_self_approval,
                created_at: now,
                expires_at,
                state: ApprovalState::Pending,
                decided_by: None,
                decided_groups: None,
                decision_reason: None,
                call_id: req.call_id.to_owned(),
                denial_reported: false,
            },
        );
        HumanStatus::Created { id, expires_at }
    }

    /// Approvals `subject` may decide, plus its own requests, newest first.
    pub fn visible_to(&self, subject: &str, groups: &[String]) -> Vec<Approval> {
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut map, SystemTime::now());
        let mut list: Vec<Approval> =
            map.values().filter(|a| a.subject == subject || a.may_decide(subject, groups).is_ok()).cloned().collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        list
    }

    /// One approval as it is now.
    pub fn get(&self, id: &str) -> Option<Approval> {
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut map, SystemTime::now());
        map.get(id).cloned()
    }

    /// Approves or denies a pending approval. An approval is given only when `approvable` accepts it
    /// too (the session's and the config's state now, see [`crate::approvals_check::approvable_now`]).
    pub fn decide(
        &self,
        id: &str,
        subject: &str,
        groups: &[String],
        approve: bool,
        reason: Option<String>,
        approvable: impl FnOnce(&Approval) -> Result<(), DecideError>,
    ) -> Result<Approval, DecideError> {
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut map, SystemTime::now());
        let a = map.get_mut(id).ok_or(DecideError::Unknown)?;
        a.may_decide(subject, groups).map_err(|why| DecideError::NotAnApprover(why.to_owned()))?;
        if a.state != ApprovalState::Pending {
            return Err(DecideError::AlreadyDecided(state_str(a.state)));
        }
        if approve {
            approvable(a)?;
        }
        a.state = if approve { ApprovalState::Approved } else { ApprovalState::Denied };
        a.decided_by = Some(subject.to_owned());
        a.decided_groups = Some(groups.to_vec());
        a.decision_reason = reason;
        Ok(a.clone())
    }

    /// Folds decisions made on another replica (read back from the McpSession) into this session's
    /// pending approvals, so the agent's retry runs (or is refused) here.
    pub fn merge_remote(&self, session_id: &str, remote: &[PendingApproval]) {
        if remote.is_empty() {
            return;
        }
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        for a in map.values_mut().filter(|a| a.session_id == session_id && a.state == ApprovalState::Pending) {
            if let Some(r) = remote.iter().find(|r| r.id == a.id && matches!(r.state, ApprovalState::Approved | ApprovalState::Denied)) {
                a.state = r.state;
                a.decided_by = r.decided_by.clone();
                a.decided_groups = None;
                a.decision_reason = r.reason.clone();
            }
        }
    }

    /// Approvals of one session that its next calls may still meet (for the runtime's McpSession
    /// status, from which a replica taking the session over restores them): pending, approved and not
    /// yet used, denied and not yet told.
    pub fn of_session(&self, session_id: &str) -> Vec<PendingApproval> {
        let map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<PendingApproval> = map
            .values()
            .filter(|a| a.session_id == session_id)
            .filter(|a| match a.state {
                ApprovalState::Pending | ApprovalState::Approved => true,
                ApprovalState::Denied => !a.denial_reported,
                ApprovalState::Expired | ApprovalState::Used => false,
            })
            .map(Approval::pending_approval)
            .collect();
        list.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        list
    }

    /// Per namespace: pending count and age of the oldest, for the metrics.
    pub fn pending_by_namespace(&self) -> HashMap<String, (usize, f64)> {
        let now = SystemTime::now();
        let mut map = self.human.lock().unwrap_or_else(|e| e.into_inner());
        Self::expire(&mut map, now);
        let mut out: HashMap<String, (usize, f64)> = HashMap::new();
        for a in map.values() {
            let entry = out.entry(a.namespace.clone()).or_default();
            if a.state == ApprovalState::Pending {
                entry.0 += 1;
                let age = now.duration_since(a.created_at).unwrap_or_default().as_secs_f64();
                entry.1 = entry.1.max(age);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolwarden_core::policy::ApprovalRequest;
    use toolwarden_core::resources::ApprovalMode;

    fn request(approvers: Approvers, self_ok: bool) -> ApprovalRequest {
        ApprovalRequest {
            mode: ApprovalMode::Human,
            policy: "p".into(),
            ttl: Duration::from_secs(60),
            approvers,
            allow_self_approval: self_ok,
            reason: "needs approval".into(),
            rate_limits: vec![],
            arguments: None,
        }
    }

    fn ask(approvals: &Approvals, req: &ApprovalRequest) -> HumanStatus {
        approvals.human(HumanRequest {
            namespace: "default",
            tool: "delete_note",
            subject: "dev",
            session_id: "s1",
            arguments: serde_json::json!({"path": "a.md"}),
            arguments_hash: "h1",
            request: req,
            call_id: "c-1",
        }, |_| Ok(()))
    }

    #[test]
    fn a_decision_made_on_another_replica_runs_the_retry_exactly_once() {
        let approvals = Approvals::default();
        let req = request(Approvers { users: vec!["alice".into()], groups: vec![] }, false);
        let HumanStatus::Created { id, .. } = ask(&approvals, &req) else { panic!() };
        // What the McpSession shows after another replica approved: folded in, then used once.
        let other_session = PendingApproval { id: id.clone(), state: ApprovalState::Denied, ..Default::default() };
        approvals.merge_remote("s2", &[other_session]);
        assert!(matches!(ask(&approvals, &req), HumanStatus::Pending { .. }), "another session's decision must not apply");
        let remote = PendingApproval { id: id.clone(), state: ApprovalState::Approved, decided_by: Some("alice".into()), ..Default::default() };
        approvals.merge_remote("s1", std::slice::from_ref(&remote));
        assert!(matches!(ask(&approvals, &req), HumanStatus::Approved { ref decided_by, .. } if decided_by == "alice"));
        // A stale remote view never revives a used approval.
        approvals.merge_remote("s1", &[remote]);
        assert!(matches!(ask(&approvals, &req), HumanStatus::Created { .. }));
    }

    #[test]
    fn shared_approvals_check_approvers_and_self_approval() {
        let approvers = Approvers { users: vec!["alice".into()], groups: vec!["leads".into()] };
        assert!(may_decide(&approvers, false, "dev", "alice", &[]).is_ok());
        assert!(may_decide(&approvers, false, "dev", "carol", &["leads".into()]).is_ok());
        assert!(may_decide(&approvers, false, "dev", "mallory", &["devs".into()]).is_err());
        assert!(may_decide(&approvers, false, "alice", "alice", &[]).is_err(), "self-approval needs the policy's consent");
        assert!(may_decide(&approvers, true, "alice", "alice", &[]).is_ok());
    }

    #[test]
    fn approved_call_runs_exactly_once() {
        let approvals = Approvals::default();
        let req = request(Approvers { users: vec!["alice".into()], groups: vec![] }, false);
        let HumanStatus::Created { id, .. } = ask(&approvals, &req) else { panic!() };
        assert!(matches!(ask(&approvals, &req), HumanStatus::Pending { .. }));
        assert!(matches!(approvals.decide(&id, "bob", &[], true, None, |_| Ok(())), Err(DecideError::NotAnApprover(_))));
        assert_eq!(approvals.decide("ap-nope", "alice", &[], true, None, |_| Ok(())).unwrap_err(), DecideError::Unknown);
        approvals.decide(&id, "alice", &[], true, None, |_| Ok(())).unwrap();
        assert_eq!(approvals.decide(&id, "alice", &[], false, None, |_| Ok(())).unwrap_err(), DecideError::AlreadyDecided("approved"));
        assert!(matches!(ask(&approvals, &req), HumanStatus::Approved { .. }));
        assert!(matches!(ask(&approvals, &req), HumanStatus::Created { .. }));
    }

    #[test]
    fn requester_cannot_approve_own_call_unless_allowed() {
        let approvals = Approvals::default();
        let req = request(Approvers { users: vec![], groups: vec!["devs".into()] }, false);
        let HumanStatus::Created { id, .. } = ask(&approvals, &req) else { panic!() };
        let err = approvals.decide(&id, "dev", &["devs".into()], true, None, |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecideError::NotAnApprover(m) if m.contains("self-approval")));
        let allowed = Approvals::default();
        let req = request(Approvers { users: vec![], groups: vec!["devs".into()] }, true);
        let HumanStatus::Created { id, .. } = ask(&allowed, &req) else { panic!() };
        assert!(allowed.decide(&id, "dev", &["devs".into()], true, None, |_| Ok(())).is_ok());
    }

    #[test]
    fn a_session_cannot_park_unbounded_approvals() {
        let approvals = Approvals::default();
        let req = request(Approvers { users: vec!["alice".into()], groups: vec![] }, false);
        for i in 0..=MAX_PENDING_PER_SESSION {
            let hash = format!("x{i}");
            let status = approvals.human(HumanRequest {
                namespace: "default",
                tool: "delete_note",
                subject: "dev",
                session_id: "s1",
                arguments: serde_json::json!({}),
                arguments_hash: &hash,
                request: &req,
                call_id: "c-1",
            }, |_| Ok(()));
            if i < MAX_PENDING_PER_SESSION {
                assert!(matches!(status, HumanStatus::Created { .. }));
            } else {
                assert_eq!(status, HumanStatus::TooMany);
            }
        }
    }

    #[test]
    fn denial_is_reported_once_then_a_new_request_is_made() {
        let approvals = Approvals::default();
        let req = request(Approvers { users: vec!["alice".into()], groups: vec![] }, false);
        let HumanStatus::Created { id, .. } = ask(&approvals, &req) else { panic!() };
        approvals.decide(&id, "alice", &[], false, Some("no".into()), |_| Ok(())).unwrap();
        assert!(matches!(ask(&approvals, &req), HumanStatus::Denied { reason: Some(r), .. } if r == "no"));
        assert!(matches!(ask(&approvals, &req), HumanStatus::Created { .. }));
    }
}
