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
        let recent = std::sync::Arc::new(recent::Recent::new(
            tree.clone(),
            std::sync::Arc::clone(&dirty),
        ));
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
        drop(held);
        if over {
            self.recent.ask_for_spill();
        }
        self.count.fetch_add(1, Ordering::AcqRel);
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
        for kv in self.tree.range(..cutoff.to_be_bytes()) {
            let (k, _) = kv?;
            if self.tree.remove(&k)? {
                self.count.fetch_sub(1, Ordering::AcqRel);
                dropped += 1;
            }
        }
        {
            let mut held = self.recent.lock();
            let old: Vec<u64> = held.entries.range(..cutoff).map(|(k, _)| *k).collect();
            for key in old {
                held.remove(key);
                self.journal.record(&[Op::Remove {
                    tree: self.tree.name(),
                    key: &key.to_be_bytes(),
                }]);
                self.count.fetch_sub(1, Ordering::AcqRel);
                dropped += 1;
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
            let mut held = self.recent.lock();
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
                held.remove(key);
                self.journal.record(&[Op::Remove {
                    tree: self.tree.name(),
                    key: &key.to_be_bytes(),
                }]);
                self.count.fetch_sub(1, Ordering::AcqRel);
                removed += 1;
            }
        }
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

    /// The destination acknowledged `key`.
    pub fn remove(&self, key: u64) -> Result<(), StoreError> {
        let k = key.to_be_bytes();
        let mut held = self.recent.lock();
        if held.remove(key).is_some() {
            self.journal.record(&[Op::Remove {
                tree: self.tree.name(),
                key: &k,
            }]);
            drop(held);
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }
        drop(held);
        if self.tree.remove(&k)? {
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
mod tests {
    use crate::store::Store;

    #[test]
    fn entries_come_out_in_order_and_leave_on_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ob = store.outbox("cloud", 100).expect("outbox");
        for i in 0..5u8 {
            ob.push("dev", "t/x", &[i], 100 + u64::from(i))
                .expect("push");
        }
        let first = ob.read_after(None, 3).expect("read");
        assert_eq!(
            first.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let rest = ob.read_after(Some(first[2].key), 10).expect("read");
        assert_eq!(rest.len(), 2);
        assert_eq!(ob.oldest_queued_ms().expect("oldest"), Some(100));
        ob.remove(first[0].key).expect("remove");
        ob.remove(first[0].key)
            .expect("a second ack of the same entry");
        assert_eq!(ob.len(), 4);
        assert_eq!(ob.oldest_queued_ms().expect("oldest"), Some(101));
        assert_eq!(first[1].device, "dev");
        assert_eq!(first[1].topic, "t/x");
        drop(ob);
        // Keys continue after a reopen instead of restarting.
        let ob = store.outbox("cloud", 100).expect("reopen");
        assert_eq!(ob.len(), 4, "the count is rebuilt at open");
        let k = ob.push("dev", "t", b"z", 0).expect("push");
        assert!(k > rest[1].key);
    }

    #[test]
    fn a_dead_letter_leaves_the_queue_and_is_kept_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ob = store.outbox("cloud", 100).expect("outbox");
        let k1 = ob.push("dev", "t", b"poison", 1).expect("push");
        ob.push("dev", "t", b"next", 2).expect("push");
        assert!(ob
            .dead_letter(k1, "the cloud dropped the connection")
            .expect("move"));
        assert!(!ob.dead_letter(k1, "again").expect("already moved"));
        assert_eq!((ob.len(), ob.dead_letters()), (1, 1));
        // The ledger says it will never leave, once.
        let dropped: Vec<_> = store
            .ledger()
            .since(0)
            .expect("ledger")
            .into_iter()
            .filter(|e| matches!(e.body, crate::ledger::EntryBody::OutboxDropped { .. }))
            .collect();
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        let left = ob.read_after(None, 10).expect("read");
        assert_eq!(left[0].payload, b"next");
        drop(ob);
        let ob = store.outbox("cloud", 100).expect("reopen");
        assert_eq!((ob.len(), ob.dead_letters()), (1, 1));
        let letter = store.tree("deadletter/cloud").expect("tree");
        let (_, v) = letter.first().expect("read").expect("one letter");
        assert!(v.windows(6).any(|w| w == b"poison"));
        assert!(v.windows(5).any(|w| w == b"cloud"));
    }

    #[test]
    fn entries_of_the_first_format_are_upgraded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // Format 1: device and topic (u16 BE length each), then payload.
        let old = store.tree("outbox/cloud").expect("tree");
        old.insert(7u64.to_be_bytes(), &b"\0\x03dev\0\x01tpayload"[..])
            .expect("insert");
        let ob = store.outbox("cloud", 100).expect("open upgrades");
        let e = ob.read_after(None, 10).expect("read");
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].key, e[0].device.as_str(), e[0].topic.as_str()),
            (7, "dev", "t")
        );
        assert_eq!(e[0].payload, b"payload");
        assert!(e[0].queued_ms > 0);
        drop(ob);
        // Upgraded once: a reopen leaves the new layout alone.
        let ob = store.outbox("cloud", 100).expect("reopen");
        assert_eq!(
            ob.read_after(None, 10).expect("read")[0].payload,
            b"payload"
        );
    }

    #[test]
    fn quota_drops_the_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ob = store.outbox("cloud", 3).expect("outbox");
        for i in 0..6u8 {
            ob.push("dev", "t", &[i], 0).expect("push");
        }
        let left = ob.read_after(None, 10).expect("read");
        assert_eq!(
            left.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        // After a reopen the quota still holds, counted from what is there.
        drop(ob);
        let ob = store.outbox("cloud", 3).expect("reopen");
        ob.push("dev", "t", &[6], 0).expect("push");
        assert_eq!(ob.len(), 3);
        let left = ob.read_after(None, 10).expect("read");
        assert_eq!(
            left.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
    }

    #[test]
    fn new_entries_stay_out_of_sled_until_a_checkpoint_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ob = store.outbox("cloud", 100).expect("outbox");
        let tree = store.tree("outbox/cloud").expect("tree");
        let a = ob.push("dev", "t", b"acked", 1).expect("push");
        ob.push("dev", "t", b"waiting", 2).expect("push");
        ob.remove(a).expect("ack");
        // Pushed and acknowledged between checkpoints: sled never saw it.
        assert!(tree.is_empty(), "held in memory and the journal only");
        assert_eq!(ob.len(), 1);
        assert_eq!(
            ob.read_after(None, 10).expect("read")[0].payload,
            b"waiting"
        );
        assert_eq!(ob.oldest_queued_ms().expect("oldest"), Some(2));
        // A checkpoint writes what waits to sled.
        store.flush().expect("checkpoint");
        assert_eq!(tree.len(), 1);
        drop((ob, tree));
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        let ob = store.outbox("cloud", 100).expect("outbox");
        let left = ob.read_after(None, 10).expect("read");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].payload, b"waiting");
    }

    #[test]
    fn held_entries_read_after_spilled_ones_in_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ob = store.outbox("cloud", 100).expect("outbox");
        for i in 0..3u8 {
            ob.push("dev", "t", &[i], 0).expect("push");
        }
        store.flush().expect("checkpoint");
        for i in 3..6u8 {
            ob.push("dev", "t", &[i], 0).expect("push");
        }
        let first = ob.read_after(None, 4).expect("read");
        assert_eq!(
            first.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let rest = ob.read_after(Some(first[3].key), 10).expect("read");
        assert_eq!(
            rest.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            vec![4, 5]
        );
        // A held entry and a spilled one, each to the dead letters.
        assert!(ob.dead_letter(first[0].key, "spilled").expect("move"));
        assert!(ob.dead_letter(rest[1].key, "held").expect("move"));
        assert!(!ob.contains(rest[1].key).expect("contains"));
        assert_eq!((ob.len(), ob.dead_letters()), (4, 2));
        // A purge takes both kinds.
        assert_eq!(ob.purge(Some("dev")).expect("purge"), 4 + 2);
        assert!(ob.is_empty());
        assert!(ob.read_after(None, 10).expect("read").is_empty());
    }

    #[test]
    fn a_full_memory_asks_for_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ob = store.outbox("cloud", 1_000_000).expect("outbox");
        let dirty = store.durability.dirty();
        dirty.store(false, std::sync::atomic::Ordering::SeqCst);
        let payload = vec![b'x'; 64 << 10];
        for _ in 0..31 {
            ob.push("dev", "t", &payload, 0).expect("push");
        }
        assert!(
            !dirty.load(std::sync::atomic::Ordering::SeqCst),
            "under 2 MiB held"
        );
        for _ in 0..2 {
            ob.push("dev", "t", &payload, 0).expect("push");
        }
        assert!(
            dirty.load(std::sync::atomic::Ordering::SeqCst),
            "over 2 MiB: spill soon"
        );
    }
}
