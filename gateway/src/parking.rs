//! Parked sessions: an MCP session quiet for [`PARK_AFTER`] gives up its rmcp session (a task, a service
//! loop, their channels and caches) and keeps only the gateway's own record and the client's `initialize`
//! parameters. rmcp's session costs about 70 KiB whatever the session does: most of it is tokio channel
//! blocks, each allocated for 32 messages of about 400 bytes up front (heaptrack, docs/benchmarks.md,
//! "Load: 1,000 concurrent sessions"). A parked session's next request that needs rmcp has rmcp restore it
//! through its session store ([`crate::failover::McpSessionStore`]), replaying the parameters kept here;
//! `tools/call`s the gateway answers itself ([`crate::direct_call`]) never need it.
//!
//! A session is parked only when nothing of it is in rmcp: no request under way there and no stream open
//! (a client listening on `GET` keeps its session). What a client sees does not change, except that an SSE
//! stream that ended more than [`PARK_AFTER`] ago can no longer be resumed with `Last-Event-ID`: rmcp keeps
//! ended streams for the same time ([`COMPLETED_STREAM_TTL`]).

use std::sync::Mutex;
use std::time::Duration;

use rmcp::model::InitializeRequestParams;
use tokio::sync::Notify;

/// How long a session must be quiet before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(60);
/// How long rmcp keeps an ended request stream for a resume; no longer than [`PARK_AFTER`], so parking
/// drops nothing a client could still ask for.
pub const COMPLETED_STREAM_TTL: Duration = PARK_AFTER;
/// How long parking waits for rmcp's session task to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for a session being parked (a few milliseconds in practice).
const ENTER_WAIT: Duration = Duration::from_secs(5);

enum State {
    /// rmcp holds the session.
    Live,
    /// rmcp's session is being closed; requests wait.
    Parking,
    /// rmcp holds nothing; these are the parameters it replays to restore the session.
    Parked(std::sync::Arc<InitializeRequestParams>),
}

/// A session's hold on rmcp: whether it is parked, and what of it is in rmcp right now.
pub struct RmcpHold {
    state: Mutex<(State, usize)>,
    closed: Notify,
}

impl Default for RmcpHold {
    fn default() -> Self {
        RmcpHold { state: Mutex::new((State::Live, 0)), closed: Notify::new() }
    }
}

/// A request or stream of the session in rmcp; the session is not parked while one is alive.
pub struct InRmcp<'a>(&'a RmcpHold);

impl Drop for InRmcp<'_> {
    fn drop(&mut self) {
        self.0.lock().1 -= 1;
    }
}

/// A stream's hold, owned by the stream (see [`RmcpHold::stream`]).
pub struct StreamHold(std::sync::Arc<crate::sessions::SessionRecord>);

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.0.rmcp.lock().1 -= 1;
    }
}

impl RmcpHold {
    fn lock(&self) -> std::sync::MutexGuard<'_, (State, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a request as under way in rmcp, after waiting out a parking in progress. `None` when the
    /// parking did not finish in time (the request is then refused as retryable).
    pub async fn enter(&self) -> Option<InRmcp<'_>> {
        let deadline = tokio::time::Instant::now() + ENTER_WAIT;
        loop {
            {
                let mut state = self.lock();
                if !matches!(state.0, State::Parking) {
                    state.1 += 1;
                    return Some(InRmcp(self));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Counts a stream rmcp opened for the session until the stream is dropped.
    pub fn stream(record: &std::sync::Arc<crate::sessions::SessionRecord>) -> StreamHold {
        record.rmcp.lock().1 += 1;
        StreamHold(record.clone())
    }

    /// Starts parking when nothing of the session is in rmcp; the caller then closes rmcp's session and
    /// calls [`RmcpHold::parked`].
    pub fn begin(&self) -> bool {
        let mut state = self.lock();
        if matches!(state.0, State::Live) && state.1 == 0 {
            state.0 = State::Parking;
            return true;
        }
        false
    }

    /// rmcp reports the session closed: `true` when it is the close parking asked for (the session goes
    /// on), `false` when the session really ends.
    pub fn closed_by_parking(&self) -> bool {
        let parking = matches!(self.lock().0, State::Parking);
        if parking {
            self.closed.notify_one();
        }
        parking
    }

    /// Waits (a bounded time) for rmcp's session task to report its close.
    pub async fn wait_closed(&self) -> bool {
        tokio::time::timeout(CLOSE_WAIT, self.closed.notified()).await.is_ok()
    }

    /// Ends a parking: `Some` keeps these parameters for the restore, `None` gives up (rmcp still holds it).
    pub fn parked(&self, params: Option<std::sync::Arc<InitializeRequestParams>>) {
        self.lock().0 = match params {
            Some(params) => State::Parked(params),
            None => State::Live,
        };
    }

    /// What rmcp replays to restore the session, when it is parked.
    pub fn restore_params(&self) -> Option<InitializeRequestParams> {
        match &self.lock().0 {
            State::Parked(params) => Some(InitializeRequestParams::clone(params)),
            _ => None,
        }
    }

    /// rmcp holds the session again (its restore replayed `initialize`). `true` when it was parked.
    pub fn restored(&self) -> bool {
        let mut state = self.lock();
        let was_parked = matches!(state.0, State::Parked(_));
        if was_parked {
            state.0 = State::Live;
        }
        was_parked
    }

    /// Whether the client said it can answer elicitation, for a parked session (its peer is gone).
    pub fn parked_client_elicits(&self) -> Option<bool> {
        match &self.lock().0 {
            State::Parked(params) => Some(params.capabilities.elicitation.is_some()),
            _ => None,
        }
    }

    pub fn is_parked(&self) -> bool {
        matches!(self.lock().0, State::Parked(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_waits_for_a_parking_and_gives_up_after_a_bound() {
        let hold = std::sync::Arc::new(RmcpHold::default());
        assert!(hold.begin(), "nothing in rmcp: parking starts");
        let parker = hold.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            parker.parked(Some(std::sync::Arc::new(InitializeRequestParams::default())));
        });
        let entered = hold.enter().await;
        assert!(entered.is_some() && hold.is_parked(), "entered once the session was parked");
        assert!(!hold.begin(), "not parked again while a request is in rmcp");
        drop(entered);
        assert!(hold.restored() && hold.begin(), "restored, then parkable again");
        let started = std::time::Instant::now();
        assert!(hold.enter().await.is_none(), "a parking that never ends: the request is refused");
        assert!(started.elapsed() >= ENTER_WAIT);
    }
}
