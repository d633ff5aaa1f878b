//! The newest entries of an outbox, held in memory until a checkpoint
//! writes them to sled.
//!
//! Most entries leave within milliseconds (the destination acknowledges
//! them), so an entry that only ever lived here costs its two journal
//! records (put, remove) and no sled insert or remove, which are the
//! larger share of the per-message store work. Durability comes from the
//! journal: every entry here has its put in the pending buffer or in a
//! live frame, and a checkpoint moves all of them into sled (the journal's
//! spill hook) before it flushes and empties the segments.
//!
//! Keys here are above every key in sled: entries are pushed with growing
//! keys, and a spill moves all of them at once.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::store::journal::Spill;
use crate::store::StoreError;

/// Past this many bytes held, the pusher spills: a destination that is
/// down must not grow memory until a journal segment fills.
const MAX_BYTES: usize = 2 << 20;

pub(super) struct Recent {
    /// The outbox's tree, which a spill writes to.
    tree: sled::Tree,
    held: Mutex<Held>,
}

#[derive(Default)]
pub(super) struct Held {
    pub(super) entries: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl Held {
    pub(super) fn insert(&mut self, key: u64, value: Vec<u8>) -> bool {
        self.bytes += value.len();
        if let Some(old) = self.entries.insert(key, value) {
            self.bytes -= old.len();
        }
        self.bytes > MAX_BYTES
    }

    pub(super) fn remove(&mut self, key: u64) -> Option<Vec<u8>> {
        let v = self.entries.remove(&key)?;
        self.bytes -= v.len();
        Some(v)
    }
}

impl Recent {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self {
            tree,
            held: Mutex::default(),
        }
    }

    /// Held while a reader looks at sled and then here, so that a spill
    /// cannot move entries from one to the other in between.
    pub(super) fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes every held entry to sled (not flushed: the journal still
    /// has their puts, and the next checkpoint flushes).
    pub(super) fn spill_held(&self) -> Result<(), StoreError> {
        let mut held = self.lock();
        while let Some((key, value)) = held.entries.pop_first() {
            if let Err(e) = self.tree.insert(key.to_be_bytes(), value.as_slice()) {
                // Kept: the checkpoint fails, and the journal keeps it.
                held.entries.insert(key, value);
                return Err(e.into());
            }
            held.bytes -= value.len();
        }
        Ok(())
    }
}

impl Spill for Recent {
    fn spill(&self) -> Result<(), StoreError> {
        self.spill_held()
    }

    fn holds_nothing(&self) -> bool {
        self.lock().entries.is_empty()
    }
}
