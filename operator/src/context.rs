//! What every reconcile shares: the client, the settings, the Event recorder, metrics, and the
//! per-tool verdicts the namespace reconciler publishes for the tool controller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use toolwarden_core::resources::McpTool;

use crate::metrics::Metrics;
use crate::namespace::build::ToolVerdict;
use crate::objects::MANAGER;

/// Default ranges a broad egress CIDR never opens: the RFC 1918 private ranges, carrier-grade NAT
/// (used by some CNIs for pods) and IPv6 unique-local addresses, which together cover the pod and
/// service ranges of almost every cluster. Set `--cluster-cidrs` to your exact ranges to let broad
/// egress reach other private networks.
pub const DEFAULT_CLUSTER_CIDRS: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7";
/// The largest `config.json` written into a ConfigMap (the API server caps objects near 1 MiB).
pub const CONFIG_MAX_BYTES: usize = 900 * 1024;

/// What the operator is told on the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where gateway pods run: the only ingress worker pods accept.
    pub gateway_namespace: String,
    /// Pod and service ranges excluded from broad egress unless a tool lists them.
    pub cluster_cidrs: Vec<String>,
    pub dns_namespace: String,
    pub dns_labels: BTreeMap<String, String>,
    pub worker_port: i32,
    pub session_gc_interval: Duration,
    /// How long past its idle timeout or lifetime a session may stay before the operator expires it.
    pub session_gc_grace: Duration,
    /// Sessions that declare neither idle timeout nor lifetime expire this long after their last activity.
    pub session_fallback_lifetime: Duration,
    pub config_max_bytes: usize,
    /// Deadline of one reconcile (one tool, one namespace), so a hanging API server cannot stall a queue.
    pub reconcile_timeout: Duration,
    /// How often every object is reconciled again even when nothing changed.
    pub resync_interval: Duration,
    /// Watch Secret metadata to re-sync scoped Secrets at once (needs list/watch on Secrets); without it,
    /// source Secret changes arrive on the resync interval.
    pub watch_secrets: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gateway_namespace: "toolwarden".into(),
            cluster_cidrs: DEFAULT_CLUSTER_CIDRS.split(',').map(str::to_owned).collect(),
            dns_namespace: "kube-system".into(),
            dns_labels: BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())]),
            worker_port: 8443,
            session_gc_interval: Duration::from_secs(60),
            session_gc_grace: Duration::from_secs(120),
            session_fallback_lifetime: Duration::from_secs(24 * 3600),
            config_max_bytes: CONFIG_MAX_BYTES,
            reconcile_timeout: Duration::from_secs(60),
            resync_interval: Duration::from_secs(600),
            watch_secrets: true,
        }
    }
}

/// `(namespace, McpTool name)`.
pub type ToolKey = (String, String);

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Written by the namespace reconciler, read by the tool controller.
    pub verdicts: RwLock<HashMap<ToolKey, ToolVerdict>>,
    /// Asks the tool controller to reconcile a tool whose verdict changed.
    pub tool_trigger: Mutex<Option<UnboundedSender<ObjectRef<McpTool>>>>,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The last generation written per namespace, so a deleted ConfigMap never makes it go back.
    pub generations: Mutex<HashMap<String, u64>>,
    /// Namespaces whose baseline NetworkPolicy this process has applied.
    pub baselines: Mutex<std::collections::HashSet<String>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            verdicts: RwLock::default(),
            tool_trigger: Mutex::default(),
            failures: Mutex::default(),
            generations: Mutex::default(),
            baselines: Mutex::default(),
        }
    }

    pub fn verdict(&self, namespace: &str, name: &str) -> Option<ToolVerdict> {
        self.verdicts.read().unwrap_or_else(|e| e.into_inner()).get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Records a failure of `key` and returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str, conflict: bool) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        if conflict { Duration::from_millis(200) } else { backoff(*n) }
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Exponential backoff: 2 s after the first failure, doubling, at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    Duration::from_secs((2u64 << exp).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
