//! Deleting history by crypto-shredding. One delete, expiry or reclaim
//! runs at a time.
//!
//! 1. Under the writer's lock, briefly, the writer stops using the keys in
//!    question and they are listed: nothing is written under them after.
//! 2. Each key to destroy is noted in `shredded` (flushed), then its pad is
//!    zeroed in place and synced: from then on its records are unreadable,
//!    whatever sled still keeps on disk. Then its row goes.
//! 3. A period cut by an edge of the range is read first; then its records
//!    outside the range are sealed again under a new key, those inside
//!    removed, and its old keys destroyed like the others.
//! 4. The records of destroyed keys are removed ([`HistoryStore::reclaim`])
//!    and the notes marked done. Notes stay: key numbers are never drawn
//!    again, and readers skip a noted key's records. A crash in between
//!    leaves pending notes, finished at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

fn lock_unit(m: &std::sync::Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use serde::{Deserialize, Serialize};

use super::history::{
    key_row, lock_writer, period_prefix, record_keyno, split_key, HistoryStore, PERIOD_MS,
};
use super::period_keys::{row_slot, Opened};
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
    /// Records of cut periods that no longer opened (changed on disk), so
    /// could not be kept: removed.
    #[serde(default)]
    pub damaged: u64,
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

/// A `shredded` note: the key is destroyed, its records are still to go.
pub(super) const NOTE_PENDING: &[u8] = &[];
/// The records are gone too. Kept: key numbers are never reused.
const NOTE_DONE: &[u8] = &[1];

/// (device, period, key number) of a `period_keys` or `shredded` key.
fn parse_row(k: &[u8]) -> Result<(&str, u32, u32), StoreError> {
    split_key(k)
        .and_then(|(d, p, rest)| Some((d, p, keyno_of(rest)?)))
        .ok_or_else(|| StoreError::Corrupt(format!("period key {:02x?}", &k[..k.len().min(64)])))
}

#[derive(Default)]
struct Recut {
    removed: u64,
    bytes: u64,
    kept: u64,
    damaged: u64,
}

impl HistoryStore {
    /// Deletes the history in `range`, as it stands when the call starts:
    /// records that arrive meanwhile are written under new keys and stay.
    /// Re-encrypting a cut period needs the private key; a range of whole
    /// days does not.
    pub fn shred(
        &self,
        range: &ShredRange<'_>,
        sk: Option<&PrivateKey>,
    ) -> Result<ShredReport, StoreError> {
        let _one = lock_unit(&self.shredding);
        let started = Instant::now();
        let mut report = ShredReport::default();
        // Under the writer's lock, briefly: the writer stops using the keys
        // in question, and the keys to destroy are listed. No record is
        // being written under them at that moment, and none will be after.
        let mut whole = Vec::new();
        let mut cut = BTreeMap::<(String, u32), Vec<u32>>::new();
        let recipient = {
            let mut writer = lock_writer(&self.writer);
            writer.forget(range.device);
            let scan = match range.device {
                Some(d) => self.keys.scan_prefix(super::history::device_prefix(d)),
                None => self.keys.iter(),
            };
            for kv in scan {
                let (k, _) = kv?;
                let (device, period, keyno) = parse_row(&k)?;
                if range.covers(period) {
                    whole.push((device.to_string(), period, keyno));
                } else if range.touches(period) {
                    cut.entry((device.to_string(), period))
                        .or_default()
                        .push(keyno);
                }
            }
            writer.recipient()
        };
        let cut_key = match (&cut.is_empty(), sk, recipient) {
            (true, _, _) => None,
            (false, Some(sk), Some(pk)) => Some((sk, pk)),
            (false, None, _) => {
                return Err(StoreError::Crypto(
                    "deleting part of a day needs the private key".into(),
                ))
            }
            (false, _, None) => {
                return Err(StoreError::Crypto(
                    "no public key to re-encrypt the rest of the day to".into(),
                ))
            }
        };
        let mut periods = BTreeSet::new();
        self.destroy_keys(&whole)?;
        report.unreadable_after_ms = started.elapsed().as_secs_f64() * 1000.0;
        for (device, period, _) in &whole {
            periods.insert((device.clone(), *period));
        }
        self.journal.checkpoint()?;

        if let Some((sk, pk)) = cut_key {
            for ((device, period), keynos) in &cut {
                let r = self.recut(sk, &pk, range, device, *period, keynos)?;
                report.records += r.removed;
                report.bytes += r.bytes;
                report.kept += r.kept;
                report.damaged += r.damaged;
                if r.removed + r.damaged > 0 {
                    periods.insert((device.clone(), *period));
                }
            }
            report.unreadable_after_ms = started.elapsed().as_secs_f64() * 1000.0;
            self.journal.checkpoint()?;
        }
        report.periods = periods.len() as u64;
        let (records, bytes) = self.reclaim_locked(range.device)?;
        report.records += records;
        report.bytes += bytes;
        Ok(report)
    }

    /// Destroys keys: each is noted first (the note stays: readers skip a
    /// noted key's records even if a crash left the key row behind, and its
    /// number is never drawn again), then their pads are zeroed in place
    /// and synced (from then on the keys cannot be derived, whatever sled
    /// keeps), then their rows go.
    fn destroy_keys(&self, keys: &[(String, u32, u32)]) -> Result<(), StoreError> {
        let mut slots = Vec::with_capacity(keys.len());
        for (device, period, keyno) in keys {
            let row = key_row(device, *period, *keyno);
            self.shredded.insert(&row, NOTE_PENDING)?;
            if let Some(slot) = self.keys.get(&row)?.as_deref().and_then(row_slot) {
                slots.push(slot);
            }
        }
        if !keys.is_empty() {
            // The notes before the pads: a crash between leaves keys that
            // readers already skip, never pads gone with nothing noted.
            self.journal.checkpoint()?;
        }
        self.pads.destroy(&slots)?;
        for (device, period, keyno) in keys {
            self.keys.remove(key_row(device, *period, *keyno))?;
        }
        self.mark_dirty();
        Ok(())
    }

    /// At open: a key whose pad is gone but whose row and note are not (a
    /// crash before the notes reached the disk) is noted now, before a
    /// freed pad slot can be handed to a new key.
    pub(super) fn settle_destroyed(&self) -> Result<(), StoreError> {
        let mut settle = Vec::new();
        for kv in self.keys.iter() {
            let (k, v) = kv?;
            let gone = match row_slot(&v) {
                Some(slot) => self.pads.read(slot)?.is_none(),
                None => false,
            };
            if gone && !self.shredded.contains_key(&k)? {
                let (device, period, keyno) = parse_row(&k)?;
                settle.push((device.to_string(), period, keyno));
            }
        }
        if !settle.is_empty() {
            tracing::warn!(
                keys = settle.len(),
                "finishing the deletion of keys a crash interrupted"
            );
            self.destroy_keys(&settle)?;
            self.journal.checkpoint()?;
        }
        Ok(())
    }

    /// Re-encrypts the records of one cut period outside `range` under a
    /// new key, removes those inside, and destroys the old keys. Records
    /// that no longer open cannot be kept: they are removed and counted.
    fn recut(
        &self,
        sk: &PrivateKey,
        recipient: &crate::keys::PublicKey,
        range: &ShredRange<'_>,
        device: &str,
        period: u32,
        keynos: &[u32],
    ) -> Result<Recut, StoreError> {
        // Read first, change after: a failure here changes nothing. One
        // device-day at most is held.
        let mut keep = Vec::new();
        let mut remove = Vec::new();
        let mut damaged = Vec::new();
        let mut keys = BTreeMap::new();
        for kv in self.records.scan_prefix(period_prefix(device, period)) {
            let (k, v) = kv?;
            let Some(keyno) = record_keyno(&v).filter(|n| keynos.contains(n)) else {
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(e) = keys.entry(keyno) {
                e.insert(match self.open_key(sk, device, period, keyno) {
                    Ok(Opened::Key(k)) => Some(k),
                    _ => None,
                });
            }
            let rec = keys
                .get(&keyno)
                .and_then(|key| key.as_ref())
                .and_then(|key| self.open_record(key, &k, &v));
            match rec {
                Some(rec)
                    if rec.received_ms >= range.since_ms && rec.received_ms < range.until_ms =>
                {
                    remove.push((k, v.len()))
                }
                Some(rec) => keep.push((k, rec)),
                None => damaged.push(k),
            }
        }
        let new = {
            let _writer = lock_writer(&self.writer);
            self.draw_key(device, period, recipient)?
        };
        let mut out = Recut::default();
        for (k, rec) in &keep {
            let value = self.seal_record(&new, device, period, rec)?;
            self.records.insert(k, &value)?;
            out.kept += 1;
        }
        for (k, len) in &remove {
            self.records.remove(k)?;
            out.removed += 1;
            out.bytes += (k.len() + len) as u64;
        }
        for k in &damaged {
            self.records.remove(k)?;
            out.damaged += 1;
        }
        let old: Vec<_> = keynos
            .iter()
            .map(|n| (device.to_string(), period, *n))
            .collect();
        self.destroy_keys(&old)?;
        Ok(out)
    }

    /// Removes the records of destroyed keys (of `device`, or all) and
    /// marks their notes done. Returns (records, bytes) removed.
    pub fn reclaim(&self, device: Option<&str>) -> Result<(u64, u64), StoreError> {
        let _one = lock_unit(&self.shredding);
        self.reclaim_locked(device)
    }

    /// [`Self::reclaim`], by a caller that holds `shredding`: no re-seal of
    /// a cut day runs meanwhile, so a record's key number read here is
    /// still its key number when it is removed.
    fn reclaim_locked(&self, device: Option<&str>) -> Result<(u64, u64), StoreError> {
        let notes = match device {
            Some(d) => self.shredded.scan_prefix(super::history::device_prefix(d)),
            None => self.shredded.iter(),
        };
        let (mut records, mut bytes) = (0, 0);
        for kv in notes {
            let (row, note) = kv?;
            if note.as_ref() != NOTE_PENDING {
                continue;
            }
            let (dev, period, keyno) = parse_row(&row)?;
            // Finishes a destroy that a crash interrupted.
            if let Some(slot) = self.keys.get(&row)?.as_deref().and_then(row_slot) {
                self.pads.destroy(&[slot])?;
                self.keys.remove(&row)?;
            }
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
            self.shredded.insert(&row, NOTE_DONE)?;
        }
        if records > 0 {
            self.mark_dirty();
            self.journal.checkpoint()?;
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
        let _one = lock_unit(&self.shredding);
        let started = Instant::now();
        let mut expired = Vec::new();
        let mut periods = BTreeSet::new();
        {
            // Listed and taken out of use at once: no key is drawn between.
            let mut writer = lock_writer(&self.writer);
            for kv in self.keys.iter() {
                let (k, _) = kv?;
                let (device, period, keyno) = parse_row(&k)?;
                let Some(keep) = keep_for(device) else {
                    continue;
                };
                let (_, end) = bounds(period);
                if end.saturating_add(keep) <= now_ms {
                    expired.push((device.to_string(), period, keyno));
                    periods.insert((device.to_string(), period));
                }
            }
            for (device, period) in &periods {
                writer.forget_period(device, *period);
            }
        }
        let mut report = ShredReport::default();
        if expired.is_empty() {
            return Ok(report);
        }
        self.destroy_keys(&expired)?;
        report.unreadable_after_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.journal.checkpoint()?;
        report.periods = periods.len() as u64;
        let (records, bytes) = self.reclaim_locked(None)?;
        report.records = records;
        report.bytes = bytes;
        Ok(report)
    }

    /// The pad slots the stored data keys name.
    pub(super) fn pad_slots(&self) -> Result<std::collections::HashSet<u64>, StoreError> {
        let mut used = std::collections::HashSet::new();
        for kv in self.keys.iter() {
            let (_, v) = kv?;
            if let Some(slot) = row_slot(&v) {
                used.insert(slot);
            }
        }
        Ok(used)
    }

    /// Whether any destroyed key still has records to remove.
    pub fn has_unreclaimed(&self) -> bool {
        self.shredded
            .iter()
            .any(|kv| kv.is_ok_and(|(_, note)| note.as_ref() == NOTE_PENDING))
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
#[path = "shred_tests.rs"]
mod tests;
