//! The error type of sluice-operators.

/// Errors of operator construction and configuration. Bad records are never errors: they are
/// dead letters.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// A configuration value is invalid.
    #[error("{key}: {problem}")]
    Config {
        /// The configuration key, dotted (`order.lateness`).
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The state layer failed.
    #[error(transparent)]
    State(#[from] sluice_state::StateError),
}
