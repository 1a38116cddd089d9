//! Agent sessions. Protocol 2025-06-18 / 2025-11-25 clients get an `Mcp-Session-Id` from rmcp's session
//! manager, which [`GatewaySessionManager`] wraps to see sessions start and end; 2026-07-28 clients are
//! stateless and their session is derived (see [`stateless_session_id`]). Either way the gateway keeps one
//! [`SessionRecord`] per session: owner, client, taint, idle clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::RoleServer;
use rmcp::service::Peer;
use sha2::{Digest, Sha256};
use toolwarden_core::audit::UntrustedText;

/// How the ids of stateless sessions begin ([`stateless_session_id`]); rmcp's ids never do.
pub const STATELESS_ID_PREFIX: &str = "sl-";

/// `_meta` key a stateless client may send to name its session explicitly.
pub const SESSION_META_KEY: &str = "toolwarden.dev/session";

/// Who is calling, attached to each HTTP request before rmcp sees it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub namespace: String,
    pub principal: crate::auth::Principal,
}

#[derive(Default)]
pub struct Taint {
    /// The untrusted tool whose output tainted the session first.
    pub tainted_by: Option<String>,
    pub untrusted: UntrustedText,
}

pub struct SessionRecord {
    pub id: String,
    pub namespace: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub client_name: String,
    pub client_version: String,
    pub protocol_version: Option<String>,
    /// No `Mcp-Session-Id`: the gateway ends it on idle timeout itself.
    pub stateless: bool,
    pub started: Instant,
    last_used: Mutex<Instant>,
    pub taint: Mutex<Taint>,
    /// Where `notifications/tools/list_changed` go (sessions with a stream only).
    pub peer: Mutex<Option<Peer<RoleServer>>>,
    /// Its `tools/call`s the gateway answers itself, while they run (for `notifications/cancelled`).
    pub direct_calls: crate::direct_call::InFlight,
    /// Whether rmcp holds the session or it is parked ([`crate::parking`]).
    pub rmcp: crate::parking::RmcpHold,
    ended: AtomicBool,
}

impl SessionRecord {
    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    pub fn tainted(&self) -> bool {
        self.taint.lock().unwrap_or_else(|e| e.into_inner()).tainted_by.is_some()
    }

    pub fn info(&self) -> crate::runtime::SessionInfo {
        crate::runtime::SessionInfo {
            namespace: self.namespace.clone(),
            id: self.id.clone(),
            subject: self.subject.clone(),
            groups: self.groups.clone(),
            client_name: self.client_name.clone(),
            client_version: self.client_version.clone(),
            protocol_version: self.protocol_version.clone(),
        }
    }
}

/// What a new session is made of.
#[derive(Clone)]
pub struct NewSession {
    pub id: String,
    pub caller: Caller,
    pub client_name: String,
    pub client_version: String,
    pub protocol_version: Option<String>,
    pub stateless: bool,
}

impl NewSession {
    pub fn info(&self) -> crate::runtime::SessionInfo {
        crate::runtime::SessionInfo {
            namespace: self.caller.namespace.clone(),
            id: self.id.clone(),
            subject: self.caller.principal.subject.clone(),
            groups: self.caller.principal.groups.clone(),
            client_name: self.client_name.clone(),
            client_version: self.client_version.clone(),
            protocol_version: self.protocol_version.clone(),
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    map: RwLock<HashMap<String, Arc<SessionRecord>>>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<Arc<SessionRecord>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// How many open sessions `subject` has, in any namespace.
    pub fn count_of(&self, subject: &str) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).values().filter(|s| s.subject == subject).count()
    }

    /// Inserts a session; returns the existing one when the id is already known, and `false` when it was.
    pub fn insert(&self, new: NewSession) -> (Arc<SessionRecord>, bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&new.id) {
            return (existing.clone(), false);
        }
        let record = Arc::new(SessionRecord {
            id: new.id.clone(),
            namespace: new.caller.namespace,
            subject: new.caller.principal.subject,
            groups: new.caller.principal.groups,
            client_name: new.client_name,
            client_version: new.client_version,
            protocol_version: new.protocol_version,
            stateless: new.stateless,
            started: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            taint: Mutex::new(Taint::default()),
            peer: Mutex::new(None),
            direct_calls: Default::default(),
            rmcp: Default::default(),
            ended: AtomicBool::new(false),
        });
        map.insert(new.id, record.clone());
        (record, true)
    }

    /// Removes a session; `None` when it was already gone (ending is idempotent).
    pub fn remove(&self, id: &str) -> Option<Arc<SessionRecord>> {
        let record = self.map.write().unwrap_or_else(|e| e.into_inner()).remove(id)?;
        (!record.ended.swap(true, Ordering::SeqCst)).then_some(record)
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<SessionRecord>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<SessionRecord>> {
        self.all().into_iter().filter(|s| s.namespace == namespace).collect()
    }

    /// Sessions past their idle timeout or maximum lifetime, with the reason.
    pub fn expired(&self, idle: Duration, max_lifetime: Duration) -> Vec<(Arc<SessionRecord>, &'static str)> {
        self.all()
            .into_iter()
            .filter_map(|s| {
                if s.started.elapsed() >= max_lifetime {
                    Some((s, "expired"))
                } else if s.idle_for() >= idle {
                    Some((s, "idle"))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// The session a stateless (2026-07-28) request belongs to, from its `_meta` (the client sends who it is
/// on every request): the same for the MCP handler, which starts it on one replica, and for the HTTP edge,
/// which finds the replica holding it ([`crate::stateless`]). `header_version` is the
/// `MCP-Protocol-Version` the request came with, used when its `_meta` names none.
pub fn stateless_session(caller: &Caller, meta: &rmcp::model::RequestMetaObject, header_version: Option<String>) -> NewSession {
    let explicit = meta.0.0.get(SESSION_META_KEY).and_then(|v| v.as_str());
    let client_info = meta.client_info();
    let client_name = client_info.as_ref().map(|c| c.name.clone()).unwrap_or_default();
    NewSession {
        id: stateless_session_id(caller, explicit, &client_name),
        caller: caller.clone(),
        client_name,
        client_version: client_info.map(|c| c.version).unwrap_or_default(),
        protocol_version: meta.protocol_version().map(|v| v.to_string()).or(header_version),
        stateless: true,
    }
}

/// The session of a stateless (2026-07-28) request: the client's explicit `_meta` session key when sent,
/// else one session per credential and client name. Scoped by subject and namespace, so one caller can
/// never land in another's session whatever key it sends.
pub fn stateless_session_id(caller: &Caller, explicit: Option<&str>, client_name: &str) -> String {
    let mut h = Sha256::new();
    for part in [caller.namespace.as_str(), caller.principal.subject.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    match explicit {
        Some(key) => {
            h.update(b"explicit\0");
            h.update(key.as_bytes());
        }
        None => {
            h.update(b"derived\0");
            h.update(caller.principal.credential_id.as_bytes());
            h.update([0]);
            h.update(client_name.as_bytes());
        }
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{STATELESS_ID_PREFIX}{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(subject: &str, credential: &str) -> Caller {
        Caller {
            namespace: "default".into(),
            principal: crate::auth::Principal {
                subject: subject.into(),
                groups: vec![],
                credential_id: credential.into(),
            },
        }
    }

    #[test]
    fn stateless_sessions_are_scoped_by_caller() {
        let alice = caller("alice", "c1");
        let bob = caller("bob", "c2");
        assert_eq!(stateless_session_id(&alice, None, "claude"), stateless_session_id(&alice, None, "claude"));
        assert_ne!(stateless_session_id(&alice, None, "claude"), stateless_session_id(&alice, None, "cursor"));
        assert_ne!(stateless_session_id(&alice, Some("s1"), ""), stateless_session_id(&bob, Some("s1"), ""));
        assert_ne!(stateless_session_id(&alice, Some("s1"), ""), stateless_session_id(&alice, Some("s2"), ""));
    }

    #[test]
    fn idle_and_old_sessions_are_found_for_the_reaper() {
        let sessions = Sessions::default();
        let new = |id: &str| NewSession {
            id: id.into(),
            caller: caller("alice", "c"),
            client_name: String::new(),
            client_version: String::new(),
            protocol_version: None,
            stateless: true,
        };
        sessions.insert(new("a"));
        assert!(sessions.expired(Duration::from_secs(60), Duration::from_secs(3600)).is_empty());
        let idle = sessions.expired(Duration::ZERO, Duration::from_secs(3600));
        assert_eq!(idle.iter().map(|(s, r)| (s.id.as_str(), *r)).collect::<Vec<_>>(), [("a", "idle")]);
        let old = sessions.expired(Duration::ZERO, Duration::ZERO);
        assert_eq!(old[0].1, "expired", "max lifetime wins over idle");
    }

    #[test]
    fn ending_twice_reports_once() {
        let sessions = Sessions::default();
        let new = NewSession {
            id: "s".into(),
            caller: caller("alice", "c"),
            client_name: String::new(),
            client_version: String::new(),
            protocol_version: None,
            stateless: false,
        };
        sessions.insert(new);
        assert!(sessions.remove("s").is_some());
        assert!(sessions.remove("s").is_none());
    }
}
