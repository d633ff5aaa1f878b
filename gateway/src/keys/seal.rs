//! Public-key sealing (HPKE, RFC 9180, base mode, suite
//! DHKEM(X25519, HKDF-SHA256) + HKDF-SHA256 + ChaCha20-Poly1305).
//!
//! Used for two things, told apart by the HPKE `info` string:
//! - period data keys in the history store ([`PERIOD_KEY_INFO`]);
//! - field values the policy's `seal` action sends upstream
//!   ([`VALUE_INFO`]), in the compact text form `dw1.<base64url>` (see
//!   docs/formats.md).
//!
//! A sealed box is `enc` (32 bytes) ‖ ciphertext ‖ tag (16 bytes).

use base64::Engine;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use super::{KeyError, PrivateKey, PublicKey};

pub const PERIOD_KEY_INFO: &[u8] = b"dataward period key v1";
pub const VALUE_INFO: &[u8] = b"dataward sealed value v1";
/// The text form's prefix.
pub const VALUE_PREFIX: &str = "dw1.";
const ENC_LEN: usize = 32;
/// Bytes sealing adds to a plaintext.
pub const OVERHEAD: usize = ENC_LEN + 16;

type Kx = X25519HkdfSha256;

fn rng() -> rand_core_09::UnwrapErr<rand_core_09::OsRng> {
    rand_core_09::UnwrapErr(rand_core_09::OsRng)
}

/// A new X25519 key pair, from the OS's randomness.
pub fn generate() -> (PrivateKey, PublicKey) {
    let (sk, pk) = Kx::gen_keypair(&mut rng());
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&sk.to_bytes());
    let mut public = [0u8; 32];
    public.copy_from_slice(&pk.to_bytes());
    (PrivateKey(secret), PublicKey(public))
}

/// The public key of a private one.
pub fn public_of(sk: &PrivateKey) -> Result<PublicKey, KeyError> {
    let sk = <Kx as Kem>::PrivateKey::from_bytes(sk.0.as_ref()).map_err(|_| KeyError::Crypto)?;
    let mut public = [0u8; 32];
    public.copy_from_slice(&Kx::sk_to_pk(&sk).to_bytes());
    Ok(PublicKey(public))
}

pub fn seal(
    pk: &PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let pk = <Kx as Kem>::PublicKey::from_bytes(&pk.0).map_err(|_| KeyError::Crypto)?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kx, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        &mut rng(),
    )
    .map_err(|_| KeyError::Crypto)?;
    let mut out = Vec::with_capacity(ENC_LEN + ct.len());
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a sealed box; `None` if it is not sealed to `sk` with this `info`
/// and `aad`, or was changed.
pub fn open(
    sk: &PrivateKey,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let enc = <Kx as Kem>::EncappedKey::from_bytes(enc).ok()?;
    let sk = <Kx as Kem>::PrivateKey::from_bytes(sk.0.as_ref()).ok()?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kx>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ct,
        aad,
    )
    .ok()
    .map(zeroize::Zeroizing::new)
}

/// The 4-byte id of a public key: the first bytes of its SHA-256. It lets
/// `decrypt` say "sealed to another key" instead of "corrupt".
pub fn key_id(pk: &PublicKey) -> [u8; 4] {
    let d = ring::digest::digest(&ring::digest::SHA256, &pk.0);
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

/// Seals a value for upstream: `dw1.` + base64url (no padding) of
/// key id (4) ‖ enc (32) ‖ ciphertext ‖ tag, with the key id as AAD.
pub fn seal_value(pk: &PublicKey, value: &[u8]) -> Result<String, KeyError> {
    let kid = key_id(pk);
    let mut bytes = kid.to_vec();
    bytes.extend_from_slice(&seal(pk, VALUE_INFO, &kid, value)?);
    Ok(format!(
        "{VALUE_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenValueError {
    #[error("not a dataward sealed value (it starts with \"dw1.\")")]
    NotSealed,
    #[error("sealed to another key (key id {0})")]
    OtherKey(String),
    #[error("the sealed value does not open: it was changed, or cut")]
    Damaged,
}

/// Opens a value sealed by [`seal_value`].
pub fn open_value(
    sk: &PrivateKey,
    pk: &PublicKey,
    text: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, OpenValueError> {
    let b64 = text
        .trim()
        .strip_prefix(VALUE_PREFIX)
        .ok_or(OpenValueError::NotSealed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| OpenValueError::Damaged)?;
    if bytes.len() < 4 + OVERHEAD {
        return Err(OpenValueError::Damaged);
    }
    let (kid, sealed) = bytes.split_at(4);
    if kid != key_id(pk) {
        return Err(OpenValueError::OtherKey(
            kid.iter().map(|b| format!("{b:02x}")).collect(),
        ));
    }
    open(sk, VALUE_INFO, kid, sealed).ok_or(OpenValueError::Damaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_key_only() {
        let (sk, pk) = generate();
        let text = seal_value(&pk, b"52.37,4.89").expect("seal");
        assert!(text.starts_with("dw1."));
        assert_eq!(
            open_value(&sk, &pk, &text).expect("open").as_slice(),
            b"52.37,4.89"
        );
        let (sk2, pk2) = generate();
        assert!(matches!(
            open_value(&sk2, &pk2, &text),
            Err(OpenValueError::OtherKey(_))
        ));
        let mut damaged = text.clone();
        damaged.pop();
        assert_eq!(
            open_value(&sk, &pk, &damaged).err(),
            Some(OpenValueError::Damaged)
        );
        assert_eq!(
            open_value(&sk, &pk, "hello").err(),
            Some(OpenValueError::NotSealed)
        );
        assert_eq!(public_of(&sk).expect("public").0, pk.0);
    }

    #[test]
    fn the_info_string_separates_uses() {
        let (sk, pk) = generate();
        let sealed = seal(&pk, PERIOD_KEY_INFO, b"a", b"k").expect("seal");
        assert!(open(&sk, PERIOD_KEY_INFO, b"a", &sealed).is_some());
        assert!(open(&sk, VALUE_INFO, b"a", &sealed).is_none());
        assert!(open(&sk, PERIOD_KEY_INFO, b"b", &sealed).is_none());
    }
}
