//! The verifier against chains built with the writer's own [`ChainWriter`], then damaged one way each.

use super::*;
use crate::audit::chain::{ChainPoint, ChainWriter, line_hash};

/// A chain's lines, each with its newline: a start record, then `count - 1` decision lines.
fn chain(id: &str, count: usize, continues: Option<ChainPoint>) -> Vec<String> {
    let mut writer = ChainWriter::new(id).unwrap();
    let continues = serde_json::to_string(&continues).unwrap();
    let mut lines = Vec::new();
    for i in 0..count {
        let json = if i == 0 {
            format!(r#"{{"timestamp":"2026-12-03T10:00:00.000Z","event":"chain_start","chain_start":{{"gateway":"gw-{id}","pid":7,"version":"0.1.0","continues":{continues}}}}}"#)
        } else {
            format!(r#"{{"timestamp":"2026-12-03T10:00:0{}.000Z","event":"decision","call_id":"{id}-call-{i}","tool":"write_note"}}"#, i % 10)
        };
        let mut buffer = json.into_bytes();
        writer.seal(&mut buffer, 0);
        lines.push(String::from_utf8(buffer).unwrap());
    }
    lines
}

/// The anchor of a line (with its newline).
fn point(id: &str, seq: u64, line: &str) -> ChainPoint {
    ChainPoint { chain: id.into(), seq, hash: chain::to_hex(&line_hash(line.trim_end_matches('\n').as_bytes())) }
}

/// Feeds files as `audit verify` reads them: split at newlines, a last piece without one is cut off.
fn verify_with(files: &[(&str, String)], options: VerifyOptions) -> Result<Summary, Break> {
    let mut verifier = Verifier::new(options);
    for (name, text) in files {
        if !verifier.feed_text(*name, text.as_bytes()) {
            break;
        }
    }
    verifier.finish()
}

fn verify(text: String) -> Result<Summary, Break> {
    verify_with(&[("audit.log", text)], VerifyOptions::default())
}

/// The break `text` must show: its kind, line and the chain's seq it names.
fn broken(text: String) -> Break {
    let found = verify(text).expect_err("tampering is found");
    assert_eq!(found.file.as_deref(), Some("audit.log"), "{found}");
    found
}

fn at(found: &Break) -> (BreakKind, u64, Option<u64>) {
    (found.kind, found.line, found.seq)
}

#[test]
fn an_intact_chain_verifies_and_the_summary_gives_its_span_and_head() {
    let lines = chain("a", 5, None);
    let summary = verify(lines.concat()).unwrap();
    assert_eq!(summary.lines, 5);
    let [c] = &summary.chains[..] else { panic!("{summary:?}") };
    assert_eq!((c.id.as_str(), c.first_seq, c.last_seq, c.lines), ("a", 0, 4, 5));
    assert_eq!((c.first.as_str(), c.last.as_str()), ("audit.log:1", "audit.log:5"));
    assert_eq!(c.started.as_ref().map(|s| (s.gateway.as_str(), s.pid)), Some(("gw-a", 7)));
    let head = point("a", 4, &lines[4]);
    assert_eq!(c.head.to_string(), format!("a:4:{}", head.hash));
    let text = summary.to_string();
    assert!(text.contains("verified: 1 chain(s), 5 line(s) in audit.log"), "{text}");
    assert!(text.contains(&format!("last line, to anchor elsewhere: a:4:{}", head.hash)), "{text}");
}

#[test]
fn a_removed_line_is_named_by_its_seq_and_the_line_after_the_gap() {
    let mut lines = chain("a", 6, None);
    lines.remove(2);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Removed, 3, Some(2)), "{found}");
    assert!(found.detail.contains("jumps from seq 1 (audit.log:2) to seq 3: 1 line(s) (seq 2) were removed"), "{found}");

    let mut lines = chain("a", 6, None);
    lines.drain(1..4);
    assert!(broken(lines.concat()).detail.contains("3 line(s) (seq 1–3) were removed"));
}

#[test]
fn a_removed_start_record_is_named() {
    let mut lines = chain("a", 4, None);
    lines.remove(0);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::MissingStart, 1, Some(0)), "{found}");
    assert!(found.detail.contains("chain a begins here at seq 1, without its start record"), "{found}");
}

#[test]
fn one_changed_byte_names_the_changed_line() {
    let mut lines = chain("a", 6, None);
    lines[2] = lines[2].replacen("a-call-2", "a-call-3", 1);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Changed, 3, Some(2)), "{found}");
    assert!(found.detail.contains("chain a seq 2 was changed: the next line of the chain (audit.log:4, seq 3) recorded a different hash for it"), "{found}");
}

#[test]
fn a_changed_prev_hash_names_its_own_line() {
    let mut lines = chain("a", 6, None);
    let prev = lines[3].rfind("prev_hash\":\"").unwrap() + 12;
    let flipped = if &lines[3][prev..prev + 1] == "0" { "1" } else { "0" };
    lines[3].replace_range(prev..prev + 1, flipped);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Changed, 4, Some(3)), "{found}");
}

#[test]
fn a_changed_seq_names_its_line() {
    let mut lines = chain("a", 6, None);
    lines[3] = lines[3].replacen("\"seq\":3", "\"seq\":4", 1);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Changed, 4, Some(4)), "{found}");
    assert!(found.detail.contains("links to seq 2 (audit.log:3) but says it is seq 4, not 3"), "{found}");

    let mut lines = chain("a", 3, None);
    lines[0] = lines[0].replacen("\"seq\":0", "\"seq\":9", 1);
    assert_eq!(at(&broken(lines.concat())), (BreakKind::Changed, 1, Some(9)));
}

#[test]
fn the_last_line_changed_is_only_seen_by_an_anchor_of_it() {
    let mut lines = chain("a", 4, None);
    let head = point("a", 3, &lines[3]);
    lines[3] = lines[3].replacen("write_note", "read_note!", 1);
    verify(lines.concat()).expect("nothing after the last line records it");
    let anchor = Anchor { chain: "a".into(), seq: 3, hash: chain::parse_hex(&head.hash).unwrap() };
    let found = verify_with(&[("audit.log", lines.concat())], VerifyOptions { anchors: vec![anchor], ..VerifyOptions::default() }).unwrap_err();
    assert_eq!(at(&found), (BreakKind::Rewritten, 4, Some(3)), "{found}");
}

#[test]
fn a_break_at_the_chains_last_link_names_both_lines() {
    let mut lines = chain("a", 4, None);
    lines[2] = lines[2].replacen("a-call-2", "a-call-x", 1);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Changed, 3, Some(2)), "{found}");
    assert!(found.detail.contains("this line was changed, or that line's prev_hash"), "{found}");
}

#[test]
fn swapped_lines_name_the_first_line_out_of_place() {
    let mut lines = chain("a", 6, None);
    lines.swap(2, 3);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Reordered, 3, Some(3)), "{found}");
    assert!(found.detail.contains("seq 2 of the same chain comes after it (audit.log:4)"), "{found}");
}

#[test]
fn a_line_moved_later_or_copied_is_named() {
    let mut lines = chain("a", 6, None);
    let moved = lines.remove(1);
    lines.insert(4, moved);
    assert_eq!(at(&broken(lines.concat())), (BreakKind::Reordered, 2, Some(2)));

    let mut lines = chain("a", 6, None);
    let copy = lines[2].clone();
    lines.insert(4, copy);
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Reordered, 5, Some(2)), "{found}");
    assert!(found.detail.contains("seq 2 comes after seq 3 (audit.log:4): this line was moved or copied here"), "{found}");
}

#[test]
fn a_file_cut_mid_line_names_the_cut_line() {
    let lines = chain("a", 4, None);
    let mut text = lines.concat();
    text.truncate(text.len() - 30);
    let found = broken(text);
    assert_eq!(at(&found), (BreakKind::CutOff, 4, None), "{found}");
    assert!(found.detail.contains("the file ends in the middle of this line"), "{found}");
    // Only the newline gone: the line is whole, but the file was still cut.
    let text = lines.concat();
    assert_eq!(at(&broken(text[..text.len() - 1].to_owned())), (BreakKind::CutOff, 4, None));
}

#[test]
fn garbled_lines_say_where_and_why() {
    let mut lines = chain("a", 4, None);
    lines.insert(2, "hello world\n".into());
    let found = broken(lines.concat());
    assert_eq!(at(&found), (BreakKind::Garbled, 3, None), "{found}");
    assert!(found.detail.starts_with("not a chained audit line: not JSON (expected value at byte 1)"), "{found}");

    let mut lines = chain("a", 4, None);
    lines[2] = r#"{"timestamp":"x","event":"decision"}"#.to_owned() + "\n";
    let found = broken(lines.concat());
    assert!(found.detail.contains("without the chain field(s) `chain`, `seq`, `prev_hash`"), "{found}");
    assert_eq!(found.line, 3);

    let mut lines = chain("a", 4, None);
    lines[1] = lines[1].replacen("prev_hash\":\"", "prev_hash\":\"zz", 1);
    let found = broken(lines.concat());
    assert!(found.detail.contains("`prev_hash` is not a SHA-256 in hex"), "{found}");
    assert!(found.to_string().starts_with("audit.log:2: "), "{found}");
}

#[test]
fn skipping_other_lines_still_finds_a_chain_line_lost_among_them() {
    let mut lines = chain("a", 5, None);
    lines.insert(0, "toolwarden dev: 3 tools\n".into());
    lines.insert(3, "2026-12-03T10:00:00Z INFO gateway listening\n".into());
    let skip = VerifyOptions { skip_other_lines: true, ..VerifyOptions::default() };
    let summary = verify_with(&[("stdout.log", lines.concat())], skip.clone()).unwrap();
    assert_eq!((summary.skipped, summary.first_skipped.as_deref()), (2, Some("stdout.log:1")));
    assert!(summary.to_string().contains("skipped 2 line(s) that are not chained audit lines (the first at stdout.log:1)"));
    // A chain line garbled into "another line" leaves a gap in its chain.
    lines[4] = "garbled\n".into();
    let found = verify_with(&[("stdout.log", lines.concat())], skip).unwrap_err();
    assert_eq!(at(&found), (BreakKind::Removed, 6, Some(2)), "{found}");
}

#[test]
fn interleaved_chains_verify_and_a_line_removed_from_one_is_named() {
    let (a, b) = (chain("a", 5, None), chain("b", 4, None));
    let mut merged = Vec::new();
    for (i, line) in a.iter().enumerate() {
        merged.push(line.clone());
        merged.extend(b.get(i).cloned());
    }
    let summary = verify(merged.concat()).unwrap();
    let spans: Vec<_> = summary.chains.iter().map(|c| (c.id.as_str(), c.last_seq, c.last.as_str())).collect();
    assert_eq!(spans, [("a", 4, "audit.log:9"), ("b", 3, "audit.log:8")]);
    // b's seq 2 was line 6 of the merged file.
    assert!(merged[5].contains("\"chain\":\"b\",\"seq\":2"));
    merged.remove(5);
    let found = broken(merged.concat());
    assert_eq!((found.kind, found.line, found.chain.as_deref(), found.seq), (BreakKind::Removed, 7, Some("b"), Some(2)), "{found}");
}

#[test]
fn a_chain_continues_across_rotated_files_named_oldest_first() {
    let lines = chain("a", 6, None);
    let (old, new) = (lines[..3].concat(), lines[3..].concat());
    let summary = verify_with(&[("audit.log.1", old.clone()), ("audit.log", new.clone())], VerifyOptions::default()).unwrap();
    assert_eq!((summary.chains[0].first.as_str(), summary.chains[0].last.as_str()), ("audit.log.1:1", "audit.log:3"));
    let found = verify_with(&[("audit.log", new.clone()), ("audit.log.1", old)], VerifyOptions::default()).unwrap_err();
    assert_eq!(at(&found), (BreakKind::Reordered, 1, Some(3)), "{found}");
    assert!(found.detail.contains("name them oldest first"), "{found}");
    // Only the newer file: its chain's start is gone.
    assert_eq!(verify_with(&[("audit.log", new.clone())], VerifyOptions::default()).unwrap_err().kind, BreakKind::MissingStart);
    let summary = verify_with(&[("audit.log", new)], VerifyOptions { partial: true, ..VerifyOptions::default() }).unwrap();
    assert!(summary.chains[0].notes[0].contains("begins at seq 3"), "{summary:?}");
}

#[test]
fn a_restarted_gateway_links_its_chain_to_the_previous_ones_tail() {
    let a = chain("a", 4, None);
    let b = chain("b", 3, Some(point("a", 3, &a[3])));
    let summary = verify([a.concat(), b.concat()].concat()).unwrap();
    assert_eq!(summary.chains[1].notes, ["continues chain a at seq 3: checked"]);

    // The old process's last lines cut, and the new chain appended as if nothing happened.
    let found = broken([a[..2].concat(), b.concat()].concat());
    assert_eq!((found.kind, found.line, found.chain.as_deref(), found.seq), (BreakKind::Removed, 2, Some("a"), Some(2)), "{found}");
    assert!(found.detail.contains("chain a ends here at seq 1, but the start record of chain b (audit.log:3) recorded its seq 3"), "{found}");

    // The previous chain not shipped with this file: said, not failed.
    let summary = verify(b.concat()).unwrap();
    assert_eq!(summary.chains[0].notes, ["continues chain a (seq 3), which is not in these files: not checked"]);
}

#[test]
fn anchors_check_that_the_tail_is_there_and_unchanged() {
    let lines = chain("a", 5, None);
    let anchor = |seq: u64| Anchor { chain: "a".into(), seq, hash: chain::parse_hex(&point("a", seq, &lines[seq as usize]).hash).unwrap() };
    let anchored = |text: String, anchors: Vec<Anchor>| verify_with(&[("audit.log", text)], VerifyOptions { anchors, ..VerifyOptions::default() });

    let summary = anchored(lines.concat(), vec![anchor(4), anchor(2)]).unwrap();
    assert_eq!(summary.chains[0].notes.len(), 2, "{:?}", summary.chains[0].notes);
    assert!(summary.chains[0].notes[0].ends_with(": checked"));

    let found = anchored(lines[..3].concat(), vec![anchor(4)]).unwrap_err();
    assert_eq!(at(&found), (BreakKind::Removed, 3, Some(3)), "{found}");
    assert!(found.detail.contains("the 2 line(s) after this one (seq 3–4) were removed"), "{found}");

    let other = Anchor { chain: "gone".into(), ..anchor(1) };
    let found = anchored(lines.concat(), vec![other]).unwrap_err();
    assert_eq!((found.kind, found.file.clone()), (BreakKind::MissingChain, None));
    assert!(found.to_string().starts_with("chain gone of --anchor gone:1:"), "{found}");
}

#[test]
fn anchors_parse_from_what_the_summary_prints() {
    let lines = chain("gw-1", 2, None);
    let summary = verify(lines.concat()).unwrap();
    let printed = summary.chains[0].head.to_string();
    assert_eq!(printed.parse::<Anchor>().unwrap(), summary.chains[0].head);
    for bad in ["a:1", "a:x:00", &format!("a:1:{}", "0".repeat(63))] {
        assert!(bad.parse::<Anchor>().is_err(), "{bad}");
    }
}

#[test]
fn a_chain_that_starts_twice_in_one_file_is_caught() {
    // The same chain id twice (a copied start record): the second seq 0 comes after the chain's seq 2.
    let lines = chain("a", 3, None);
    let found = broken([lines.concat(), lines[0].clone()].concat());
    assert_eq!(at(&found), (BreakKind::Reordered, 4, Some(0)), "{found}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the bytes, the verifier answers; it never panics.
        #[test]
        fn any_bytes_get_an_answer(text in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'{'), Just(b'"'), any::<u8>()], 0..400)) {
            let mut verifier = Verifier::new(VerifyOptions { skip_other_lines: text.len() % 2 == 0, ..VerifyOptions::default() });
            verifier.feed_text("x", &text);
            let _ = verifier.finish();
        }

        /// Changing any byte of any line but the chain's last is found.
        #[test]
        fn any_changed_byte_before_the_last_line_is_found(line in 0usize..5, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut lines: Vec<Vec<u8>> = chain("a", 6, None).into_iter().map(String::into_bytes).collect();
            let target = &mut lines[line];
            let at = at.index(target.len() - 1);
            prop_assume!(target[at] != byte);
            target[at] = byte;
            let mut verifier = Verifier::new(VerifyOptions::default());
            verifier.feed_text("x", &lines.concat());
            prop_assert!(verifier.finish().is_err());
        }

        /// Removing any line but the last, or swapping any two, is found; a swap at the first line out of place.
        #[test]
        fn removed_or_swapped_lines_are_found(a in 0usize..8, b in 0usize..8) {
            let lines = chain("a", 8, None);
            let mut removed = lines.clone();
            prop_assume!(a < 7);
            removed.remove(a);
            prop_assert!(verify(removed.concat()).is_err());
            prop_assume!(a != b);
            let mut swapped = lines;
            swapped.swap(a, b);
            let found = verify(swapped.concat()).unwrap_err();
            prop_assert_eq!(found.line as usize, a.min(b) + 1, "the first line out of place is named: {}", found);
        }
    }
}
