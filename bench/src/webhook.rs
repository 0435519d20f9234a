//! `sluice-bench webhook`: signed webhooks (Standard Webhooks) over HTTP/1.1 keep-alive on
//! loopback into a running pipeline (webhook source → the standard features → file sink).
//! Closed loop: each client sends its next request when the last is answered. A request is
//! answered only after its webhook is in the source's log with the WAL synced, so the figures
//! are those of durable acknowledgement.

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use base64::Engine;
use hmac::{Hmac, Mac};

const KEY: &[u8] = b"sluice-bench-webhook-key";

/// One client's figures.
#[derive(Debug)]
struct ClientResult {
    latency_us: hdrhistogram::Histogram<u64>,
    accepted: u64,
    other: u64,
}

fn client(addr: SocketAddr, client: u64, duration: Duration) -> std::io::Result<ClientResult> {
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut latency_us = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut accepted, mut other) = (0, 0);
    let mut body_buf = Vec::new();
    let started = Instant::now();
    let mut i = 0u64;
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    while started.elapsed() < duration {
        let id = format!("evt_{client}_{i}");
        let body = format!(
            r#"{{"id":"{id}","customer":"cus_{}","created_ms":{},"type":"charge.succeeded","amount":{}.5,"currency":"EUR","merchant":"m{}"}}"#,
            (client * 7_919 + i) % 10_000,
            t0 + (i as i64),
            i % 100,
            i % 50
        );
        let ts = t0 / 1000;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).expect("any key length");
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let request = format!(
            "POST /webhooks/bench HTTP/1.1\r\nHost: sluice\r\ncontent-type: application/json\r\ncontent-length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: v1,{sig}\r\n\r\n{body}",
            body.len()
        );
        let sent = Instant::now();
        writer.write_all(request.as_bytes())?;
        let status = crate::lookup::read_response(&mut reader, &mut body_buf)?;
        latency_us.saturating_record(sent.elapsed().as_micros().max(1) as u64);
        if status == 200 {
            accepted += 1;
        } else {
            other += 1;
        }
        i += 1;
    }
    Ok(ClientResult { latency_us, accepted, other })
}

/// Runs the benchmark and prints one table row.
///
/// # Errors
/// The pipeline or a client fails.
pub fn run(clients: u64, seconds: u64) -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut config = crate::standard_pipeline(work.path(), 1, 1, 10_000, "1s", 20_000, crate::Models::default());
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(KEY));
    let source = format!("type = \"webhook\"\nname = \"bench\"\nlisten = \"127.0.0.1:0\"\nscheme = \"standard\"\nsecrets = [\"{secret}\"]\n");
    config.sources = vec![toml::from_str(&source)?];
    config.epoch_ms = 100;
    let control = sluice::RunControl::default();
    let (addrs, drain, metrics) =
        (std::sync::Arc::clone(&control.webhook_addrs), std::sync::Arc::clone(&control.drain), std::sync::Arc::clone(&control.metrics));
    let pipeline = std::thread::spawn(move || sluice::run(&config, &control));
    let addr = loop {
        if let Some(a) = addrs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.get("bench").copied() {
            break a;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let started = Instant::now();
    let threads: Vec<_> = (0..clients).map(|c| std::thread::spawn(move || client(addr, c, Duration::from_secs(seconds)))).collect();
    let mut total = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut accepted, mut other) = (0, 0);
    for t in threads {
        let r = t.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        total.add(&r.latency_us)?;
        accepted += r.accepted;
        other += r.other;
    }
    let secs = started.elapsed().as_secs_f64();
    let read = metrics.sources.records_in.load(Ordering::Relaxed);
    drain.store(true, Ordering::Relaxed);
    let summary = pipeline.join().map_err(|_| anyhow::anyhow!("the pipeline panicked"))??;
    println!("signed webhooks (Standard Webhooks, HMAC-SHA256) over HTTP/1.1 keep-alive on loopback, {clients} closed-loop clients, {seconds} s; each 200 after a synced log write");
    println!("{:>12}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>10}", "accepted/s", "p50 µs", "p99 µs", "p999 µs", "not 200", "read by then", "features");
    println!(
        "{:>12.0}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>10}",
        accepted as f64 / secs,
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        other,
        read,
        summary.features_out
    );
    Ok(())
}
