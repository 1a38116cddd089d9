//! The gateway's own bound on a call, with a runtime whose worker takes its time (paused clock).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use toolwarden_core::config::ToolConfig;
use toolwarden_worker::protocol::{CallRequest, CallResult};

use crate::auth::Principal;
use crate::runtime::{RuntimeError, SessionInfo, WorkerRuntime};
use crate::sessions::{Caller, NewSession};
use crate::state::Gateway;

/// Answers every call after `delay` (`None`: never), and allows `start` for a worker to start.
struct SlowRuntime {
    delay: Option<Duration>,
    start: Duration,
}

impl WorkerRuntime for SlowRuntime {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn start_session(&self, _: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn call<'a>(&'a self, _: &'a str, _: &'a ToolConfig, _: CallRequest, _: &'a CancellationToken) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        Box::pin(async move {
            match self.delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
            Ok(CallResult { content: "done".into(), ..Default::default() })
        })
    }
    fn start_timeout(&self) -> Duration {
        self.start
    }
    fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A tool with a 5 s timeout.
fn tool() -> ToolConfig {
    serde_json::from_value(json!({
        "name": "show_text", "resource": "show-text", "description": "Shows its arguments.", "effect": "read",
        "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "busybox:1", "command": ["cat"]}}, "credentials": [],
        "timeoutMs": 5000, "maxOutputBytes": 65536, "memory": "64Mi", "tmpSize": "16Mi", "outputTrust": "trusted",
        "sandbox": {}
    }))
    .expect("fixture tool")
}

async fn dispatch_on(runtime: SlowRuntime) -> Result<CallResult, RuntimeError> {
    let gw = Gateway::for_tests(Arc::new(runtime)).await;
    let caller = Caller {
        namespace: "default".into(),
        principal: Principal { subject: "developer".into(), groups: vec![], credential_id: "c".into() },
    };
    let new = NewSession { id: "s1".into(), caller, client_name: "t".into(), client_version: "1".into(), protocol_version: None, stateless: false };
    let session = gw.start_session(new).await;
    let request = CallRequest { call_id: "c-1".into(), arguments: json!({}), preview: false };
    super::dispatch(&gw, &session, &tool(), request, &CancellationToken::new()).await
}

#[tokio::test(start_paused = true)]
async fn a_first_call_may_wait_for_its_worker_to_start_longer_than_the_tool_timeout() {
    // 5 s tool timeout, 60 s allowed for the start (a pod pulling its image): 40 s is within bounds.
    let result = dispatch_on(SlowRuntime { delay: Some(Duration::from_secs(40)), start: Duration::from_secs(60) }).await;
    assert_eq!(result.expect("the call waits for its worker").content, "done");
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_never_answers_is_cut_off_after_start_timeout_tool_timeout_and_grace() {
    let started = tokio::time::Instant::now();
    let error = dispatch_on(SlowRuntime { delay: None, start: Duration::from_secs(60) }).await.unwrap_err();
    assert_eq!(error.code, "worker_timeout");
    assert_eq!(started.elapsed().as_secs(), 75, "60 s start + 5 s tool timeout + 10 s grace");
    assert!(error.message.contains("did not answer within 75s"), "{}", error.message);
}
