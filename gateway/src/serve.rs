//! Running the gateway: the listeners, background duties (session reaper, runtime-ended sessions,
//! approval gauges) and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rmcp::transport::streamable_http_server::session::SessionManager;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{App, Front, mcp_service, ops_router};
use crate::session_manager::GatewaySessionManager;
use crate::state::Gateway;

/// How long shutdown waits for session ends under way (stopping workers, deleting pods).
const SESSION_END_WAIT: Duration = Duration::from_secs(5);
/// How long calls stopped at the end of the grace period get to answer their clients.
const INTERRUPT_WAIT: Duration = Duration::from_secs(1);
/// How long shutdown waits for the last spans to reach the collector.
const TRACE_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Ends a session everywhere: the gateway's record and workers, and rmcp's session (its stream closes).
async fn end(gateway: &Gateway, manager: &GatewaySessionManager, id: &str, reason: &'static str) {
    let stateless = gateway.sessions.get(id).is_some_and(|s| s.stateless);
    gateway.end_session(id, reason).await;
    if !stateless {
        let _ = manager.close_session(&id.to_owned().into()).await;
    }
}

fn spawn_duties(gateway: Arc<Gateway>, manager: Arc<GatewaySessionManager>, cancel: CancellationToken) {
    // Lines still waiting at shutdown are written by `serve`'s final flush.
    let (gw, stop) = (gateway.clone(), cancel.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = gw.audit.flush_waiting() => {}
            _ = stop.cancelled() => {}
        }
    });
    let (gw, mgr, stop) = (gateway.clone(), manager.clone(), cancel.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            for (session, reason) in gw.sessions.expired(gw.settings.idle_timeout, gw.settings.max_session_lifetime) {
                end(&gw, &mgr, &session.id, reason).await;
            }
            mgr.park_idle(&gw, crate::parking::PARK_AFTER).await;
            gw.refresh_approval_metrics();
            gw.runtime.trim_idle();
        }
    });
    if let Some(mut ended) = gateway.runtime.subscribe_ended() {
        tokio::spawn(async move {
            loop {
                let session = tokio::select! {
                    s = ended.recv() => s,
                    _ = cancel.cancelled() => return,
                };
                match session {
                    Ok(s) => end(&gateway, &manager, &s.id, s.reason).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "missed ended-session events"),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// How long a client may take to send a request's headers, and to accept an answer's bytes.
#[derive(Clone)]
struct ConnectionLimits {
    header_read: Duration,
    write_stall: Duration,
    on_stall: crate::write_stall::OnStall,
}

impl ConnectionLimits {
    fn of(gateway: &Arc<Gateway>) -> ConnectionLimits {
        let metrics = gateway.metrics.clone();
        let write_stall = gateway.settings.write_stall_timeout;
        let on_stall: crate::write_stall::OnStall = Arc::new(move |peer| {
            metrics.connection_closed("write_stalled");
            tracing::warn!(peer = ?peer, timeout_seconds = write_stall.as_secs_f64(), "closed a connection whose client accepted no data of its answer for the write stall timeout");
        });
        ConnectionLimits { header_read: gateway.settings.header_read_timeout, write_stall, on_stall }
    }
}

/// Serves `front` over HTTP/1.1 on `listener` until `stop` is cancelled, then waits for open connections
/// to finish (the caller bounds that wait).
///
/// A client must send each request's headers within `limits.header_read`. Without it a client that
/// trickles headers byte by byte (slowloris) holds its connection, and the memory and task behind it, for
/// as long as it likes. hyper counts from the start of each request, and on a keep-alive connection from
/// the end of the previous answer, so idle keep-alive connections close after it too. A client that stops
/// reading its answers is closed after `limits.write_stall` without progress ([`crate::write_stall`]).
async fn serve_http(listener: TcpListener, front: Front, stop: CancellationToken, limits: ConnectionLimits) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection that died in the backlog: try again soon.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // SSE answers are written piecemeal: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let stream = crate::write_stall::WriteStallGuard::new(stream, limits.write_stall, limits.on_stall.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), front.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight calls finish within the grace
/// period, closes every session and stops the workers.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let (mcp, manager) = mcp_service(&gateway, cancel.child_token());
    spawn_duties(gateway.clone(), manager.clone(), cancel.clone());
    let front = Front::main(App::new(gateway.clone(), mcp), metrics_listener.is_none());

    let stopping = CancellationToken::new();
    if let Some(listener) = metrics_listener {
        let ops = Front::routes(ops_router::<()>(gateway.clone(), true));
        let stop = stopping.clone();
        tokio::spawn(serve_http(listener, ops, stop, ConnectionLimits::of(&gateway)));
    }
    let grace = gateway.settings.shutdown_grace;
    let delay = gateway.settings.shutdown_delay;
    let (stop, gw, streams) = (stopping.clone(), gateway.clone(), cancel.clone());
    tokio::spawn(async move {
        shutdown.await;
        if !delay.is_zero() {
            // A terminating pod stays in a Service's endpoints until the endpoints controller and every
            // node's proxy have caught up; closing the listener at once refuses their connections.
            gw.set_not_ready();
            tracing::info!(delay_seconds = delay.as_secs_f64(), "shutting down: /readyz fails; still serving until load balancers stop sending");
            tokio::time::sleep(delay).await;
        }
        tracing::info!(grace_seconds = grace.as_secs(), "shutting down: no new connections; waiting for calls in flight");
        stop.cancel();
        // Calls in flight get the grace period; then open streams and sessions are cut.
        let deadline = tokio::time::Instant::now() + grace;
        while gw.calls_in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Calls still running are stopped (their workers stop them) and answered `interrupted`, with
        // a result line each, while their clients are still connected to hear it.
        let stopped = gw.running.stop_all();
        if stopped > 0 {
            tracing::warn!(calls = stopped, "calls still running after the grace period were stopped (interrupted)");
            let deadline = tokio::time::Instant::now() + INTERRUPT_WAIT;
            while gw.calls_in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        streams.cancel();
    });
    let server = serve_http(listener, front, stopping.clone(), ConnectionLimits::of(&gateway));
    let hard_stop = async {
        stopping.cancelled().await;
        tokio::time::sleep(grace + Duration::from_secs(2)).await;
    };
    tokio::select! {
        () = server => {}
        _ = hard_stop => tracing::warn!("connections still open after the grace period; closing them"),
    }
    cancel.cancel();
    for session in gateway.sessions.all() {
        gateway.end_session(&session.id, "shutdown").await;
    }
    // Sessions whose clients were still connected are ended by rmcp's close hooks, concurrently. The wait
    // is short so that grace + 2 s + this stays under the chart's 30 s termination grace period.
    let wait = SESSION_END_WAIT.min(grace);
    if !gateway.sessions_ended(wait).await {
        tracing::warn!("sessions still ending after {wait:?}; stopping the rest of the workers");
    }
    gateway.runtime.shutdown().await;
    gateway.audit.flush();
    if let Some(telemetry) = gateway.telemetry.clone() {
        // The last calls' spans; a collector that does not answer costs at most this wait.
        let flushed = tokio::task::spawn_blocking(move || telemetry.flush(TRACE_FLUSH_WAIT)).await.unwrap_or(false);
        if !flushed {
            tracing::warn!("spans still queued for the OTLP collector at exit were dropped");
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}
