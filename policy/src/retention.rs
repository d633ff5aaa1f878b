//! How long history is kept: `[[retain]]` rules (docs/policy.md).
//!
//! ```toml
//! [[retain]]
//! device = "tracker"      # a device, "@group" or "*"
//! keep = "30d"            # a duration, "forever", or "none": do not store
//!
//! [[retain]]
//! device = "phone"
//! field = "gps"           # per field: only keep = "none" (the field is
//! keep = "none"           # left out of the stored record)
//! ```
//!
//! For a device, the most specific device-level rule decides (device, then
//! group, then `*`); with none, the config's default applies. Pure: the
//! caller brings the clock.

use std::borrow::Cow;

use crate::json::Json;

use crate::path::FieldPattern;
use crate::rule::{DeviceSelector, Position};
use crate::Policy;

/// How long a device's history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Not stored at all.
    Nothing,
    /// Kept this many milliseconds after the end of the day it was received.
    For(u64),
    Forever,
}

impl Keep {
    /// `none`, `forever`, or a duration above zero (`30d`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "none" => Some(Keep::Nothing),
            "forever" => Some(Keep::Forever),
            t => parse_duration_ms(t).filter(|ms| *ms > 0).map(Keep::For),
        }
    }
}

/// `500ms`, `10s`, `5m`, `12h`, `30d`, `4w`.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// One `[[retain]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainRule {
    pub device: DeviceSelector,
    /// Per-field rules only ever say `none`.
    pub field: Option<FieldPattern>,
    pub keep: Keep,
    pub position: Position,
}

impl Policy {
    pub fn retain_rules(&self) -> &[RetainRule] {
        &self.retain
    }

    /// How long `device`'s history is kept; `None`: the config's default.
    pub fn retention(&self, device: &str) -> Option<Keep> {
        self.retain
            .iter()
            .filter(|r| r.field.is_none() && r.device.selects(device, &self.groups))
            .max_by_key(|r| r.device.rank())
            .map(|r| r.keep)
    }

    /// What of `payload` goes into `device`'s history: `None` when nothing
    /// is kept (by the policy, or by `default` when the policy says nothing
    /// about the device), the payload itself when no field rule applies,
    /// else a JSON object without the fields whose `keep` is `none`.
    /// Fail-closed: a payload that looks like a JSON object but does not
    /// parse is not kept when field rules apply.
    pub fn history_payload<'a>(
        &self,
        device: &str,
        payload: &'a [u8],
        default: Keep,
    ) -> Option<Cow<'a, [u8]>> {
        if self.retention(device).unwrap_or(default) == Keep::Nothing {
            return None;
        }
        let unkept: Vec<&FieldPattern> = self
            .retain
            .iter()
            .filter(|r| r.device.selects(device, &self.groups))
            .filter_map(|r| r.field.as_ref())
            .collect();
        if unkept.is_empty() {
            return Some(Cow::Borrowed(payload));
        }
        let mut v = match crate::json::Json::parse(payload) {
            Ok(v) if v.is_structured() => v,
            _ if crate::looks_like_json(payload) => {
                // Meant as an object or array (NaN, a lone surrogate, too
                // deep...): its fields cannot be told apart, so none is kept.
                return None;
            }
            _ => {
                // Field rules address JSON objects and arrays; anything else
                // is one field, `$payload`, which a rule may name.
                let whole = crate::path::FieldPath::whole_payload();
                return if unkept.iter().any(|p| p.matches(&whole)) {
                    None
                } else {
                    Some(Cow::Borrowed(payload))
                };
            }
        };
        // What is kept stays exactly as the device wrote it.
        if strip(&mut v, &mut Vec::new(), &unkept) {
            None
        } else {
            Some(Cow::Owned(v.to_vec()))
        }
    }
}

/// Removes the leaves that match a pattern; containers left empty go too.
/// Returns whether `v` itself is now empty (or was a removed leaf).
fn strip(v: &mut Json, prefix: &mut Vec<crate::path::Segment>, unkept: &[&FieldPattern]) -> bool {
    use crate::path::{FieldPath, Segment};
    match v {
        Json::Object(m) if !m.is_empty() => {
            m.retain_mut(|(k, child)| {
                prefix.push(Segment::Key(k.clone()));
                let gone = strip(child, prefix, unkept);
                prefix.pop();
                !gone
            });
            m.is_empty()
        }
        Json::Array(a) if !a.is_empty() => {
            let mut i = 0;
            a.retain_mut(|child| {
                prefix.push(Segment::Index(i));
                i += 1;
                let gone = strip(child, prefix, unkept);
                prefix.pop();
                !gone
            });
            a.is_empty()
        }
        _ => {
            let path = FieldPath::from_segments(prefix.clone());
            unkept.iter().any(|p| p.matches(&path))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Policy;

    use super::Keep;

    #[test]
    fn the_most_specific_retention_wins_and_fields_can_be_left_out() {
        let p = Policy::parse(
            r#"
[groups]
cams = ["door"]

[[retain]]
device = "*"
keep = "30d"

[[retain]]
device = "@cams"
keep = "none"

[[retain]]
device = "tracker"
keep = "forever"

[[retain]]
device = "tracker"
field = "gps"
keep = "none"
"#,
        )
        .expect("parse");
        assert_eq!(p.retention("plug"), Some(Keep::For(30 * 86_400_000)));
        assert_eq!(p.retention("door"), Some(Keep::Nothing));
        assert_eq!(p.retention("tracker"), Some(Keep::Forever));
        let d = Keep::For(1);
        assert_eq!(p.history_payload("door", b"{\"a\":1}", d), None);
        assert_eq!(
            p.history_payload("plug", b"{\"a\":1e2}", d).as_deref(),
            Some(&b"{\"a\":1e2}"[..]),
            "untouched when no field rule applies"
        );
        assert_eq!(
            p.history_payload("tracker", br#"{"gps":[1,2],"bat":90}"#, d)
                .as_deref(),
            Some(&br#"{"bat":90}"#[..])
        );
        // What is kept stays as written.
        assert_eq!(
            p.history_payload("tracker", br#"{"gps":[1,2],"bat":9e1}"#, d)
                .as_deref(),
            Some(&br#"{"bat":9e1}"#[..])
        );
        assert_eq!(p.history_payload("tracker", br#"{"gps":[1,2]}"#, d), None);
        // Not parseable, though meant as an object: not kept at all.
        assert_eq!(
            p.history_payload("tracker", br#"{"gps":NaN,"bat":90}"#, d),
            None
        );
        assert_eq!(
            p.history_payload("tracker", b"plain text", d).as_deref(),
            Some(&b"plain text"[..])
        );
        // With no rule for the device, the default decides.
        assert_eq!(
            Policy::default().history_payload("plug", b"{}", Keep::Nothing),
            None
        );
        assert!(Policy::default()
            .history_payload("plug", b"{}", d)
            .is_some());
        assert_eq!(Policy::default().retention("plug"), None);
    }

    #[test]
    fn bad_retain_rules_are_refused_with_a_position() {
        for (text, needle) in [
            ("[[retain]]\ndevice = \"*\"\nkeep = \"soon\"\n", "keep"),
            ("[[retain]]\ndevice = \"*\"\nfield = \"gps\"\nkeep = \"30d\"\n", "per field"),
            ("[[retain]]\ndevice = \"*\"\nkeep = \"1d\"\n[[retain]]\ndevice = \"*\"\nkeep = \"2d\"\n", "twice"),
        ] {
            let e = Policy::parse(text).expect_err(text);
            assert!(e.message.contains(needle), "{text}: {e}");
            assert!(e.position.line >= 1);
        }
    }
}
