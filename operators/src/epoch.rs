//! Helpers shared by the operators that work epoch by epoch.
//!
//! Stateful operators process an epoch only once their inputs' frontier has passed it, and in
//! epoch order: what they stage for epoch `e` then holds exactly the effect of epochs `<= e`,
//! which is what the commit of `e` must contain.

use std::collections::BTreeMap;

use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

use crate::event::Epoch;

/// The key of one worker's per-epoch run of state (dedup keys, buffered events): epoch, then
/// worker, big-endian, so that runs sort in epoch order.
pub type RunKey = [u8; 12];

/// The key of worker `worker`'s run of epoch `epoch`.
pub fn run_key(epoch: Epoch, worker: usize) -> RunKey {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&epoch.to_be_bytes());
    key[8..].copy_from_slice(&(worker as u32).to_be_bytes());
    key
}

/// The least epoch any of the inputs may still deliver; `None` when all are closed.
pub fn input_frontier(frontiers: &[MutableAntichain<Epoch>]) -> Option<Epoch> {
    frontiers.iter().filter_map(|f| f.frontier().first().copied()).min()
}

/// One capability per output, held at the input frontier, from which the operator mints
/// capabilities for the epochs it emits at.
#[derive(Debug)]
pub struct HeldCapabilities {
    held: Vec<Option<Capability<Epoch>>>,
}

impl HeldCapabilities {
    /// Holds the initial capabilities of an operator's outputs.
    pub fn new(capabilities: Vec<Capability<Epoch>>) -> Self {
        HeldCapabilities { held: capabilities.into_iter().map(Some).collect() }
    }

    /// A capability for `output` at `epoch`.
    ///
    /// # Panics
    /// If the capabilities were dropped or `epoch` is below the held one: the operator emits
    /// only at epochs its inputs can still deliver.
    pub fn at(&self, output: usize, epoch: Epoch) -> Capability<Epoch> {
        let held = self.held[output].as_ref().expect("invariant: capabilities are held while an input is open");
        held.delayed(&epoch)
    }

    /// Moves every capability up to `frontier`, or drops them all when it is `None`.
    pub fn downgrade(&mut self, frontier: Option<Epoch>) {
        for cap in &mut self.held {
            match frontier {
                Some(f) => {
                    if let Some(c) = cap.as_mut() {
                        if *c.time() < f {
                            c.downgrade(&f);
                        }
                    }
                }
                None => *cap = None,
            }
        }
    }
}

/// What an operator received per epoch, kept until its inputs' frontier has passed the epoch
/// and then handed back in epoch order: the "stash per epoch, release below the frontier" loop
/// of every stateful operator and sink.
///
/// ```
/// # use sluice_operators::epoch::EpochStash;
/// let mut stash: EpochStash<Vec<u32>> = EpochStash::new();
/// stash.at(2).push(20);
/// stash.at(1).push(10);
/// stash.at(2).push(21);
/// // Inputs may still deliver epoch 2: only epoch 1 is complete.
/// assert_eq!(stash.pop_complete(Some(2)), Some((1, vec![10])));
/// assert_eq!(stash.pop_complete(Some(2)), None);
/// // Inputs closed: everything is complete.
/// assert_eq!(stash.pop_complete(None), Some((2, vec![20, 21])));
/// assert!(stash.is_empty());
/// ```
#[derive(Debug)]
pub struct EpochStash<T> {
    epochs: BTreeMap<Epoch, T>,
}

impl<T: Default> Default for EpochStash<T> {
    fn default() -> Self {
        EpochStash { epochs: BTreeMap::new() }
    }
}

impl<T: Default> EpochStash<T> {
    /// An empty stash.
    pub fn new() -> Self {
        Self::default()
    }

    /// What is stashed for `epoch`, empty the first time.
    pub fn at(&mut self, epoch: Epoch) -> &mut T {
        self.epochs.entry(epoch).or_default()
    }

    /// The least stashed epoch below `frontier` (the least epoch the inputs may still deliver;
    /// `None` when they are closed), if any.
    pub fn next_complete(&self, frontier: Option<Epoch>) -> Option<Epoch> {
        let (&epoch, _) = self.epochs.first_key_value()?;
        frontier.is_none_or(|f| epoch < f).then_some(epoch)
    }

    /// Takes out the least stashed epoch below `frontier`, with what was stashed for it.
    pub fn pop_complete(&mut self, frontier: Option<Epoch>) -> Option<(Epoch, T)> {
        self.next_complete(frontier)?;
        self.epochs.pop_first()
    }

    /// Takes out what was stashed for `epoch` (empty if nothing was).
    pub fn take(&mut self, epoch: Epoch) -> T {
        self.epochs.remove(&epoch).unwrap_or_default()
    }

    /// Whether nothing is stashed.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }
}

/// Concatenates the containers an operator stashed for one epoch, with one allocation of the
/// final size. Operators stash timely's containers as they come (moved, not copied): growing
/// one vector per epoch by appending costs repeated reallocation of large buffers.
pub fn concat<T>(chunks: Vec<Vec<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for mut chunk in chunks {
        out.append(&mut chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_sort_by_epoch_then_worker() {
        assert!(run_key(1, 9) < run_key(2, 0) && run_key(2, 0) < run_key(2, 1) && run_key(255, 0) < run_key(256, 0));
    }
}
