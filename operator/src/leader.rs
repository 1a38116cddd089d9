//! Leader election on a coordination.k8s.io Lease: only the holder runs controllers, so two replicas
//! never write at once. A small loop of get + create/replace with the read resourceVersion (a 409
//! means another replica won the race). The holder renews every `renew_every`; it steps down when it
//! could not renew for `renew_deadline`, before anyone else may take the Lease (`duration`).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::objects::{APP_NAME, LABEL_APP_NAME, LABEL_MANAGED_BY, MANAGER, is_conflict};

pub const LEASE_NAME: &str = "toolwarden-operator";

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
    pub renew_deadline: Duration,
    pub retry_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// No Lease yet.
    Create,
    /// We hold it.
    Renew,
    /// Free, or its holder stopped renewing.
    TakeOver,
    /// Someone else holds it.
    Wait { holder: String },
}

/// What to do with the Lease as read at `now` (pure).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = spec else { return LeaseAction::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return LeaseAction::TakeOver;
    }
    if holder == identity {
        return LeaseAction::Renew;
    }
    let duration = jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match renewed {
        Some(at) if at.checked_add(duration).is_ok_and(|expiry| expiry > now) => LeaseAction::Wait { holder },
        _ => LeaseAction::TakeOver,
    }
}

/// The Lease spec after `action` (pure).
pub fn next_spec(previous: Option<&LeaseSpec>, action: &LeaseAction, config: &LeaseConfig, now: Timestamp) -> LeaseSpec {
    let mut spec = previous.cloned().unwrap_or_default();
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(config.duration.as_secs() as i32);
    spec.renew_time = Some(MicroTime(now));
    if !matches!(action, LeaseAction::Renew) {
        spec.acquire_time = Some(MicroTime(now));
        if previous.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec
}

/// One round: returns whether this replica holds the Lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(LEASE_NAME).await?;
    let now = Timestamp::now();
    let action = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &config.identity, now);
    let spec = next_spec(current.as_ref().and_then(|l| l.spec.as_ref()), &action, config, now);
    let result = match (&action, current) {
        (LeaseAction::Wait { .. }, _) => return Ok(false),
        (LeaseAction::Create, _) | (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    namespace: Some(config.namespace.clone()),
                    labels: Some(
                        [(LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()), (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned())].into(),
                    ),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (_, Some(mut lease)) => {
            // `replace` carries the read resourceVersion: a concurrent writer makes it fail with 409.
            lease.spec = Some(spec);
            api.replace(LEASE_NAME, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => {
            if action == LeaseAction::TakeOver || action == LeaseAction::Create {
                tracing::info!(identity = %config.identity, "acquired the leader Lease");
            }
            Ok(true)
        }
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up at shutdown so a standby takes over at once instead of after `duration`.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(LEASE_NAME, &PostParams::default(), &lease).await.map(|_| ())
}

/// Runs the election until `shutdown` turns true, publishing leadership on `leader`; releases the Lease
/// on the way out if held.
pub async fn run(api: Api<Lease>, config: LeaseConfig, leader: watch::Sender<bool>, metrics: std::sync::Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let mut last_renewal: Option<std::time::Instant> = None;
    loop {
        let holds = match try_acquire_or_renew(&api, &config).await {
            Ok(holds) => {
                metrics.lease_contact();
                if holds {
                    last_renewal = Some(std::time::Instant::now());
                }
                holds
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reach the leader Lease");
                // Keep leading only while the last renewal is recent enough that nobody can take over.
                last_renewal.is_some_and(|t| t.elapsed() < config.renew_deadline) && *leader.borrow()
            }
        };
        if *leader.borrow() != holds {
            tracing::info!(leader = holds, identity = %config.identity, "leadership changed");
            let _ = leader.send(holds);
        }
        let wait = if holds { config.renew_every } else { config.retry_every };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if *leader.borrow() {
        let _ = leader.send(false);
        if let Err(e) = release(&api, &config).await {
            tracing::warn!(error = %e, "could not release the leader Lease; a standby takes over when it expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..Default::default()
        }
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", at("2026-01-01T00:00:00Z")), LeaseAction::Create);
    }

    #[test]
    fn our_lease_is_renewed() {
        assert_eq!(decide(Some(&spec("a", "2026-01-01T00:00:00Z")), "a", at("2026-01-01T00:00:05Z")), LeaseAction::Renew);
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_respected() {
        let action = decide(Some(&spec("b", "2026-01-01T00:00:00Z")), "a", at("2026-01-01T00:00:14Z"));
        assert_eq!(action, LeaseAction::Wait { holder: "b".into() });
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(decide(Some(&spec("b", "2026-01-01T00:00:00Z")), "a", at("2026-01-01T00:00:16Z")), LeaseAction::TakeOver);
        assert_eq!(decide(Some(&LeaseSpec::default()), "a", at("2026-01-01T00:00:00Z")), LeaseAction::TakeOver);
    }

    #[test]
    fn take_over_counts_a_transition_and_renew_does_not() {
        let config = LeaseConfig::new("toolwarden", "a");
        let now = at("2026-01-01T00:01:00Z");
        let taken = next_spec(Some(&spec("b", "2026-01-01T00:00:00Z")), &LeaseAction::TakeOver, &config, now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        let renewed = next_spec(Some(&taken), &LeaseAction::Renew, &config, at("2026-01-01T00:01:05Z"));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(at("2026-01-01T00:01:05Z"))));
    }
}
