//! Intent-revealing tool names: a reviewer (and the model) must be able to tell from a tool's name what a
//! call changes. The same word lists produce the admission-time CEL rules in the CRD.

use crate::resources::Effect;

/// Verbs that say a tool deletes or overwrites something.
pub const DESTRUCTIVE_VERBS: &[&str] = &[
    "delete", "remove", "destroy", "drop", "purge", "revoke", "erase", "wipe", "truncate", "terminate",
    "uninstall", "reset", "overwrite", "kill", "evict", "prune", "deprovision", "rm", "clear",
];

/// Words in a name that claim destruction; a tool whose effect is not destructive may not use them.
pub const CLEARLY_DESTRUCTIVE: &[&str] = &["delete", "remove", "destroy", "drop", "purge", "revoke", "erase", "wipe"];

/// Verbs a read tool's name starts with.
pub const READ_VERBS: &[&str] = &[
    "get", "list", "read", "search", "fetch", "inspect", "preview", "plan", "describe", "check", "query",
    "find", "show", "lookup", "view", "count", "diff", "validate", "explain", "summarize", "lint", "watch",
];

/// Names that say nothing about what the tool does.
pub const VAGUE_NAMES: &[&str] = &[
    "execute", "exec", "run", "do", "action", "perform", "invoke", "call", "process", "handle", "manage",
    "admin", "system", "command", "shell", "eval", "tool", "task", "operation", "anything", "everything",
];

/// Last words that turn a name into a catch-all (`system_action`, `repo_admin`, `workspace_execute`).
pub const VAGUE_SUFFIXES: &[&str] = &[
    "action", "actions", "admin", "execute", "exec", "run", "command", "commands", "shell", "eval",
    "anything", "everything", "operation", "operations", "stuff",
];

/// Longest MCP tool name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Why a tool name was refused: a sentence saying why and how to rename.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameProblem(pub String);

/// Checks that `tool_name` (MCP form, `_`-separated) reveals what a tool with `effect` does.
pub fn check_tool_name(tool_name: &str, effect: Effect) -> Result<(), NameProblem> {
    if tool_name.is_empty() || tool_name.len() > MAX_NAME_LEN {
        return Err(NameProblem(format!(
            "tool name `{tool_name}` must be 1 to {MAX_NAME_LEN} characters long"
        )));
    }
    if !tool_name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.') {
        return Err(NameProblem(format!(
            "tool name `{tool_name}` may only hold lowercase letters, digits, `_` and `.`"
        )));
    }
    let words: Vec<&str> = tool_name.split(['_', '.']).filter(|w| !w.is_empty()).collect();
    let first = words.first().copied().unwrap_or_default();
    let last = words.last().copied().unwrap_or_default();
    if VAGUE_NAMES.contains(&tool_name) || first == "do" || (words.len() > 1 && VAGUE_SUFFIXES.contains(&last)) {
        return Err(NameProblem(format!(
            "`{tool_name}` is a catch-all name: it does not say what the tool does, so neither the model nor a \
             reviewer can tell what a call changes. Split it into narrow tools named verb_object, such as \
             `list_pull_requests` or `delete_branch`"
        )));
    }
    let says_destructive = words.iter().any(|w| DESTRUCTIVE_VERBS.contains(w));
    match effect {
        Effect::Destructive if !says_destructive => Err(NameProblem(format!(
            "`{tool_name}` has effect destructive but its name hides it: include a destructive verb ({}), \
             such as `delete_{tool_name}`",
            DESTRUCTIVE_VERBS[..6].join(", ")
        ))),
        Effect::Read if !READ_VERBS.contains(&first) => Err(NameProblem(format!(
            "`{tool_name}` has effect read but does not start with a read verb ({}…), such as `get_{tool_name}`",
            READ_VERBS[..10].join(", ")
        ))),
        Effect::Read | Effect::Write | Effect::External if words.iter().any(|w| CLEARLY_DESTRUCTIVE.contains(w)) => {
            Err(NameProblem(format!(
                "`{tool_name}` says it deletes or removes something but its effect is {effect}: set effect \
                 destructive so approvals and annotations match what it does"
            )))
        }
        _ => Ok(()),
    }
}

/// Admission-time CEL rules for `metadata.name` (dash-separated) mirroring [`check_tool_name`].
pub fn admission_rules() -> Vec<(String, String)> {
    let alt = |words: &[&str]| words.join("|");
    vec![
        (
            format!("size(self.metadata.name) <= {MAX_NAME_LEN}"),
            format!("an McpTool name is the MCP tool name: at most {MAX_NAME_LEN} characters"),
        ),
        (
            format!(
                "!self.metadata.name.matches('^({})$') && !self.metadata.name.matches('^do-') && !self.metadata.name.matches('.-({})$')",
                alt(VAGUE_NAMES),
                alt(VAGUE_SUFFIXES)
            ),
            "catch-all names (execute, run, do-*, *-action, *-admin, *-execute…) do not say what the tool does: \
             name it verb-object for one narrow action, such as delete-branch"
                .to_string(),
        ),
        (
            format!(
                "self.spec.effect != 'destructive' || self.metadata.name.matches('(^|[-.])({})([-.]|$)')",
                alt(DESTRUCTIVE_VERBS)
            ),
            "a destructive tool's name must say so: include delete, remove, destroy, drop, purge, revoke…".to_string(),
        ),
        (
            format!("self.spec.effect != 'read' || self.metadata.name.matches('^({})([-.]|$)')", alt(READ_VERBS)),
            "a read tool's name must start with a read verb: get, list, read, search, fetch, inspect, preview, plan, \
             describe, check…"
                .to_string(),
        ),
        (
            format!(
                "self.spec.effect == 'destructive' || !self.metadata.name.matches('(^|[-.])({})([-.]|$)')",
                alt(CLEARLY_DESTRUCTIVE)
            ),
            "a tool whose name says delete/remove/destroy… must have effect destructive".to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;

    #[test]
    fn names_that_reveal_intent_pass() {
        for (name, effect) in [
            ("delete_branch", Destructive),
            ("purge_cache", Destructive),
            ("revoke_token", Destructive),
            ("get_weather", Read),
            ("list_pull_requests", Read),
            ("search_docs", Read),
            ("preview_changes", Read),
            ("create_pull_request", Write),
            ("send_email", External),
            ("run_tests", Write),
        ] {
            assert_eq!(check_tool_name(name, effect), Ok(()), "{name}");
        }
    }

    #[test]
    fn vague_names_are_refused_with_a_rename_hint() {
        for name in ["system_action", "repo_admin", "workspace_execute", "execute", "run", "do_stuff", "do_anything"] {
            let err = check_tool_name(name, Write).unwrap_err().to_string();
            assert!(err.contains("catch-all"), "{name}: {err}");
            assert!(err.contains("verb_object"), "{name}: {err}");
        }
    }

    #[test]
    fn destructive_tool_must_say_so() {
        let err = check_tool_name("update_branch", Destructive).unwrap_err().to_string();
        assert!(err.contains("destructive verb"), "{err}");
    }

    #[test]
    fn read_tool_must_start_with_read_verb() {
        let err = check_tool_name("weather", Read).unwrap_err().to_string();
        assert!(err.contains("read verb"), "{err}");
        assert!(check_tool_name("weather_get", Read).is_err());
    }

    #[test]
    fn name_claiming_deletion_needs_destructive_effect() {
        let err = check_tool_name("delete_branch", Write).unwrap_err().to_string();
        assert!(err.contains("set effect destructive"), "{err}");
    }

    #[test]
    fn bad_characters_and_length_are_refused() {
        assert!(check_tool_name("Get_Weather", Read).is_err());
        assert!(check_tool_name(&format!("get_{}", "x".repeat(70)), Read).is_err());
        assert!(check_tool_name("", Read).is_err());
    }
}
