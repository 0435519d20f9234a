use std::io::Write;

use super::*;
use crate::source::{Fetched, PartitionReader, ReadStatus};

fn pairs(out: &[Fetched]) -> Vec<(u64, Vec<u8>)> {
    out.iter().map(|f| (f.offset, f.bytes.clone())).collect()
}

fn write(path: &std::path::Path, text: &[u8]) {
    std::fs::File::create(path).unwrap().write_all(text).unwrap();
}

#[test]
fn lines_carry_their_byte_offsets_and_blank_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    write(&path, b"{\"a\":1}\n\n{\"b\":2}\r\nlast");
    let mut r = FileReader::new("s", &path, AtEof::Finish, 100);
    let mut out = Vec::new();
    assert_eq!(r.read(10, &mut out).unwrap(), ReadStatus::End);
    assert_eq!(pairs(&out), vec![(0, b"{\"a\":1}".to_vec()), (9, b"{\"b\":2}".to_vec()), (18, b"last".to_vec())]);
    assert_eq!(r.position(), 22);
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_not_part_of_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    write(&path, b"\xEF\xBB\xBF{\"a\":1}\n\xEF\xBB\xBF{\"b\":2}\n");
    let mut r = FileReader::new("s", &path, AtEof::Finish, 100);
    let mut out = Vec::new();
    assert_eq!(r.read(10, &mut out).unwrap(), ReadStatus::End);
    // Only at the start of the file: one in the middle is data (a dead letter, as it was).
    assert_eq!(pairs(&out), vec![(0, b"{\"a\":1}".to_vec()), (11, b"\xEF\xBB\xBF{\"b\":2}".to_vec())]);
}

#[test]
fn a_partial_last_line_waits_when_the_file_may_grow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    write(&path, b"one\ntw");
    let mut r = FileReader::new("s", &path, AtEof::Stop, 100);
    let mut out = Vec::new();
    assert_eq!(r.read(10, &mut out).unwrap(), ReadStatus::Stop);
    assert_eq!(pairs(&out), vec![(0, b"one".to_vec())]);
    assert_eq!(r.position(), 4);
    write(&path, b"one\ntwo\nthree\n");
    let mut again = FileReader::new("s", &path, AtEof::Finish, 100);
    again.seek(4).unwrap();
    out.clear();
    assert_eq!(again.read(10, &mut out).unwrap(), ReadStatus::End);
    assert_eq!(pairs(&out), vec![(4, b"two".to_vec()), (8, b"three".to_vec())]);
}

#[test]
fn overlong_lines_are_cut_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    let mut text = vec![b'x'; 50];
    text.extend_from_slice(b"\nok\n");
    write(&path, &text);
    let mut r = FileReader::new("s", &path, AtEof::Finish, 10);
    let mut out = Vec::new();
    r.read(10, &mut out).unwrap();
    assert_eq!(pairs(&out), vec![(0, vec![b'x'; 10]), (51, b"ok".to_vec())]);
}

#[test]
fn source_config_parses_by_type_and_rejects_unknown_keys() {
    let ok: crate::SourceConfig = toml_from(
        r#"type = "generator"
name = "g"
partitions = 3"#,
    );
    assert_eq!(ok.partitions(), 3);
    let bad = toml::from_str::<crate::SourceConfig>("type = \"file\"\nname = \"f\"\npath = \"x\"\nspeed = 2");
    assert!(bad.unwrap_err().to_string().contains("unknown field `speed`"));
}

fn toml_from<T: serde::de::DeserializeOwned>(text: &str) -> T {
    toml::from_str(text).unwrap()
}

#[test]
fn pacing_by_event_time_holds_back_records_that_are_not_due() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    // Event times 0 s, 0.01 s and 60 s.
    write(&path, b"0\n10\n60000\n");
    let time_of: crate::source::TimeOf = Box::new(|bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse().ok());
    let mut r = FileReader::new("s", &path, AtEof::Finish, 100).paced(1.0, time_of);
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let mut status = r.read(10, &mut out).unwrap();
    while out.len() < 2 {
        assert_eq!(status, ReadStatus::Waiting);
        status = r.read(10, &mut out).unwrap();
    }
    // The first two are due within 10 ms; the third, a minute of event time later, is not.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(status, ReadStatus::Waiting);
    assert_eq!(pairs(&out), vec![(0, b"0".to_vec()), (2, b"10".to_vec())]);
    assert_eq!(r.position(), 5, "the held record is not consumed");
}

#[test]
fn a_bounded_read_stops_at_the_record_that_reaches_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    write(&path, b"aaaa\nbbbb\ncccc\ndd\n");
    let mut r = FileReader::new("s", &path, AtEof::Finish, 100);
    let mut out = Vec::new();
    // 4 + 4 bytes reach 6: two records, the second past the bound.
    assert_eq!(r.read_bounded(10, 6, &mut out).unwrap(), ReadStatus::More);
    assert_eq!(pairs(&out), vec![(0, b"aaaa".to_vec()), (5, b"bbbb".to_vec())]);
    // One byte: one record, however large.
    out.clear();
    assert_eq!(r.read_bounded(10, 1, &mut out).unwrap(), ReadStatus::More);
    assert_eq!(pairs(&out), vec![(10, b"cccc".to_vec())]);
    out.clear();
    assert_eq!(r.read_bounded(10, 100, &mut out).unwrap(), ReadStatus::End);
    assert_eq!(pairs(&out), vec![(15, b"dd".to_vec())]);
}

#[test]
fn a_file_restarted_in_place_of_another_is_read_from_its_start_until_a_position_of_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, state) = (dir.path().join("in.jsonl"), dir.path().join("state"));
    let reader = || FileReader::new("s", &path, AtEof::Finish, 100).keeping_identity(&state, "s", crate::file::OnChange::Restart);
    write(&path, b"a1\na2\na3\n");
    let mut a = reader();
    let mut out = Vec::new();
    a.read(10, &mut out).unwrap();
    assert_eq!(a.position(), 9, "committed: 9, in the first file");
    // Replaced: read from its start; then killed before any position of it is committed.
    write(&path, b"b1\nb2\nb3\nb4\n");
    for _ in 0..2 {
        let mut b = reader();
        b.seek(9).unwrap();
        out.clear();
        b.read(1, &mut out).unwrap();
        assert_eq!(pairs(&out), vec![(0, b"b1".to_vec())], "read from its start, not at the first file's offset");
    }
    // Once a position of it (3) is committed, it resumes there, and then at 9 too.
    for (position, first) in [(3, (3, b"b2".to_vec())), (9, (9, b"b4".to_vec()))] {
        let mut b = reader();
        b.seek(position).unwrap();
        out.clear();
        b.read(1, &mut out).unwrap();
        assert_eq!(pairs(&out), vec![first]);
    }
}
