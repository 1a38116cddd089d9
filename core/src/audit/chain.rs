//! The hash chain that makes the audit log tamper-evident.
//!
//! Every line a gateway process writes ends with three fields it appends as it writes the line, in the
//! order the lines reach the log: `chain` (this process's chain id), `seq` (0, 1, 2…) and `prev_hash`
//! (the SHA-256, in lowercase hex, of the previous line of the chain: its exact bytes without the newline;
//! [`GENESIS`] for the first line). The first line, seq 0, is the chain's start record
//! (`event: chain_start`), which names the process. Changing, removing or reordering any line of a chain
//! breaks a link that [`super::verify`] finds.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of a chain's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The SHA-256 of one line (its bytes without the newline).
pub type LineHash = [u8; 32];

/// What `chain_start` lines say about the process that began the chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainStart {
    /// The gateway replica (`--gateway-id`; `dev` for `toolwarden dev`).
    pub gateway: String,
    pub pid: u32,
    /// The toolwarden version that wrote the chain.
    pub version: String,
    /// The last line of the audit file this process went on appending to, when that line belonged to a
    /// chain: `audit verify` then checks that the previous chain still reaches it (its tail was not cut).
    pub continues: Option<ChainPoint>,
}

/// One line of a chain, named by its chain, sequence number and hash: an anchor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    pub chain: String,
    pub seq: u64,
    /// The line's SHA-256, hex.
    pub hash: String,
}

/// The writer's side: seals each serialised record into the next line of one chain.
#[derive(Debug)]
pub struct ChainWriter {
    id: String,
    next_seq: u64,
    prev: LineHash,
}

/// Chain ids are written into lines unescaped, so they are limited to characters JSON never escapes.
#[derive(Debug, thiserror::Error)]
#[error("audit chain id {0:?} must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")]
pub struct BadChainId(String);

impl ChainWriter {
    pub fn new(id: &str) -> Result<ChainWriter, BadChainId> {
        let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(BadChainId(id.to_owned()));
        }
        Ok(ChainWriter { id: id.to_owned(), next_seq: 0, prev: [0; 32] })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sequence number and hash of the last line sealed, if any: what an operator anchors.
    pub fn head(&self) -> Option<(u64, LineHash)> {
        self.next_seq.checked_sub(1).map(|seq| (seq, self.prev))
    }

    /// Turns the JSON object serde_json wrote at `buffer[start..]` into the chain's next line: appends
    /// `chain`, `seq` and `prev_hash` before its closing brace, hashes the line and ends it with a newline.
    /// No allocation: the buffer grows in place.
    pub fn seal(&mut self, buffer: &mut Vec<u8>, start: usize) {
        debug_assert_eq!(buffer.last(), Some(&b'}'), "a serialised JSON object");
        buffer.pop();
        // `{}` becomes `{"chain":…`, anything else `{…,"chain":…`.
        if buffer.len() > start + 1 {
            buffer.push(b',');
        }
        buffer.extend_from_slice(b"\"chain\":\"");
        buffer.extend_from_slice(self.id.as_bytes());
        buffer.extend_from_slice(b"\",\"seq\":");
        push_decimal(buffer, self.next_seq);
        buffer.extend_from_slice(b",\"prev_hash\":\"");
        push_hex(buffer, &self.prev);
        buffer.extend_from_slice(b"\"}");
        self.prev = line_hash(&buffer[start..]);
        self.next_seq += 1;
        buffer.push(b'\n');
    }
}

pub fn line_hash(line: &[u8]) -> LineHash {
    Sha256::digest(line).into()
}

pub fn to_hex(hash: &LineHash) -> String {
    let mut out = Vec::with_capacity(64);
    push_hex(&mut out, hash);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The hash a `prev_hash` or anchor spells: exactly 64 lowercase hex digits.
pub fn parse_hex(text: &str) -> Option<LineHash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

fn push_hex(buffer: &mut Vec<u8>, hash: &LineHash) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in hash {
        buffer.push(DIGITS[usize::from(b >> 4)]);
        buffer.push(DIGITS[usize::from(b & 0xf)]);
    }
}

fn push_decimal(buffer: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buffer.extend_from_slice(&digits[i..]);
}

/// The chain fields of one line, read back.
#[derive(Debug)]
pub struct LineLink<'a> {
    pub chain: Cow<'a, str>,
    pub seq: u64,
    pub prev_hash: LineHash,
    pub event: Option<Cow<'a, str>>,
    pub chain_start: Option<ChainStart>,
    pub timestamp: Option<Cow<'a, str>>,
}

/// Why a line is not a chain line.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LineProblem {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("a JSON line without the chain field(s) {0} (not written by a gateway, written before audit lines were chained, or rewritten by a log pipeline)")]
    MissingFields(String),
    #[error("`prev_hash` is not a SHA-256 in hex (64 lowercase hex digits): {0:?}")]
    BadPrevHash(String),
}

#[derive(Deserialize)]
struct RawLink<'a> {
    #[serde(borrow, default)]
    chain: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    prev_hash: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    chain_start: Option<ChainStart>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

/// Reads the chain fields of `line` (without its newline). Other fields are skipped, not checked: the
/// hash covers them.
pub fn parse_line(line: &[u8]) -> Result<LineLink<'_>, LineProblem> {
    // The writer's lines begin with `{`; serde would also read a struct from an array, by position.
    if line.first() != Some(&b'{') {
        let problem = match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            Ok(_) => "a JSON value that is not an object".to_owned(),
            Err(e) => json_error(&e),
        };
        return Err(LineProblem::NotJson(problem));
    }
    let raw: RawLink = serde_json::from_slice(line).map_err(|e| LineProblem::NotJson(json_error(&e)))?;
    let missing: Vec<String> = [("chain", raw.chain.is_none()), ("seq", raw.seq.is_none()), ("prev_hash", raw.prev_hash.is_none())]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(format!("`{name}`")))
        .collect();
    let (Some(chain), Some(seq), Some(prev)) = (raw.chain, raw.seq, raw.prev_hash) else {
        return Err(LineProblem::MissingFields(missing.join(", ")));
    };
    let prev_hash = parse_hex(&prev).ok_or_else(|| LineProblem::BadPrevHash(prev.chars().take(80).collect()))?;
    Ok(LineLink { chain, seq, prev_hash, event: raw.event, chain_start: raw.chain_start, timestamp: raw.timestamp })
}

/// serde_json's message with the position as a byte column: the line is always line 1 of its JSON.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(cut) => format!("{} at byte {}", &text[..cut], e.column()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(writer: &mut ChainWriter, json: &str) -> Vec<u8> {
        let mut buffer = b"left alone\n".to_vec();
        let start = buffer.len();
        buffer.extend_from_slice(json.as_bytes());
        writer.seal(&mut buffer, start);
        assert!(buffer.starts_with(b"left alone\n"));
        buffer[start..].to_vec()
    }

    #[test]
    fn each_line_links_to_the_exact_bytes_of_the_line_before() {
        let mut writer = ChainWriter::new("c1").unwrap();
        assert_eq!(writer.head(), None);
        let first = sealed(&mut writer, r#"{"event":"chain_start"}"#);
        assert_eq!(String::from_utf8_lossy(&first), format!("{{\"event\":\"chain_start\",\"chain\":\"c1\",\"seq\":0,\"prev_hash\":\"{GENESIS}\"}}\n"));
        let second = sealed(&mut writer, "{}");
        let first_hash = line_hash(&first[..first.len() - 1]);
        assert_eq!(String::from_utf8_lossy(&second), format!("{{\"chain\":\"c1\",\"seq\":1,\"prev_hash\":\"{}\"}}\n", to_hex(&first_hash)));
        assert_eq!(writer.head(), Some((1, line_hash(&second[..second.len() - 1]))));

        let link = parse_line(&second[..second.len() - 1]).unwrap();
        assert_eq!((link.chain.as_ref(), link.seq, link.prev_hash), ("c1", 1, first_hash));
    }

    #[test]
    fn sequence_numbers_are_written_in_decimal() {
        let mut buffer = Vec::new();
        for n in [0, 7, 10, 99, 1_000_001, u64::MAX] {
            buffer.clear();
            push_decimal(&mut buffer, n);
            assert_eq!(buffer, n.to_string().as_bytes());
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_anything_else() {
        let hash = line_hash(b"x");
        assert_eq!(parse_hex(&to_hex(&hash)), Some(hash));
        assert_eq!(parse_hex(GENESIS), Some([0; 32]));
        for bad in ["", "abc", &to_hex(&hash).to_uppercase(), &format!("{}g", &to_hex(&hash)[..63]), &format!("{}0", to_hex(&hash))] {
            assert_eq!(parse_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn chain_ids_that_would_need_escaping_are_refused() {
        for bad in ["", "a\"b", "a b", "ü", &"x".repeat(65)] {
            assert!(ChainWriter::new(bad).is_err(), "{bad:?}");
        }
        assert!(ChainWriter::new("gw-1_a.b").is_ok());
    }

    #[test]
    fn lines_that_are_not_chain_lines_say_why() {
        assert_eq!(parse_line(b"{\"seq\":1").unwrap_err(), LineProblem::NotJson("EOF while parsing an object at byte 8".into()));
        assert!(matches!(parse_line(b"hello"), Err(LineProblem::NotJson(_))));
        assert_eq!(parse_line(br#"["c",1,"00"]"#).unwrap_err(), LineProblem::NotJson("a JSON value that is not an object".into()));
        assert_eq!(parse_line(b" {}").unwrap_err(), LineProblem::NotJson("a JSON value that is not an object".into()));
        assert_eq!(parse_line(br#"{"event":"decision","seq":3}"#).unwrap_err(), LineProblem::MissingFields("`chain`, `prev_hash`".into()));
        assert!(matches!(parse_line(br#"{"chain":"c","seq":"3","prev_hash":"00"}"#), Err(LineProblem::NotJson(e)) if e.contains("invalid type")));
        assert_eq!(parse_line(br#"{"chain":"c","seq":3,"prev_hash":"00"}"#).unwrap_err(), LineProblem::BadPrevHash("00".into()));
        let twice = format!(r#"{{"chain":"c","seq":3,"seq":4,"prev_hash":"{GENESIS}"}}"#);
        assert!(matches!(parse_line(twice.as_bytes()), Err(LineProblem::NotJson(e)) if e.contains("duplicate field")));
    }
}
