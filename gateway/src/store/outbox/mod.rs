//! Per-destination outbox: what the policy allowed out, kept on disk until
//! the destination acknowledges it. Its newest entries are in memory
//! ([`recent`]) and in the journal until a checkpoint writes them to sled.

mod recent;

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::journal::{Journal, JournaledTree, Op};
use super::StoreError;

/// One message waiting for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub key: u64,
    /// When the pipeline queued it (ms since the epoch).
    pub queued_ms: u64,
    pub device: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// An ordered queue in the sled tree `outbox/<destination>`: key = u64 BE,
/// value = queued time (u64 BE ms), device and topic (each u16 BE length,
/// bytes), payload. Keys are
/// assigned and inserted under one lock, so a reader that has seen key `k`
/// will never later find a smaller key appearing: order per device holds
/// and nothing is skipped.
pub struct Outbox {
    /// Entries older than the last checkpoint; their removal is journaled.
    tree: JournaledTree,
    /// The newest entries, all with keys above the tree's.
    recent: std::sync::Arc<recent::Recent>,
    next: Mutex<u64>,
    /// No key below this is present: lets a push skip the quota check
    /// without touching the tree.
    oldest_bound: AtomicU64,
    /// Entries present: counted once at open, then kept up to date, since
    /// sled's own `len` walks the whole tree.
    count: AtomicU64,
    max_entries: u64,
    /// `deadletter/<destination>`: entries the destination kept refusing,
    /// set aside so that the rest can flow. Key as in the outbox; value =
    /// reason (u16 BE length, bytes), then the outbox value.
    dead: JournaledTree,
    journal: std::sync::Arc<Journal>,
    dead_count: AtomicU64,
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    destination: String,
    /// Entries that will never leave are recorded there.
    ledger: std::sync::Arc<crate::ledger::Ledger>,
    /// Quota drops not recorded yet, and when the last record was made:
    /// at most one entry a minute, so an outage at full quota does not
    /// grow the ledger by an entry per message.
    quota_drops: Mutex<(u64, Option<std::time::Instant>)>,
}

impl Outbox {
    pub(super) fn open(
        db: &sled::Db,
        destination: &str,
        max_entries: u64,
        dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
        journal: std::sync::Arc<Journal>,
        ledger: std::sync::Arc<crate::ledger::Ledger>,
    ) -> Result<Self, StoreError> {
        // An earlier handle on this outbox may hold entries in memory.
        journal.spill_now()?;
        let tree = db.open_tree(format!("outbox/{destination}"))?;
        upgrade_format(db, &tree, destination)?;
        let next = match tree.last()? {
            Some((k, _)) => key_of(&k)? + 1,
            None => 1,
        };
        let oldest = match tree.first()? {
            Some((k, _)) => key_of(&k)?,
            None => next,
        };
        let count = tree.len() as u64;
        let dead = db.open_tree(format!("deadletter/{destination}"))?;
        let dead_count = AtomicU64::new(dead.len() as u64);
        let dead = JournaledTree::new(dead, std::sync::Arc::clone(&journal));
        let recent = std::sync::Arc::new(recent::Recent::new(tree.clone()));
        journal.add_spill(recent.clone());
        Ok(Self {
            dead,
            dead_count,
            dirty,
            tree: JournaledTree::new(tree, std::sync::Arc::clone(&journal)),
            recent,
            journal,
            next: Mutex::new(next),
            oldest_bound: AtomicU64::new(oldest),
            count: AtomicU64::new(count),
            max_entries: max_entries.max(1),
            destination: destination.to_string(),
            ledger,
            quota_drops: Mutex::new((0, None)),
        })
    }

    pub fn push(
        &self,
        device: &str,
        topic: &str,
        payload: &[u8],
        queued_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut value = Vec::with_capacity(12 + device.len() + topic.len() + payload.len());
        value.extend_from_slice(&queued_ms.to_be_bytes());
        for part in [device.as_bytes(), topic.as_bytes()] {
            let len = u16::try_from(part.len())
                .map_err(|_| StoreError::Corrupt("name too long".into()))?;
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(part);
        }
        value.extend_from_slice(payload);
        let mut next = self
            .next
            .lock()
            .map_err(|_| StoreError::Corrupt("outbox lock poisoned".into()))?;
        let key = *next;
        let k = key.to_be_bytes();
        // Held first, journaled second, under the lock a spill takes: a
        // checkpoint in between would otherwise drop the journal record
        // of an entry it did not spill.
        let mut held = self.recent.lock();
        let over = held.insert(key, value);
        if let Some(value) = held.entries.get(&key) {
            self.journal.record(&[Op::Put {
                tree: self.tree.name(),
                key: &k,
                value,
            }]);
        }
        // Counted before a remover can see it.
        self.count.fetch_add(1, Ordering::AcqRel);
        drop(held);
        if over {
            // A destination that is down must not grow memory: into sled
            // now (no flush is needed, the journal still has the puts).
            // Under `next`, so no newer key is held meanwhile.
            self.recent.spill_held()?;
        }
        *next += 1;
        drop(next);
        self.enforce_quota(key)?;
        Ok(key)
    }

    /// Keeps only the newest `max_entries` keys. Keys are dense, so this is
    /// the quota by count, and it costs nothing until the quota is reached.
    fn enforce_quota(&self, newest: u64) -> Result<(), StoreError> {
        let cutoff = (newest + 1).saturating_sub(self.max_entries);
        if self.oldest_bound.load(Ordering::Acquire) >= cutoff {
            return Ok(());
        }
        let mut dropped = 0u64;
        {
            // Held across both passes: a spill in between would move held
            // entries into the part already walked.
            let mut held = self.recent.lock();
            for kv in self.tree.range(..cutoff.to_be_bytes()) {
                let (k, _) = kv?;
                if self.tree.remove(&k)? {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    dropped += 1;
                }
            }
            let old: Vec<u64> = held.entries.range(..cutoff).map(|(k, _)| *k).collect();
            for key in old {
                dropped += u64::from(self.forget_held(&mut held, key));
            }
        }
        self.oldest_bound.fetch_max(cutoff, Ordering::AcqRel);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                quota = self.max_entries,
                "outbox over quota: oldest entries dropped"
            );
            let mut pending = self.quota_drops.lock().unwrap_or_else(|e| e.into_inner());
            pending.0 += dropped;
            let now = std::time::Instant::now();
            let due = pending
                .1
                .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(60));
            if due {
                self.ledger.note(crate::ledger::EntryBody::OutboxDropped {
                    destination: self.destination.clone(),
                    entries: pending.0,
                    reason: format!("over the outbox quota of {} entries", self.max_entries),
                });
                *pending = (0, Some(now));
            }
        }
        Ok(())
    }

    /// Removes the entries (waiting and dead letters) of `device`, or all:
    /// what a delete or a wipe must not let leave afterwards. Returns how
    /// many went.
    pub fn purge(&self, device: Option<&str>) -> Result<u64, StoreError> {
        let mut removed = 0;
        // Held across both passes: a spill in between would move held
        // entries into the part already walked, and they would leave after
        // the deletion was reported done.
        let mut held = self.recent.lock();
        // Journaled removes: a replay after a crash puts nothing purged
        // back. The caller's checkpoint (dirty is set) then makes them
        // durable before the deletion is reported done.
        for (tree, count, skip) in [
            (&self.tree, &self.count, 0usize),
            (&self.dead, &self.dead_count, 1),
        ] {
            for kv in tree.iter() {
                let (k, v) = kv?;
                let key = key_of(&k)?;
                // A dead letter's value starts with its reason.
                let body = if skip == 1 {
                    let len = v
                        .get(..2)
                        .map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
                    v.get(2 + len..).unwrap_or_default()
                } else {
                    &v[..]
                };
                let matches = match device {
                    None => true,
                    Some(d) => decode(key, body).is_ok_and(|e| e.device == d),
                };
                if matches && tree.remove(&k)? {
                    count.fetch_sub(1, Ordering::AcqRel);
                    removed += 1;
                }
            }
        }
        {
            let gone: Vec<u64> = held
                .entries
                .iter()
                .filter(|(k, v)| match device {
                    None => true,
                    Some(d) => decode(**k, v).is_ok_and(|e| e.device == d),
                })
                .map(|(k, _)| *k)
                .collect();
            for key in gone {
                removed += u64::from(self.forget_held(&mut held, key));
            }
        }
        drop(held);
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        Ok(removed)
    }

    /// Up to `limit` entries with keys above `after`, in key order.
    pub fn read_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let start = match after {
            Some(k) => Bound::Excluded(k.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        // Sled's keys are all below the held ones: sled first, then these.
        let held = self.recent.lock();
        for kv in self
            .tree
            .range::<[u8; 8], _>((start, Bound::Unbounded))
            .take(limit)
        {
            let (k, v) = kv?;
            out.push(decode(key_of(&k)?, &v)?);
        }
        let from = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        for (k, v) in held
            .entries
            .range((from, Bound::Unbounded))
            .take(limit - out.len())
        {
            out.push(decode(*k, v)?);
        }
        Ok(out)
    }

    /// Takes a held entry out, journaled and counted (the caller holds the
    /// lock); whether it was held.
    fn forget_held(&self, held: &mut recent::Held, key: u64) -> bool {
        if held.remove(key).is_none() {
            return false;
        }
        self.journal.record(&[Op::Remove {
            tree: self.tree.name(),
            key: &key.to_be_bytes(),
        }]);
        self.count.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// The destination acknowledged `key`.
    pub fn remove(&self, key: u64) -> Result<(), StoreError> {
        let mut held = self.recent.lock();
        if self.forget_held(&mut held, key) {
            return Ok(());
        }
        drop(held);
        if self.tree.remove(&key.to_be_bytes())? {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether entry `key` still waits (a delete or a wipe may have purged
    /// it after it was read).
    pub fn contains(&self, key: u64) -> Result<bool, StoreError> {
        let held = self.recent.lock();
        Ok(held.entries.contains_key(&key) || self.tree.contains_key(key.to_be_bytes())?)
    }

    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets entry `key` aside with the reason, in one transaction: it is
    /// either still waiting or a dead letter, never lost or both.
    pub fn dead_letter(&self, key: u64, reason: &str) -> Result<bool, StoreError> {
        let reason = reason.as_bytes();
        let reason = &reason[..reason.len().min(u16::MAX as usize)];
        // Held across the move and its journal records: a checkpoint (its
        // spill takes this lock) must see the entry in one place or the
        // other, never in neither.
        let mut held = self.recent.lock();
        let moved = match held.remove(key) {
            Some(value) => {
                let mut letter = Vec::with_capacity(2 + reason.len() + value.len());
                letter.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                letter.extend_from_slice(reason);
                letter.extend_from_slice(&value);
                if let Err(e) = (*self.dead).insert(key.to_be_bytes(), letter.as_slice()) {
                    held.insert(key, value);
                    return Err(e.into());
                }
                Some(letter)
            }
            None => self.move_to_dead(key, reason)?,
        };
        // Journaled as one piece, as sled applied it: a replay puts the
        // entry back in neither place or in both.
        if let Some(letter) = &moved {
            let k = key.to_be_bytes();
            self.journal.record(&[
                Op::Remove {
                    tree: self.tree.name(),
                    key: &k,
                },
                Op::Put {
                    tree: self.dead.name(),
                    key: &k,
                    value: letter,
                },
            ]);
        }
        drop(held);
        let moved = moved.is_some();
        if moved {
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.dead_count.fetch_add(1, Ordering::AcqRel);
            self.dirty.store(true, Ordering::Release);
            self.ledger.note(crate::ledger::EntryBody::OutboxDropped {
                destination: self.destination.clone(),
                entries: 1,
                reason: format!(
                    "set aside as a dead letter: {}",
                    String::from_utf8_lossy(reason)
                ),
            });
        }
        Ok(moved)
    }

    /// An entry in sled to the dead letters, in one sled transaction; the
    /// dead letter written, if there was the entry.
    fn move_to_dead(&self, key: u64, reason: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        use sled::Transactional;
        let moved = (&*self.tree, &*self.dead)
            .transaction(|(outbox, dead)| {
                let Some(value) = outbox.remove(&key.to_be_bytes())? else {
                    return Ok(None);
                };
                let mut letter = Vec::with_capacity(2 + reason.len() + value.len());
                letter.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                letter.extend_from_slice(reason);
                letter.extend_from_slice(&value);
                dead.insert(&key.to_be_bytes(), letter.as_slice())?;
                Ok(Some(letter))
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(s) => StoreError::Engine(s),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Corrupt("dead-letter move aborted".into())
                }
            })?;
        Ok(moved)
    }

    /// How many entries were set aside as dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.dead_count.load(Ordering::Acquire)
    }

    /// When the oldest entry still waiting was queued, if any waits.
    pub fn oldest_queued_ms(&self) -> Result<Option<u64>, StoreError> {
        let held = self.recent.lock();
        match self.tree.first()? {
            Some((k, v)) => Ok(Some(decode(key_of(&k)?, &v)?.queued_ms)),
            None => match held.entries.first_key_value() {
                Some((k, v)) => Ok(Some(decode(*k, v)?.queued_ms)),
                None => Ok(None),
            },
        }
    }
}

/// The value layout this build writes; kept in the `meta` tree per outbox.
const FORMAT: u8 = 2;

/// Entries written before the layout carried the queued time (format 1)
/// get one: the time of the upgrade, the closest known bound. They would
/// otherwise decode as garbage and block the destination.
fn upgrade_format(db: &sled::Db, tree: &sled::Tree, destination: &str) -> Result<(), StoreError> {
    let meta = db.open_tree("meta")?;
    let key = format!("outbox_format/{destination}");
    if meta.get(&key)?.is_some_and(|v| v.as_ref() == [FORMAT]) {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut upgraded = 0u64;
    for kv in tree.iter() {
        let (k, v) = kv?;
        let mut value = Vec::with_capacity(8 + v.len());
        value.extend_from_slice(&now.to_be_bytes());
        value.extend_from_slice(&v);
        tree.insert(k, value)?;
        upgraded += 1;
    }
    meta.insert(key, &[FORMAT])?;
    db.flush()?;
    if upgraded > 0 {
        tracing::info!(
            destination,
            upgraded,
            "outbox entries upgraded to the current format"
        );
    }
    Ok(())
}

fn key_of(k: &[u8]) -> Result<u64, StoreError> {
    k.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("outbox key {k:02x?}")))
}

fn decode(key: u64, v: &[u8]) -> Result<OutboxEntry, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("outbox entry {key}"));
    let queued_ms = u64::from_be_bytes(
        v.get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(corrupt)?,
    );
    let mut rest = &v[8..];
    let mut parts = Vec::with_capacity(2);
    for _ in 0..2 {
        let len = u16::from_be_bytes(
            rest.get(..2)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?,
        ) as usize;
        let part = rest.get(2..2 + len).ok_or_else(corrupt)?;
        parts.push(String::from_utf8(part.to_vec()).map_err(|_| corrupt())?);
        rest = &rest[2 + len..];
    }
    let topic = parts.pop().ok_or_else(corrupt)?;
    let device = parts.pop().ok_or_else(corrupt)?;
    Ok(OutboxEntry {
        key,
        queued_ms,
        device,
        topic,
        payload: rest.to_vec(),
    })
}

#[cfg(test)]
mod tests;
