//! `GET /approvals`, `POST /approvals/{id}/approve|deny`: human approvals over HTTP, Bearer-authenticated
//! like `/mcp`. Errors are `{"error": {"code", "message"}}` (docs/approvals.md).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::approvals::DecideError;
use crate::http::{App, unauthorized};

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

pub async fn list(State(app): State<App>, headers: HeaderMap) -> Response {
    let principal = match app.gateway.auth.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return unauthorized(&app.gateway, &headers, None, e),
    };
    let approvals: Vec<_> = app.gateway.approvals.visible_to(&principal.subject, &principal.groups).iter().map(|a| a.view()).collect();
    Json(json!({"approvals": approvals})).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
}

pub async fn approve(state: State<App>, path: Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    decide(state, path, headers, body, true).await
}

pub async fn deny(state: State<App>, path: Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    decide(state, path, headers, body, false).await
}

async fn decide(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap, body: Bytes, approve: bool) -> Response {
    let gateway = &app.gateway;
    let principal = match gateway.auth.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return unauthorized(gateway, &headers, None, e),
    };
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("the body must be JSON such as {{\"reason\": \"...\"}}: {e}")),
        }
    };
    let reason = body.reason.map(|r| r.chars().take(1000).collect::<String>());
    match gateway.approvals.decide(&id, &principal.subject, &principal.groups, approve, reason) {
        Ok(approval) => {
            let verb = if approve { "approved" } else { "denied" };
            tracing::info!(approval = %id, tool = %approval.tool, requester = %approval.subject, by = %principal.subject, "approval {verb}");
            gateway.approvals_changed(&approval.session_id);
            Json(json!({"approval": approval.view()})).into_response()
        }
        Err(DecideError::Unknown) => error(StatusCode::NOT_FOUND, "unknown_approval", format!("no approval {id} (it may have expired and been forgotten)")),
        Err(DecideError::NotAnApprover(why)) => error(StatusCode::FORBIDDEN, "not_an_approver", why),
        Err(DecideError::AlreadyDecided(state)) => error(StatusCode::CONFLICT, "already_decided", format!("approval {id} is already {state}")),
    }
}
