//! Checks audit logs line by line, without holding them in memory: each chain's lines must follow on
//! from its start record, seq after seq, each linking to the exact bytes of the one before. Chains of
//! several gateway processes may be interleaved in one file (a log collector shipping replicas
//! together) or spread over several files (rotated files, named oldest first): lines are matched to
//! their chain by its id.
//!
//! Verification stops at the first line that breaks a chain, and names it. Telling a changed line from
//! the changed link after it, or a removed line from a moved one, may take a look further on in the same
//! chain; that look-ahead is the only state kept besides each chain's last line.

mod report;

use std::collections::HashMap;

pub use report::{Anchor, Break, BreakKind, ChainSummary, StartInfo, Summary};

use super::chain::{self, LineHash, LineLink};

/// A line, as the index of its file and its 1-based line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    file: usize,
    line: u64,
}

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Chains may begin after their start record (older lines rotated away and gone): a chain's first
    /// line present is trusted, and the summary says so.
    pub partial: bool,
    /// Lines that are not chained audit lines (another program's output on the same stream) are counted
    /// and passed over instead of failing verification. A chain line lost among them still breaks its
    /// chain.
    pub skip_other_lines: bool,
    pub anchors: Vec<Anchor>,
}

struct ChainState {
    first_seq: u64,
    first_at: Location,
    last_seq: u64,
    last_at: Location,
    last_hash: LineHash,
    lines: u64,
    started: Option<StartInfo>,
    notes: Vec<String>,
}

/// Where an expected line was recorded.
enum Source {
    Anchor(Anchor),
    /// The start record of chain `chain`, at `at`, saw this line as the file's last.
    Continues { chain: String, at: Location },
}

struct Expectation {
    chain: String,
    seq: u64,
    hash: LineHash,
    source: Source,
    met: bool,
}

/// A break found whose cause a later line of the same chain tells.
enum Suspect {
    /// `this` follows `prev` in seq but does not link to it: `prev` was changed if the chain's next line
    /// links to `this`, else `this` was.
    Link { chain: String, prev: Location, prev_seq: u64, this: Location, this_hash: LineHash },
    /// `this` skips the seqs before it (from `prev_seq + 1`, or 0 when it is the chain's first line):
    /// removed, unless one of them comes later (reordered).
    Gap { chain: String, prev: Option<(Location, u64)>, this: Location, this_seq: u64 },
}

enum State {
    Checking,
    Resolving(Suspect),
    Broken(Break),
}

pub struct Verifier {
    options: VerifyOptions,
    files: Vec<String>,
    chains: HashMap<String, ChainState>,
    /// Chain ids in the order they first appear.
    order: Vec<String>,
    expectations: Vec<Expectation>,
    /// Indexes into `expectations` not met yet, by chain.
    pending: HashMap<String, Vec<usize>>,
    lines: u64,
    skipped: u64,
    first_skipped: Option<Location>,
    state: State,
}

impl Verifier {
    pub fn new(mut options: VerifyOptions) -> Verifier {
        let mut verifier = Verifier {
            options: VerifyOptions { anchors: Vec::new(), ..options.clone() },
            files: Vec::new(),
            chains: HashMap::new(),
            order: Vec::new(),
            expectations: Vec::new(),
            pending: HashMap::new(),
            lines: 0,
            skipped: 0,
            first_skipped: None,
            state: State::Checking,
        };
        for anchor in std::mem::take(&mut options.anchors) {
            verifier.expect(anchor.chain.clone(), anchor.seq, anchor.hash, Source::Anchor(anchor));
        }
        verifier
    }

    /// Lines fed from now on are this file's.
    pub fn begin_file(&mut self, name: impl Into<String>) {
        self.files.push(name.into());
    }

    /// Checks line `number` (1-based) of the current file: its bytes without the newline, and whether a
    /// newline ended it. Returns false once the outcome is known: the caller may stop reading.
    pub fn feed(&mut self, number: u64, line: &[u8], terminated: bool) -> bool {
        assert!(!self.files.is_empty(), "begin_file before feed");
        let at = Location { file: self.files.len() - 1, line: number };
        match self.state {
            State::Checking => self.check(at, line, terminated),
            State::Resolving(_) => self.resolve(at, line),
            State::Broken(_) => {}
        }
        !matches!(self.state, State::Broken(_))
    }

    /// Feeds a whole file held in memory (tests; the CLI streams with [`Verifier::feed`]).
    pub fn feed_text(&mut self, name: impl Into<String>, text: &[u8]) -> bool {
        self.begin_file(name);
        let mut lines = text.split(|&b| b == b'\n').peekable();
        let mut number = 0;
        while let Some(line) = lines.next() {
            let terminated = lines.peek().is_some();
            if !terminated && line.is_empty() {
                break;
            }
            number += 1;
            if !self.feed(number, line, terminated) {
                return false;
            }
        }
        true
    }

    /// The outcome, once every line was fed.
    pub fn finish(mut self) -> Result<Summary, Break> {
        match std::mem::replace(&mut self.state, State::Checking) {
            State::Broken(found) => return Err(found),
            State::Resolving(suspect) => return Err(self.conclude(suspect, None)),
            State::Checking => {}
        }
        self.check_unmet()?;
        let chains = self.order.iter().map(|id| self.chain_summary(id)).collect();
        Ok(Summary {
            files: self.files.clone(),
            lines: self.lines,
            skipped: self.skipped,
            first_skipped: self.first_skipped.map(|at| self.at(at)),
            chains,
        })
    }

    fn check(&mut self, at: Location, line: &[u8], terminated: bool) {
        self.lines += 1;
        if !terminated {
            let detail = format!(
                "the file ends in the middle of this line: no newline after its {} bytes (the gateway ends every line with one) — the file was cut off, or a gateway was still writing it",
                line.len()
            );
            return self.broken(at, BreakKind::CutOff, None, None, detail);
        }
        let link = match chain::parse_line(line) {
            Ok(link) => link,
            Err(problem) if self.options.skip_other_lines => {
                let _ = problem;
                self.skipped += 1;
                self.first_skipped.get_or_insert(at);
                return;
            }
            Err(problem) => {
                let hint = match problem {
                    chain::LineProblem::BadPrevHash(_) => "",
                    _ => " (--skip-other-lines passes over lines that are not audit lines)",
                };
                return self.broken(at, BreakKind::Garbled, None, None, format!("not a chained audit line: {problem}{hint}"));
            }
        };
        let hash = chain::line_hash(line);
        let Some(state) = self.chains.get_mut(link.chain.as_ref()) else {
            return self.first_line(at, &link, hash);
        };
        let (chain_id, seq) = (link.chain.as_ref(), link.seq);
        let (prev_seq, prev_at) = (state.last_seq, state.last_at);
        let follows = prev_seq.checked_add(1) == Some(seq);
        let linked = link.prev_hash == state.last_hash;
        if follows && linked {
            state.last_seq = seq;
            state.last_at = at;
            state.last_hash = hash;
            state.lines += 1;
            return self.met(chain_id, seq, hash, at);
        }
        let chain = chain_id.to_owned();
        if linked {
            let detail = format!(
                "chain {chain}: this line links to seq {prev_seq} ({}) but says it is seq {seq}, not {}: its seq was changed",
                self.at(prev_at),
                prev_seq.saturating_add(1)
            );
            self.broken(at, BreakKind::Changed, Some(chain), Some(seq), detail);
        } else if follows {
            self.state = State::Resolving(Suspect::Link { chain, prev: prev_at, prev_seq, this: at, this_hash: hash });
        } else if seq > prev_seq {
            self.state = State::Resolving(Suspect::Gap { chain, prev: Some((prev_at, prev_seq)), this: at, this_seq: seq });
        } else {
            let detail = format!("chain {chain} seq {seq} comes after seq {prev_seq} ({}): this line was moved or copied here", self.at(prev_at));
            self.broken(at, BreakKind::Reordered, Some(chain), Some(seq), detail);
        }
    }

    /// The first line of a chain in these files: its start record, or with `partial` any line.
    fn first_line(&mut self, at: Location, link: &LineLink<'_>, hash: LineHash) {
        let chain = link.chain.clone().into_owned();
        let seq = link.seq;
        let is_start = link.event.as_deref() == Some("chain_start");
        let genesis = link.prev_hash == [0; 32];
        if seq == 0 && !genesis {
            let detail = format!("chain {chain} seq 0 does not link to the genesis hash ({}): the line was changed", chain::GENESIS);
            return self.broken(at, BreakKind::Changed, Some(chain), Some(0), detail);
        }
        if seq == 0 && !is_start {
            let event = link.event.as_deref().unwrap_or("(none)");
            let detail = format!("chain {chain} seq 0 is a {event:?} line, not the chain's start record: the line was changed");
            return self.broken(at, BreakKind::Changed, Some(chain), Some(0), detail);
        }
        if seq != 0 && (is_start || genesis) {
            let detail = format!("chain {chain} begins with a start record (genesis link) numbered seq {seq}, not 0: the line was changed");
            return self.broken(at, BreakKind::Changed, Some(chain), Some(seq), detail);
        }
        if seq != 0 && !self.options.partial {
            self.state = State::Resolving(Suspect::Gap { chain, prev: None, this: at, this_seq: seq });
            return;
        }
        let mut state = ChainState { first_seq: seq, first_at: at, last_seq: seq, last_at: at, last_hash: hash, lines: 1, started: None, notes: Vec::new() };
        if seq != 0 {
            state.notes.push(format!("begins at seq {seq}: its start record and the lines before it are not in these files (--partial)"));
        }
        if is_start && let Some(start) = &link.chain_start {
            state.started = Some(StartInfo {
                gateway: start.gateway.clone(),
                pid: start.pid,
                version: start.version.clone(),
                timestamp: link.timestamp.as_deref().unwrap_or_default().to_owned(),
            });
        }
        self.chains.insert(chain.clone(), state);
        self.order.push(chain.clone());
        self.met(&chain, seq, hash, at);
        if let Some(previous) = link.chain_start.as_ref().and_then(|s| s.continues.as_ref()) {
            match chain::parse_hex(&previous.hash) {
                Some(h) => self.expect(previous.chain.clone(), previous.seq, h, Source::Continues { chain: chain.clone(), at }),
                None => self.note(&chain, format!("its start record names chain {} seq {} with an unreadable hash", previous.chain, previous.seq)),
            }
        }
    }

    /// Registers a line that must be in the files; checks it at once against a chain already past it.
    fn expect(&mut self, chain: String, seq: u64, hash: LineHash, source: Source) {
        let index = self.expectations.len();
        self.expectations.push(Expectation { chain: chain.clone(), seq, hash, source, met: false });
        if let Some(state) = self.chains.get(&chain) {
            let (last_seq, last_hash, last_at, first_seq) = (state.last_seq, state.last_hash, state.last_at, state.first_seq);
            if last_seq == seq {
                return self.compare(index, last_hash, last_at);
            }
            if first_seq > seq {
                self.expectations[index].met = true;
                let note = format!("{} names seq {seq} of chain {chain}, which begins later in these files: not checked", self.source(index));
                return self.note_for(index, note);
            }
            if last_seq > seq {
                // Passed already: the chain's own links vouch for its lines up to its last.
                self.expectations[index].met = true;
                return self.note_for(index, format!("continues chain {chain} (its seq {seq} is in these files)"));
            }
        }
        self.pending.entry(chain).or_default().push(index);
    }

    /// Checks the expectations of (`chain`, `seq`) against a line accepted into its chain.
    fn met(&mut self, chain: &str, seq: u64, hash: LineHash, at: Location) {
        if self.pending.is_empty() {
            return;
        }
        let Some(waiting) = self.pending.get(chain) else { return };
        let due: Vec<usize> = waiting.iter().copied().filter(|&i| self.expectations[i].seq == seq).collect();
        for index in due {
            self.compare(index, hash, at);
        }
    }

    fn compare(&mut self, index: usize, hash: LineHash, at: Location) {
        let expected = &mut self.expectations[index];
        expected.met = true;
        let (chain, seq, wanted) = (expected.chain.clone(), expected.seq, expected.hash);
        if let Some(waiting) = self.pending.get_mut(&chain) {
            waiting.retain(|&i| i != index);
            if waiting.is_empty() {
                self.pending.remove(&chain);
            }
        }
        if hash == wanted {
            let note = match &self.expectations[index].source {
                Source::Continues { .. } => format!("continues chain {chain} at seq {seq}: checked"),
                Source::Anchor(anchor) => format!("--anchor {anchor}: checked"),
            };
            return self.note_for(index, note);
        }
        let detail = format!(
            "chain {chain} seq {seq} is not the line {} recorded (hash {}, this line's is {}): this line was changed, or the chain rewritten up to it",
            self.source(index),
            chain::to_hex(&wanted),
            chain::to_hex(&hash)
        );
        self.broken(at, BreakKind::Rewritten, Some(chain), Some(seq), detail);
    }

    /// Expectations still unmet once every line was read: their chain's tail, or the chain, is missing.
    fn check_unmet(&mut self) -> Result<(), Break> {
        for index in 0..self.expectations.len() {
            let e = &self.expectations[index];
            if e.met {
                continue;
            }
            let (chain, seq) = (e.chain.clone(), e.seq);
            match self.chains.get(&chain) {
                Some(state) if state.first_seq > seq => {
                    let note = format!("{} names seq {seq}, before this chain's first line in these files: not checked", self.source(index));
                    self.note_for(index, note);
                }
                Some(state) => {
                    let (last_seq, last_at) = (state.last_seq, state.last_at);
                    let detail = format!(
                        "chain {chain} ends here at seq {last_seq}, but {} recorded its seq {seq}: the {} line(s) after this one (seq {}–{seq}) were removed",
                        self.source(index),
                        seq - last_seq,
                        last_seq + 1
                    );
                    return Err(self.make_break(last_at, BreakKind::Removed, Some(chain), Some(last_seq + 1), detail));
                }
                None if matches!(e.source, Source::Anchor(_)) => {
                    let detail = format!("chain {chain} of {} is not in these files", self.source(index));
                    return Err(Break { kind: BreakKind::MissingChain, file: None, line: 0, chain: Some(chain), seq: Some(seq), detail });
                }
                None => {
                    let note = format!("continues chain {chain} (seq {seq}), which is not in these files: not checked");
                    self.note_for(index, note);
                }
            }
        }
        Ok(())
    }

    /// A line after a suspect: only lines of the suspect's chain tell anything.
    fn resolve(&mut self, at: Location, line: &[u8]) {
        let State::Resolving(suspect) = &self.state else { return };
        let Ok(link) = chain::parse_line(line) else { return };
        let decided = match suspect {
            Suspect::Link { chain, .. } if *chain == link.chain => Some((at, link.seq, link.prev_hash)),
            Suspect::Gap { chain, prev, this_seq, .. } if *chain == link.chain => {
                let first_missing = prev.map_or(0, |(_, s)| s + 1);
                (first_missing..*this_seq).contains(&link.seq).then_some((at, link.seq, link.prev_hash))
            }
            _ => None,
        };
        if decided.is_some() {
            let State::Resolving(suspect) = std::mem::replace(&mut self.state, State::Checking) else { unreachable!() };
            let found = self.conclude(suspect, decided);
            self.state = State::Broken(found);
        }
    }

    /// The break a suspect amounts to, given the chain's next telling line (`None`: there was none).
    fn conclude(&self, suspect: Suspect, next: Option<(Location, u64, LineHash)>) -> Break {
        match suspect {
            Suspect::Link { chain, prev, prev_seq, this, this_hash } => match next {
                Some((_, _, next_prev)) if next_prev == this_hash => {
                    let detail = format!(
                        "chain {chain} seq {prev_seq} was changed: the next line of the chain ({}, seq {}) recorded a different hash for it",
                        self.at(this),
                        prev_seq + 1
                    );
                    self.make_break(prev, BreakKind::Changed, Some(chain), Some(prev_seq), detail)
                }
                Some((next_at, _, _)) => {
                    let detail = format!(
                        "chain {chain} seq {} was changed: it does not link to the line before it in the chain ({}, seq {prev_seq}), and the chain's next line ({}) does not link to it",
                        prev_seq + 1,
                        self.at(prev),
                        self.at(next_at)
                    );
                    self.make_break(this, BreakKind::Changed, Some(chain), Some(prev_seq + 1), detail)
                }
                None => {
                    let detail = format!(
                        "chain {chain}: the next line of the chain ({}, seq {}) does not link to this one (seq {prev_seq}): this line was changed, or that line's prev_hash — it is the chain's last line, so nothing after it tells which",
                        self.at(this),
                        prev_seq + 1
                    );
                    self.make_break(prev, BreakKind::Changed, Some(chain), Some(prev_seq), detail)
                }
            },
            Suspect::Gap { chain, prev, this, this_seq } => match (next, prev) {
                (Some((found_at, found_seq, _)), _) => {
                    let hint = if found_at.file != this.file { " (or the files were named out of order: name them oldest first)" } else { "" };
                    let detail = format!(
                        "chain {chain} seq {this_seq} is out of order: seq {found_seq} of the same chain comes after it ({}): lines were reordered{hint}",
                        self.at(found_at)
                    );
                    self.make_break(this, BreakKind::Reordered, Some(chain), Some(this_seq), detail)
                }
                (None, Some((prev_at, prev_seq))) => {
                    let missing = this_seq - prev_seq - 1;
                    let seqs = if missing == 1 { format!("seq {}", prev_seq + 1) } else { format!("seq {}–{}", prev_seq + 1, this_seq - 1) };
                    let detail = format!(
                        "chain {chain} jumps from seq {prev_seq} ({}) to seq {this_seq}: {missing} line(s) ({seqs}) were removed before this line",
                        self.at(prev_at)
                    );
                    self.make_break(this, BreakKind::Removed, Some(chain), Some(prev_seq + 1), detail)
                }
                (None, None) => {
                    let detail = format!(
                        "chain {chain} begins here at seq {this_seq}, without its start record (seq 0): its first {this_seq} line(s) are not in these files — removed, or in an older file (name files oldest first), or rotated away (--partial verifies from the first line present)"
                    );
                    self.make_break(this, BreakKind::MissingStart, Some(chain), Some(0), detail)
                }
            },
        }
    }

    fn broken(&mut self, at: Location, kind: BreakKind, chain: Option<String>, seq: Option<u64>, detail: String) {
        self.state = State::Broken(self.make_break(at, kind, chain, seq, detail));
    }

    fn make_break(&self, at: Location, kind: BreakKind, chain: Option<String>, seq: Option<u64>, detail: String) -> Break {
        Break { kind, file: Some(self.files[at.file].clone()), line: at.line, chain, seq, detail }
    }

    fn at(&self, at: Location) -> String {
        format!("{}:{}", self.files[at.file], at.line)
    }

    fn source(&self, index: usize) -> String {
        match &self.expectations[index].source {
            Source::Anchor(anchor) => format!("--anchor {anchor}"),
            Source::Continues { chain, at } => format!("the start record of chain {chain} ({})", self.at(*at)),
        }
    }

    /// Notes an expectation's outcome on the chain that recorded it, or for an anchor on the chain anchored.
    fn note_for(&mut self, index: usize, note: String) {
        let chain = match &self.expectations[index].source {
            Source::Continues { chain, .. } => chain.clone(),
            Source::Anchor(anchor) => anchor.chain.clone(),
        };
        self.note(&chain, note);
    }

    fn note(&mut self, chain: &str, note: String) {
        if let Some(state) = self.chains.get_mut(chain) {
            state.notes.push(note);
        }
    }

    fn chain_summary(&self, id: &str) -> ChainSummary {
        let s = &self.chains[id];
        ChainSummary {
            id: id.to_owned(),
            started: s.started.clone(),
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            lines: s.lines,
            first: self.at(s.first_at),
            last: self.at(s.last_at),
            head: Anchor { chain: id.to_owned(), seq: s.last_seq, hash: s.last_hash },
            notes: s.notes.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
