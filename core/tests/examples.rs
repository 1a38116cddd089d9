//! Every manifest in examples/ loads and compiles, and the config survives the trip through JSON that
//! the operator (ConfigMap) and gateway (reader) make.

use std::path::PathBuf;

use serde_json::json;
use toolwarden_core::compiler::compile_manifests;
use toolwarden_core::config::GatewayConfig;
use toolwarden_core::manifest::load_paths;
use toolwarden_core::policy::{Decision, Engine, Session, Subject, decide};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn every_example_file_loads_and_compiles() {
    let files: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        load_paths(std::slice::from_ref(file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let manifests = load_paths(&[examples()]).unwrap();
    let (configs, warnings) = compile_manifests(&manifests).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let config = &configs["default"];
    let effects: std::collections::BTreeSet<_> = config.tools.iter().map(|t| t.effect).collect();
    assert_eq!(effects.len(), 4, "every effect level is represented");
    let runtimes: std::collections::BTreeSet<_> = config.tools.iter().filter_map(|t| t.runtime.kind()).map(|k| k.as_str()).collect();
    assert_eq!(runtimes.len(), 3, "every runtime kind is represented");
    assert!(config.tools.iter().any(|t| t.disabled), "one tool is disabled");
    let kinds: std::collections::BTreeSet<_> = config.policies.iter().flat_map(|p| &p.rules).map(|r| r.check.kind()).collect();
    for kind in ["equals", "oneOf", "prefix", "pattern", "maxLength", "range", "pathWithin", "hostIn", "expression"] {
        assert!(kinds.contains(kind), "examples use every rule kind; missing {kind}");
    }
}

#[test]
fn config_round_trips_through_json() {
    let manifests = load_paths(&[examples()]).unwrap();
    let (configs, _) = compile_manifests(&manifests).unwrap();
    let config = configs["default"].clone();
    let back = GatewayConfig::from_json(&config.to_json()).unwrap();
    assert_eq!(back, config);
    let mut wrong = serde_json::to_value(&config).unwrap();
    wrong["format"] = json!(99);
    assert!(GatewayConfig::from_json(&wrong.to_string()).unwrap_err().contains("format 99"));
}

#[test]
fn pull_request_writer_is_held_to_its_allowlist() {
    let manifests = load_paths(&[examples()]).unwrap();
    let (mut configs, _) = compile_manifests(&manifests).unwrap();
    let engine = Engine::new(configs.remove("default").unwrap()).unwrap();
    let dev = Subject::new("dev", &["developers"]);
    let call = |args| decide(&engine, &dev, &Session::default(), "create_pull_request", &args);
    let ok = json!({"owner": "acme", "repo": "blog", "head": "ai-blog/a", "base": "master", "title": "t", "body": "b"});
    assert!(matches!(call(ok.clone()), Decision::Allow(_)));
    for (field, value, rule) in [
        ("repo", json!("infra"), "repo.equals"),
        ("head", json!("main"), "head.prefix"),
        ("base", json!("main"), "base.equals"),
        ("title", json!("x".repeat(121)), "title.maxLength"),
        ("body", json!("x".repeat(10_001)), "body.maxLength"),
    ] {
        let mut args = ok.clone();
        args[field] = value;
        match call(args) {
            Decision::Deny(d) => assert_eq!(d.rule.as_deref(), Some(rule)),
            other => panic!("{field}: {other:?}"),
        }
    }
}

/// The example's recipient rule is right on its own, without the schema's `format: email` in front of it:
/// one address at example.com, nothing that carries a second recipient.
#[test]
fn the_example_recipient_rule_allows_one_company_address_only() {
    use toolwarden_core::policy::CompiledRule;
    use toolwarden_core::policy::rules::CallContext;
    let manifests = load_paths(&[examples()]).unwrap();
    let (configs, _) = compile_manifests(&manifests).unwrap();
    let policy = configs["default"].policies.iter().find(|p| p.name == "developers-email-team").unwrap();
    let config = policy.rules.iter().find(|r| r.name == "company-recipients").unwrap();
    let rule = CompiledRule::compile(config).unwrap();
    let ctx = CallContext { subject: "dev", groups: &[], session_id: "s", tainted: false, client: "c", paths: &[] };
    for ok in ["team@example.com", "first.last+tag@example.com"] {
        assert!(rule.passes(&json!({"to": ok}), &ctx), "{ok}");
    }
    for bad in [
        "a@evil.test;b@example.com",
        "a@evil.test,b@example.com",
        "a@evil.test b@example.com",
        "not an address <x@evil.test> @example.com",
        "\"x@evil.test\"@example.com",
        "x@evil.test\n@example.com",
        "x@example.com.evil.test",
        "x@example.com\n",
        "x@exampleXcom",
        "@example.com",
    ] {
        assert!(!rule.passes(&json!({"to": bad}), &ctx), "{bad:?}");
    }
}

/// The notes tools declare `path` under /notes: the release deny catches every spelling of a release note,
/// and the program receives the canonical path.
#[test]
fn release_notes_are_protected_whatever_the_spelling() {
    let manifests = load_paths(&[examples()]).unwrap();
    let (mut configs, _) = compile_manifests(&manifests).unwrap();
    let engine = Engine::new(configs.remove("default").unwrap()).unwrap();
    let dev = Subject::new("dev", &["developers"]);
    for path in ["releases/v1.md", "./releases/v1.md", "/notes/releases/v1.md", "ideas/../releases/v1.md", "releases//v1.md", "releases"] {
        match decide(&engine, &dev, &Session::default(), "write_note", &json!({"path": path, "content": "x"})) {
            Decision::Deny(d) => assert_eq!(d.policy.as_deref(), Some("protect-release-notes"), "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    match decide(&engine, &dev, &Session::default(), "write_note", &json!({"path": "./ideas//today.md", "content": "x"})) {
        Decision::Allow(a) => assert_eq!(a.arguments, Some(json!({"path": "ideas/today.md", "content": "x"}))),
        other => panic!("{other:?}"),
    }
}
