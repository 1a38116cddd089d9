//! The tamper-evident audit log end to end: a real `toolwarden dev` writes it while serving calls from
//! several sessions at once, `toolwarden audit verify` accepts it, and names the exact line of each kind
//! of tampering done to a copy.

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_support::*;
use serde_json::{Value, json};

/// `toolwarden audit verify ARGS...`: (exit code, stdout, stderr).
fn verify(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_toolwarden")).arg("audit").arg("verify").args(args).output().expect("toolwarden runs");
    (out.status.code().expect("exited, not killed"), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn verify_path(path: &Path) -> (i32, String, String) {
    verify(&[path.to_str().unwrap()])
}

/// Runs `toolwarden dev` appending its audit lines to `audit`, makes calls from four sessions at once,
/// stops it with SIGTERM (waiting lines are written then), and returns its stdout lines.
async fn serve_calls(audit: &Path) -> Vec<String> {
    let mut dev = Dev::start_logging_to(audit);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(dev.client(DEV_TOKEN).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let peer = client.peer().clone();
        calls.spawn(async move {
            for j in 0..3 {
                ok(&call(&peer, "count_words", json!({"text": format!("call {i} {j}"), "unit": "words"})).await);
            }
            refused(&call(&peer, "list_notes", json!({"limit": 500})).await, "argument_rule_failed");
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("the calls succeed");
    }
    drop(clients);
    // Prometheus sees how far the chain got.
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let gauge = metrics.lines().find_map(|l| l.strip_prefix("toolwarden_audit_chain_seq{chain=\"")).expect("the chain's gauge").to_owned();
    let status = dev.terminate();
    assert!(status.success(), "{status}");
    // The reader of stdout may still be draining the pipe: wait for the file's last line there.
    let last = lines_of(audit).pop().expect("audit lines were written");
    assert_eq!(gauge, format!("{}\"}} {}", field(&last, "chain").as_str().unwrap(), field(&last, "seq")), "the gauge holds the last seq");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stdout = dev.stdout.lock().unwrap().clone();
        if stdout.contains(&last) {
            return stdout;
        }
        assert!(std::time::Instant::now() < deadline, "stdout lacks the last audit line: {stdout:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn field(line: &str, name: &str) -> Value {
    serde_json::from_str::<Value>(line).unwrap()[name].clone()
}

/// A copy of `lines` in a new file of `dir`, changed by `tamper`.
fn tampered(dir: &Path, name: &str, lines: &[String], tamper: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let mut copy = lines.to_vec();
    tamper(&mut copy);
    let path = dir.join(name);
    write_lines(&path, &copy);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_audit_log_verifies_and_each_kind_of_tampering_is_named_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let stdout = serve_calls(&audit).await;
    let lines = lines_of(&audit);
    assert!(lines.len() > 4 * 7, "a start record, 4 × (3 calls × 2 lines + 1 refusal): {}", lines.len());
    assert_eq!(field(&lines[0], "event"), "chain_start");
    assert_eq!(field(&lines[0], "chain_start")["gateway"], "dev");
    let chain = field(&lines[0], "chain").as_str().unwrap().to_owned();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!((field(line, "chain").as_str(), field(line, "seq").as_u64()), (Some(chain.as_str()), Some(i as u64)), "{line}");
    }

    // The whole file verifies, and the summary says what it holds.
    let (code, out, err) = verify_path(&audit);
    assert_eq!(code, 0, "{out}{err}");
    let last = lines.len() - 1;
    assert!(out.contains("verified: 1 chain(s)"), "{out}");
    assert!(out.contains(&format!("chain {chain}: gateway dev, pid ")), "{out}");
    assert!(out.contains(&format!("seq 0–{last} ({} line(s))", lines.len())), "{out}");

    // The stdout copy holds the same bytes, between `dev`'s own lines.
    let audit_on_stdout: Vec<&String> = stdout.iter().filter(|l| l.starts_with('{')).collect();
    assert_eq!(audit_on_stdout, lines.iter().collect::<Vec<_>>(), "stdout and the file carry the same lines");
    let stdout_file = dir.path().join("stdout.txt");
    write_lines(&stdout_file, &stdout);
    let (code, _, err) = verify_path(&stdout_file);
    assert_eq!(code, 1);
    assert!(err.contains("stdout.txt:2: not a chained audit line: not JSON"), "dev's address line follows the start record: {err}");
    let (code, out, err) = verify(&["--skip-other-lines", stdout_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("skipped ") && out.contains("(the first at ") && out.contains("stdout.txt:2)"), "{out}");

    // A decision line in the middle, its result line, and what follows.
    let middle = lines.iter().position(|l| field(l, "event") == "result").unwrap() + 2;
    let name = |p: &Path| p.to_str().unwrap().to_owned();

    let removed = tampered(dir.path(), "removed.jsonl", &lines, |l| {
        l.remove(middle);
    });
    let (code, _, err) = verify_path(&removed);
    assert_eq!(code, 1);
    let expected = format!(
        "{}:{}: chain {chain} jumps from seq {} ({}:{}) to seq {}: 1 line(s) (seq {middle}) were removed before this line",
        name(&removed),
        middle + 1,
        middle - 1,
        name(&removed),
        middle,
        middle + 1
    );
    assert!(err.contains(&expected), "{err}\nexpected: {expected}");

    let changed = tampered(dir.path(), "changed.jsonl", &lines, |l| {
        let at = l[middle].find("\"tool\":\"").unwrap() + 8;
        let byte = if &l[middle][at..at + 1] == "x" { "y" } else { "x" };
        l[middle].replace_range(at..at + 1, byte);
    });
    let (code, _, err) = verify_path(&changed);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:{}: chain {chain} seq {middle} was changed", name(&changed), middle + 1)), "{err}");

    let swapped = tampered(dir.path(), "swapped.jsonl", &lines, |l| l.swap(middle, middle + 1));
    let (code, _, err) = verify_path(&swapped);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:{}: chain {chain} seq {} is out of order: seq {middle} of the same chain comes after it", name(&swapped), middle + 1, middle + 1)),
        "{err}"
    );

    let cut = dir.path().join("cut.jsonl");
    let text = std::fs::read(&audit).unwrap();
    std::fs::write(&cut, &text[..text.len() - 25]).unwrap();
    let (code, _, err) = verify_path(&cut);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:{}: the file ends in the middle of this line", name(&cut), lines.len())), "{err}");

    let garbled = tampered(dir.path(), "garbled.jsonl", &lines, |l| l.insert(3, "{\"seq\": 3".into()));
    let (code, _, err) = verify_path(&garbled);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:4: not a chained audit line: not JSON (EOF while parsing an object at byte 9)", name(&garbled))), "{err}");

    // The head, anchored: the same file passes, the file without its last line does not.
    let anchor = out_anchor(&verify_path(&audit).1);
    assert!(anchor.starts_with(&format!("{chain}:{last}:")), "{anchor}");
    assert_eq!(verify(&["--anchor", &anchor, audit.to_str().unwrap()]).0, 0);
    let short = tampered(dir.path(), "short.jsonl", &lines, |l| {
        l.pop();
    });
    assert_eq!(verify_path(&short).0, 0, "without an anchor, a missing tail is not seen");
    let (code, _, err) = verify(&["--anchor", &anchor, short.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:{last}: chain {chain} ends here at seq {}, but --anchor {anchor} recorded its seq {last}", name(&short), last - 1)), "{err}");

    // Bad command lines get specific errors.
    let (code, _, err) = verify(&[dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open") && err.contains("missing.jsonl"), "{err}");
    let (code, _, err) = verify(&["--anchor", "abc:1", audit.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("is not CHAIN:SEQ:HASH"), "{err}");
}

/// The anchor a successful run printed (one chain).
fn out_anchor(out: &str) -> String {
    out.lines().find_map(|l| l.trim().strip_prefix("last line, to anchor elsewhere: ")).expect("an anchor line").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_replicas_each_have_a_chain_and_verify_together() {
    let dir = tempfile::tempdir().unwrap();
    // Two runs appending to one file: a restart.
    let restarted = dir.path().join("restarted.jsonl");
    serve_calls(&restarted).await;
    serve_calls(&restarted).await;
    let lines = lines_of(&restarted);
    let starts: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| field(l, "event") == "chain_start").map(|(i, _)| i).collect();
    let [_, second] = starts[..] else { panic!("two start records: {starts:?}") };
    let (code, out, err) = verify_path(&restarted);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified: 2 chain(s)"), "{out}");
    let first_chain = field(&lines[0], "chain").as_str().unwrap().to_owned();
    assert_eq!(field(&lines[second], "chain_start")["continues"]["seq"], second as u64 - 1, "the restart names the last line before it");
    assert!(out.contains(&format!("continues chain {first_chain} at seq {}: checked", second - 1)), "{out}");

    // Two replicas' files interleaved line by line, as a log collector might ship them.
    let first: Vec<String> = lines[..second].to_vec();
    let other: Vec<String> = lines[second..].to_vec();
    let mut merged = Vec::new();
    for i in 0..first.len().max(other.len()) {
        merged.extend(first.get(i).cloned());
        merged.extend(other.get(i).cloned());
    }
    let interleaved = dir.path().join("interleaved.jsonl");
    write_lines(&interleaved, &merged);
    let (code, out, err) = verify_path(&interleaved);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified: 2 chain(s)"), "{out}");
    // The two files named separately verify as well.
    let (a, b) = (dir.path().join("replica-a.jsonl"), dir.path().join("replica-b.jsonl"));
    write_lines(&a, &first);
    write_lines(&b, &other);
    assert_eq!(verify(&[a.to_str().unwrap(), b.to_str().unwrap()]).0, 0);

    // A line of the second chain removed from the interleaved file: named by file line, chain and seq.
    let victim = merged.iter().position(|l| field(l, "chain") == field(&other[0], "chain") && field(l, "seq") == 5).unwrap();
    let next = merged.iter().position(|l| field(l, "chain") == field(&other[0], "chain") && field(l, "seq") == 6).unwrap();
    merged.remove(victim);
    write_lines(&interleaved, &merged);
    let (code, _, err) = verify_path(&interleaved);
    assert_eq!(code, 1);
    let other_chain = field(&other[0], "chain").as_str().unwrap().to_owned();
    assert!(err.contains(&format!("interleaved.jsonl:{next}: chain {other_chain} jumps from seq 4")), "{err}");
    assert!(err.contains("(seq 5) were removed before this line"), "{err}");
}
