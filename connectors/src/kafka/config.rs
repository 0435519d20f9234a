//! `[[sources]] type = "kafka"` and `[[sinks]] type = "kafka"`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConnectorError;

/// Where a partition without a committed position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest record the broker holds (the default: nothing is skipped).
    #[default]
    Earliest,
    /// Only records produced after the start.
    Latest,
}

/// When a Kafka source ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Never: the pipeline runs until stopped (Ctrl-C).
    #[default]
    Forever,
    /// At each partition's high watermark as of the start (its last stable offset when reading
    /// committed), once a fetch finds the end of the partition there (a backfill, or a test).
    HighWatermark,
}

/// Which records of transactional producers a Kafka source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional ones); records of an open
    /// transaction are held back until it ends, those of aborted ones never appear.
    #[default]
    ReadCommitted,
    /// Every record as written, aborted transactions included.
    ReadUncommitted,
}

impl Isolation {
    /// librdkafka's `isolation.level` value.
    pub fn property(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// A Kafka source: the partitions of one topic, spread over the workers (partition `p` of the
/// pipeline's partitions is read by worker `p % workers`), each assigned explicitly (no group
/// rebalancing: sluice keeps the offsets in its own commits).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// The source's name (key of its positions).
    pub name: String,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The consumers' `group.id`. sluice resumes from its own commits; after each commit it
    /// also commits those positions to this group (within a second), so that lag tools see
    /// them. The group's offsets are never read back.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Where a partition sluice has never read starts.
    #[serde(default)]
    pub start: StartAt,
    /// When the source ends.
    #[serde(default)]
    pub until: Until,
    /// The topic's partition count; found from the broker's metadata at start when absent.
    #[serde(default)]
    pub partitions: Option<u32>,
    /// `read_committed` (default): aborted transactions' records never reach the pipeline.
    #[serde(default)]
    pub isolation: Isolation,
    /// librdkafka properties passed through (`security.protocol`, `sasl.*`, `ssl.*`,
    /// `fetch.*`, …). sluice sets `enable.auto.commit=false`, `enable.partition.eof` and
    /// `isolation.level` (from `isolation`) itself; they cannot be overridden.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group() -> String {
    "sluice".into()
}

/// Delivery guarantee of a Kafka sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// A transaction per epoch with the epoch's progress record: output of an epoch appears
    /// once to `read_committed` readers. Needs a broker with transactions (Kafka, Redpanda).
    #[default]
    ExactlyOnce,
    /// The idempotent producer, then the progress record: after a crash, at most the epoch
    /// that was being delivered is produced again (its records carry `sluice-epoch`).
    AtLeastOnce,
}

/// Properties sluice sets itself on consumers.
pub const RESERVED_CONSUMER: &[&str] = &["enable.auto.commit", "enable.partition.eof", "group.id", "bootstrap.servers", "isolation.level"];
/// Properties sluice sets itself on producers.
pub const RESERVED_PRODUCER: &[&str] = &["enable.idempotence", "transactional.id", "bootstrap.servers"];

impl KafkaSourceConfig {
    /// Checks the config; `key` is where it sits.
    ///
    /// # Errors
    /// An empty broker list or topic; a reserved property.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        if self.brokers.trim().is_empty() {
            return Err(ConnectorError::Config { key: format!("{key}.brokers"), problem: "must name at least one broker (host:port)".into() });
        }
        if self.topic.trim().is_empty() {
            return Err(ConnectorError::Config { key: format!("{key}.topic"), problem: "must not be empty".into() });
        }
        if self.partitions == Some(0) {
            return Err(ConnectorError::Config { key: format!("{key}.partitions"), problem: "must be at least 1".into() });
        }
        for k in self.properties.keys() {
            if k == "isolation.level" {
                return Err(ConnectorError::Config {
                    key: format!("{key}.properties.{k}"),
                    problem: "is set by sluice: use `isolation = \"read_committed\"` (the default) or `\"read_uncommitted\"`".into(),
                });
            }
            if RESERVED_CONSUMER.contains(&k.as_str()) {
                return Err(ConnectorError::Config { key: format!("{key}.properties.{k}"), problem: "is set by sluice and cannot be overridden".into() });
            }
        }
        Ok(())
    }
}

/// `[[sinks]] type = "kafka"`: one output stream to one topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The stream.
    pub stream: String,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The output topic.
    pub topic: String,
    /// `exactly_once` (default; transactions) or `at_least_once` (idempotent producer).
    #[serde(default)]
    pub delivery: Delivery,
    /// The single-partition topic where the sink records which epoch it delivered last
    /// (default `<topic>.sluice-progress`; created when missing).
    #[serde(default)]
    pub progress_topic: Option<String>,
    /// `transactional.id` (exactly-once) and the key of this sink's progress records; unique
    /// per pipeline and sink (default `sluice-<stream>-<topic>`). A second process with the same
    /// id fences the first.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Partitions of the output topic when sluice creates it (it creates it when missing).
    #[serde(default = "default_sink_partitions")]
    pub partitions: u32,
    /// librdkafka producer properties passed through (`compression.type`, `linger.ms`,
    /// `security.protocol`, `sasl.*`, `ssl.*`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_sink_partitions() -> u32 {
    1
}

impl KafkaSinkConfig {
    /// The progress topic.
    pub fn progress_topic(&self) -> String {
        self.progress_topic.clone().unwrap_or_else(|| format!("{}.sluice-progress", self.topic))
    }

    /// The transactional id, which is also the key of the progress records.
    pub fn transactional_id(&self) -> String {
        self.transactional_id.clone().unwrap_or_else(|| format!("sluice-{}-{}", self.stream, self.topic))
    }

    /// Checks the config; `key` is where it sits.
    ///
    /// # Errors
    /// An empty broker list or topic; a reserved property; timeouts in the wrong order.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        if self.brokers.trim().is_empty() {
            return Err(ConnectorError::Config { key: format!("{key}.brokers"), problem: "must name at least one broker (host:port)".into() });
        }
        if self.topic.trim().is_empty() {
            return Err(ConnectorError::Config { key: format!("{key}.topic"), problem: "must not be empty".into() });
        }
        if self.partitions == 0 {
            return Err(ConnectorError::Config { key: format!("{key}.partitions"), problem: "must be at least 1".into() });
        }
        for k in self.properties.keys() {
            if RESERVED_PRODUCER.contains(&k.as_str()) {
                return Err(ConnectorError::Config { key: format!("{key}.properties.{k}"), problem: "is set by sluice and cannot be overridden".into() });
            }
        }
        let ms = |k: &str, default: u64| self.properties.get(k).map_or(Ok(default), |v| v.parse::<u64>().map_err(|_| format!("`{v}` is not a number of ms")));
        let message = ms("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS)
            .map_err(|p| ConnectorError::Config { key: format!("{key}.properties.message.timeout.ms"), problem: p })?;
        let transaction = ms("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS)
            .map_err(|p| ConnectorError::Config { key: format!("{key}.properties.transaction.timeout.ms"), problem: p })?;
        if self.delivery == Delivery::ExactlyOnce && message >= transaction {
            return Err(ConnectorError::Config {
                key: format!("{key}.properties.message.timeout.ms"),
                problem: format!("{message} must be below transaction.timeout.ms ({transaction}), or a timed-out message could outlive its transaction"),
            });
        }
        Ok(())
    }
}

/// `message.timeout.ms` unless set: how long a record may wait for its acknowledgement.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// `transaction.timeout.ms` unless set.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;
