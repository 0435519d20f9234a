//! Makes a Kafka source's progress visible outside sluice: after each commit, the committed
//! positions are committed to the source's consumer group (so `kafka-consumer-groups` and other
//! lag tools see them), and each partition's high watermark and committed offset are published
//! as metrics (`sluice_kafka_consumer_lag`).
//!
//! sluice resumes from its own commits, never from the group's offsets: the group's offsets
//! trail sluice's by up to [`INTERVAL`], and a group commit that fails is logged and retried
//! at the next interval, never fatal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_operators::{KafkaPartitionGauge, Metrics};
use sluice_state::{StateReader, StateStore, Table, U64Codec};

use super::config::KafkaSourceConfig;
use super::logs::QuietConsumer;
use super::source::{consumer, METADATA_TIMEOUT};
use crate::source::POSITIONS_TABLE;
use crate::ConnectorError;

/// How often committed positions go to the group and watermarks are read.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A running offset publisher of one Kafka source.
#[derive(Debug)]
pub struct OffsetPublisher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The offsets last committed to the group, per partition.
    pub committed: Arc<Mutex<BTreeMap<i32, i64>>>,
}

struct Publisher {
    config: KafkaSourceConfig,
    reader: StateReader,
    table: Table<U64Codec>,
    metrics: Arc<Metrics>,
    consumer: Option<QuietConsumer>,
    committed: Arc<Mutex<BTreeMap<i32, i64>>>,
    last_error: Option<Instant>,
}

impl Publisher {
    fn warn(&mut self, what: &str, e: impl std::fmt::Display) {
        if self.last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            tracing::warn!(source = %self.config.name, topic = %self.config.topic, error = %e, "{what}; retrying");
            self.last_error = Some(Instant::now());
        }
    }

    /// One round: committed positions to the group, watermarks to the metrics.
    fn publish(&mut self) {
        let consumer = match self.consumer.take() {
            Some(c) => c,
            None => match consumer(&self.config) {
                Ok(c) => c,
                Err(e) => return self.warn("cannot create the offset-committing consumer", e),
            },
        };
        // Keep the consumer only while it works: a fresh one after an error.
        if self.publish_with(&consumer) {
            self.consumer = Some(consumer);
        }
    }

    /// One round with `consumer`; false when it failed.
    fn publish_with(&mut self, consumer: &QuietConsumer) -> bool {
        let partitions = self.config.partitions.unwrap_or(0) as i32;
        let view = self.reader.view();
        let snapshot = view.snapshot();
        let mut positions = BTreeMap::new();
        for p in 0..partitions {
            let name = super::source::reader_name(&self.config, p as u32);
            match snapshot.get(&self.table, name.as_bytes()) {
                Ok(Some(position)) => {
                    positions.insert(p, position as i64);
                }
                Ok(None) => {}
                Err(e) => {
                    self.warn("cannot read committed positions", e);
                    return false;
                }
            }
        }
        drop(snapshot);
        drop(view);
        let changed: Vec<(i32, i64)> = {
            let done = self.committed.lock().expect("invariant: not poisoned");
            positions.iter().filter(|(p, o)| done.get(p) != Some(o)).map(|(p, o)| (*p, *o)).collect()
        };
        if !changed.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &changed {
                if let Err(e) = tpl.add_partition_offset(&self.config.topic, *p, Offset::Offset(*o)) {
                    self.warn("cannot build the offset list", e);
                    return false;
                }
            }
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => self.committed.lock().expect("invariant: not poisoned").extend(changed),
                Err(e) => {
                    self.warn("cannot commit offsets to the consumer group", e);
                    return false;
                }
            }
        }
        let mut gauges = Vec::new();
        for p in 0..partitions {
            match consumer.fetch_watermarks(&self.config.topic, p, METADATA_TIMEOUT) {
                Ok((_, high)) => gauges.push((p, KafkaPartitionGauge { high_watermark: high, committed: positions.get(&p).copied().unwrap_or(0) })),
                Err(e) => {
                    self.warn("cannot read the high watermarks", e);
                    return false;
                }
            }
        }
        if let Ok(mut m) = self.metrics.kafka.partitions.lock() {
            for (p, g) in gauges {
                m.insert((self.config.name.clone(), p), g);
            }
        }
        true
    }
}

impl OffsetPublisher {
    /// Starts publishing the committed positions of `config`'s partitions (resolved: its
    /// partition count is known).
    ///
    /// # Errors
    /// The positions table is missing, or the thread cannot start.
    pub fn start(config: &KafkaSourceConfig, store: Arc<StateStore>, metrics: Arc<Metrics>) -> Result<Self, ConnectorError> {
        let reader = StateReader::new(store);
        let table = reader.table(POSITIONS_TABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(Mutex::new(BTreeMap::new()));
        let mut publisher = Publisher { config: config.clone(), reader, table, metrics, consumer: None, committed: Arc::clone(&committed), last_error: None };
        let thread = std::thread::Builder::new()
            .name("sluice-kafka-offsets".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    let mut next = Instant::now();
                    loop {
                        let stopping = stop.load(Ordering::Acquire);
                        if stopping || Instant::now() >= next {
                            publisher.publish();
                            next = Instant::now() + INTERVAL;
                        }
                        if stopping {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|source| ConnectorError::Thread { thread: "Kafka offset publisher", source })?;
        Ok(OffsetPublisher { stop, thread: Some(thread), committed })
    }

    /// Publishes the final positions once more and stops.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OffsetPublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
