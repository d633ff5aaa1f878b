//! Deleting history by crypto-shredding.
//!
//! 1. Under the writer's lock, the data keys of every period wholly inside
//!    the range are destroyed, and each is noted in `shredded`; one flush
//!    later the records are unreadable, whatever the engine still keeps on
//!    disk.
//! 2. A period cut by an edge of the range is re-encrypted: its records
//!    outside the range are sealed again under a new data key, those inside
//!    are removed, then its old keys are destroyed like the others.
//! 3. The records of destroyed keys are removed ([`HistoryStore::reclaim`]),
//!    and each note with them. A crash in between leaves notes, and the next
//!    start finishes the job; until then, readers skip those records as
//!    deleted rather than report them as damaged.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::history::{
    key_row, lock_writer, period_of, period_prefix, record_keyno, split_key, HistoryStore,
    PERIOD_MS,
};
use super::StoreError;
use crate::keys::PrivateKey;

/// What a delete destroyed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShredReport {
    /// Device-days whose data keys were destroyed.
    pub periods: u64,
    /// Records removed.
    pub records: u64,
    /// Bytes of records removed (keys and ciphertext).
    pub bytes: u64,
    /// Records of cut periods re-encrypted to survive the delete.
    pub kept: u64,
    /// From the start of the delete until the deleted records were
    /// unreadable on disk (keys destroyed and flushed).
    pub unreadable_after_ms: f64,
}

/// What to delete: a device or all, in `[since_ms, until_ms)`.
#[derive(Debug, Clone, Copy)]
pub struct ShredRange<'a> {
    pub device: Option<&'a str>,
    pub since_ms: u64,
    pub until_ms: u64,
}

impl ShredRange<'_> {
    fn covers(&self, period: u32) -> bool {
        let (start, end) = bounds(period);
        self.since_ms <= start && end <= self.until_ms
    }

    fn touches(&self, period: u32) -> bool {
        let (start, end) = bounds(period);
        start < self.until_ms && self.since_ms < end
    }
}

fn bounds(period: u32) -> (u64, u64) {
    let start = u64::from(period) * PERIOD_MS;
    (start, start + PERIOD_MS)
}

fn keyno_of(rest: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

impl HistoryStore {
    /// Deletes the history in `range`. Re-encrypting a cut period needs the
    /// private key; a range of whole days does not.
    pub fn shred(
        &self,
        range: &ShredRange<'_>,
        sk: Option<&PrivateKey>,
    ) -> Result<ShredReport, StoreError> {
        let started = Instant::now();
        let mut report = ShredReport::default();
        let mut writer = lock_writer(&self.writer);
        let scan = match range.device {
            Some(d) => self.keys.scan_prefix(super::history::device_prefix(d)),
            None => self.keys.iter(),
        };
        let mut whole = Vec::new();
        let mut cut = std::collections::BTreeMap::<(String, u32), Vec<u32>>::new();
        for kv in scan {
            let (k, _) = kv?;
            let Some((device, period, rest)) = split_key(&k) else {
                return Err(StoreError::Corrupt(format!("period key {k:02x?}")));
            };
            let Some(keyno) = keyno_of(rest) else {
                return Err(StoreError::Corrupt(format!("period key {k:02x?}")));
            };
            if range.covers(period) {
                whole.push((device.to_string(), period, keyno));
            } else if range.touches(period) {
                cut.entry((device.to_string(), period))
                    .or_default()
                    .push(keyno);
            }
        }
        let mut periods = std::collections::BTreeSet::new();
        for (device, period, keyno) in &whole {
            self.destroy_key(device, *period, *keyno)?;
            periods.insert((device.clone(), *period));
        }
        writer.forget(range.device);
        self.db.flush()?;
        report.unreadable_after_ms = started.elapsed().as_secs_f64() * 1000.0;

        if !cut.is_empty() {
            let sk = sk.ok_or_else(|| {
                StoreError::Crypto("deleting part of a day needs the private key".into())
            })?;
            let recipient = writer.recipient().ok_or_else(|| {
                StoreError::Crypto("no public key to re-encrypt the rest of the day to".into())
            })?;
            for ((device, period), keynos) in &cut {
                let (removed, bytes, kept) =
                    self.recut(sk, &recipient, range, device, *period, keynos)?;
                report.records += removed;
                report.bytes += bytes;
                report.kept += kept;
                if removed > 0 {
                    periods.insert((device.clone(), *period));
                }
            }
            self.db.flush()?;
        }
        drop(writer);
        report.periods = periods.len() as u64;
        let (records, bytes) = self.reclaim(range.device)?;
        report.records += records;
        report.bytes += bytes;
        Ok(report)
    }

    /// Deletes a key and notes it as destroyed (its records still to go).
    fn destroy_key(&self, device: &str, period: u32, keyno: u32) -> Result<(), StoreError> {
        let row = key_row(device, period, keyno);
        // The note first: a crash between the two leaves a note whose key
        // still exists, and reclaim destroys it then.
        self.shredded.insert(&row, &[][..])?;
        self.keys.remove(&row)?;
        self.mark_dirty();
        Ok(())
    }

    /// Re-encrypts the records of one cut period outside `range` under a
    /// new key, removes those inside, and destroys the old keys. Returns
    /// (removed, bytes removed, kept).
    fn recut(
        &self,
        sk: &PrivateKey,
        recipient: &crate::keys::PublicKey,
        range: &ShredRange<'_>,
        device: &str,
        period: u32,
        keynos: &[u32],
    ) -> Result<(u64, u64, u64), StoreError> {
        let new = self.draw_key(device, period, recipient)?;
        let (mut removed, mut bytes, mut kept) = (0, 0, 0);
        let read = super::ReadRange {
            device: Some(device),
            since_ms: u64::from(period) * PERIOD_MS,
            until_ms: (u64::from(period) + 1) * PERIOD_MS,
        };
        // Collected first: the tree is rewritten below. One device-day.
        let mut records = Vec::new();
        for rec in self.read(sk, &read) {
            let rec = rec?;
            if period_of(rec.received_ms) == period {
                records.push(rec);
            }
        }
        for rec in records {
            let mut key = period_prefix(device, period);
            key.extend_from_slice(&rec.seq.to_be_bytes());
            let Some(old) = self.records.get(&key)? else {
                continue;
            };
            if record_keyno(&old).is_none_or(|n| !keynos.contains(&n)) {
                continue;
            }
            if rec.received_ms >= range.since_ms && rec.received_ms < range.until_ms {
                self.records.remove(&key)?;
                removed += 1;
                bytes += (key.len() + old.len()) as u64;
            } else {
                let value = self.seal_record(&new, device, period, &rec)?;
                self.records.insert(key, value)?;
                kept += 1;
            }
        }
        for keyno in keynos {
            self.destroy_key(device, period, *keyno)?;
        }
        Ok((removed, bytes, kept))
    }

    /// Removes the records of destroyed keys (of `device`, or all), then
    /// the notes. Returns (records, bytes) removed.
    pub fn reclaim(&self, device: Option<&str>) -> Result<(u64, u64), StoreError> {
        let notes = match device {
            Some(d) => self.shredded.scan_prefix(super::history::device_prefix(d)),
            None => self.shredded.iter(),
        };
        let (mut records, mut bytes) = (0, 0);
        for kv in notes {
            let (row, _) = kv?;
            let Some((dev, period, rest)) = split_key(&row) else {
                return Err(StoreError::Corrupt(format!("shredded note {row:02x?}")));
            };
            let keyno = keyno_of(rest)
                .ok_or_else(|| StoreError::Corrupt(format!("shredded note {row:02x?}")))?;
            // Finishes a destroy that a crash interrupted.
            self.keys.remove(&row)?;
            // In batches: sled applies a batch atomically, at a cost that
            // grows faster than its size.
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for rec in self.records.scan_prefix(period_prefix(dev, period)) {
                let (k, v) = rec?;
                if record_keyno(&v) == Some(keyno) {
                    bytes += (k.len() + v.len()) as u64;
                    records += 1;
                    batch.remove(k);
                    in_batch += 1;
                    if in_batch == 4096 {
                        self.records.apply_batch(std::mem::take(&mut batch))?;
                        in_batch = 0;
                    }
                }
            }
            self.records.apply_batch(batch)?;
            self.shredded.remove(&row)?;
        }
        if records > 0 {
            self.mark_dirty();
            self.db.flush()?;
        }
        Ok((records, bytes))
    }

    /// Destroys every period that ended before `cutoff_ms`, for the devices
    /// `keep_for` gives a retention to (`None`: kept forever). Whole
    /// periods only: a day is deleted once all of it is past retention.
    pub fn expire(
        &self,
        now_ms: u64,
        keep_for: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<ShredReport, StoreError> {
        let started = Instant::now();
        let mut expired = Vec::new();
        for kv in self.keys.iter() {
            let (k, _) = kv?;
            let Some((device, period, rest)) = split_key(&k) else {
                continue;
            };
            let Some(keep) = keep_for(device) else {
                continue;
            };
            let (_, end) = bounds(period);
            if end.saturating_add(keep) <= now_ms {
                if let Some(keyno) = keyno_of(rest) {
                    expired.push((device.to_string(), period, keyno));
                }
            }
        }
        let mut report = ShredReport::default();
        if expired.is_empty() {
            return Ok(report);
        }
        let mut writer = lock_writer(&self.writer);
        let mut periods = std::collections::BTreeSet::new();
        for (device, period, keyno) in &expired {
            self.destroy_key(device, *period, *keyno)?;
            writer.forget_period(device, *period);
            periods.insert((device.clone(), *period));
        }
        drop(writer);
        self.db.flush()?;
        report.unreadable_after_ms = started.elapsed().as_secs_f64() * 1000.0;
        report.periods = periods.len() as u64;
        let (records, bytes) = self.reclaim(None)?;
        report.records = records;
        report.bytes = bytes;
        Ok(report)
    }

    /// Whether any destroyed key still has records to remove.
    pub fn has_unreclaimed(&self) -> bool {
        !self.shredded.is_empty()
    }

    /// Keys currently stored for `device`: (period, key number).
    pub fn period_keys(&self, device: &str) -> Result<Vec<(u32, u32)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.keys.scan_prefix(super::history::device_prefix(device)) {
            let (k, _) = kv?;
            if let Some((_, period, rest)) = split_key(&k) {
                if let Some(n) = keyno_of(rest) {
                    out.push((period, n));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::seal;
    use crate::store::{NewRecord, ReadRange, Store};

    const DAY: u64 = PERIOD_MS;

    fn fill(store: &Store, device: &str, times: &[u64]) {
        for t in times {
            let payload = format!("{{\"t\":{t}}}");
            store
                .history()
                .append(&NewRecord {
                    device,
                    received_ms: *t,
                    qos: 1,
                    retain: false,
                    topic: "devices/x/state",
                    payload: payload.as_bytes(),
                })
                .expect("append");
        }
    }

    fn times(store: &Store, sk: &PrivateKey, device: &str) -> Vec<u64> {
        store
            .history()
            .read(
                sk,
                &ReadRange {
                    device: Some(device),
                    ..Default::default()
                },
            )
            .map(|r| r.expect("readable").received_ms)
            .collect()
    }

    #[test]
    fn deleting_a_device_destroys_its_keys_and_leaves_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        store.history().set_recipient(Some(pk));
        fill(&store, "a", &[10, DAY + 10, 2 * DAY + 10]);
        fill(&store, "b", &[20, DAY + 20]);
        let h = store.history();
        let raw: Vec<_> = h
            .records
            .scan_prefix(b"a\0")
            .map(|kv| kv.expect("kv"))
            .collect();
        let r = h
            .shred(
                &ShredRange {
                    device: Some("a"),
                    since_ms: 0,
                    until_ms: u64::MAX,
                },
                None,
            )
            .expect("shred");
        assert_eq!((r.periods, r.records, r.kept), (3, 3, 0));
        assert!(r.bytes > 3 * 30);
        assert!(h.period_keys("a").expect("keys").is_empty());
        assert_eq!(h.count("a"), 0);
        assert!(!h.has_unreclaimed());
        assert_eq!(times(&store, &sk, "b"), vec![20, DAY + 20]);
        // The ciphertext, put back as a disk might still hold it, does not
        // open with the right private key: its data keys are gone.
        for (k, v) in &raw {
            h.records.insert(k, v.clone()).expect("insert");
        }
        let err = h
            .read(
                &sk,
                &ReadRange {
                    device: Some("a"),
                    ..Default::default()
                },
            )
            .next()
            .expect("a record")
            .expect_err("unreadable");
        assert!(err.to_string().contains("data key is missing"), "{err}");
        for (k, _) in &raw {
            h.records.remove(k).expect("remove");
        }
        // Writing again after a delete uses a fresh key.
        fill(&store, "a", &[2 * DAY + 50]);
        assert_eq!(times(&store, &sk, "a"), vec![2 * DAY + 50]);
    }

    #[test]
    fn a_cut_day_keeps_what_is_outside_the_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        store.history().set_recipient(Some(pk));
        fill(
            &store,
            "a",
            &[100, 200, 300, DAY + 100, DAY + 200, 2 * DAY + 5],
        );
        let h = store.history();
        let before = h.period_keys("a").expect("keys");
        // From the middle of day 0 to the middle of day 1.
        let range = ShredRange {
            device: Some("a"),
            since_ms: 150,
            until_ms: DAY + 150,
        };
        assert!(
            h.shred(&range, None).is_err(),
            "a cut day needs the private key"
        );
        assert_eq!(h.period_keys("a").expect("keys"), before, "nothing changed");
        let r = h.shred(&range, Some(&sk)).expect("shred");
        assert_eq!((r.records, r.kept, r.periods), (3, 2, 2));
        assert_eq!(times(&store, &sk, "a"), vec![100, DAY + 200, 2 * DAY + 5]);
        // The old keys of the cut days are gone: new ones took their place.
        let after = h.period_keys("a").expect("keys");
        assert!(
            before.iter().all(|k| k.0 == 2 || !after.contains(k)),
            "{before:?} {after:?}"
        );
    }

    #[test]
    fn retention_expires_whole_days_by_the_clock_it_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        store.history().set_recipient(Some(pk));
        fill(&store, "a", &[10, DAY + 10, 3 * DAY + 10]);
        fill(&store, "forever", &[10]);
        let h = store.history();
        let keep = |d: &str| (d != "forever").then_some(2 * DAY);
        // Day 0 ends at DAY; kept 2 days: expires at 3 DAY, not before.
        assert_eq!(h.expire(3 * DAY - 1, &keep).expect("expire").periods, 0);
        let r = h.expire(3 * DAY, &keep).expect("expire");
        assert_eq!((r.periods, r.records), (1, 1));
        assert_eq!(times(&store, &sk, "a"), vec![DAY + 10, 3 * DAY + 10]);
        assert_eq!(times(&store, &sk, "forever"), vec![10]);
    }

    #[test]
    fn an_interrupted_delete_is_finished_by_reclaim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        store.history().set_recipient(Some(pk));
        fill(&store, "a", &[10, 20]);
        let h = store.history();
        let (period, keyno) = h.period_keys("a").expect("keys")[0];
        // As if the process died right after noting the key destroyed.
        h.shredded
            .insert(key_row("a", period, keyno), &[][..])
            .expect("note");
        // Readers already treat it as deleted...
        h.keys.remove(key_row("a", period, keyno)).expect("remove");
        assert!(times(&store, &sk, "a").is_empty());
        // ...and reclaim removes the records.
        assert_eq!(h.reclaim(None).expect("reclaim").0, 2);
        assert_eq!(h.count("a"), 0);
    }
}
