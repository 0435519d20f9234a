//! Change data capture. So far: the Debezium JSON envelope ([`debezium`]): decoding a change
//! record and applying changes to a table keyed by primary key, dropping replays. The
//! PostgreSQL logical-decoding source and the differential collection come with the rest of
//! the CDC issue.

pub mod debezium;

pub use debezium::{Change, ChangeTable, Op};
