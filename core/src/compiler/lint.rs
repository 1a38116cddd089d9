//! Warnings about schemas and rules that compile but do not protect what they seem to: formats the
//! gateway does not check, and string rules on paths that other spellings slip past.

use std::collections::BTreeSet;

use crate::config::{RuleCheck, RuleConfig, ToolConfig};
use crate::policy::input_schema::{PATH_KEYWORD, PathArgument};
use crate::policy::path::canonical_path;
use crate::policy::read_schema;

/// Warnings about one tool's inputSchema.
pub(super) fn schema_warnings(schema: &serde_json::Value) -> Vec<String> {
    read_schema(schema)
        .unchecked_formats
        .into_iter()
        .map(|format| {
            let hint = if format.ends_with("path`") {
                format!("; to make an argument a path, write `{PATH_KEYWORD}: /base` on it")
            } else {
                "; check it with `pattern` or an argument rule".to_string()
            };
            format!("{format} is not checked by the gateway, only shown to the agent{hint}")
        })
        .collect()
}

/// Words of an argument name (`notePath`, `note_path`, `note-path` → note, path).
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in name.chars() {
        if !c.is_alphanumeric() || (c.is_uppercase() && !word.is_empty()) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_alphanumeric() {
                continue;
            }
        }
        word.push(c.to_ascii_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Whether an argument's name says it holds a file system path.
fn looks_like_path(argument: &str) -> bool {
    const PATH_WORDS: &[&str] = &["path", "file", "filename", "filepath", "pathname", "dir", "dirname", "directory", "folder"];
    let last = argument.rsplit('.').next().unwrap_or(argument);
    words(last).iter().any(|w| PATH_WORDS.contains(&w.as_str()))
}

/// A string a canonical path can equal (or, for a prefix ending in `/`, start with).
fn is_canonical(text: &str) -> bool {
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    trimmed.is_empty() || canonical_path("/base", trimmed).as_deref() == Ok(trimmed)
}

/// Warnings about one rule, given the tools its policy selects.
pub(super) fn rule_warnings(rule: &RuleConfig, tools: &[(&ToolConfig, Vec<PathArgument>)]) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let RuleCheck::Prefix(prefix) = &rule.check
        && let Some(after) = prefix.strip_prefix("https://").or_else(|| prefix.strip_prefix("http://"))
        && !after.contains('/')
    {
        out.insert(format!(
            "prefix `{prefix}` also matches `{prefix}.evil.test` and `{prefix}@evil.test`: end it with `/`, or use hostIn"
        ));
    }
    let Some(argument) = &rule.argument else { return out.into_iter().collect() };
    let segments: Vec<String> = argument.split('.').map(str::to_string).collect();
    let string_rule = matches!(rule.check, RuleCheck::Prefix(_) | RuleCheck::Pattern(_) | RuleCheck::Equals(_) | RuleCheck::OneOf(_));
    for (tool, paths) in tools {
        let declared = paths.iter().any(|p| p.is_named_by(&segments));
        let has_argument = tool.input_schema["properties"].get(segments[0].as_str()).is_some();
        if !has_argument {
            continue;
        }
        if declared {
            let values: Vec<String> = match &rule.check {
                RuleCheck::Prefix(p) => vec![p.clone()],
                RuleCheck::Equals(v) => v.as_str().map(str::to_string).into_iter().collect(),
                RuleCheck::OneOf(vs) => vs.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            };
            for value in values.iter().filter(|v| !is_canonical(v)) {
                out.insert(format!(
                    "`{value}` is not a canonical path, so this rule never sees it: rules on {}'s path argument `{argument}` read it relative to its base, without `.`, `..`, `//` or a leading `/` (such as `releases/v1.md`)",
                    tool.name
                ));
            }
        } else if matches!(rule.check, RuleCheck::PathWithin(_)) {
            out.insert(format!(
                "pathWithin checks `{argument}` of {}, but its inputSchema does not declare it a path (`{PATH_KEYWORD}: /base`): other rules and the tool see the raw spelling, so `./x`, `a/../x` or `/base/x` slip past a prefix, pattern or deny on it",
                tool.name
            ));
        } else if string_rule && looks_like_path(argument) {
            out.insert(format!(
                "`{argument}` of {} looks like a file path, but its inputSchema does not declare it one (`{PATH_KEYWORD}: /base`): this rule sees the raw spelling, so `./x`, `a/../x` or `/base/x` slip past it",
                tool.name
            ));
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_names() {
        for yes in ["path", "file", "notePath", "note_path", "source-file", "file_name", "opts.dir", "targetDirectory", "filename"] {
            assert!(looks_like_path(yes), "{yes}");
        }
        for no in ["profile", "direction", "title", "paths_count_x", "url", "repo"] {
            assert!(!looks_like_path(no), "{no}");
        }
    }

    #[test]
    fn canonical_prefixes() {
        for yes in ["releases/", "releases", "a/b/", "", "v1.md"] {
            assert!(is_canonical(yes), "{yes}");
        }
        for no in ["./releases/", "/notes/releases/", "a//b", "a/../b", "../x", "a/./b", "releases//"] {
            assert!(!is_canonical(no), "{no}");
        }
    }
}
