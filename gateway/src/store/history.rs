//! Device history, encrypted to the user's public key (DESIGN §6, the
//! format in docs/formats.md).
//!
//! - Each device and UTC day (a *period*) gets a data key (see
//!   `period_keys`: half sealed to the user's public key, half a pad the
//!   store can destroy). The writer keeps the open key in memory while it
//!   writes that period; after a restart it draws a new one (the next *key
//!   number*), since it cannot open what it sealed. Reading needs the
//!   private key.
//! - Each record is sealed under its period's data key (ChaCha20-Poly1305,
//!   a fresh random nonce) with device, period, sequence number and key
//!   number as associated data: a record moved or swapped does not open.
//! - With no public key (before `dataward init`) nothing is kept.
//! - Deleting destroys data keys first (see `shred`), so the records are
//!   unreadable at once; removing them follows.
//!
//! Trees: `records` (key: device, 0x00, period u32 BE, seq u64 BE; value:
//! 0x01, key number u32 BE, nonce ‖ ciphertext ‖ tag), `period_keys` (key:
//! device, 0x00, period u32 BE, key number u32 BE; value: 0x02, pad slot
//! u64 BE, HPKE box of the secret) and `shredded` (same keys as
//! `period_keys`: destroyed keys; empty while their records are still being
//! removed, 0x01 after).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::period_keys::{OpenKey, Opened};
use super::StoreError;
use crate::keys::wrap::BoxKey;
use crate::keys::{PrivateKey, PublicKey};

/// A period is one UTC day.
pub const PERIOD_MS: u64 = 86_400_000;
const RECORD_FORMAT: u8 = 1;

/// One stored message, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    pub device: String,
    pub seq: u64,
    pub received_ms: u64,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A message to keep.
pub struct NewRecord<'a> {
    pub device: &'a str,
    pub received_ms: u64,
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a str,
    pub payload: &'a [u8],
}

pub fn period_of(ms: u64) -> u32 {
    u32::try_from(ms / PERIOD_MS).unwrap_or(u32::MAX)
}

pub(super) fn device_prefix(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 13);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}

pub(super) fn period_prefix(device: &str, period: u32) -> Vec<u8> {
    let mut k = device_prefix(device);
    k.extend_from_slice(&period.to_be_bytes());
    k
}

pub(super) fn key_row(device: &str, period: u32, keyno: u32) -> Vec<u8> {
    let mut k = period_prefix(device, period);
    k.extend_from_slice(&keyno.to_be_bytes());
    k
}

/// (device, period, the u32 or u64 after it) of a `records` or
/// `period_keys` key.
pub(super) fn split_key(key: &[u8]) -> Option<(&str, u32, &[u8])> {
    let zero = key.iter().position(|b| *b == 0)?;
    let device = std::str::from_utf8(&key[..zero]).ok()?;
    let period = u32::from_be_bytes(key.get(zero + 1..zero + 5)?.try_into().ok()?);
    Some((device, period, &key[zero + 5..]))
}

fn record_aad(device: &str, period: u32, seq: u64, keyno: u32) -> Vec<u8> {
    let mut aad = b"dwrec1".to_vec();
    aad.extend_from_slice(&period_prefix(device, period));
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(&keyno.to_be_bytes());
    aad
}

/// The key number a record value names.
pub(super) fn record_keyno(value: &[u8]) -> Option<u32> {
    if value.first() != Some(&RECORD_FORMAT) {
        return None;
    }
    Some(u32::from_be_bytes(value.get(1..5)?.try_into().ok()?))
}

#[derive(Default)]
pub(super) struct Writer {
    recipient: Option<PublicKey>,
    /// The data key each (device, period) is being written under.
    open: HashMap<(String, u32), OpenKey>,
}

impl Writer {
    pub(super) fn recipient(&self) -> Option<PublicKey> {
        self.recipient
    }

    /// Stops writing under the keys of `device` (or all): they are being
    /// destroyed, and the next record draws a new one.
    pub(super) fn forget(&mut self, device: Option<&str>) {
        match device {
            Some(d) => self.open.retain(|(dev, _), _| dev != d),
            None => self.open.clear(),
        }
    }

    pub(super) fn forget_period(&mut self, device: &str, period: u32) {
        self.open.remove(&(device.to_string(), period));
    }
}

fn plaintext(rec: &NewRecord<'_>) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let tlen = u16::try_from(rec.topic.len())
        .map_err(|_| StoreError::Corrupt("topic longer than 65535 bytes".into()))?;
    let mut plain = Zeroizing::new(Vec::with_capacity(12 + rec.topic.len() + rec.payload.len()));
    plain.extend_from_slice(&rec.received_ms.to_be_bytes());
    plain.push(rec.qos);
    plain.push(u8::from(rec.retain));
    plain.extend_from_slice(&tlen.to_be_bytes());
    plain.extend_from_slice(rec.topic.as_bytes());
    plain.extend_from_slice(rec.payload);
    Ok(plain)
}

fn sealed_value(
    key: &OpenKey,
    device: &str,
    period: u32,
    seq: u64,
    plain: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut value = Vec::with_capacity(5 + plain.len() + crate::keys::wrap::OVERHEAD);
    value.push(RECORD_FORMAT);
    value.extend_from_slice(&key.keyno.to_be_bytes());
    key.key
        .seal_into(
            &record_aad(device, period, seq, key.keyno),
            plain,
            &mut value,
        )
        .map_err(|e| StoreError::Crypto(e.to_string()))?;
    Ok(value)
}

pub struct HistoryStore {
    pub(super) db: sled::Db,
    /// Journaled: appends are the hot path.
    pub(super) records: super::journal::JournaledTree,
    pub(super) journal: Arc<super::journal::Journal>,
    pub(super) keys: sled::Tree,
    pub(super) shredded: sled::Tree,
    dirty: Arc<AtomicBool>,
    /// Held by appends (a few microseconds), and by deletes while they
    /// take keys out of use, so that no record is written under a key
    /// being destroyed.
    pub(super) writer: Mutex<Writer>,
    /// One delete, expiry or reclaim at a time.
    pub(super) shredding: Mutex<()>,
    pub(super) pads: Arc<super::pads::KeyPads>,
}

pub(super) fn lock_writer(m: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    // The writer's state is a cache of keys; after a panic mid-update it is
    // still consistent enough (at worst a key is drawn again).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HistoryStore {
    pub(super) fn open(
        db: &sled::Db,
        dirty: Arc<AtomicBool>,
        journal: Arc<super::journal::Journal>,
        pads: Arc<super::pads::KeyPads>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            pads,
            db: db.clone(),
            records: super::journal::JournaledTree::new(
                db.open_tree("records")?,
                Arc::clone(&journal),
            ),
            journal,
            keys: db.open_tree("period_keys")?,
            shredded: db.open_tree("shredded")?,
            dirty,
            writer: Mutex::default(),
            shredding: Mutex::default(),
        })
    }

    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Keys new history for `recipient`; `None` keeps none.
    pub fn set_recipient(&self, recipient: Option<PublicKey>) {
        let mut w = lock_writer(&self.writer);
        w.recipient = recipient;
        w.open.clear();
    }

    /// The user's public key, once the keys exist.
    pub fn public_key(&self) -> Option<PublicKey> {
        lock_writer(&self.writer).recipient
    }

    /// Whether history is being kept (the user's keys exist).
    pub fn keeps_history(&self) -> bool {
        lock_writer(&self.writer).recipient.is_some()
    }

    /// Stores `rec`, sealed; returns its sequence number, or `None` when no
    /// history is kept. Not durable until the store's `Durability::sync`.
    pub fn append(&self, rec: &NewRecord<'_>) -> Result<Option<u64>, StoreError> {
        let period = period_of(rec.received_ms);
        let plain = plaintext(rec)?;

        let mut w = lock_writer(&self.writer);
        let Some(recipient) = w.recipient else {
            return Ok(None);
        };
        let slot = (rec.device.to_string(), period);
        if !w.open.contains_key(&slot) {
            let opened = self.draw_key(rec.device, period, &recipient)?;
            // Earlier periods are done with: keep one per device at most
            // besides this one (a record late across midnight).
            w.open.retain(|(_, p), _| p.saturating_add(1) >= period);
            w.open.insert(slot.clone(), opened);
        }
        let Some(open) = w.open.get(&slot) else {
            return Err(StoreError::Corrupt("a data key vanished".into()));
        };
        let seq = self.db.generate_id()?;
        let mut value = Vec::with_capacity(5 + plain.len() + crate::keys::wrap::OVERHEAD);
        value.push(RECORD_FORMAT);
        value.extend_from_slice(&open.keyno.to_be_bytes());
        open.key
            .seal_into(
                &record_aad(rec.device, period, seq, open.keyno),
                &plain,
                &mut value,
            )
            .map_err(|e| StoreError::Crypto(e.to_string()))?;
        let mut key = period_prefix(rec.device, period);
        key.extend_from_slice(&seq.to_be_bytes());
        // Journaled, not marked dirty: a record is the hot path.
        self.records.insert(&key, &value)?;
        drop(w);
        Ok(Some(seq))
    }

    /// A read record sealed again under `key` (same sequence number).
    pub(super) fn seal_record(
        &self,
        key: &OpenKey,
        device: &str,
        period: u32,
        rec: &HistoryRecord,
    ) -> Result<Vec<u8>, StoreError> {
        let plain = plaintext(&NewRecord {
            device,
            received_ms: rec.received_ms,
            qos: rec.qos,
            retain: rec.retain,
            topic: &rec.topic,
            payload: &rec.payload,
        })?;
        sealed_value(key, device, period, rec.seq, &plain)
    }

    /// Reads history with the private key: records of `device` (or all),
    /// received in `[since_ms, until_ms)`, oldest first per device. A record
    /// or key that fails authentication is an error naming its device and
    /// period; records whose key was destroyed (deleted, not yet removed)
    /// are skipped, being deleted.
    pub fn read<'a>(&'a self, sk: &'a PrivateKey, range: &ReadRange<'_>) -> HistoryReader<'a> {
        let iter = match range.device {
            Some(d) => {
                let start = period_prefix(d, period_of(range.since_ms));
                let mut end = device_prefix(d);
                // 0x00 → 0x01: just past every key of this device.
                if let Some(last) = end.last_mut() {
                    *last = 1;
                }
                self.records.range(start..end)
            }
            None => self.records.iter(),
        };
        HistoryReader {
            store: self,
            sk,
            iter,
            since_ms: range.since_ms,
            until_ms: range.until_ms,
            keys: HashMap::new(),
        }
    }

    /// Number of stored records of `device`, readable or not.
    pub fn count(&self, device: &str) -> usize {
        self.records.scan_prefix(device_prefix(device)).count()
    }
}

/// A UTC day as `YYYY-MM-DD`.
pub fn period_name(period: u32) -> String {
    crate::when::date(u64::from(period) * PERIOD_MS)
}

/// Which records to read.
#[derive(Debug, Clone, Copy)]
pub struct ReadRange<'a> {
    pub device: Option<&'a str>,
    pub since_ms: u64,
    pub until_ms: u64,
}

impl Default for ReadRange<'_> {
    fn default() -> Self {
        Self {
            device: None,
            since_ms: 0,
            until_ms: u64::MAX,
        }
    }
}

pub struct HistoryReader<'a> {
    store: &'a HistoryStore,
    sk: &'a PrivateKey,
    iter: sled::Iter,
    since_ms: u64,
    until_ms: u64,
    /// Data keys opened so far; `None`: destroyed (deleted data).
    keys: HashMap<(String, u32, u32), Option<BoxKey>>,
}

impl HistoryReader<'_> {
    fn decode(&mut self, key: &[u8], value: &[u8]) -> Result<Option<HistoryRecord>, StoreError> {
        let corrupt =
            || StoreError::Corrupt(format!("history record {:02x?}", &key[..key.len().min(64)]));
        let (device, period, rest) = split_key(key).ok_or_else(corrupt)?;
        let seq = u64::from_be_bytes(rest.try_into().map_err(|_| corrupt())?);
        let unreadable = |reason: &str| StoreError::Unreadable {
            device: device.to_string(),
            period: period_name(period),
            reason: reason.to_string(),
        };
        let keyno =
            record_keyno(value).ok_or_else(|| unreadable("a record has an unknown format"))?;
        // Whole periods outside the range are skipped without decrypting.
        let (p_start, p_end) = (
            u64::from(period) * PERIOD_MS,
            (u64::from(period) + 1) * PERIOD_MS,
        );
        if p_end <= self.since_ms || p_start >= self.until_ms {
            return Ok(None);
        }
        let slot = (device.to_string(), period, keyno);
        if !self.keys.contains_key(&slot) {
            // A destroyed key's records are deleted data, even if a crash
            // left the key itself behind.
            let key = if self
                .store
                .shredded
                .contains_key(key_row(device, period, keyno))?
            {
                None
            } else {
                match self.store.open_key(self.sk, device, period, keyno)? {
                    Opened::Key(k) => Some(*k),
                    Opened::Destroyed => None,
                    Opened::Missing => return Err(unreadable("its data key is missing")),
                }
            };
            self.keys.insert(slot.clone(), key);
        }
        let Some(Some(data_key)) = self.keys.get(&slot) else {
            return Ok(None);
        };
        let mut buf = Zeroizing::new(value[5..].to_vec());
        let plain = data_key
            .open(&record_aad(device, period, seq, keyno), &mut buf)
            .ok_or_else(|| {
                unreadable(&format!(
                    "record {seq} fails authentication (changed or moved)"
                ))
            })?;
        let rec = parse_plain(device, seq, plain).ok_or_else(corrupt)?;
        if rec.received_ms < self.since_ms || rec.received_ms >= self.until_ms {
            return Ok(None);
        }
        Ok(Some(rec))
    }
}

/// A record's plaintext (see the module's format) back into a record.
fn parse_plain(device: &str, seq: u64, plain: &[u8]) -> Option<HistoryRecord> {
    let received_ms = u64::from_be_bytes(plain.get(..8)?.try_into().ok()?);
    let qos = *plain.get(8)?;
    let retain = *plain.get(9)? == 1;
    let tlen = u16::from_be_bytes(plain.get(10..12)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(plain.get(12..12 + tlen)?)
        .ok()?
        .to_string();
    let payload = plain.get(12 + tlen..)?.to_vec();
    Some(HistoryRecord {
        device: device.to_string(),
        seq,
        received_ms,
        qos,
        retain,
        topic,
        payload,
    })
}

impl HistoryStore {
    /// One stored record opened with its data key; `None` if it does not
    /// open or parse.
    pub(super) fn open_record(&self, key: &BoxKey, k: &[u8], v: &[u8]) -> Option<HistoryRecord> {
        let (device, period, rest) = split_key(k)?;
        let seq = u64::from_be_bytes(rest.try_into().ok()?);
        let keyno = record_keyno(v)?;
        let mut buf = Zeroizing::new(v.get(5..)?.to_vec());
        let plain = key.open(&record_aad(device, period, seq, keyno), &mut buf)?;
        parse_plain(device, seq, plain)
    }
}

impl Iterator for HistoryReader<'_> {
    type Item = Result<HistoryRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (k, v) = match self.iter.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            match self.decode(&k, &v) {
                Ok(Some(rec)) => return Some(Ok(rec)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::seal;
    use crate::store::Store;

    fn rec<'a>(device: &'a str, ms: u64, payload: &'a [u8]) -> NewRecord<'a> {
        NewRecord {
            device,
            received_ms: ms,
            qos: 1,
            retain: false,
            topic: "devices/x/state",
            payload,
        }
    }

    #[test]
    fn nothing_is_kept_without_keys_and_records_open_only_with_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        {
            let store = Store::open(dir.path()).expect("open");
            let h = store.history();
            assert_eq!(
                h.append(&rec("dev1", 1000, b"early")).expect("append"),
                None
            );
            h.set_recipient(Some(pk));
            h.append(&rec("dev1", 1000, b"{\"a\":1}")).expect("append");
            h.append(&rec("dev1", 1001, b"\xff\x00binary"))
                .expect("append");
            h.append(&rec("dev10", 1002, b"x")).expect("append");
            h.append(&rec("dev1", PERIOD_MS + 5, b"next day"))
                .expect("append");
            store.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let h = store.history();
        let all: Vec<_> = h
            .read(
                &sk,
                &ReadRange {
                    device: Some("dev1"),
                    ..Default::default()
                },
            )
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(all.len(), 3, "dev10 must not leak into dev1's prefix");
        assert_eq!(all[0].payload, b"{\"a\":1}");
        assert_eq!(all[1].payload, b"\xff\x00binary");
        assert_eq!(all[2].payload, b"next day");
        let day2: Vec<_> = h
            .read(
                &sk,
                &ReadRange {
                    device: Some("dev1"),
                    since_ms: PERIOD_MS,
                    until_ms: u64::MAX,
                },
            )
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(day2.len(), 1);
        assert_eq!(h.count("dev10"), 1);
        // Another key pair opens nothing, and says which device and day.
        let (other, _) = seal::generate();
        let err = h
            .read(&other, &ReadRange::default())
            .next()
            .expect("one")
            .expect_err("unreadable");
        assert!(
            err.to_string().contains("\"dev1\"") && err.to_string().contains("1970-01-01"),
            "{err}"
        );
        // The payload is nowhere in the file in the clear.
        drop(h);
        store.flush().expect("flush");
    }

    #[test]
    fn a_changed_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        let h = store.history();
        h.set_recipient(Some(pk));
        h.append(&rec("dev1", 1000, b"one")).expect("append");
        let (k, mut v) = h.records.iter().next().expect("one").expect("kv");
        let mut bytes = v.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        v = bytes.into();
        h.records.insert(&k, &v).expect("insert");
        let err = h
            .read(&sk, &ReadRange::default())
            .next()
            .expect("one")
            .expect_err("fails");
        assert!(err.to_string().contains("fails authentication"), "{err}");
    }

    #[test]
    fn a_restart_draws_a_new_key_for_the_same_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        for n in 0..2 {
            // What a restart leaves the writer with: the public key only.
            store.history().set_recipient(Some(pk));
            store
                .history()
                .append(&rec("d", 10 + n, b"v"))
                .expect("append");
        }
        assert_eq!(store.history().keys.len(), 2);
        assert_eq!(store.history().read(&sk, &ReadRange::default()).count(), 2);
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(period_name(0), "1970-01-01");
        assert_eq!(period_name(period_of(1_764_520_514_000)), "2025-11-30");
    }
}
