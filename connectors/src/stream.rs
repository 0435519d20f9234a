//! The output streams of a pipeline: what a sink's `stream` names.

use std::fmt;

/// One output stream of a pipeline. A sink takes one (`stream = "features"`); the dataflow
/// hands each sink the lines of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputStream {
    /// A feature record per event.
    Features,
    /// A score per event (the primary model).
    Scores,
    /// Events the model could not score, with why.
    Unscored,
    /// Scores of the shadow model.
    ShadowScores,
    /// Records that did not decode, with why and from where.
    DeadLetters,
    /// Events behind the watermark (order's `late` policy).
    Late,
    /// Repeats of an idempotency key with a different payload.
    Conflicts,
    /// Drift statistics per window.
    Drift,
    /// SLO records (written by the monitor, not the dataflow).
    Slo,
    /// The reconciliation changelog.
    Reconciliation,
    /// The reconciliation's totals after each epoch that changed them.
    ReconciliationSummary,
}

impl OutputStream {
    /// Every stream, in the order the docs list them.
    pub const ALL: [OutputStream; 11] = [
        OutputStream::Features,
        OutputStream::Scores,
        OutputStream::Unscored,
        OutputStream::ShadowScores,
        OutputStream::DeadLetters,
        OutputStream::Late,
        OutputStream::Conflicts,
        OutputStream::Drift,
        OutputStream::Slo,
        OutputStream::Reconciliation,
        OutputStream::ReconciliationSummary,
    ];

    /// Its name in a pipeline file and in the default output file names.
    pub const fn name(self) -> &'static str {
        match self {
            OutputStream::Features => "features",
            OutputStream::Scores => "scores",
            OutputStream::Unscored => "unscored",
            OutputStream::ShadowScores => "shadow_scores",
            OutputStream::DeadLetters => "dead_letters",
            OutputStream::Late => "late",
            OutputStream::Conflicts => "conflicts",
            OutputStream::Drift => "drift",
            OutputStream::Slo => "slo",
            OutputStream::Reconciliation => "reconciliation",
            OutputStream::ReconciliationSummary => "reconciliation_summary",
        }
    }

    /// Whether the standard pipeline (decode → … → score) writes it; the reconciliation
    /// writes `reconciliation`, `reconciliation_summary` and `dead_letters`.
    pub fn of_standard_pipeline(self) -> bool {
        !matches!(self, OutputStream::Reconciliation | OutputStream::ReconciliationSummary)
    }

    /// The stream of this name.
    pub fn from_name(name: &str) -> Option<OutputStream> {
        OutputStream::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The names of every stream.
    pub fn names() -> [&'static str; 11] {
        OutputStream::ALL.map(OutputStream::name)
    }
}

impl fmt::Display for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::OutputStream;

    #[test]
    fn names_read_back_and_are_distinct() {
        for s in OutputStream::ALL {
            assert_eq!(OutputStream::from_name(s.name()), Some(s));
        }
        let mut names = OutputStream::names().to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OutputStream::ALL.len());
        assert_eq!(OutputStream::from_name("feature"), None);
    }
}
