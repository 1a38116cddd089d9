//! The audit log's file (`--audit-log`): appended to, rotated by size (one previous file, `<path>.1`, is
//! kept), and read back when a gateway starts, to link the new chain to the last line and to close the
//! calls the previous process left open with `interrupted` result lines.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use toolwarden_core::audit::chain::{self, ChainPoint};
use toolwarden_core::audit::{AuditEvent, AuditRecord};

/// The longest last line of an existing audit file that a new chain links to.
const MAX_TAIL: u64 = 1024 * 1024;

/// How much of the end of each file a starting gateway reads for calls left open. Calls are short (a
/// tool's timeout), so their decision lines are near the end; this bounds the start-up read.
const RECOVERY_SCAN: u64 = 64 * 1024 * 1024;

pub struct FileSink {
    file: File,
    path: PathBuf,
    /// Bytes in the current file.
    size: u64,
    /// Rotate when the file reaches this size; `None`: never.
    max_bytes: Option<u64>,
}

/// `<path>.1`: where a rotated file goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).create(true).append(true);
    // Mode 0600: arguments are sanitised, but may still be sensitive.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl FileSink {
    /// Opens `path` for appending; returns the sink and the chain line the file ends with, if any.
    pub fn open(path: &Path, max_bytes: Option<u64>) -> std::io::Result<(FileSink, Option<ChainPoint>)> {
        let mut file = open_append(path)?;
        let continues = continue_after(&mut file)?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok((FileSink { file, path: path.to_owned(), size, max_bytes }, continues))
    }

    /// Appends whole lines; rotates afterwards when the file is full, so a line is never split.
    pub fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.file.write_all(lines)?;
        self.size += lines.len() as u64;
        if self.max_bytes.is_some_and(|max| self.size >= max) {
            self.rotate()?;
        }
        Ok(())
    }

    /// `<path>` becomes `<path>.1` (replacing the older one) and a new `<path>` begins. The chain goes
    /// on across the two files: `audit verify <path>.1 <path>` checks it whole.
    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Where a new chain joins an existing audit file: the chain line it ends with, if any. A last line
/// without its newline (the previous process died writing it) is ended with one, and left as it is for
/// `audit verify` to report.
fn continue_after(file: &mut File) -> std::io::Result<Option<ChainPoint>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let from = len.saturating_sub(MAX_TAIL);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    Read::take(&mut *file, len - from).read_to_end(&mut tail)?;
    if tail.last() != Some(&b'\n') {
        file.write_all(b"\n")?;
        tracing::warn!("the audit log file ended in the middle of a line (a previous gateway stopped while writing it); the new chain starts on the next line and does not link to it");
        return Ok(None);
    }
    tail.pop();
    let Some(line) = tail.rsplit(|&b| b == b'\n').next().filter(|line| from == 0 || line.len() < tail.len()) else {
        return Ok(None);
    };
    match chain::parse_line(line) {
        Ok(link) => Ok(Some(ChainPoint { chain: link.chain.into_owned(), seq: link.seq, hash: chain::to_hex(&chain::line_hash(line)) })),
        Err(problem) => {
            tracing::warn!(%problem, "the audit log file's last line is not a chained audit line; the new chain does not link to it");
            Ok(None)
        }
    }
}

/// A call a previous gateway process started and never wrote a result line for.
#[derive(Debug)]
pub struct OpenCall {
    /// Its decision line (the one that let it run, or its preview run).
    pub decision: AuditRecord,
    /// The chain of the process that ran it.
    pub chain: String,
}

/// The calls whose decision line let them run (`status` absent, or `preview`) and that have no result
/// line, in the last [`RECOVERY_SCAN`] bytes of each of `files` (oldest first; missing files are
/// skipped). Lines that are not audit lines, or are cut short, are passed over.
pub fn open_calls(files: &[PathBuf]) -> std::io::Result<Vec<OpenCall>> {
    let mut open: HashMap<String, OpenCall> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for path in files {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = file.seek(SeekFrom::End(0))?;
        let from = len.saturating_sub(RECOVERY_SCAN);
        file.seek(SeekFrom::Start(from))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        if from > 0 {
            reader.read_until(b'\n', &mut line)?; // the first line read is only the end of one
        }
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let Some(text) = line.strip_suffix(b"\n") else { break };
            let Ok(record) = serde_json::from_slice::<AuditRecord>(text) else { continue };
            match record.event {
                Some(AuditEvent::Decision) if matches!(record.status.as_deref(), None | Some("preview")) => {
                    let chain = chain::parse_line(text).map(|link| link.chain.into_owned()).unwrap_or_default();
                    order.push(record.call_id.clone());
                    open.insert(record.call_id.clone(), OpenCall { decision: record, chain });
                }
                Some(AuditEvent::Result) => {
                    open.remove(&record.call_id);
                }
                _ => {}
            }
        }
    }
    Ok(order.into_iter().filter_map(|id| open.remove(&id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(call: &str, event: AuditEvent, status: Option<&str>) -> String {
        let record = AuditRecord { call_id: call.into(), event: Some(event), status: status.map(str::to_owned), ..AuditRecord::default() };
        let mut buffer = serde_json::to_vec(&record).unwrap();
        chain::ChainWriter::new("c1").unwrap().seal(&mut buffer, 0);
        String::from_utf8(buffer).unwrap()
    }

    #[test]
    fn only_started_calls_without_a_result_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let (old, current) = (dir.path().join("audit.log.1"), dir.path().join("audit.log"));
        std::fs::write(&old, [line("ran", AuditEvent::Decision, None), line("refused", AuditEvent::Decision, Some("refused"))].concat()).unwrap();
        let lines = [
            line("ran", AuditEvent::Result, Some("ok")),
            line("left", AuditEvent::Decision, None),
            line("preview", AuditEvent::Decision, Some("preview")),
            line("parked", AuditEvent::Decision, Some("pending")),
            "not json at all\n".to_owned(),
            line("cut", AuditEvent::Decision, None).trim_end().to_owned(),
        ];
        std::fs::write(&current, lines.concat()).unwrap();
        let open = open_calls(&[old, current, dir.path().join("missing")]).unwrap();
        let ids: Vec<_> = open.iter().map(|c| c.decision.call_id.as_str()).collect();
        assert_eq!(ids, ["left", "preview"]);
        assert_eq!(open[0].chain, "c1");
    }

    #[test]
    fn a_full_file_rotates_between_lines_and_keeps_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut sink, continues) = FileSink::open(&path, Some(20)).unwrap();
        assert!(continues.is_none());
        sink.write(b"0123456789\n").unwrap();
        sink.write(b"abcdefghij\n").unwrap(); // 22 bytes: rotated after this line
        sink.write(b"second\n").unwrap();
        sink.write(b"0123456789abcdef\n").unwrap(); // rotated again: the oldest file goes
        sink.write(b"third\n").unwrap();
        assert_eq!(std::fs::read_to_string(rotated(&path)).unwrap(), "second\n0123456789abcdef\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
    }
}
