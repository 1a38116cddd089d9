//! Redaction of the tool's own credentials from everything a call returns. The worker is the one place
//! that knows every value it injected (env, file and header credentials), so it removes them from stdout,
//! stderr tails, HTTP bodies and MCP results before a result leaves it.
//!
//! Each value is found in the spellings a program is likely to print: as is; percent-encoded (any subset
//! of its characters, either hex case, `+` for a space); JSON-escaped (`\"`, `\n`, `\u00e9`, surrogate
//! pairs); hex (either case); base64 (standard and URL-safe, padded or not, at any of the three byte
//! alignments, so the value is found inside a longer encoded text too). A program that transforms its
//! credential deliberately (reversed, encrypted, split) is not stopped: this catches accidents and echoes.
//!
//! Values shorter than [`MIN_SECRET_BYTES`] are not redacted: they cannot be told apart from ordinary
//! text (a 3-digit value would blank every number that contains it) and are guessable anyway. Encoded
//! spellings shorter than [`MIN_ENCODED_CHARS`] are skipped for the same reason.

/// What a redacted value is replaced with.
pub const MARKER: &str = "[redacted]";
/// Shortest value that is redacted.
pub const MIN_SECRET_BYTES: usize = 4;
/// Shortest hex or base64 spelling that is searched for.
pub const MIN_ENCODED_CHARS: usize = 8;

/// The credential values of one call and their encoded spellings.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Values, matched with their percent- and JSON-escaped spellings.
    values: Vec<Vec<char>>,
    /// Exact substrings: base64 cores.
    literal: Vec<String>,
    /// Lowercase hex, matched case-insensitively.
    hex: Vec<String>,
    /// Longest text one match can span, in bytes.
    margin: usize,
}

impl Redactor {
    /// A redactor for `values`; ones shorter than [`MIN_SECRET_BYTES`] are left out.
    pub fn new<S: AsRef<str>>(values: &[S]) -> Redactor {
        let mut r = Redactor::default();
        for value in values.iter().map(AsRef::as_ref).filter(|v| v.len() >= MIN_SECRET_BYTES) {
            let chars: Vec<char> = value.chars().collect();
            if r.values.contains(&chars) {
                continue;
            }
            // A character is at most 12 bytes spelled out (a surrogate pair: `\ud83d\ude00`).
            r.margin = r.margin.max(12 * chars.len());
            r.values.push(chars);
            let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
            if hex.len() >= MIN_ENCODED_CHARS {
                r.hex.push(hex);
            }
            // The value encoded on its own, padded and not (overlapping matches merge); then the cores.
            let unpadded = base64(value.as_bytes());
            let padded = format!("{unpadded}{}", "=".repeat((4 - unpadded.len() % 4) % 4));
            let whole = [padded.chars().map(url_safe).collect(), unpadded.chars().map(url_safe).collect(), padded, unpadded];
            for core in whole.into_iter().chain(base64_cores(value.as_bytes())) {
                if core.len() >= MIN_ENCODED_CHARS && !r.literal.contains(&core) {
                    r.literal.push(core);
                }
            }
        }
        r
    }

    /// Whether there is anything to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Bytes to read past an output cap so a value that straddles the cap is still seen whole.
    pub fn margin(&self) -> usize {
        self.margin
    }

    /// `text` with every spelling of every value replaced by [`MARKER`]; whether anything was.
    pub fn redact(&self, text: &str) -> (String, bool) {
        if self.is_empty() {
            return (text.to_string(), false);
        }
        let ranges = merge(self.matches(text));
        if ranges.is_empty() {
            return (text.to_string(), false);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in ranges {
            out.push_str(&text[at..start]);
            out.push_str(MARKER);
            at = end;
        }
        out.push_str(&text[at..]);
        (out, true)
    }

    /// Redacts every string (and object key) inside a JSON value, in place; whether anything was.
    pub fn redact_json(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(s) => {
                let (clean, hit) = self.redact(s);
                *s = clean;
                hit
            }
            Value::Array(items) => items.iter_mut().fold(false, |hit, v| self.redact_json(v) | hit),
            Value::Object(map) => {
                let mut hit = false;
                let entries = std::mem::take(map);
                for (key, mut v) in entries {
                    let (key, key_hit) = self.redact(&key);
                    hit |= key_hit | self.redact_json(&mut v);
                    map.insert(key, v);
                }
                hit
            }
            _ => false,
        }
    }

    /// Byte ranges of `text` that spell a value (on character boundaries).
    fn matches(&self, text: &str) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for pattern in &self.literal {
            found.extend(text.match_indices(pattern.as_str()).map(|(i, m)| (i, i + m.len())));
        }
        if !self.hex.is_empty() {
            // ASCII lowercasing keeps every byte offset.
            let lower = text.to_ascii_lowercase();
            for pattern in &self.hex {
                found.extend(lower.match_indices(pattern.as_str()).map(|(i, m)| (i, i + m.len())));
            }
        }
        let bytes = text.as_bytes();
        for value in &self.values {
            let first = value[0];
            let mut start = 0;
            while start < bytes.len() {
                if !text.is_char_boundary(start) {
                    start += 1;
                    continue;
                }
                let b = bytes[start];
                let may_start = b == b'%' || b == b'\\' || (b == b'+' && first == ' ') || text[start..].starts_with(first);
                if may_start
                    && let Some(end) = spelled(value, bytes, start)
                {
                    found.push((start, end));
                    start = end;
                    continue;
                }
                start += 1;
            }
        }
        found
    }
}

/// Sorted, overlapping or touching ranges joined.
fn merge(mut ranges: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Where a spelling of `value` that starts at `at` ends, if one does. Each character may be written as
/// itself, percent-encoded, JSON-escaped, or (a space) as `+`; spellings may mix.
fn spelled(value: &[char], text: &[u8], at: usize) -> Option<usize> {
    let Some((&c, rest)) = value.split_first() else { return Some(at) };
    let mut utf8 = [0u8; 4];
    let literal = c.encode_utf8(&mut utf8).as_bytes();
    // Alternatives in order; backtracking matters only for `%`, `\` and `+` themselves.
    if text[at..].starts_with(literal)
        && let Some(end) = spelled(rest, text, at + literal.len())
    {
        return Some(end);
    }
    if c == ' ' && text.get(at) == Some(&b'+')
        && let Some(end) = spelled(rest, text, at + 1)
    {
        return Some(end);
    }
    if let Some(len) = percent_encoded(literal, &text[at..])
        && let Some(end) = spelled(rest, text, at + len)
    {
        return Some(end);
    }
    if let Some(len) = json_escaped(c, &text[at..])
        && let Some(end) = spelled(rest, text, at + len)
    {
        return Some(end);
    }
    None
}

/// Length of `%hh%hh…` spelling the UTF-8 bytes of one character at the start of `text`.
fn percent_encoded(bytes: &[u8], text: &[u8]) -> Option<usize> {
    let mut at = 0;
    for &b in bytes {
        let [p, hi, lo] = text.get(at..at + 3)? else { return None };
        if *p != b'%' || hex_value(*hi)? != b >> 4 || hex_value(*lo)? != b & 0xf {
            return None;
        }
        at += 3;
    }
    Some(at)
}

/// Length of a JSON escape of `c` at the start of `text`: a short escape or `\uXXXX` (pairs for
/// characters beyond the BMP), hex in either case.
fn json_escaped(c: char, text: &[u8]) -> Option<usize> {
    if text.first() != Some(&b'\\') {
        return None;
    }
    let short = match c {
        '"' => Some(b'"'),
        '\\' => Some(b'\\'),
        '/' => Some(b'/'),
        '\n' => Some(b'n'),
        '\r' => Some(b'r'),
        '\t' => Some(b't'),
        '\u{8}' => Some(b'b'),
        '\u{c}' => Some(b'f'),
        _ => None,
    };
    if short.is_some() && text.get(1).copied() == short {
        return Some(2);
    }
    let mut units = [0u16; 2];
    let mut at = 0;
    for unit in c.encode_utf16(&mut units).iter() {
        let escape = text.get(at..at + 6)?;
        if escape[0] != b'\\' || escape[1] != b'u' {
            return None;
        }
        let mut v: u16 = 0;
        for &h in &escape[2..] {
            v = (v << 4) | u16::from(hex_value(h)?);
        }
        if v != *unit {
            return None;
        }
        at += 6;
    }
    Some(at)
}

fn hex_value(h: u8) -> Option<u8> {
    match h {
        b'0'..=b'9' => Some(h - b'0'),
        b'a'..=b'f' => Some(h - b'a' + 10),
        b'A'..=b'F' => Some(h - b'A' + 10),
        _ => None,
    }
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 of `data` (standard alphabet, no padding).
fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(STANDARD[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn url_safe(c: char) -> char {
    match c {
        '+' => '-',
        '/' => '_',
        c => c,
    }
}

/// The base64 characters that depend on `value` alone, at each of the three alignments it can have in a
/// longer encoded text, in the standard and the URL-safe alphabet. Padding never falls inside them, so
/// padded and unpadded encodings both contain them.
fn base64_cores(value: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for offset in 0..3usize {
        let mut data = vec![0u8; offset];
        data.extend_from_slice(value);
        let encoded = base64(&data);
        // Characters whose six bits lie wholly inside the value's bits.
        let first = (8 * offset).div_ceil(6);
        let end = (8 * (offset + value.len())) / 6;
        if end <= first {
            continue;
        }
        let core = &encoded[first..end];
        cores.push(core.to_string());
        let url: String = core.chars().map(url_safe).collect();
        if url != core {
            cores.push(url);
        }
    }
    cores
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "gh-s3cret/Tok+en é";

    fn redacted(text: &str) -> String {
        let (out, hit) = Redactor::new(&[SECRET]).redact(text);
        assert!(hit, "nothing redacted in {text:?}");
        assert!(!out.contains("s3cret"), "{out}");
        out
    }

    fn b64(data: &[u8], url: bool, pad: bool) -> String {
        let mut s = base64(data);
        if pad {
            while !s.len().is_multiple_of(4) {
                s.push('=');
            }
        }
        if url { s.replace('+', "-").replace('/', "_") } else { s }
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(b64(b"hello", false, true), "aGVsbG8=");
        assert_eq!(b64(b"\xfb\xff", false, true), "+/8=");
        assert_eq!(b64(b"\xfb\xff", true, false), "-_8");
    }

    #[test]
    fn the_value_is_found_in_every_likely_spelling() {
        assert_eq!(redacted(&format!("token={SECRET}!")), "token=[redacted]!");
        // Percent-encoded, as encodeURIComponent, Python's quote and form encoding write it.
        assert_eq!(redacted("q=gh-s3cret%2FTok%2Ben%20%C3%A9&x"), "q=[redacted]&x");
        assert_eq!(redacted("q=gh-s3cret%2ftok".replace("tok", "Tok%2ben+%c3%a9").as_str()), "q=[redacted]");
        // JSON-escaped, with serde's and Python's (ASCII-only) escaping.
        assert_eq!(redacted(&serde_json::to_string(SECRET).unwrap()), "\"[redacted]\"");
        assert_eq!(redacted(r#"{"t": "gh-s3cret\/Tok+en \u00e9"}"#), r#"{"t": "[redacted]"}"#);
        // Hex in either case.
        let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(redacted(&format!("<{hex}>")), "<[redacted]>");
        assert_eq!(redacted(&format!("<{}>", hex.to_uppercase())), "<[redacted]>");
    }

    #[test]
    fn base64_is_found_in_both_alphabets_with_or_without_padding_and_at_any_alignment() {
        for prefix in ["", "u", "us", "user:"] {
            let data = format!("{prefix}{SECRET}");
            for (url, pad) in [(false, true), (false, false), (true, true), (true, false)] {
                let encoded = b64(data.as_bytes(), url, pad);
                let out = redacted(&format!("Authorization: Basic {encoded}"));
                // Left: the prefix's characters and one that mixes bits; right: one such and padding.
                let (before, after) = out.strip_prefix("Authorization: Basic ").unwrap().split_once(MARKER).unwrap();
                assert!(before.len() <= (prefix.len() * 4).div_ceil(3) + 1, "{prefix:?} {url} {pad}: {out}");
                assert!(after.len() <= 3, "{prefix:?} {url} {pad}: {out}");
            }
        }
    }

    #[test]
    fn a_value_encoded_on_its_own_is_redacted_whole_with_its_padding() {
        for (url, pad) in [(false, true), (false, false), (true, true), (true, false)] {
            assert_eq!(redacted(&format!("<{}>", b64(SECRET.as_bytes(), url, pad))), "<[redacted]>", "{url} {pad}");
        }
    }

    #[test]
    fn several_values_and_overlaps_become_one_marker_each() {
        let r = Redactor::new(&["abcdefgh", "efghijkl", "zz"]);
        assert_eq!(r.redact("x abcdefghijkl y abcdefgh").0, "x [redacted] y [redacted]");
        assert_eq!(r.redact("zz stays: too short to redact").0, "zz stays: too short to redact");
        assert!(!r.redact("nothing here").1);
    }

    #[test]
    fn short_values_are_not_redacted_and_encodings_need_eight_characters() {
        let r = Redactor::new(&["abc", ""]);
        assert!(r.is_empty());
        assert_eq!(r.redact("abc").0, "abc");
        let four = Redactor::new(&["wxyz"]);
        assert_eq!(four.redact("wxyz 7778797a").0, "[redacted] [redacted]", "hex of 4 bytes has 8 characters");
        assert!(four.literal.iter().all(|c| c.len() >= MIN_ENCODED_CHARS));
    }

    #[test]
    fn json_values_are_redacted_in_strings_and_keys() {
        let r = Redactor::new(&[SECRET]);
        let mut v = serde_json::json!({"a": [SECRET, 1, {SECRET: true}], "b": "fine"});
        assert!(r.redact_json(&mut v));
        assert_eq!(v, serde_json::json!({"a": ["[redacted]", 1, {"[redacted]": true}], "b": "fine"}));
    }

    #[test]
    fn a_marker_is_never_partly_a_value_and_text_keeps_its_characters() {
        let r = Redactor::new(&["pässwörd"]);
        assert_eq!(r.redact("é pässwörd é").0, "é [redacted] é");
        assert_eq!(r.redact("%%%\\\\\\+++").0, "%%%\\\\\\+++");
    }
}
