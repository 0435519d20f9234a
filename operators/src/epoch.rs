//! Helpers shared by the operators that work epoch by epoch.
//!
//! Stateful operators process an epoch only once their inputs' frontier has passed it, and in
//! epoch order: what they stage for epoch `e` then holds exactly the effect of epochs `<= e`,
//! which is what the commit of `e` must contain.

use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

use crate::event::Epoch;

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
