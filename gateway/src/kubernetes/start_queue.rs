//! How many worker pods this gateway starts at once (`--max-pod-starts`).
//!
//! A wave of new sessions that all create their pod at once makes the node start every sandbox
//! together: all of them crawl, most miss the start timeout at the same moment, and their retries bring
//! more. With a bound, pods start at the pace the node keeps and the first of the wave are served
//! first. A session's start waits its turn within its own start timeout: a start still queued when the
//! timeout passes fails `start_timeout` without creating a pod, so an overloaded node is not given more.
//! Warm-pool top-ups only use turns that are free beyond half of the bound, so they never delay a
//! session's start for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Error, Result};

#[derive(Debug)]
pub struct StartQueue {
    turns: Arc<Semaphore>,
    limit: usize,
    /// Session starts waiting for a turn now.
    waiting: AtomicUsize,
}

/// The right to start one pod; the turn passes on when it is dropped.
pub type Turn = OwnedSemaphorePermit;

impl StartQueue {
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        StartQueue { turns: Arc::new(Semaphore::new(limit)), limit, waiting: AtomicUsize::new(0) }
    }

    /// Waits for a session's turn until `deadline`.
    pub async fn session_turn(&self, deadline: Instant, timeout_seconds: u64) -> Result<Turn> {
        // What was ahead of this start when it asked, for the message if its turn does not come.
        let under_way = self.limit.saturating_sub(self.turns.available_permits());
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let turn = tokio::time::timeout_at(deadline.into(), self.turns.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match turn {
            Ok(Ok(turn)) => Ok(turn),
            Ok(Err(_closed)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::StartQueueTimeout { seconds: timeout_seconds, limit: self.limit, under_way, ahead }),
        }
    }

    /// Turns free for warm-pool starts now: those beyond half of the bound.
    pub fn spare_turns(&self) -> Vec<Turn> {
        let reserve = self.limit / 2;
        let mut turns = Vec::new();
        while self.turns.available_permits() > reserve {
            match self.turns.clone().try_acquire_owned() {
                Ok(turn) => turns.push(turn),
                Err(_) => break,
            }
        }
        turns
    }

    /// Refuses every later start (shutdown).
    pub fn close(&self) {
        self.turns.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_start_waits_its_turn_and_gives_up_at_its_deadline_without_a_turn() {
        let queue = StartQueue::new(2);
        let first = queue.session_turn(Instant::now() + Duration::from_secs(1), 1).await.expect("free turn");
        let _second = queue.session_turn(Instant::now() + Duration::from_secs(1), 1).await.expect("free turn");
        // One start already waits (until after the next one gives up), so the next one has it ahead.
        let (waiter, next) = tokio::join!(
            queue.session_turn(Instant::now() + Duration::from_millis(300), 1),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                queue.session_turn(Instant::now() + Duration::from_millis(50), 7).await
            }
        );
        assert!(waiter.is_err(), "no turn came for the first waiter either");
        let err = next.expect_err("both turns taken");
        assert_eq!(err.code(), "start_timeout");
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(text.contains("7s") && text.contains("--max-pod-starts 2"), "{text}");
        assert!(text.contains("2 starts were under way and 1 more waiting ahead of it"), "{text}");
        drop(first);
        let _third = queue.session_turn(Instant::now() + Duration::from_millis(50), 1).await.expect("a turn freed by the first start");
    }

    #[tokio::test]
    async fn warm_starts_leave_half_of_the_turns_to_sessions() {
        let queue = StartQueue::new(5);
        let spare = queue.spare_turns();
        assert_eq!(spare.len(), 3, "5 turns, 2 kept for sessions");
        assert!(queue.spare_turns().is_empty());
        let _a = queue.session_turn(Instant::now() + Duration::from_millis(50), 1).await.expect("kept for sessions");
        let _b = queue.session_turn(Instant::now() + Duration::from_millis(50), 1).await.expect("kept for sessions");
        drop(spare);
        assert_eq!(queue.spare_turns().len(), 1, "3 free, 2 kept");
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_starts() {
        let queue = StartQueue::new(1);
        queue.close();
        let err = queue.session_turn(Instant::now() + Duration::from_secs(1), 1).await.expect_err("closed");
        assert_eq!(err.code(), "shutting_down");
        assert!(queue.spare_turns().is_empty());
    }
}
