//! A stage: what one worker changed in one epoch, handed to the commit as a unit.

/// The changes one worker made while processing one epoch: per table, key to new value
/// (`None`: deleted). Hashed with foldhash (randomly seeded, so input keys cannot be chosen to
/// collide), not std's SipHash: that was 2% of the worker's time.
#[derive(Debug, Default)]
pub(crate) struct Stage {
    pub(crate) tables: Vec<foldhash::HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Range deletions `(table, from, to)`, applied before the stage's other changes.
    pub(crate) range_deletes: Vec<(usize, Vec<u8>, Vec<u8>)>,
    /// Puts of keys nobody reads back while running `(table, key, value)`, applied after the
    /// range deletions and before the keyed changes.
    pub(crate) blind: Vec<(usize, Vec<u8>, Vec<u8>)>,
}
