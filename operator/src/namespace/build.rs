//! Pure decisions of the namespace reconciler: the config plan (unchanged / write generation N / too
//! large), the ConfigMap, the verdict per tool, and ToolPolicy status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use toolwarden_core::compiler::{CompileError, Compiled};
use toolwarden_core::config::*;
use toolwarden_core::policy::selects;
use toolwarden_core::resources::{Condition, McpTool, ToolPolicy, ToolPolicyStatus, set_condition};

use crate::objects::*;

/// What the namespace reconciler concluded about one tool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolVerdict {
    /// `metadata.generation` of the tool as compiled into the config now in the ConfigMap; `None` when
    /// the tool is not in it.
    pub included_generation: Option<i64>,
    /// Why a tool left out of the config is left out, when its own spec is fine (a duplicate MCP name).
    pub excluded: Option<String>,
    /// The namespace's config could not be written (too large).
    pub config_problem: Option<String>,
}

/// The config currently in the ConfigMap, as its annotations say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub generation: u64,
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigPlan {
    /// The ConfigMap already holds this content.
    Unchanged { generation: u64 },
    Write { generation: u64, json: String, hash: String },
    /// Not written: over the limit. The gateway keeps the last config it read.
    TooLarge { bytes: usize, limit: usize },
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads generation and hash from a ConfigMap the operator wrote.
pub fn existing(config_map: &ConfigMap) -> Option<Existing> {
    let annotations = config_map.metadata.annotations.as_ref()?;
    Some(Existing {
        generation: annotations.get(CONFIG_GENERATION_ANNOTATION)?.parse().ok()?,
        hash: annotations.get(CONFIG_HASH_ANNOTATION)?.clone(),
    })
}

/// Decides whether and what to write. The content is compared at the existing generation, so an
/// unchanged namespace costs no write; a change gets the next generation, which never goes back (not
/// even after the ConfigMap was deleted, thanks to `remembered`).
pub fn plan_config(mut config: GatewayConfig, existing: Option<&Existing>, remembered: u64, limit: usize) -> ConfigPlan {
    if let Some(existing) = existing {
        config.generation = existing.generation;
        if sha256_hex(&config.to_json()) == existing.hash {
            return ConfigPlan::Unchanged { generation: existing.generation };
        }
    }
    let generation = existing.map_or(0, |e| e.generation).max(remembered) + 1;
    config.generation = generation;
    let json = config.to_json();
    if json.len() > limit {
        return ConfigPlan::TooLarge { bytes: json.len(), limit };
    }
    let hash = sha256_hex(&json);
    ConfigPlan::Write { generation, json, hash }
}

pub fn config_map_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_COMPONENT.to_owned(), "gateway-config".to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (CONFIG_MAP_LABEL.to_owned(), CONFIG_MAP_LABEL_VALUE.to_owned()),
    ])
}

/// The gateway config ConfigMap. `resource_version` makes the apply conditional (409 if someone wrote
/// in between), so generations stay monotonic even if two operators ever wrote at once.
pub fn build_config_map(namespace: &str, generation: u64, json: String, hash: String, resource_version: Option<String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(config_map_labels()),
            annotations: Some(BTreeMap::from([
                (CONFIG_GENERATION_ANNOTATION.to_owned(), generation.to_string()),
                (CONFIG_HASH_ANNOTATION.to_owned(), hash),
            ])),
            resource_version,
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CONFIG_MAP_KEY.to_owned(), json)])),
        ..Default::default()
    }
}

/// The sentence every object of a namespace whose config is too large carries.
pub fn too_large_message(namespace: &str, bytes: usize, limit: usize) -> String {
    format!(
        "the gateway config of namespace {namespace} would be {bytes} bytes, over the {limit}-byte limit of a ConfigMap, so it was \
         not written and the gateway keeps serving the previous config; split the tools across namespaces or shorten \
         their schemas and descriptions"
    )
}

fn object_errors<'a>(errors: &'a [CompileError], kind: &str, namespace: &str, name: &str) -> Vec<&'a CompileError> {
    let key = format!("{kind} {namespace}/{name}");
    errors.iter().filter(|e| e.object == key).collect()
}

fn describe(errors: &[&CompileError]) -> String {
    errors
        .iter()
        .map(|e| match &e.field {
            Some(field) => format!("{field}: {}", e.message),
            None => e.message.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The verdict of every tool of the namespace after `plan`.
pub fn tool_verdicts(namespace: &str, tools: &[&McpTool], compiled: &Compiled, plan: &ConfigPlan) -> BTreeMap<String, ToolVerdict> {
    let config_problem = match plan {
        ConfigPlan::TooLarge { bytes, limit } => Some(too_large_message(namespace, *bytes, *limit)),
        _ => None,
    };
    tools
        .iter()
        .map(|tool| {
            let name = tool.name_any();
            let in_config = compiled.config.tools.iter().any(|t| t.resource == name);
            let errors = object_errors(&compiled.errors, "McpTool", namespace, &name);
            let verdict = ToolVerdict {
                included_generation: (in_config && config_problem.is_none()).then_some(tool.metadata.generation).flatten(),
                excluded: (!in_config && !errors.is_empty()).then(|| describe(&errors)),
                config_problem: config_problem.clone(),
            };
            (name, verdict)
        })
        .collect()
}

fn summary(items: &[String], max: usize) -> String {
    match items.len() {
        0 => "none".into(),
        n if n <= max => items.join(","),
        n => format!("{} (+{})", items[..max].join(","), n - max),
    }
}

/// The status of one ToolPolicy: accepted or why not, warnings, and the tools it matches now.
pub fn build_policy_status(policy: &ToolPolicy, compiled: &Compiled, config_problem: Option<&str>, now: &str) -> ToolPolicyStatus {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let generation = policy.metadata.generation;
    let old = policy.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone();
    let mut set = |mut c: Condition| {
        c.observed_generation = generation;
        set_condition(&mut conditions, c, now);
    };
    let errors = object_errors(&compiled.errors, "ToolPolicy", &namespace, &name);
    let warnings: Vec<String> = object_errors(&compiled.warnings, "ToolPolicy", &namespace, &name)
        .into_iter()
        .map(|w| describe(&[w]))
        .collect();
    let compiled_policy = compiled.config.policies.iter().find(|p| p.name == name);
    let accepted = errors.is_empty() && compiled_policy.is_some();
    if !accepted {
        let message = if errors.is_empty() { "the policy did not compile".to_owned() } else { describe(&errors) };
        set(Condition::new("Accepted", false, "Invalid", message));
    } else if warnings.is_empty() {
        set(Condition::new("Accepted", true, "Valid", "the policy is valid"));
    } else {
        set(Condition::new("Accepted", true, "ValidWithWarnings", format!("valid, with warnings: {}", warnings.join("; "))));
    }
    let ready = match (accepted, config_problem) {
        (false, _) => Condition::new("Ready", false, "NotAccepted", "the policy is not accepted: see the Accepted condition"),
        (true, Some(problem)) => Condition::new("Ready", false, "ConfigTooLarge", problem),
        (true, None) => Condition::new("Ready", true, "InConfig", "the gateway config enforces this policy"),
    };
    set(ready);
    let matched_tools: Vec<String> = compiled_policy
        .map(|p| compiled.config.tools.iter().filter(|t| selects(&p.tools, t)).map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let s = &policy.spec.subjects;
    let mut subjects = Vec::new();
    for (kind, list) in [("users", &s.users), ("groups", &s.groups), ("serviceAccounts", &s.service_accounts)] {
        if !list.is_empty() {
            subjects.push(format!("{kind}: {}", summary(list, 3)));
        }
    }
    ToolPolicyStatus {
        conditions,
        observed_generation: generation,
        tools_summary: Some(summary(&matched_tools, 3)),
        subjects_summary: Some(subjects.join("; ")),
        matched_tools,
        warnings,
    }
}

/// What an object the operator labelled for a tool is, as far as the orphan sweep cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub name: String,
    /// The `toolwarden.dev/tool` label.
    pub tool: String,
    /// Whether an McpTool owner reference will let garbage collection take it.
    pub owned_by_tool: bool,
    pub is_secret: bool,
}

/// The objects to delete: those of a tool that no longer exists and that garbage collection will not
/// take (no McpTool owner), and scoped Secrets of tools that no longer use credentials. Objects of
/// existing tools are otherwise the tool controller's business.
pub fn orphans(objects: &[Labelled], tools: &[&McpTool]) -> Vec<String> {
    objects
        .iter()
        .filter(|o| match tools.iter().find(|t| t.name_any() == o.tool) {
            None => !o.owned_by_tool,
            Some(tool) => o.is_secret && tool.spec.credentials.is_empty(),
        })
        .map(|o| o.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
