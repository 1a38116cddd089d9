//! `toolwarden audit verify FILE...`: checks the hash chains of audit logs and names the first line
//! removed, changed or reordered (docs/audit.md). The checking is core's (`toolwarden_core::audit::verify`);
//! this reads the files, streaming, and reports.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use toolwarden_core::audit::verify::{Anchor, Verifier, VerifyOptions};

/// Longer lines are not audit lines (the gateway's are a few KB): refused rather than buffered.
const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check audit logs: exit 0 and summarise each chain when every line verifies; otherwise name the
    /// first line removed, changed or reordered, and exit 1.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Audit log files, oldest first (rotated files of one gateway, or several replicas' logs); `-` reads
    /// standard input. Chains may be interleaved within a file.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A line recorded elsewhere, as a previous run printed it ("last line, to anchor elsewhere"): its
    /// chain must reach that seq with that exact line. Repeatable.
    #[arg(long = "anchor", value_name = "CHAIN:SEQ:HASH")]
    anchors: Vec<Anchor>,
    /// Accept chains whose start record and first lines are not in the files (rotated away and gone).
    #[arg(long)]
    partial: bool,
    /// Pass over lines that are not chained audit lines (`kubectl logs` mixes the gateway's stderr in;
    /// `toolwarden dev` prints its address on stdout) instead of failing on them.
    #[arg(long)]
    skip_other_lines: bool,
}

impl AuditCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            AuditCommand::Verify(args) => args.run(),
        }
    }
}

impl VerifyArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let options = VerifyOptions { partial: self.partial, skip_other_lines: self.skip_other_lines, anchors: self.anchors };
        let mut verifier = Verifier::new(options);
        for path in &self.files {
            let name = path.display().to_string();
            let reader: Box<dyn Read> = if name == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?)
            };
            verifier.begin_file(if name == "-" { "stdin".to_owned() } else { name.clone() });
            if !feed_lines(&mut verifier, BufReader::with_capacity(256 * 1024, reader), &name)? {
                break;
            }
        }
        match verifier.finish() {
            Ok(summary) => {
                print!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(found) => {
                eprintln!("audit log does not verify: {found}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Feeds every line of `reader` to `verifier`; false once the verifier has its answer.
fn feed_lines(verifier: &mut Verifier, mut reader: impl BufRead, name: &str) -> anyhow::Result<bool> {
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let terminated = read_line(&mut reader, &mut line).with_context(|| format!("cannot read {name} (line {number})"))?;
        if line.is_empty() && !terminated {
            return Ok(true);
        }
        if line.len() > MAX_LINE {
            bail!("{name}:{number}: a line longer than {} MiB: not an audit log", MAX_LINE / (1024 * 1024));
        }
        if !verifier.feed(number, &line, terminated) {
            return Ok(false);
        }
    }
    unreachable!("a file has fewer than u64::MAX lines")
}

/// Reads one line into `line` without its newline, and says whether a newline ended it. Stops
/// buffering beyond [`MAX_LINE`] (the caller refuses such a line).
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<bool> {
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(false);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(true);
            }
            None => {
                let taken = available.len();
                line.extend_from_slice(available);
                reader.consume(taken);
                if line.len() > MAX_LINE {
                    return Ok(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_across_buffer_refills_and_say_whether_a_newline_ended_them() {
        let mut reader = BufReader::with_capacity(4, &b"ab\ncdefghij\n\nlast"[..]);
        let mut read = Vec::new();
        loop {
            let mut line = Vec::new();
            let terminated = read_line(&mut reader, &mut line).unwrap();
            if line.is_empty() && !terminated {
                break;
            }
            read.push((String::from_utf8(line).unwrap(), terminated));
        }
        let expected = [("ab", true), ("cdefghij", true), ("", true), ("last", false)].map(|(l, t)| (l.to_owned(), t));
        assert_eq!(read, expected);
    }

    #[test]
    fn a_line_too_long_to_be_an_audit_line_is_refused_not_buffered_whole() {
        let text = vec![b'x'; MAX_LINE + 100_000];
        let mut verifier = Verifier::new(VerifyOptions::default());
        verifier.begin_file("big.log");
        let error = feed_lines(&mut verifier, &text[..], "big.log").unwrap_err();
        assert_eq!(error.to_string(), "big.log:1: a line longer than 16 MiB: not an audit log");
    }
}
