//! Which destinations the user approved for rules that name no destination
//! (`destination = "*"`). A destination added to the config later is new:
//! such rules do not reach it until the user approves it, so adding a
//! destination for one device's data does not quietly send it everything
//! the wildcard rules share. Rules that name it apply at once.
//!
//! On a store's first start every configured destination is approved:
//! the config and the first policy were written together.

use std::collections::BTreeSet;
use std::sync::RwLock;

use super::StoreError;

/// Set once the first start has approved the destinations of the day.
const SETTLED: &[u8] = b"\0settled";

pub struct DestinationApprovals {
    tree: sled::Tree,
    approved: RwLock<BTreeSet<String>>,
    settled: RwLock<bool>,
}

impl DestinationApprovals {
    pub(crate) fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let mut approved = BTreeSet::new();
        let mut settled = false;
        for k in tree.iter().keys() {
            let k = k?;
            if k.as_ref() == SETTLED {
                settled = true;
            } else {
                approved.insert(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(Self {
            tree,
            approved: RwLock::new(approved),
            settled: RwLock::new(settled),
        })
    }

    /// At the gateway's start: on the first one, approves `configured`;
    /// later, returns the configured destinations that are not approved.
    pub fn settle(&self, configured: &[String]) -> Result<Vec<String>, StoreError> {
        let mut settled = self.settled.write().unwrap_or_else(|e| e.into_inner());
        if !*settled {
            for name in configured {
                self.tree.insert(name.as_bytes(), &[])?;
            }
            self.tree.insert(SETTLED, &[])?;
            *settled = true;
            let mut approved = self.approved.write().unwrap_or_else(|e| e.into_inner());
            approved.extend(configured.iter().cloned());
            return Ok(Vec::new());
        }
        let approved = self.approved.read().unwrap_or_else(|e| e.into_inner());
        Ok(configured
            .iter()
            .filter(|n| !approved.contains(*n))
            .cloned()
            .collect())
    }

    /// Whether rules for every destination reach `name`. Before the first
    /// start, every destination counts as approved (it will be).
    pub fn is_approved(&self, name: &str) -> bool {
        let settled = *self.settled.read().unwrap_or_else(|e| e.into_inner());
        !settled
            || self
                .approved
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(name)
    }

    /// Approves `name`; false if it already was.
    pub fn approve(&self, name: &str) -> Result<bool, StoreError> {
        let mut approved = self.approved.write().unwrap_or_else(|e| e.into_inner());
        if approved.contains(name) {
            return Ok(false);
        }
        self.tree.insert(name.as_bytes(), &[])?;
        approved.insert(name.to_string());
        Ok(true)
    }

    /// Forgets every approval and the first start (a factory wipe).
    pub fn forget_all(&self) -> Result<(), StoreError> {
        // `settled` before `approved`, as `settle` takes them.
        let mut settled = self.settled.write().unwrap_or_else(|e| e.into_inner());
        let mut approved = self.approved.write().unwrap_or_else(|e| e.into_inner());
        self.tree.clear()?;
        approved.clear();
        *settled = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_approves_what_is_configured_and_later_ones_wait() {
        let dir = tempfile::tempdir().expect("tmp");
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        {
            let db = crate::store::open_test_db(dir.path());
            let d = DestinationApprovals::open(db.open_tree("d").expect("tree")).expect("open");
            assert!(d.is_approved("anything"), "before the first start");
            assert!(d.settle(&names(&["vendor"])).expect("settle").is_empty());
            assert!(d.is_approved("vendor"));
            assert!(!d.is_approved("utility"));
        }
        let db = crate::store::open_test_db(dir.path());
        let d = DestinationApprovals::open(db.open_tree("d").expect("tree")).expect("open");
        assert_eq!(
            d.settle(&names(&["vendor", "utility"])).expect("settle"),
            ["utility"]
        );
        assert!(d.approve("utility").expect("approve"));
        assert!(!d.approve("utility").expect("again"));
        assert!(d
            .settle(&names(&["vendor", "utility"]))
            .expect("settle")
            .is_empty());
        d.forget_all().expect("forget");
        assert!(d.is_approved("newcomer"), "as before a first start");
    }
}
