//! Rate limits from the allow policies (`rateLimit: {calls, interval, per}`), charged per subject or per
//! session. Each (policy, limit, key) gets its own token bucket: `calls` in a burst, refilled evenly over
//! the interval.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use toolwarden_core::config::RateLimitConfig;
use toolwarden_core::policy::RateLimit;
use toolwarden_core::resources::RateLimitScope;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    policy: String,
    limit: RateLimitConfig,
    /// Subject name or session id.
    who: String,
}

#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<Key, Arc<DefaultDirectRateLimiter>>>,
}

/// A refusal: which policy's limit was hit, and when to retry.
#[derive(Debug, PartialEq)]
pub struct Limited {
    pub policy: String,
    pub message: String,
}

fn quota(limit: &RateLimitConfig) -> Quota {
    let calls = NonZeroU32::new(limit.calls.max(1)).expect("at least one");
    let period = Duration::from_millis(limit.interval_ms.max(1)) / calls.get();
    Quota::with_period(period.max(Duration::from_nanos(1))).expect("non-zero period").allow_burst(calls)
}

fn describe(limit: &RateLimitConfig) -> String {
    let ms = limit.interval_ms;
    let interval = if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    let per = match limit.per {
        RateLimitScope::Subject => "caller",
        RateLimitScope::Session => "session",
    };
    format!("{} calls per {interval} per {per}", limit.calls)
}

impl RateLimits {
    /// Charges one call against every limit; refuses at the first limit exhausted. (Buckets charged
    /// before the refusing one keep the charge: a refused call still counted as an attempt.)
    pub fn check(&self, namespace: &str, tool: &str, subject: &str, session: &str, limits: &[RateLimit]) -> Result<(), Limited> {
        for limit in limits {
            let who = match limit.limit.per {
                RateLimitScope::Subject => subject,
                RateLimitScope::Session => session,
            };
            let key = Key { namespace: namespace.to_owned(), policy: limit.policy.clone(), limit: limit.limit.clone(), who: who.to_owned() };
            let bucket = {
                let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
                buckets.entry(key).or_insert_with(|| Arc::new(RateLimiter::direct(quota(&limit.limit)))).clone()
            };
            if let Err(not_until) = bucket.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                return Err(Limited {
                    policy: limit.policy.clone(),
                    message: format!(
                        "{tool} is rate limited: policy {} allows {}; retry in {}s",
                        limit.policy,
                        describe(&limit.limit),
                        wait.as_secs().max(1)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Forgets a session's buckets.
    pub fn end_session(&self, session: &str) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.retain(|k, _| !(k.limit.per == RateLimitScope::Session && k.who == session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_refuses_the_call_after_the_burst() {
        let limits = RateLimits::default();
        let rl = vec![RateLimit {
            policy: "p".into(),
            limit: RateLimitConfig { calls: 2, interval_ms: 60_000, per: RateLimitScope::Session },
        }];
        assert!(limits.check("ns", "t", "alice", "s1", &rl).is_ok());
        assert!(limits.check("ns", "t", "alice", "s1", &rl).is_ok());
        let refused = limits.check("ns", "t", "alice", "s1", &rl).unwrap_err();
        assert!(refused.message.contains("2 calls per 1m per session"), "{}", refused.message);
        assert!(limits.check("ns", "t", "alice", "s2", &rl).is_ok(), "another session has its own bucket");
    }
}
