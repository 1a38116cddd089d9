//! The calls running in workers, by namespace and tool, so that the kill switch reaches them: when a
//! config disables a tool (or no longer has it), its running calls are cancelled the way a client's
//! `notifications/cancelled` cancels one (their worker stops every process the call started), and each
//! learns why. A gateway shutting down stops what is still running after its grace period the same way.

use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;
use toolwarden_core::policy::Engine;

/// Why a running call was stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its tool was disabled or removed: the sentence the caller and the audit log get.
    Unserved(String),
    /// The gateway is shutting down and the call outlived the grace period.
    Shutdown,
}

type StopReason = Arc<OnceLock<Stop>>;

struct Entry {
    id: u64,
    namespace: Arc<str>,
    tool: Arc<str>,
    stop: CancellationToken,
    reason: StopReason,
}

#[derive(Default)]
pub struct RunningCalls {
    calls: Mutex<(u64, Vec<Entry>)>,
}

/// A call's place in [`RunningCalls`], removed when dropped (however the call ends).
pub struct Registration<'a> {
    calls: &'a RunningCalls,
    id: u64,
    /// Cancelled when the client cancels the call or the kill switch stops it.
    pub cancel: CancellationToken,
    reason: StopReason,
}

impl Registration<'_> {
    /// Why the kill switch or a shutdown stopped this call, if one did.
    pub fn stopped(&self) -> Option<&Stop> {
        self.reason.get()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock();
        if let Some(at) = calls.1.iter().position(|e| e.id == self.id) {
            calls.1.swap_remove(at);
        }
    }
}

/// Why `config` (a namespace's current config; `None` when it serves nothing) no longer serves the tool
/// named `tool`, or `None` when it serves it enabled. The sentence is the one `decide` refuses new
/// calls of a disabled tool with.
pub fn unserved(tool: &str, config: Option<&Engine>) -> Option<String> {
    match config.and_then(|engine| engine.tool(tool)) {
        None => Some(format!("{tool} was removed from the configuration")),
        Some(t) if t.disabled => {
            Some(format!("{tool} is disabled: {}", t.disabled_reason.as_deref().unwrap_or("disabled by an administrator")))
        }
        Some(_) => None,
    }
}

impl RunningCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Entry>)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a call of `tool` in `namespace`; its token is a child of `parent` (the client's).
    pub fn start(&self, namespace: &str, tool: &str, parent: &CancellationToken) -> Registration<'_> {
        let cancel = parent.child_token();
        let reason = StopReason::default();
        let mut calls = self.lock();
        calls.0 += 1;
        let id = calls.0;
        calls.1.push(Entry { id, namespace: namespace.into(), tool: tool.into(), stop: cancel.clone(), reason: reason.clone() });
        Registration { calls: self, id, cancel, reason }
    }

    /// Stops the running calls of `namespace` whose tool `config` no longer serves (disabled or gone);
    /// returns how many. `config` `None`: the namespace serves nothing any more.
    pub fn stop_unserved(&self, namespace: &str, config: Option<&Engine>) -> usize {
        let calls = self.lock();
        let mut stopped = 0;
        for entry in calls.1.iter().filter(|e| &*e.namespace == namespace) {
            if let Some(reason) = unserved(&entry.tool, config) {
                // The first reason stays: a call is stopped once.
                let _ = entry.reason.set(Stop::Unserved(reason));
                entry.stop.cancel();
                stopped += 1;
            }
        }
        stopped
    }

    /// Stops every running call (shutdown, after the grace period); returns how many.
    pub fn stop_all(&self) -> usize {
        let calls = self.lock();
        for entry in &calls.1 {
            let _ = entry.reason.set(Stop::Shutdown);
            entry.stop.cancel();
        }
        calls.1.len()
    }

    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use toolwarden_core::config::ToolConfig;

    fn tool(name: &str, disabled: Option<&str>) -> ToolConfig {
        let mut tool: ToolConfig = serde_json::from_value(json!({
            "name": name, "resource": name.replace('_', "-"), "description": "d", "effect": "read",
            "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "busybox:1", "command": ["cat"]}}, "credentials": [],
            "timeoutMs": 5000, "maxOutputBytes": 65536, "memory": "64Mi", "tmpSize": "16Mi", "outputTrust": "trusted", "sandbox": {}
        }))
        .expect("fixture tool");
        tool.disabled = disabled.is_some();
        tool.disabled_reason = disabled.map(str::to_owned);
        tool
    }

    fn engine(tools: Vec<ToolConfig>) -> Engine {
        let config = toolwarden_core::config::GatewayConfig { namespace: "default".into(), tools, ..Default::default() };
        Engine::new(config).expect("fixture config")
    }

    #[test]
    fn a_namespace_that_serves_nothing_stops_all_its_calls() {
        let calls = RunningCalls::default();
        let running = calls.start("default", "read_a", &CancellationToken::new());
        assert_eq!(calls.stop_unserved("default", None), 1);
        assert_eq!(running.stopped(), Some(&Stop::Unserved("read_a was removed from the configuration".into())));
        assert_eq!(unserved("read_b", Some(&engine(vec![tool("read_b", None)]))), None);
    }

    #[test]
    fn only_calls_of_tools_no_longer_served_in_that_namespace_are_stopped() {
        let calls = RunningCalls::default();
        let client = CancellationToken::new();
        let a = calls.start("default", "read_a", &client);
        let b = calls.start("default", "read_b", &client);
        let gone = calls.start("default", "read_gone", &client);
        let elsewhere = calls.start("other", "read_a", &client);
        let config = engine(vec![tool("read_a", Some("frozen for INC-7")), tool("read_b", None)]);
        assert_eq!(calls.stop_unserved("default", Some(&config)), 2);
        assert!(a.cancel.is_cancelled() && gone.cancel.is_cancelled());
        assert_eq!(a.stopped(), Some(&Stop::Unserved("read_a is disabled: frozen for INC-7".into())));
        assert_eq!(gone.stopped(), Some(&Stop::Unserved("read_gone was removed from the configuration".into())));
        assert!(!b.cancel.is_cancelled() && b.stopped().is_none());
        assert!(!elsewhere.cancel.is_cancelled(), "another namespace's config is another config");
        assert!(!client.is_cancelled(), "the client's own token is untouched: its reply still goes out");
        drop((a, b, gone));
        assert_eq!(calls.len(), 1, "ended calls leave the list");
        drop(elsewhere);
        assert!(calls.is_empty());
    }

    #[test]
    fn shutdown_stops_every_call_but_a_disabled_one_keeps_its_first_reason() {
        let calls = RunningCalls::default();
        let client = CancellationToken::new();
        let a = calls.start("default", "read_a", &client);
        let b = calls.start("other", "read_b", &client);
        assert_eq!(calls.stop_unserved("default", None), 1);
        assert_eq!(calls.stop_all(), 2);
        assert!(a.cancel.is_cancelled() && b.cancel.is_cancelled());
        assert_eq!(a.stopped(), Some(&Stop::Unserved("read_a was removed from the configuration".into())));
        assert_eq!(b.stopped(), Some(&Stop::Shutdown));
    }

    #[test]
    fn a_client_cancel_reaches_the_call_without_a_stop_reason() {
        let calls = RunningCalls::default();
        let client = CancellationToken::new();
        let running = calls.start("default", "read_a", &client);
        client.cancel();
        assert!(running.cancel.is_cancelled());
        assert_eq!(running.stopped(), None);
    }
}
