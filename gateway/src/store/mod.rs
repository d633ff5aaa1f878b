//! The on-disk store (sled), behind small interfaces so the engine can be
//! swapped: [`HistoryStore`] for device history (encrypted to the user's
//! key, whose wrapped form is in the `keys` tree), [`Outbox`] for what waits
//! for a destination's acknowledgement, [`PolicyVersions`] for every policy
//! applied, and the `devices` tree.
//!
//! Durability is explicit: writes land in sled's memory first, and
//! [`Durability::sync`] waits for a commit that covers them. The hot path's
//! writes (history records, outbox entries, the ledger's open buckets) are
//! also recorded in the write-ahead [`journal`], and a commit is one journal
//! write and one `fdatasync`, shared by every writer that arrived before it
//! started (group commit). sled itself is flushed at checkpoints, which the
//! journal runs when a segment fills, and which every other write asks for.

mod destinations;
mod durability;
pub(crate) mod fields;
mod history;
pub(crate) mod journal;
mod outbox;
mod pads;
mod period_keys;

#[cfg(test)]
pub(crate) use period_keys::{derive_data_key, derive_key_bytes};
mod policies;
mod shred;

use std::path::Path;
use std::sync::Arc;

use crate::keys::{StoredKeys, WrapPad};
pub use pads::Pad;

const USER_KEYS: &[u8] = b"user";

pub use destinations::DestinationApprovals;
pub use durability::Durability;
pub use fields::{ApproveOutcome, FieldInfo, FieldInventory, MAX_FIELDS_PER_DEVICE};
pub use history::{
    period_name, period_of, HistoryReader, HistoryRecord, HistoryStore, NewRecord, ReadRange,
    PERIOD_MS,
};
pub use outbox::{Outbox, OutboxEntry};
pub use policies::{PolicySource, PolicyVersion, PolicyVersions};
pub use shred::{ShredRange, ShredReport};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another dataward process (stop it first)")]
    Locked(String),
    #[error("cannot open the store in {path}")]
    Open { path: String, source: sled::Error },
    #[error("no dataward data directory at {0} (nothing registered yet, or a wrong --data-dir?)")]
    Missing(String),
    #[error("storage failure")]
    Engine(#[from] sled::Error),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the journal: {0}")]
    Journal(String),
    #[error("flushing to disk failed: {0}")]
    Flush(String),
    #[error("the history of device {device:?} for {period} cannot be read: {reason}")]
    Unreadable {
        device: String,
        period: String,
        reason: String,
    },
    #[error("encryption failed: {0}")]
    Crypto(String),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
}

/// The bytes of the files under `dir`, as the disk holds them (what both
/// faces see alike; the engine's own count depends on its cache).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The opened database and its trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    journal: Arc<journal::Journal>,
    pub durability: Arc<Durability>,
    /// One per store, shared by the pipeline and the operations: deletes
    /// and appends coordinate through it.
    history: Arc<HistoryStore>,
    /// One per store too: the pipeline and the operations share it.
    fields: Arc<FieldInventory>,
    destinations: Arc<DestinationApprovals>,
    ledger: Arc<crate::ledger::Ledger>,
    key_changes: Arc<std::sync::Mutex<()>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. A second process on the same
    /// directory, or a corrupt file, gives an error, never a panic.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // Another handle of this process may be letting go of the files
        // (sled's threads finish after the last handle drops): a locked
        // store is tried again for a moment. Other processes are kept out
        // by the data directory's lock before this is reached.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Self::open_once(dir) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            // Flushing is ours (group commit); sled's timer would only add
            // uncoordinated fsyncs.
            .flush_every_ms(None)
            // sled's in-memory form of cached pages runs several times the
            // budget it counts: at 16 MiB, RSS under load swung from 48 to
            // 72 MB; at 4 MiB it stays near 30-35 MB, with no loss of
            // throughput (the hot pages are the newest ones).
            .cache_capacity(4 * 1024 * 1024)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked(dir.display().to_string())
                }
                _ => StoreError::Open {
                    path: dir.display().to_string(),
                    source: e,
                },
            })?;
        let dirty = Arc::default();
        let journal = Arc::new(journal::Journal::open(
            &dir.join("journal"),
            db.clone(),
            Arc::clone(&dirty),
        )?);
        let durability = Arc::new(Durability::new(Arc::clone(&journal), dirty));
        // The pad file is created with the first keys, never for a store
        // that already has some: that would read as "all destroyed".
        let keyed = db.open_tree("keys")?.get(USER_KEYS)?.is_some()
            || !db.open_tree("period_keys")?.is_empty();
        let pads = Arc::new(pads::KeyPads::open(&dir.join("keypads"), !keyed)?);
        let history = Arc::new(HistoryStore::open(
            &db,
            durability.dirty(),
            Arc::clone(&journal),
            Arc::clone(&pads),
        )?);
        let fields = Arc::new(FieldInventory::open(
            db.open_tree("fields")?,
            durability.dirty(),
        )?);
        let destinations = Arc::new(DestinationApprovals::open(
            db.open_tree("approved_destinations")?,
        )?);
        let ledger = Arc::new(crate::ledger::Ledger::open(
            &db,
            durability.dirty(),
            durability.due(),
            &journal,
        )?);
        let l = Arc::clone(&ledger);
        durability.set_before_flush(Arc::new(move || {
            l.persist_open()
                .map_err(|e| crate::control::with_causes(&e))
        }));
        let store = Self {
            db,
            journal,
            durability,
            history,
            fields,
            destinations,
            ledger,
            key_changes: Arc::default(),
        };
        let keys = store.load_keys()?;
        store.history.settle_destroyed()?;
        // Pads nothing names any more: drawn for a key a crash kept from
        // being stored, or an old wrap a crash kept from being revoked.
        let mut used = store.history.pad_slots()?;
        if let Some(k) = &keys {
            used.insert(k.passphrase_slot());
            used.insert(k.recovery_slot());
        }
        let orphans = pads.destroy_unused(&used)?;
        if orphans > 0 {
            tracing::info!(orphans, "key pads no key used any more were destroyed");
        }
        if let Some(keys) = keys {
            store.history.set_recipient(Some(keys.public()?));
        }
        Ok(store)
    }

    /// Held across a change of the user's keys (init, passphrase change or
    /// reset, factory wipe): two at once could revoke each other's pads.
    pub fn key_change(&self) -> std::sync::MutexGuard<'_, ()> {
        self.key_changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's stored keys, if `init` has run.
    pub fn load_keys(&self) -> Result<Option<StoredKeys>, StoreError> {
        match self.db.open_tree("keys")?.get(USER_KEYS)? {
            Some(bytes) => Ok(Some(StoredKeys::from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores the user's keys, durably, and keys new history to them.
    pub fn save_keys(&self, keys: &StoredKeys) -> Result<(), StoreError> {
        self.db
            .open_tree("keys")?
            .insert(USER_KEYS, keys.to_json())?;
        self.journal.checkpoint()?;
        self.history.set_recipient(Some(keys.public()?));
        Ok(())
    }

    /// Encrypts history kept in plaintext by versions before the user's
    /// keys existed (tree `history`: key device, 0x00, seq; value received
    /// ms u64 BE, topic length u16 BE, topic, payload), then drops it. Run
    /// at `init` and at every start with keys, so an interrupted migration
    /// finishes. Their QoS and retain flag were not kept: they come out as
    /// 1 and false. A record that does not decode is dropped with the rest
    /// (counted, and logged): it cannot be carried over, and plaintext must
    /// not stay. Returns (moved, dropped).
    pub fn migrate_plaintext_history(&self) -> Result<(u64, u64), StoreError> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"history")
        {
            return Ok((0, 0));
        }
        if !self.history.keeps_history() {
            return Ok((0, 0));
        }
        let old = self.db.open_tree("history")?;
        let (mut moved, mut dropped) = (0, 0);
        for kv in old.iter() {
            let (k, v) = kv?;
            let decoded = (|| {
                let zero = k.iter().position(|b| *b == 0)?;
                let device = std::str::from_utf8(&k[..zero]).ok()?;
                let received_ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
                let tlen = u16::from_be_bytes(v.get(8..10)?.try_into().ok()?) as usize;
                let topic = std::str::from_utf8(v.get(10..10 + tlen)?).ok()?;
                let payload = v.get(10 + tlen..)?;
                Some((device, received_ms, topic, payload))
            })();
            let Some((device, received_ms, topic, payload)) = decoded else {
                dropped += 1;
                continue;
            };
            self.history.append(&NewRecord {
                device,
                received_ms,
                qos: 1,
                retain: false,
                topic,
                payload,
            })?;
            moved += 1;
        }
        self.journal.checkpoint()?;
        self.db.drop_tree("history")?;
        self.journal.checkpoint()?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "plaintext history records that did not decode were dropped, not migrated"
            );
        }
        Ok((moved, dropped))
    }

    /// Forgets the user's keys (factory wipe): no history is kept after,
    /// and their pads are zeroed, so no copy of the record in sled's log
    /// opens again.
    pub fn remove_keys(&self) -> Result<(), StoreError> {
        let _change = self.key_change();
        self.history.set_recipient(None);
        let keys = self.load_keys()?;
        self.db.open_tree("keys")?.remove(USER_KEYS)?;
        self.journal.checkpoint()?;
        if let Some(keys) = keys {
            self.history
                .pads
                .destroy(&[keys.passphrase_slot(), keys.recovery_slot()])?;
        }
        Ok(())
    }

    /// The `pseudonymize` key of `destination`, drawn (and stored) the
    /// first time. The same key keeps a destination's pseudonyms stable
    /// across restarts; destinations never share one.
    pub fn pseudonym_key(&self, destination: &str) -> Result<ring::hmac::Key, StoreError> {
        let tree = self.db.open_tree("pseudonym_keys")?;
        let bytes = match tree.get(destination)? {
            Some(k) if k.len() == 32 => zeroize::Zeroizing::new(k.to_vec()),
            _ => {
                let k = crate::keys::wrap::random_key()
                    .map_err(|e| StoreError::Crypto(e.to_string()))?;
                tree.insert(destination, k.as_ref())?;
                self.journal.checkpoint()?;
                zeroize::Zeroizing::new(k.to_vec())
            }
        };
        Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
    }

    /// A new pad for a key wrap.
    pub fn new_wrap_pad(&self) -> Result<WrapPad, StoreError> {
        let (slot, pad) = self.history.pads.allocate()?;
        Ok(WrapPad { slot, pad })
    }

    /// The pad in `slot`, which a key wrap is bound to.
    pub fn wrap_pad(&self, slot: u64) -> Result<Pad, StoreError> {
        self.history.pads.read(slot)?.ok_or_else(|| {
            StoreError::Corrupt(format!("the key pad in slot {slot} of keypads is gone"))
        })
    }

    /// Zeroes the pad of a wrap no longer in use (an old passphrase's).
    pub fn destroy_wrap_pad(&self, slot: u64) -> Result<(), StoreError> {
        self.history.pads.destroy(&[slot])
    }

    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    pub fn fields(&self) -> Arc<FieldInventory> {
        Arc::clone(&self.fields)
    }

    pub fn ledger(&self) -> Arc<crate::ledger::Ledger> {
        Arc::clone(&self.ledger)
    }

    pub fn destinations(&self) -> Arc<DestinationApprovals> {
        Arc::clone(&self.destinations)
    }

    pub fn history(&self) -> Arc<HistoryStore> {
        Arc::clone(&self.history)
    }

    /// A handle on `destination`'s outbox. One live handle per destination
    /// at a time: each holds its newest entries in memory and numbers new
    /// ones itself (opening one moves what earlier handles held to sled).
    pub fn outbox(&self, destination: &str, max_entries: u64) -> Result<Outbox, StoreError> {
        Outbox::open(
            &self.db,
            destination,
            max_entries,
            self.durability.dirty(),
            Arc::clone(&self.journal),
            self.ledger(),
        )
    }

    pub fn policy_versions(&self) -> Result<PolicyVersions, StoreError> {
        PolicyVersions::open(&self.db)
    }

    /// Whether a destination's outbox was ever created: status reads a
    /// backlog without creating an empty tree.
    pub fn has_outbox(&self, destination: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == format!("outbox/{destination}").as_bytes())
    }

    /// Opens an existing store; for commands that only read or change what
    /// is there, so a mistyped `--data-dir` does not create an empty one.
    pub fn open_existing(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join("db").exists() {
            return Err(StoreError::Missing(dir.display().to_string()));
        }
        Self::open(dir)
    }

    /// Blocking checkpoint (sled flushed, the journal emptied), for
    /// shutdown, CLI commands, and before a deletion is reported done.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.ledger.persist_open()?;
        self.journal.checkpoint()
    }
}

/// A journal for a bare test database, in `dir`.
#[cfg(test)]
pub(crate) fn open_test_journal(dir: &Path, db: &sled::Db) -> Arc<journal::Journal> {
    Arc::new(
        journal::Journal::open(&dir.join("journal"), db.clone(), Arc::default())
            .expect("test journal"),
    )
}

/// A bare sled database for unit tests, opened as [`Store::open`] opens
/// its own: no flusher thread of sled's, and a lock still held by a handle
/// this process just dropped is waited for (sled lets go from a background
/// thread, so an immediate reopen can find the file locked).
#[cfg(test)]
pub(crate) fn open_test_db(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("test db {}: {e}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KdfParams;

    const FAST: KdfParams = KdfParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };

    #[test]
    fn a_replaced_wrap_stays_revoked_on_a_copy_of_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (p, r) = (
            store.new_wrap_pad().expect("pad"),
            store.new_wrap_pad().expect("pad"),
        );
        let (keys, _) = StoredKeys::create(b"old passphrase", FAST, 0, &p, &r).expect("create");
        store.save_keys(&keys).expect("save");
        // What a copy of the disk taken later may still hold of the record.
        let old = store.load_keys().expect("load").expect("keys");
        let pad = store.wrap_pad(old.passphrase_slot()).expect("pad");
        let sk = old.unlock(b"old passphrase", &pad).expect("unlock");
        let fresh = store.new_wrap_pad().expect("pad");
        let next = old
            .with_passphrase(&sk, b"new passphrase", FAST, &fresh)
            .expect("rewrap");
        store.save_keys(&next).expect("save");
        store
            .destroy_wrap_pad(old.passphrase_slot())
            .expect("destroy");
        assert!(
            store.wrap_pad(old.passphrase_slot()).is_err(),
            "the old pad is zeroed"
        );
        // Its slot is never handed out again.
        let next_pad = store.new_wrap_pad().expect("pad");
        assert_ne!(next_pad.slot, old.passphrase_slot());
        // A pad drawn but never stored (a crash before the record) is
        // destroyed at the next open; the ones in use stay.
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert!(store.wrap_pad(next_pad.slot).is_err(), "orphan destroyed");
        let now = store.load_keys().expect("load").expect("keys");
        let pad = store.wrap_pad(now.passphrase_slot()).expect("pad");
        assert!(now.unlock(b"new passphrase", &pad).is_ok());
    }
}
