//! Human approvals end to end: the agent's call parks, an approver decides over `/approvals`, and the
//! agent's identical retry runs exactly once.

mod gateway_support;

use gateway_support::*;
use serde_json::{Value, json};

/// A destructive tool that needs no workspace state, so the test checks the approval flow only.
const EXTRA: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: delete-greeting}
spec:
  description: Deletes the greeting (prints what it deleted).
  effect: destructive
  inputSchema: {type: object, properties: {name: {type: string}}, required: [name], additionalProperties: false}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "import json,sys; print('deleted greeting ' + json.load(sys.stdin)['name'])"]
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: developers-delete-greetings}
spec:
  subjects: {groups: [developers]}
  tools: {names: [delete-greeting]}
  decision: allow
  approval: {mode: human, ttl: 10m, approvers: {users: [alice]}}
"#;

async fn approvals(dev: &Dev, token: &str) -> Vec<Value> {
    let body: Value = http().get(dev.url("/approvals")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    body["approvals"].as_array().unwrap().clone()
}

async fn decide(dev: &Dev, token: &str, id: &str, verb: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http().post(dev.url(&format!("/approvals/{id}/{verb}"))).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_call_waits_for_a_listed_approver_then_runs_exactly_once() {
    let dev = Dev::start(&[("zz-test.yaml", EXTRA)]);
    let agent = dev.client(DEV_TOKEN).await;

    let parked = call(&agent, "delete_greeting", json!({"name": "old"})).await;
    let message = refused(&parked, "approval_required");
    let id = parked.structured_content.as_ref().unwrap()["approvalId"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("toolwarden approvals approve {id}")), "{message}");
    // Still pending: the retry does not run and does not make a second approval.
    refused(&call(&agent, "delete_greeting", json!({"name": "old"})).await, "approval_required");

    let listed = approvals(&dev, APPROVER_TOKEN).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let a = &listed[0];
    assert_eq!((a["id"].as_str(), a["tool"].as_str(), a["subject"].as_str(), a["state"].as_str()), (Some(id.as_str()), Some("delete_greeting"), Some("developer"), Some("pending")));
    assert_eq!(a["arguments"], json!({"name": "old"}));
    assert_eq!(a["policy"], "developers-delete-greetings");
    for field in ["namespace", "sessionId", "reason", "createdAt", "expiresAt"] {
        assert!(a.get(field).is_some(), "{field} missing from {a}");
    }
    assert_eq!(approvals(&dev, DEV_TOKEN).await.len(), 1, "the requester sees its own request");

    let (status, body) = decide(&dev, DEV_TOKEN, &id, "approve", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_an_approver")), "{body}");
    let (status, body) = decide(&dev, APPROVER_TOKEN, "ap-0000", "approve", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_approval")));
    let (status, body) = decide(&dev, APPROVER_TOKEN, &id, "approve", Some(json!({"reason": "cleanup is fine"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["approval"]["state"].as_str(), body["approval"]["decidedBy"].as_str()), (Some("approved"), Some("alice")));
    let (status, body) = decide(&dev, APPROVER_TOKEN, &id, "deny", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_decided")));

    // Other arguments are another call: not approved.
    refused(&call(&agent, "delete_greeting", json!({"name": "other"})).await, "approval_required");
    let deleted = ok(&call(&agent, "delete_greeting", json!({"name": "old"})).await);
    assert_eq!(deleted.trim(), "deleted greeting old");
    let again = call(&agent, "delete_greeting", json!({"name": "old"})).await;
    refused(&again, "approval_required");
    let lines = dev.audit_lines();
    let ran: Vec<&Value> = lines.iter().filter(|l| l["tool"] == "delete_greeting" && l["event"] == "result").collect();
    assert_eq!(ran.len(), 1, "the approved call ran exactly once");
    assert!(lines.iter().any(|l| l["tool"] == "delete_greeting" && l["approval"] == "approved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_approval_is_reported_to_the_agent() {
    let dev = Dev::start(&[]);
    let agent = dev.client(DEV_TOKEN).await;
    let parked = call(&agent, "delete_note", json!({"path": "x.md"})).await;
    let id = parked.structured_content.as_ref().unwrap()["approvalId"].as_str().unwrap().to_owned();
    let (status, _) = decide(&dev, APPROVER_TOKEN, &id, "deny", Some(json!({"reason": "keep it"}))).await;
    assert_eq!(status, 200);
    let denied = refused(&call(&agent, "delete_note", json!({"path": "x.md"})).await, "approval_denied");
    assert!(denied.contains("alice denied") && denied.contains("keep it"), "{denied}");
}

fn approvals_cli(dev: &Dev, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .arg("approvals")
        .args(["--gateway", &dev.url(""), "--token", token])
        .args(args)
        .output()
        .expect("toolwarden approvals runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_approval_end_to_end_through_the_approvals_cli() {
    let dev = Dev::start(&[("zz-test.yaml", EXTRA)]);
    let agent = dev.client(DEV_TOKEN).await;
    let parked = call(&agent, "delete_greeting", json!({"name": "cli"})).await;
    let id = parked.structured_content.as_ref().unwrap()["approvalId"].as_str().unwrap().to_owned();

    let (ok_list, listed, err) = approvals_cli(&dev, APPROVER_TOKEN, &["list"]);
    assert!(ok_list, "{err}");
    assert!(listed.contains(&id) && listed.contains("delete_greeting") && listed.contains("pending"), "{listed}");

    let (ok_self, _, err) = approvals_cli(&dev, DEV_TOKEN, &["approve", &id]);
    assert!(!ok_self, "the requester is no approver");
    assert!(err.contains("approver"), "{err}");

    let (approved, out, err) = approvals_cli(&dev, APPROVER_TOKEN, &["approve", &id, "--reason", "fine"]);
    assert!(approved, "{out}{err}");
    assert_eq!(ok(&call(&agent, "delete_greeting", json!({"name": "cli"})).await).trim(), "deleted greeting cli");
    refused(&call(&agent, "delete_greeting", json!({"name": "cli"})).await, "approval_required");

    let (again, _, err) = approvals_cli(&dev, APPROVER_TOKEN, &["deny", &id]);
    assert!(!again && err.contains("already"), "{err}");
}

/// 2026-07-28 clients have no session stream to be asked on: the call is answered `input_required` with
/// the same question, and the client's retry carries the user's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_clients_with_elicitation_answer_an_input_required_question() {
    use rmcp::model::{CallToolRequestParams, CallToolResponse, ProtocolVersion};
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};

    let self_approval = EXTRA.replace("approvers: {users: [alice]}}", "approvers: {users: [alice, developer]}, allowSelfApproval: true}");
    let dev = Dev::start(&[("zz-test.yaml", &self_approval)]);
    let connect = async |user: User| {
        let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(dev.mcp_url()).auth_header(DEV_TOKEN),
        );
        let lifecycle = ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
        user.serve_with_lifecycle(transport, lifecycle).await.expect("2026-07-28 client connects")
    };
    let params = |name: &str| CallToolRequestParams::new("delete_greeting").with_arguments(json!({"name": name}).as_object().unwrap().clone());
    for approve in [true, false] {
        let user = User { approve, asked: Default::default() };
        let client = connect(user.clone()).await;
        let result = client.call_tool(params("stateless")).await.expect("tools/call answers");
        assert_eq!(user.asked.load(std::sync::atomic::Ordering::SeqCst), 1, "asked once, through input_required");
        if approve {
            assert_eq!(ok(&result).trim(), "deleted greeting stateless");
        } else {
            let denied = refused(&result, "approval_denied");
            assert!(denied.contains("declined by the user"), "{denied}");
        }
    }
    // The question names the pending approval; an answer for another one is not taken.
    let client = connect(User { approve: true, asked: Default::default() }).await;
    let CallToolResponse::InputRequired(question) = client.call_tool_once(params("forged")).await.unwrap() else { panic!("input_required") };
    let state = question.request_state.clone().expect("requestState names the approval");
    let mut forged = params("forged");
    forged.input_responses = Some([("approve".to_owned(), json!({"action": "accept", "content": {"approve": true}}))].into());
    forged.request_state = Some(format!("{state}-other"));
    assert!(matches!(client.call_tool_once(forged).await.unwrap(), CallToolResponse::InputRequired(_)), "asked again");
    let lines = dev.audit_lines();
    assert!(!lines.iter().any(|l| l["tool"] == "delete_greeting" && l["arguments"]["name"] == "forged" && l["event"] == "result"), "nothing ran");
    assert!(lines.iter().any(|l| l["arguments"]["name"] == "forged" && l["status"] == "pending"), "the question is audited as a pending approval");

    // Without elicitation, a 2026-07-28 client still gets the pending approval.
    let plain = rmcp::model::ClientConfig::new(Default::default(), rmcp::model::Implementation::new("plain", "1"));
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(dev.mcp_url()).auth_header(DEV_TOKEN),
    );
    let plain = plain
        .serve_with_lifecycle(transport, ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] })
        .await
        .unwrap();
    refused(&plain.call_tool(params("plain")).await.unwrap(), "approval_required");
}

/// A client that answers elicitation requests with a fixed decision and counts them.
#[derive(Clone)]
struct User {
    approve: bool,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl rmcp::ClientHandler for User {
    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let rmcp::model::ElicitRequestParams::FormElicitationParams { message, .. } = request else { panic!("a form was expected") };
        assert!(message.contains("delete_greeting"), "{message}");
        Ok(rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept).with_content(json!({"approve": self.approve})))
    }

    fn get_info(&self) -> rmcp::model::ClientConfig {
        let caps = rmcp::model::ClientCapabilities::builder().enable_elicitation().build();
        let mut info = rmcp::model::ClientConfig::new(caps, rmcp::model::Implementation::new("asking-client", "1.0"));
        info.protocol_version = rmcp::model::ProtocolVersion::V_2025_06_18;
        info
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_elicitation_let_the_user_approve_when_the_policy_allows_self_approval() {
    let self_approval = EXTRA.replace("approvers: {users: [alice]}}", "approvers: {users: [alice, developer]}, allowSelfApproval: true}");
    assert_ne!(self_approval, EXTRA);
    let dev = Dev::start(&[("zz-test.yaml", &self_approval)]);
    for approve in [true, false] {
        let user = User { approve, asked: Default::default() };
        let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(dev.mcp_url()).auth_header(DEV_TOKEN),
        );
        let client = rmcp::ServiceExt::serve(user.clone(), transport).await.expect("client connects");
        let result = call(&client, "delete_greeting", json!({"name": "asked"})).await;
        assert_eq!(user.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        if approve {
            assert_eq!(ok(&result).trim(), "deleted greeting asked");
        } else {
            let denied = refused(&result, "approval_denied");
            assert!(denied.contains("declined by the user"), "{denied}");
        }
    }
    // Clients without elicitation still get a pending approval.
    let plain = dev.client(DEV_TOKEN).await;
    refused(&call(&plain, "delete_greeting", json!({"name": "asked"})).await, "approval_required");
}
