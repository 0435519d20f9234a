//! Feeds a topic from the generator: the input of `sluice demo --kafka` and of the Kafka
//! benchmark. Generator partition `p` goes to topic partition `p`, at the generator's rate
//! (or as fast as the broker takes it); each message's timestamp is its produce time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::logs::Quiet;
use crate::error::ConnectorError;
use crate::generator::{GeneratorConfig, GeneratorReader};
use crate::source::{PartitionReader, ReadStatus};

/// A running feeder.
#[derive(Debug)]
pub struct Feeder {
    /// Records produced (acknowledged or not) so far.
    pub produced: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<u64, ConnectorError>>,
}

impl Feeder {
    /// Creates `topic` with a partition per partition of `source`, which must be a generator,
    /// and feeds it from the source ([`Feeder::start`]).
    ///
    /// # Errors
    /// `source` is not a generator, the topic cannot be created, or the producer cannot be
    /// created.
    pub fn from_source(source: &crate::SourceConfig, brokers: &str, topic: &str, stop: Arc<AtomicBool>) -> Result<Self, ConnectorError> {
        let generator = source
            .get::<GeneratorConfig>()
            .ok_or_else(|| ConnectorError::Config { key: format!("sources.{}.type", source.name()), problem: "only a generator feeds a topic".into() })?;
        super::ensure_topics(brokers, &Default::default(), &[(topic, generator.partitions)])?;
        Feeder::start(generator, brokers, topic, stop)
    }

    /// Produces the generator's records into `topic` (which must have at least
    /// `generator.partitions` partitions) until the generator ends or `stop` is set.
    ///
    /// # Errors
    /// The producer cannot be created.
    pub fn start(generator: &GeneratorConfig, brokers: &str, topic: &str, stop: Arc<AtomicBool>) -> Result<Self, ConnectorError> {
        let producer: BaseProducer<Quiet> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(Quiet)
            .map_err(|e| ConnectorError::Kafka { what: format!("cannot create a producer for {brokers}"), source: e.into() })?;
        let mut readers: Vec<GeneratorReader> = (0..generator.partitions).map(|p| GeneratorReader::new(generator, p)).collect();
        let topic = topic.to_string();
        let produced = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&produced);
        let thread = std::thread::Builder::new()
            .name("sluice-feeder".into())
            .spawn(move || {
                let mut batch = Vec::new();
                let mut ended = vec![false; readers.len()];
                while !ended.iter().all(|e| *e) && !stop.load(Ordering::Relaxed) {
                    let mut any = false;
                    for (p, reader) in readers.iter_mut().enumerate() {
                        if ended[p] {
                            continue;
                        }
                        batch.clear();
                        let status = reader.read(1_000, &mut batch)?;
                        ended[p] = status == ReadStatus::End;
                        any |= !batch.is_empty();
                        for f in &batch {
                            let mut record = BaseRecord::<(), [u8]>::to(&topic).payload(f.bytes.as_slice()).partition(p as i32);
                            loop {
                                match producer.send(record) {
                                    Ok(()) => break,
                                    Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                                        producer.poll(Duration::from_millis(5));
                                        record = back;
                                    }
                                    Err((e, _)) => return Err(ConnectorError::Kafka { what: format!("cannot produce to {topic}"), source: e.into() }),
                                }
                            }
                        }
                        count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    producer.poll(if any { Duration::ZERO } else { Duration::from_millis(1) });
                }
                producer
                    .flush(Duration::from_secs(60))
                    .map_err(|e| ConnectorError::Kafka { what: format!("cannot flush the produced records to {topic}"), source: e.into() })?;
                Ok(count.load(Ordering::Relaxed))
            })
            .map_err(|e| ConnectorError::Thread { thread: "Kafka feeder", source: e })?;
        Ok(Feeder { produced, thread })
    }

    /// Whether every record is produced and flushed.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the end: the number of records produced, all acknowledged.
    ///
    /// # Errors
    /// A produce or flush failed.
    pub fn join(self) -> Result<u64, ConnectorError> {
        self.thread.join().map_err(|_| ConnectorError::Kafka { what: "feeding the topic".into(), source: "the feeder thread panicked".into() })?
    }
}
