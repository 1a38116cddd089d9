//! `decide` with 1,000 tools and 1,000 policies in one namespace. Target: under 5 µs median.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use toolwarden_core::config::*;
use toolwarden_core::policy::{Decision, Engine, Session, Subject, decide};
use toolwarden_core::resources::*;

fn tool(i: usize) -> ToolConfig {
    let effect = [Effect::Read, Effect::Write, Effect::External, Effect::Destructive][i % 4];
    ToolConfig {
        name: format!("get_item_{i}"),
        resource: format!("get-item-{i}"),
        description: "bench tool".into(),
        effect,
        input_schema: json!({
            "type": "object",
            "properties": {"path": {"type": "string"}, "title": {"type": "string", "maxLength": 200}, "count": {"type": "integer"}},
            "required": ["path"],
            "additionalProperties": false
        }),
        output_schema: None,
        runtime: Runtime {
            exec: Some(ExecRuntime { image: "busybox".into(), command: vec!["/bin/true".into()], args: vec![], env: Default::default() }),
            ..Default::default()
        },
        preview: None,
        credentials: vec![],
        egress: vec![],
        timeout_ms: DEFAULT_TIMEOUT_MS,
        max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        cpu: None,
        memory: None,
        tmp_size: None,
        output_trust: OutputTrust::Trusted,
        sandbox: Default::default(),
        disabled: false,
        disabled_reason: None,
        labels: [("team".to_string(), format!("t{}", i % 10))].into(),
    }
}

fn policy(i: usize) -> PolicyConfig {
    let rule = |name: &str, argument: &str, check| RuleConfig { name: name.into(), argument: Some(argument.into()), check, message: "no".into() };
    PolicyConfig {
        name: format!("policy-{i:04}"),
        subjects: Subjects { users: vec![format!("user-{i}")], groups: vec![format!("team-{}", i % 10)], service_accounts: vec![] },
        tools: ToolSelector { names: vec![format!("get_item_{i}"), format!("get_item_{}", (i + 1) % 1000)], ..Default::default() },
        decision: if i % 50 == 7 { PolicyDecision::Deny } else { PolicyDecision::Allow },
        rules: vec![
            rule("path.pathWithin", "path", RuleCheck::PathWithin("/work".into())),
            rule("title.maxLength", "title", RuleCheck::MaxLength(120)),
            rule("path.pattern", "path", RuleCheck::Pattern("[a-z0-9/._-]+".into())),
        ],
        approval: None,
        rate_limit: Some(RateLimitConfig { calls: 100, interval_ms: 60_000, per: RateLimitScope::Subject }),
        tainted_sessions: None,
        message: None,
    }
}

fn bench(c: &mut Criterion) {
    let config = GatewayConfig {
        format: CONFIG_FORMAT,
        namespace: "bench".into(),
        generation: 1,
        tools: (0..1000).map(tool).collect(),
        policies: (0..1000).map(policy).collect(),
    };
    let engine = Engine::new(config).unwrap();
    let subject = Subject::new("alice", &["team-4", "everyone"]);
    let session = Session { id: "s".into(), tainted: false, client: "bench".into() };
    let args = json!({"path": "docs/notes/today.md", "title": "A reasonable title", "count": 3});
    assert!(matches!(decide(&engine, &subject, &session, "get_item_504", &args), Decision::Allow(_)));
    c.bench_function("decide allow (1000 tools, 1000 policies)", |b| {
        b.iter(|| decide(black_box(&engine), &subject, &session, black_box("get_item_504"), black_box(&args)))
    });
    let bad = json!({"path": "../../etc/passwd", "title": "t"});
    c.bench_function("decide argument refusal", |b| {
        b.iter(|| decide(black_box(&engine), &subject, &session, black_box("get_item_504"), black_box(&bad)))
    });
    c.bench_function("decide unknown tool", |b| {
        b.iter(|| decide(black_box(&engine), &subject, &session, black_box("get_item_9999"), black_box(&args)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
