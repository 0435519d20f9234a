//! The Kafka partition reader: one consumer per partition, assigned explicitly at the
//! position sluice committed (or the configured start), never committing offsets on its own.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_operators::RecordMeta;

use super::config::{KafkaSourceConfig, StartAt, Until};
use super::logs::{Quiet, QuietConsumer};
use crate::source::{Fetched, PartitionReader, ReadStatus};
use crate::ConnectorError;

/// How long metadata and watermark requests may take before the source reports the broker
/// unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn kafka_error(what: &str, source: &KafkaSourceConfig, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Kafka { what: format!("{what} (topic `{}` on {})", source.topic, source.brokers), source: e.to_string().into() }
}

/// A consumer with sluice's fixed settings and the source's properties.
///
/// # Errors
/// librdkafka refuses a property.
pub fn consumer(source: &KafkaSourceConfig) -> Result<QuietConsumer, ConnectorError> {
    let mut c = ClientConfig::new();
    // Defaults a source's properties may change. A consumer per partition: its prefetch queue
    // is bounded at 8 MiB rather than librdkafka's 64 MiB.
    c.set("queued.max.messages.kbytes", "8192");
    // A request the broker never answers (tansu after a restart) is given up after 10 s, not
    // librdkafka's 60 s, and retried on a new connection.
    c.set("socket.timeout.ms", "10000");
    // A position the topic no longer holds (past its retention) resumes at the oldest message
    // kept, not at the end (librdkafka's default would skip every message in between).
    c.set("auto.offset.reset", "earliest");
    for (k, v) in &source.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &source.brokers)
        .set("group.id", &source.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Also what the watermark queries answer: the last stable offset when read committed.
        .set("isolation.level", source.isolation.property())
        // A bounded read ends where a fetch reports the end of the partition (see
        // [`KafkaReader::read`]).
        .set("enable.partition.eof", "true");
    c.create_with_context(Quiet).map_err(|e| kafka_error("cannot create a consumer", source, e))
}

/// The topic's partition count, from the broker's metadata.
///
/// # Errors
/// The broker cannot be reached, or the topic does not exist.
pub fn partition_count(source: &KafkaSourceConfig) -> Result<u32, ConnectorError> {
    let consumer = consumer(source)?;
    let metadata = consumer.fetch_metadata(Some(&source.topic), METADATA_TIMEOUT).map_err(|e| kafka_error("cannot read metadata", source, e))?;
    let topic = metadata.topics().iter().find(|t| t.name() == source.topic).ok_or_else(|| kafka_error("no metadata", source, "topic missing"))?;
    if let Some(e) = topic.error() {
        return Err(kafka_error("the topic cannot be read (create it first: sluice does not create source topics)", source, format!("{e:?}")));
    }
    if topic.partitions().is_empty() {
        return Err(kafka_error("the topic has no partitions (create it first: sluice does not create source topics)", source, "0 partitions"));
    }
    Ok(topic.partitions().len() as u32)
}

/// The name of a partition's reader: the key of its position in sluice's commits.
pub fn reader_name(config: &KafkaSourceConfig, partition: u32) -> String {
    format!("kafka:{}:{}:{partition}", config.name, config.topic)
}

/// Reads one partition of a topic.
pub struct KafkaReader {
    name: String,
    config: KafkaSourceConfig,
    partition: i32,
    consumer: Option<QuietConsumer>,
    /// The next offset to read.
    position: Option<u64>,
    /// The high watermark at start, for `until = "high_watermark"`.
    end: Option<u64>,
    /// The position at which the consumer last reported the end of the partition (a fetch
    /// answered with nothing past it), until a record comes after it.
    eof_at: Option<u64>,
    last_error: Option<Instant>,
    /// Whether fetching is paused (backpressure).
    paused: bool,
    /// Asked to end at the high watermark of now (see [`PartitionReader::drain`]).
    draining: bool,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader").field("name", &self.name).field("position", &self.position).finish()
    }
}

impl KafkaReader {
    /// The reader of `partition` of the source's topic (connects at the first read).
    pub fn new(config: &KafkaSourceConfig, partition: u32) -> Self {
        KafkaReader {
            name: reader_name(config, partition),
            config: config.clone(),
            partition: partition as i32,
            consumer: None,
            position: None,
            end: None,
            eof_at: None,
            last_error: None,
            paused: false,
            draining: false,
        }
    }

    fn connect(&mut self) -> Result<(), ConnectorError> {
        if self.consumer.is_some() {
            return Ok(());
        }
        let consumer = consumer(&self.config)?;
        let (low, high) = consumer
            .fetch_watermarks(&self.config.topic, self.partition, METADATA_TIMEOUT)
            .map_err(|e| kafka_error(&format!("cannot read the offsets of partition {}", self.partition), &self.config, e))?;
        let position = match self.position {
            Some(p) => {
                if (p as i64) < low {
                    tracing::warn!(partition = %self.name, committed = p, earliest = low, "records after the committed position were deleted by retention before sluice read them; resuming at the earliest");
                    low as u64
                } else {
                    p
                }
            }
            None => match self.config.start {
                StartAt::Earliest => low.max(0) as u64,
                StartAt::Latest => high.max(0) as u64,
            },
        };
        // The end is the watermark of the first connect; a reconnect does not move it.
        if (self.config.until == Until::HighWatermark || self.draining) && self.end.is_none() {
            self.end = Some(high.max(0) as u64);
        }
        self.eof_at = None;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.config.topic, self.partition, Offset::Offset(position as i64))
            .map_err(|e| kafka_error("cannot build the assignment", &self.config, e))?;
        consumer.assign(&assignment).map_err(|e| kafka_error("cannot assign the partition", &self.config, e))?;
        if self.paused {
            consumer.pause(&assignment).map_err(|e| kafka_error("cannot pause the partition", &self.config, e))?;
        }
        self.position = Some(position);
        self.consumer = Some(consumer);
        Ok(())
    }
}

impl PartitionReader for KafkaReader {
    /// A partition's messages are there to read again (within the topic's retention; a
    /// message gone is reported by the order buffer).
    fn replayable(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn seek(&mut self, position: u64) -> Result<(), ConnectorError> {
        self.position = Some(position);
        retire(self.consumer.take());
        Ok(())
    }

    fn read(&mut self, records_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        self.read_bounded(records_max, usize::MAX, out)
    }

    fn read_bounded(&mut self, records_max: usize, bytes_max: usize, out: &mut Vec<Fetched>) -> Result<ReadStatus, ConnectorError> {
        if let Err(e) = self.connect() {
            // The broker may come back: report, wait, retry (never a fatal error).
            if self.last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(partition = %self.name, error = %e, "Kafka source waiting for the broker");
                self.last_error = Some(Instant::now());
            }
            return Ok(ReadStatus::Waiting);
        }
        let consumer = self.consumer.as_ref().expect("invariant: connected above");
        let mut position = self.position.expect("invariant: set at connect");
        // Records known to exist (below the end of a bounded read) are waited for rather than
        // ending the epoch early: a backfill's epochs then hold `epoch_records` each, the same
        // as a file source's, whatever the fetch timing.
        let wait = if self.end.is_some() { Duration::from_millis(100) } else { Duration::ZERO };
        let (mut got, mut got_bytes) = (0, 0);
        let mut eof = false;
        while got < records_max && got_bytes < bytes_max {
            match consumer.poll(wait) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    eof = true;
                    break;
                }
                Some(Err(e)) => {
                    if self.last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(partition = %self.name, error = %e, "Kafka consumer error; reconnecting at the position read so far");
                        self.last_error = Some(Instant::now());
                    }
                    // A fresh consumer at the next read: one whose broker restarted may wait on
                    // requests the broker forgot (seen with tansu). sluice keeps the position.
                    self.position = Some(position);
                    retire(self.consumer.take());
                    return Ok(if got > 0 { ReadStatus::More } else { ReadStatus::Waiting });
                }
                Some(Ok(m)) => {
                    let offset = m.offset() as u64;
                    if offset < position {
                        continue;
                    }
                    let bytes = m.payload().unwrap_or_default().to_vec();
                    got_bytes += bytes.len();
                    out.push(Fetched { offset, bytes, meta: Some(Box::new(meta(&m))) });
                    position = offset + 1;
                    got += 1;
                    self.eof_at = None;
                }
            }
        }
        // Past the control records (transaction markers) after the last record read, and the
        // records of aborted transactions a committed read skips: librdkafka moves the
        // consumer's position over them as it hands out what follows. Without this a
        // partition that ends with a marker would never reach its end, and a restart would
        // seek to a marker.
        if let Ok(list) = consumer.position() {
            if let Some(rdkafka::Offset::Offset(o)) = list.find_partition(&self.config.topic, self.partition).map(|e| e.offset()) {
                position = position.max(o.max(0) as u64);
            }
        }
        if eof {
            self.eof_at = Some(position);
        }
        self.position = Some(position);
        if got > 0 {
            return Ok(ReadStatus::More);
        }
        // A bounded read ends past the end it was given and where a fetch found nothing more.
        // Not at the end alone: tansu 0.6.0 answers ListOffsets with the first offset of the
        // partition's last batch, which would cut that batch off. Not after a quiet while
        // either: a broker away for longer would end the read early.
        match self.end {
            Some(end) if position >= end && self.eof_at == Some(position) => Ok(ReadStatus::End),
            // Records known to exist below the end: not `Waiting`, which lets the source close
            // the epoch on wall time. A bounded read's epochs then hold `epoch_records` per
            // partition whatever the fetch timing, the same in every run (a second instance
            // taking over by the progress topic depends on it).
            Some(end) if position < end && self.consumer.is_some() => Ok(ReadStatus::More),
            _ => Ok(ReadStatus::Waiting),
        }
    }

    fn position(&self) -> u64 {
        self.position.unwrap_or(0)
    }

    fn drain(&mut self) {
        self.draining = true;
        if self.end.is_some() {
            return;
        }
        if let Some(consumer) = self.consumer.as_ref() {
            match consumer.fetch_watermarks(&self.config.topic, self.partition, METADATA_TIMEOUT) {
                Ok((_, high)) => self.end = Some(high.max(0) as u64),
                // Not connected yet, or the broker is away: the end is read at connect.
                Err(e) => {
                    tracing::warn!(partition = %self.name, error = %e, "cannot read the high watermark to drain at; retrying at reconnect");
                    retire(self.consumer.take());
                }
            }
        }
    }

    fn pause(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        let Some(consumer) = self.consumer.as_ref() else { return };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, self.partition);
        let result = if paused { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
        if let Err(e) = result {
            // Not fatal: an unpaused consumer only prefetches up to its bounded queue.
            tracing::warn!(partition = %self.name, error = %e, paused, "cannot pause or resume the partition");
        }
    }
}

/// Drops a consumer on a thread of its own: closing one waits on its group coordinator, which
/// must not hold up a worker while the broker is away.
pub(crate) fn retire(consumer: Option<QuietConsumer>) {
    if let Some(c) = consumer {
        let _ = std::thread::Builder::new().name("sluice-kafka-close".into()).spawn(move || drop(c));
    }
}

/// A message's key, timestamp and headers.
fn meta<M: Message>(m: &M) -> RecordMeta {
    RecordMeta {
        key: m.key().map(<[u8]>::to_vec),
        timestamp_ms: m.timestamp().to_millis(),
        headers: m.headers().map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect()).unwrap_or_default(),
    }
}
