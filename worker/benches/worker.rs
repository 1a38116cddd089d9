//! Benchmarks of the real worker binary: the start of a sandboxed worker up to its first call's answer,
//! and the per-call overhead of `exec` for a trivial program (`/bin/true`), unsandboxed and sandboxed.
//! `cargo bench -p toolwarden-worker`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use support::{Worker, exec_spec};

fn sandbox_start(c: &mut Criterion) {
    let spec = exec_spec(&["/bin/true"], &[]);
    let mut group = c.benchmark_group("sandbox");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("start_and_first_call", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let worker = Worker::sandboxed(&spec, &[]);
                let result = worker.ran(json!({}));
                total += started.elapsed();
                assert_eq!(result["isError"], false);
                drop(worker);
            }
            total
        })
    });
    group.finish();
}

fn exec_overhead(c: &mut Criterion) {
    let spec = exec_spec(&["/bin/true"], &[]);
    let mut group = c.benchmark_group("exec_true");
    group.sample_size(50);
    let plain = Worker::serve(&spec, &[]);
    group.bench_function("per_call_unsandboxed", |b| b.iter(|| assert_eq!(plain.ran(json!({}))["exitCode"], 0)));
    let sandboxed = Worker::sandboxed(&spec, &[]);
    group.bench_function("per_call_sandboxed", |b| b.iter(|| assert_eq!(sandboxed.ran(json!({}))["exitCode"], 0)));
    group.finish();
}

criterion_group!(benches, sandbox_start, exec_overhead);
criterion_main!(benches);
