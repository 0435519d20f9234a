//! The state directory's own keys: the meta column family and what it holds beside the tables.

/// The column family of sluice's own keys (not a table).
pub(crate) const META_CF: &str = "sluice_meta";
/// The layout version of the directory ([`LAYOUT`]).
pub(crate) const KEY_LAYOUT: &[u8] = b"layout";
/// The epoch a restart resumes at (the last committed one plus one).
pub(crate) const KEY_RESUME_EPOCH: &[u8] = b"resume_epoch";
/// The wall time of the last commit (ms since the Unix epoch), in the same batch.
pub(crate) const KEY_COMMITTED_AT_MS: &[u8] = b"committed_at_ms";
/// Bump when the on-disk layout changes incompatibly (2: dedup keys and the order buffer stored as per-epoch runs).
pub(crate) const LAYOUT: &[u8] = b"sluice-state/2";
