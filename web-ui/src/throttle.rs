//! Wrong passphrases slow down, per client and for everyone. A client
//! (an address; IPv6 by /64) that failed [`FREE_FAILURES`] times waits 1 s
//! before its next try, doubling up to [`MAX_WAIT`]. One passphrase check
//! runs at a time (each is an Argon2id of 64 MiB), and after
//! [`GLOBAL_FAILURES`] failures in a minute from anywhere, every try waits
//! a second first, so many addresses do not add up to fast guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FREE_FAILURES: u32 = 3;
pub const MAX_WAIT: Duration = Duration::from_secs(60);
pub const GLOBAL_FAILURES: u32 = 10;
const MAX_CLIENTS: usize = 4096;

#[derive(Default)]
pub struct LoginThrottle {
    clients: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// (failures, start of the minute they count in).
    global: Mutex<(u32, Option<Instant>)>,
    /// One check at a time.
    pub checking: tokio::sync::Mutex<()>,
    /// Wrong passphrases since start, for `/metrics`.
    pub failures_total: std::sync::atomic::AtomicU64,
}

/// The key a client is counted by: IPv4 as is (also when it comes
/// IPv4-mapped on a dual-stack socket), IPv6 by its /64, which one host
/// can fill at will. The login throttle and the listener's per-address
/// cap count alike.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            for s in &mut seg[4..] {
                *s = 0;
            }
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

impl LoginThrottle {
    /// How long `ip` must still wait before it may try; zero: now.
    pub fn wait(&self, ip: IpAddr, now: Instant) -> Duration {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mine = clients
            .get(&client_key(ip))
            .map_or(Duration::ZERO, |(_, until)| {
                until.saturating_duration_since(now)
            });
        drop(clients);
        let global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        let busy = global
            .1
            .is_some_and(|start| now.duration_since(start) < Duration::from_secs(60))
            && global.0 >= GLOBAL_FAILURES;
        if busy {
            mine.max(Duration::from_secs(1))
        } else {
            mine
        }
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        self.failures_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS {
            clients.retain(|_, (_, until)| *until > now);
            if clients.len() >= MAX_CLIENTS {
                if let Some(k) = clients.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k) {
                    clients.remove(&k);
                }
            }
        }
        let entry = clients.entry(client_key(ip)).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        if entry.0 >= FREE_FAILURES {
            let doublings = (entry.0 - FREE_FAILURES).min(6);
            let wait = Duration::from_secs(1u64 << doublings).min(MAX_WAIT);
            entry.1 = now + wait;
        }
        drop(clients);
        let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        match global.1 {
            Some(start) if now.duration_since(start) < Duration::from_secs(60) => global.0 += 1,
            _ => *global = (1, Some(now)),
        }
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_one_client_down_doubling_and_a_success_forgives() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed(ip, t0);
        }
        assert_eq!(t.wait(ip, t0), Duration::ZERO);
        t.failed(ip, t0);
        assert_eq!(t.wait(ip, t0), Duration::from_secs(1));
        t.failed(ip, t0);
        assert_eq!(t.wait(ip, t0), Duration::from_secs(2));
        assert_eq!(t.wait(other, t0), Duration::ZERO, "per client");
        for _ in 0..20 {
            t.failed(ip, t0);
        }
        assert_eq!(t.wait(ip, t0), MAX_WAIT);
        t.succeeded(ip);
        // Everyone now waits a second: 24 failures this minute.
        assert_eq!(t.wait(ip, t0), Duration::from_secs(1));
        assert_eq!(t.wait(other, t0 + Duration::from_secs(61)), Duration::ZERO);
        // One /64 is one client.
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::ffff".parse().expect("ip");
        let later = t0 + Duration::from_secs(120);
        for _ in 0..FREE_FAILURES {
            t.failed(a, later);
        }
        assert!(t.wait(b, later) > Duration::ZERO);
    }
}
