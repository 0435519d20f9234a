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

use crate::connector::{parse_source, Source, SourceKind};
use crate::source::TimeOfFactory;
use crate::{ConnectorError, PartitionReader};

/// The `generator` source's registry line.
pub const SOURCE: SourceKind = SourceKind {
    kind: "generator",
    about: "seeded synthetic payment traffic with duplicates, conflicts, disorder, late and malformed records",
    parse: parse_source::<GeneratorConfig>,
};

impl Source for GeneratorConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, key: &str) -> Result<(), ConnectorError> {
        GeneratorConfig::validate(self, key)
    }

    fn partitions(&self) -> usize {
        self.partitions as usize
    }

    fn reader(&self, partition: usize, _time_of: Option<TimeOfFactory>) -> Box<dyn PartitionReader> {
        Box::new(GeneratorReader::new(self, partition as u32))
    }
}
