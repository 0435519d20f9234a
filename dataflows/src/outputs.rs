//! The output formats: one JSON object per line, per stream.
//!
//! | stream | fields | sorted within an epoch by |
//! |---|---|---|
//! | `features` | `entity`, `id`, `kind`, `time_ms`, `features` (name → number or null), `late` (only when true) | time, id, origin |
//! | `scores` | `entity`, `id`, `time_ms`, `score`, `model`, `version`, `batch_latency_us` | time, id, origin |
//! | `unscored` | `entity`, `id`, `time_ms`, `reason`, `model` | time, id, origin |
//! | `drift` | `window_start_ms`, `window_end_ms`, `column`, `statistic`, `value`, `p_value`, `error_bound`, `warn`, `alert`, `status`, `reference_n`, `current_n` | window end, column/statistic |
//! | `shadow_scores` | as `scores`, for the shadow model, plus `primary_score` (the primary's score of the event, absent when the primary failed on the batch) | time, id, origin |
//! | `dead_letters` | `reason`, `source`, `partition`, `offset`, `raw` (or `raw_base64` when not UTF-8) | origin |
//! | `late` | `id`, `entity`, `kind`, `time_ms`, `watermark_ms`, `source`, `partition`, `offset` | origin |
//! | `conflicts` | `id`, `entity`, `kind`, `time_ms`, `first_time_ms`, `source`, `partition`, `offset` | origin |
//!
//! `partition` is the partition's index within its source; `offset` its position there (byte
//! offset of the line in a file, record index in a generator).

use std::io::Write;
use std::sync::Arc;

use bytes::BytesMut;

use sluice_connectors::OutputLine;
use sluice_operators::{Conflict, DeadLetter, DriftRecord, FeatureRecord, LateEvent, Origin, ScoreRecord, Unscored};

/// Source name and partition-within-source of each global partition.
#[derive(Debug, Clone)]
pub struct PartitionNames(pub Arc<Vec<(String, u32)>>);

impl PartitionNames {
    fn write_origin(&self, out: &mut Vec<u8>, origin: Origin) {
        let (source, local) = self.0.get(origin.partition as usize).map_or(("?", origin.partition), |(s, l)| (s.as_str(), *l));
        out.extend_from_slice(b",\"source\":");
        json_str(out, source);
        out.extend_from_slice(b",\"partition\":");
        json_int(out, local);
        out.extend_from_slice(b",\"offset\":");
        json_int(out, origin.offset);
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("invariant: writing JSON to a Vec cannot fail");
}

fn json_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// The feature names of a pipeline, each encoded once as the JSON key it is on every line.
#[derive(Debug, Clone)]
pub struct FeatureNames(Vec<Vec<u8>>);

impl FeatureNames {
    /// Encodes `names` (`"name":` each).
    pub fn new(names: &[String]) -> Self {
        FeatureNames(
            names
                .iter()
                .map(|name| {
                    let mut key = Vec::with_capacity(name.len() + 3);
                    json_str(&mut key, name);
                    key.push(b':');
                    key
                })
                .collect(),
        )
    }
}

fn json_f64(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) if v.is_finite() => serde_json::to_writer(&mut *out, &v).expect("invariant: writing JSON to a Vec cannot fail"),
        _ => out.extend_from_slice(b"null"),
    }
}

/// The lines of one stream, cut from shared blocks of memory: one allocation per 64 KiB of
/// lines instead of one per line (each line is written in a scratch buffer kept across lines,
/// then copied to the block's end; the block is freed with its last line).
#[derive(Default)]
pub struct LineBlocks {
    scratch: Vec<u8>,
    block: BytesMut,
}

impl LineBlocks {
    const BLOCK_BYTES: usize = 64 << 10;

    /// The scratch buffer, emptied, to write the next line into.
    fn start(&mut self) -> &mut Vec<u8> {
        self.scratch.clear();
        &mut self.scratch
    }

    /// The line written since [`LineBlocks::start`].
    fn finish(&mut self, key: (i64, sluice_operators::event::Text, Origin)) -> OutputLine {
        if self.block.capacity() - self.block.len() < self.scratch.len() {
            self.block = BytesMut::with_capacity(Self::BLOCK_BYTES.max(self.scratch.len()));
        }
        self.block.extend_from_slice(&self.scratch);
        OutputLine { key, bytes: self.block.split().freeze() }
    }
}

/// A feature record as a line.
pub fn feature_line(record: &FeatureRecord, names: &FeatureNames, blocks: &mut LineBlocks) -> OutputLine {
    let out = blocks.start();
    out.extend_from_slice(b"{\"entity\":");
    json_str(out, &record.entity);
    out.extend_from_slice(b",\"id\":");
    json_str(out, &record.id);
    out.extend_from_slice(b",\"kind\":");
    json_str(out, &record.kind);
    out.extend_from_slice(b",\"time_ms\":");
    json_int(out, record.time_ms);
    out.extend_from_slice(b",\"features\":{");
    for (i, (name, value)) in names.0.iter().zip(&record.values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name);
        json_f64(out, *value);
    }
    out.push(b'}');
    if record.late {
        out.extend_from_slice(b",\"late\":true");
    }
    out.push(b'}');
    blocks.finish((record.time_ms, record.id.clone(), record.origin))
}

/// A score as a line. `batch_latency_us` is wall time: the one field that differs between runs.
pub fn score_line(score: &ScoreRecord, blocks: &mut LineBlocks) -> OutputLine {
    let out = blocks.start();
    out.extend_from_slice(b"{\"entity\":");
    json_str(out, &score.entity);
    out.extend_from_slice(b",\"id\":");
    json_str(out, &score.id);
    let _ = write!(out, ",\"time_ms\":{},\"score\":", score.time_ms);
    json_f64(out, Some(score.score));
    out.extend_from_slice(b",\"model\":");
    json_str(out, &score.model);
    out.extend_from_slice(b",\"version\":");
    json_str(out, &score.version);
    let _ = write!(out, ",\"batch_latency_us\":{}", score.batch_latency_us);
    if let Some(p) = score.primary_score {
        out.extend_from_slice(b",\"primary_score\":");
        json_f64(out, Some(p));
    }
    out.push(b'}');
    blocks.finish((score.time_ms, score.id.clone(), score.origin))
}

/// A drift record as a line. Sorted by window end, column, statistic.
pub fn drift_line(r: &DriftRecord) -> OutputLine {
    let mut out = Vec::with_capacity(256);
    let _ = write!(out, "{{\"window_start_ms\":{},\"window_end_ms\":{},\"column\":", r.window_start_ms, r.window_end_ms);
    json_str(&mut out, &r.column);
    out.extend_from_slice(b",\"statistic\":");
    json_str(&mut out, &r.statistic);
    out.extend_from_slice(b",\"value\":");
    json_f64(&mut out, r.value);
    out.extend_from_slice(b",\"p_value\":");
    json_f64(&mut out, r.p_value);
    out.extend_from_slice(b",\"error_bound\":");
    json_f64(&mut out, r.error_bound);
    out.extend_from_slice(b",\"warn\":");
    json_f64(&mut out, Some(r.warn));
    out.extend_from_slice(b",\"alert\":");
    json_f64(&mut out, Some(r.alert));
    out.extend_from_slice(b",\"status\":");
    json_str(&mut out, r.status.name());
    let _ = write!(out, ",\"reference_n\":{},\"current_n\":{}}}", r.reference_n, r.current_n);
    // The key orders lines: by window end, then column and statistic.
    OutputLine {
        key: (r.window_end_ms, sluice_operators::event::Text::from(format!("{}/{}", r.column, r.statistic)), Origin { partition: 0, offset: 0 }),
        bytes: out.into(),
    }
}

/// An unscored record as a line.
pub fn unscored_line(u: &Unscored) -> OutputLine {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"entity\":");
    json_str(&mut out, &u.entity);
    out.extend_from_slice(b",\"id\":");
    json_str(&mut out, &u.id);
    let _ = write!(out, ",\"time_ms\":{},\"reason\":", u.time_ms);
    json_str(&mut out, &u.reason);
    out.extend_from_slice(b",\"model\":");
    json_str(&mut out, &u.model);
    out.push(b'}');
    OutputLine { key: (u.time_ms, u.id.clone(), u.origin), bytes: out.into() }
}

/// A dead letter as a line.
pub fn dead_letter_line(dead: &DeadLetter, names: &PartitionNames) -> OutputLine {
    let mut out = Vec::with_capacity(64 + dead.raw.len());
    out.extend_from_slice(b"{\"reason\":");
    json_str(&mut out, &dead.reason.to_string());
    names.write_origin(&mut out, dead.origin);
    match std::str::from_utf8(&dead.raw) {
        Ok(text) => {
            out.extend_from_slice(b",\"raw\":");
            json_str(&mut out, text);
        }
        Err(_) => {
            out.extend_from_slice(b",\"raw_base64\":\"");
            base64(&dead.raw, &mut out);
            out.push(b'"');
        }
    }
    if let Some((len, hash)) = dead.cut {
        let _ = write!(out, ",\"raw_cut\":true,\"raw_bytes\":{len},\"raw_xxh3\":\"{hash:016x}\"");
    }
    out.push(b'}');
    OutputLine { key: (0, Default::default(), dead.origin), bytes: out.into() }
}

fn event_head(out: &mut Vec<u8>, id: &str, entity: &str, kind: &str, time_ms: i64) {
    out.extend_from_slice(b"{\"id\":");
    json_str(out, id);
    out.extend_from_slice(b",\"entity\":");
    json_str(out, entity);
    out.extend_from_slice(b",\"kind\":");
    json_str(out, kind);
    let _ = write!(out, ",\"time_ms\":{time_ms}");
}

/// A late event as a line.
pub fn late_line(late: &LateEvent, names: &PartitionNames) -> OutputLine {
    let e = &late.event;
    let mut out = Vec::with_capacity(160);
    event_head(&mut out, &e.id, &e.entity, &e.kind, e.time_ms);
    let _ = write!(out, ",\"watermark_ms\":{}", late.watermark_ms);
    names.write_origin(&mut out, e.origin);
    out.push(b'}');
    OutputLine { key: (0, Default::default(), e.origin), bytes: out.into() }
}

/// A conflict as a line.
pub fn conflict_line(conflict: &Conflict, names: &PartitionNames) -> OutputLine {
    let e = &conflict.event;
    let mut out = Vec::with_capacity(160);
    event_head(&mut out, &e.id, &e.entity, &e.kind, e.time_ms);
    let _ = write!(out, ",\"first_time_ms\":{}", conflict.first_time_ms);
    names.write_origin(&mut out, e.origin);
    out.push(b'}');
    OutputLine { key: (0, Default::default(), e.origin), bytes: out.into() }
}

fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            let mut out = Vec::new();
            base64(input.as_bytes(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn feature_lines_are_json_with_nulls_for_undefined_values() {
        let r = FeatureRecord {
            entity: "c\"1".into(),
            id: "e1".into(),
            kind: "k".into(),
            time_ms: 5,
            values: vec![Some(2.5), None, Some(3.0)],
            late: false,
            ingest_us: 0,
            origin: Origin { partition: 0, offset: 0 },
        };
        let mut blocks = LineBlocks::default();
        let line = feature_line(&r, &FeatureNames::new(&["a".into(), "b".into(), "c".into()]), &mut blocks);
        assert_eq!(
            String::from_utf8(line.bytes.to_vec()).unwrap(),
            r#"{"entity":"c\"1","id":"e1","kind":"k","time_ms":5,"features":{"a":2.5,"b":null,"c":3.0}}"#
        );
    }

    #[test]
    fn lines_share_a_block_until_it_is_full() {
        let names = FeatureNames::new(&["a".into()]);
        let record = |id: &str| FeatureRecord {
            entity: "c".into(),
            id: id.into(),
            kind: "k".into(),
            time_ms: 5,
            values: vec![Some(1.0)],
            late: false,
            ingest_us: 0,
            origin: Origin { partition: 0, offset: 0 },
        };
        let mut blocks = LineBlocks::default();
        let lines: Vec<OutputLine> = (0..2000).map(|i| feature_line(&record(&format!("e{i}")), &names, &mut blocks)).collect();
        assert_eq!(&lines[7].bytes[..], br#"{"entity":"c","id":"e7","kind":"k","time_ms":5,"features":{"a":1.0}}"#);
        // Each line starts where the one before it ends, except where a new block began.
        let blocks_begun = lines.windows(2).filter(|w| w[0].bytes.as_ptr().wrapping_add(w[0].bytes.len()) != w[1].bytes.as_ptr()).count() + 1;
        // 66 bytes and the id: 10 x 68 + 90 x 69 + 900 x 70 + 1000 x 71 = 140,890 bytes, in
        // blocks of 65,536 filled up to the last whole line: 3 blocks.
        assert_eq!(lines.iter().map(|l| l.bytes.len()).sum::<usize>(), 140_890);
        assert_eq!(blocks_begun, 3);
        // A line longer than a block gets a block of its own.
        let long = "x".repeat(LineBlocks::BLOCK_BYTES);
        assert_eq!(feature_line(&record(&long), &names, &mut blocks).bytes.len(), LineBlocks::BLOCK_BYTES + 66);
    }

    #[test]
    fn dead_letters_carry_raw_text_or_base64() {
        let names = PartitionNames(Arc::new(vec![("files".into(), 0), ("files".into(), 1)]));
        let d = DeadLetter {
            reason: sluice_operators::DeadLetterReason::WrongType("bad".into()),
            origin: Origin { partition: 1, offset: 9 },
            raw: vec![0xff, b'a'],
            cut: None,
        };
        let line = dead_letter_line(&d, &names);
        assert_eq!(String::from_utf8(line.bytes.to_vec()).unwrap(), r#"{"reason":"bad","source":"files","partition":1,"offset":9,"raw_base64":"/2E="}"#);
    }

    #[test]
    fn a_long_dead_letter_keeps_its_head_its_length_and_its_hash() {
        let names = PartitionNames(Arc::new(vec![("files".into(), 0)]));
        let reason = || sluice_operators::DeadLetterReason::InvalidJson("x".into());
        // 4,095 ASCII bytes, then "é" (2 bytes) across the 4,096-byte cut, then 5 MB more.
        let mut record = vec![b'a'; 4095];
        record.extend_from_slice("é".as_bytes());
        record.extend(std::iter::repeat_n(b'b', 5_000_000));
        let d = DeadLetter::new(reason(), Origin { partition: 0, offset: 3 }, record.clone());
        assert_eq!((d.raw.len(), d.cut), (4095, Some((5_004_097, xxhash_rust::xxh3::xxh3_64(&record)))));
        let line = String::from_utf8(dead_letter_line(&d, &names).bytes.to_vec()).unwrap();
        assert!(line.starts_with(r#"{"reason":"invalid JSON: x","source":"files","partition":0,"offset":3,"raw":"aaaa"#), "{line}");
        assert!(line.ends_with(&format!(r#"aaa","raw_cut":true,"raw_bytes":5004097,"raw_xxh3":"{:016x}"}}"#, xxhash_rust::xxh3::xxh3_64(&record))), "{line}");
        // Up to the limit, kept whole.
        let d = DeadLetter::new(reason(), Origin { partition: 0, offset: 3 }, vec![b'a'; 4096]);
        assert_eq!((d.raw.len(), d.cut), (4096, None));
    }
}
