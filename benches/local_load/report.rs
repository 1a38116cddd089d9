//! Summaries the bench prints: latency percentiles, a Prometheus histogram's quantiles, a line fit.

use std::time::Duration;

#[derive(Default)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn extend(&mut self, more: Vec<Duration>) {
        self.0.extend(more);
    }

    /// The nearest-rank percentile `p` (0–100) of the samples.
    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn print(&mut self, what: &str) {
        if self.0.is_empty() {
            println!("  {what}: no samples");
            return;
        }
        self.0.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {what}: n={} p50={:.1} ms p99={:.1} ms min={:.1} ms max={:.1} ms",
            self.0.len(),
            ms(Self::percentile(&self.0, 50.0)),
            ms(Self::percentile(&self.0, 99.0)),
            ms(self.0[0]),
            ms(self.0[self.0.len() - 1])
        );
    }
}

pub fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// ", e.g. <the most frequent failure>" when there are failures.
pub fn examples(failures: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for f in failures {
        *counts.entry(f.as_str()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1));
    counts.iter().take(3).map(|(f, n)| format!("; {n}× {}", f.chars().take(200).collect::<String>())).collect()
}

/// Count, mean and bucket-interpolated p50/p99 of a histogram family summed over its label sets.
pub fn print_histogram(metrics: &str, name: &str, what: &str) {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines().filter(|l| l.starts_with(&format!("{name}_bucket{{"))) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let count: f64 = line.rsplit(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0.0);
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(entry) => entry.1 += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = super::gateway::metric_sum(metrics, &format!("{name}_count"));
    let sum = super::gateway::metric_sum(metrics, &format!("{name}_sum"));
    if count == 0.0 {
        println!("  {what}: no samples");
        return;
    }
    let quantile = |q: f64| {
        let rank = q * count;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return format!("> {:.0} ms", lower.0 * 1e3);
                }
                let share = if cumulative > lower.1 { (rank - lower.1) / (cumulative - lower.1) } else { 1.0 };
                return format!("~{:.0} ms", (lower.0 + (le - lower.0) * share) * 1e3);
            }
            lower = (le, cumulative);
        }
        "?".into()
    };
    println!("  {what}: n={count} mean={:.0} ms p50{} p99{} (interpolated in its buckets)", sum / count * 1e3, quantile(0.5).replace('~', "≈"), quantile(0.99).replace('~', "≈"));
}

/// Least-squares slope of `y` over `x`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}
