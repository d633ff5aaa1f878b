//! The user's keys (DESIGN §6).
//!
//! - At `init` the user's X25519 key pair is generated. The private key is
//!   stored only wrapped, twice: under a key derived from the passphrase
//!   (Argon2id, its parameters stored beside it) and under the one-time
//!   [`RecoveryKey`]. Changing the passphrase re-wraps; no data changes.
//! - The public key is stored plainly: the gateway seals history data keys
//!   to it (see `store::history`) without ever needing the passphrase.
//! - [`seal`]: HPKE sealing to the public key, for data keys and values.
//! - [`wrap`]: the symmetric AEAD box (ChaCha20-Poly1305, ring).
//!
//! Secret bytes we hold (passphrases, the private key, derived keys) are
//! `Zeroizing` and wiped when dropped. ring's AEAD keys ([`wrap::BoxKey`])
//! keep their own copy of the key schedule, which ring does not wipe.

mod recovery;
pub mod seal;
#[cfg(test)]
mod vectors;
pub mod wrap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use recovery::RecoveryKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the passphrase is wrong")]
    WrongPassphrase,
    #[error("the recovery key is wrong")]
    WrongRecoveryKey,
    #[error("that is not a recovery key: it has 40 characters (8 groups of 5), and one of them is mistyped or missing")]
    BadRecoveryKey,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("the stored keys are damaged: {0}")]
    Corrupt(String),
    #[error("a cryptographic operation failed")]
    Crypto,
    #[error("deriving the passphrase key failed: {0}")]
    Kdf(String),
}

/// The user's X25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

/// The user's X25519 private key: only in memory, only while needed.
pub struct PrivateKey(pub(crate) Zeroizing<[u8; 32]>);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(…)")
    }
}

/// Argon2id cost. The default takes about 0.5-1 s on a Raspberry Pi 4
/// (about 0.2 s on a desktop core) and 64 MiB, once per unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

mod b64_bytes {
    use base64::Engine;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::b64().encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        super::b64().decode(text).map_err(serde::de::Error::custom)
    }
}

/// A pad from the store's pad file that a key-encryption key is bound
/// to: zeroing it revokes that wrap (an old passphrase after a change, or
/// every wrap at a factory wipe), whatever copy of the record the store's
/// log still holds.
pub struct WrapPad {
    pub slot: u64,
    pub pad: Zeroizing<[u8; 32]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PassphraseWrap {
    pad_slot: u64,
    kdf: String,
    params: KdfParams,
    #[serde(with = "b64_bytes")]
    salt: Vec<u8>,
    #[serde(with = "b64_bytes")]
    wrapped: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecoveryWrap {
    pad_slot: u64,
    #[serde(with = "b64_bytes")]
    salt: Vec<u8>,
    #[serde(with = "b64_bytes")]
    wrapped: Vec<u8>,
}

/// What is stored of the user's keys: the public key in the clear, the
/// private key wrapped twice. Nothing here is secret without the passphrase
/// or the recovery key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKeys {
    format: u32,
    #[serde(with = "b64_bytes")]
    public: Vec<u8>,
    created_ms: u64,
    passphrase: PassphraseWrap,
    recovery: RecoveryWrap,
}

const FORMAT: u32 = 2;

/// The private key is wrapped with the public key as associated data, so a
/// wrapped key cannot be paired with another public key unnoticed.
fn wrap_aad(public: &[u8]) -> Vec<u8> {
    let mut aad = b"dataward user key v1".to_vec();
    aad.extend_from_slice(public);
    aad
}

fn passphrase_kek(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    if passphrase.is_empty() {
        return Err(KeyError::EmptyPassphrase);
    }
    // The parameters come from the stored record: a damaged or planted one
    // must not make an unlock allocate gigabytes or run for hours.
    if params.m_kib > 1 << 20 || params.t > 64 || params.p > 16 {
        return Err(KeyError::Corrupt(format!(
            "unreasonable key derivation parameters {params:?}"
        )));
    }
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, kek.as_mut())
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(kek)
}

/// The key that wraps: HKDF-SHA256 of the derived key, salted with the pad.
fn bind(kek: &[u8; 32], pad: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, pad).extract(kek);
    let info = [&b"dataward kek v1"[..]];
    let okm = prk
        .expand(&info, ring::hkdf::HKDF_SHA256)
        .map_err(|_| KeyError::Crypto)?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut()).map_err(|_| KeyError::Crypto)?;
    Ok(out)
}

fn wrap_with(
    kek: &[u8; 32],
    pad: &[u8; 32],
    public: &[u8],
    sk: &PrivateKey,
) -> Result<Vec<u8>, KeyError> {
    wrap::BoxKey::new(&*bind(kek, pad)?)?.seal(&wrap_aad(public), sk.0.as_ref())
}

fn unwrap_with(
    kek: &[u8; 32],
    pad: &[u8; 32],
    public: &[u8],
    wrapped: &[u8],
) -> Option<PrivateKey> {
    let mut buf = Zeroizing::new(wrapped.to_vec());
    let key = wrap::BoxKey::new(&*bind(kek, pad).ok()?).ok()?;
    let plain = key.open(&wrap_aad(public), &mut buf)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return None;
    }
    secret.copy_from_slice(plain);
    Some(PrivateKey(secret))
}

impl StoredKeys {
    /// New keys for `passphrase`, and the recovery key to show once.
    pub fn create(
        passphrase: &[u8],
        params: KdfParams,
        now_ms: u64,
        passphrase_pad: &WrapPad,
        recovery_pad: &WrapPad,
    ) -> Result<(Self, RecoveryKey), KeyError> {
        let (sk, pk) = seal::generate();
        let recovery = RecoveryKey::generate()?;
        let keys = Self {
            format: FORMAT,
            public: pk.0.to_vec(),
            created_ms: now_ms,
            passphrase: Self::passphrase_wrap(&sk, &pk, passphrase, params, passphrase_pad)?,
            recovery: Self::recovery_wrap(&sk, &pk, &recovery, recovery_pad)?,
        };
        Ok((keys, recovery))
    }

    fn passphrase_wrap(
        sk: &PrivateKey,
        pk: &PublicKey,
        passphrase: &[u8],
        params: KdfParams,
        pad: &WrapPad,
    ) -> Result<PassphraseWrap, KeyError> {
        let salt = wrap::random_bytes::<16>()?.to_vec();
        let kek = passphrase_kek(passphrase, &salt, params)?;
        Ok(PassphraseWrap {
            pad_slot: pad.slot,
            kdf: "argon2id".into(),
            params,
            wrapped: wrap_with(&kek, &pad.pad, &pk.0, sk)?,
            salt,
        })
    }

    fn recovery_wrap(
        sk: &PrivateKey,
        pk: &PublicKey,
        recovery: &RecoveryKey,
        pad: &WrapPad,
    ) -> Result<RecoveryWrap, KeyError> {
        let salt = wrap::random_bytes::<16>()?.to_vec();
        let kek = recovery.kek(&salt)?;
        Ok(RecoveryWrap {
            pad_slot: pad.slot,
            wrapped: wrap_with(&kek, &pad.pad, &pk.0, sk)?,
            salt,
        })
    }

    /// The pad slot the passphrase wrap is bound to.
    pub fn passphrase_slot(&self) -> u64 {
        self.passphrase.pad_slot
    }

    /// The pad slot the recovery wrap is bound to.
    pub fn recovery_slot(&self) -> u64 {
        self.recovery.pad_slot
    }

    pub fn public(&self) -> Result<PublicKey, KeyError> {
        let bytes: [u8; 32] = self
            .public
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Corrupt("the public key is not 32 bytes".into()))?;
        Ok(PublicKey(bytes))
    }

    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// The private key, given the passphrase and the pad of
    /// [`Self::passphrase_slot`]. Slow by design (Argon2id).
    pub fn unlock(&self, passphrase: &[u8], pad: &[u8; 32]) -> Result<PrivateKey, KeyError> {
        let w = &self.passphrase;
        if w.kdf != "argon2id" {
            return Err(KeyError::Corrupt(format!(
                "unknown key derivation {:?}",
                w.kdf
            )));
        }
        let kek = passphrase_kek(passphrase, &w.salt, w.params)?;
        let sk =
            unwrap_with(&kek, pad, &self.public, &w.wrapped).ok_or(KeyError::WrongPassphrase)?;
        self.check_pair(&sk)?;
        Ok(sk)
    }

    /// The private key, given the recovery key and the pad of
    /// [`Self::recovery_slot`].
    pub fn unlock_with_recovery(
        &self,
        recovery: &RecoveryKey,
        pad: &[u8; 32],
    ) -> Result<PrivateKey, KeyError> {
        let kek = recovery.kek(&self.recovery.salt)?;
        let sk = unwrap_with(&kek, pad, &self.public, &self.recovery.wrapped)
            .ok_or(KeyError::WrongRecoveryKey)?;
        self.check_pair(&sk)?;
        Ok(sk)
    }

    fn check_pair(&self, sk: &PrivateKey) -> Result<(), KeyError> {
        if seal::public_of(sk)? != self.public()? {
            return Err(KeyError::Corrupt(
                "the private key does not match the public key".into(),
            ));
        }
        Ok(())
    }

    /// The same keys, wrapped under a new passphrase. The recovery wrap and
    /// everything sealed to the public key stay as they are.
    pub fn with_passphrase(
        &self,
        sk: &PrivateKey,
        new_passphrase: &[u8],
        params: KdfParams,
        pad: &WrapPad,
    ) -> Result<Self, KeyError> {
        let pk = self.public()?;
        let mut next = self.clone();
        next.passphrase = Self::passphrase_wrap(sk, &pk, new_passphrase, params, pad)?;
        Ok(next)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain data of strings and numbers: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        let keys: Self = serde_json::from_slice(bytes)
            .map_err(|e| KeyError::Corrupt(format!("the key record does not parse: {e}")))?;
        if keys.format != FORMAT {
            return Err(KeyError::Corrupt(format!(
                "key record format {} (this build reads {FORMAT})",
                keys.format
            )));
        }
        keys.public()?;
        Ok(keys)
    }
}

/// Opens every sealed value in one line of text: the line itself when it
/// is a sealed value, or each JSON string that is one, inside an NDJSON
/// line. An opened value that is JSON is put in as JSON, else as a string.
pub fn open_line(
    sk: &PrivateKey,
    pk: &PublicKey,
    line: &str,
) -> Result<String, seal::OpenValueError> {
    let trimmed = line.trim();
    if trimmed.starts_with(seal::VALUE_PREFIX) {
        let plain = seal::open_value(sk, pk, trimmed)?;
        return Ok(String::from_utf8_lossy(&plain).into_owned());
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(trimmed) else {
        return Ok(line.to_string());
    };
    fn walk(
        v: &mut serde_json::Value,
        sk: &PrivateKey,
        pk: &PublicKey,
    ) -> Result<(), seal::OpenValueError> {
        match v {
            serde_json::Value::String(s) if s.starts_with(seal::VALUE_PREFIX) => {
                let plain = seal::open_value(sk, pk, s)?;
                *v = serde_json::from_slice(&plain).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&plain).into_owned())
                });
            }
            serde_json::Value::Array(a) => a.iter_mut().try_for_each(|x| walk(x, sk, pk))?,
            serde_json::Value::Object(m) => m.values_mut().try_for_each(|x| walk(x, sk, pk))?,
            _ => {}
        }
        Ok(())
    }
    walk(&mut v, sk, pk)?;
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_open_whole_or_inside_json() {
        let (sk, pk) = seal::generate();
        let loc = seal::seal_value(&pk, b"[52.37,4.89]").expect("seal");
        let name = seal::seal_value(&pk, b"home wifi").expect("seal");
        assert_eq!(open_line(&sk, &pk, &name).expect("open"), "home wifi");
        let line = format!(r#"{{"loc":"{loc}","ssid":"{name}","n":1}}"#);
        assert_eq!(
            open_line(&sk, &pk, &line).expect("open"),
            r#"{"loc":[52.37,4.89],"ssid":"home wifi","n":1}"#
        );
        assert_eq!(open_line(&sk, &pk, "plain").expect("open"), "plain");
    }

    /// Cheap parameters: the tests check the logic, not the cost.
    const FAST: KdfParams = KdfParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };

    fn pad(slot: u64) -> WrapPad {
        WrapPad {
            slot,
            pad: wrap::random_key().expect("pad"),
        }
    }

    #[test]
    fn unlock_change_and_recover() {
        let (p1, r1) = (pad(0), pad(1));
        let (keys, recovery) =
            StoredKeys::create(b"correct horse", FAST, 1, &p1, &r1).expect("create");
        let keys = StoredKeys::from_json(&keys.to_json()).expect("reload");
        assert_eq!((keys.passphrase_slot(), keys.recovery_slot()), (0, 1));
        let pk = keys.public().expect("public");
        let sk = keys.unlock(b"correct horse", &p1.pad).expect("unlock");
        assert!(matches!(
            keys.unlock(b"wrong horse", &p1.pad),
            Err(KeyError::WrongPassphrase)
        ));
        assert!(matches!(
            keys.unlock(b"", &p1.pad),
            Err(KeyError::EmptyPassphrase)
        ));
        // Without its pad, the right passphrase opens nothing.
        assert!(matches!(
            keys.unlock(b"correct horse", &[0; 32]),
            Err(KeyError::WrongPassphrase)
        ));

        let p2 = pad(2);
        let changed = keys
            .with_passphrase(&sk, b"battery staple", FAST, &p2)
            .expect("change");
        assert!(changed.unlock(b"correct horse", &p2.pad).is_err());
        let sk2 = changed
            .unlock(b"battery staple", &p2.pad)
            .expect("new passphrase");
        assert_eq!(sk2.0.as_ref(), sk.0.as_ref());
        assert_eq!(changed.public().expect("public"), pk);

        let text = recovery.to_text();
        let sk3 = changed
            .unlock_with_recovery(&RecoveryKey::parse(&text).expect("parse"), &r1.pad)
            .expect("recover");
        assert_eq!(sk3.0.as_ref(), sk.0.as_ref());
        let other = RecoveryKey::generate().expect("other");
        assert!(matches!(
            changed.unlock_with_recovery(&other, &r1.pad),
            Err(KeyError::WrongRecoveryKey)
        ));
        // Nothing secret is in the stored form.
        let json = String::from_utf8(changed.to_json()).expect("utf8");
        use base64::Engine;
        assert!(!json.contains(&b64().encode(sk.0.as_ref())));
    }

    #[test]
    fn damaged_records_are_errors() {
        assert!(StoredKeys::from_json(b"{").is_err());
        let (keys, _) = StoredKeys::create(b"pw", FAST, 1, &pad(0), &pad(1)).expect("create");
        let mut v: serde_json::Value = serde_json::from_slice(&keys.to_json()).expect("json");
        v["public"] = "AAAA".into();
        assert!(StoredKeys::from_json(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&keys.to_json()).expect("json");
        v["format"] = 9.into();
        assert!(StoredKeys::from_json(v.to_string().as_bytes()).is_err());
    }
}
