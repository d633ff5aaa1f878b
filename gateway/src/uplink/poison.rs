//! Finding the one entry a destination keeps refusing.
//!
//! A cloud that cannot take a message (too large for it, a topic it
//! rejects) usually just drops the connection, without saying which
//! message it choked on. Dropped connections also come from outages, so
//! one drop proves nothing. When a session is lost with entries written and
//! not acknowledged, the oldest of them becomes the suspect, and the next
//! sessions send it alone. If the cloud drops the connection with only the
//! suspect in flight [`STRIKES`] times in a row, the suspect goes to the dead
//! letters and the destination moves on; an acknowledgement clears it.

/// Lost sessions with the suspect alone in flight before it is set aside.
pub const STRIKES: u32 = 3;

#[derive(Debug, Default)]
pub struct PoisonWatch {
    suspect: Option<Suspect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suspect {
    key: u64,
    strikes: u32,
}

impl PoisonWatch {
    /// Entries the next session may have in flight.
    pub fn window(&self, normal: usize) -> usize {
        if self.suspect.is_some() {
            1
        } else {
            normal
        }
    }

    pub fn suspect(&self) -> Option<u64> {
        self.suspect.map(|s| s.key)
    }

    /// The cloud acknowledged `key`.
    pub fn acked(&mut self, key: u64) {
        if self.suspect.is_some_and(|s| s.key == key) {
            self.suspect = None;
        }
    }

    /// A session was lost while `oldest_written` (the oldest entry written
    /// to the cloud and not acknowledged) was in flight, if any. Returns an
    /// entry to set aside.
    pub fn lost(&mut self, oldest_written: Option<u64>) -> Option<u64> {
        let key = oldest_written?;
        match &mut self.suspect {
            Some(s) if s.key == key => {
                s.strikes += 1;
                if s.strikes >= STRIKES {
                    self.suspect = None;
                    return Some(key);
                }
            }
            _ => self.suspect = Some(Suspect { key, strikes: 0 }),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_set_aside_only_after_failing_alone() {
        let mut w = PoisonWatch::default();
        assert_eq!(w.window(64), 64);
        // An outage with nothing in flight accuses nobody.
        assert_eq!(w.lost(None), None);
        assert_eq!(w.window(64), 64);
        // A drop with entries in flight: the oldest is suspected, not
        // condemned, and goes alone from now on.
        assert_eq!(w.lost(Some(7)), None);
        assert_eq!(w.window(64), 1);
        for _ in 1..STRIKES {
            assert_eq!(w.lost(Some(7)), None);
        }
        assert_eq!(w.lost(Some(7)), Some(7));
        assert_eq!(w.window(64), 64, "the destination moves on");
    }

    #[test]
    fn an_acknowledgement_clears_the_suspect() {
        let mut w = PoisonWatch::default();
        w.lost(Some(3));
        w.lost(Some(3));
        w.acked(3);
        assert_eq!(w.suspect(), None);
        assert_eq!(w.window(8), 8);
        // A new suspect starts from no strikes.
        w.lost(Some(4));
        for _ in 1..STRIKES {
            assert_eq!(w.lost(Some(4)), None);
        }
        // Connections lost before the suspect was even written do not count.
        assert_eq!(w.lost(None), None);
        assert_eq!(w.lost(Some(4)), Some(4));
    }
}
