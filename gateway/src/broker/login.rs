//! Password checks that a flood cannot turn against real devices.
//!
//! - Argon2id runs on a small pool of threads sized to the CPU (each check
//!   takes 19 MiB and tens of milliseconds), never on the async runtime.
//! - An unknown id is checked against a fixed dummy hash: it costs the same
//!   work as a known one, so timing does not tell which ids exist.
//! - Per source address: at most [`PER_SOURCE_INFLIGHT`] checks at once,
//!   and after [`FREE_FAILURES`] failures, further attempts are refused
//!   without a check for a time that doubles with each failure. A flood from
//!   one host therefore holds at most a couple of the pool's places, and
//!   devices elsewhere keep logging in.
//! - Per device id (known or not, alike): a failed attempt is answered
//!   only after a delay that grows with that id's recent failures; a right
//!   password is never delayed, so a guesser cannot lock the real device
//!   out.
//! - A saturated pool is a refusal that says "not authorized", not "wrong
//!   password", after a bounded wait.
//! - A device that logged in before, from the same address, is checked in
//!   a lane of its own that the pool serves first. A flood from many
//!   fresh addresses fills the other lane, and a device reconnecting
//!   waits for at most the checks already running. A failure in that lane
//!   takes the pair out of it, so a guesser gains one early check at most.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::devices::{hash_password, password_matches};

/// Checks one source may have running (or waiting) at once.
pub const PER_SOURCE_INFLIGHT: u32 = 2;
/// Failures a source may have before it is made to wait.
pub const FREE_FAILURES: u32 = 3;
/// The longest a source or an id is made to wait.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest a failed attempt's answer is held back.
const MAX_TARPIT: Duration = Duration::from_secs(5);
/// How long a login waits for a place in the pool.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// After this long without a failure, a source starts from none again.
const FORGIVE_AFTER: Duration = Duration::from_secs(600);
/// Sources and ids remembered at most; the idle ones go first.
const MAX_TRACKED: usize = 4096;

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// A wrong password, or an unknown id: the two look the same.
    Denied,
    /// Refused without a check: the source is backing off, has too many
    /// attempts in flight, or the pool is saturated.
    Throttled,
}

type Job = (
    String,
    Zeroizing<Vec<u8>>,
    tokio::sync::oneshot::Sender<bool>,
);

/// Which of the pool's two queues a check waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A (source, id) pair that logged in successfully before.
    Known,
    Other,
}

#[derive(Default)]
struct Queues {
    known: std::collections::VecDeque<Job>,
    other: std::collections::VecDeque<Job>,
    closed: bool,
}

/// The verifier threads and their two queues; the known lane goes first.
struct CheckPool {
    queues: Mutex<Queues>,
    ready: std::sync::Condvar,
}

impl CheckPool {
    fn submit(&self, lane: Lane, job: Job) -> bool {
        let mut q = lock(&self.queues);
        if q.closed {
            return false;
        }
        match lane {
            Lane::Known => q.known.push_back(job),
            Lane::Other => q.other.push_back(job),
        }
        drop(q);
        self.ready.notify_one();
        true
    }

    fn next(&self) -> Option<Job> {
        let mut q = lock(&self.queues);
        loop {
            if q.closed {
                return None;
            }
            if let Some(job) = q.known.pop_front().or_else(|| q.other.pop_front()) {
                return Some(job);
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        lock(&self.queues).closed = true;
        self.ready.notify_all();
    }
}

#[derive(Debug, Default, Clone)]
struct Record {
    inflight: u32,
    failures: u32,
    last_failure: Option<Instant>,
    blocked_until: Option<Instant>,
}

impl Record {
    fn idle(&self, now: Instant) -> bool {
        self.inflight == 0
            && self.blocked_until.is_none_or(|t| t <= now)
            && self
                .last_failure
                .is_none_or(|t| now.duration_since(t) > MAX_BACKOFF)
    }
}

/// A bounded map of per-key records: when full, idle records are dropped,
/// and if none is idle, the key is not tracked (the caller decides).
struct Tracker<K> {
    map: HashMap<K, Record>,
}

impl<K> Default for Tracker<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Tracker<K> {
    fn entry(&mut self, key: &K, now: Instant) -> Option<&mut Record> {
        if !self.map.contains_key(key) && self.map.len() >= MAX_TRACKED {
            self.map.retain(|_, r| !r.idle(now));
        }
        if !self.map.contains_key(key) && self.map.len() >= MAX_TRACKED {
            // Still full: forget the record whose last failure is oldest,
            // rather than turn every new source away. Records with checks
            // in flight stay (their counts are being used).
            let oldest = self
                .map
                .iter()
                .filter(|(_, r)| r.inflight == 0)
                .min_by_key(|(_, r)| r.last_failure)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => return None,
            }
        }
        Some(self.map.entry(key.clone()).or_default())
    }
}

fn doubling(failures: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << failures.min(16)).min(max)
}

/// A source's place among its checks in flight.
struct SourceSlot<'a> {
    guard: &'a LoginGuard,
    ip: IpAddr,
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.guard.sources).map.get_mut(&self.ip) {
            r.inflight = r.inflight.saturating_sub(1);
        }
    }
}

pub struct LoginGuard {
    pool: Arc<CheckPool>,
    /// Places in each lane: they bound the queues.
    places: Arc<tokio::sync::Semaphore>,
    known_places: Arc<tokio::sync::Semaphore>,
    /// (source, keyed id hash) pairs that logged in, with when they last
    /// did; bounded, the stalest go first.
    known: Mutex<HashMap<(IpAddr, u64), Instant>>,
    dummy_hash: String,
    sources: Mutex<Tracker<IpAddr>>,
    /// Keyed by a keyed hash of the id as given: known and unknown ids are
    /// tracked alike (so the delay does not tell them apart), and a long
    /// id costs no more memory than a short one.
    ids: Mutex<Tracker<u64>>,
    id_hasher: std::collections::hash_map::RandomState,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic mid-update of plain counters; they are
    // still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoginGuard {
    /// Starts the pool: one thread per core, at most four.
    pub fn start() -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        let pool = Arc::new(CheckPool {
            queues: Mutex::default(),
            ready: std::sync::Condvar::new(),
        });
        let mut running = 0;
        for i in 0..threads {
            let pool = Arc::clone(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("dataward-auth-{i}"))
                .spawn(move || {
                    while let Some((hash, password, reply)) = pool.next() {
                        let _ = reply.send(password_matches(&hash, &password));
                    }
                });
            match spawned {
                Ok(_) => running += 1,
                Err(e) => tracing::error!(error = %e, "cannot start a password verifier thread"),
            }
        }
        if running == 0 {
            // Nobody would ever answer: refuse every login at once instead.
            pool.close();
        }
        // A hash of a random password nobody knows: unknown ids are checked
        // against it, with the same parameters as real ones.
        let mut random = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, random.as_mut());
        let dummy_hash = hash_password(random.as_ref()).unwrap_or_default();
        Self {
            pool,
            places: Arc::new(tokio::sync::Semaphore::new(threads * 2)),
            known_places: Arc::new(tokio::sync::Semaphore::new(threads * 2)),
            known: Mutex::default(),
            dummy_hash,
            sources: Mutex::default(),
            ids: Mutex::default(),
            id_hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Checks `password` for device `id` (whose stored hash is `hash`, or
    /// none for an unknown id), coming from `source`.
    pub async fn check(
        &self,
        source: Option<IpAddr>,
        id: &str,
        hash: Option<&str>,
        password: &[u8],
    ) -> Verdict {
        let now = Instant::now();
        let source = source.map(super::gate::source_key);
        // Gives the source's place back however this ends, cancelled too.
        let _slot = source.map(|ip| SourceSlot { guard: self, ip });
        if let Some(ip) = source {
            let mut sources = lock(&self.sources);
            let Some(r) = sources.entry(&ip, now) else {
                return Verdict::Throttled;
            };
            // Quiet for a while: past failures are forgiven.
            if r.blocked_until.is_none_or(|t| t <= now)
                && r.last_failure
                    .is_some_and(|t| now.duration_since(t) > FORGIVE_AFTER)
            {
                r.failures = 0;
                r.last_failure = None;
            }
            if r.blocked_until.is_some_and(|t| t > now) || r.inflight >= PER_SOURCE_INFLIGHT {
                // Not counted in, so the slot must not count it out.
                std::mem::forget(_slot);
                return Verdict::Throttled;
            }
            r.inflight += 1;
        }
        let id_key = std::hash::BuildHasher::hash_one(&self.id_hasher, id);
        let pair = source.map(|ip| (ip, id_key));
        let lane = match pair {
            Some(pair) if hash.is_some() && lock(&self.known).contains_key(&pair) => Lane::Known,
            _ => Lane::Other,
        };
        let verdict = self.verify_in_pool(lane, hash, password).await;
        if let Some(pair) = pair {
            match verdict {
                Verdict::Allowed => self.remember(pair),
                Verdict::Denied => {
                    lock(&self.known).remove(&pair);
                }
                Verdict::Throttled => {}
            }
        }
        let mut tarpit = Duration::ZERO;
        if let Some(ip) = source {
            let mut sources = lock(&self.sources);
            if let Some(r) = sources.entry(&ip, Instant::now()) {
                match verdict {
                    Verdict::Allowed => {
                        r.failures = 0;
                        r.blocked_until = None;
                    }
                    Verdict::Denied => {
                        r.failures += 1;
                        r.last_failure = Some(Instant::now());
                        if r.failures >= FREE_FAILURES {
                            let wait = doubling(
                                r.failures - FREE_FAILURES,
                                Duration::from_secs(1),
                                MAX_BACKOFF,
                            );
                            r.blocked_until = Some(Instant::now() + wait);
                        }
                    }
                    Verdict::Throttled => {}
                }
            }
        }
        if verdict == Verdict::Denied {
            let mut ids = lock(&self.ids);
            if let Some(r) = ids.entry(&id_key, Instant::now()) {
                let recent = r
                    .last_failure
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(600));
                r.failures = if recent { r.failures + 1 } else { 1 };
                r.last_failure = Some(Instant::now());
                tarpit = doubling(r.failures - 1, Duration::from_millis(50), MAX_TARPIT);
            }
        }
        if !tarpit.is_zero() {
            tokio::time::sleep(tarpit).await;
        }
        verdict
    }

    fn remember(&self, pair: (IpAddr, u64)) {
        let mut known = lock(&self.known);
        if !known.contains_key(&pair) && known.len() >= MAX_TRACKED {
            if let Some(stalest) = known.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                known.remove(&stalest);
            }
        }
        known.insert(pair, Instant::now());
    }

    async fn verify_in_pool(&self, lane: Lane, hash: Option<&str>, password: &[u8]) -> Verdict {
        let places = match lane {
            Lane::Known => &self.known_places,
            Lane::Other => &self.places,
        };
        let Ok(Ok(_place)) =
            tokio::time::timeout(POOL_WAIT, Arc::clone(places).acquire_owned()).await
        else {
            tracing::warn!("password checks saturated; a login was refused without a check");
            return Verdict::Throttled;
        };
        let unknown = hash.is_none();
        let hash = hash.unwrap_or(&self.dummy_hash).to_string();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = (hash, Zeroizing::new(password.to_vec()), reply);
        if !self.pool.submit(lane, job) {
            // The pool only closes when the guard is dropped: fail closed.
            tracing::error!("the password verifier threads are not running; refusing logins");
            return Verdict::Throttled;
        }
        match answer.await {
            Ok(true) if !unknown => Verdict::Allowed,
            Ok(_) => Verdict::Denied,
            Err(_) => Verdict::Throttled,
        }
    }
}

impl Drop for LoginGuard {
    fn drop(&mut self) {
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(password: &str) -> String {
        hash_password(password.as_bytes()).expect("hash")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verdicts_and_a_source_that_keeps_failing() {
        let guard = LoginGuard::start();
        let h = hash("right");
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(
            guard.check(Some(b), "plug", Some(&h), b"right").await,
            Verdict::Allowed
        );
        assert_eq!(
            guard.check(Some(b), "ghost", None, b"right").await,
            Verdict::Denied
        );
        for _ in 1..FREE_FAILURES {
            assert_eq!(
                guard.check(Some(a), "plug", Some(&h), b"wrong").await,
                Verdict::Denied
            );
        }
        assert_eq!(
            guard.check(Some(a), "plug", Some(&h), b"wrong").await,
            Verdict::Denied
        );
        // Now that source waits, even with the right password...
        assert_eq!(
            guard.check(Some(a), "plug", Some(&h), b"right").await,
            Verdict::Throttled
        );
        // ...but the device elsewhere is not locked out by it.
        assert_eq!(
            guard.check(Some(b), "plug", Some(&h), b"right").await,
            Verdict::Allowed
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_source_holds_at_most_two_places() {
        let guard = Arc::new(LoginGuard::start());
        let h = Arc::new(hash("right"));
        let a: IpAddr = [10, 0, 0, 3].into();
        let tries: Vec<_> = (0..20)
            .map(|_| {
                let (guard, h) = (Arc::clone(&guard), Arc::clone(&h));
                tokio::spawn(async move { guard.check(Some(a), "plug", Some(&h), b"right").await })
            })
            .collect();
        let mut allowed = 0;
        let mut throttled = 0;
        for t in tries {
            match t.await.expect("join") {
                Verdict::Allowed => allowed += 1,
                Verdict::Throttled => throttled += 1,
                Verdict::Denied => panic!("the right password was denied"),
            }
        }
        // Twenty arrive within microseconds, and a check takes tens of
        // milliseconds: most of them find both places taken.
        assert!(allowed >= 1, "allowed {allowed}");
        assert!(throttled >= 10, "throttled {throttled}, allowed {allowed}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_seen_before_overtakes_a_queue_of_strangers() {
        let guard = Arc::new(LoginGuard::start());
        let h = Arc::new(hash("right"));
        let home: IpAddr = [10, 0, 1, 1].into();
        assert_eq!(
            guard.check(Some(home), "plug", Some(&h), b"right").await,
            Verdict::Allowed
        );
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Strangers from many addresses fill the other lane...
        let strangers: Vec<_> = (0..16u8)
            .map(|i| {
                let (guard, finished) = (Arc::clone(&guard), Arc::clone(&finished));
                tokio::spawn(async move {
                    // Each its own id, so that no id's tarpit grows long.
                    let ip: IpAddr = [10, 0, 2, i].into();
                    let v = guard
                        .check(Some(ip), &format!("ghost-{i}"), None, b"wrong")
                        .await;
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    v
                })
            })
            .collect();
        while guard.places.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // ...and the device that logged in before does not wait behind them.
        assert_eq!(
            guard.check(Some(home), "plug", Some(&h), b"right").await,
            Verdict::Allowed
        );
        let before_us = finished.load(std::sync::atomic::Ordering::SeqCst);
        for s in strangers {
            assert_ne!(s.await.expect("join"), Verdict::Allowed);
        }
        assert!(before_us < 8, "{before_us} of 16 strangers went first");
        // A failure from that pair takes it out of the lane.
        assert_eq!(
            guard.check(Some(home), "plug", Some(&h), b"wrong").await,
            Verdict::Denied
        );
        let key = std::hash::BuildHasher::hash_one(&guard.id_hasher, "plug");
        assert!(!lock(&guard.known).contains_key(&(home, key)));
    }

    #[test]
    fn trackers_stay_bounded() {
        let mut t: Tracker<u32> = Tracker::default();
        let now = Instant::now();
        for k in 0..(MAX_TRACKED as u32 + 100) {
            if let Some(r) = t.entry(&k, now) {
                r.inflight = u32::from(k % 2 == 0);
            }
        }
        assert!(t.map.len() <= MAX_TRACKED);
        // Full of records with failures: a new key still gets one.
        let mut t: Tracker<u32> = Tracker::default();
        for k in 0..MAX_TRACKED as u32 {
            if let Some(r) = t.entry(&k, now) {
                r.failures = 1;
                r.last_failure = Some(now);
            }
        }
        assert!(t.entry(&u32::MAX, now).is_some());
        assert!(t.map.len() <= MAX_TRACKED);
    }
}
