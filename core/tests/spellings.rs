//! One value, many spellings: path arguments, URLs and formatted strings must be read one way by every
//! rule, in allow and deny policies alike, or refused with a sentence saying why.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{engine, policy};
use toolwarden_core::compiler::compile_manifests;
use toolwarden_core::manifest::load_str;
use toolwarden_core::policy::{Decision, Denial, DenialCode, Engine, Session, Subject, decide};

/// An McpTool whose inputSchema properties are `properties` (YAML flow mapping entries).
fn tool_with(name: &str, effect: &str, properties: &str) -> String {
    format!(
        "---\napiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {{name: {name}}}\nspec:\n  description: A test tool.\n  effect: {effect}\n  inputSchema: {{type: object, properties: {{{properties}}}}}\n  runtime: {{exec: {{image: busybox, command: [/bin/true]}}}}\n"
    )
}

fn call(engine: &Engine, tool: &str, args: Value) -> Decision {
    decide(engine, &Subject::new("ann", &["devs"]), &Session { id: "s1".into(), ..Default::default() }, tool, &args)
}

fn denial(decision: Decision) -> Denial {
    match decision {
        Decision::Deny(d) => d,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn warnings(yaml: &str) -> Vec<String> {
    let manifests = load_str(yaml, Path::new("inline.yaml")).unwrap();
    let (_, warnings) = compile_manifests(&manifests).unwrap_or_else(|e| panic!("{e}"));
    warnings.iter().map(ToString::to_string).collect()
}

/// The docs tool from the review: an allow within /docs and a deny on `published/`.
fn docs_manifests(declared: bool) -> String {
    let path = if declared { "{type: string, x-toolwarden-path: /docs}" } else { "{type: string}" };
    [
        tool_with("write-doc", "write", &format!("path: {path}, content: {{type: string}}")),
        policy("devs-write-docs", "  subjects: {groups: [devs]}\n  tools: {names: [write-doc]}\n  decision: allow\n  arguments:\n    - {argument: path, pathWithin: /docs}"),
        policy("protect-published", "  subjects: {users: [\"*\"]}\n  tools: {names: [write-doc]}\n  decision: deny\n  arguments:\n    - {argument: path, prefix: published/}\n  message: published documents are not edited by agents"),
    ]
    .concat()
}

#[test]
fn deny_rules_on_declared_paths_catch_every_spelling() {
    let engine = engine(&docs_manifests(true));
    for spelling in [
        "published/v1.md",
        "./published/v1.md",
        "/docs/published/v1.md",
        "drafts/../published/v1.md",
        "published//v1.md",
        ".//published/./v1.md",
        "../docs/published/v1.md",
    ] {
        let d = denial(call(&engine, "write_doc", json!({"path": spelling, "content": "x"})));
        assert_eq!(d.code, DenialCode::DeniedByPolicy, "{spelling}");
        assert_eq!(d.policy.as_deref(), Some("protect-published"), "{spelling}");
        assert_eq!(d.rule.as_deref(), Some("path.prefix"), "{spelling}");
        assert_eq!(d.message, "published documents are not edited by agents", "{spelling}");
    }
}

#[test]
fn the_tool_receives_the_canonical_path_the_rules_checked() {
    let engine = engine(&docs_manifests(true));
    match call(&engine, "write_doc", json!({"path": "/docs/drafts/./a//b.md", "content": "x"})) {
        Decision::Allow(allowed) => {
            assert_eq!(allowed.arguments, Some(json!({"path": "drafts/a/b.md", "content": "x"})));
        }
        other => panic!("{other:?}"),
    }
    match call(&engine, "write_doc", json!({"path": "drafts/b.md", "content": "x"})) {
        Decision::Allow(allowed) => assert_eq!(allowed.arguments, None, "already canonical: nothing to rewrite"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn paths_without_one_reading_are_refused_with_the_reason() {
    let engine = engine(&docs_manifests(true));
    for (spelling, sentence) in [
        ("../etc/passwd", "write_doc: argument `/path` leaves /docs; give a path inside it, relative to it (such as dir/file.md)"),
        ("/etc/passwd", "write_doc: argument `/path` leaves /docs; give a path inside it, relative to it (such as dir/file.md)"),
        ("published%2fv1.md", "write_doc: argument `/path` holds percent-encoding (such as %2e or %2f); send the path as plain characters"),
        ("%2e%2e/etc/passwd", "write_doc: argument `/path` holds percent-encoding (such as %2e or %2f); send the path as plain characters"),
        ("published\\v1.md", "write_doc: argument `/path` holds a backslash; separate directories with `/`"),
        ("published/v1.md\0.txt", "write_doc: argument `/path` holds a control character (such as NUL, a tab or a newline); paths are plain text"),
        ("published\u{FF0F}v1.md", "write_doc: argument `/path` holds U+FF0F, a character that reads as or folds into `.`, `/` or `\\`; write paths with plain `.` and `/`"),
        ("\u{2025}/etc/passwd", "write_doc: argument `/path` holds U+2025, a character that reads as or folds into `.`, `/` or `\\`; write paths with plain `.` and `/`"),
        ("published\u{200D}/v1.md", "write_doc: argument `/path` holds U+200D, an invisible formatting character"),
        ("", "write_doc: argument `/path` is empty; name a file or directory (`.` is the base directory itself)"),
    ] {
        let d = denial(call(&engine, "write_doc", json!({"path": spelling, "content": "x"})));
        assert_eq!((d.code, d.policy.as_deref(), d.message.as_str()), (DenialCode::InvalidArguments, None, sentence), "{spelling:?}");
    }
}

/// Without the declaration the deny is as weak as before, and the compiler says so.
#[test]
fn undeclared_path_rules_are_warned_about() {
    let warnings = warnings(&docs_manifests(false));
    assert!(
        warnings.iter().any(|w| w.contains("spec.arguments[0]") && w.contains("pathWithin checks `path` of write_doc") && w.contains("x-toolwarden-path")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("protect-published") && w.contains("`path` of write_doc looks like a file path")),
        "{warnings:?}"
    );
    assert!(crate::warnings(&docs_manifests(true)).is_empty());
    let never = [
        tool_with("write-doc", "write", "path: {type: string, x-toolwarden-path: /docs}"),
        policy("p", "  subjects: {users: [\"*\"]}\n  tools: {names: [write-doc]}\n  decision: deny\n  arguments:\n    - {argument: path, prefix: ./published/}"),
    ]
    .concat();
    assert!(crate::warnings(&never).iter().any(|w| w.contains("`./published/` is not a canonical path")));
}

#[test]
fn misdeclared_paths_are_compile_errors() {
    for (properties, want) in [
        ("path: {type: string, x-toolwarden-path: docs}", "must be an absolute directory"),
        ("path: {type: string, x-toolwarden-path: /docs/}", "canonical form"),
        ("path: {type: integer, x-toolwarden-path: /docs}", "needs `type: string`"),
        ("path: {anyOf: [{type: string, x-toolwarden-path: /docs}]}", "read only on an argument"),
    ] {
        let errors = support::compile_errors(&tool_with("write-doc", "write", properties)).to_string();
        assert!(errors.contains("spec.inputSchema") && errors.contains(want), "{properties}: {errors}");
    }
}

fn fetch_manifests() -> String {
    [
        tool_with("fetch-page", "read", "url: {type: string}"),
        policy("devs-fetch", "  subjects: {groups: [devs]}\n  tools: {names: [fetch-page]}\n  decision: allow\n  arguments:\n    - {argument: url, hostIn: [docs.example.test]}"),
        tool_with("fetch-link", "read", "url: {type: string}"),
        policy("devs-fetch-link", "  subjects: {groups: [devs]}\n  tools: {names: [fetch-link]}\n  decision: allow"),
        policy("no-evil", "  subjects: {users: [\"*\"]}\n  tools: {names: [fetch-link]}\n  decision: deny\n  arguments:\n    - {argument: url, hostIn: [evil.test]}\n  message: evil.test is off limits"),
    ]
    .concat()
}

#[test]
fn urls_that_parsers_read_differently_are_refused_with_the_reason() {
    let engine = engine(&fetch_manifests());
    let base = "argument `url` must be a URL on docs.example.test";
    for (url, why) in [
        ("http://docs.example.test\\@evil.test/", "the URL holds a backslash, which some URL parsers read as `/` and others as part of the host or user name"),
        ("http://docs.example.test@evil.test/", "the URL carries a user name or password before `@`, which URL parsers split differently; send it without one"),
        ("http://evil.test@docs.example.test/", "the URL carries a user name or password before `@`, which URL parsers split differently; send it without one"),
        ("http://docs.example.test%40evil.test/", "the URL's host may hold only letters, digits, `-` and `.` (no percent-encoding, `_` or empty labels)"),
        ("http://docs.example.test\t.evil.test/", "the URL holds a space or a control character (tab, newline, NUL…), which some URL parsers drop and others keep"),
        ("http://0x7f.1/", "the URL's host is an IP address in an unusual notation (hex, octal, a single number or fewer than four parts); write four decimal numbers"),
        ("http://2130706433/", "the URL's host is an IP address in an unusual notation (hex, octal, a single number or fewer than four parts); write four decimal numbers"),
        ("http://dοcs.example.test/", "the URL holds non-ASCII characters; write the host in punycode (xn--…) and percent-encode the rest"),
        ("http:/docs.example.test/", "the URL does not have `//` and a host right after http: or https:"),
    ] {
        let d = denial(call(&engine, "fetch_page", json!({"url": url})));
        assert_eq!(d.code, DenialCode::ArgumentRuleFailed, "{url}");
        assert_eq!((d.policy.as_deref(), d.rule.as_deref()), (Some("devs-fetch"), Some("url.hostIn")), "{url}");
        assert_eq!(d.message, format!("{base}: {why}"), "{url}");
    }
    let d = denial(call(&engine, "fetch_page", json!({"url": "https://evil.test/"})));
    assert_eq!(d.message, base, "a plain URL on another host gets the rule's own sentence");
    assert!(matches!(call(&engine, "fetch_page", json!({"url": "https://DOCS.example.test./a?b=c@d"})), Decision::Allow(_)));
}

#[test]
fn deny_host_rules_catch_urls_they_cannot_read() {
    let engine = engine(&fetch_manifests());
    for url in [
        "https://evil.test/",
        "http://ok.test\\@evil.test/",
        "http://ok.test@evil.test/",
        "evil.test/x",
        "http://evil%2etest/",
    ] {
        let d = denial(call(&engine, "fetch_link", json!({"url": url})));
        assert_eq!((d.code, d.policy.as_deref(), d.message.as_str()), (DenialCode::DeniedByPolicy, Some("no-evil"), "evil.test is off limits"), "{url}");
    }
    assert!(matches!(call(&engine, "fetch_link", json!({"url": "https://ok.test/"})), Decision::Allow(_)));
    assert!(matches!(call(&engine, "fetch_link", json!({})), Decision::Allow(_)), "no URL, nothing to deny");
}

fn mail_manifests() -> String {
    [
        tool_with("send-mail", "external", "to: {type: string, format: email}, when: {type: string, format: date-time}, site: {type: string, format: hostname}"),
        policy("devs-mail", "  subjects: {groups: [devs]}\n  tools: {names: [send-mail]}\n  decision: allow\n  approval: {mode: none}"),
    ]
    .concat()
}

#[test]
fn formats_are_asserted_not_hints() {
    let engine = engine(&mail_manifests());
    for (field, value) in [
        ("to", "not an address <x@evil.test> @example.com"),
        ("to", "a@evil.test;b@example.com"),
        ("to", "a@evil.test, b@example.com"),
        ("to", "\"a@evil.test\"@example.com"),
        ("to", "Team <team@example.com>"),
        ("when", "next tuesday"),
        ("site", "example.com/x"),
    ] {
        let d = denial(call(&engine, "send_mail", json!({ field: value })));
        assert_eq!(d.code, DenialCode::InvalidArguments, "{value}");
        assert!(d.message.starts_with(&format!("send_mail: argument `/{field}`: ")), "{}", d.message);
        assert!(d.message.contains("is not a"), "{}", d.message);
    }
    let ok = json!({"to": "team@example.com", "when": "2026-03-01T10:00:00Z", "site": "example.com"});
    assert!(matches!(call(&engine, "send_mail", ok), Decision::Allow(_)));
}

#[test]
fn formats_the_gateway_does_not_check_are_warned_about() {
    let yaml = [
        tool_with("get-item", "read", "id: {type: string, format: int32}, file: {type: string, format: path}"),
        policy("p", "  subjects: {users: [\"*\"]}\n  tools: {names: [get-item]}\n  decision: allow"),
    ]
    .concat();
    let warnings = warnings(&yaml);
    assert!(warnings.iter().any(|w| w.contains("format `int32` is not checked by the gateway")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("format `path` is not checked") && w.contains("x-toolwarden-path")), "{warnings:?}");
}
