//! Static bearer tokens: a YAML tokens file (what a mounted Secret holds) plus tokens given in memory.
//! Only SHA-256 hashes are kept; a presented token is hashed and compared with every entry in constant
//! time. The file is re-read (at most every [`RECHECK`]) when its modification time or size changes, so
//! rotating a Secret needs no restart; a file that became invalid keeps the previous tokens and is logged.
//!
//! ```yaml
//! tokens:
//!   - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08   # hex of SHA-256(token)
//!     subject: alice
//!     groups: [team-leads]
//!   - token: plain-text-token   # accepted, hashed at load, and warned about
//!     subject: ci-bot
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, StaticToken};

/// How often the tokens file's metadata is looked at.
pub const RECHECK: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Entry {
    hash: [u8; 32],
    subject: String,
    groups: Vec<String>,
    /// The hash's first 16 hex digits, computed once: it names the credential in audit records.
    credential_id: String,
}

impl Entry {
    fn new(hash: [u8; 32], subject: String, groups: Vec<String>) -> Entry {
        let credential_id = hex(&hash)[..16].to_owned();
        Entry { hash, subject, groups, credential_id }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    token: Option<String>,
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// Modification time and length: what tells a rewritten file apart.
type Stamp = Option<(SystemTime, u64)>;

struct Watch {
    checked: Instant,
    stamp: Stamp,
}

pub(super) struct StaticTokens {
    file: Option<PathBuf>,
    inline: Vec<Entry>,
    entries: RwLock<Arc<Vec<Entry>>>,
    watch: Mutex<Watch>,
}

impl StaticTokens {
    pub(super) fn new(file: Option<PathBuf>, inline: &[StaticToken]) -> anyhow::Result<Self> {
        let inline: Vec<Entry> = inline
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.token.is_empty() || t.subject.is_empty() {
                    anyhow::bail!("static token {i}: token and subject must not be empty");
                }
                Ok(Entry::new(sha256(t.token.as_bytes()), t.subject.clone(), t.groups.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        let (mut entries, stamp) = (inline.clone(), file.as_deref().map(stamp_of).unwrap_or(None));
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).with_context(|| format!("tokens file {}", path.display()))?;
            entries.extend(parse_tokens_file(&text).with_context(|| format!("tokens file {}", path.display()))?);
        }
        refuse_duplicates(&entries)?;
        Ok(StaticTokens {
            file,
            inline,
            entries: RwLock::new(Arc::new(entries)),
            watch: Mutex::new(Watch { checked: Instant::now(), stamp }),
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The principal of `token`, if it is one of ours. Every entry is compared, matched or not.
    pub(super) fn lookup(&self, token: &str) -> Option<Principal> {
        self.reload_if_changed();
        let hash = sha256(token.as_bytes());
        let entries = self.current();
        let mut found: Option<&Entry> = None;
        for entry in entries.iter() {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found.map(|e| Principal {
            subject: e.subject.clone(),
            groups: e.groups.clone(),
            credential_id: e.credential_id.clone(),
        })
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        {
            let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            if watch.checked.elapsed() < RECHECK {
                return;
            }
            watch.checked = Instant::now();
            let stamp = stamp_of(path);
            if stamp == watch.stamp {
                return;
            }
            watch.stamp = stamp;
        }
        match std::fs::read_to_string(path).map_err(anyhow::Error::from).and_then(|text| {
            let mut entries = self.inline.clone();
            entries.extend(parse_tokens_file(&text)?);
            refuse_duplicates(&entries)?;
            Ok(entries)
        }) {
            Ok(entries) => {
                tracing::info!(file = %path.display(), tokens = entries.len(), "tokens file reloaded");
                *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
            }
            Err(e) => tracing::warn!(file = %path.display(), "tokens file not reloaded, keeping the previous tokens: {e:#}"),
        }
    }
}

fn stamp_of(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Parses a tokens file. Errors name the entry and never quote a token.
fn parse_tokens_file(text: &str) -> anyhow::Result<Vec<Entry>> {
    let file: TokensFile = serde_saphyr::from_str(text).map_err(|e| {
        // The snippet would quote the file, and the file may hold plain tokens.
        anyhow::anyhow!("not a tokens file (`tokens: [{{sha256, subject, groups}}]`): {}", e.without_snippet())
    })?;
    let mut entries = Vec::with_capacity(file.tokens.len());
    for (i, t) in file.tokens.into_iter().enumerate() {
        let hash = match (t.sha256, t.token) {
            (Some(hex_hash), None) => parse_hash(&hex_hash).with_context(|| format!("tokens[{i}] ({})", t.subject))?,
            (None, Some(token)) => {
                tracing::warn!(
                    entry = i,
                    subject = %t.subject,
                    "tokens file holds a plain token; store `sha256: <hex of SHA-256(token)>` instead"
                );
                if token.is_empty() {
                    anyhow::bail!("tokens[{i}] ({}): token is empty", t.subject);
                }
                sha256(token.as_bytes())
            }
            (Some(_), Some(_)) => anyhow::bail!("tokens[{i}] ({}): give sha256 or token, not both", t.subject),
            (None, None) => anyhow::bail!("tokens[{i}] ({}): needs sha256 (hex of the token's SHA-256)", t.subject),
        };
        if t.subject.trim().is_empty() {
            anyhow::bail!("tokens[{i}]: subject is empty");
        }
        if let Some(g) = t.groups.iter().find(|g| g.trim().is_empty()) {
            anyhow::bail!("tokens[{i}] ({}): group {g:?} is empty", t.subject);
        }
        entries.push(Entry::new(hash, t.subject, t.groups));
    }
    Ok(entries)
}

fn parse_hash(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("sha256 must be 64 hex digits (`printf %s TOKEN | sha256sum`), got {} characters", text.len());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

fn refuse_duplicates(entries: &[Entry]) -> anyhow::Result<()> {
    for (i, a) in entries.iter().enumerate() {
        if let Some(b) = entries[i + 1..].iter().find(|b| b.hash == a.hash) {
            anyhow::bail!(
                "the same token is given twice (subjects {} and {}): each token must map to one subject",
                a.subject,
                b.subject
            );
        }
    }
    Ok(())
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn hashed_and_plain_entries_both_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let hash = hex(&sha256(b"alice-token"));
        let path = write(
            &dir,
            &format!("tokens:\n  - sha256: {hash}\n    subject: alice\n    groups: [team-leads]\n  - token: bob-token\n    subject: bob\n"),
        );
        let tokens = StaticTokens::new(Some(path), &[]).unwrap();
        let alice = tokens.lookup("alice-token").unwrap();
        assert_eq!((alice.subject.as_str(), alice.groups.as_slice()), ("alice", &["team-leads".to_owned()][..]));
        assert_eq!(alice.credential_id, hash[..16]);
        assert_eq!(tokens.lookup("bob-token").unwrap().subject, "bob");
        assert!(tokens.lookup("carol-token").is_none());
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "tokens:\n  - sha265: abc\n    subject: alice\n");
        let err = format!("{:#}", StaticTokens::new(Some(path), &[]).err().unwrap());
        assert!(err.contains("unknown field") && err.contains("sha265"), "{err}");
        assert!(err.contains("tokens.yaml"), "{err}");
    }

    #[test]
    fn malformed_entries_get_specific_errors_that_never_quote_a_token() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            ("tokens:\n  - sha256: abc\n    subject: alice\n", "64 hex digits"),
            ("tokens:\n  - subject: alice\n", "needs sha256"),
            ("tokens:\n  - token: t0psecret\n    sha256: 00\n    subject: alice\n", "not both"),
            ("tokens:\n  - token: t0psecret\n    subject: ''\n", "subject is empty"),
            ("tokens: [ {token: t0psecret, subject: a}, {token: t0psecret, subject: b} ]\n", "given twice"),
            ("tokens: {token: t0psecret\n", "not a tokens file"),
        ] {
            let path = write(&dir, text);
            let err = format!("{:#}", StaticTokens::new(Some(path), &[]).err().unwrap());
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains("t0psecret"), "{text:?} leaked the token: {err}");
        }
    }

    #[test]
    fn a_missing_tokens_file_is_named() {
        let err = format!("{:#}", StaticTokens::new(Some("/nonexistent/tokens.yaml".into()), &[]).err().unwrap());
        assert!(err.contains("/nonexistent/tokens.yaml"), "{err}");
    }

    #[test]
    fn a_rewritten_file_is_picked_up_and_a_broken_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "tokens:\n  - token: first\n    subject: alice\n");
        let tokens = StaticTokens::new(Some(path.clone()), &[]).unwrap();
        assert!(tokens.lookup("first").is_some());
        std::fs::write(&path, "tokens:\n  - token: second-token\n    subject: alice\n").unwrap();
        tokens.watch.lock().unwrap().checked -= RECHECK; // skip the wait
        assert!(tokens.lookup("first").is_none());
        assert!(tokens.lookup("second-token").is_some());
        std::fs::write(&path, "tokens: [").unwrap();
        tokens.watch.lock().unwrap().checked -= RECHECK;
        assert!(tokens.lookup("second-token").is_some());
    }
}
