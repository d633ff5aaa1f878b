//! What the policy's actions need from the gateway while a message is
//! sent: the user's public key for `seal` (or an age recipient the rule
//! names), each destination's pseudonym key, the clock and memory of
//! `rate_limit`, the open windows of `aggregate`, and the field inventory
//! the quarantine asks.

use std::collections::HashMap;

use base64::Engine;
use policy::aggregate::WindowSlot;
use policy::FieldPath;

use crate::store::{DestinationApprovals, FieldInventory};
use crate::windows::Windows;

pub struct SendContext<'a> {
    /// Until `init` there is none, and fields sealed to the user are
    /// withheld.
    pub recipient: Option<crate::keys::PublicKey>,
    pub pseudonym_keys: &'a HashMap<String, ring::hmac::Key>,
    pub limits: &'a RateLimits,
    pub windows: &'a Windows,
    pub fields: &'a FieldInventory,
    pub destinations: &'a DestinationApprovals,
    pub now_ms: u64,
    /// Values sealed for this message so far: each costs an X25519
    /// agreement, so a message of thousands of tiny values cannot make the
    /// hub spend seconds on it. Past [`MAX_SEALS_PER_MESSAGE`] a value is
    /// withheld.
    pub seals: std::cell::Cell<u32>,
}

/// Values one message may have sealed, all destinations together.
pub const MAX_SEALS_PER_MESSAGE: u32 = 256;

/// When each `rate_limit`ed value last left: bounded, the stalest go first.
#[derive(Default)]
pub struct RateLimits(std::sync::Mutex<HashMap<String, u64>>);

/// Values tracked at most (rule × device × destination × field).
const MAX_RATE_KEYS: usize = 65_536;

impl RateLimits {
    fn allow(&self, key: &str, interval_ms: u64, now_ms: u64) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = last.get(key) {
            if now_ms < t.saturating_add(interval_ms) {
                return false;
            }
        } else if last.len() >= MAX_RATE_KEYS {
            if let Some(stalest) = last.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                last.remove(&stalest);
            }
        }
        last.insert(key.to_string(), now_ms);
        true
    }
}

impl policy::transform::Context for SendContext<'_> {
    fn seal(&self, value: &[u8], recipient: Option<&str>) -> Option<String> {
        let n = self.seals.get();
        if n >= MAX_SEALS_PER_MESSAGE {
            return None;
        }
        self.seals.set(n + 1);
        match recipient {
            None => crate::keys::seal::seal_value(self.recipient.as_ref()?, value).ok(),
            Some(r) => seal_to_age(r, value),
        }
    }

    fn accumulate(&self, slot: &WindowSlot<'_>, value: &[u8]) {
        self.windows.add(slot, value, self.now_ms);
    }

    fn field_approved(&self, device: &str, field: &FieldPath) -> bool {
        self.fields.is_approved(device, field)
    }

    fn destination_approved(&self, destination: &str) -> bool {
        self.destinations.is_approved(destination)
    }

    fn allow_once_per(&self, key: &str, interval_ms: u64) -> bool {
        self.limits.allow(key, interval_ms, self.now_ms)
    }

    fn pseudonym(&self, destination: &str, value: &[u8]) -> Option<String> {
        let key = self.pseudonym_keys.get(destination)?;
        let tag = ring::hmac::sign(key, value);
        let hex: String = tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(format!("ps-{hex}"))
    }
}

/// The value for someone else: `age.` and the base64 of an age file
/// encrypted to `recipient`, which that person opens with the `age` tool
/// (`base64 -d | age -d -i key.txt`). `None` (withheld) if the recipient
/// does not parse; the policy check refuses such a policy before.
pub fn seal_to_age(recipient: &str, value: &[u8]) -> Option<String> {
    use std::io::Write;
    let r: age::x25519::Recipient = recipient.parse().ok()?;
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).ok()?;
    let mut out = Vec::with_capacity(value.len() + 256);
    let mut w = enc.wrap_output(&mut out).ok()?;
    w.write_all(value).ok()?;
    w.finish().ok()?;
    Some(format!(
        "{AGE_VALUE_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}

/// What a value sealed to an age recipient starts with.
pub const AGE_VALUE_PREFIX: &str = "age.";

/// A dry run (a preview, or the local view asking what is still shared)
/// shows where a sealed value goes without sealing it (a real
/// one would differ at every send anyway), and which fields the quarantine
/// holds, from the same inventory the pipeline asks. It changes nothing:
/// no window, rate limit or counter.
pub struct DryRun {
    pub fields: Option<std::sync::Arc<FieldInventory>>,
    pub destinations: Option<std::sync::Arc<DestinationApprovals>>,
}

impl policy::transform::Context for DryRun {
    fn seal(&self, _: &[u8], recipient: Option<&str>) -> Option<String> {
        Some(match recipient {
            None => "dw1.(sealed to your key when sent)".into(),
            Some(r) => format!("age.(sealed to {r} when sent)"),
        })
    }

    /// A preview adds to no window: the value leaves only as the window's
    /// result.
    fn accumulate(&self, _: &policy::aggregate::WindowSlot<'_>, _: &[u8]) {}

    fn field_approved(&self, device: &str, field: &policy::FieldPath) -> bool {
        self.fields
            .as_ref()
            .is_some_and(|f| f.is_approved(device, field))
    }

    fn destination_approved(&self, destination: &str) -> bool {
        self.destinations
            .as_ref()
            .is_none_or(|d| d.is_approved(destination))
    }

    fn pseudonym(&self, destination: &str, _: &[u8]) -> Option<String> {
        Some(format!("ps-(a pseudonym for {destination} when sent)"))
    }

    /// A preview sends nothing: it shows the value as the next one allowed.
    fn allow_once_per(&self, _: &str, _: u64) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::transform::Context;

    #[test]
    fn pseudonyms_are_stable_per_destination_and_differ_across() {
        let key = |b: u8| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[b; 32]);
        let keys = [("a".to_string(), key(1)), ("b".to_string(), key(2))]
            .into_iter()
            .collect();
        let limits = RateLimits::default();
        let windows = Windows::default();
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::Store::open(dir.path()).expect("store");
        let fields = store.fields();
        let destinations = store.destinations();
        let ctx = SendContext {
            recipient: None,
            pseudonym_keys: &keys,
            limits: &limits,
            windows: &windows,
            fields: &fields,
            destinations: &destinations,
            now_ms: 1000,
            seals: Default::default(),
        };
        let p = |d: &str, v: &str| ctx.pseudonym(d, v.as_bytes()).expect("pseudonym");
        assert_eq!(p("a", "\"alice\""), p("a", "\"alice\""));
        assert_ne!(p("a", "\"alice\""), p("a", "\"bob\""));
        assert_ne!(p("a", "\"alice\""), p("b", "\"alice\""));
        assert!(p("a", "\"alice\"").starts_with("ps-") && p("a", "x").len() == 27);
        assert!(ctx.pseudonym("unknown", b"1").is_none());
        assert!(
            ctx.seal(b"1", None).is_none(),
            "no key before init: withheld"
        );
    }

    #[test]
    fn a_rate_limited_value_leaves_once_per_interval() {
        let limits = RateLimits::default();
        assert!(limits.allow("k", 60_000, 0));
        assert!(!limits.allow("k", 60_000, 59_999));
        assert!(limits.allow("other", 60_000, 59_999));
        assert!(limits.allow("k", 60_000, 60_000));
        for i in 0..(MAX_RATE_KEYS + 10) {
            limits.allow(&format!("flood-{i}"), 1, i as u64);
        }
        assert!(limits.0.lock().expect("lock").len() <= MAX_RATE_KEYS);
    }

    #[test]
    fn a_value_sealed_to_an_age_recipient_opens_with_its_identity() {
        use std::io::Read;
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        let sealed = seal_to_age(&r, b"52.370216").expect("sealed");
        let b64 = sealed.strip_prefix(AGE_VALUE_PREFIX).expect("prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let dec = age::Decryptor::new(&bytes[..]).expect("age file");
        let mut plain = Vec::new();
        dec.decrypt(std::iter::once(&id as &dyn age::Identity))
            .expect("opens")
            .read_to_end(&mut plain)
            .expect("read");
        assert_eq!(plain, b"52.370216");
        assert!(seal_to_age("age1notakey", b"1").is_none());
    }
}
