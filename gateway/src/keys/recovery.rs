//! The one-time recovery key: 20 random bytes that a person can copy by
//! hand. Written as 40 characters of Crockford base32 in 8 groups of 5,
//! covering the 20 bytes and a 5-byte checksum (the start of their
//! SHA-256), so a mistyped character is caught before any unwrapping.
//! Reading ignores case, spaces and dashes, and takes O for 0 and I or L
//! for 1.

use zeroize::Zeroizing;

use super::KeyError;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const SECRET: usize = 20;
const CHECK: usize = 5;

/// A recovery key's secret bytes.
pub struct RecoveryKey(pub(super) Zeroizing<[u8; SECRET]>);

impl RecoveryKey {
    pub fn generate() -> Result<Self, KeyError> {
        let bytes = super::wrap::random_bytes::<SECRET>()?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The form printed once, e.g. `7KD2M-…` (8 groups of 5).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut all = Zeroizing::new([0u8; SECRET + CHECK]);
        all[..SECRET].copy_from_slice(self.0.as_ref());
        all[SECRET..].copy_from_slice(&checksum(self.0.as_ref()));
        let mut out = Zeroizing::new(String::with_capacity(48));
        // 25 bytes = 200 bits = 40 five-bit symbols, read big-endian.
        for i in 0..40 {
            let bit = i * 5;
            let mut v = 0u16;
            for b in bit..bit + 5 {
                v = (v << 1) | u16::from((all[b / 8] >> (7 - b % 8)) & 1);
            }
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(ALPHABET[v as usize] as char);
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut symbols = Zeroizing::new(Vec::with_capacity(40));
        for c in text.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            let v = ALPHABET
                .iter()
                .position(|a| *a as char == c)
                .ok_or(KeyError::BadRecoveryKey)?;
            symbols.push(v as u8);
        }
        if symbols.len() != 40 {
            return Err(KeyError::BadRecoveryKey);
        }
        let mut all = Zeroizing::new([0u8; SECRET + CHECK]);
        for (i, v) in symbols.iter().enumerate() {
            for j in 0..5 {
                let bit = i * 5 + j;
                if (v >> (4 - j)) & 1 == 1 {
                    all[bit / 8] |= 1 << (7 - bit % 8);
                }
            }
        }
        let mut secret = Zeroizing::new([0u8; SECRET]);
        secret.copy_from_slice(&all[..SECRET]);
        if checksum(secret.as_ref()) != all[SECRET..] {
            return Err(KeyError::BadRecoveryKey);
        }
        Ok(Self(secret))
    }

    /// The key-encryption key it stands for: HKDF-SHA256 over the secret
    /// with a stored salt. No stretching is needed: the secret has 160
    /// bits of entropy.
    pub fn kek(&self, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(self.0.as_ref());
        let okm = prk
            .expand(&[b"dataward recovery key v1"], ring::hkdf::HKDF_SHA256)
            .map_err(|_| KeyError::Crypto)?;
        let mut kek = Zeroizing::new([0u8; 32]);
        okm.fill(kek.as_mut()).map_err(|_| KeyError::Crypto)?;
        Ok(kek)
    }
}

fn checksum(secret: &[u8]) -> [u8; CHECK] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut c = [0u8; CHECK];
    c.copy_from_slice(&d.as_ref()[..CHECK]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_round_trips_and_catches_typos() {
        let k = RecoveryKey::generate().expect("key");
        let text = k.to_text();
        assert_eq!(text.len(), 47);
        assert_eq!(text.matches('-').count(), 7);
        let back = RecoveryKey::parse(&text.to_lowercase().replace('-', " ")).expect("parse");
        assert_eq!(back.0.as_ref(), k.0.as_ref());
        // One character changed: the checksum notices.
        let mut typo: Vec<char> = text.chars().collect();
        typo[3] = if typo[3] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(
            RecoveryKey::parse(&typo),
            Err(KeyError::BadRecoveryKey)
        ));
        assert!(RecoveryKey::parse("short").is_err());
        assert!(RecoveryKey::parse(&format!("{}U", &text[..46])).is_err());
    }
}
