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
pub use sink::{ensure_topics, kafka_sink, read_progress, start_delivery, DeliveryHandle, DeliveryState};
pub use source::{consumer, partition_count, reader_name, KafkaReader};
