//! Each device's last message, for `policy preview --last`, and when it
//! came and how many came today (UTC), for the devices page: in memory
//! only (never on disk), bounded in bytes; the stalest go first.

#[derive(Default)]
pub struct LastSeen(std::sync::Mutex<LastSeenInner>);

#[derive(Default)]
struct LastSeenInner {
    by_device: std::collections::HashMap<String, (u64, String, Vec<u8>, Activity)>,
    bytes: usize,
    next: u64,
}

#[derive(Clone, Copy, Default)]
struct Activity {
    at_ms: u64,
    day: u64,
    today: u64,
}

impl Activity {
    fn note(&mut self, now_ms: u64) {
        let day = now_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.today = 0;
        }
        self.today += 1;
        self.at_ms = now_ms;
    }
}

const DAY_MS: u64 = 86_400_000;

/// Bytes of last messages kept, all devices together.
const MAX_LAST_SEEN_BYTES: usize = 4 << 20;

impl LastSeen {
    pub(super) fn note(&self, device: &str, topic: &str, payload: &[u8], now_ms: u64) {
        let size = device.len() + topic.len() + payload.len();
        if size > MAX_LAST_SEEN_BYTES / 16 {
            return;
        }
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let order = s.next;
        s.next += 1;
        // The usual case, a device seen before: its buffers are reused, so
        // the hot path allocates nothing here.
        if let Some((o, t, p, a)) = s.by_device.get_mut(device) {
            let old = device.len() + t.len() + p.len();
            *o = order;
            a.note(now_ms);
            t.clear();
            t.push_str(topic);
            p.clear();
            p.extend_from_slice(payload);
            s.bytes = s.bytes - old + size;
        } else {
            s.bytes += size;
            let mut a = Activity::default();
            a.note(now_ms);
            s.by_device.insert(
                device.to_string(),
                (order, topic.to_string(), payload.to_vec(), a),
            );
        }
        // The one just noted is the newest: it is never the one dropped.
        while s.bytes > MAX_LAST_SEEN_BYTES {
            let Some(stalest) = s
                .by_device
                .iter()
                .min_by_key(|(_, v)| v.0)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, t, p, _)) = s.by_device.remove(&stalest) {
                s.bytes -= stalest.len() + t.len() + p.len();
            }
        }
    }

    pub fn forget(&self, device: &str) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t, p, _)) = s.by_device.remove(device) {
            s.bytes -= device.len() + t.len() + p.len();
        }
    }

    /// (topic, payload) of `device`'s last message since start.
    pub fn get(&self, device: &str) -> Option<(String, Vec<u8>)> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.by_device
            .get(device)
            .map(|(_, t, p, _)| (t.clone(), p.clone()))
    }

    /// When `device`'s last message came, and how many came on the UTC day
    /// of `now_ms` (since the gateway started).
    pub fn activity(&self, device: &str, now_ms: u64) -> Option<(u64, u64)> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (_, _, _, a) = s.by_device.get(device)?;
        let today = if a.day == now_ms / DAY_MS { a.today } else { 0 };
        Some((a.at_ms, today))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_messages_stay_within_their_byte_bound() {
        let last = LastSeen::default();
        last.note("a", "t", b"1", 0);
        last.note("a", "t", b"22", 0);
        assert_eq!(last.get("a"), Some(("t".into(), b"22".to_vec())));
        let big = vec![b'x'; MAX_LAST_SEEN_BYTES / 32];
        for i in 0..100 {
            last.note(&format!("d{i}"), "t", &big, 0);
        }
        let bytes = last.0.lock().expect("lock").bytes;
        assert!(bytes <= MAX_LAST_SEEN_BYTES, "{bytes}");
        assert!(last.get("d99").is_some() && last.get("d0").is_none());
        last.note("huge", "t", &vec![0; MAX_LAST_SEEN_BYTES], 0);
        assert!(last.get("huge").is_none(), "too large to keep");
    }

    #[test]
    fn messages_are_counted_per_utc_day() {
        let last = LastSeen::default();
        let day = 20_000 * DAY_MS;
        last.note("a", "t", b"1", day - 1);
        last.note("a", "t", b"1", day + 5);
        last.note("a", "t", b"1", day + 9);
        assert_eq!(last.activity("a", day + 10), Some((day + 9, 2)));
        assert_eq!(
            last.activity("a", day + DAY_MS),
            Some((day + 9, 0)),
            "a new day"
        );
        assert_eq!(last.activity("b", day), None);
    }
}
