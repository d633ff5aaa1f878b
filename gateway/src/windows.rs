//! The open windows of the policy's `aggregate` action. Evaluation adds
//! values here instead of sending them; the pipeline's tick takes every
//! window that has ended and sends its one message, whether or not the
//! device sent anything since.
//!
//! Windows live in memory: a restart loses the values of the windows open
//! at that moment (the messages themselves are in the history). Bounded:
//! at most [`MAX_OPEN_FIELDS`] (field × window) accumulators at once,
//! [`MAX_OPEN_FIELDS_PER_DEVICE`] for one device, and [`MAX_OPEN_BYTES`] of
//! names; a value past that is not counted, and a warning says so.
//!
//! A window remembers the rule that filled it: when it ends, the pipeline
//! sends only the fields whose rule is still in force, unchanged.

use std::collections::HashMap;
use std::sync::Mutex;

use policy::aggregate::{self, Accumulator, AggregateFn, WindowSlot};
use policy::FieldPath;

pub const MAX_OPEN_FIELDS: usize = 16_384;
pub const MAX_OPEN_FIELDS_PER_DEVICE: usize = 1_024;
/// Bytes of device, topic, destination, field and rule names held.
pub const MAX_OPEN_BYTES: usize = 16 << 20;

/// One field of a window that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedField {
    pub field: FieldPath,
    pub func: AggregateFn,
    pub acc: Accumulator,
    pub rule: String,
}

/// A window that ended: what it holds for one device, topic and
/// destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub device: String,
    pub topic: String,
    pub destination: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub window_ms: u64,
    pub fields: Vec<ClosedField>,
}

impl Closed {
    /// The message to send, with the fields `keep` allows; `None` when
    /// none is left with a result.
    pub fn render(&self, keep: impl Fn(&ClosedField) -> bool) -> Option<Vec<u8>> {
        let results: Vec<(&FieldPath, String)> = self
            .fields
            .iter()
            .filter(|f| keep(f))
            .filter_map(|f| f.acc.result(f.func).map(|r| (&f.field, r)))
            .collect();
        aggregate::render(&results, self.start_ms, self.end_ms)
    }
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
    groups: HashMap<Group, Vec<ClosedField>>,
    fields: usize,
    bytes: usize,
    per_device: HashMap<String, usize>,
    refused: u64,
}

fn group_bytes(g: &Group) -> usize {
    g.device.len() + g.topic.len() + g.destination.len()
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
        let Open {
            groups,
            fields,
            bytes,
            per_device,
            refused,
        } = &mut *open;
        if let Some(entries) = groups.get_mut(&group) {
            if let Some(f) = entries
                .iter_mut()
                .find(|f| &f.field == slot.field && f.func == slot.func && f.rule == slot.rule)
            {
                f.acc.add(&text);
                return;
            }
        }
        // A new accumulator: within every bound, or not counted.
        let cost = slot.field.generic().len()
            + slot.rule.len()
            + if groups.contains_key(&group) {
                0
            } else {
                group_bytes(&group)
            };
        let mine = per_device.get(slot.device).copied().unwrap_or(0);
        if *fields >= MAX_OPEN_FIELDS
            || mine >= MAX_OPEN_FIELDS_PER_DEVICE
            || *bytes + cost > MAX_OPEN_BYTES
        {
            *refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused = *refused,
                    "too many open aggregate windows: values not counted"
                );
            }
            return;
        }
        let mut acc = Accumulator::default();
        acc.add(&text);
        *per_device.entry(group.device.clone()).or_default() += 1;
        groups.entry(group).or_default().push(ClosedField {
            field: slot.field.clone(),
            func: slot.func,
            acc,
            rule: slot.rule.to_string(),
        });
        *fields += 1;
        *bytes += cost;
    }

    /// Takes every window that ended by `now_ms`, oldest first.
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
            open.release(&group, &entries);
            out.push(Closed {
                end_ms: group.start_ms + group.window_ms,
                start_ms: group.start_ms,
                window_ms: group.window_ms,
                device: group.device,
                topic: group.topic,
                destination: group.destination,
                fields: entries,
            });
        }
        // Oldest first, so a destination receives its windows in order.
        out.sort_by_key(|c| c.end_ms);
        out
    }

    /// Forgets the open windows of `device` (its history was deleted).
    pub fn forget_device(&self, device: &str) {
        let mut open = self.lock();
        let gone: Vec<Group> = open
            .groups
            .keys()
            .filter(|g| g.device == device)
            .cloned()
            .collect();
        for g in gone {
            if let Some(entries) = open.groups.remove(&g) {
                open.release(&g, &entries);
            }
        }
    }
}

impl Open {
    /// Gives back what a removed group's accumulators counted against the
    /// bounds.
    fn release(&mut self, group: &Group, entries: &[ClosedField]) {
        let names: usize = entries
            .iter()
            .map(|f| f.field.generic().len() + f.rule.len())
            .sum();
        self.fields = self.fields.saturating_sub(entries.len());
        self.bytes = self.bytes.saturating_sub(names + group_bytes(group));
        if let Some(n) = self.per_device.get_mut(&group.device) {
            *n = n.saturating_sub(entries.len());
            if *n == 0 {
                self.per_device.remove(&group.device);
            }
        }
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
            rule: "r",
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
            String::from_utf8_lossy(&closed[0].render(|_| true).expect("payload")),
            r#"{"wh":13.5,"p":10,"$window":{"start":60000,"end":120000}}"#
        );
        assert_eq!(
            (closed[0].topic.as_str(), closed[0].destination.as_str()),
            ("tele/meter", "utility")
        );
        assert!(w.close_due(120_000).is_empty(), "sent once");
        let next = w.close_due(180_000);
        assert_eq!(
            String::from_utf8_lossy(&next[0].render(|_| true).expect("payload")),
            r#"{"wh":7,"$window":{"start":120000,"end":180000}}"#
        );
        let open = w.lock();
        assert_eq!((open.fields, open.bytes, open.per_device.len()), (0, 0, 0));
    }

    #[test]
    fn open_windows_are_bounded_per_device_and_overall() {
        let w = Windows::default();
        for i in 0..(MAX_OPEN_FIELDS_PER_DEVICE + 10) {
            let f = FieldPath::from_segments(vec![Segment::Key(format!("f{i}"))]);
            w.add(&slot(&f, AggregateFn::Count, "d"), b"1", 1);
        }
        {
            let open = w.lock();
            assert_eq!(open.fields, MAX_OPEN_FIELDS_PER_DEVICE);
            assert_eq!(open.refused, 10);
        }
        // Another device still has room.
        let f = FieldPath::from_segments(vec![Segment::Key("x".into())]);
        let other = WindowSlot {
            device: "other",
            ..slot(&f, AggregateFn::Count, "d")
        };
        w.add(&other, b"1", 1);
        assert_eq!(w.lock().fields, MAX_OPEN_FIELDS_PER_DEVICE + 1);
    }

    #[test]
    fn a_window_keeps_what_its_rule_still_allows() {
        let w = Windows::default();
        let a = FieldPath::from_segments(vec![Segment::Key("a".into())]);
        let b = FieldPath::from_segments(vec![Segment::Key("b".into())]);
        w.add(&slot(&a, AggregateFn::Sum, "d"), b"1", 1);
        w.add(
            &WindowSlot {
                rule: "gone",
                ..slot(&b, AggregateFn::Sum, "d")
            },
            b"2",
            1,
        );
        let closed = w.close_due(60_000);
        let text = closed[0].render(|f| f.rule != "gone").expect("payload");
        assert_eq!(
            String::from_utf8_lossy(&text),
            r#"{"a":1,"$window":{"start":0,"end":60000}}"#
        );
        assert_eq!(closed[0].render(|_| false), None);
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
