//! Login sessions: a random token in an HttpOnly, SameSite=Strict cookie,
//! and a CSRF token that every state-changing request must carry in the
//! `X-CSRF-Token` header. Sessions end after [`IDLE`] without a request,
//! at logout, or when [`MAX_SESSIONS`] newer ones push them out.
//!
//! Login is unlock: a session keeps the passphrase it was opened with, so
//! that reading the history (an export) needs no second prompt. It is
//! zeroized when the session ends, idles out or is pushed out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

pub const COOKIE: &str = "dw_session";
pub const IDLE: Duration = Duration::from_secs(30 * 60);
pub const MAX_SESSIONS: usize = 32;

struct Session {
    csrf: String,
    last_seen: Instant,
    unlock: Zeroizing<String>,
}

#[derive(Default)]
pub struct Sessions {
    /// Keyed by the SHA-256 of the cookie's token: the map never holds a
    /// token a memory dump could replay.
    by_token_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes, hex.
pub fn random_token() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// Equality that takes the same time wherever the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// A new session: (cookie token, CSRF token).
    pub fn create(&self, now: Instant, unlock: Zeroizing<String>) -> Option<(String, String)> {
        let (token, csrf) = (random_token()?, random_token()?);
        let mut map = self.by_token_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            hash(&token),
            Session {
                csrf: csrf.clone(),
                last_seen: now,
                unlock,
            },
        );
        Some((token, csrf))
    }

    /// The map, with sessions idle too long gone (their passphrases
    /// zeroized as they drop): at most 32 entries, so a sweep on every
    /// look is cheap, and an idle passphrase does not linger.
    fn swept(&self, now: Instant) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        let mut map = self.by_token_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| now.duration_since(s.last_seen) < IDLE);
        map
    }

    /// The CSRF token of a live session, which this request keeps alive.
    pub fn touch(&self, token: &str, now: Instant) -> Option<String> {
        let mut map = self.swept(now);
        let key = hash(token);
        let live = map
            .get(&key)
            .is_some_and(|s| now.duration_since(s.last_seen) < IDLE);
        if !live {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_seen = now;
        Some(s.csrf.clone())
    }

    /// The passphrase a live session was opened with.
    pub fn unlock(&self, token: &str, now: Instant) -> Option<Zeroizing<String>> {
        self.swept(now)
            .get(&hash(token))
            .filter(|s| now.duration_since(s.last_seen) < IDLE)
            .map(|s| s.unlock.clone())
    }

    /// Whether `token` is a live session, without keeping it alive.
    pub fn is_live(&self, token: &str, now: Instant) -> bool {
        self.swept(now)
            .get(&hash(token))
            .is_some_and(|s| now.duration_since(s.last_seen) < IDLE)
    }

    pub fn end(&self, token: &str) {
        self.by_token_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash(token));
    }
}

/// The session token from a request's `Cookie` header.
pub fn from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for `token`: HttpOnly, SameSite=Strict, and
/// Secure when the UI is served over TLS.
pub fn set_cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        IDLE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_while_used_and_end_when_idle_or_pushed_out() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let (token, csrf) = s.create(t0, Zeroizing::new("pass".into())).expect("random");
        assert_eq!(
            s.touch(&token, t0 + IDLE / 2).as_deref(),
            Some(csrf.as_str())
        );
        // Used at IDLE/2, so still alive just before IDLE/2 + IDLE.
        assert!(s
            .touch(&token, t0 + IDLE / 2 + IDLE - Duration::from_secs(1))
            .is_some());
        assert!(s.touch(&token, t0 + 3 * IDLE).is_none(), "idle too long");
        assert!(s.touch(&token, t0).is_none(), "gone for good");
        let (a, _) = s.create(t0, Zeroizing::new("pass".into())).expect("random");
        for i in 0..MAX_SESSIONS {
            s.create(
                t0 + Duration::from_secs(1 + i as u64),
                Zeroizing::new(String::new()),
            )
            .expect("random");
        }
        assert!(
            s.touch(&a, t0 + Duration::from_secs(100)).is_none(),
            "the oldest went"
        );
        let (b, _) = s.create(t0, Zeroizing::new("pass".into())).expect("random");
        s.end(&b);
        assert!(s.touch(&b, t0).is_none());
    }

    #[test]
    fn cookies_are_read_and_written_with_their_flags() {
        assert_eq!(from_cookies("a=1; dw_session=abc; b=2"), Some("abc"));
        assert_eq!(from_cookies("dw_sessionx=abc"), None);
        let c = set_cookie("t", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(set_cookie("t", true).ends_with("; Secure"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
