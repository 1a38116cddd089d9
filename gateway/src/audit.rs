//! The audit log: one JSON line per decision (before acting) and per result, to stdout and optionally a
//! file. The record type and argument sanitising live in core (`toolwarden_core::audit`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use toolwarden_core::audit::AuditRecord;

pub struct AuditLog {
    file: Option<Mutex<File>>,
    stdout: bool,
}

impl AuditLog {
    /// Appends to `path` when given (created with mode 0600: arguments may still be sensitive).
    pub fn open(path: Option<&Path>, stdout: bool) -> anyhow::Result<AuditLog> {
        let file = match path {
            Some(path) => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let file = options.open(path).with_context(|| format!("cannot open audit log {}", path.display()))?;
                Some(Mutex::new(file))
            }
            None => None,
        };
        Ok(AuditLog { file, stdout })
    }

    /// Writes one record. A failing file write is logged, never fatal to the call: the stdout copy
    /// (collected by the cluster's log pipeline) still holds it.
    pub fn write(&self, record: &AuditRecord) {
        let mut line = record.to_json_line();
        line.push('\n');
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        if let Some(file) = &self.file {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::error!(error = %e, "cannot write the audit log file");
            }
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp() -> String {
    let now = jiff::Timestamp::now();
    format!("{now:.3}")
}

pub fn rfc3339(time: std::time::SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => String::new(),
    }
}
