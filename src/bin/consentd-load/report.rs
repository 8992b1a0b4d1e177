//! What a measuring mode prints: a Markdown table for people, or `key=value`
//! lines (`--kv`) for scripts such as `tools/bench/compare.sh`.

use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;

use crate::Error;

/// Highest latency the histograms record, in µs (a minute).
const LATENCY_US_MAX: u64 = 60_000_000;

/// How results are printed.
#[derive(Debug, Args)]
pub(crate) struct Output {
    /// Print `key=value` lines (plain numbers, `n/a` when unknown) instead
    /// of a Markdown table.
    #[arg(long)]
    pub(crate) kv: bool,
}

/// The figures of one run, in order.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// (key, label, value) in printing order.
    rows: Vec<(&'static str, &'static str, String)>,
}

impl Report {
    /// Adds a figure: `key` for `--kv`, `label` for the table.
    pub(crate) fn add(&mut self, key: &'static str, label: &'static str, value: impl ToString) {
        self.rows.push((key, label, value.to_string()));
    }

    /// Adds a figure that may be unknown (printed `n/a`).
    pub(crate) fn add_opt(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: Option<impl ToString>,
    ) {
        let value = value.map_or_else(|| "n/a".to_owned(), |v| v.to_string());
        self.rows.push((key, label, value));
    }

    /// Adds p50, p99 and max of a latency histogram (in µs), in ms.
    pub(crate) fn add_latency(&mut self, latency: &Histogram<u64>) {
        self.add(
            "latency_p50_ms",
            "latency p50 (ms)",
            ms(latency.value_at_quantile(0.5)),
        );
        self.add(
            "latency_p99_ms",
            "latency p99 (ms)",
            ms(latency.value_at_quantile(0.99)),
        );
        self.add("latency_max_ms", "latency max (ms)", ms(latency.max()));
    }

    pub(crate) fn print(&self, output: &Output) {
        if output.kv {
            for (key, _, value) in &self.rows {
                println!("{key}={value}");
            }
        } else {
            println!("| measure | value |");
            println!("|---|---:|");
            for (_, label, value) in &self.rows {
                println!("| {label} | {value} |");
            }
        }
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// A count per second, no decimals.
pub(crate) fn per_s(count: u64, elapsed: Duration) -> String {
    format!("{:.0}", count as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Milliseconds of CPU per 1,000 units of work.
pub(crate) fn cpu_ms_per_1000(cpu: Option<Duration>, units: u64) -> Option<String> {
    cpu.map(|cpu| format!("{:.2}", cpu.as_secs_f64() * 1e6 / units.max(1) as f64))
}

/// Microseconds of CPU per unit of work.
pub(crate) fn cpu_us_per(cpu: Option<Duration>, units: u64) -> Option<String> {
    cpu.map(|cpu| format!("{:.1}", cpu.as_secs_f64() * 1e6 / units.max(1) as f64))
}

/// KiB as MiB with one decimal.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub(crate) fn new_histogram() -> Result<Histogram<u64>, Error> {
    Ok(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?)
}

pub(crate) fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
