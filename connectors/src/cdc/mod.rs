//! Change data capture: the Debezium JSON envelope ([`debezium`]: decoding a change record,
//! applying changes to a table keyed by primary key, dropping replays) and PostgreSQL's own
//! changes through logical decoding ([`postgres`], as Debezium-shaped records).

pub mod debezium;
pub mod postgres;

pub use debezium::{Change, ChangeTable, Op};
