//! `aggregate { fn, window }`: one message per window instead of the raw
//! stream. Evaluation hands each aggregated value to the caller's
//! [`Context`](crate::transform::Context); the caller keeps an
//! [`Accumulator`] per field and window, and when a window ends (its own
//! clock, its own tick) asks [`render`] for the message to send.
//!
//! Windows are tumbling and aligned to the unix epoch: an hourly window
//! runs from one full hour to the next, whenever the first value came.

use crate::path::{FieldPath, Segment};

/// What an aggregate computes over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateFn {
    Min,
    Max,
    Mean,
    Sum,
    Count,
}

impl AggregateFn {
    pub const NAMES: &'static [&'static str] = &["min", "max", "mean", "sum", "count"];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            "mean" => AggregateFn::Mean,
            "sum" => AggregateFn::Sum,
            "count" => AggregateFn::Count,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AggregateFn::Min => "min",
            AggregateFn::Max => "max",
            AggregateFn::Mean => "mean",
            AggregateFn::Sum => "sum",
            AggregateFn::Count => "count",
        }
    }
}

/// Where one aggregated value goes: the caller keys its accumulators by
/// all of it, and sends one message per (device, topic, destination,
/// window).
#[derive(Debug, Clone, Copy)]
pub struct WindowSlot<'a> {
    pub device: &'a str,
    pub topic: &'a str,
    pub destination: &'a str,
    pub field: &'a FieldPath,
    pub func: AggregateFn,
    pub window_ms: u64,
    /// The deciding rule's id: a window is sent only if that rule is still
    /// in force, unchanged, when it ends.
    pub rule: &'a str,
}

/// The start of the window that `now_ms` falls in.
pub fn window_start(now_ms: u64, window_ms: u64) -> u64 {
    now_ms - now_ms % window_ms.max(1)
}

/// The running state of one field in one window. `count` counts every
/// value; the others only numbers (a string under `sum` is skipped, not
/// guessed at).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Accumulator {
    pub values: u64,
    pub numbers: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Accumulator {
    /// Adds one value: its JSON text, as the device wrote it.
    pub fn add(&mut self, json_text: &str) {
        self.values += 1;
        let t = json_text.trim();
        if t.starts_with('"') {
            return;
        }
        let Some(n) = t.parse::<f64>().ok().filter(|n| n.is_finite()) else {
            return;
        };
        if self.numbers == 0 {
            self.min = n;
            self.max = n;
        } else {
            self.min = self.min.min(n);
            self.max = self.max.max(n);
        }
        self.numbers += 1;
        self.sum += n;
    }

    /// The window's result as JSON text; `None` when there is nothing to
    /// say (no number for a numeric function).
    pub fn result(&self, func: AggregateFn) -> Option<String> {
        if func == AggregateFn::Count {
            return Some(self.values.to_string());
        }
        if self.numbers == 0 {
            return None;
        }
        let v = match func {
            AggregateFn::Min => self.min,
            AggregateFn::Max => self.max,
            AggregateFn::Sum => self.sum,
            AggregateFn::Mean => self.sum / self.numbers as f64,
            AggregateFn::Count => self.values as f64,
        };
        number_text(v)
    }
}

/// A number as JSON text: integers without a fraction, others to at most
/// nine decimals, so that 0.1 + 0.2 reads 0.3.
fn number_text(v: f64) -> Option<String> {
    if !v.is_finite() {
        return None;
    }
    if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        return Some(format!("{}", v as i64));
    }
    let text = format!("{v:.9}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    Some(if text == "-0" {
        "0".into()
    } else {
        text.into()
    })
}

/// The message for one closed window: each field at its path with its
/// result, and `"$window": {"start": ms, "end": ms}` (for a payload that is
/// a JSON array, `[{"$window": …}, the array]`). Array elements keep their
/// index (the ones between are `null`). A field whose path clashes with
/// one already placed (the payload changed shape within the window), or a
/// device's own `$window` key, is left out. `None` when no field has a
/// result.
pub fn render(fields: &[(&FieldPath, String)], start_ms: u64, end_ms: u64) -> Option<Vec<u8>> {
    let array_root = fields
        .iter()
        .any(|(p, _)| matches!(p.segments().first(), Some(Segment::Index(_))));
    let mut root = if array_root {
        Node::Array(Vec::new())
    } else {
        Node::Object(Vec::new())
    };
    let mut placed = 0;
    for (path, value) in fields {
        let whole = [Segment::Key("$payload".into())];
        let segments = if path.is_whole_payload() {
            // A whole non-JSON payload has no name of its own to carry.
            &whole[..]
        } else {
            path.segments()
        };
        if matches!(segments.first(), Some(Segment::Key(k)) if k == "$window") {
            continue;
        }
        if root.insert(segments, value) {
            placed += 1;
        }
    }
    if placed == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(64 + fields.len() * 24);
    if array_root {
        out.extend_from_slice(
            format!("[{{\"$window\":{{\"start\":{start_ms},\"end\":{end_ms}}}}},").as_bytes(),
        );
        root.write(&mut out, None);
        out.push(b']');
    } else {
        root.write(&mut out, Some((start_ms, end_ms)));
    }
    Some(out)
}

enum Node {
    Object(Vec<(String, Node)>),
    /// Elements by their index in the device's array, written in order.
    Array(Vec<(usize, Node)>),
    Leaf(String),
}

impl Node {
    fn insert(&mut self, path: &[Segment], value: &str) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        let fresh = |rest: &[Segment]| match rest.first() {
            None => Node::Leaf(value.to_string()),
            Some(Segment::Key(_)) => Node::Object(Vec::new()),
            Some(Segment::Index(_)) => Node::Array(Vec::new()),
        };
        let child = match (self, first) {
            (Node::Object(members), Segment::Key(k)) => {
                match members.iter().position(|(name, _)| name == k) {
                    Some(i) => &mut members[i].1,
                    None => {
                        members.push((k.clone(), fresh(rest)));
                        if rest.is_empty() {
                            return true;
                        }
                        let last = members.len() - 1;
                        &mut members[last].1
                    }
                }
            }
            (Node::Array(items), Segment::Index(n)) => {
                match items.iter().position(|(i, _)| i == n) {
                    Some(i) => &mut items[i].1,
                    None => {
                        items.push((*n, fresh(rest)));
                        items.sort_by_key(|(i, _)| *i);
                        if rest.is_empty() {
                            return true;
                        }
                        let at = items.iter().position(|(i, _)| i == n).unwrap_or(0);
                        &mut items[at].1
                    }
                }
            }
            _ => return false,
        };
        if rest.is_empty() {
            // Already placed: the same path twice.
            return false;
        }
        child.insert(rest, value)
    }

    fn write(&self, out: &mut Vec<u8>, window: Option<(u64, u64)>) {
        match self {
            Node::Leaf(v) => out.extend_from_slice(v.as_bytes()),
            Node::Object(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let key = serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into());
                    out.extend_from_slice(key.as_bytes());
                    out.push(b':');
                    v.write(out, None);
                }
                if let Some((start, end)) = window {
                    if !members.is_empty() {
                        out.push(b',');
                    }
                    out.extend_from_slice(
                        format!("\"$window\":{{\"start\":{start},\"end\":{end}}}").as_bytes(),
                    );
                }
                out.push(b'}');
            }
            Node::Array(items) => {
                // Sorted by index; the gaps are written as null, so that
                // each value stays at its index.
                out.push(b'[');
                let mut next = 0;
                for (i, v) in items {
                    while next < *i {
                        if next > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(b"null");
                        next += 1;
                    }
                    if next > 0 {
                        out.push(b',');
                    }
                    v.write(out, None);
                    next += 1;
                }
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(values: &[&str]) -> Accumulator {
        let mut a = Accumulator::default();
        for v in values {
            a.add(v);
        }
        a
    }

    #[test]
    fn each_function_over_a_window() {
        let a = acc(&["1.5", "2", "\"n/a\"", "-0.5", "0.1"]);
        assert_eq!(a.result(AggregateFn::Count).as_deref(), Some("5"));
        assert_eq!(a.result(AggregateFn::Sum).as_deref(), Some("3.1"));
        assert_eq!(a.result(AggregateFn::Min).as_deref(), Some("-0.5"));
        assert_eq!(a.result(AggregateFn::Max).as_deref(), Some("2"));
        assert_eq!(a.result(AggregateFn::Mean).as_deref(), Some("0.775"));
        assert_eq!(
            acc(&["0.1", "0.2"]).result(AggregateFn::Sum).as_deref(),
            Some("0.3")
        );
        // No number: nothing to say, except how many values came.
        let text = acc(&["\"on\"", "true"]);
        assert_eq!(text.result(AggregateFn::Sum), None);
        assert_eq!(text.result(AggregateFn::Count).as_deref(), Some("2"));
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window_start(3_599_999, 3_600_000), 0);
        assert_eq!(window_start(3_600_000, 3_600_000), 3_600_000);
        assert_eq!(window_start(5, 0), 5, "no division by zero");
    }

    #[test]
    fn a_window_renders_at_the_fields_paths() {
        let p = |segs: Vec<Segment>| FieldPath::from_segments(segs);
        let energy = p(vec![Segment::Key("energy".into())]);
        let l1 = p(vec![
            Segment::Key("phase".into()),
            Segment::Key("l1".into()),
        ]);
        let second = p(vec![Segment::Key("v".into()), Segment::Index(1)]);
        let first = p(vec![Segment::Key("v".into()), Segment::Index(0)]);
        let out = render(
            &[
                (&energy, "12.5".into()),
                (&l1, "3".into()),
                (&second, "2".into()),
                (&first, "1".into()),
            ],
            0,
            3_600_000,
        )
        .expect("rendered");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            r#"{"energy":12.5,"phase":{"l1":3},"v":[1,2],"$window":{"start":0,"end":3600000}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["energy"], 12.5);
        // Sparse indices keep their place; a top-level array stays an array.
        let third = p(vec![Segment::Key("ph".into()), Segment::Index(2)]);
        let out = render(&[(&third, "7".into())], 0, 1).expect("one");
        assert_eq!(
            out,
            br#"{"ph":[null,null,7],"$window":{"start":0,"end":1}}"#.to_vec()
        );
        let top = p(vec![Segment::Index(1)]);
        let out = render(&[(&top, "5".into())], 0, 1).expect("array root");
        assert_eq!(
            out,
            br#"[{"$window":{"start":0,"end":1}},[null,5]]"#.to_vec()
        );
        let own = p(vec![Segment::Key("$window".into())]);
        assert_eq!(
            render(&[(&own, "1".into())], 0, 1),
            None,
            "no duplicate key"
        );
        // A path that became an object inside the window: the clash is left out.
        let deeper = p(vec![
            Segment::Key("energy".into()),
            Segment::Key("x".into()),
        ]);
        let out = render(&[(&energy, "1".into()), (&deeper, "2".into())], 0, 1).expect("one");
        assert_eq!(
            out,
            br#"{"energy":1,"$window":{"start":0,"end":1}}"#.to_vec()
        );
        assert_eq!(render(&[], 0, 1), None);
    }
}
