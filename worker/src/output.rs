//! Bounded output capture: the head of stdout up to the tool's cap (the rest is read and counted, so the
//! child never blocks on a full pipe), and the tail of stderr.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::redact::Redactor;

/// How much of stderr is kept (the tail: error messages are usually at the end).
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// The first `cap` bytes of a stream, and how many bytes it had in all.
#[derive(Debug, Default)]
pub struct Head {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl Head {
    pub fn truncated_bytes(&self) -> u64 {
        self.total - self.bytes.len() as u64
    }
}

/// Reads `reader` to the end, keeping the first `cap` bytes; stops counting after `discard_limit` bytes
/// (then the stream is left unread).
pub async fn read_head(mut reader: impl AsyncRead + Unpin, cap: usize, discard_limit: u64) -> Head {
    let mut head = Head { bytes: Vec::with_capacity(cap.min(64 * 1024)), total: 0 };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(head.bytes.len());
                head.bytes.extend_from_slice(&buf[..n.min(room)]);
                head.total += n as u64;
                if head.total >= discard_limit {
                    break;
                }
            }
        }
    }
    head
}

/// Reads `reader` to the end, keeping the last `cap` bytes.
pub async fn read_tail(mut reader: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut tail = VecDeque::with_capacity(cap);
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(cap);
                tail.drain(..excess);
            }
        }
    }
    tail.into()
}

/// What a call shows of a captured stream: its credentials redacted, then cut at the cap.
#[derive(Debug, Default)]
pub struct Shown {
    pub text: String,
    /// Bytes of the stream not in `text` (left unread, or cut).
    pub truncated_bytes: u64,
    pub redacted: bool,
}

/// `bytes` are the first bytes of a stream of `total` bytes, read up to the cap plus the redactor's
/// margin, so a credential that straddles the cap is seen whole before the text is cut.
pub fn shown(bytes: &[u8], total: u64, cap: usize, redactor: &Redactor) -> Shown {
    let decoded = text(bytes);
    let dropped = bytes.len().saturating_sub(decoded.len()) as u64;
    let (clean, redacted) = redactor.redact(&decoded);
    let (text, cut) = cap_text(clean, cap);
    Shown { text, truncated_bytes: total.saturating_sub(bytes.len() as u64) + dropped + cut, redacted }
}

/// The last `keep` bytes (on a character boundary) of a stream's tail, read `keep` plus the redactor's
/// margin long, with its credentials redacted; whether any were.
pub fn tail_shown(bytes: &[u8], keep: usize, redactor: &Redactor) -> (String, bool) {
    let decoded = String::from_utf8_lossy(bytes);
    let (mut clean, redacted) = redactor.redact(&decoded);
    if clean.len() > keep {
        let mut start = clean.len() - keep;
        while !clean.is_char_boundary(start) {
            start += 1;
        }
        clean.drain(..start);
    }
    (clean, redacted)
}

/// UTF-8 text of `bytes`, dropping an incomplete character at the end (cut by the cap) and replacing
/// invalid sequences.
pub fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Cuts `s` to at most `cap` bytes on a character boundary; returns the kept text and the bytes cut.
pub fn cap_text(mut s: String, cap: usize) -> (String, u64) {
    if s.len() <= cap {
        return (s, 0);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = (s.len() - end) as u64;
    s.truncate(end);
    (s, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn head_keeps_the_cap_and_counts_the_rest() {
        let data = vec![b'x'; 100_000];
        let head = read_head(&data[..], 10, u64::MAX).await;
        assert_eq!(head.bytes.len(), 10);
        assert_eq!(head.total, 100_000);
        assert_eq!(head.truncated_bytes(), 99_990);
    }

    #[tokio::test]
    async fn tail_keeps_the_end() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(&data[..], 100).await;
        assert_eq!(tail, data[data.len() - 100..]);
    }

    #[test]
    fn a_credential_across_the_cap_is_redacted_before_the_cut() {
        let redactor = Redactor::new(&["0123456789abcdef"]);
        let mut stream = vec![b'x'; 95];
        stream.extend_from_slice(b"0123456789abcdef and more");
        // Read as exec does: the cap (100) plus the margin.
        let read = &stream[..stream.len().min(100 + redactor.margin())];
        let out = shown(read, stream.len() as u64, 100, &redactor);
        assert!(out.redacted);
        assert!(out.text.ends_with("xxx[reda") && !out.text.contains("01234"), "{}", out.text);
        let tail = [b"0123456789abcdef".as_slice(), &[b'y'; 10]].concat();
        assert_eq!(tail_shown(&tail, 12, &redactor), ("d]yyyyyyyyyy".to_string(), true));
        let plain = shown(b"hello", 5, 100, &Redactor::default());
        assert_eq!((plain.text.as_str(), plain.truncated_bytes, plain.redacted), ("hello", 0, false));
    }

    #[test]
    fn text_drops_a_character_cut_in_half() {
        let bytes = "héllo".as_bytes();
        assert_eq!(text(&bytes[..2]), "h");
        assert_eq!(cap_text("héllo".into(), 2), ("h".into(), 5));
    }
}
