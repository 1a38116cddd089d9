//! The `toolwarden crd` and `toolwarden policy` commands, run as a user would.

use std::path::PathBuf;
use std::process::Command;

fn toolwarden(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("toolwarden runs")
}

#[test]
fn crd_prints_what_crds_dir_holds() {
    let out = toolwarden(&["crd"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(printed.contains(&text), "{} is not in `toolwarden crd` output", file.display());
    }
    assert_eq!(printed.matches("\n---\n").count() + usize::from(printed.starts_with("---\n")), 3);
}

#[test]
fn policy_test_passes_on_the_examples() {
    let out = toolwarden(&["policy", "test", "--manifests", "examples", "examples/cases/policy-cases.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn policy_test_fails_and_names_the_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: wrong expectation\n    subject: {name: dev, groups: [developers]}\n    tool: create_pull_request\n    arguments: {owner: acme, repo: blog, head: ai-blog/x, base: main, title: t}\n    expect: allow\n",
    )
    .unwrap();
    let out = toolwarden(&["policy", "test", "--manifests", "examples", cases.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("FAIL wrong expectation: expected allow, got deny"), "{stdout}");
    assert!(stdout.contains("base.equals"), "{stdout}");
}

#[test]
fn bad_manifests_are_reported_with_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {name: run}\nspec:\n  description: d\n  effect: write\n  inputSchema: {type: object}\n  runtime: {exec: {image: x, command: [/bin/true]}}\n  colour: blue\n",
    )
    .unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, "cases: []\n").unwrap();
    let out = toolwarden(&["policy", "test", "--manifests", dir.path().to_str().unwrap(), cases.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.yaml (document 1, McpTool default/run): spec.colour: unknown field `colour`"), "{stderr}");
}

#[test]
fn explain_lists_every_policy() {
    let out = toolwarden(&[
        "policy", "explain", "--manifests", "examples", "--subject", "dev", "--group", "developers", "--tool", "list_notes",
        "--arguments", r#"{"limit":500}"#,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("developers-read-notes (allow): applies; 0 of 1 rules pass"), "{stdout}");
    assert!(stdout.contains("limit.range: FAIL"), "{stdout}");
    assert!(stdout.contains("decision: deny [argument_rule_failed]"), "{stdout}");
}
