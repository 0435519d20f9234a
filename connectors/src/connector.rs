//! The shape every connector has: a [`Source`] or a [`Sink`] (what one `[[sources]]` or
//! `[[sinks]]` entry of its `type` becomes), an optional background [`Service`] started before
//! the workers and finished after them, and one [`SourceKind`] / [`SinkKind`] line in the
//! registry ([`crate::SOURCES`], [`crate::SINKS`]) that maps its `type` to its parser.
//!
//! A source's life: parsed → [`Source::resolve_paths`] and [`Source::default_under`] (at load)
//! → [`Source::validate`] → [`Source::resolve`] (what only the outside world knows, once, before
//! any worker) → [`Source::start`] (its service) → [`Source::reader`] per partition on the
//! worker that owns it → the service's [`Service::finish`]. A sink's is the same, with
//! [`Sink::build`] in place of readers.

use std::any::Any;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sluice_operators::{Epoch, Metrics};
use sluice_state::{StateStore, TableSpec, WorkerState};
use timely::dataflow::Stream;

use crate::sink::{DeliveryState, OutputLine};
use crate::source::TimeOfFactory;
use crate::{ConnectorError, PartitionReader};

/// What a connector's service may use: the state store, the metrics, and the flag that stops
/// the pipeline (raised by a service that fails).
#[derive(Debug, Clone, Copy)]
pub struct ServiceContext<'a> {
    /// The pipeline's state.
    pub store: &'a Arc<StateStore>,
    /// The pipeline's metrics.
    pub metrics: &'a Arc<Metrics>,
    /// Raised to stop the pipeline at the next epoch boundary.
    pub stop: &'a Arc<AtomicBool>,
}

/// A connector's background work beside the dataflow (a webhook server, a Kafka sink's
/// delivery thread, an offset publisher, a slot advancer).
pub trait Service: Send + std::fmt::Debug {
    /// The address it listens on, if it is a server.
    fn addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The state of its delivery of committed epochs, if it delivers from an outbox: handed to
    /// the sink operator on worker 0 and walked by `/metrics`.
    fn delivery(&self) -> Option<Arc<DeliveryState>> {
        None
    }

    /// Ends it once the workers are done and the state is synced.
    ///
    /// # Errors
    /// What it could not finish (a delivery that failed: the undelivered epochs stay in the
    /// outbox and go out after a restart).
    fn finish(self: Box<Self>) -> Result<(), ConnectorError>;
}

/// The clone and downcast every [`Source`] and [`Sink`] gets from being `Clone + 'static`.
pub trait AsAny: Any {
    /// Itself, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// Itself, to downcast and change.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A boxed copy of a source config (every `Clone` source has it).
pub trait CloneSource {
    /// A copy, boxed.
    fn clone_box(&self) -> Box<dyn Source>;
}

impl<T: Source + Clone> CloneSource for T {
    fn clone_box(&self) -> Box<dyn Source> {
        Box::new(self.clone())
    }
}

/// A boxed copy of a sink config (every `Clone` sink has it).
pub trait CloneSink {
    /// A copy, boxed.
    fn clone_box(&self) -> Box<dyn Sink>;
}

impl<T: Sink + Clone> CloneSink for T {
    fn clone_box(&self) -> Box<dyn Sink> {
        Box::new(self.clone())
    }
}

/// One configured source: a set of partitions, each read by a [`PartitionReader`].
pub trait Source: AsAny + CloneSource + Send + Sync + std::fmt::Debug {
    /// Its name (unique in the pipeline; positions are keyed by it).
    fn name(&self) -> &str;

    /// Checks the config; `key` is where it sits (`sources[0]`).
    ///
    /// # Errors
    /// The first problem, with its key.
    fn validate(&self, key: &str) -> Result<(), ConnectorError>;

    /// Makes its relative paths relative to the pipeline file's folder, by `fix`.
    fn resolve_paths(&mut self, _fix: &dyn Fn(&mut PathBuf)) {}

    /// Fills in the defaults that are places under the pipeline's state directory.
    fn default_under(&mut self, _state_dir: &Path) {}

    /// Fills in what only the outside world knows (a topic's partitions, a replication slot),
    /// once, before any worker.
    ///
    /// # Errors
    /// The outside world cannot be reached, or disagrees with the config.
    fn resolve(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Number of partitions (after [`Source::resolve`]).
    fn partitions(&self) -> usize;

    /// The reader of its partition `partition` (0-based within the source); `time_of`
    /// extracts event times, for sources paced by event time.
    fn reader(&self, partition: usize, time_of: Option<TimeOfFactory>) -> Box<dyn PartitionReader>;

    /// Starts its background service, if it has one.
    ///
    /// # Errors
    /// The service cannot start (a port taken, a broker unreachable).
    fn start(&self, _context: ServiceContext<'_>) -> Result<Option<Box<dyn Service>>, ConnectorError> {
        Ok(None)
    }
}

/// One configured sink: one output stream written out, committed per epoch.
pub trait Sink: AsAny + CloneSink + Send + Sync + std::fmt::Debug {
    /// The name of the stream it writes, as configured.
    fn stream(&self) -> &str;

    /// Where it writes, in one line (`features -> out/features.jsonl`), for `sluice check`.
    fn describe(&self) -> String;

    /// Where its output is, for a run's summary (`out/features.jsonl`).
    fn destination(&self) -> String;

    /// The local file it appends to, if it writes one (the monitor writes the `slo` stream
    /// there).
    fn file(&self) -> Option<&Path> {
        None
    }

    /// Checks the config; `key` is where it sits (`sinks[0]`).
    ///
    /// # Errors
    /// The first problem, with its key.
    fn validate(&self, key: &str) -> Result<(), ConnectorError>;

    /// What no two sinks of a pipeline may share, as (field, value): a file's path, a
    /// transactional id.
    fn exclusive(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Makes its relative paths relative to the pipeline file's folder, by `fix`.
    fn resolve_paths(&mut self, _fix: &dyn Fn(&mut PathBuf)) {}

    /// Starts its background service, if it has one.
    ///
    /// # Errors
    /// The service cannot start.
    fn start(&self, _context: ServiceContext<'_>) -> Result<Option<Box<dyn Service>>, ConnectorError> {
        Ok(None)
    }

    /// Writes `lines` out. The returned stream passes an epoch once the sink has written or
    /// staged it, so that a probe after it passes an epoch only once the commit can hold it.
    /// `delivery` is its service's [`Service::delivery`], on the worker that reports commits
    /// to it (worker 0).
    ///
    /// # Errors
    /// The sink's table cannot be opened, or its output cannot be prepared.
    fn build<'scope>(
        &self,
        lines: Stream<'scope, Epoch, Vec<OutputLine>>,
        state: Rc<RefCell<WorkerState>>,
        delivery: Option<Arc<DeliveryState>>,
    ) -> Result<Stream<'scope, Epoch, Vec<()>>, ConnectorError>;
}

/// A parser of one connector's config, from its entry without the `type` key.
pub type Parse<T> = fn(serde_json::Value) -> Result<Box<T>, serde_json::Error>;

/// A source's line in the registry.
#[derive(Clone, Copy)]
pub struct SourceKind {
    /// The `type` in a pipeline file.
    pub kind: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// Its config's parser.
    pub parse: Parse<dyn Source>,
}

/// A sink's line in the registry.
#[derive(Clone, Copy)]
pub struct SinkKind {
    /// The `type` in a pipeline file.
    pub kind: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// Its config's parser.
    pub parse: Parse<dyn Sink>,
    /// The tables its sinks declare.
    pub tables: fn() -> Vec<TableSpec>,
}

/// The parser of a source config `C`, for its [`SourceKind`].
///
/// # Errors
/// The entry does not fit `C`.
pub fn parse_source<C: Source + serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<Box<dyn Source>, serde_json::Error> {
    Ok(Box::new(serde_json::from_value::<C>(value)?))
}

/// The parser of a sink config `C`, for its [`SinkKind`].
///
/// # Errors
/// The entry does not fit `C`.
pub fn parse_sink<C: Sink + serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<Box<dyn Sink>, serde_json::Error> {
    Ok(Box::new(serde_json::from_value::<C>(value)?))
}
