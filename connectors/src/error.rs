//! The error type of sluice-connectors.

use std::path::PathBuf;

/// The error of a client library or a step, kept as the error's source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether retrying the failed operation may help. (No connector error yet says that a failed
/// operation may have taken effect anyway: a sink's retry is made safe by its commit protocol.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not until something is changed: the configuration, the server, the files.
    Never,
    /// Later: the other side (a broker, a server) may come back. Whatever sluice had not
    /// committed is done again then, from the last commit.
    Later,
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
    /// A Kafka client call failed. Retrying helps when the broker comes back.
    #[error("Kafka: {what}: {source}")]
    Kafka {
        /// What was being done, with the topic and brokers.
        what: String,
        /// The client's error.
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
            ConnectorError::Kafka { .. } | ConnectorError::Postgres { .. } | ConnectorError::Thread { .. } => Retry::Later,
            ConnectorError::Config { .. }
            | ConnectorError::Io { .. }
            | ConnectorError::OutputTruncated { .. }
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
