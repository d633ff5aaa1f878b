//! Finding the one entry a destination keeps refusing.
//!
//! A cloud that cannot take a message (too large for it, a topic it
//! rejects) usually just drops the connection, without saying which
//! message it choked on. Dropped connections also come from outages, so
//! one drop proves nothing. The steps:
//!
//! 1. A session is lost with entries written and not acknowledged: the
//!    oldest becomes the suspect, and the next sessions send it alone.
//! 2. A strike is a session lost within [`STRIKE_WINDOW`] of the suspect
//!    being written, with only the suspect in flight.
//! 3. After [`STRIKES`] strikes, a control session sends nothing for
//!    [`CONTROL_PERIOD`]. If that one is dropped too, the connection is the
//!    trouble, not the message: the strikes are forgotten. If it holds, the
//!    suspect is set aside as a dead letter, and the destination moves on.
//!
//! Any acknowledgement of the suspect (or of a later entry, should the
//! suspect have left the outbox some other way) clears it.

use std::time::Duration;

/// Strikes before the control session.
pub const STRIKES: u32 = 3;
/// A drop this soon after the suspect was written counts against it.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(5);
/// How long the control session must hold with nothing in flight.
pub const CONTROL_PERIOD: Duration = Duration::from_secs(3);

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
    /// Entries the next session may have in flight: none during the
    /// control, one while an entry is suspected.
    pub fn window(&self, normal: usize) -> usize {
        match self.suspect {
            Some(s) if s.strikes >= STRIKES => 0,
            Some(_) => 1,
            None => normal,
        }
    }

    pub fn suspect(&self) -> Option<u64> {
        self.suspect.map(|s| s.key)
    }

    /// The cloud acknowledged `key`.
    pub fn acked(&mut self, key: u64) {
        if self.suspect.is_some_and(|s| key >= s.key) {
            self.suspect = None;
        }
    }

    /// A session was lost. `oldest_written` is the oldest entry written to
    /// the cloud and not acknowledged, with how long before the loss it
    /// was written.
    pub fn lost(&mut self, oldest_written: Option<(u64, Duration)>) {
        match (&mut self.suspect, oldest_written) {
            // Lost during the control: the connection, not the message.
            (Some(s), _) if s.strikes >= STRIKES => s.strikes = 0,
            (Some(s), Some((key, ago))) if s.key == key => {
                if ago <= STRIKE_WINDOW {
                    s.strikes += 1;
                }
            }
            (_, Some((key, _))) => self.suspect = Some(Suspect { key, strikes: 0 }),
            (_, None) => {}
        }
    }

    /// The control session held for [`CONTROL_PERIOD`]: returns the entry
    /// to set aside.
    pub fn control_held(&mut self) -> Option<u64> {
        match self.suspect {
            Some(s) if s.strikes >= STRIKES => {
                self.suspect = None;
                Some(s.key)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(20);

    #[test]
    fn an_entry_is_set_aside_only_after_failing_alone_and_a_control_holding() {
        let mut w = PoisonWatch::default();
        assert_eq!(w.window(64), 64);
        // An outage with nothing in flight accuses nobody.
        w.lost(None);
        assert_eq!(w.window(64), 64);
        // A drop with entries in flight: the oldest is suspected, and goes
        // alone from now on.
        w.lost(Some((7, SOON)));
        assert_eq!(w.window(64), 1);
        for _ in 0..STRIKES {
            assert_eq!(w.control_held(), None, "no verdict before the control");
            w.lost(Some((7, SOON)));
        }
        assert_eq!(w.window(64), 0, "the control sends nothing");
        assert_eq!(w.control_held(), Some(7));
        assert_eq!(w.window(64), 64, "the destination moves on");
    }

    #[test]
    fn a_flapping_connection_condemns_nothing() {
        let mut w = PoisonWatch::default();
        w.lost(Some((3, SOON)));
        // Drops long after writing (a keepalive timeout) are no strikes.
        for _ in 0..10 {
            w.lost(Some((3, STRIKE_WINDOW * 2)));
        }
        assert_eq!(w.window(8), 1);
        for _ in 0..STRIKES {
            w.lost(Some((3, SOON)));
        }
        // The control session is dropped as well: the strikes go.
        w.lost(None);
        assert_eq!(w.window(8), 1);
        assert_eq!(w.control_held(), None);
    }

    #[test]
    fn an_acknowledgement_clears_the_suspect() {
        let mut w = PoisonWatch::default();
        w.lost(Some((3, SOON)));
        w.lost(Some((3, SOON)));
        w.acked(3);
        assert_eq!(w.suspect(), None);
        assert_eq!(w.window(8), 8);
        // A suspect that left the outbox otherwise (the quota): the next
        // entry's acknowledgement clears it too.
        w.lost(Some((4, SOON)));
        w.acked(5);
        assert_eq!(w.window(8), 8);
    }
}
