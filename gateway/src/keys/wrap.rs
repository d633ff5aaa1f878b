//! Symmetric sealing under a 32-byte key: ChaCha20-Poly1305 (ring) with a
//! fresh random nonce, stored as nonce ‖ ciphertext ‖ tag. Used to wrap the
//! user's private key and to encrypt history records.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::KeyError;

/// Bytes a sealed box adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// A ready AEAD key. ring keeps the expanded key and does not expose it.
pub struct BoxKey(LessSafeKey);

impl BoxKey {
    pub fn new(key: &[u8; 32]) -> Result<Self, KeyError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| KeyError::Crypto)?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Appends nonce ‖ ciphertext ‖ tag of `plaintext` to `out`.
    pub fn seal_into(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Crypto)?;
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| KeyError::Crypto)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens a box in place; `None` if it fails authentication.
    pub fn open<'a>(&self, aad: &[u8], sealed: &'a mut [u8]) -> Option<&'a [u8]> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self.0.open_in_place(nonce, Aad::from(aad), rest).ok()?;
        Some(plain)
    }
}

/// 32 random bytes, for a key.
pub fn random_key() -> Result<zeroize::Zeroizing<[u8; 32]>, KeyError> {
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(k.as_mut())
        .map_err(|_| KeyError::Crypto)?;
    Ok(k)
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Crypto)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_open_only_with_their_key_and_aad() {
        let k = BoxKey::new(&[1; 32]).expect("key");
        let mut sealed = k.seal(b"aad", b"secret").expect("seal");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let mut other = sealed.clone();
        assert_eq!(k.open(b"aad", &mut sealed), Some(&b"secret"[..]));
        assert_eq!(k.open(b"other", &mut other.clone()), None);
        let last = other.len() - 1;
        other[last] ^= 1;
        assert_eq!(k.open(b"aad", &mut other), None);
        assert_eq!(k.open(b"aad", &mut [0u8; 5]), None);
        let k2 = BoxKey::new(&[2; 32]).expect("key");
        let mut again = k.seal(b"aad", b"secret").expect("seal");
        assert_eq!(k2.open(b"aad", &mut again), None);
    }
}
