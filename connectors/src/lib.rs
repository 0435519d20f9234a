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
//! | `connector.rs` | the shape of a connector: [`Source`], [`Sink`], [`Service`], their registry lines |
//! | `source.rs` | the source operator, [`PartitionReader`], epochs, positions, backpressure |
//! | `sink.rs` | what sinks share: [`OutputLine`], [`DeliveryState`] |
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
//! [`SOURCES`] and [`SINKS`] map each `type` to its parser: a new connector is one folder (its
//! config, a `Source` or `Sink` impl, a `SOURCE` or `SINK` line) plus one line there.
//! [`SourceConfig`] and [`SinkConfig`] are what `[[sources]]` and `[[sinks]]` entries parse to.

pub mod cdc;
pub mod connector;
mod error;
pub mod file;
pub mod generator;
pub mod http;
pub mod inspect;
pub mod kafka;
pub mod services;
pub mod sink;
pub mod source;
pub mod stream;
pub mod webhook;

use std::ops::{Deref, DerefMut};

use serde::Deserialize;

pub use connector::{Service, ServiceContext, Sink, SinkKind, Source, SourceKind};
pub use error::{BoxError, ConnectorError, Retry};
pub use sink::{DeliveryState, OutputLine};
pub use source::{PartitionReader, ReadStatus, SourceSettings, TimeOf, TimeOfFactory};
pub use stream::OutputStream;

/// Every source sluice has, by `type`.
pub const SOURCES: &[SourceKind] = &[file::SOURCE, generator::SOURCE, kafka::SOURCE, webhook::SOURCE, cdc::postgres::SOURCE];

/// Every sink sluice has, by `type` (the first is the default).
pub const SINKS: &[SinkKind] = &[file::SINK, kafka::SINK];

/// Every table the connectors declare.
pub fn tables() -> Vec<sluice_state::TableSpec> {
    let mut t = source::tables();
    for kind in SINKS {
        t.extend((kind.tables)());
    }
    t
}

/// Splits a `[[sources]]` or `[[sinks]]` entry into its `type` (or `default`) and the rest.
fn typed<E: serde::de::Error>(value: serde_json::Value, default: Option<&str>) -> Result<(String, serde_json::Value), E> {
    let serde_json::Value::Object(mut map) = value else { return Err(E::custom("expected a table")) };
    let kind = match map.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(other) => return Err(E::custom(format!("`type` must be a string, not {other}"))),
        None => default.ok_or_else(|| E::missing_field("type"))?.to_string(),
    };
    Ok((kind, serde_json::Value::Object(map)))
}

/// The shared part of [`SourceConfig`] and [`SinkConfig`]: a boxed connector of the `type`
/// the entry names, found in the registry `$registry` (`$default` when the entry has none),
/// cloned and read through as the trait `$trait`, and downcast to its own config type.
macro_rules! registered {
    ($config:ident, $trait:ident, $registry:ident, $role:literal, $default:expr) => {
        impl $config {
            #[doc = concat!("The entry of `", $role, "`.")]
            pub fn new(connector: impl $trait) -> $config {
                $config(Box::new(connector))
            }

            #[doc = concat!("The ", $role, " as its own config type, if it is a `T`.")]
            pub fn get<T: $trait>(&self) -> Option<&T> {
                self.0.as_any().downcast_ref()
            }

            #[doc = concat!("The ", $role, " as its own config type, to change, if it is a `T`.")]
            pub fn get_mut<T: $trait>(&mut self) -> Option<&mut T> {
                self.0.as_any_mut().downcast_mut()
            }
        }

        impl Deref for $config {
            type Target = dyn $trait;
            fn deref(&self) -> &(dyn $trait + 'static) {
                &*self.0
            }
        }

        impl DerefMut for $config {
            fn deref_mut(&mut self) -> &mut (dyn $trait + 'static) {
                &mut *self.0
            }
        }

        impl Clone for $config {
            fn clone(&self) -> $config {
                $config(self.0.clone_box())
            }
        }

        impl<'de> Deserialize<'de> for $config {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let (kind, rest) = typed::<D::Error>(serde_json::Value::deserialize(deserializer)?, $default)?;
                let Some(entry) = $registry.iter().find(|s| s.kind == kind) else {
                    let kinds: Vec<&str> = $registry.iter().map(|s| s.kind).collect();
                    return Err(D::Error::custom(format!(concat!("`{}` is not a ", $role, " type; ", $role, "s: {}"), kind, kinds.join(", "))));
                };
                (entry.parse)(rest).map($config).map_err(D::Error::custom)
            }
        }
    };
}

/// One `[[sources]]` entry: a [`Source`] of the `type` it names.
#[derive(Debug)]
pub struct SourceConfig(Box<dyn Source>);

registered!(SourceConfig, Source, SOURCES, "source", None);

impl SourceConfig {
    /// Checks the config; `key` is where it sits (`sources[0]`).
    ///
    /// # Errors
    /// An empty name, or what the source's `validate` finds.
    pub fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        if self.0.name().is_empty() {
            return Err(ConnectorError::Config { key: format!("{key}.name"), problem: "must not be empty".into() });
        }
        self.0.validate(key)
    }
}

/// One `[[sinks]]` entry: a [`Sink`] of the `type` it names (`file` when unnamed).
#[derive(Debug)]
pub struct SinkConfig(Box<dyn Sink>);

registered!(SinkConfig, Sink, SINKS, "sink", Some(SINKS[0].kind));

impl SinkConfig {
    /// The stream the sink writes, once validated (`None`: not a stream's name).
    pub fn output(&self) -> Option<OutputStream> {
        OutputStream::from_name(self.0.stream())
    }

    /// Checks it, and against the sinks configured before it (`key` is `sinks[i]`): no two
    /// share what [`Sink::exclusive`] names (a file, a transactional id).
    ///
    /// # Errors
    /// The first problem, with its key.
    pub fn validate_among(&self, key: &str, earlier: &[SinkConfig]) -> Result<(), ConnectorError> {
        self.0.validate(key)?;
        for (field, value) in self.0.exclusive() {
            if earlier.iter().any(|o| o.0.exclusive().iter().any(|(f, v)| *f == field && *v == value)) {
                return Err(ConnectorError::Config { key: format!("{key}.{field}"), problem: format!("`{value}` is used by another sink") });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(text: &str) -> Result<Vec<SinkConfig>, String> {
        #[derive(Deserialize)]
        struct File {
            sinks: Vec<SinkConfig>,
        }
        serde_json::from_str::<File>(text).map(|f| f.sinks).map_err(|e| e.to_string())
    }

    /// Checks each sink against those before it, as the pipeline's `validate` does.
    fn check(all: &[SinkConfig]) -> Result<(), String> {
        for (i, s) in all.iter().enumerate() {
            s.validate_among(&format!("sinks[{i}]"), &all[..i]).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    #[test]
    fn a_type_picks_its_parser_from_the_registry() {
        let source: SourceConfig = serde_json::from_str(r#"{"type": "generator", "name": "g", "partitions": 3}"#).unwrap();
        assert_eq!((source.name(), source.partitions()), ("g", 3));
        assert_eq!(source.get::<generator::GeneratorConfig>().unwrap().partitions, 3);
        assert!(source.get::<file::FileSourceConfig>().is_none());
        let e = serde_json::from_str::<SourceConfig>(r#"{"type": "ftp", "name": "x"}"#).unwrap_err().to_string();
        assert_eq!(e, "`ftp` is not a source type; sources: file, generator, kafka, webhook, postgres");
        let e = serde_json::from_str::<SourceConfig>(r#"{"name": "x"}"#).unwrap_err().to_string();
        assert_eq!(e, "missing field `type`");
        // A key of another type's config is refused by the type's own parser.
        let e = serde_json::from_str::<SourceConfig>(r#"{"type": "generator", "name": "g", "topic": "t"}"#).unwrap_err().to_string();
        assert!(e.starts_with("unknown field `topic`"), "{e}");
        // Sinks default to `file`.
        let all = sinks(r#"{"sinks": [{"stream": "features", "path": "a.jsonl"}]}"#).unwrap();
        assert_eq!((all[0].destination(), all[0].output()), ("a.jsonl".to_string(), Some(OutputStream::Features)));
        let e = sinks(r#"{"sinks": [{"type": "s3", "stream": "features"}]}"#).unwrap_err();
        assert!(e.starts_with("`s3` is not a sink type; sinks: file, kafka"), "{e}");
    }

    #[test]
    fn no_two_sinks_share_a_file_or_a_transactional_id() {
        let two_files = sinks(r#"{"sinks": [{"stream": "features", "path": "a.jsonl"}, {"stream": "late", "path": "a.jsonl"}]}"#).unwrap();
        assert_eq!(check(&two_files).unwrap_err(), "sinks[1].path: `a.jsonl` is used by another sink");
        let kafka =
            |stream: &str, id: &str| format!(r#"{{"type": "kafka", "stream": "{stream}", "brokers": "b:9092", "topic": "t", "transactional_id": "{id}"}}"#);
        let same_id = sinks(&format!(r#"{{"sinks": [{}, {}]}}"#, kafka("features", "x"), kafka("late", "x"))).unwrap();
        assert_eq!(check(&same_id).unwrap_err(), "sinks[1].transactional_id: `x` is used by another sink");
        let distinct =
            sinks(&format!(r#"{{"sinks": [{}, {}, {{"stream": "conflicts", "path": "c.jsonl"}}]}}"#, kafka("features", "x"), kafka("late", "y"))).unwrap();
        assert_eq!(check(&distinct), Ok(()));
        let slo = sinks(&format!(r#"{{"sinks": [{}]}}"#, kafka("slo", "x"))).unwrap();
        assert_eq!(check(&slo).unwrap_err(), "sinks[0].type: the slo stream is written by the monitor to a file sink only");
    }
}
