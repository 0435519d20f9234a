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
        /// Entities whose feature state is kept in memory (`feature_cache_entities`; 0: the
        /// pipeline's default). `make bench-memory` keeps all of them.
        #[arg(long, default_value_t = 0)]
        cache_entities: usize,
    },
    /// Feature lookups over HTTP while the standard pipeline ingests at a fixed rate.
    Serve {
        /// Lookups per second, in all.
        #[arg(long, default_value_t = 20_000)]
        lookups: u64,
        /// Events per second the pipeline ingests.
        #[arg(long, default_value_t = 100_000)]
        ingest: u64,
        /// Seconds of lookups (after a warm-up of 3 s).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Client threads (connections).
        #[arg(long, default_value_t = 4)]
        clients: u64,
        /// Pipeline workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// `[server] dataflow_nice`: the nice level of the dataflow's threads (0: off).
        #[arg(long, default_value_t = 10)]
        nice: i32,
    },
    /// The standard pipeline topic in → topic out through a Kafka broker: events/s over a
    /// preloaded topic, and latency from input to output message timestamps at a fixed rate;
    /// exactly-once and at-least-once, for each worker count.
    Kafka {
        /// The brokers, each run in turn: `name=host:port,...` or one address
        /// (`make bench-kafka` passes tansu and noida-db, started by scripts/kafka.sh).
        #[arg(long, default_value = "127.0.0.1:19092")]
        brokers: String,
        /// Events in the preloaded topic (throughput runs). 200,000 by default: noida-db keeps
        /// every record in memory and in one JSON file (about 1 GiB of memory and 600 MB of
        /// file after the 200,000-event runs).
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Worker counts, comma-separated.
        #[arg(long, default_value = "1,2")]
        workers: String,
        /// Events per second fed during latency runs (0: no latency runs).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds of feeding per latency run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Allowed lateness of the order operator in latency runs (the latency floor).
        #[arg(long, default_value = "5s")]
        lateness: String,
    },
    /// Signed webhooks over HTTP into a running pipeline: accepted requests/s and response
    /// times, each answered after a synced log write.
    Webhook {
        /// Client connections (closed loop).
        #[arg(long, default_value_t = 16)]
        clients: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The reconciliation pipeline on the demo's generated webhooks and ledger changes (files
    /// in, files out): input records/s and changelog updates/s, 1 and 2 workers.
    Reconcile {
        /// Payments (about 1.1 webhooks and 2 ledger changes each).
        #[arg(long, default_value_t = 500_000)]
        payments: u64,
    },
    /// Recovery after kill -9 with about `entities` entities of state: time to open the state
    /// and to the first new committed epoch, per restart.
    Recovery {
        #[arg(long, default_value_t = 1_000_000)]
        entities: u64,
        #[arg(long, default_value_t = 5)]
        restarts: usize,
        /// Seconds the first run fills the state before its kill.
        #[arg(long, default_value_t = 45)]
        fill_seconds: u64,
    },
    /// Reopening a state written by many small commits (also the last part of `recovery`).
    SmallEpochs {
        #[arg(long, default_value_t = 104_000)]
        events: u64,
        #[arg(long, default_value_t = 8)]
        epoch_records: usize,
    },
    /// The throughput cost of syncing the state's WAL at each commit, for several `epoch_ms`.
    CommitCost {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value = "10,50,200,1000")]
        epoch_ms: String,
    },
    /// The recovery benchmark's pipeline process (used by `recovery`).
    #[command(hide = true)]
    Child { work: std::path::PathBuf, entities: u64 },
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
        #[arg(long, default_value_t = 0)]
        cache_entities: usize,
    },
}

fn serve(lookups: u64, ingest: u64, seconds: u64, clients: u64, workers: usize, nice: i32) -> Result<()> {
    let work = tempfile::tempdir()?;
    let customers = 100_000;
    let warmup = 3;
    let mut config =
        sluice_bench::standard_pipeline(work.path(), workers, ingest * (seconds + warmup + 2), customers, "5s", 20_000, sluice_bench::Models::default());
    if let Some(g) = config.sources[0].get_mut::<sluice_connectors::generator::GeneratorConfig>() {
        g.rate = ingest;
        g.step_us = 4_000_000 / ingest.max(1);
        g.start_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    }
    config.order.lateness = "1s".parse().unwrap();
    let mut server = sluice::config::ServerSection::new("127.0.0.1:0");
    server.dataflow_nice = nice;
    config.server = Some(server);
    let control = sluice::RunControl::default();
    let addr_cell = std::sync::Arc::clone(&control.http_addr);
    let stop = std::sync::Arc::clone(&control.stop);
    let metrics = std::sync::Arc::clone(&control.metrics);
    let load = std::thread::spawn(move || -> Result<()> {
        let addr = loop {
            if let Some(a) = addr_cell.get() {
                break *a;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        std::thread::sleep(std::time::Duration::from_secs(warmup));
        let in_before = metrics.sources.records_in.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let per_client = lookups as f64 / clients as f64;
        let threads: Vec<_> = (0..clients)
            .map(|c| std::thread::spawn(move || sluice_bench::lookup::client(addr, per_client, std::time::Duration::from_secs(seconds), customers, c + 1)))
            .collect();
        let mut total = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut statuses = (0, 0, 0);
        for t in threads {
            let r = t.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
            total.add(&r.latency_us)?;
            statuses = (statuses.0 + r.statuses.0, statuses.1 + r.statuses.1, statuses.2 + r.statuses.2);
        }
        let secs = started.elapsed().as_secs_f64();
        let ingested = metrics.sources.records_in.load(std::sync::atomic::Ordering::Relaxed) - in_before;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("feature lookups over HTTP on loopback while the standard pipeline ingests ({workers} worker(s), dataflow_nice {nice}), {clients} keep-alive clients, open loop");
        println!(
            "{:>12}  {:>12}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>8}",
            "target/s", "lookups/s", "ingest/s", "p50 µs", "p99 µs", "p999 µs", "found", "404"
        );
        println!(
            "{:>12}  {:>12.0}  {:>10.0}  {:>10}  {:>10}  {:>10}  {:>8}  {:>8}",
            lookups,
            total.len() as f64 / secs,
            ingested as f64 / secs,
            total.value_at_quantile(0.5),
            total.value_at_quantile(0.99),
            total.value_at_quantile(0.999),
            statuses.0,
            statuses.1
        );
        if statuses.2 > 0 {
            println!("other statuses: {}", statuses.2);
        }
        Ok(())
    });
    sluice::run(&config, &control)?;
    load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    Ok(())
}

fn kafka(brokers: &str, events: u64, workers: &str, rate: u64, seconds: u64, lateness: &str) -> Result<()> {
    use sluice_connectors::kafka::Delivery;
    let workers: Vec<usize> = workers.split(',').map(|w| w.trim().parse().context("--workers takes numbers, e.g. 1,2")).collect::<Result<_>>()?;
    // `name=host:port,...` or one address.
    let brokers: Vec<(String, String)> = brokers
        .split(',')
        .map(|b| match b.split_once('=') {
            Some((name, addr)) => (name.to_string(), addr.to_string()),
            None => (b.to_string(), b.to_string()),
        })
        .collect();
    for (name, brokers) in &brokers {
        let traffic = sluice_bench::kafka::traffic(events, 0);
        let (topic, produce_rate) = sluice_bench::kafka::preload(brokers, &traffic)?;
        let ceiling = sluice_bench::kafka::ceiling(brokers, &traffic, &topic, produce_rate)?;
        println!("standard pipeline, Kafka topic in -> topic out (features), broker {name} at {brokers}; {events} events preloaded into a 4-partition topic");
        println!(
            "broker ceiling (its clients alone, librdkafka 2.12.1): produce {:.0} records/s idempotent, {} in transactions of 20000; read_committed consume {:.0} records/s",
            ceiling.produce_per_s,
            ceiling.produce_transactions_per_s.map_or("refused".into(), |r| format!("{r:.0} records/s")),
            ceiling.consume_per_s
        );
        println!(
            "{:>14}  {:>7}  {:>10}  {:>12}  {:>8}  {:>10}  {:>8}  {:>8}",
            "delivery", "workers", "events/s", "events/CPU-s", "seconds", "features", "p50 ms", "p99 ms"
        );
        for delivery in [Delivery::ExactlyOnce, Delivery::AtLeastOnce] {
            let kind = if delivery == Delivery::ExactlyOnce { "exactly_once" } else { "at_least_once" };
            for &w in &workers {
                let t = sluice_bench::kafka::throughput(brokers, &topic, w, delivery)?;
                println!(
                    "{:>14}  {:>7}  {:>10.0}  {:>12.0}  {:>8.2}  {:>10}  {:>8}  {:>8}",
                    kind,
                    w,
                    t.records as f64 / t.seconds,
                    t.records as f64 / t.cpu_seconds,
                    t.seconds,
                    t.features,
                    "-",
                    "-"
                );
                if rate > 0 {
                    let l = sluice_bench::kafka::latency(brokers, w, delivery, rate, seconds, lateness)?;
                    let (p50, p99) = l.latency_ms.unwrap_or_default();
                    println!(
                        "{:>14}  {:>7}  {:>10}  {:>12.0}  {:>8.2}  {:>10}  {:>8}  {:>8}",
                        format!("{kind}@{rate}/s"),
                        w,
                        "-",
                        l.records as f64 / l.cpu_seconds,
                        l.seconds,
                        l.features,
                        p50,
                        p99
                    );
                }
            }
        }
        println!(
            "events/CPU-s: events over the process's user + system time during the run; latency: output message timestamp - input message timestamp per feature record, at {rate} events/s for {seconds} s, lateness {lateness} (the order operator's wait is the floor)\n"
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Recovery { entities, restarts, fill_seconds } => sluice_bench::recovery::recovery(entities, restarts, fill_seconds)?,
        Cmd::SmallEpochs { events, epoch_records } => sluice_bench::recovery::small_epochs(events, epoch_records)?,
        Cmd::CommitCost { events, epoch_ms } => sluice_bench::recovery::commit_cost(events, &epoch_ms)?,
        Cmd::Child { work, entities } => sluice_bench::recovery::child(&work, entities)?,
        Cmd::Webhook { clients, seconds } => sluice_bench::webhook::run(clients, seconds)?,
        Cmd::Reconcile { payments } => reconcile(payments)?,
        Cmd::Kafka { brokers, events, workers, rate, seconds, lateness } => kafka(&brokers, events, &workers, rate, seconds, &lateness)?,
        Cmd::Serve { lookups, ingest, seconds, clients, workers, nice } => serve(lookups, ingest, seconds, clients, workers, nice)?,
        Cmd::One { events, customers, workers, lateness, epoch_records, model, shadow, monitor, cache_entities } => {
            let work = tempfile::tempdir()?;
            let mut config = sluice_bench::standard_pipeline(
                work.path(),
                workers,
                events,
                customers,
                &lateness,
                epoch_records,
                sluice_bench::Models { model: model.as_deref(), shadow: shadow.as_deref(), monitor },
            );
            if cache_entities > 0 {
                config.feature_cache_entities = cache_entities;
            }
            let (started, cpu) = (Instant::now(), sluice_bench::cpu_seconds());
            let control = sluice::RunControl::default();
            let summary = sluice::run(&config, &control)?;
            let secs = started.elapsed().as_secs_f64();
            let cpu_secs = sluice_bench::cpu_seconds() - cpu;
            let q = |x: f64| control.metrics.model.batch_latency_us.quantile_us(x).map_or(f64::NAN, |v| v as f64);
            println!(
                "workers={workers} events={} seconds={secs:.3} events_per_s={:.0} events_per_cpu_s={:.0} peak_rss_mib={:.1} features={} duplicates={} late={} dead={} scored={} batch_p50_us={} batch_p99_us={}",
                summary.records_in,
                summary.records_in as f64 / secs,
                summary.records_in as f64 / cpu_secs,
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
        Cmd::Pipeline { events, customers, workers, lateness, epoch_records, model, shadow, monitor, cache_entities } => {
            let me = std::env::current_exe()?;
            println!("standard pipeline: generator -> decode -> dedup -> order -> 6 features -> file sink; {events} events, {customers} entities, lateness {lateness}, {epoch_records} records per partition per epoch{}{}",
                model.as_ref().map_or(String::new(), |m| format!(", scored by {}", m.display())) + &shadow.as_ref().map_or(String::new(), |m| format!(" with {} as shadow", m.display())) + if monitor { ", with drift and SLO monitoring" } else { "" },
                if cache_entities > 0 { format!(", feature state of up to {cache_entities} entities in memory") } else { String::new() });
            println!(
                "{:>7}  {:>12}  {:>12}  {:>10}  {:>13}  {:>15}  {:>15}",
                "workers", "events/s", "events/CPU-s", "seconds", "peak RSS MiB", "batch p50 µs", "batch p99 µs"
            );
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
                        "--cache-entities",
                        &cache_entities.to_string(),
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
                // Batch latency exists only for a scored run.
                let batch = |k: &str| if model.is_some() { format!("{:.0}", field(k)) } else { "-".into() };
                println!(
                    "{:>7}  {:>12.0}  {:>12.0}  {:>10.2}  {:>13.1}  {:>15}  {:>15}",
                    w,
                    rate,
                    field("events_per_cpu_s"),
                    field("seconds"),
                    field("peak_rss_mib"),
                    batch("batch_p50_us"),
                    batch("batch_p99_us")
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

/// `sluice-bench reconcile`.
fn reconcile(payments: u64) -> Result<()> {
    let work = tempfile::tempdir()?;
    let inputs = sluice::reconcile_demo::write_inputs(&work.path().join("inputs"), payments, 42)?;
    println!(
        "reconciliation: {payments} payments, {} provider webhooks + {} ledger changes (files in, files out; settle 30 s)",
        inputs.provider_records, inputs.ledger_records
    );
    for workers in [1, 2] {
        let out = work.path().join(format!("w{workers}"));
        let config = sluice::reconcile_demo::demo_config(&out, &inputs, workers);
        let summary = sluice::run(&config, &sluice::RunControl::default())?;
        let changelog = std::fs::read_to_string(out.join("reconciliation.jsonl"))?;
        let updates = changelog.lines().count();
        let secs = summary.elapsed.as_secs_f64();
        println!(
            "  {workers} worker(s): {:.2} s, {:.0} input records/s, {:.0} changelog updates/s ({updates} updates)",
            secs,
            summary.records_in as f64 / secs,
            updates as f64 / secs
        );
    }
    Ok(())
}
