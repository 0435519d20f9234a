//! What `sluice validate` checks beyond the pipeline file, without side effects: that the
//! models load and fit (the ONNX Runtime library found, each file an ONNX model taking the
//! listed inputs), that every file the pipeline writes can be written (no directory in the way,
//! a writable directory to create it in), and the state directory likewise. What cannot be
//! known without acting (binding a port, reaching a broker or a database, the layout of an
//! existing state) is named in [`CHECKED_AT_START`].

use std::path::Path;

use crate::config::{bad, ConfigError, PipelineConfig};

/// What only a run finds out, as `sluice validate` lists it.
pub const CHECKED_AT_START: &[&str] = &[
    "listen addresses bound (a port may be taken)",
    "Kafka brokers, PostgreSQL servers and their topics, slots and partitions reached",
    "an existing state directory opened: its features layout, its lock (one run at a time), the free disk",
];

/// The checks of this module, in order; the first problem, with its key.
///
/// # Errors
/// A model that does not load or fit, a path that cannot be written.
pub fn check(config: &PipelineConfig) -> Result<(), ConfigError> {
    for model in config.model.iter().cloned().chain(config.shadow_model()) {
        sluice_operators::score::Model::load(&model).map_err(|e| match e {
            sluice_operators::OperatorError::Config { key, problem } => bad(key, problem),
            other => bad(model.section.clone(), other.to_string()),
        })?;
    }
    writable(&config.state_dir, Kind::Directory).map_err(|problem| bad("state_dir", problem))?;
    for (i, sink) in config.sinks.iter().enumerate() {
        if let Some(file) = sink.file() {
            writable(file, Kind::File).map_err(|problem| bad(format!("sinks[{i}].path"), problem))?;
        }
    }
    if let Some(log) = config.server.as_ref().and_then(|s| s.feature_log.as_ref()) {
        writable(log, Kind::File).map_err(|problem| bad("server.feature_log", problem))?;
    }
    Ok(())
}

/// What a path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
}

/// Whether `path` can be opened for writing as `kind`, or created (with its missing
/// directories) in its nearest existing ancestor; why not.
fn writable(path: &Path, kind: Kind) -> Result<(), String> {
    let shown = path.display();
    if let Ok(meta) = std::fs::metadata(path) {
        match kind {
            Kind::File if meta.is_dir() => return Err(format!("{shown} is a directory, not a file")),
            Kind::Directory if !meta.is_dir() => return Err(format!("{shown} is a file, not a directory")),
            _ => {}
        }
        return may_write(path).map_err(|e| format!("{shown} is not writable: {e}"));
    }
    let Some(existing) = path.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || a.exists()) else {
        return Ok(());
    };
    let existing = if existing.as_os_str().is_empty() { Path::new(".") } else { existing };
    if !existing.is_dir() {
        return Err(format!("{shown} cannot be created: {} is a file, not a directory", existing.display()));
    }
    may_write(existing).map_err(|e| format!("{shown} cannot be created: {} is not writable: {e}", existing.display()))
}

/// `access(2)` for writing: the permission bits, the caller's user and groups, a read-only
/// file system.
fn may_write(path: &Path) -> std::io::Result<()> {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_way_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a_file");
        std::fs::write(&file, "x").unwrap();
        let d = dir.path().display();
        assert_eq!(writable(dir.path(), Kind::File).unwrap_err(), format!("{d} is a directory, not a file"));
        assert_eq!(writable(&file, Kind::Directory).unwrap_err(), format!("{d}/a_file is a file, not a directory"));
        assert_eq!(
            writable(&file.join("x/y.jsonl"), Kind::File).unwrap_err(),
            format!("{d}/a_file/x/y.jsonl cannot be created: {d}/a_file is a file, not a directory")
        );
        writable(&file, Kind::File).unwrap();
        writable(&dir.path().join("new/deeper/out.jsonl"), Kind::File).unwrap();
        writable(&dir.path().join("state"), Kind::Directory).unwrap();
        writable(Path::new("relative/new.jsonl"), Kind::File).unwrap();
        let e = writable(Path::new("/proc/1/sluice/state"), Kind::Directory).unwrap_err();
        assert!(e.starts_with("/proc/1/sluice/state cannot be created: /proc/1 is not writable"), "{e}");
    }
}
