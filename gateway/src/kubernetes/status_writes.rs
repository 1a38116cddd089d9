//! When a session's McpSession status is written. What other replicas and `kubectl` act on (phase,
//! workers, taint, pending approvals, a takeover) is written within one `status_interval`; counters and
//! last activity alone wait until `counters_interval` has passed since the session's last write, so a
//! busy session costs a few writes an hour instead of one a second (docs/sessions-kubernetes.md).

use std::time::{Duration, Instant};

/// What of a session's status is not written yet. Ordered: a change never lowers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unwritten {
    #[default]
    Nothing,
    /// Only counters (`calls`, `denials`) and `lastActivity` moved.
    Counters,
    /// Something another replica or a person acts on moved.
    Now,
}

impl Unwritten {
    /// Notes a change of `kind`.
    pub fn note(&mut self, kind: Unwritten) {
        *self = (*self).max(kind);
    }

    /// Whether the next flush writes it, `last_write` being when the session's status was last written
    /// (or the session created).
    pub fn due(self, last_write: Instant, now: Instant, counters_interval: Duration) -> bool {
        match self {
            Unwritten::Nothing => false,
            Unwritten::Counters => now.saturating_duration_since(last_write) >= counters_interval,
            Unwritten::Now => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_wait_for_their_interval_and_everything_else_goes_at_once() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut pending = Unwritten::Nothing;
        assert!(!pending.due(start, start + minute, minute), "nothing changed, nothing written");
        pending.note(Unwritten::Counters);
        assert!(!pending.due(start, start + Duration::from_secs(59), minute), "a busy session's counters wait");
        assert!(pending.due(start, start + minute, minute));
        pending.note(Unwritten::Now);
        assert!(pending.due(start, start, minute), "a taint or a worker is written at the next flush");
        pending.note(Unwritten::Counters);
        assert_eq!(pending, Unwritten::Now, "a later counter change does not delay it");
    }
}
