//! What chaining costs an audit line: a typical result line serialised into a reused buffer, as the
//! gateway writes it, without and with sealing it into the chain (chain fields + SHA-256 + newline).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use toolwarden_core::audit::chain::ChainWriter;
use toolwarden_core::audit::{AuditEvent, AuditRecord};

fn record() -> AuditRecord {
    AuditRecord {
        timestamp: "2026-12-07T09:49:12.031Z".into(),
        event: Some(AuditEvent::Result),
        call_id: "c-5f0e3a9d1b7c4e21-000042".into(),
        session_id: "4c1f9e0a-7d2b-4f7e-9b1a-3e5d6c7f8a90".into(),
        subject: "developer".into(),
        client: "claude-code".into(),
        namespace: "default".into(),
        tool: "write_note".into(),
        arguments: json!({"path": "notes/today.md", "content": "Remember the standup at ten; bring the release checklist."}),
        policy: Some("developers-write-notes".into()),
        rule: None,
        decision: "allow".into(),
        approval: "none".into(),
        status: Some("ok".into()),
        duration_ms: Some(12),
        output_bytes: Some(41),
        truncated: Some(false),
        redacted: Some(false),
        worker: Some("local".into()),
        ..AuditRecord::default()
    }
}

fn benches(c: &mut Criterion) {
    let record = record();
    let mut buffer = Vec::with_capacity(4096);
    c.bench_function("audit_line_serialise", |b| {
        b.iter(|| {
            buffer.clear();
            serde_json::to_writer(&mut buffer, black_box(&record)).unwrap();
            buffer.push(b'\n');
            black_box(buffer.len())
        })
    });
    let mut chain = ChainWriter::new("81de25c34c245577").unwrap();
    c.bench_function("audit_line_serialise_and_seal", |b| {
        b.iter(|| {
            buffer.clear();
            serde_json::to_writer(&mut buffer, black_box(&record)).unwrap();
            chain.seal(&mut buffer, 0);
            black_box(buffer.len())
        })
    });
    buffer.clear();
    serde_json::to_writer(&mut buffer, &record).unwrap();
    let plain = buffer.len() + 1;
    chain.seal(&mut buffer, 0);
    eprintln!("a typical line: {plain} bytes, {} sealed", buffer.len());
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(group);
