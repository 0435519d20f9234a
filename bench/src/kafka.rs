//! `sluice-bench kafka`: the standard pipeline topic in → topic out through a Kafka broker.
//!
//! Throughput: `events` generated records are produced into a 4-partition topic first; each
//! run then reads the topic to its end (`until = "high_watermark"`) and delivers its feature
//! records to a fresh topic. events/s = events / the run's wall time, which includes topic
//! set-up, the final 1 s the source waits to be sure the partitions are drained, and the
//! delivery of the last epoch.
//!
//! Latency: the generator feeds a fresh topic at `rate` events/s while the pipeline runs;
//! afterwards the input and output topics are read back and, per feature record, the output
//! message's timestamp minus the input message's timestamp (same event id; the first copy of a
//! duplicated id) is recorded. The order operator holds every event for the allowed lateness,
//! so the latency cannot be below it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use sluice::PipelineConfig;
use sluice_connectors::generator::GeneratorConfig;
use sluice_connectors::kafka::{Delivery, Feeder, KafkaSinkConfig, KafkaSourceConfig, StartAt, Until};
use sluice_connectors::{SinkConfig, SourceConfig};

/// One run's figures.
#[derive(Debug, Clone)]
pub struct KafkaRun {
    /// Records read.
    pub records: u64,
    /// Feature records delivered.
    pub features: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// CPU time of the process during the run (user + system, every thread: the dataflow,
    /// the commit thread, librdkafka's threads).
    pub cpu_seconds: f64,
    /// Latency quantiles (p50, p99), ms, for latency runs.
    pub latency_ms: Option<(u64, u64)>,
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("bench-{name}-{nanos}")
}

/// The standard pipeline with a Kafka source and a Kafka features sink.
fn kafka_pipeline(
    work: &Path,
    brokers: &str,
    workers: usize,
    (topic_in, topic_out): (&str, &str),
    delivery: Delivery,
    until: Until,
    lateness: &str,
) -> PipelineConfig {
    let mut config = crate::standard_pipeline(work, workers, 1, 100_000, lateness, 20_000, crate::Models::default());
    config.sources = vec![SourceConfig::new(KafkaSourceConfig {
        name: "bench".into(),
        brokers: brokers.into(),
        topic: topic_in.into(),
        group_id: unique("group"),
        start: StartAt::Earliest,
        until,
        partitions: None,
        isolation: sluice_connectors::kafka::Isolation::ReadCommitted,
        properties: BTreeMap::new(),
    })];
    config.sinks = vec![SinkConfig::new(KafkaSinkConfig {
        stream: "features".into(),
        brokers: brokers.into(),
        topic: topic_out.into(),
        delivery,
        progress_topic: None,
        transactional_id: None,
        partitions: 4,
        properties: BTreeMap::new(),
    })];
    config
}

/// The benchmark's generated traffic (the standard pipeline's mix), `rate` 0 = unpaced.
pub fn traffic(events: u64, rate: u64) -> GeneratorConfig {
    let mut g = crate::standard_traffic(events, 100_000);
    g.rate = rate;
    g.step_us = 4_000_000u64.checked_div(rate).unwrap_or(40);
    g.start_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    g
}

/// Produces `generator`'s records into a new 4-partition topic; returns the topic and the
/// produce rate.
///
/// # Errors
/// The broker cannot be reached or refuses the records.
pub fn preload(brokers: &str, generator: &GeneratorConfig) -> Result<(String, f64)> {
    let topic = unique("in");
    sluice_connectors::kafka::ensure_topics(brokers, &BTreeMap::new(), &[(&topic, 4)])?;
    let started = Instant::now();
    let n = Feeder::start(generator, brokers, &topic, Arc::new(AtomicBool::new(false)))?.join()?;
    Ok((topic, n as f64 / started.elapsed().as_secs_f64()))
}

/// A throughput run over a preloaded topic.
///
/// # Errors
/// The run fails.
pub fn throughput(brokers: &str, topic_in: &str, workers: usize, delivery: Delivery) -> Result<KafkaRun> {
    let work = tempfile::tempdir()?;
    let config = kafka_pipeline(work.path(), brokers, workers, (topic_in, &unique("out")), delivery, Until::HighWatermark, "5s");
    let (started, cpu) = (Instant::now(), crate::cpu_seconds());
    let summary = sluice::run(&config, &sluice::RunControl::default())?;
    Ok(KafkaRun {
        records: summary.records_in,
        features: summary.features_out,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: crate::cpu_seconds() - cpu,
        latency_ms: None,
    })
}

/// Every record of `topic`: (payload, message timestamp ms).
fn read_topic(brokers: &str, topic: &str) -> Result<Vec<(Vec<u8>, i64)>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("read"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..metadata.topics()[0].partitions().len() as i32 {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(2) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            out.push((m.payload().unwrap_or_default().to_vec(), m.timestamp().to_millis().unwrap_or(0)));
            last = Instant::now();
        }
    }
    Ok(out)
}

/// A latency run: the generator feeds the input at `rate` for `seconds` while the pipeline runs.
///
/// # Errors
/// The run fails.
pub fn latency(brokers: &str, workers: usize, delivery: Delivery, rate: u64, seconds: u64, lateness: &str) -> Result<KafkaRun> {
    let work = tempfile::tempdir()?;
    let (topic_in, topic_out) = (unique("in"), unique("out"));
    sluice_connectors::kafka::ensure_topics(brokers, &BTreeMap::new(), &[(&topic_in, 4)])?;
    let config = kafka_pipeline(work.path(), brokers, workers, (&topic_in, &topic_out), delivery, Until::Forever, lateness);
    let control = sluice::RunControl::default();
    let generator = traffic(rate * seconds, rate);
    let feeder = Feeder::start(&generator, brokers, &topic_in, Arc::clone(&control.stop))?;
    let drain = Arc::clone(&control.drain);
    let fed = std::thread::spawn(move || {
        let n = feeder.join();
        drain.store(true, Ordering::Relaxed);
        n
    });
    let (started, cpu) = (Instant::now(), crate::cpu_seconds());
    let summary = sluice::run(&config, &control)?;
    let seconds = started.elapsed().as_secs_f64();
    // The feeder's producer ran in this process too.
    let cpu_seconds = crate::cpu_seconds() - cpu;
    fed.join().map_err(|_| anyhow::anyhow!("the feeder panicked"))??;
    let id_of = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v["id"].as_str().map(str::to_string));
    let mut produced: HashMap<String, i64> = HashMap::new();
    for (bytes, ts) in read_topic(brokers, &topic_in)? {
        if let Some(id) = id_of(&bytes) {
            produced.entry(id).or_insert(ts);
        }
    }
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    for (bytes, ts) in read_topic(brokers, &topic_out)? {
        let id = id_of(&bytes).context("a feature record without an id")?;
        let sent = produced.get(&id).with_context(|| format!("feature record {id} has no input record"))?;
        h.saturating_record((ts - sent).max(1) as u64);
    }
    Ok(KafkaRun {
        records: summary.records_in,
        features: h.len(),
        seconds,
        cpu_seconds,
        latency_ms: Some((h.value_at_quantile(0.5), h.value_at_quantile(0.99))),
    })
}

/// What the broker itself manages on this machine, without sluice: the limit the pipeline's
/// figures read against.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// The idempotent producer (linger 5 ms) into a 4-partition topic, records/s.
    pub produce_per_s: f64,
    /// A transactional producer, one transaction per 20,000 records, records/s (`None` where
    /// the broker refuses transactions).
    pub produce_transactions_per_s: Option<f64>,
    /// One `read_committed` consumer of the 4 partitions, records/s.
    pub consume_per_s: f64,
}

/// Measures [`Ceiling`] with `generator`'s records (the preload gives the produce rate).
///
/// # Errors
/// The broker cannot be reached.
pub fn ceiling(brokers: &str, generator: &GeneratorConfig, preloaded: &str, produce_per_s: f64) -> Result<Ceiling> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let records: Vec<(i32, Vec<u8>)> = {
        let mut out = Vec::new();
        for p in 0..generator.partitions {
            let mut reader = sluice_connectors::generator::GeneratorReader::new(generator, p);
            let mut batch = Vec::new();
            loop {
                let status = sluice_connectors::PartitionReader::read(&mut reader, 10_000, &mut batch).map_err(|e| anyhow::anyhow!("{e}"))?;
                out.extend(batch.drain(..).map(|f| (p as i32, f.bytes)));
                if status == sluice_connectors::ReadStatus::End {
                    break;
                }
            }
        }
        out
    };
    let topic = unique("ceiling");
    sluice_connectors::kafka::ensure_topics(brokers, &BTreeMap::new(), &[(&topic, 4)])?;
    let producer: BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").set("transactional.id", unique("ceiling")).create()?;
    let started = Instant::now();
    let produce_transactions_per_s = match producer.init_transactions(Duration::from_secs(10)) {
        Err(_) => None,
        Ok(()) => {
            for chunk in records.chunks(20_000) {
                producer.begin_transaction()?;
                for (p, bytes) in chunk {
                    let mut record = BaseRecord::<(), [u8]>::to(&topic).payload(bytes.as_slice()).partition(*p);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                producer.poll(Duration::from_millis(5));
                                record = back;
                            }
                        }
                    }
                }
                producer.commit_transaction(Duration::from_secs(60))?;
            }
            Some(records.len() as f64 / started.elapsed().as_secs_f64())
        }
    };
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("ceiling"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        list.add_partition_offset(preloaded, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let (started, mut read, mut ended) = (Instant::now(), 0u64, 0);
    let mut last = Instant::now();
    while ended < 4 && last.elapsed() < Duration::from_secs(10) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                read += 1;
                last = Instant::now();
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
            _ => {}
        }
    }
    Ok(Ceiling { produce_per_s, produce_transactions_per_s, consume_per_s: read as f64 / started.elapsed().as_secs_f64() })
}
