//! `init`, `passphrase change|reset`, and unlocking for the requests that
//! read history. The private key exists in memory only inside one request.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{OpError, Operations};
use crate::keys::{seal, KdfParams, KeyError, PrivateKey, RecoveryKey, StoredKeys};

/// A passphrase or recovery key as it travels in a request: wiped when
/// dropped, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Passphrase(pub Zeroizing<String>);

impl Passphrase {
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(…)")
    }
}

impl Serialize for Passphrase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Passphrase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(String::deserialize(d)?))
    }
}

/// What `init` answers: the recovery key, to be shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitReport {
    pub recovery_key: Passphrase,
    /// Where the public key can be recognised (first bytes of its SHA-256).
    pub key_id: String,
    /// Plaintext records from before encryption, now encrypted.
    pub migrated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassphraseChanged {
    pub key_id: String,
}

impl From<KeyError> for OpError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::WrongPassphrase
            | KeyError::WrongRecoveryKey
            | KeyError::BadRecoveryKey
            | KeyError::EmptyPassphrase => OpError::input(e.to_string()),
            _ => OpError::runtime(super::with_causes(&e)),
        }
    }
}

fn key_id(keys: &StoredKeys) -> Result<String, OpError> {
    Ok(crate::keys::seal::key_id(&keys.public()?)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

const NOT_INITIALISED: &str =
    "the keys are not set up yet, so no history is kept: run `dataward init` first";

impl Operations {
    fn stored_keys(&self) -> Result<StoredKeys, OpError> {
        let Some(store) = &self.store else {
            return Err(OpError::input(NOT_INITIALISED));
        };
        store
            .load_keys()?
            .ok_or_else(|| OpError::input(NOT_INITIALISED))
    }

    /// The private key, for one request. Argon2id: blocking and slow.
    pub(super) fn unlock(&self, passphrase: &Passphrase) -> Result<PrivateKey, OpError> {
        let keys = self.stored_keys()?;
        let pad = self.store()?.wrap_pad(keys.passphrase_slot())?;
        Ok(keys.unlock(passphrase.as_bytes(), &pad)?)
    }

    /// [`Self::unlock`] on a blocking thread, for async requests: Argon2id
    /// takes a while, and the runtime's threads serve devices.
    pub(super) async fn unlock_off_runtime(
        &self,
        passphrase: &Passphrase,
    ) -> Result<PrivateKey, OpError> {
        let keys = self.stored_keys()?;
        let pad = self.store()?.wrap_pad(keys.passphrase_slot())?;
        let passphrase = passphrase.clone();
        tokio::task::spawn_blocking(move || keys.unlock(passphrase.as_bytes(), &pad))
            .await
            .map_err(|e| OpError::runtime(format!("the unlock task failed: {e}")))?
            .map_err(OpError::from)
    }

    /// Whether `passphrase` is the user's: what logging in to the web UI
    /// checks. The key it unlocks is dropped (and wiped) at once.
    pub async fn check_passphrase(&self, passphrase: &Passphrase) -> Result<bool, OpError> {
        let keys = self.stored_keys()?;
        let pad = self.store()?.wrap_pad(keys.passphrase_slot())?;
        let passphrase = passphrase.clone();
        let outcome = tokio::task::spawn_blocking(move || keys.unlock(passphrase.as_bytes(), &pad))
            .await
            .map_err(|e| OpError::runtime(format!("the unlock task failed: {e}")))?;
        match outcome {
            Ok(_key) => Ok(true),
            Err(KeyError::WrongPassphrase | KeyError::EmptyPassphrase) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the user's keys are set up.
    pub fn is_set_up(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.load_keys().ok().flatten().is_some())
    }

    /// The stored key record (public, and the private key wrapped) and the
    /// pad its passphrase wrap is bound to: what `decrypt` unlocks on the
    /// user's side. Useless without the passphrase.
    pub fn key_record(&self) -> Result<serde_json::Value, OpError> {
        use base64::Engine;
        let keys = self.stored_keys()?;
        let pad = self.store()?.wrap_pad(keys.passphrase_slot())?;
        let record: serde_json::Value = serde_json::from_slice(&keys.to_json())
            .map_err(|e| OpError::runtime(format!("encoding the key record: {e}")))?;
        Ok(serde_json::json!({
            "record": record,
            "passphrase_pad": base64::engine::general_purpose::STANDARD.encode(pad.as_ref()),
        }))
    }

    /// First run: the user's key pair, wrapped under `passphrase` and a new
    /// recovery key; history is kept from now on. Plaintext history written
    /// by earlier versions is encrypted and its plaintext removed.
    pub fn init(&self, passphrase: &Passphrase) -> Result<InitReport, OpError> {
        let store = self.store()?;
        let _change = store.key_change();
        if store.load_keys()?.is_some() {
            return Err(OpError::input(
                "the keys are already set up; `dataward passphrase change` changes the passphrase",
            ));
        }
        check_new_passphrase(passphrase)?;
        let (ppad, rpad) = (store.new_wrap_pad()?, store.new_wrap_pad()?);
        let (keys, recovery) = StoredKeys::create(
            passphrase.as_bytes(),
            KdfParams::default(),
            crate::pipeline::now_ms(),
            &ppad,
            &rpad,
        )?;
        store.save_keys(&keys)?;
        let (migrated, _) = store.migrate_plaintext_history()?;
        tracing::info!(
            migrated,
            "keys set up: history is kept, encrypted to the user's key"
        );
        Ok(InitReport {
            recovery_key: Passphrase(recovery.to_text()),
            key_id: key_id(&keys)?,
            migrated,
        })
    }

    pub fn passphrase_change(
        &self,
        old: &Passphrase,
        new: &Passphrase,
    ) -> Result<PassphraseChanged, OpError> {
        let sk = self.unlock(old)?;
        check_new_passphrase(new)?;
        self.rewrap(&sk, new)?;
        let next = self.stored_keys()?;
        Ok(PassphraseChanged {
            key_id: key_id(&next)?,
        })
    }

    pub fn passphrase_reset(
        &self,
        recovery_key: &Passphrase,
        new: &Passphrase,
    ) -> Result<PassphraseChanged, OpError> {
        let keys = self.stored_keys()?;
        let recovery = RecoveryKey::parse(&recovery_key.0)?;
        let pad = self.store()?.wrap_pad(keys.recovery_slot())?;
        let sk = keys.unlock_with_recovery(&recovery, &pad)?;
        check_new_passphrase(new)?;
        self.rewrap(&sk, new)?;
        let next = self.stored_keys()?;
        Ok(PassphraseChanged {
            key_id: key_id(&next)?,
        })
    }
}

impl Operations {
    /// Wraps the private key under `new` with a fresh pad, stores that, and
    /// only then zeroes the old wrap's pad: the old passphrase stops working
    /// even on a copy of the disk taken later.
    fn rewrap(&self, sk: &PrivateKey, new: &Passphrase) -> Result<(), OpError> {
        let store = self.store()?;
        let _change = store.key_change();
        let keys = self.stored_keys()?;
        if seal::public_of(sk)? != keys.public()? {
            // The keys changed while this request unlocked (a factory wipe
            // and a new init): nothing to re-wrap.
            return Err(OpError::input(
                "the keys changed meanwhile; nothing was changed",
            ));
        }
        let pad = store.new_wrap_pad()?;
        let next = keys.with_passphrase(sk, new.as_bytes(), KdfParams::default(), &pad)?;
        store.save_keys(&next)?;
        store.destroy_wrap_pad(keys.passphrase_slot())?;
        Ok(())
    }
}

fn check_new_passphrase(p: &Passphrase) -> Result<(), OpError> {
    let chars = p.0.chars().count();
    if chars < 8 {
        return Err(OpError::input(
            "the passphrase is too short: use at least 8 characters (a few words are best)",
        ));
    }
    if p.0.len() > 1024 {
        return Err(OpError::input("the passphrase is longer than 1024 bytes"));
    }
    Ok(())
}
