//! Kafka: a source (one explicitly assigned consumer per partition; offsets in sluice's epoch
//! commits) and a sink (a transactional outbox delivered per epoch, exactly-once with
//! transactions or at-least-once with the idempotent producer).
//!
//! | file | what it owns |
//! |---|---|
//! | `config.rs` | [`KafkaSourceConfig`], [`KafkaSinkConfig`] |
//! | `source.rs` | [`KafkaReader`], partition discovery, message key/timestamp/headers for the decoder |
//! | `feed.rs` | [`Feeder`]: the generator into a topic (`sluice demo --kafka`, the benchmark) |
//! | `logs.rs` | [`logs::Quiet`]: librdkafka's log and error callbacks, one line per kind per 30 s |
//! | `offsets.rs` | [`OffsetPublisher`]: committed positions to the consumer group, lag metrics |
//! | `sink.rs` | the outbox, the delivery thread, progress records, topic creation |

mod config;
pub mod feed;
pub mod logs;
pub mod offsets;
pub mod sink;
mod source;

pub use config::{Delivery, Isolation, KafkaSinkConfig, KafkaSourceConfig, StartAt, Until};
pub use feed::Feeder;
pub use offsets::OffsetPublisher;
pub use sink::{ensure_topics, kafka_sink, read_progress, start_delivery, DeliveryHandle};
pub use source::{consumer, partition_count, reader_name, KafkaReader};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use sluice_operators::Epoch;
use sluice_state::WorkerState;
use timely::dataflow::Stream;

use crate::connector::{parse_sink, parse_source, Service, ServiceContext, Sink, SinkKind, Source, SourceKind};
use crate::sink::{DeliveryState, OutputLine};
use crate::source::TimeOfFactory;
use crate::{ConnectorError, OutputStream, PartitionReader};

/// The `kafka` source's registry line.
pub const SOURCE: SourceKind = SourceKind {
    kind: "kafka",
    about: "one topic, partitions assigned to workers explicitly; offsets kept in sluice's commits",
    parse: parse_source::<KafkaSourceConfig>,
};

/// The `kafka` sink's registry line.
pub const SINK: SinkKind = SinkKind {
    kind: "kafka",
    about: "one output stream to a topic, delivered per committed epoch: exactly-once (transactions) or at-least-once (idempotent)",
    parse: parse_sink::<KafkaSinkConfig>,
    tables: sink::tables,
};

impl Source for KafkaSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        KafkaSourceConfig::validate(self, key)
    }

    /// The topic's partition count, from the broker.
    fn resolve(&mut self) -> Result<(), ConnectorError> {
        let found = partition_count(self)?;
        match self.partitions {
            Some(p) if p > found => Err(ConnectorError::KafkaPartitions { topic: self.topic.clone(), found, configured: p }),
            Some(_) => Ok(()),
            None => {
                self.partitions = Some(found);
                Ok(())
            }
        }
    }

    fn partitions(&self) -> usize {
        self.partitions.unwrap_or(0) as usize
    }

    fn reader(&self, partition: usize, _time_of: Option<TimeOfFactory>) -> Box<dyn PartitionReader> {
        Box::new(KafkaReader::new(self, partition as u32))
    }

    /// Commits sluice's committed positions to the consumer group, for lag tools.
    fn start(&self, context: ServiceContext<'_>) -> Result<Option<Box<dyn Service>>, ConnectorError> {
        Ok(Some(Box::new(OffsetPublisher::start(self, Arc::clone(context.store), Arc::clone(context.metrics))?)))
    }
}

impl Service for OffsetPublisher {
    /// Publishes the final positions once more.
    fn finish(self: Box<Self>) -> Result<(), ConnectorError> {
        OffsetPublisher::finish(*self);
        Ok(())
    }
}

impl Sink for KafkaSinkConfig {
    fn stream(&self) -> &str {
        &self.stream
    }

    fn describe(&self) -> String {
        format!("{} -> kafka {} on {} ({:?})", self.stream, self.topic, self.brokers, self.delivery)
    }

    fn destination(&self) -> String {
        format!("{:<14} → topic {} on {}", self.stream, self.topic, self.brokers)
    }

    /// Also: the `slo` stream is written by the monitor, to a file sink only.
    fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        if self.stream == OutputStream::Slo.name() {
            return Err(ConnectorError::Config { key: format!("{key}.type"), problem: "the slo stream is written by the monitor to a file sink only".into() });
        }
        KafkaSinkConfig::validate(self, key).map_err(|e| ConnectorError::Config { key: key.to_string(), problem: e.to_string() })
    }

    fn exclusive(&self) -> Vec<(&'static str, String)> {
        vec![("transactional_id", self.transactional_id())]
    }

    /// The delivery thread: from the first committed epoch not yet delivered; it raises
    /// `stop` when a delivery fails.
    fn start(&self, context: ServiceContext<'_>) -> Result<Option<Box<dyn Service>>, ConnectorError> {
        Ok(Some(Box::new(start_delivery(self, Arc::clone(context.store), Arc::clone(context.stop))?)))
    }

    fn build<'scope>(
        &self,
        lines: Stream<'scope, Epoch, Vec<OutputLine>>,
        state: Rc<RefCell<WorkerState>>,
        delivery: Option<Arc<DeliveryState>>,
    ) -> Result<Stream<'scope, Epoch, Vec<()>>, ConnectorError> {
        kafka_sink(lines, self, delivery, state)
    }
}

impl Service for DeliveryHandle {
    fn delivery(&self) -> Option<Arc<DeliveryState>> {
        Some(Arc::clone(&self.state))
    }

    /// Delivers every committed epoch left.
    fn finish(self: Box<Self>) -> Result<(), ConnectorError> {
        DeliveryHandle::finish(*self)
    }
}
