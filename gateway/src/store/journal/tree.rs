//! The wrapper through which the hot path writes a sled tree.

use std::sync::Arc;

use super::{Journal, Op};
use crate::store::StoreError;

/// A sled tree whose writes go to the journal too: what the hot path
/// writes. Reads go to the tree.
#[derive(Clone)]
pub struct JournaledTree {
    tree: sled::Tree,
    name: sled::IVec,
    journal: Arc<Journal>,
}

/// Reads (and writes that must not be journaled, such as transactions,
/// which then set the store's dirty flag) go to the tree itself.
impl std::ops::Deref for JournaledTree {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

impl JournaledTree {
    pub(crate) fn new(tree: sled::Tree, journal: Arc<Journal>) -> Self {
        Self {
            name: tree.name(),
            tree,
            journal,
        }
    }

    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key, value)?;
        self.journal.record(&[Op::Put {
            tree: &self.name,
            key,
            value,
        }]);
        Ok(())
    }

    /// Whether the key was there.
    pub(crate) fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        let had = self.tree.remove(key)?.is_some();
        if had {
            self.journal.record(&[Op::Remove {
                tree: &self.name,
                key,
            }]);
        }
        Ok(had)
    }
}
