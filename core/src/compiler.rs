//! The compiler: McpTool and ToolPolicy objects → one [`GatewayConfig`] per namespace.
//!
//! Each object is checked on its own so that one bad object is reported (with its field) and left out
//! while the rest still compile — the operator relies on that; `dev` and `policy test` refuse any error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

mod lint;

use crate::config::*;
use crate::duration::parse_duration;
use crate::manifest::{Manifests, Source};
use crate::names::check_tool_name;
use crate::policy::{CompiledRule, Engine, PathArgument, compile_schema, read_schema};
use crate::resources::*;

/// One problem with one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// `McpTool default/get-weather`.
    pub object: String,
    pub field: Option<String>,
    pub message: String,
    pub source: Option<Source>,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        write!(f, "{}", self.object)?;
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the manifests:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// The result of compiling one namespace: the config of the objects that compiled, and what did not.
#[derive(Debug, Default)]
pub struct Compiled {
    pub config: GatewayConfig,
    pub errors: Vec<CompileError>,
    /// Problems that do not stop an object from working (a policy naming a tool that does not exist).
    pub warnings: Vec<CompileError>,
}

type FieldErrors = Vec<(Option<String>, String)>;

fn object_key(kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{kind} {}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or("<unnamed>"))
}

/// Compiles the tools and policies of one namespace.
pub fn compile_namespace(namespace: &str, tools: &[&McpTool], policies: &[&ToolPolicy]) -> Compiled {
    let mut out = Compiled::default();
    let mut compiled_tools: Vec<ToolConfig> = Vec::new();
    let mut seen = BTreeMap::new();
    for tool in tools {
        let key = object_key("McpTool", &tool.metadata);
        match compile_tool(tool) {
            Ok(config) => {
                let warnings = lint::schema_warnings(&config.input_schema);
                out.warnings.extend(warnings.into_iter().map(|message| CompileError {
                    object: key.clone(),
                    field: Some("spec.inputSchema".into()),
                    message,
                    source: None,
                }));
                if let Some(previous) = seen.insert(config.name.clone(), key.clone()) {
                    out.errors.push(CompileError {
                        object: key,
                        field: Some("metadata.name".into()),
                        message: format!("tool name `{}` is already used by {previous} in this namespace", config.name),
                        source: None,
                    });
                    continue;
                }
                compiled_tools.push(config);
            }
            Err(errors) => out.errors.extend(errors.into_iter().map(|(field, message)| CompileError {
                object: key.clone(),
                field,
                message,
                source: None,
            })),
        }
    }
    compiled_tools.sort_by(|a, b| a.name.cmp(&b.name));

    let mut compiled_policies = Vec::new();
    let mut seen_policies = BTreeSet::new();
    for policy in policies {
        let key = object_key("ToolPolicy", &policy.metadata);
        let name = policy.metadata.name.clone().unwrap_or_default();
        if !seen_policies.insert(name) {
            out.errors.push(CompileError { object: key, field: Some("metadata.name".into()), message: "defined twice".into(), source: None });
            continue;
        }
        let (result, warnings) = compile_policy(policy, &compiled_tools);
        out.warnings.extend(warnings.into_iter().map(|(field, message)| CompileError { object: key.clone(), field, message, source: None }));
        match result {
            Ok(config) => compiled_policies.push(config),
            Err(errors) => {
                // Leaving out a broken allow only takes access away; leaving out a broken deny would
                // grant what it refuses. So a deny that does not compile refuses everything instead.
                if policy.spec.decision == PolicyDecision::Deny {
                    compiled_policies.push(fail_closed_deny(policy, &errors));
                }
                out.errors.extend(errors.into_iter().map(|(field, message)| CompileError {
                    object: key.clone(),
                    field,
                    message,
                    source: None,
                }));
            }
        }
    }
    compiled_policies.sort_by(|a, b| a.name.cmp(&b.name));
    out.config = GatewayConfig {
        format: CONFIG_FORMAT,
        namespace: namespace.to_string(),
        generation: 0,
        tools: compiled_tools,
        policies: compiled_policies,
    };
    // Everything was checked object by object; a failure here is a compiler bug, reported all the same.
    if let Err(errors) = Engine::new(out.config.clone()) {
        out.errors.extend(errors.into_iter().map(|message| CompileError {
            object: format!("namespace {namespace}"),
            field: None,
            message,
            source: None,
        }));
    }
    out
}

/// Compiles every namespace found in `manifests`; any error fails the whole set, reported together.
pub fn compile_manifests(manifests: &Manifests) -> Result<(BTreeMap<String, GatewayConfig>, Vec<CompileError>), CompileErrors> {
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    let ns = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| meta.namespace.clone().unwrap_or_else(|| "default".into());
    namespaces.extend(manifests.tools.iter().map(|t| ns(&t.object.metadata)));
    namespaces.extend(manifests.policies.iter().map(|p| ns(&p.object.metadata)));
    let mut sources = BTreeMap::new();
    for t in &manifests.tools {
        sources.insert(object_key("McpTool", &t.object.metadata), t.source.clone());
    }
    for p in &manifests.policies {
        sources.insert(object_key("ToolPolicy", &p.object.metadata), p.source.clone());
    }
    let mut configs = BTreeMap::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for namespace in namespaces {
        let tools: Vec<&McpTool> = manifests.tools.iter().map(|t| &t.object).filter(|t| ns(&t.metadata) == namespace).collect();
        let policies: Vec<&ToolPolicy> =
            manifests.policies.iter().map(|p| &p.object).filter(|p| ns(&p.metadata) == namespace).collect();
        let compiled = compile_namespace(&namespace, &tools, &policies);
        let with_source = |mut e: CompileError| {
            e.source = sources.get(&e.object).cloned();
            e
        };
        errors.extend(compiled.errors.into_iter().map(with_source));
        warnings.extend(compiled.warnings.into_iter().map(with_source));
        configs.insert(namespace, compiled.config);
    }
    if errors.is_empty() { Ok((configs, warnings)) } else { Err(CompileErrors(errors)) }
}

/// Checks one McpTool and resolves its defaults.
pub fn compile_tool(tool: &McpTool) -> Result<ToolConfig, FieldErrors> {
    let spec = &tool.spec;
    let resource = tool.metadata.name.clone().unwrap_or_default();
    let name = tool_name_for(&resource);
    let mut errors: FieldErrors = Vec::new();
    let mut err = |field: &str, message: String| errors.push((Some(field.to_string()), message));

    if let Err(problem) = check_tool_name(&name, spec.effect) {
        err("metadata.name", problem.0);
    }
    if spec.description.trim().is_empty() {
        err("spec.description", "must say what the tool does".into());
    }
    let properties = schema_properties(&spec.input_schema);
    for e in read_schema(&spec.input_schema).errors {
        err("spec.inputSchema", e);
    }
    if let Err(e) = compile_schema(&spec.input_schema) {
        err("spec.inputSchema", e);
    }
    if let Some(output) = &spec.output_schema
        && let Err(e) = jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(output)
    {
        err("spec.outputSchema", format!("not a valid JSON Schema: {e}"));
    }
    match (&spec.runtime.exec, &spec.runtime.http, &spec.runtime.mcp) {
        (Some(exec), None, None) => {
            if exec.command.is_empty() {
                err("spec.runtime.exec.command", "must name the program to run".into());
            }
            check_templates("spec.runtime.exec.args", &exec.args, &properties, &mut err);
        }
        (None, Some(http), None) => check_http(http, &properties, &mut err),
        (None, None, Some(mcp)) => {
            if mcp.command.is_empty() {
                err("spec.runtime.mcp.command", "must name the MCP server program to start".into());
            }
            if mcp.tool.trim().is_empty() {
                err("spec.runtime.mcp.tool", "must name the upstream tool to expose".into());
            }
        }
        _ => err("spec.runtime", "needs exactly one of exec, http or mcp".into()),
    }
    if let Some(preview) = &spec.preview {
        if spec.runtime.exec.is_none() && preview.command.is_none() {
            err("spec.preview.command", "a preview of a non-exec tool needs its own command".into());
        }
        check_templates("spec.preview.args", &preview.args, &properties, &mut err);
    }
    for (i, cred) in spec.credentials.iter().enumerate() {
        let ways = [cred.env.is_some(), cred.file.is_some(), cred.header.is_some()].iter().filter(|b| **b).count();
        if ways != 1 {
            err(&format!("spec.credentials[{i}]"), "needs exactly one of env, file or header".into());
        }
        if cred.header.is_some() && spec.runtime.http.is_none() {
            err(&format!("spec.credentials[{i}].header"), "header credentials only work with the http runtime".into());
        }
    }
    for (i, egress) in spec.egress.iter().enumerate() {
        if let Err(e) = parse_cidr(&egress.cidr) {
            err(&format!("spec.egress[{i}].cidr"), e);
        }
        if egress.ports.contains(&0) {
            err(&format!("spec.egress[{i}].ports"), "ports are 1 to 65535".into());
        }
    }
    let timeout_ms = match spec.limits.timeout.as_deref().map(parse_duration) {
        None => DEFAULT_TIMEOUT_MS,
        Some(Ok(d)) if (1_000..=3_600_000).contains(&d.as_millis()) => d.as_millis() as u64,
        Some(Ok(_)) => {
            err("spec.limits.timeout", "must be between 1s and 1h".into());
            DEFAULT_TIMEOUT_MS
        }
        Some(Err(e)) => {
            err("spec.limits.timeout", e);
            DEFAULT_TIMEOUT_MS
        }
    };
    let max_output_bytes = spec.limits.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
    if !(1..=16 * 1024 * 1024).contains(&max_output_bytes) {
        err("spec.limits.maxOutputBytes", "must be between 1 and 16777216 (16 MiB)".into());
    }
    for (field, value) in [("cpu", &spec.limits.cpu), ("memory", &spec.limits.memory), ("tmpSize", &spec.limits.tmp_size)] {
        if let Some(q) = value
            && !is_quantity(q)
        {
            err(&format!("spec.limits.{field}"), format!("`{q}` is not a Kubernetes quantity (such as 500m, 256Mi)"));
        }
    }
    if spec.disabled && spec.disabled_reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        err("spec.disabledReason", "a disabled tool needs a reason: agents and operators see it when a call is refused".into());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let fetches_outside = spec.runtime.http.is_some() || !spec.egress.is_empty();
    let output_trust = spec.output_trust.unwrap_or(if spec.effect == Effect::Read && fetches_outside {
        OutputTrust::Untrusted
    } else {
        OutputTrust::Trusted
    });
    Ok(ToolConfig {
        name,
        resource,
        description: spec.description.clone(),
        effect: spec.effect,
        input_schema: spec.input_schema.clone(),
        output_schema: spec.output_schema.clone(),
        runtime: spec.runtime.clone(),
        preview: spec.preview.clone(),
        credentials: spec.credentials.clone(),
        egress: spec.egress.clone(),
        timeout_ms,
        max_output_bytes,
        cpu: spec.limits.cpu.clone(),
        memory: spec.limits.memory.clone(),
        tmp_size: spec.limits.tmp_size.clone(),
        output_trust,
        sandbox: spec.sandbox.clone().unwrap_or_default(),
        disabled: spec.disabled,
        disabled_reason: spec.disabled_reason.clone(),
        labels: tool.metadata.labels.clone().unwrap_or_default(),
    })
}

fn schema_properties(schema: &Value) -> BTreeSet<String> {
    schema.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// Parses an argv template entry: `Some((name, optional))` for `{{name}}` / `{{name?}}`.
pub fn template_argument(entry: &str) -> Option<(&str, bool)> {
    let inner = entry.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    match inner.strip_suffix('?') {
        Some(name) => Some((name.trim(), true)),
        None => Some((inner, false)),
    }
}

fn check_templates(field: &str, args: &[String], properties: &BTreeSet<String>, err: &mut impl FnMut(&str, String)) {
    for (i, entry) in args.iter().enumerate() {
        match template_argument(entry) {
            Some((name, _)) if !properties.contains(name) => {
                err(&format!("{field}[{i}]"), format!("`{entry}` names argument `{name}`, which inputSchema does not define"))
            }
            Some(_) => {}
            None if entry.contains("{{") || entry.contains("}}") => err(
                &format!("{field}[{i}]"),
                format!(
                    "`{entry}` splices an argument into a string; argument values become whole argv entries, so write \
                     the flag and the value as separate entries (such as `--repo`, `{{{{repo}}}}`)"
                ),
            ),
            None => {}
        }
    }
}

fn check_http(http: &HttpRuntime, properties: &BTreeSet<String>, err: &mut impl FnMut(&str, String)) {
    let url = &http.url;
    match url::Url::parse(&url.replace(['{', '}'], "")) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => err("spec.runtime.http.url", format!("`{url}` is not an http(s) URL with a host")),
    }
    // Path parameters must sit after the authority: arguments never choose the host.
    let authority_end = url.find("://").map(|i| i + 3).map(|i| url[i..].find('/').map_or(url.len(), |j| i + j));
    let mut offset = 0;
    while let Some(found) = url[offset..].find('{') {
        let start = offset + found;
        let Some(len) = url[start..].find('}') else {
            err("spec.runtime.http.url", "has an unclosed `{`".into());
            break;
        };
        let name = &url[start + 1..start + len];
        if !properties.contains(name) {
            err("spec.runtime.http.url", format!("path parameter `{{{name}}}` is not an argument in inputSchema"));
        }
        if authority_end.is_none_or(|end| start < end) {
            err("spec.runtime.http.url", format!("`{{{name}}}` is in the host; only path parameters may come from arguments"));
        }
        offset = start + len + 1;
    }
    for (param, arg) in &http.query {
        if !properties.contains(arg) {
            err(&format!("spec.runtime.http.query.{param}"), format!("argument `{arg}` is not in inputSchema"));
        }
    }
    for (i, arg) in http.body.iter().enumerate() {
        if arg != "*" && !properties.contains(arg) {
            err(&format!("spec.runtime.http.body[{i}]"), format!("argument `{arg}` is not in inputSchema"));
        }
    }
}

/// Parses `a.b.c.d/n` or an IPv6 CIDR.
pub fn parse_cidr(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    let bad = || format!("`{text}` is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((addr, len))
}

fn is_quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|n| n >= 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// Checks one ToolPolicy against the namespace's compiled tools. Returns the config (or errors) and
/// warnings.
/// What a deny policy that does not compile becomes: a deny of every tool, to every caller, whose
/// refusal names the policy and its first error, until the policy is fixed.
fn fail_closed_deny(policy: &ToolPolicy, errors: &FieldErrors) -> PolicyConfig {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let first = errors.first().map(|(field, message)| match field {
        Some(field) => format!("{field}: {message}"),
        None => message.clone(),
    });
    PolicyConfig {
        name: name.clone(),
        subjects: Subjects { users: vec!["*".into()], ..Subjects::default() },
        tools: ToolSelector { names: vec!["*".into()], ..ToolSelector::default() },
        decision: PolicyDecision::Deny,
        rules: Vec::new(),
        approval: None,
        rate_limit: None,
        tainted_sessions: None,
        message: Some(format!(
            "every tool is refused: deny policy {name} does not compile ({}); fix it to restore access",
            first.unwrap_or_else(|| "no detail".into())
        )),
    }
}

pub fn compile_policy(policy: &ToolPolicy, tools: &[ToolConfig]) -> (Result<PolicyConfig, FieldErrors>, FieldErrors) {
    let spec = &policy.spec;
    let mut errors: FieldErrors = Vec::new();
    let mut warnings: FieldErrors = Vec::new();
    let mut err = |field: String, message: String| errors.push((Some(field), message));

    let s = &spec.subjects;
    if s.users.is_empty() && s.groups.is_empty() && s.service_accounts.is_empty() {
        err("spec.subjects".into(), "needs at least one user, group or serviceAccount (\"*\" for any authenticated caller)".into());
    }
    for (i, sa) in s.service_accounts.iter().enumerate() {
        if sa != "*" && sa.split('/').filter(|p| !p.is_empty()).count() != 2 {
            err(format!("spec.subjects.serviceAccounts[{i}]"), format!("`{sa}` must be written namespace/name"));
        }
    }
    let t = &spec.tools;
    if t.names.is_empty() && t.selector.is_none() && t.effects.is_empty() {
        err("spec.tools".into(), "needs names, a selector or effects (names: [\"*\"] for every tool)".into());
    }
    if let Some(selector) = &t.selector {
        for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
            if !["In", "NotIn", "Exists", "DoesNotExist"].contains(&e.operator.as_str()) {
                err(format!("spec.tools.selector.matchExpressions[{i}].operator"), format!("`{}` is not In, NotIn, Exists or DoesNotExist", e.operator));
            }
        }
    }
    // Tools named explicitly: rules must reference their arguments, and missing ones are worth a warning.
    let named: Vec<&ToolConfig> = t
        .names
        .iter()
        .filter(|n| *n != "*")
        .filter_map(|n| {
            let found = tools.iter().find(|tool| tool.name == *n || tool.resource == *n);
            if found.is_none() {
                warnings.push((Some("spec.tools.names".into()), format!("tool `{n}` does not exist in this namespace (yet)")));
            }
            found
        })
        .collect();

    // The selected tools and their declared paths, read once for all rules.
    let selected: Vec<(&ToolConfig, Vec<PathArgument>)> = match spec.arguments.is_empty() {
        true => Vec::new(),
        false => tools
            .iter()
            .filter(|tool| crate::policy::selects(&spec.tools, tool))
            .map(|tool| (tool, read_schema(&tool.input_schema).paths))
            .collect(),
    };
    let mut rules = Vec::new();
    for (i, rule) in spec.arguments.iter().enumerate() {
        let field = format!("spec.arguments[{i}]");
        match rule_config(rule, i) {
            Ok(config) => {
                if let Err(e) = CompiledRule::compile(&config) {
                    err(field, e);
                    continue;
                }
                warnings.extend(lint::rule_warnings(&config, &selected).into_iter().map(|w| (Some(field.clone()), w)));
                if let Some(argument) = &config.argument {
                    let top = argument.split('.').next().unwrap_or_default();
                    if !named.is_empty() && !named.iter().any(|tool| schema_properties(&tool.input_schema).contains(top)) {
                        let names: Vec<&str> = named.iter().map(|t| t.name.as_str()).collect();
                        err(format!("{field}.argument"), format!("`{argument}` is not an argument of {} (no inputSchema has `{top}`)", names.join(" or ")));
                    }
                }
                rules.push(config);
            }
            Err(e) => err(field, e),
        }
    }
    let approval = match &spec.approval {
        None => None,
        Some(a) => {
            let ttl_ms = match a.ttl.as_deref().map(parse_duration) {
                None => None,
                Some(Ok(d)) => Some(d.as_millis() as u64),
                Some(Err(e)) => {
                    err("spec.approval.ttl".into(), e);
                    None
                }
            };
            Some(ApprovalConfig {
                mode: a.mode,
                ttl_ms,
                approvers: a.approvers.clone().unwrap_or_default(),
                allow_self_approval: a.allow_self_approval,
            })
        }
    };
    let rate_limit = match &spec.rate_limit {
        None => None,
        Some(r) => match parse_duration(&r.interval) {
            Ok(d) if r.calls >= 1 && !d.is_zero() => Some(RateLimitConfig { calls: r.calls, interval_ms: d.as_millis() as u64, per: r.per }),
            Ok(_) => {
                err("spec.rateLimit".into(), "needs calls ≥ 1 and a non-zero interval".into());
                None
            }
            Err(e) => {
                err("spec.rateLimit.interval".into(), e);
                None
            }
        },
    };
    if !errors.is_empty() {
        return (Err(errors), warnings);
    }
    let config = PolicyConfig {
        name: policy.metadata.name.clone().unwrap_or_default(),
        subjects: spec.subjects.clone(),
        tools: spec.tools.clone(),
        decision: spec.decision,
        rules,
        approval,
        rate_limit,
        tainted_sessions: spec.tainted_sessions,
        message: spec.message.clone(),
    };
    if config.decision == PolicyDecision::Allow {
        for tool in tools.iter().filter(|tool| crate::policy::selects(&config.tools, tool)) {
            let mode = crate::policy::approval_mode_for(&config, tool);
            let nobody = config.approval.as_ref().is_none_or(|a| a.approvers.users.is_empty() && a.approvers.groups.is_empty() && !a.allow_self_approval);
            if mode == ApprovalMode::Human && nobody {
                warnings.push((
                    Some("spec.approval.approvers".into()),
                    format!("{} needs human approval ({} tool) but this policy names no approvers, so nobody can approve its calls", tool.name, tool.effect),
                ));
            }
        }
    }
    (Ok(config), warnings)
}

/// Names a rule, writes its refusal sentence and checks it has exactly one check.
fn rule_config(rule: &ArgumentRule, index: usize) -> Result<RuleConfig, String> {
    let mut checks = Vec::new();
    if let Some(v) = &rule.equals {
        checks.push(RuleCheck::Equals(v.clone()));
    }
    if let Some(v) = &rule.one_of {
        checks.push(RuleCheck::OneOf(v.clone()));
    }
    if let Some(v) = &rule.prefix {
        checks.push(RuleCheck::Prefix(v.clone()));
    }
    if let Some(v) = &rule.pattern {
        checks.push(RuleCheck::Pattern(v.clone()));
    }
    if let Some(v) = rule.max_length {
        checks.push(RuleCheck::MaxLength(v));
    }
    if rule.minimum.is_some() || rule.maximum.is_some() {
        checks.push(RuleCheck::Range { minimum: rule.minimum, maximum: rule.maximum });
    }
    if let Some(v) = &rule.path_within {
        checks.push(RuleCheck::PathWithin(v.clone()));
    }
    if let Some(v) = &rule.host_in {
        checks.push(RuleCheck::HostIn(v.clone()));
    }
    if let Some(v) = &rule.expression {
        checks.push(RuleCheck::Expression(v.clone()));
    }
    if checks.len() != 1 {
        return Err("needs exactly one of equals, oneOf, prefix, pattern, maxLength, minimum/maximum, pathWithin, hostIn or expression".into());
    }
    let check = checks.remove(0);
    let argument = rule.argument.clone().filter(|a| !a.is_empty());
    if argument.is_none() && !matches!(check, RuleCheck::Expression(_)) {
        return Err(format!("a {} rule needs `argument`", check.kind()));
    }
    let arg = argument.clone().unwrap_or_default();
    let name = rule.name.clone().unwrap_or_else(|| match &argument {
        Some(a) => format!("{a}.{}", check.kind()),
        None => format!("arguments[{index}].expression"),
    });
    let list = |values: &[Value]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    let message = rule.message.clone().unwrap_or_else(|| match &check {
        RuleCheck::Equals(v) => format!("argument `{arg}` must be {v}"),
        RuleCheck::OneOf(vs) => format!("argument `{arg}` must be one of {}", list(vs)),
        RuleCheck::Prefix(p) => format!("argument `{arg}` must start with `{p}`"),
        RuleCheck::Pattern(p) => format!("argument `{arg}` must match the pattern `{p}`"),
        RuleCheck::MaxLength(n) => format!("argument `{arg}` must be at most {n} characters (or items) long"),
        RuleCheck::Range { minimum: Some(lo), maximum: Some(hi) } => format!("argument `{arg}` must be between {lo} and {hi}"),
        RuleCheck::Range { minimum: Some(lo), .. } => format!("argument `{arg}` must be at least {lo}"),
        RuleCheck::Range { maximum: Some(hi), .. } => format!("argument `{arg}` must be at most {hi}"),
        RuleCheck::Range { .. } => format!("argument `{arg}` is out of range"),
        RuleCheck::PathWithin(base) => format!("argument `{arg}` must be a path inside {base}"),
        RuleCheck::HostIn(hosts) => format!("argument `{arg}` must be a URL on {}", hosts.join(", ")),
        RuleCheck::Expression(e) => format!("the call does not satisfy `{e}`"),
    });
    Ok(RuleConfig { name, argument, check, message })
}
