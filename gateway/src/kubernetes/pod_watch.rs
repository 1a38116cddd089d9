//! One watch on this gateway replica's worker pods, shared by every start waiting for its pod to be
//! ready. A watch per start cost the API server a request and a connection per pod; this one costs a
//! list when it opens and a request each time the server closes it (every few minutes), whatever the
//! number of starts (docs/sessions-kubernetes.md, "What a session costs the API server").
//!
//! [`PodWatch::start`] registers the pod's name before creating it, so no change of it is missed, waits
//! for it, and deletes it when it does not become ready: whoever creates a worker pod starts it here.
//! The watch keeps nothing but the latest object of each pod somebody waits for.

use std::collections::{HashMap, HashSet};
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::pod::{LABEL_GATEWAY, label_value};
use super::pods::{self, PodState, classify};
use super::{Error, Result};

/// (namespace, pod name).
type Key = (String, String);

/// The watch of one gateway replica's worker pods, in every namespace (the gateway's ClusterRole
/// already lists and watches pods everywhere; one watch serves all tenants).
pub struct PodWatch {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    selector: String,
    started: AtomicBool,
    next_id: AtomicU64,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    by_pod: HashMap<Key, Waiter>,
    /// Pods listed since the watch (re)started its list; `None` between lists.
    listing: Option<HashSet<Key>>,
    /// Why the watch failed last, until it works again (said in a start timeout).
    failing: Option<String>,
}

struct Waiter {
    id: u64,
    latest: watch::Sender<Seen>,
    /// Whether the watch has shown the pod: only then does its absence from a new list mean it is gone.
    seen: bool,
}

#[derive(Clone, Debug, Default)]
enum Seen {
    #[default]
    Nothing,
    Pod(Arc<Pod>),
    Gone,
}

impl PodWatch {
    /// The watch of the pods labelled with this gateway's id. It opens at the first wait.
    pub fn new(client: Client, gateway_id: &str) -> Self {
        let selector = format!("{LABEL_GATEWAY}={}", label_value(gateway_id));
        PodWatch {
            shared: Arc::new(Shared { client, selector, started: AtomicBool::new(false), next_id: AtomicU64::new(0), waiters: Mutex::default() }),
        }
    }

    /// Creates `pod` and waits until `deadline` for it to be ready: its name and IP. Whatever fails
    /// after the create, the pod is deleted, so no pod is leaked. `timeout` is the start timeout the
    /// deadline came from, for the message.
    pub async fn start(&self, api: &Api<Pod>, namespace: &str, pod: &Pod, deadline: Instant, timeout: Duration) -> Result<(String, String)> {
        let waiter = self.expect(namespace, &pod.name_any());
        let created = pods::create(api, namespace, pod).await?;
        let name = created.name_any();
        match waiter.ready(&created, deadline, timeout).await {
            Ok(ip) => Ok((name, ip)),
            Err(e) => {
                if let Err(d) = pods::delete(api, &name).await {
                    tracing::warn!(pod = %name, error = %d, "could not delete a worker pod that failed to start");
                }
                Err(e)
            }
        }
    }

    /// Registers interest in pod `name` of `namespace` before it is created.
    fn expect(&self, namespace: &str, name: &str) -> PodWaiter {
        let key = (namespace.to_owned(), name.to_owned());
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (latest, changes) = watch::channel(Seen::Nothing);
        // A name already waited for (two random suffixes alike): this pod's create fails as a conflict,
        // and its waiter, never told anything, must not take the other's place.
        if let Entry::Vacant(entry) = self.shared.lock().by_pod.entry(key.clone()) {
            entry.insert(Waiter { id, latest, seen: false });
        }
        PodWaiter { shared: self.shared.clone(), key, id, changes }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(Arc::downgrade(self), Api::all(self.client.clone()), self.selector.clone()));
        }
    }
}

/// A start's wait for its pod; dropping it ends the interest.
struct PodWaiter {
    shared: Arc<Shared>,
    key: Key,
    id: u64,
    changes: watch::Receiver<Seen>,
}

impl Drop for PodWaiter {
    fn drop(&mut self) {
        let mut waiters = self.shared.lock();
        if waiters.by_pod.get(&self.key).is_some_and(|w| w.id == self.id) {
            waiters.by_pod.remove(&self.key);
        }
    }
}

impl PodWaiter {
    /// Waits until `deadline` for the just-created pod to be ready, failing fast on what waiting will
    /// not fix. `timeout` is the start timeout the deadline came from, for the message.
    async fn ready(mut self, created: &Pod, deadline: Instant, timeout: Duration) -> Result<String> {
        self.shared.open();
        let mut last = match classify(created) {
            PodState::Ready { ip } => return Ok(ip),
            PodState::Failed(e) => return Err(e),
            PodState::Starting(detail) => detail,
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            let seen = self.changes.borrow_and_update().clone();
            match seen {
                Seen::Pod(pod) => match classify(&pod) {
                    PodState::Ready { ip } => return Ok(ip),
                    PodState::Failed(e) => return Err(e),
                    PodState::Starting(detail) => last = detail,
                },
                Seen::Gone => return Err(Error::PodGone { pod: self.key.1.clone() }),
                Seen::Nothing => {}
            }
            let changed = tokio::time::timeout_at(deadline, self.changes.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                if changed.is_ok() {
                    // Not registered (see `expect`): nothing will ever be told.
                    tokio::time::sleep_until(deadline).await;
                }
                let detail = match &self.shared.lock().failing {
                    Some(why) => format!("{last}; watching worker pods fails: {why}"),
                    None => last,
                };
                return Err(Error::StartTimeout { pod: self.key.1.clone(), seconds: timeout.as_secs(), detail });
            }
        }
    }
}

impl Waiters {
    fn show(&mut self, pod: Pod) {
        let key = key_of(&pod);
        if let Some(listing) = &mut self.listing {
            listing.insert(key.clone());
        }
        if let Some(waiter) = self.by_pod.get_mut(&key) {
            waiter.seen = true;
            waiter.latest.send_replace(Seen::Pod(Arc::new(pod)));
        }
    }

    fn gone(&mut self, key: &Key) {
        if let Some(waiter) = self.by_pod.get_mut(key) {
            waiter.latest.send_replace(Seen::Gone);
        }
    }

    fn apply(&mut self, event: watcher::Event<Pod>) {
        self.failing = None;
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.show(pod),
            watcher::Event::Delete(pod) => self.gone(&key_of(&pod)),
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitDone => {
                // A pod shown before the new list began existed before it: missing from it, it was
                // deleted while the watch was down. A pod never shown may just be newer than the list.
                let listed = self.listing.take().unwrap_or_default();
                let missing: Vec<Key> =
                    self.by_pod.iter().filter(|(key, w)| w.seen && !listed.contains(*key)).map(|(key, _)| key.clone()).collect();
                for key in missing {
                    self.gone(&key);
                }
            }
        }
    }
}

fn key_of(pod: &Pod) -> Key {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

async fn run(shared: Weak<Shared>, api: Api<Pod>, selector: String) {
    let mut events = watcher(api, watcher::Config::default().labels(&selector)).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let Some(shared) = shared.upgrade() else { return };
        match event {
            Ok(event) => shared.lock().apply(event),
            Err(e) => {
                tracing::warn!(error = %e, "watching worker pods");
                shared.lock().failing = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn pod(name: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("team-a".into()), ..Default::default() },
            status: Some(PodStatus { pod_ip: ip.map(Into::into), phase: Some("Running".into()), ..Default::default() }),
            ..Default::default()
        }
    }

    fn waiters(names: &[&str]) -> (Waiters, Vec<watch::Receiver<Seen>>) {
        let mut waiters = Waiters::default();
        let receivers = names
            .iter()
            .map(|name| {
                let (latest, changes) = watch::channel(Seen::Nothing);
                waiters.by_pod.insert(("team-a".into(), (*name).into()), Waiter { id: 0, latest, seen: false });
                changes
            })
            .collect();
        (waiters, receivers)
    }

    #[test]
    fn a_pod_is_shown_to_its_waiter_only() {
        let (mut waiters, receivers) = waiters(&["a"]);
        waiters.apply(watcher::Event::Apply(pod("b", None)));
        assert!(matches!(*receivers[0].borrow(), Seen::Nothing), "another pod's change is not shown");
        waiters.apply(watcher::Event::Apply(pod("a", Some("10.0.0.1"))));
        assert!(matches!(&*receivers[0].borrow(), Seen::Pod(p) if p.name_any() == "a"));
        waiters.apply(watcher::Event::Delete(pod("a", None)));
        assert!(matches!(*receivers[0].borrow(), Seen::Gone));
    }

    #[test]
    fn a_relist_without_a_pod_seen_before_means_it_was_deleted_and_says_nothing_of_one_never_seen() {
        let (mut waiters, receivers) = waiters(&["seen", "new"]);
        waiters.apply(watcher::Event::Apply(pod("seen", None)));
        waiters.apply(watcher::Event::Init);
        waiters.apply(watcher::Event::InitApply(pod("other", None)));
        waiters.apply(watcher::Event::InitDone);
        assert!(matches!(*receivers[0].borrow(), Seen::Gone), "deleted while the watch was down");
        assert!(matches!(*receivers[1].borrow(), Seen::Nothing), "created after the list: still waited for");
        assert!(waiters.listing.is_none());
    }

    #[test]
    fn a_relisted_pod_is_not_gone() {
        let (mut waiters, receivers) = waiters(&["a"]);
        waiters.apply(watcher::Event::Apply(pod("a", None)));
        waiters.apply(watcher::Event::Init);
        waiters.apply(watcher::Event::InitApply(pod("a", Some("10.0.0.2"))));
        waiters.apply(watcher::Event::InitDone);
        assert!(matches!(&*receivers[0].borrow(), Seen::Pod(p) if p.status.as_ref().unwrap().pod_ip.as_deref() == Some("10.0.0.2")));
    }
}
