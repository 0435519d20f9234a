//! The feature-lookup load generator: HTTP/1.1 keep-alive clients on loopback, open loop at a
//! fixed rate, latency measured from each request's scheduled send time (so a stall counts
//! for every request it delays, not once).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What one client thread measured.
#[derive(Debug)]
pub struct LookupResult {
    /// Latencies, µs.
    pub latency_us: hdrhistogram::Histogram<u64>,
    /// Responses by status class: (2xx, 404, other).
    pub statuses: (u64, u64, u64),
}

/// Reads one HTTP/1.1 response (status line, headers, a `content-length` body).
///
/// # Errors
/// The connection fails.
pub fn read_response(reader: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> std::io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    body.resize(length, 0);
    reader.read_exact(body)?;
    Ok(status)
}

/// One client: `rate` lookups per second of random `cus_N` (N below `entities`) for `duration`.
///
/// # Errors
/// The connection fails.
pub fn client(addr: SocketAddr, rate: f64, duration: Duration, entities: u64, seed: u64) -> std::io::Result<LookupResult> {
    // A client on another machine would not wait for the dataflow's slices to end; sharing
    // the cores here, it asks for short slices as the server's threads do.
    sluice_state::sched::set_thread_slice(100);
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut latency_us = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut statuses = (0, 0, 0);
    let mut body = Vec::new();
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut next = started;
    while next.duration_since(started) < duration {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let request = format!("GET /v1/features/cus_{} HTTP/1.1\r\nHost: sluice\r\n\r\n", x % entities);
        writer.write_all(request.as_bytes())?;
        let status = read_response(&mut reader, &mut body)?;
        latency_us.saturating_record(next.elapsed().as_micros().max(1) as u64);
        match status {
            200..=299 => statuses.0 += 1,
            404 => statuses.1 += 1,
            _ => statuses.2 += 1,
        }
        next += interval;
    }
    Ok(LookupResult { latency_us, statuses })
}
