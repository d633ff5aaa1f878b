//! Period data keys: how each device-day's data key is made, stored,
//! opened and destroyed (the format is in docs/formats.md).
//!
//! A data key is derived (HKDF-SHA256) from two halves: a random secret,
//! sealed to the user's public key and stored in `period_keys`, and a
//! random pad in the [`KeyPads`](super::pads::KeyPads) file. The gateway
//! holds both while it writes; reading needs the private key for the
//! secret; destroying zeroes the pad in place, which no copy of the sealed
//! secret left in sled's log can undo.

use super::history::{key_row, period_name, period_prefix, split_key, HistoryStore};
use super::StoreError;
use crate::keys::wrap::BoxKey;
use crate::keys::{seal, PrivateKey, PublicKey};

const KEY_FORMAT: u8 = 2;

/// A data key in use by the writer, or by a re-encryption.
pub(super) struct OpenKey {
    pub(super) keyno: u32,
    pub(super) key: BoxKey,
}

/// What a stored key row gives with the private key.
pub(super) enum Opened {
    Key(Box<BoxKey>),
    /// Its pad is destroyed: the key is gone, its records are deleted data.
    Destroyed,
    /// No key row at all.
    Missing,
}

fn key_aad(device: &str, period: u32, keyno: u32) -> Vec<u8> {
    let mut aad = b"dwkey1".to_vec();
    aad.extend_from_slice(&key_row(device, period, keyno));
    aad
}

/// The data key of both halves.
pub(crate) fn derive_data_key(
    pad: &[u8; 32],
    secret: &[u8],
    device: &str,
    period: u32,
    keyno: u32,
) -> Result<BoxKey, StoreError> {
    let key = derive_key_bytes(pad, secret, device, period, keyno)?;
    BoxKey::new(&key).map_err(|e| StoreError::Crypto(e.to_string()))
}

/// HKDF-SHA256(salt = pad, IKM = secret, info = "dataward data key v1" ‖
/// device ‖ 0x00 ‖ period ‖ key number).
pub(crate) fn derive_key_bytes(
    pad: &[u8; 32],
    secret: &[u8],
    device: &str,
    period: u32,
    keyno: u32,
) -> Result<zeroize::Zeroizing<[u8; 32]>, StoreError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, pad).extract(secret);
    let mut info = b"dataward data key v1".to_vec();
    info.extend_from_slice(&key_row(device, period, keyno));
    let info = [info.as_slice()];
    let okm = prk
        .expand(&info, ring::hkdf::HKDF_SHA256)
        .map_err(|_| StoreError::Crypto("deriving a data key".into()))?;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    okm.fill(key.as_mut())
        .map_err(|_| StoreError::Crypto("deriving a data key".into()))?;
    Ok(key)
}

/// The pad slot a key row names.
pub(super) fn row_slot(value: &[u8]) -> Option<u64> {
    if value.first() != Some(&KEY_FORMAT) {
        return None;
    }
    Some(u64::from_be_bytes(value.get(1..9)?.try_into().ok()?))
}

impl HistoryStore {
    /// A new data key for (device, period), sealed and stored under the
    /// next free key number.
    pub(super) fn draw_key(
        &self,
        device: &str,
        period: u32,
        recipient: &PublicKey,
    ) -> Result<OpenKey, StoreError> {
        let keyno = self.next_keyno(device, period)?;
        let secret =
            crate::keys::wrap::random_key().map_err(|e| StoreError::Crypto(e.to_string()))?;
        let sealed = seal::seal(
            recipient,
            seal::PERIOD_KEY_INFO,
            &key_aad(device, period, keyno),
            secret.as_ref(),
        )
        .map_err(|e| StoreError::Crypto(e.to_string()))?;
        // The pad is on disk (synced) before the row that names it.
        let (slot, pad) = self.pads.allocate()?;
        let mut value = vec![KEY_FORMAT];
        value.extend_from_slice(&slot.to_be_bytes());
        value.extend_from_slice(&sealed);
        self.keys.insert(key_row(device, period, keyno), value)?;
        self.mark_dirty();
        Ok(OpenKey {
            keyno,
            key: derive_data_key(&pad, secret.as_ref(), device, period, keyno)?,
        })
    }

    fn next_keyno(&self, device: &str, period: u32) -> Result<u32, StoreError> {
        let prefix = period_prefix(device, period);
        let mut next = 0u32;
        // Numbers of destroyed keys whose records are still being removed
        // are not reused either: those records must stay unreadable.
        for tree in [&self.keys, &self.shredded] {
            if let Some(kv) = tree.scan_prefix(&prefix).next_back() {
                let (k, _) = kv?;
                let n = split_key(&k)
                    .and_then(|(_, _, rest)| rest.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt(format!("period key {k:02x?}")))?;
                next = next.max(n.checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt("no key number left for this device-day".into())
                })?);
            }
        }
        Ok(next)
    }

    /// Opens one stored data key with the private key.
    pub(super) fn open_key(
        &self,
        sk: &PrivateKey,
        device: &str,
        period: u32,
        keyno: u32,
    ) -> Result<Opened, StoreError> {
        let Some(value) = self.keys.get(key_row(device, period, keyno))? else {
            return Ok(Opened::Missing);
        };
        let unreadable = |reason: &str| StoreError::Unreadable {
            device: device.to_string(),
            period: period_name(period),
            reason: reason.to_string(),
        };
        let slot =
            row_slot(&value).ok_or_else(|| unreadable("its data key has an unknown format"))?;
        let Some(pad) = self.pads.read(slot)? else {
            return Ok(Opened::Destroyed);
        };
        let secret = seal::open(
            sk,
            seal::PERIOD_KEY_INFO,
            &key_aad(device, period, keyno),
            &value[9..],
        )
        .ok_or_else(|| {
            unreadable(
                "its data key does not open with this key pair (changed, or sealed to another key)",
            )
        })?;
        Ok(Opened::Key(Box::new(derive_data_key(
            &pad, &secret, device, period, keyno,
        )?)))
    }
}
