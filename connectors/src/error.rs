//! The error type of sluice-connectors.

use std::path::PathBuf;

/// Connector errors. Each says whether retrying may help.
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
    /// A Kafka client call failed (the message names the topic and brokers). Retrying helps
    /// when the broker comes back.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// A webhook log read or write failed (the message names the log and the step). An append
    /// that failed was not acknowledged.
    #[error("{0}")]
    WebhookLog(String),
    /// PostgreSQL (logical decoding) failed; the message names the source and the step.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
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
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        ConnectorError::Io { what, path: path.to_path_buf(), source }
    }
}
