//! sluice-tests: end-to-end tests of sluice, and the plain reference implementation they are
//! checked against.
//!
//! | file | what it owns |
//! |---|---|
//! | `lib.rs` | helpers: the golden pipeline, running a pipeline into a directory, reading outputs |
//! | `reference.rs` | a straightforward, single-threaded implementation of decode → dedup → order → features semantics |
//! | `tests/golden.rs` | the golden fixture, 1 and 4 workers |
//! | `tests/exact.rs` | the exact-output fixture (cent amounts, every op × window, each late mode), byte for byte, 1 and 4 workers |
//! | `tests/reference.rs` | 100k generated events, 1 and 4 workers, against `reference.rs` |
//! | `tests/restart.rs` | stop and resume on the same state directory |
//! | `tests/bad_input.rs` | hostile input end to end: a record that must become a dead letter and harm nothing else |

pub mod reference;

use std::path::{Path, PathBuf};

use sluice::{PipelineConfig, RunControl, RunSummary};

/// The folder of the golden fixture.
pub fn golden_dir() -> PathBuf {
    fixture_dir("golden")
}

/// The folder of fixture `name` (under `tests/fixtures/`).
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The golden pipeline with its state and outputs moved under `work`.
///
/// # Panics
/// If the fixture's pipeline file does not load.
pub fn golden_pipeline(work: &Path, workers: usize) -> PipelineConfig {
    fixture_pipeline("golden", work, workers)
}

/// The pipeline of fixture `name` with its state and its file sinks moved under `work`
/// (`work/state`, `work/out/<file name>`).
///
/// # Panics
/// If the fixture's pipeline file does not load.
pub fn fixture_pipeline(name: &str, work: &Path, workers: usize) -> PipelineConfig {
    let mut config = PipelineConfig::load(&fixture_dir(name).join("pipeline.toml")).unwrap_or_else(|e| panic!("the {name} pipeline loads: {e}"));
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

/// The lines of an output file.
///
/// # Panics
/// If the file cannot be read: a sink that wrote no file, or an expected file that is not
/// there, is a failure, not an empty output.
pub fn lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// Asserts two files are equal byte for byte, showing the first line that differs.
///
/// # Panics
/// When either file cannot be read, or they differ.
pub fn assert_same_file(actual: &Path, expected: &Path, what: &str) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", p.display()));
    let (a, e) = (read(actual), read(expected));
    if a == e {
        return;
    }
    let (a_lines, e_lines): (Vec<&[u8]>, Vec<&[u8]>) = (a.split(|b| *b == b'\n').collect(), e.split(|b| *b == b'\n').collect());
    let i = a_lines.iter().zip(&e_lines).position(|(x, y)| x != y).unwrap_or(a_lines.len().min(e_lines.len()));
    let show = |l: Option<&&[u8]>| l.map_or("(no line)".to_string(), |l| String::from_utf8_lossy(l).into_owned());
    panic!(
        "{what}: {} differs from {} at line {} ({} bytes against {})\n  actual:   {}\n  expected: {}",
        actual.display(),
        expected.display(),
        i + 1,
        a.len(),
        e.len(),
        show(a_lines.get(i)),
        show(e_lines.get(i))
    );
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
