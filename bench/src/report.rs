//! Collected figures and the Markdown table: medians over runs with min–max, Ambit as a ratio
//! to direct. Memory figures are per proxy process (not per run) and shown side by side.

use std::collections::BTreeMap;

use crate::scenario::PathKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Throughput,
    RttP50,
    RttP99,
    AddedP50,
    AddedP99,
    ConnSequential,
    ConnParallel,
    CpuPerThousandRequests,
    CpuPerThousandConnections,
    RssIdle,
    RssLoaded,
    PeakRss,
}

impl Metric {
    const ALL: [Metric; 12] = [
        Metric::Throughput,
        Metric::RttP50,
        Metric::RttP99,
        Metric::AddedP50,
        Metric::AddedP99,
        Metric::ConnSequential,
        Metric::ConnParallel,
        Metric::CpuPerThousandRequests,
        Metric::CpuPerThousandConnections,
        Metric::RssIdle,
        Metric::RssLoaded,
        Metric::PeakRss,
    ];

    fn label(self, held: usize) -> String {
        let label = match self {
            Metric::Throughput => "throughput, 1 stream (Gbit/s)",
            Metric::RttP50 => "RTT p50, 1 KiB ping-pong (µs)",
            Metric::RttP99 => "RTT p99, 1 KiB ping-pong (µs)",
            Metric::AddedP50 => "added RTT p50 vs direct (µs)",
            Metric::AddedP99 => "added RTT p99 vs direct (µs)",
            Metric::ConnSequential => "new connections/s, sequential",
            Metric::ConnParallel => "new connections/s, 4 parallel",
            Metric::CpuPerThousandRequests => "proxy vCPU at 1000 req/s (ping-pong)",
            Metric::CpuPerThousandConnections => "proxy vCPU at 1000 conn/s (sequential)",
            Metric::RssIdle => "proxy RSS idle (MiB)",
            Metric::RssLoaded => return format!("proxy RSS, {held} open conns (MiB)"),
            Metric::PeakRss => "proxy VmHWM after the run (MiB)",
        };
        label.to_owned()
    }

    fn decimals(self) -> usize {
        match self {
            Metric::Throughput | Metric::RssIdle | Metric::RssLoaded | Metric::PeakRss => 1,
            Metric::CpuPerThousandRequests | Metric::CpuPerThousandConnections => 3,
            _ => 0,
        }
    }

    /// Memory is one figure per proxy process, shown as `a / b`.
    fn per_process(self) -> bool {
        matches!(self, Metric::RssIdle | Metric::RssLoaded | Metric::PeakRss)
    }

    fn has_ratio(self) -> bool {
        matches!(
            self,
            Metric::Throughput | Metric::RttP50 | Metric::RttP99 | Metric::ConnSequential | Metric::ConnParallel
        )
    }
}

#[derive(Debug, Default)]
pub struct Results {
    values: BTreeMap<(Metric, PathKind), Vec<f64>>,
}

impl Results {
    pub fn push(&mut self, metric: Metric, path: PathKind, value: f64) {
        self.values.entry((metric, path)).or_default().push(value);
    }

    fn get(&self, metric: Metric, path: PathKind) -> Option<&[f64]> {
        self.values
            .get(&(metric, path))
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    fn cell(&self, metric: Metric, path: PathKind) -> String {
        let Some(values) = self.get(metric, path) else {
            return "—".into();
        };
        let d = metric.decimals();
        if metric.per_process() {
            return values
                .iter()
                .map(|v| format!("{v:.d$}"))
                .collect::<Vec<_>>()
                .join(" / ");
        }
        let (median, min, max) = summary(values);
        let sign = if matches!(metric, Metric::AddedP50 | Metric::AddedP99) && median > 0.0 {
            "+"
        } else {
            ""
        };
        if values.len() == 1 {
            format!("{sign}{median:.d$}")
        } else {
            format!("{sign}{median:.d$} ({min:.d$}–{max:.d$})")
        }
    }

    fn ratio(&self, metric: Metric) -> String {
        if !metric.has_ratio() {
            return String::new();
        }
        match (self.get(metric, PathKind::Ambit), self.get(metric, PathKind::Direct)) {
            (Some(ambit), Some(direct)) if summary(direct).0 != 0.0 => {
                format!("{:.2}×", summary(ambit).0 / summary(direct).0)
            }
            _ => "—".into(),
        }
    }

    /// The Markdown table over `paths` (columns in this order); `held` is the number of
    /// connections of the memory-under-load row.
    pub fn table(&self, paths: &[PathKind], held: usize) -> String {
        let mut out = String::from("| metric |");
        let mut rule = String::from("|---|");
        for p in paths {
            out.push_str(&format!(" {} |", p.label()));
            rule.push_str("---|");
        }
        out.push_str(" ambit ÷ direct |\n");
        rule.push_str("---|\n");
        out.push_str(&rule);
        for metric in Metric::ALL {
            if paths.iter().all(|p| self.get(metric, *p).is_none()) {
                continue;
            }
            out.push_str(&format!("| {} |", metric.label(held)));
            for p in paths {
                out.push_str(&format!(" {} |", self.cell(metric, *p)));
            }
            out.push_str(&format!(" {} |\n", self.ratio(metric)));
        }
        out
    }
}

/// (median, min, max); the median of an even count is the mean of the middle two.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_median_min_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn table_shows_medians_ratios_and_memory() {
        let mut r = Results::default();
        for v in [10.0, 20.0, 30.0] {
            r.push(Metric::RttP50, PathKind::Direct, v);
            r.push(Metric::RttP50, PathKind::Ambit, v * 2.0);
            r.push(Metric::AddedP50, PathKind::Ambit, v);
        }
        r.push(Metric::RssIdle, PathKind::Ambit, 5.31);
        r.push(Metric::RssIdle, PathKind::Ambit, 6.0);
        let table = r.table(&[PathKind::Direct, PathKind::Ambit], 1000);
        assert!(
            table.contains("| RTT p50, 1 KiB ping-pong (µs) | 20 (10–30) | 40 (20–60) | 2.00× |"),
            "{table}"
        );
        assert!(
            table.contains("| added RTT p50 vs direct (µs) | — | +20 (10–30) |  |"),
            "{table}"
        );
        assert!(table.contains("| proxy RSS idle (MiB) | — | 5.3 / 6.0 |  |"), "{table}");
        assert!(!table.contains("throughput"), "{table}");
    }
}
