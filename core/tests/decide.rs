//! Table-driven tests of `decide`: default deny, deny wins, visibility, disabled tools, schema and
//! argument rules, effect defaults for approval, tainted sessions.

mod support;

use serde_json::{Value, json};
use support::{engine, policy, tool};
use toolwarden_core::policy::{Decision, DenialCode, Session, Subject, decide};
use toolwarden_core::resources::ApprovalMode;

fn manifests() -> String {
    [
        tool("read-file", "read", ""),
        tool("write-file", "write", ""),
        tool("delete-file", "destructive", ""),
        tool("post-message", "external", ""),
        tool("get-secret", "read", ""),
        tool("purge-logs", "destructive", "  disabled: true\n  disabledReason: paused during the audit"),
        policy("devs-files", "  subjects: {groups: [devs]}\n  tools: {names: [read-file, write-file, delete-file, purge-logs]}\n  decision: allow\n  arguments:\n    - {argument: path, pathWithin: /work}"),
        policy("devs-delete", "  subjects: {groups: [devs]}\n  tools: {names: [delete-file]}\n  decision: allow\n  arguments:\n    - {argument: path, pathWithin: /work}\n  approval: {mode: human, approvers: {users: [lead]}}"),
        policy("devs-read-write-no-approval", "  subjects: {groups: [devs]}\n  tools: {names: [read-file, write-file]}\n  decision: allow\n  approval: {mode: none}"),
        policy("devs-post", "  subjects: {groups: [devs]}\n  tools: {effects: [external]}\n  decision: allow\n  taintedSessions: deny"),
        policy("no-tmp-writes", "  subjects: {users: [\"*\"]}\n  tools: {names: [write-file]}\n  decision: deny\n  arguments:\n    - {argument: path, prefix: tmp/}\n  message: nothing is written under tmp/"),
        policy("nobody-reads-secrets", "  subjects: {users: [\"*\"]}\n  tools: {names: [get-secret]}\n  decision: deny"),
        policy("devs-secrets", "  subjects: {groups: [devs]}\n  tools: {names: [get-secret]}\n  decision: allow"),
        policy("bot-write", "  subjects: {serviceAccounts: [agents/bot]}\n  tools: {names: [write-file]}\n  decision: allow\n  arguments:\n    - {argument: title, maxLength: 5}"),
    ]
    .concat()
}

enum Want {
    Allow,
    Deny(DenialCode, Option<&'static str>),
    Approval(ApprovalMode),
}

#[test]
fn decisions_follow_the_policies() {
    let engine = engine(&manifests());
    let dev = Subject::new("ann", &["devs"]);
    let stranger = Subject::new("zed", &["others"]);
    let bot = Subject::new("system:serviceaccount:agents:bot", &[]);
    let clean = Session { id: "s1".into(), tainted: false, client: "test".into() };
    let tainted = Session { tainted: true, ..clean.clone() };
    use DenialCode::*;
    let cases: Vec<(&str, &Subject, &Session, &str, Value, Want)> = vec![
        ("allowed read", &dev, &clean, "read_file", json!({"path": "a.txt"}), Want::Allow),
        ("default deny hides the tool", &stranger, &clean, "read_file", json!({"path": "a.txt"}), Want::Deny(UnknownTool, None)),
        ("tool that does not exist", &dev, &clean, "format_disk", json!({}), Want::Deny(UnknownTool, None)),
        ("one failing allow policy is enough to refuse only if none passes", &dev, &clean, "read_file", json!({"path": "../x"}), Want::Allow),
        ("deny wins over two allows", &dev, &clean, "write_file", json!({"path": "tmp/x"}), Want::Deny(DeniedByPolicy, Some("no-tmp-writes"))),
        ("unconditional deny hides the tool", &dev, &clean, "get_secret", json!({}), Want::Deny(UnknownTool, None)),
        ("disabled tool says why", &dev, &clean, "purge_logs", json!({}), Want::Deny(ToolDisabled, None)),
        ("schema refuses wrong types", &dev, &clean, "read_file", json!({"count": "three"}), Want::Deny(InvalidArguments, None)),
        ("arguments must be an object", &dev, &clean, "read_file", json!([1]), Want::Deny(InvalidArguments, None)),
        ("destructive defaults to human", &dev, &clean, "delete_file", json!({"path": "a"}), Want::Approval(ApprovalMode::Human)),
        ("destructive escape refused before approval", &dev, &clean, "delete_file", json!({"path": "/etc/x"}), Want::Deny(ArgumentRuleFailed, Some("devs-delete"))),
        ("external defaults to confirm", &dev, &clean, "post_message", json!({}), Want::Approval(ApprovalMode::Confirm)),
        ("tainted session denied external", &dev, &tainted, "post_message", json!({}), Want::Deny(TaintedSession, Some("devs-post"))),
        ("tainted session: reads stay allowed", &dev, &tainted, "read_file", json!({"path": "a"}), Want::Allow),
        ("tainted session: writes need a human", &dev, &tainted, "write_file", json!({"path": "a"}), Want::Approval(ApprovalMode::Human)),
        ("service account subject", &bot, &clean, "write_file", json!({"title": "short"}), Want::Allow),
        ("service account rule", &bot, &clean, "write_file", json!({"title": "too long"}), Want::Deny(ArgumentRuleFailed, Some("bot-write"))),
        ("service account sees nothing else", &bot, &clean, "read_file", json!({}), Want::Deny(UnknownTool, None)),
    ];
    for (name, subject, session, tool, args, want) in cases {
        let got = decide(&engine, subject, session, tool, &args);
        match (&want, &got) {
            (Want::Allow, Decision::Allow(_)) => {}
            (Want::Deny(code, policy), Decision::Deny(d)) => {
                assert_eq!(d.code, *code, "{name}: {d:?}");
                if policy.is_some() {
                    assert_eq!(d.policy.as_deref(), *policy, "{name}: {d:?}");
                }
                assert!(!d.message.is_empty(), "{name}: refusals carry a sentence");
            }
            (Want::Approval(mode), Decision::NeedsApproval(a)) => assert_eq!(a.mode, *mode, "{name}: {a:?}"),
            _ => panic!("{name}: got {got:?}"),
        }
    }
}

#[test]
fn refusal_sentences_are_specific() {
    let engine = engine(&manifests());
    let dev = Subject::new("ann", &["devs"]);
    let session = Session::default();
    let Decision::Deny(d) = decide(&engine, &dev, &session, "write_file", &json!({"path": "tmp/a"})) else { panic!() };
    assert_eq!(d.message, "nothing is written under tmp/");
    assert_eq!(d.rule.as_deref(), Some("path.prefix"));
    let Decision::Deny(d) = decide(&engine, &dev, &session, "purge_logs", &json!({})) else { panic!() };
    assert_eq!(d.message, "purge_logs is disabled: paused during the audit");
    let Decision::Deny(d) = decide(&engine, &dev, &session, "read_file", &json!({"count": "x"})) else { panic!() };
    assert!(d.message.contains("/count"), "{}", d.message);
}

#[test]
fn human_approval_names_the_approvers() {
    let engine = engine(&manifests());
    let Decision::NeedsApproval(a) = decide(&engine, &Subject::new("ann", &["devs"]), &Session::default(), "delete_file", &json!({"path": "a"})) else {
        panic!()
    };
    assert_eq!(a.policy, "devs-delete");
    assert_eq!(a.approvers.users, vec!["lead".to_string()]);
    assert!(a.reason.contains("destructive"), "{}", a.reason);
    assert_eq!(a.reason, "delete_file (destructive tool) needs human approval under policy devs-delete");
    let tainted = Session { tainted: true, ..Session::default() };
    let Decision::NeedsApproval(a) = decide(&engine, &Subject::new("ann", &["devs"]), &tainted, "write_file", &json!({"path": "a"})) else {
        panic!()
    };
    assert!(a.reason.starts_with("write_file needs human approval: this session has read untrusted output"), "{}", a.reason);
}

#[test]
fn deep_or_huge_arguments_are_refused_before_rules() {
    let engine = engine(&manifests());
    let mut deep = json!("x");
    for _ in 0..100 {
        deep = json!({"a": deep});
    }
    let dev = Subject::new("ann", &["devs"]);
    for args in [json!({"path": deep}), json!({"path": "x".repeat(1 << 20)})] {
        let Decision::Deny(d) = decide(&engine, &dev, &Session::default(), "read_file", &args) else { panic!() };
        assert_eq!(d.code, DenialCode::ArgumentsTooLarge);
    }
}

#[test]
fn visible_tools_follow_subject_and_hide_disabled_ones() {
    let engine = engine(&manifests());
    let names = |s: &Subject| engine.visible_tools(s).map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&Subject::new("ann", &["devs"])), ["delete_file", "post_message", "read_file", "write_file"]);
    assert_eq!(names(&Subject::new("system:serviceaccount:agents:bot", &[])), ["write_file"]);
    assert!(names(&Subject::new("zed", &[])).is_empty());
}

#[test]
fn rate_limits_travel_with_the_decision() {
    let yaml = tool("read-file", "read", "")
        + &policy("limited", "  subjects: {users: [\"*\"]}\n  tools: {names: [\"*\"]}\n  decision: allow\n  rateLimit: {calls: 3, interval: 1m, per: session}");
    let engine = engine(&yaml);
    let Decision::Allow(a) = decide(&engine, &Subject::new("x", &[]), &Session::default(), "read_file", &json!({})) else { panic!() };
    assert_eq!(a.rate_limits.len(), 1);
    assert_eq!(a.rate_limits[0].limit.calls, 3);
    assert_eq!(a.rate_limits[0].limit.interval_ms, 60_000);
}
