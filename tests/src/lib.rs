//! sluice-tests: end-to-end tests of sluice, and the plain reference implementation they are
//! checked against.
//!
//! | file | what it owns |
//! |---|---|
//! | `lib.rs` | helpers: the golden pipeline, running a pipeline into a directory, reading outputs |
//! | `reference.rs` | a straightforward, single-threaded implementation of decode → dedup → order → features semantics |
//! | `tests/golden.rs` | the golden fixture, 1 and 4 workers |
//! | `tests/reference.rs` | 100k generated events, 1 and 4 workers, against `reference.rs` |
//! | `tests/restart.rs` | stop and resume on the same state directory |

pub mod reference;

use std::path::{Path, PathBuf};

use sluice::{PipelineConfig, RunControl, RunSummary};

/// The folder of the golden fixture.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

/// The golden pipeline with its state and outputs moved under `work`.
///
/// # Panics
/// If the fixture's pipeline file does not load.
pub fn golden_pipeline(work: &Path, workers: usize) -> PipelineConfig {
    let mut config = PipelineConfig::load(&golden_dir().join("pipeline.toml")).expect("the golden pipeline loads");
    config.workers = workers;
    config.state_dir = work.join("state");
    for sink in &mut config.sinks {
        if let Some(f) = sink.get_mut::<sluice_connectors::file::FileSinkConfig>() {
            f.path = work.join("out").join(f.path.file_name().expect("sink paths name a file"));
        }
    }
    config
}

/// Runs a pipeline to the end.
///
/// # Panics
/// If the run fails.
pub fn run(config: &PipelineConfig) -> RunSummary {
    sluice::run(config, &RunControl::default()).unwrap_or_else(|e| panic!("pipeline run failed: {e}"))
}

/// The lines of an output file (empty if it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Asserts two files' lines are equal, showing the first difference.
///
/// # Panics
/// When they differ.
pub fn assert_same_lines(actual: &[String], expected: &[String], what: &str) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a, e, "{what}: line {} differs", i + 1);
    }
    assert_eq!(actual.len(), expected.len(), "{what}: line counts differ");
}
