//! The markdown report: one row per figure, tunnel next to direct with
//! their ratio (ratios stay comparable on a noisy machine where absolute
//! figures do not), the target and whether it holds.

use std::fmt::Write;

/// What a row must satisfy to hold.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// tunnel / direct ≥ x (throughput).
    RatioAtLeast(f64),
    /// tunnel / direct ≤ x (latency).
    RatioAtMost(f64),
    /// The tunnel figure alone is below x (memory).
    Below(f64),
}

#[derive(Debug)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub direct: Option<f64>,
    pub tunnel: Option<f64>,
    /// Decimals shown for the values.
    pub decimals: usize,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(workload: &str, metric: &str, decimals: usize) -> Self {
        Self {
            workload: workload.into(),
            metric: metric.into(),
            direct: None,
            tunnel: None,
            decimals,
            target: None,
        }
    }

    pub fn pair(mut self, direct: f64, tunnel: f64) -> Self {
        self.direct = Some(direct);
        self.tunnel = Some(tunnel);
        self
    }

    pub fn only(mut self, value: f64) -> Self {
        self.tunnel = Some(value);
        self
    }

    pub fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.tunnel? / self.direct?)
    }

    fn verdict(&self) -> String {
        let Some(t) = self.target else {
            return String::new();
        };
        let (text, ok) = match t {
            Target::RatioAtLeast(x) => (format!("≥ {x:.2}×"), self.ratio().map(|r| r >= x)),
            Target::RatioAtMost(x) => (format!("≤ {x:.0}× direct"), self.ratio().map(|r| r <= x)),
            Target::Below(x) => (format!("< {x:.0}"), self.tunnel.map(|v| v < x)),
        };
        match ok {
            Some(true) => format!("{text} ✅"),
            Some(false) => format!("{text} ❌"),
            None => text,
        }
    }
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(_) => "n/a".into(),
        None => "—".into(),
    }
}

/// The table alone.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | metric | direct | tunnel | ratio | target |\n|---|---|---:|---:|---:|---|\n",
    );
    for r in rows {
        let ratio = r.ratio().map_or("—".into(), |x| format!("{x:.2}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.metric,
            fmt(r.direct, r.decimals),
            fmt(r.tunnel, r.decimals),
            ratio,
            r.verdict()
        );
    }
    s
}

/// One figure on every path: direct first, then each tunnel.
#[derive(Debug)]
pub struct Compare {
    pub workload: String,
    pub metric: String,
    pub decimals: usize,
    pub values: Vec<f64>,
    /// Show the tunnel values without "(ratio×)" (CPU: direct has none).
    pub ratio: bool,
}

impl Compare {
    pub fn new(workload: &str, metric: &str, decimals: usize, values: Vec<f64>) -> Self {
        Self {
            workload: workload.into(),
            metric: metric.into(),
            decimals,
            values,
            ratio: true,
        }
    }

    pub fn without_ratio(mut self) -> Self {
        self.ratio = false;
        self
    }
}

/// Direct next to each tunnel in `labels`, with ratios to direct.
pub fn compare_table(labels: &[&str], rows: &[Compare]) -> String {
    let mut s = String::from("| workload | metric | direct |");
    for l in labels {
        let _ = write!(s, " {l} |");
    }
    s.push_str("\n|---|---|---:|");
    s.push_str(&"---:|".repeat(labels.len()));
    s.push('\n');
    for r in rows {
        let direct = r.values.first().copied().filter(|v| !v.is_nan());
        let _ = write!(
            s,
            "| {} | {} | {} |",
            r.workload,
            r.metric,
            fmt(direct, r.decimals)
        );
        for v in r.values.iter().skip(1) {
            let cell = match direct {
                Some(d) if r.ratio && v.is_finite() => {
                    format!("{} ({:.2}×)", fmt(Some(*v), r.decimals), v / d)
                }
                _ => fmt(Some(*v), r.decimals),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}

/// nproc, CPU model, memory and kernel, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".into(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".into(), |kib| format!("{:.1}", kib / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The machine may be shared: the load when the run started says how
    // much of it the benchmark had.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{nproc} CPUs ({model}), {mem_gib} GiB memory, Linux {}; load average at start {load}",
        kernel.trim()
    )
}

pub fn now_utc() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_else(|_| "unknown date".into())
}

/// Median of `v` (mean of the middle two for an even count); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn verdicts_follow_targets() {
        let r = Row::new("w", "req/s", 0).pair(100.0, 60.0);
        assert!(
            r.target(Target::RatioAtLeast(0.55))
                .verdict()
                .ends_with('✅')
        );
        let r = Row::new("w", "p99", 2).pair(1.0, 2.5);
        assert!(r.target(Target::RatioAtMost(2.0)).verdict().ends_with('❌'));
        let r = Row::new("w", "MiB", 1).only(30.0);
        assert!(r.target(Target::Below(64.0)).verdict().ends_with('✅'));
        assert!(table(&[Row::new("w", "m", 0).only(1.0)]).contains("| w | m | — | 1 | — |  |"));
    }

    #[test]
    fn compare_table_shows_ratios_to_direct() {
        let rows = [
            Compare::new("w", "req/s", 0, vec![100.0, 25.0, 50.0]),
            Compare::new("w", "cpu", 0, vec![f64::NAN, 40.0, 20.0]).without_ratio(),
        ];
        let t = compare_table(&["a", "b"], &rows);
        assert!(
            t.starts_with("| workload | metric | direct | a | b |\n|---|---|---:|---:|---:|\n")
        );
        assert!(
            t.contains("| w | req/s | 100 | 25 (0.25×) | 50 (0.50×) |"),
            "{t}"
        );
        assert!(t.contains("| w | cpu | — | 40 | 20 |"), "{t}");
    }
}
