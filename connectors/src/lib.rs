//! sluice-connectors: sources and sinks.
//!
//! A source is a set of partitions, each read by a [`PartitionReader`] on the worker that owns
//! it; [`source::build`] turns the readers of a worker into a timely source that closes epochs,
//! stages positions and applies backpressure. A sink writes a stream out and commits per epoch.
//! This crate must not decode events (that is `decode`'s job) nor keep state outside the tables
//! it declares.
//!
//! | folder / file | what it owns |
//! |---|---|
//! | `source.rs` | the source operator, [`PartitionReader`], epochs, positions, backpressure |
//! | `file/` | JSONL file source ([`file::FileReader`]) and sink ([`file::file_sink`]) |
//! | `generator/` | the synthetic payment traffic generator |
//! | `cdc/` | change data capture: the Debezium envelope, tables keyed by primary key; the `postgres` source (logical decoding with wal2json) |
//! | `webhook/` | the `webhook` source: its HTTP server, the durable webhook log it appends to, signature verification (Standard Webhooks, Stripe, GitHub) |
//! | `kafka/` | Kafka source ([`kafka::KafkaReader`]) and sink ([`kafka::kafka_sink`], delivery from an outbox) |
//! | `inspect.rs` | [`inspect::committed`]: the connectors' committed state (positions, sink lengths, outbox), for `sluice checkpoint inspect` |
//! | `services.rs` | [`services::Services`]: the connectors' background services, started and finished together |
//! | `stream.rs` | [`OutputStream`]: the output streams a sink can take |
//! | `error.rs` | [`ConnectorError`] |
//!
//! [`registry`] lists every connector; [`SourceConfig`] is what `[[sources]]` entries parse to.

pub mod cdc;
mod error;
pub mod file;
pub mod generator;
pub mod inspect;
pub mod kafka;
pub mod services;
pub mod source;
pub mod stream;
pub mod webhook;

use serde::Deserialize;

pub use error::{BoxError, ConnectorError, Retry};
pub use source::{PartitionReader, ReadStatus, SourceSettings};
pub use stream::OutputStream;

/// A connector, as listed by [`registry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorInfo {
    /// The `type` in a pipeline file.
    pub kind: &'static str,
    /// `source` or `sink`.
    pub role: &'static str,
    /// One line on what it does.
    pub about: &'static str,
}

/// Every connector sluice has.
pub fn registry() -> &'static [ConnectorInfo] {
    &[
        ConnectorInfo { kind: "file", role: "source", about: "JSONL files, one partition per file; as fast as possible or paced by event time" },
        ConnectorInfo {
            kind: "generator",
            role: "source",
            about: "seeded synthetic payment traffic with duplicates, conflicts, disorder, late and malformed records",
        },
        ConnectorInfo { kind: "kafka", role: "source", about: "one topic, partitions assigned to workers explicitly; offsets kept in sluice's commits" },
        ConnectorInfo {
            kind: "webhook",
            role: "source",
            about: "HTTP webhooks: signature checked (Standard Webhooks, Stripe, GitHub), logged durably before the 2xx, deduplicated by id",
        },
        ConnectorInfo {
            kind: "postgres",
            role: "source",
            about: "PostgreSQL changes by logical decoding (wal2json) from a replication slot, as Debezium-shaped records; the slot advanced only to committed positions",
        },
        ConnectorInfo { kind: "file", role: "sink", about: "one JSONL file per output stream, sorted and committed per epoch" },
        ConnectorInfo {
            kind: "kafka",
            role: "sink",
            about: "one output stream to a topic, delivered per committed epoch: exactly-once (transactions) or at-least-once (idempotent)",
        },
    ]
}

/// One `[[sources]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// JSONL files.
    File(file::FileSourceConfig),
    /// The generator.
    Generator(generator::GeneratorConfig),
    /// A Kafka topic.
    Kafka(kafka::KafkaSourceConfig),
    /// Webhooks over HTTP.
    Webhook(webhook::WebhookSourceConfig),
    /// PostgreSQL's changes (logical decoding, wal2json).
    Postgres(cdc::postgres::PostgresSourceConfig),
}

impl SourceConfig {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::File(c) => &c.name,
            SourceConfig::Generator(c) => &c.name,
            SourceConfig::Kafka(c) => &c.name,
            SourceConfig::Webhook(c) => &c.name,
            SourceConfig::Postgres(c) => &c.name,
        }
    }

    /// Makes its relative paths relative to the pipeline file's folder, by `fix`.
    pub fn resolve_paths(&mut self, fix: &dyn Fn(&mut std::path::PathBuf)) {
        if let SourceConfig::File(f) = self {
            f.paths.iter_mut().for_each(fix);
            if let Some(p) = f.path.as_mut() {
                fix(p);
            }
        }
    }

    /// Fills in the defaults that are places under the pipeline's state directory: a webhook
    /// source's log (`<state_dir>/webhooks/<name>`).
    pub fn default_under(&mut self, state_dir: &std::path::Path) {
        if let SourceConfig::Webhook(w) = self {
            if w.log_dir.is_none() {
                w.log_dir = Some(state_dir.join("webhooks").join(&w.name));
            }
        }
    }

    /// Number of partitions (a Kafka source's after [`SourceConfig::resolve`]).
    pub fn partitions(&self) -> usize {
        match self {
            SourceConfig::File(c) => c.files().len(),
            SourceConfig::Generator(c) => c.partitions as usize,
            SourceConfig::Kafka(c) => c.partitions.unwrap_or(0) as usize,
            SourceConfig::Webhook(_) | SourceConfig::Postgres(_) => 1,
        }
    }

    /// Fills in what only the outside world knows: a Kafka topic's partition count.
    ///
    /// # Errors
    /// The broker cannot be reached, or the topic does not exist or has fewer partitions than
    /// configured.
    pub fn resolve(&mut self) -> Result<(), ConnectorError> {
        if let SourceConfig::Postgres(c) = self {
            c.ensure_slot()?;
        }
        if let SourceConfig::Kafka(c) = self {
            let found = kafka::partition_count(c)?;
            match c.partitions {
                Some(p) if p > found => {
                    return Err(ConnectorError::KafkaPartitions { topic: c.topic.clone(), found, configured: p });
                }
                Some(_) => {}
                None => c.partitions = Some(found),
            }
        }
        Ok(())
    }

    /// Checks the config; `key` is where it sits (`sources[0]`).
    ///
    /// # Errors
    /// What the connector's `validate` finds.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        if self.name().is_empty() {
            return Err(ConnectorError::Config { key: format!("{key}.name"), problem: "must not be empty".into() });
        }
        match self {
            SourceConfig::File(c) => c.validate(key),
            SourceConfig::Generator(c) => c.validate(key),
            SourceConfig::Kafka(c) => c.validate(key),
            SourceConfig::Webhook(c) => c.validate(key),
            SourceConfig::Postgres(c) => c.validate(key),
        }
    }

    /// The reader of the source's partition `partition` (0-based within the source).
    /// `time_of` extracts event times, for pacing by event time.
    pub fn reader(&self, partition: usize, time_of: Option<file::TimeOfFactory>) -> Box<dyn PartitionReader> {
        match self {
            SourceConfig::File(c) => {
                let path = &c.files()[partition];
                let reader = file::FileReader::new(&c.name, path, c.at_eof, c.line_bytes_max);
                match (c.pace_speedup, time_of) {
                    (Some(speedup), Some(factory)) => Box::new(reader.paced(speedup, factory())),
                    _ => Box::new(reader),
                }
            }
            SourceConfig::Generator(c) => Box::new(generator::GeneratorReader::new(c, partition as u32)),
            SourceConfig::Kafka(c) => Box::new(kafka::KafkaReader::new(c, partition as u32)),
            SourceConfig::Webhook(c) => {
                let dir = c.log_dir.as_deref().expect("invariant: the pipeline sets the log directory before building readers");
                let log = webhook::WebhookLog::open(dir).expect("invariant: the pipeline opened the log before building readers");
                Box::new(webhook::WebhookReader::new(&c.name, log))
            }
            SourceConfig::Postgres(c) => Box::new(cdc::postgres::PostgresReader::new(c)),
        }
    }
}

/// Every table the connectors declare.
pub fn tables() -> Vec<sluice_state::TableSpec> {
    let mut t = source::tables();
    t.extend(file::sink_tables());
    t.extend(kafka::sink::tables());
    t
}

/// One `[[sinks]]` entry: `type = "file"` (the default) or `type = "kafka"`.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// A JSONL file.
    File(file::FileSinkConfig),
    /// A Kafka topic.
    Kafka(kafka::KafkaSinkConfig),
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        match value.get("type").and_then(serde_json::Value::as_str).unwrap_or("file") {
            "file" => serde_json::from_value(value).map(SinkConfig::File).map_err(D::Error::custom),
            "kafka" => serde_json::from_value(value).map(SinkConfig::Kafka).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("`{other}` is not a sink type; sinks: file, kafka"))),
        }
    }
}

impl SinkConfig {
    /// The stream the sink writes, once validated (`None`: not a stream's name).
    pub fn output(&self) -> Option<OutputStream> {
        OutputStream::from_name(self.stream())
    }

    /// The name of the stream the sink writes, as configured.
    pub fn stream(&self) -> &str {
        match self {
            SinkConfig::File(c) => &c.stream,
            SinkConfig::Kafka(c) => &c.stream,
        }
    }

    /// Writes `lines` out. The returned stream passes an epoch once the sink has written or
    /// staged it, so that a probe after it passes an epoch only once the commit can hold it.
    /// `delivery` is the Kafka sink's delivery state, on the worker that reports commits to it.
    ///
    /// # Errors
    /// The sink's table cannot be opened, or its output file cannot be prepared.
    pub fn build<'scope>(
        &self,
        lines: timely::dataflow::Stream<'scope, sluice_operators::Epoch, Vec<file::OutputLine>>,
        state: std::rc::Rc<std::cell::RefCell<sluice_state::WorkerState>>,
        delivery: Option<std::sync::Arc<kafka::DeliveryState>>,
    ) -> Result<timely::dataflow::Stream<'scope, sluice_operators::Epoch, Vec<()>>, ConnectorError> {
        match self {
            SinkConfig::File(c) => file::file_sink(lines, &c.stream, &c.path, state),
            SinkConfig::Kafka(c) => kafka::kafka_sink(lines, c, delivery, state),
        }
    }

    /// Where it writes, in one line (`features -> out/features.jsonl`).
    pub fn describe(&self) -> String {
        match self {
            SinkConfig::File(f) => format!("{} -> {}", f.stream, f.path.display()),
            SinkConfig::Kafka(k) => format!("{} -> kafka {} on {} ({:?})", k.stream, k.topic, k.brokers, k.delivery),
        }
    }

    /// Makes its relative paths relative to the pipeline file's folder, by `fix`.
    pub fn resolve_paths(&mut self, fix: &dyn Fn(&mut std::path::PathBuf)) {
        match self {
            SinkConfig::File(f) => fix(&mut f.path),
            SinkConfig::Kafka(_) => {}
        }
    }

    /// Checks it against the sinks configured before it (`key` is `sinks[i]`): no two write
    /// one file or share a transactional id; the `slo` stream goes to a file.
    ///
    /// # Errors
    /// The first problem, with its key.
    pub fn validate_among(&self, key: &str, earlier: &[SinkConfig]) -> Result<(), ConnectorError> {
        let bad = |field: &str, problem: String| ConnectorError::Config { key: format!("{key}.{field}"), problem };
        match self {
            SinkConfig::File(f) => {
                if earlier.iter().any(|o| o.path() == Some(f.path.as_path())) {
                    return Err(bad("path", format!("{} is used by another sink", f.path.display())));
                }
            }
            SinkConfig::Kafka(k) => {
                if k.stream == OutputStream::Slo.name() {
                    return Err(bad("type", "the slo stream is written by the monitor to a file sink only".into()));
                }
                k.validate(key).map_err(|e| ConnectorError::Config { key: key.to_string(), problem: e.to_string() })?;
                if earlier.iter().any(|o| matches!(o, SinkConfig::Kafka(x) if x.transactional_id() == k.transactional_id())) {
                    return Err(bad("transactional_id", format!("`{}` is used by another sink", k.transactional_id())));
                }
            }
        }
        Ok(())
    }

    /// The file, for a file sink.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            SinkConfig::File(c) => Some(&c.path),
            SinkConfig::Kafka(_) => None,
        }
    }
}
