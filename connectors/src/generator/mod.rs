//! A seeded generator of synthetic payment traffic, for demos, tests and benchmarks.
//!
//! | file | what it owns |
//! |---|---|
//! | `config.rs` | [`GeneratorConfig`] |
//! | `source.rs` | [`GeneratorReader`]: record `i` of partition `p` is a pure function of (seed, p, i) |

mod config;
mod source;

pub use config::GeneratorConfig;
pub use source::{GeneratorReader, RecordKind};
