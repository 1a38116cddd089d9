//! Which tools a policy's `tools` selector picks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::config::ToolConfig;
use crate::resources::ToolSelector;

/// Every criterion given must match; a selector with no criterion matches nothing.
pub fn tool_selected(selector: &ToolSelector, tool: &ToolConfig) -> bool {
    let has_criterion = !selector.names.is_empty() || selector.selector.is_some() || !selector.effects.is_empty();
    has_criterion
        && (selector.names.is_empty()
            || selector.names.iter().any(|n| n == "*" || *n == tool.name || *n == tool.resource))
        && selector.selector.as_ref().is_none_or(|s| labels_match(s, &tool.labels))
        && (selector.effects.is_empty() || selector.effects.contains(&tool.effect))
}

fn labels_match(selector: &LabelSelector, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.as_ref().is_none_or(|want| want.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false, // the compiler refuses unknown operators; fail closed regardless
            }
        })
    });
    labels_ok && expressions_ok
}
