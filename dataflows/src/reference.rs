//! `sluice drift reference`: a drift reference file from JSONL samples of a pipeline's outputs
//! and inputs — feature lines (`features.<name>` for monitored features), score lines (`score`)
//! and raw events (the monitored `[event.strings]` fields, read with the pipeline's schema).

use std::io::BufRead;
use std::path::Path;

use sluice_operators::drift::{DriftSample, ReferenceFile};
use sluice_operators::{Decoder, Origin, RawRecord};

use crate::config::PipelineConfig;

/// Where the samples come from.
#[derive(Debug, Clone, Default)]
pub struct ReferenceInputs<'a> {
    /// Feature output lines.
    pub features: Vec<&'a Path>,
    /// Score output lines.
    pub scores: Vec<&'a Path>,
    /// Raw events.
    pub events: Vec<&'a Path>,
}

fn lines(path: &Path) -> Result<impl Iterator<Item = Result<String, String>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let shown = path.display().to_string();
    Ok(std::io::BufReader::new(file)
        .lines()
        .map(move |l| l.map_err(|e| format!("cannot read {shown}: {e}")))
        .filter(|l| !matches!(l, Ok(t) if t.trim().is_empty())))
}

/// Builds the reference of `config`'s `[drift]` from `inputs`; returns it and the number of
/// lines that did not parse (skipped).
///
/// # Errors
/// No `[drift]`, an unreadable file, or no sample for some column.
pub fn build(config: &PipelineConfig, inputs: &ReferenceInputs<'_>) -> Result<(ReferenceFile, u64), String> {
    let drift = config.drift.as_ref().ok_or("the pipeline has no [drift] section")?;
    let columns = drift.columns();
    let (n, k) = (columns.numbers.len(), columns.categories.len());
    let mut samples = Vec::new();
    let mut skipped = 0u64;
    let empty = |time_ms| DriftSample { time_ms, numbers: vec![None; n], categories: vec![None; k] };
    for path in &inputs.features {
        for line in lines(path)? {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
                skipped += 1;
                continue;
            };
            let mut s = empty(0);
            for (i, name) in drift.features.iter().enumerate() {
                s.numbers[i] = v["features"][name].as_f64();
            }
            samples.push(s);
        }
    }
    if drift.score {
        for path in &inputs.scores {
            for line in lines(path)? {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
                    skipped += 1;
                    continue;
                };
                let mut s = empty(0);
                s.numbers[n - 1] = v["score"].as_f64();
                samples.push(s);
            }
        }
    }
    if k > 0 {
        let decoder = Decoder::new(&config.event).map_err(|e| e.to_string())?;
        let names = config.event.string_names();
        let picks: Vec<usize> = columns.categories.iter().map(|c| names.iter().position(|x| x == c).expect("invariant: validated")).collect();
        for path in &inputs.events {
            for line in lines(path)? {
                match decoder.decode(&RawRecord::new(Origin { partition: 0, offset: 0 }, line?.into_bytes())) {
                    Ok(e) => {
                        let mut s = empty(e.time_ms);
                        s.categories = picks.iter().map(|i| e.strings[*i].clone()).collect();
                        samples.push(s);
                    }
                    Err(_) => skipped += 1,
                }
            }
        }
    }
    let reference = ReferenceFile::from_samples(&columns, samples.iter());
    for (name, summary) in columns.numbers.iter().chain(&columns.categories).zip(&reference.summaries) {
        if summary.count() == 0 {
            return Err(format!("no sample for `{name}`: give --features, --scores or --events files that hold it"));
        }
    }
    Ok((reference, skipped))
}
