//! The end-to-end load driver.
//!
//! `sluice-bench pipeline [--events N] [--workers 1,2]` runs the standard pipeline once per
//! worker count, each in a child process (so that peak RSS is that run's own), and prints
//! events/s and peak RSS. Run it with `make bench`.

use std::process::Command;
use std::time::Instant;

// mimalloc: the dataflow allocates many small records; glibc's malloc showed up at ~20% of
// the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sluice-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Events/s and peak RSS of the standard pipeline, 1 and 2 workers.
    Pipeline {
        /// Events per run.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// Distinct entities.
        #[arg(long, default_value_t = 100_000)]
        customers: u64,
        /// Worker counts, comma-separated.
        #[arg(long, default_value = "1,2")]
        workers: String,
        /// Allowed lateness of the order operator (memory grows with it).
        #[arg(long, default_value = "5s")]
        lateness: String,
        /// Records per partition per epoch (commit interval: larger trades latency for throughput).
        #[arg(long, default_value_t = 20_000)]
        epoch_records: usize,
        /// Score every event with this model (e.g. models/fraud_lr.onnx).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// And with this one as its shadow (e.g. models/fraud_gbt.onnx).
        #[arg(long, requires = "model")]
        shadow: Option<std::path::PathBuf>,
        /// Monitor drift (amount_last, currency, the score) and SLOs too.
        #[arg(long)]
        monitor: bool,
    },
    /// One run (used by `pipeline`); prints one line of key=value figures.
    One {
        #[arg(long)]
        events: u64,
        #[arg(long)]
        customers: u64,
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        lateness: String,
        #[arg(long)]
        epoch_records: usize,
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        #[arg(long)]
        shadow: Option<std::path::PathBuf>,
        #[arg(long)]
        monitor: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::One { events, customers, workers, lateness, epoch_records, model, shadow, monitor } => {
            let work = tempfile::tempdir()?;
            let config = sluice_bench::standard_pipeline(
                work.path(),
                workers,
                events,
                customers,
                &lateness,
                epoch_records,
                sluice_bench::Models { model: model.as_deref(), shadow: shadow.as_deref(), monitor },
            );
            let started = Instant::now();
            let control = sluice::RunControl::default();
            let summary = sluice::run(&config, &control)?;
            let secs = started.elapsed().as_secs_f64();
            let q = |x: f64| control.metrics.batch_latency_quantile_us(x).map_or(f64::NAN, |v| v as f64);
            println!(
                "workers={workers} events={} seconds={secs:.3} events_per_s={:.0} peak_rss_mib={:.1} features={} duplicates={} late={} dead={} scored={} batch_p50_us={} batch_p99_us={}",
                summary.records_in,
                summary.records_in as f64 / secs,
                sluice_bench::peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
                summary.features_out,
                summary.duplicates,
                summary.late,
                summary.dead_letters,
                summary.scored,
                q(0.5),
                q(0.99)
            );
        }
        Cmd::Pipeline { events, customers, workers, lateness, epoch_records, model, shadow, monitor } => {
            let me = std::env::current_exe()?;
            println!("standard pipeline: generator -> decode -> dedup -> order -> 6 features -> file sink; {events} events, {customers} entities, lateness {lateness}, {epoch_records} records per partition per epoch{}",
                model.as_ref().map_or(String::new(), |m| format!(", scored by {}", m.display())) + &shadow.as_ref().map_or(String::new(), |m| format!(" with {} as shadow", m.display())) + if monitor { ", with drift and SLO monitoring" } else { "" });
            println!("{:>7}  {:>12}  {:>10}  {:>13}  {:>15}  {:>15}", "workers", "events/s", "seconds", "peak RSS MiB", "batch p50 µs", "batch p99 µs");
            let mut first = None;
            for w in workers.split(',') {
                let w: usize = w.trim().parse().context("--workers takes numbers, e.g. 1,2")?;
                let out = Command::new(&me)
                    .args([
                        "one",
                        "--events",
                        &events.to_string(),
                        "--customers",
                        &customers.to_string(),
                        "--workers",
                        &w.to_string(),
                        "--lateness",
                        &lateness,
                        "--epoch-records",
                        &epoch_records.to_string(),
                    ])
                    .args(model.iter().flat_map(|m| [std::ffi::OsStr::new("--model"), m.as_os_str()]))
                    .args(shadow.iter().flat_map(|m| [std::ffi::OsStr::new("--shadow"), m.as_os_str()]))
                    .args(monitor.then_some("--monitor"))
                    .output()?;
                if !out.status.success() {
                    bail!("run with {w} workers failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let text = String::from_utf8(out.stdout)?;
                let field = |k: &str| -> f64 {
                    text.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
                };
                let rate = field("events_per_s");
                println!(
                    "{:>7}  {:>12.0}  {:>10.2}  {:>13.1}  {:>15}  {:>15}",
                    w,
                    rate,
                    field("seconds"),
                    field("peak_rss_mib"),
                    field("batch_p50_us"),
                    field("batch_p99_us")
                );
                match first {
                    None => first = Some(rate),
                    Some(base) => println!("         scaling vs the first: {:.2}x", rate / base),
                }
            }
        }
    }
    Ok(())
}
