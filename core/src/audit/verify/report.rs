//! What verification reports: the first break, or a summary of each chain; and anchors, as printed
//! and as given back.

use std::fmt;

use crate::audit::chain::{self, LineHash};

/// A line known from outside the files (`--anchor CHAIN:SEQ:HASH`): that chain must reach that seq,
/// with that exact line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub chain: String,
    pub seq: u64,
    pub hash: LineHash,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(text: &str) -> Result<Anchor, String> {
        let mut parts = text.splitn(3, ':');
        let (Some(chain), Some(seq), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{text:?} is not CHAIN:SEQ:HASH (as `audit verify` prints it)"));
        };
        let seq = seq.parse().map_err(|_| format!("{text:?}: the sequence number {seq:?} is not a whole number"))?;
        let hash = chain::parse_hex(hash).ok_or_else(|| format!("{text:?}: the hash is not 64 lowercase hex digits"))?;
        Ok(Anchor { chain: chain.to_owned(), seq, hash })
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.chain, self.seq, chain::to_hex(&self.hash))
    }
}

/// What kind of tampering (or damage) a [`Break`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// Lines of a chain are missing (seqs skipped, or the tail that an anchor or a later chain saw).
    Removed,
    /// A line's bytes differ from what the next line of its chain recorded.
    Changed,
    /// A line is not where its seq says.
    Reordered,
    /// A chain's first line present is not its start record.
    MissingStart,
    /// The file ends in the middle of a line.
    CutOff,
    /// A line that is not a chained audit line.
    Garbled,
    /// A chain verifies on its own, but not against an anchor: rewritten from its start.
    Rewritten,
    /// An anchor's chain is not in the files.
    MissingChain,
}

/// The first line that breaks a chain: where, which chain and seq, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{detail}", self.file.as_ref().map(|f| format!("{f}:{}: ", self.line)).unwrap_or_default())]
pub struct Break {
    pub kind: BreakKind,
    pub file: Option<String>,
    /// 1-based; 0 with no file.
    pub line: u64,
    pub chain: Option<String>,
    pub seq: Option<u64>,
    pub detail: String,
}

/// What verified.
#[derive(Clone, Debug)]
pub struct Summary {
    pub files: Vec<String>,
    pub lines: u64,
    /// Lines passed over with [`VerifyOptions::skip_other_lines`], and where the first was.
    pub skipped: u64,
    pub first_skipped: Option<String>,
    pub chains: Vec<ChainSummary>,
}

#[derive(Clone, Debug)]
pub struct ChainSummary {
    pub id: String,
    /// From the start record, when it is in the files.
    pub started: Option<StartInfo>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub lines: u64,
    pub first: String,
    pub last: String,
    /// The last line's anchor: copy it elsewhere, pass it back with `--anchor`.
    pub head: Anchor,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct StartInfo {
    pub gateway: String,
    pub pid: u32,
    pub version: String,
    pub timestamp: String,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verified: {} chain(s), {} line(s) in {}", self.chains.len(), self.lines - self.skipped, self.files.join(", "))?;
        for c in &self.chains {
            match &c.started {
                Some(s) => writeln!(f, "chain {}: gateway {}, pid {}, toolwarden {}, started {}", c.id, s.gateway, s.pid, s.version, s.timestamp)?,
                None => writeln!(f, "chain {}:", c.id)?,
            }
            writeln!(f, "  seq {}–{} ({} line(s)), {} to {}", c.first_seq, c.last_seq, c.lines, c.first, c.last)?;
            for note in &c.notes {
                writeln!(f, "  {note}")?;
            }
            writeln!(f, "  last line, to anchor elsewhere: {}", c.head)?;
        }
        if let Some(first) = &self.first_skipped {
            writeln!(f, "skipped {} line(s) that are not chained audit lines (the first at {first})", self.skipped)?;
        }
        Ok(())
    }
}
