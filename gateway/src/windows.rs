//! The open windows of the policy's `aggregate` action. Evaluation adds
//! values here instead of sending them; the pipeline's tick takes every
//! window that has ended and sends its one message, whether or not the
//! device sent anything since.
//!
//! Windows live in memory: a restart loses the values of the windows open
//! at that moment (the messages themselves are in the history). Bounded:
//! at most [`MAX_OPEN_FIELDS`] (field × window) accumulators at once; a
//! value past that is not counted, and a warning says so.

use std::collections::HashMap;
use std::sync::Mutex;

use policy::aggregate::{self, Accumulator, AggregateFn, WindowSlot};
use policy::FieldPath;

pub const MAX_OPEN_FIELDS: usize = 16_384;

/// One message a window sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub device: String,
    pub topic: String,
    pub destination: String,
    pub payload: Vec<u8>,
    pub end_ms: u64,
    pub window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Group {
    device: String,
    topic: String,
    destination: String,
    window_ms: u64,
    start_ms: u64,
}

#[derive(Default)]
struct Open {
    groups: HashMap<Group, Vec<(FieldPath, AggregateFn, Accumulator)>>,
    fields: usize,
    refused: u64,
}

#[derive(Default)]
pub struct Windows(Mutex<Open>);

impl Windows {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `value` (JSON text) to the window of `slot` that `now_ms` is in.
    pub fn add(&self, slot: &WindowSlot<'_>, value: &[u8], now_ms: u64) {
        let group = Group {
            device: slot.device.to_string(),
            topic: slot.topic.to_string(),
            destination: slot.destination.to_string(),
            window_ms: slot.window_ms,
            start_ms: aggregate::window_start(now_ms, slot.window_ms),
        };
        let text = String::from_utf8_lossy(value);
        let mut open = self.lock();
        let full = open.fields >= MAX_OPEN_FIELDS;
        let Open {
            groups,
            fields,
            refused,
        } = &mut *open;
        if full && !groups.contains_key(&group) {
            *refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused = *refused,
                    "too many open aggregate windows: values not counted"
                );
            }
            return;
        }
        let entries = groups.entry(group).or_default();
        match entries
            .iter_mut()
            .find(|(f, func, _)| f == slot.field && *func == slot.func)
        {
            Some((_, _, acc)) => acc.add(&text),
            None if !full => {
                let mut acc = Accumulator::default();
                acc.add(&text);
                entries.push((slot.field.clone(), slot.func, acc));
                *fields += 1;
            }
            None => *refused += 1,
        }
    }

    /// Takes every window that ended by `now_ms`, as the messages to send.
    pub fn close_due(&self, now_ms: u64) -> Vec<Closed> {
        let mut open = self.lock();
        let due: Vec<Group> = open
            .groups
            .keys()
            .filter(|g| g.start_ms.saturating_add(g.window_ms) <= now_ms)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for group in due {
            let Some(entries) = open.groups.remove(&group) else {
                continue;
            };
            open.fields -= entries.len();
            let results: Vec<(&FieldPath, String)> = entries
                .iter()
                .filter_map(|(f, func, acc)| acc.result(*func).map(|r| (f, r)))
                .collect();
            let end_ms = group.start_ms + group.window_ms;
            if let Some(payload) = aggregate::render(&results, group.start_ms, end_ms) {
                out.push(Closed {
                    device: group.device,
                    topic: group.topic,
                    destination: group.destination,
                    payload,
                    end_ms,
                    window_ms: group.window_ms,
                });
            }
        }
        // Oldest first, so a destination receives its windows in order.
        out.sort_by_key(|c| c.end_ms);
        out
    }

    /// Forgets the open windows of `device` (its history was deleted).
    pub fn forget_device(&self, device: &str) {
        let mut open = self.lock();
        let before: usize = open.groups.values().map(Vec::len).sum();
        open.groups.retain(|g, _| g.device != device);
        let after: usize = open.groups.values().map(Vec::len).sum();
        open.fields -= before - after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::path::Segment;

    fn slot<'a>(field: &'a FieldPath, func: AggregateFn, dest: &'a str) -> WindowSlot<'a> {
        WindowSlot {
            device: "meter",
            topic: "tele/meter",
            destination: dest,
            field,
            func,
            window_ms: 60_000,
        }
    }

    #[test]
    fn a_window_sends_once_when_it_ends_with_its_results() {
        let w = Windows::default();
        let wh = FieldPath::from_segments(vec![Segment::Key("wh".into())]);
        let p = FieldPath::from_segments(vec![Segment::Key("p".into())]);
        for (t, v) in [(60_000, "10"), (61_000, "2.5"), (119_999, "1")] {
            w.add(&slot(&wh, AggregateFn::Sum, "utility"), v.as_bytes(), t);
            w.add(&slot(&p, AggregateFn::Max, "utility"), v.as_bytes(), t);
        }
        // The next window's first value.
        w.add(&slot(&wh, AggregateFn::Sum, "utility"), b"7", 120_000);
        assert!(w.close_due(119_999).is_empty(), "not over yet");
        let closed = w.close_due(120_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&closed[0].payload),
            r#"{"wh":13.5,"p":10,"$window":{"start":60000,"end":120000}}"#
        );
        assert_eq!(
            (closed[0].topic.as_str(), closed[0].destination.as_str()),
            ("tele/meter", "utility")
        );
        assert!(w.close_due(120_000).is_empty(), "sent once");
        let next = w.close_due(180_000);
        assert_eq!(
            String::from_utf8_lossy(&next[0].payload),
            r#"{"wh":7,"$window":{"start":120000,"end":180000}}"#
        );
        assert_eq!(w.lock().fields, 0);
    }

    #[test]
    fn open_windows_are_bounded() {
        let w = Windows::default();
        for i in 0..(MAX_OPEN_FIELDS + 10) {
            let f = FieldPath::from_segments(vec![Segment::Key(format!("f{i}"))]);
            w.add(&slot(&f, AggregateFn::Count, "d"), b"1", 1);
        }
        let open = w.lock();
        assert_eq!(open.fields, MAX_OPEN_FIELDS);
        assert_eq!(open.refused, 10);
    }

    #[test]
    fn forgetting_a_device_drops_its_windows() {
        let w = Windows::default();
        let f = FieldPath::from_segments(vec![Segment::Key("x".into())]);
        w.add(&slot(&f, AggregateFn::Count, "d"), b"1", 1);
        w.forget_device("meter");
        assert!(w.close_due(u64::MAX).is_empty());
        assert_eq!(w.lock().fields, 0);
    }
}
