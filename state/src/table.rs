//! Tables: declared up front, one RocksDB column family each, used through typed handles.

use std::marker::PhantomData;

use crate::codec::Codec;

/// The declaration of a table, given to [`crate::StateStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The column family name. Stable: it is what the state directory holds.
    pub name: String,
    /// Whether point lookups of absent keys are common (an entity's first event): adds a bloom
    /// filter.
    pub point_lookups: bool,
}

impl TableSpec {
    /// A plain table.
    pub fn new(name: &str) -> Self {
        TableSpec { name: name.to_string(), point_lookups: false }
    }
    /// Adds a bloom filter for lookups of keys that are mostly absent.
    pub fn with_point_lookups(mut self) -> Self {
        self.point_lookups = true;
        self
    }
}

/// A typed handle on a declared table: its index in the store and its codec.
#[derive(Debug)]
pub struct Table<C> {
    pub(crate) index: usize,
    pub(crate) name: std::sync::Arc<str>,
    _codec: PhantomData<fn() -> C>,
}

impl<C> Clone for Table<C> {
    fn clone(&self) -> Self {
        Table { index: self.index, name: self.name.clone(), _codec: PhantomData }
    }
}

impl<C: Codec> Table<C> {
    pub(crate) fn new(index: usize, name: &str) -> Self {
        Table { index, name: name.into(), _codec: PhantomData }
    }
    /// The table's index among the store's declared tables (for the `_raw` calls).
    pub fn index(&self) -> usize {
        self.index
    }
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
