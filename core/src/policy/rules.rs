//! Argument rules: each kind is a small check over one argument value (or, for `expression`, CEL over
//! the whole call).

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

use super::input_schema::PathArgument;
use super::path::{absolute, check_path_within, is_within};
use super::url::{check_host, parse_http_url};
use crate::config::{RuleCheck, RuleConfig};

/// A rule ready to run.
pub struct CompiledRule {
    pub name: String,
    /// Path segments of the argument (`a.b` → `["a", "b"]`).
    pub argument: Option<Vec<String>>,
    check: Check,
    pub message: String,
}

enum Check {
    Equals(Value),
    OneOf(Vec<Value>),
    Prefix(String),
    Pattern(Regex),
    MaxLength(u64),
    Range { minimum: Option<f64>, maximum: Option<f64> },
    PathWithin(String),
    HostIn(Vec<String>),
    Expression(cel::Program),
}

/// What an expression may read about the caller and the session.
pub struct CallContext<'a> {
    pub subject: &'a str,
    pub groups: &'a [String],
    pub session_id: &'a str,
    pub tainted: bool,
    pub client: &'a str,
    /// The tool's declared path arguments: their values are already canonical.
    pub paths: &'a [PathArgument],
}

/// The outcome of one rule on one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The value cannot be read the one way the rule needs (an ambiguous URL): it fails an allow
    /// policy's rule, with the reason added to the refusal, and matches a deny policy's rule.
    Unreadable(String),
}

impl CompiledRule {
    pub fn compile(rule: &RuleConfig) -> Result<CompiledRule, String> {
        let check = match &rule.check {
            RuleCheck::Equals(v) => Check::Equals(v.clone()),
            RuleCheck::OneOf(vs) if vs.is_empty() => return Err("oneOf needs at least one value".into()),
            RuleCheck::OneOf(vs) => Check::OneOf(vs.clone()),
            RuleCheck::Prefix(p) => Check::Prefix(p.clone()),
            RuleCheck::Pattern(p) => Check::Pattern(
                regex::RegexBuilder::new(&format!("^(?:{p})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("pattern `{p}` does not compile: {}", first_line(&e.to_string())))?,
            ),
            RuleCheck::MaxLength(n) => Check::MaxLength(*n),
            RuleCheck::Range { minimum, maximum } => {
                if let (Some(lo), Some(hi)) = (minimum, maximum)
                    && lo > hi
                {
                    return Err(format!("minimum {lo} is greater than maximum {hi}"));
                }
                Check::Range { minimum: *minimum, maximum: *maximum }
            }
            RuleCheck::PathWithin(base) => {
                if !base.starts_with('/') {
                    return Err(format!("pathWithin `{base}` must be an absolute directory"));
                }
                Check::PathWithin(base.trim_end_matches('/').to_string())
            }
            RuleCheck::HostIn(hosts) => {
                if hosts.is_empty() {
                    return Err("hostIn needs at least one host name such as `api.github.com` or `*.example.com`".into());
                }
                let mut names = Vec::with_capacity(hosts.len());
                for entry in hosts {
                    let (wildcard, name) = match entry.strip_prefix("*.") {
                        Some(name) => ("*.", name),
                        None => ("", entry.as_str()),
                    };
                    match check_host(name) {
                        Ok(name) => names.push(format!("{wildcard}{name}")),
                        Err(_) => return Err(format!(
                            "hostIn entry `{entry}` is not a host name such as `api.github.com` or `*.example.com` (no scheme, port or path; letters, digits and `-` only, IDNs in punycode)"
                        )),
                    }
                }
                Check::HostIn(names)
            }
            RuleCheck::Expression(source) => Check::Expression(
                cel::Program::compile(source)
                    .map_err(|e| format!("expression `{source}` does not compile: {}", first_line(&e.to_string())))?,
            ),
        };
        let argument = rule.argument.as_ref().map(|a| a.split('.').map(str::to_string).collect());
        if argument.is_none() && !matches!(check, Check::Expression(_)) {
            return Err(format!("rule `{}` needs `argument`", rule.name));
        }
        Ok(CompiledRule { name: rule.name.clone(), argument, check, message: rule.message.clone() })
    }

    /// Whether a deny policy's rule selects this call: like [`Self::passes`], except that an absent
    /// argument never matches (a deny on `path` prefix `tmp/` must not catch calls without a path) and
    /// an unreadable value always does (a deny on hosts must not be dodged by a URL parsers disagree on).
    pub fn matches(&self, args: &Value, ctx: &CallContext<'_>) -> bool {
        let present = self.argument.as_ref().is_none_or(|path| lookup(args, path).is_some());
        present && matches!(self.evaluate(args, ctx), Verdict::Pass | Verdict::Unreadable(_))
    }

    /// Whether the call satisfies the rule.
    pub fn passes(&self, args: &Value, ctx: &CallContext<'_>) -> bool {
        self.evaluate(args, ctx) == Verdict::Pass
    }

    /// The rule on this call. An absent argument satisfies every check except `equals` and `oneOf`,
    /// which pin a value (the schema decides whether the argument is required).
    pub fn evaluate(&self, args: &Value, ctx: &CallContext<'_>) -> Verdict {
        if let Check::Expression(program) = &self.check {
            return verdict(run_expression(program, args, ctx));
        }
        let value = self.argument.as_ref().and_then(|path| lookup(args, path));
        let Some(value) = value else {
            return verdict(!matches!(self.check, Check::Equals(_) | Check::OneOf(_)));
        };
        let passed = match &self.check {
            Check::Equals(expected) => json_equal(value, expected),
            Check::OneOf(options) => options.iter().any(|o| json_equal(value, o)),
            Check::Prefix(prefix) => value.as_str().is_some_and(|s| s.starts_with(prefix.as_str())),
            Check::Pattern(re) => value.as_str().is_some_and(|s| re.is_match(s)),
            Check::MaxLength(max) => match value {
                Value::String(s) => s.chars().count() as u64 <= *max,
                Value::Array(a) => a.len() as u64 <= *max,
                _ => false,
            },
            Check::Range { minimum, maximum } => value
                .as_f64()
                .is_some_and(|n| minimum.is_none_or(|lo| n >= lo) && maximum.is_none_or(|hi| n <= hi)),
            Check::PathWithin(base) => {
                let declared = self.argument.as_ref().and_then(|a| ctx.paths.iter().find(|p| p.is_named_by(a)));
                match (declared, value.as_str()) {
                    (_, None) => false,
                    // Already canonical and inside the declared base: compare whole segments.
                    (Some(path), Some(canonical)) => is_within(base, &absolute(&path.base, canonical)),
                    (None, Some(text)) => check_path_within(base, text).is_ok(),
                }
            }
            Check::HostIn(hosts) => {
                let Some(text) = value.as_str() else { return Verdict::Unreadable("the value is not a URL".into()) };
                match parse_http_url(text) {
                    Ok(url) => host_allowed(hosts, &url.host),
                    Err(why) => return Verdict::Unreadable(why.to_string()),
                }
            }
            Check::Expression(_) => unreachable!("handled above"),
        };
        verdict(passed)
    }
}

fn verdict(passed: bool) -> Verdict {
    if passed { Verdict::Pass } else { Verdict::Fail }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// Looks up `a.b.c` in nested objects.
pub fn lookup<'v>(args: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(args, |v, key| v.get(key.as_str()))
}

/// Equality where `1` and `1.0` are the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The host (lowercase, no trailing dot) is in the list (`*.example.com` matches subdomains, not
/// `example.com` itself).
fn host_allowed(hosts: &[String], host: &str) -> bool {
    hosts.iter().any(|allowed| match allowed.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
        None => host == allowed,
    })
}

fn run_expression(program: &cel::Program, args: &Value, ctx: &CallContext<'_>) -> bool {
    let mut context = cel::Context::default();
    context.add_variable_from_value("args", to_cel(args));
    let mut subject = HashMap::new();
    subject.insert("name".to_string(), cel::Value::from(ctx.subject.to_string()));
    subject.insert(
        "groups".to_string(),
        cel::Value::from(ctx.groups.iter().map(|g| cel::Value::from(g.clone())).collect::<Vec<_>>()),
    );
    context.add_variable_from_value("subject", subject);
    let mut session = HashMap::new();
    session.insert("id".to_string(), cel::Value::from(ctx.session_id.to_string()));
    session.insert("tainted".to_string(), cel::Value::Bool(ctx.tainted));
    session.insert("client".to_string(), cel::Value::from(ctx.client.to_string()));
    context.add_variable_from_value("session", session);
    // Anything but `true` (false, an error such as a missing key, a non-boolean) fails closed.
    matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
}

fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::from(s.clone()),
        Value::Array(items) => cel::Value::from(items.iter().map(to_cel).collect::<Vec<_>>()),
        Value::Object(map) => {
            let map: HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(argument: Option<&str>, check: RuleCheck) -> CompiledRule {
        CompiledRule::compile(&RuleConfig {
            name: "r".into(),
            argument: argument.map(str::to_string),
            check,
            message: "m".into(),
        })
        .unwrap()
    }

    const CTX: CallContext<'static> =
        CallContext { subject: "alice", groups: &[], session_id: "s1", tainted: false, client: "claude-code", paths: &[] };

    /// (rule, arguments, expected outcome) for every rule kind, passing and refusing.
    #[test]
    fn every_rule_kind_passes_and_refuses() {
        let cases: Vec<(Option<&str>, RuleCheck, Value, bool)> = vec![
            (Some("base"), RuleCheck::Equals(json!("master")), json!({"base": "master"}), true),
            (Some("base"), RuleCheck::Equals(json!("master")), json!({"base": "main"}), false),
            (Some("base"), RuleCheck::Equals(json!("master")), json!({}), false),
            (Some("n"), RuleCheck::Equals(json!(1)), json!({"n": 1.0}), true),
            (Some("env"), RuleCheck::OneOf(vec![json!("dev"), json!("staging")]), json!({"env": "dev"}), true),
            (Some("env"), RuleCheck::OneOf(vec![json!("dev"), json!("staging")]), json!({"env": "prod"}), false),
            (Some("head"), RuleCheck::Prefix("ai-blog/".into()), json!({"head": "ai-blog/post-1"}), true),
            (Some("head"), RuleCheck::Prefix("ai-blog/".into()), json!({"head": "main"}), false),
            (Some("head"), RuleCheck::Prefix("ai-blog/".into()), json!({"head": 7}), false),
            (Some("id"), RuleCheck::Pattern("[a-z]+-[0-9]+".into()), json!({"id": "abc-12"}), true),
            (Some("id"), RuleCheck::Pattern("[a-z]+-[0-9]+".into()), json!({"id": "xabc-12; rm"}), false),
            (Some("title"), RuleCheck::MaxLength(5), json!({"title": "héllo"}), true),
            (Some("title"), RuleCheck::MaxLength(5), json!({"title": "héllo!"}), false),
            (Some("tags"), RuleCheck::MaxLength(2), json!({"tags": [1, 2, 3]}), false),
            (Some("n"), RuleCheck::Range { minimum: Some(1.0), maximum: Some(10.0) }, json!({"n": 10}), true),
            (Some("n"), RuleCheck::Range { minimum: Some(1.0), maximum: Some(10.0) }, json!({"n": 0}), false),
            (Some("n"), RuleCheck::Range { minimum: None, maximum: Some(10.0) }, json!({"n": "5"}), false),
            (Some("p"), RuleCheck::PathWithin("/workspace".into()), json!({"p": "docs/a.md"}), true),
            (Some("p"), RuleCheck::PathWithin("/workspace".into()), json!({"p": "../etc/passwd"}), false),
            (Some("u"), RuleCheck::HostIn(vec!["api.github.com".into(), "*.example.com".into()]), json!({"u": "https://api.github.com/x"}), true),
            (Some("u"), RuleCheck::HostIn(vec!["*.example.com".into()]), json!({"u": "https://docs.example.com/"}), true),
            (Some("u"), RuleCheck::HostIn(vec!["*.example.com".into()]), json!({"u": "https://example.com/"}), false),
            (Some("u"), RuleCheck::HostIn(vec!["*.example.com".into()]), json!({"u": "https://evilexample.com/"}), false),
            (Some("u"), RuleCheck::HostIn(vec!["api.github.com".into()]), json!({"u": "https://api.github.com@evil.test/"}), false),
            (Some("u"), RuleCheck::HostIn(vec!["api.github.com".into()]), json!({"u": "file:///etc/passwd"}), false),
            (Some("o.k"), RuleCheck::Equals(json!(true)), json!({"o": {"k": true}}), true),
            (None, RuleCheck::Expression("args.count <= 3 && subject.name == 'alice'".into()), json!({"count": 2}), true),
            (None, RuleCheck::Expression("args.count <= 3".into()), json!({"count": 4}), false),
            (None, RuleCheck::Expression("args.missing == 1".into()), json!({}), false),
            (None, RuleCheck::Expression("'x'".into()), json!({}), false),
            (None, RuleCheck::Expression("!session.tainted && session.client == 'claude-code'".into()), json!({}), true),
        ];
        for (argument, check, args, expected) in cases {
            let label = format!("{argument:?} {check:?} {args}");
            assert_eq!(rule(argument, check).passes(&args, &CTX), expected, "{label}");
        }
    }

    #[test]
    fn absent_argument_passes_bounds_but_not_pins() {
        assert!(rule(Some("t"), RuleCheck::MaxLength(3)).passes(&json!({}), &CTX));
        assert!(!rule(Some("t"), RuleCheck::OneOf(vec![json!("a")])).passes(&json!({}), &CTX));
    }

    #[test]
    fn uncompilable_rules_say_why() {
        let bad = |check| {
            CompiledRule::compile(&RuleConfig { name: "r".into(), argument: Some("a".into()), check, message: String::new() })
                .err()
                .unwrap()
        };
        assert!(bad(RuleCheck::Pattern("(".into())).contains("does not compile"));
        assert!(bad(RuleCheck::Expression("args.a ==".into())).contains("does not compile"));
        assert!(bad(RuleCheck::PathWithin("relative".into())).contains("absolute"));
        assert!(bad(RuleCheck::HostIn(vec!["https://x".into()])).contains("not a host name"));
        assert!(bad(RuleCheck::HostIn(vec!["docs.example.test:443".into()])).contains("not a host name"));
        assert!(bad(RuleCheck::HostIn(vec!["bücher.example".into()])).contains("punycode"));
        assert!(bad(RuleCheck::HostIn(vec![])).contains("at least one"));
        assert!(bad(RuleCheck::Range { minimum: Some(5.0), maximum: Some(1.0) }).contains("greater"));
    }

    /// A URL that parsers read differently fails hostIn in an allow policy with the reason, and matches
    /// it in a deny policy, so neither can be dodged by the spelling.
    #[test]
    fn ambiguous_urls_fail_allows_and_match_denies() {
        let docs = rule(Some("u"), RuleCheck::HostIn(vec!["docs.example.test".into()]));
        let evil = rule(Some("u"), RuleCheck::HostIn(vec!["evil.test".into()]));
        for url in [
            "http://docs.example.test\\@evil.test/",
            "http://docs.example.test@evil.test/",
            "http://docs.example.test%40evil.test/",
            "http://docs.example.test\t@evil.test/",
            "evil.test/",
            "http:/evil.test/",
        ] {
            let args = json!({"u": url});
            assert!(matches!(docs.evaluate(&args, &CTX), Verdict::Unreadable(_)), "{url}");
            assert!(!docs.passes(&args, &CTX), "{url}");
            assert!(evil.matches(&args, &CTX), "a deny on evil.test catches {url}");
        }
        let why = docs.evaluate(&json!({"u": "http://docs.example.test\\@evil.test/"}), &CTX);
        assert_eq!(why, Verdict::Unreadable(crate::policy::url::UrlRefusal::Backslash.to_string()));
        assert!(docs.passes(&json!({"u": "HTTPS://DOCS.example.test./x"}), &CTX));
        assert!(!evil.matches(&json!({"u": "https://docs.example.test/"}), &CTX));
        assert!(!evil.matches(&json!({}), &CTX), "an absent URL matches no deny");
    }

    /// pathWithin on a declared path compares the canonical form by whole segments.
    #[test]
    fn path_within_reads_declared_paths_canonically() {
        use crate::policy::input_schema::{PathArgument, Step};
        let paths = [PathArgument { steps: vec![Step::Key("p".into())], base: "/docs".into() }];
        let ctx = CallContext { paths: &paths, ..CTX };
        let published = rule(Some("p"), RuleCheck::PathWithin("/docs/published".into()));
        assert!(published.matches(&json!({"p": "published/v1.md"}), &ctx));
        assert!(published.matches(&json!({"p": "published"}), &ctx), "the directory itself is within");
        assert!(!published.matches(&json!({"p": "published-old/v1.md"}), &ctx));
        assert!(!published.matches(&json!({"p": "."}), &ctx));
    }
}
