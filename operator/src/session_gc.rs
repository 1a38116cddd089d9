//! McpSession housekeeping. The gateway ends its sessions itself (idle timeout, max lifetime, DELETE)
//! and deletes their McpSession; when a gateway dies for good, nobody would. Every interval the
//! operator lists the sessions and expires those past their idle timeout or lifetime by more than a
//! grace period: status phase `Expired` (so a watcher sees why), then delete — their worker pods go
//! with them through owner references.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use toolwarden_core::resources::{API_VERSION, McpSession, SessionPhase};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::objects::{MANAGER, is_not_found, key_of};

pub const CONTROLLER: &str = "mcpsession-gc";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionVerdict {
    Keep,
    /// Mark Expired with this reason, then delete.
    Expire(String),
    /// Already ended or expired long enough ago: delete.
    Delete,
}

fn parse(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

/// Decides the fate of one session at `now` (pure).
pub fn session_verdict(session: &McpSession, now: Timestamp, grace: Duration, fallback: Duration) -> SessionVerdict {
    let status = session.status.clone().unwrap_or_default();
    let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let Some(started) = parse(session.spec.started_at.as_deref()).or(created) else {
        return SessionVerdict::Keep;
    };
    let last = parse(status.last_activity.as_deref()).map_or(started, |l| l.max(started));
    match status.phase {
        SessionPhase::Expired => return SessionVerdict::Delete,
        SessionPhase::Ended | SessionPhase::Ending if plus(last, grace) < now => return SessionVerdict::Delete,
        SessionPhase::Ended | SessionPhase::Ending => return SessionVerdict::Keep,
        SessionPhase::Active => {}
    }
    let (idle, lifetime) = (session.spec.idle_timeout_seconds, session.spec.max_lifetime_seconds);
    if let Some(seconds) = lifetime
        && plus(started, Duration::from_secs(seconds) + grace) < now
    {
        return SessionVerdict::Expire(format!("max lifetime of {seconds}s since {started} passed and the gateway did not end the session"));
    }
    if let Some(seconds) = idle
        && plus(last, Duration::from_secs(seconds) + grace) < now
    {
        return SessionVerdict::Expire(format!("idle since {last}, past the idle timeout of {seconds}s, and the gateway did not end the session"));
    }
    if idle.is_none() && lifetime.is_none() && plus(last, fallback + grace) < now {
        return SessionVerdict::Expire(format!("no activity since {last} and the session declares no timeouts"));
    }
    SessionVerdict::Keep
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcOutcome {
    pub expired: usize,
    pub deleted: usize,
    /// Sessions whose update failed; tried again next round.
    pub failed: usize,
}

/// One collection round over every namespace. A failing session is counted and skipped.
pub async fn collect(ctx: &Context) -> Result<GcOutcome> {
    let api: Api<McpSession> = Api::all(ctx.client.clone());
    let now = Timestamp::now();
    let mut outcome = GcOutcome::default();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(|e| Error::api("McpSessions", "list", e))?;
        for session in &page.items {
            let verdict = session_verdict(session, now, ctx.settings.session_gc_grace, ctx.settings.session_fallback_lifetime);
            match end(ctx, session, &verdict).await {
                Ok(()) => match verdict {
                    SessionVerdict::Expire(_) => outcome.expired += 1,
                    SessionVerdict::Delete => outcome.deleted += 1,
                    SessionVerdict::Keep => {}
                },
                Err(e) => {
                    tracing::warn!(error = %e, "session garbage collection failed for one session");
                    outcome.failed += 1;
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(outcome)
}

async fn end(ctx: &Context, session: &McpSession, verdict: &SessionVerdict) -> Result<()> {
    let namespace = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let object = format!("McpSession {}", key_of(session));
    let api: Api<McpSession> = Api::namespaced(ctx.client.clone(), &namespace);
    match verdict {
        SessionVerdict::Keep => return Ok(()),
        SessionVerdict::Expire(reason) => {
            tracing::info!(session = %object, reason, "expiring session");
            let patch = serde_json::json!({
                "apiVersion": API_VERSION, "kind": "McpSession",
                "status": {"phase": "Expired", "endedReason": reason}
            });
            match api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(Error::api(&object, "mark Expired", e)),
            }
            ctx.metrics.sessions_expired.inc();
        }
        SessionVerdict::Delete => {}
    }
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(&object, "delete", e)),
    }
}

/// Runs [`collect`] every `session_gc_interval` until the future is dropped.
pub async fn run(ctx: std::sync::Arc<Context>) {
    let mut tick = tokio::time::interval(ctx.settings.session_gc_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let result = collect(&ctx).await;
        ctx.metrics.reconciled(CONTROLLER, started.elapsed().as_secs_f64(), result.as_ref().err().map(Error::metric_label));
        ctx.metrics.trace_reconcile(CONTROLLER, "mcpsessions", started.elapsed(), result.as_ref().err());
        match result {
            Ok(outcome) if outcome != GcOutcome::default() => tracing::info!(?outcome, "session garbage collection"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "session garbage collection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GRACE: Duration = Duration::from_secs(120);
    const FALLBACK: Duration = Duration::from_secs(86400);

    fn session(spec: serde_json::Value, status: serde_json::Value) -> McpSession {
        let mut s = json!({"subject": "alice", "startedAt": "2026-01-01T10:00:00Z"});
        s.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "McpSession",
            "metadata": {"name": "s1", "namespace": "dev", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": s, "status": status
        }))
        .unwrap()
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn active_session_within_its_idle_timeout_is_kept() {
        let s = session(json!({"idleTimeoutSeconds": 900, "maxLifetimeSeconds": 28800}), json!({"lastActivity": "2026-01-01T10:30:00Z"}));
        assert_eq!(session_verdict(&s, at("2026-01-01T10:46:00Z"), GRACE, FALLBACK), SessionVerdict::Keep);
    }

    #[test]
    fn session_idle_past_timeout_and_grace_expires() {
        let s = session(json!({"idleTimeoutSeconds": 900, "maxLifetimeSeconds": 28800}), json!({"lastActivity": "2026-01-01T10:30:00Z"}));
        let SessionVerdict::Expire(reason) = session_verdict(&s, at("2026-01-01T10:48:00Z"), GRACE, FALLBACK) else { panic!() };
        assert!(reason.contains("idle timeout of 900s"), "{reason}");
    }

    #[test]
    fn session_past_its_lifetime_expires_even_when_busy() {
        let s = session(json!({"idleTimeoutSeconds": 900, "maxLifetimeSeconds": 3600}), json!({"lastActivity": "2026-01-01T11:02:00Z"}));
        let SessionVerdict::Expire(reason) = session_verdict(&s, at("2026-01-01T11:03:00Z"), GRACE, FALLBACK) else { panic!() };
        assert!(reason.contains("max lifetime of 3600s"), "{reason}");
    }

    #[test]
    fn session_without_timeouts_uses_the_fallback() {
        let s = session(json!({}), json!({}));
        assert_eq!(session_verdict(&s, at("2026-01-02T09:00:00Z"), GRACE, FALLBACK), SessionVerdict::Keep);
        assert!(matches!(session_verdict(&s, at("2026-01-02T10:03:00Z"), GRACE, FALLBACK), SessionVerdict::Expire(_)));
    }

    #[test]
    fn expired_sessions_are_deleted_and_ended_ones_after_the_grace() {
        let expired = session(json!({}), json!({"phase": "Expired"}));
        assert_eq!(session_verdict(&expired, at("2026-01-01T10:00:01Z"), GRACE, FALLBACK), SessionVerdict::Delete);
        let ended = session(json!({}), json!({"phase": "Ended", "lastActivity": "2026-01-01T10:10:00Z"}));
        assert_eq!(session_verdict(&ended, at("2026-01-01T10:11:00Z"), GRACE, FALLBACK), SessionVerdict::Keep);
        assert_eq!(session_verdict(&ended, at("2026-01-01T10:13:00Z"), GRACE, FALLBACK), SessionVerdict::Delete);
    }
}
