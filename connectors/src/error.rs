//! The error type of sluice-connectors.

use std::path::PathBuf;

/// The error of a client library or a step, kept as the error's source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether retrying the failed operation may help, and whether it may have taken effect anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not until something is changed: the configuration, the server, the files.
    Never,
    /// Later: the other side (a broker, a server) may come back. Whatever sluice had not
    /// committed is done again then, from the last commit; the failed operation had no effect.
    Later,
    /// Later, and the failed operation may have taken effect all the same (an at-least-once
    /// Kafka send whose acknowledgement never came may be persisted): the retry may repeat it.
    LaterMayHaveHappened,
}

impl Retry {
    /// What running again does, for the message a command ends with.
    pub fn hint(self) -> &'static str {
        match self {
            Retry::Never => "running again will fail the same way until the cause is fixed",
            Retry::Later => "running again may succeed once the other side is back",
            Retry::LaterMayHaveHappened => {
                "running again may succeed once the other side is back; what failed may have been written anyway, so readers may see it twice"
            }
        }
    }
}

/// Connector errors. Each says whether retrying may help ([`ConnectorError::retry`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A configuration value is invalid.
    #[error("{key}: {problem}")]
    Config {
        /// The configuration key, dotted.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// File I/O failed. Retrying helps only if the cause (a missing file, a full disk) is fixed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An output file is shorter than its committed length: it was truncated or replaced
    /// behind sluice's back, and output would be lost. Not retryable.
    #[error("output {path} has {actual} bytes but {committed} were committed; restore it or start with a fresh state directory")]
    OutputTruncated {
        /// The file.
        path: PathBuf,
        /// Committed length.
        committed: u64,
        /// Length found.
        actual: u64,
    },
    /// A file source's file is not the one its committed position was read from. Not
    /// retryable.
    #[error(
        "{path} is not the file read before: {why}. Resuming at its committed position ({position} bytes) would skip or split records. Put the original file back, set on_change = \"restart\" on the source to read this file from its start, or run with a new state_dir"
    )]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The committed position.
        position: u64,
        /// What differs.
        why: String,
    },
    /// A Kafka client call failed. Retrying helps when the broker comes back.
    #[error("Kafka: {what}: {source}")]
    Kafka {
        /// What was being done, with the topic and brokers.
        what: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A Kafka sink's delivery thread gave up on an epoch (after retrying for
    /// [`crate::kafka::sink::RETRY_FOR`], or at once on an error that retrying cannot fix).
    /// The epoch stays in the outbox and goes out after a restart.
    #[error("Kafka: {what}: delivery failed: {source}")]
    KafkaDelivery {
        /// The sink and its topic.
        what: String,
        /// At least once: records of the failed epoch may be at the broker already.
        may_have_happened: bool,
        /// The delivery error.
        #[source]
        source: BoxError,
    },
    /// A topic has fewer partitions than the source is configured to read.
    #[error("Kafka: topic `{topic}` has {found} partitions, fewer than the {configured} configured")]
    KafkaPartitions {
        /// The topic.
        topic: String,
        /// Partitions it has.
        found: u32,
        /// Partitions configured.
        configured: u32,
    },
    /// A webhook log read or write failed. An append that failed was not acknowledged.
    #[error("webhook log {path}: {what}: {source}")]
    WebhookLog {
        /// The log's directory.
        path: PathBuf,
        /// The step.
        what: String,
        /// RocksDB's error.
        #[source]
        source: BoxError,
    },
    /// PostgreSQL (logical decoding) failed. Retrying helps when the server comes back.
    #[error("PostgreSQL: {what}: {source}")]
    Postgres {
        /// What was being done, with the source and its slot.
        what: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A connector's background thread could not be started.
    #[error("cannot start the {thread}: {source}")]
    Thread {
        /// The thread's job.
        thread: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The PostgreSQL server cannot serve a `postgres` source until its administrator changes
    /// something (`fix` says what). Retrying helps only after that.
    #[error("PostgreSQL source `{source_name}`: {problem}; {fix}")]
    PostgresServer {
        /// The source's name.
        source_name: String,
        /// What the server lacks.
        problem: String,
        /// What must change on the server.
        fix: String,
    },
    /// The state layer failed.
    #[error(transparent)]
    State(#[from] sluice_state::StateError),
}

impl ConnectorError {
    /// Whether retrying may help.
    pub fn retry(&self) -> Retry {
        match self {
            ConnectorError::KafkaDelivery { may_have_happened: true, .. } => Retry::LaterMayHaveHappened,
            ConnectorError::Kafka { .. } | ConnectorError::KafkaDelivery { .. } | ConnectorError::Postgres { .. } | ConnectorError::Thread { .. } => {
                Retry::Later
            }
            ConnectorError::Config { .. }
            | ConnectorError::Io { .. }
            | ConnectorError::OutputTruncated { .. }
            | ConnectorError::FileChanged { .. }
            | ConnectorError::KafkaPartitions { .. }
            | ConnectorError::WebhookLog { .. }
            | ConnectorError::PostgresServer { .. }
            | ConnectorError::State(_) => Retry::Never,
        }
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        ConnectorError::Io { what, path: path.to_path_buf(), source }
    }
}
