//! `toolwarden policy test` and `toolwarden policy explain`: the gateway's decisions, offline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;
use toolwarden_core::compiler::compile_manifests;
use toolwarden_core::manifest::{DEFAULT_NAMESPACE, load_paths};
use toolwarden_core::policy::{Decision, Engine, Session, Subject, decide, explain};

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Run decision cases and exit non-zero on any mismatch.
    Test {
        /// Manifest files or directories.
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// YAML file of cases.
        cases: PathBuf,
    },
    /// Show, for one call, every policy considered and why it matched or not.
    Explain {
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        #[arg(long)]
        subject: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        tool: String,
        /// Arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        arguments: String,
        /// Treat the session as tainted by untrusted output.
        #[arg(long)]
        tainted: bool,
    },
}

/// A file of decision cases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    subject: Subject,
    #[serde(default)]
    session: Option<Session>,
    tool: String,
    #[serde(default = "empty_object")]
    arguments: Value,
    /// allow, deny, confirm or human.
    expect: String,
    /// Expected refusal code (deny only).
    #[serde(default)]
    code: Option<String>,
    /// Expected policy or rule, when given.
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    rule: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn engines(manifests: &[PathBuf]) -> anyhow::Result<BTreeMap<String, Engine>> {
    let loaded = load_paths(manifests).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (configs, warnings) = compile_manifests(&loaded).map_err(|e| anyhow::anyhow!("{e}"))?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    configs
        .into_iter()
        .map(|(ns, config)| {
            let engine = Engine::new(config).map_err(|e| anyhow::anyhow!("namespace {ns}: {}", e.join("; ")))?;
            Ok((ns, engine))
        })
        .collect()
}

impl PolicyCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            PolicyCommand::Test { manifests, cases } => run_tests(&manifests, &cases),
            PolicyCommand::Explain { manifests, namespace, subject, groups, tool, arguments, tainted } => {
                let engines = engines(&manifests)?;
                let engine = engines.get(&namespace).with_context(|| format!("no tools or policies in namespace {namespace}"))?;
                let args: Value = serde_json::from_str(&arguments).context("--arguments must be a JSON object")?;
                let subject = Subject { name: subject, groups };
                let session = Session { id: "explain".into(), tainted, client: "toolwarden-policy".into() };
                print!("{}", explain(engine, &subject, &session, &tool, &args));
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn run_tests(manifests: &[PathBuf], cases_path: &PathBuf) -> anyhow::Result<ExitCode> {
    let engines = engines(manifests)?;
    let text = std::fs::read_to_string(cases_path).with_context(|| format!("cannot read {}", cases_path.display()))?;
    let file: CaseFile =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a case file: {e}", cases_path.display()))?;
    if file.cases.is_empty() {
        bail!("{} holds no cases", cases_path.display());
    }
    let mut failed = 0;
    for case in &file.cases {
        let namespace = case.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let Some(engine) = engines.get(namespace) else {
            println!("FAIL {}: no tools or policies in namespace {namespace}", case.name);
            failed += 1;
            continue;
        };
        let session = case.session.clone().unwrap_or_else(|| Session { id: "policy-test".into(), ..Default::default() });
        let decision = decide(engine, &case.subject, &session, &case.tool, &case.arguments);
        let mismatches = mismatches(case, &decision);
        if mismatches.is_empty() {
            println!("ok   {}", case.name);
        } else {
            failed += 1;
            println!("FAIL {}: {}", case.name, mismatches.join("; "));
            println!("     got: {}", describe(&decision));
        }
    }
    let passed = file.cases.len() - failed;
    println!("policy: {passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn mismatches(case: &Case, decision: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    if decision.label() != case.expect {
        out.push(format!("expected {}, got {}", case.expect, decision.label()));
    }
    let (code, policy, rule) = match decision {
        Decision::Deny(d) => (Some(d.code.as_str().to_string()), d.policy.clone(), d.rule.clone()),
        Decision::NeedsApproval(a) => (None, Some(a.policy.clone()), None),
        Decision::Allow(a) => (None, a.policies.first().cloned(), None),
    };
    for (what, want, got) in [("code", &case.code, code), ("policy", &case.policy, policy), ("rule", &case.rule, rule)] {
        if let Some(want) = want
            && got.as_deref() != Some(want.as_str())
        {
            out.push(format!("expected {what} {want}, got {}", got.as_deref().unwrap_or("none")));
        }
    }
    out
}

fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Allow(a) => format!("allow (policies: {})", a.policies.join(", ")),
        Decision::Deny(d) => format!(
            "deny [{}] policy={} rule={}: {}",
            d.code,
            d.policy.as_deref().unwrap_or("-"),
            d.rule.as_deref().unwrap_or("-"),
            d.message
        ),
        Decision::NeedsApproval(a) => format!("{} approval (policy {}): {}", a.mode.as_str(), a.policy, a.reason),
    }
}
