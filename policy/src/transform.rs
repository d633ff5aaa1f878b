//! The value-level actions: what a shared field becomes on its way out.
//!
//! Each works on one leaf value, and fails closed: a value the action
//! cannot read (text under `round`, a number under a date action) is not
//! sent at all.
//!
//! - `redact`: the field is sent as the string `"[redacted]"`, so the
//!   recipient learns that it exists, not what it says;
//! - `round { step }`: a number to the nearest multiple of `step`;
//! - `bucket { edges, labels }`: a number to the label of its interval;
//! - `truncate_time { unit }`: an RFC 3339 time, or unix seconds or
//!   milliseconds, cut down to the second, minute, hour or day;
//! - `coarsen_location { decimals }`: each coordinate (a number within
//!   ±180) to that many decimals; `coarsen_location { geohash }`: a
//!   latitude and longitude pair to one geohash cell (evaluation finds the
//!   pair: sibling fields, or a `[lat, lon]` array);
//! - `rate_limit { interval }`: the value as it is, at most once per
//!   interval per field and destination (the [`Context`] keeps time);
//! - `seal`: the value (its JSON text) sealed to the user's public key, or
//!   to the rule's `recipient`, by the caller's [`Context`]: this crate
//!   holds no key and draws no randomness;
//! - `pseudonymize`: a keyed hash of the value, the key per destination,
//!   also by the [`Context`];
//! - `aggregate { fn, window }`: the value goes to the [`Context`]'s
//!   window instead of out (see [`crate::aggregate`]).

use serde_json::value::RawValue;

use crate::aggregate::{AggregateFn, WindowSlot};
use crate::json::Json;
use crate::path::FieldPath;
use crate::rule::Action;

/// What evaluation needs from outside a pure function: keys, randomness,
/// the clock, window state and the field inventory, which the gateway
/// holds.
pub trait Context {
    /// `value` (a JSON text) sealed to `recipient` (an age recipient from
    /// the rule), or to the user's own key as a `dw1.` string when there is
    /// none. `None` when it cannot be (no keys yet): the field is then
    /// withheld.
    fn seal(&self, value: &[u8], recipient: Option<&str>) -> Option<String>;

    /// A pseudonym for `value` (a JSON text) for `destination`: the same
    /// value gives the same pseudonym for one destination, and unrelated
    /// ones for two (a keyed hash, the key per destination and held by the
    /// caller). `None`: withheld.
    fn pseudonym(&self, destination: &str, value: &[u8]) -> Option<String>;

    /// Whether a value under `key` may be sent now, at most once per
    /// `interval_ms`; answering yes counts as sending it. The caller holds
    /// the clock and the memory of what was sent.
    fn allow_once_per(&self, key: &str, interval_ms: u64) -> bool;

    /// Adds `value` (a JSON text) to the window `slot` names. The value is
    /// not sent now; the caller sends the window's result when it ends.
    fn accumulate(&self, slot: &WindowSlot<'_>, value: &[u8]);

    /// Whether the user approved `field` of `device`. A field that is not
    /// approved is
    /// shared only by a rule that names it without a wildcard.
    fn field_approved(&self, device: &str, field: &FieldPath) -> bool;

    /// Whether rules for every destination (`*`) reach `destination`: a
    /// destination the user has not approved gets only what rules naming
    /// it share.
    fn destination_approved(&self, destination: &str) -> bool;
}

/// No keys, no clock, no inventory: `seal`, `pseudonymize`, `rate_limit`
/// and `aggregate` withhold, and every field and destination counts as
/// approved (the quarantine is the caller's).
pub struct NoContext;

impl Context for NoContext {
    fn seal(&self, _: &[u8], _: Option<&str>) -> Option<String> {
        None
    }

    fn accumulate(&self, _: &WindowSlot<'_>, _: &[u8]) {}

    fn field_approved(&self, _: &str, _: &FieldPath) -> bool {
        true
    }

    fn destination_approved(&self, _: &str) -> bool {
        true
    }

    fn pseudonym(&self, _: &str, _: &[u8]) -> Option<String> {
        None
    }

    fn allow_once_per(&self, _: &str, _: u64) -> bool {
        false
    }
}

/// The marker `redact` sends.
pub const REDACTED: &str = "[redacted]";

/// How finely `truncate_time` keeps a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl TimeUnit {
    pub const NAMES: &'static [&'static str] = &["second", "minute", "hour", "day"];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "second" => TimeUnit::Second,
            "minute" => TimeUnit::Minute,
            "hour" => TimeUnit::Hour,
            "day" => TimeUnit::Day,
            _ => return None,
        })
    }

    fn seconds(self) -> i64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Minute => 60,
            TimeUnit::Hour => 3600,
            TimeUnit::Day => 86_400,
        }
    }
}

/// An action's parameters, checked when the policy is parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    Round {
        step: f64,
        /// Decimals to write: those of `step` (0.5 → 1, 0.25 → 2).
        decimals: usize,
    },
    Bucket {
        /// Strictly ascending.
        edges: Vec<f64>,
        /// One more than `edges`: below the first edge, between each two,
        /// and from the last one up.
        labels: Vec<String>,
    },
    TruncateTime(TimeUnit),
    CoarsenLocation(Coarsen),
    RateLimit {
        interval_ms: u64,
    },
    Aggregate {
        func: AggregateFn,
        window_ms: u64,
    },
    /// Sealed to someone other than the user: an age X25519 recipient
    /// (`age1…`), checked for its shape here and for its key by the caller.
    SealTo {
        recipient: String,
    },
}

/// How coarse `coarsen_location` makes a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coarsen {
    /// Each coordinate to this many decimals (2 ≈ 1 km, 3 ≈ 110 m).
    Decimals(u32),
    /// The pair to a geohash of this many characters (5 ≈ 5 km, 6 ≈ 1 km).
    Geohash(u32),
}

/// Whether `text` has the shape of an age X25519 recipient: `age1` and 58
/// bech32 characters.
pub fn is_age_recipient(text: &str) -> bool {
    const BECH32: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    text.len() == 62 && text.starts_with("age1") && text[4..].chars().all(|c| BECH32.contains(c))
}

/// The geohash cell of (`lat`, `lon`), `chars` characters long; `None`
/// outside the globe.
pub fn geohash(lat: f64, lon: f64, chars: u32) -> Option<String> {
    const ALPHABET: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return None;
    }
    let (mut lat_lo, mut lat_hi) = (-90.0f64, 90.0f64);
    let (mut lon_lo, mut lon_hi) = (-180.0f64, 180.0f64);
    let mut out = String::with_capacity(chars as usize);
    let mut even = true;
    for _ in 0..chars {
        let mut idx = 0usize;
        for _ in 0..5 {
            let (lo, hi, v) = if even {
                (&mut lon_lo, &mut lon_hi, lon)
            } else {
                (&mut lat_lo, &mut lat_hi, lat)
            };
            let mid = (*lo + *hi) / 2.0;
            idx <<= 1;
            if v >= mid {
                idx |= 1;
                *lo = mid;
            } else {
                *hi = mid;
            }
            even = !even;
        }
        out.push(ALPHABET[idx] as char);
    }
    Some(out)
}

/// The decimals needed to write multiples of `step` exactly.
pub(crate) fn decimals_of(step: f64) -> usize {
    (0..=9)
        .find(|d| {
            let scaled = step * 10f64.powi(*d as i32);
            (scaled - scaled.round()).abs() < 1e-9 * scaled.abs().max(1.0)
        })
        .unwrap_or(9)
}

fn scalar(text: &str) -> Option<Json> {
    RawValue::from_string(text.to_string())
        .ok()
        .map(Json::Scalar)
}

pub(crate) fn number(leaf: &Json) -> Option<f64> {
    match leaf {
        Json::Scalar(raw) => {
            let t = raw.get().trim();
            if t.starts_with('"') {
                return None;
            }
            t.parse::<f64>().ok().filter(|n| n.is_finite())
        }
        _ => None,
    }
}

/// What a shared leaf becomes under `action`; `None`: it is not sent.
pub fn apply(
    action: Action,
    transform: Option<&Transform>,
    leaf: &Json,
    ctx: &dyn Context,
    destination: &str,
) -> Option<Json> {
    match (action, transform) {
        (Action::Seal, t) => {
            let recipient = match t {
                Some(Transform::SealTo { recipient }) => Some(recipient.as_str()),
                _ => None,
            };
            let sealed = ctx.seal(&leaf.to_vec(), recipient)?;
            scalar(&serde_json::to_string(&sealed).ok()?)
        }
        (Action::Pseudonymize, _) => {
            let p = ctx.pseudonym(destination, &leaf.to_vec())?;
            scalar(&serde_json::to_string(&p).ok()?)
        }
        (Action::Drop, _) => None,
        (Action::Share, _) => Some(leaf.clone()),
        (Action::Redact, _) => scalar(&serde_json::to_string(REDACTED).ok()?),
        (Action::Round, Some(Transform::Round { step, decimals })) => {
            let n = number(leaf)?;
            let mut r = (n / step).round() * step;
            if r == 0.0 {
                r = 0.0; // not -0
            }
            scalar(&format!("{r:.decimals$}"))
        }
        (Action::Bucket, Some(Transform::Bucket { edges, labels })) => {
            let n = number(leaf)?;
            let i = edges.iter().take_while(|e| n >= **e).count();
            scalar(&serde_json::to_string(labels.get(i)?).ok()?)
        }
        (Action::TruncateTime, Some(Transform::TruncateTime(unit))) => truncate_time(leaf, *unit),
        (
            Action::CoarsenLocation,
            Some(Transform::CoarsenLocation(Coarsen::Decimals(decimals))),
        ) => {
            // Latitude and longitude, as sibling fields, an object or a
            // [lat, lon] array: each leaf the rule covers is one number.
            // (A geohash needs the pair: evaluation handles it, and a lone
            // coordinate under one falls through to withheld.)
            let n = number(leaf)?;
            if !(-180.0..=180.0).contains(&n) {
                return None;
            }
            let d = *decimals as usize;
            let f = 10f64.powi(*decimals as i32);
            let mut r = (n * f).round() / f;
            if r == 0.0 {
                r = 0.0;
            }
            scalar(&format!("{r:.d$}"))
        }
        // A transforming action without its parameters: refused at parse,
        // and withheld here should one slip through.
        _ => None,
    }
}

fn truncate_time(leaf: &Json, unit: TimeUnit) -> Option<Json> {
    let Json::Scalar(raw) = leaf else {
        return None;
    };
    let t = raw.get().trim();
    if let Some(quoted) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        let cut = truncate_rfc3339(quoted, unit)?;
        return scalar(&serde_json::to_string(&cut).ok()?);
    }
    // Unix time: integers only; milliseconds from 10^11 on (which, as
    // seconds, would be the year 5138).
    let n: i64 = t.parse().ok()?;
    let per = if n.unsigned_abs() >= 100_000_000_000 {
        unit.seconds() * 1000
    } else {
        unit.seconds()
    };
    scalar(&n.div_euclid(per).checked_mul(per)?.to_string())
}

/// `2026-11-30T16:35:14.123+01:00` cut to the hour is
/// `2026-11-30T16:00:00+01:00`: the fields below the unit are zeroed in the
/// time's own offset, the fraction goes, the offset stays.
fn truncate_rfc3339(text: &str, unit: TimeUnit) -> Option<String> {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let zone_ok = rest.is_empty()
        || rest.eq_ignore_ascii_case("z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3]
                .bytes()
                .chain(rest[4..6].bytes())
                .all(|c| c.is_ascii_digit()));
    if !zone_ok {
        return None;
    }
    let (date, hh, mm, ss) = (&text[..10], &text[11..13], &text[14..16], &text[17..19]);
    let time = match unit {
        TimeUnit::Second => format!("{hh}:{mm}:{ss}"),
        TimeUnit::Minute => format!("{hh}:{mm}:00"),
        TimeUnit::Hour => format!("{hh}:00:00"),
        TimeUnit::Day => "00:00:00".to_string(),
    };
    Some(format!("{date}T{time}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(text: &str) -> Json {
        Json::parse(text.as_bytes()).expect("json")
    }

    fn out(action: Action, t: Option<&Transform>, text: &str) -> Option<String> {
        apply(action, t, &leaf(text), &NoContext, "d")
            .map(|j| String::from_utf8(j.to_vec()).expect("utf8"))
    }

    #[test]
    fn redact_and_round() {
        assert_eq!(
            out(Action::Redact, None, "52.37").as_deref(),
            Some("\"[redacted]\"")
        );
        let half = Transform::Round {
            step: 0.5,
            decimals: decimals_of(0.5),
        };
        assert_eq!(
            out(Action::Round, Some(&half), "21.74").as_deref(),
            Some("21.5")
        );
        assert_eq!(
            out(Action::Round, Some(&half), "21.76").as_deref(),
            Some("22.0")
        );
        assert_eq!(
            out(Action::Round, Some(&half), "-0.1").as_deref(),
            Some("0.0")
        );
        let ten = Transform::Round {
            step: 10.0,
            decimals: decimals_of(10.0),
        };
        assert_eq!(
            out(Action::Round, Some(&ten), "1234").as_deref(),
            Some("1230")
        );
        let cent = Transform::Round {
            step: 0.01,
            decimals: decimals_of(0.01),
        };
        assert_eq!(
            out(Action::Round, Some(&cent), "0.126").as_deref(),
            Some("0.13")
        );
        // Not a number: withheld, not sent raw.
        assert_eq!(out(Action::Round, Some(&half), "\"21.7\""), None);
        assert_eq!(out(Action::Round, Some(&half), "true"), None);
    }

    #[test]
    fn coarsen_location() {
        let two = Transform::CoarsenLocation(Coarsen::Decimals(2));
        assert_eq!(
            out(Action::CoarsenLocation, Some(&two), "52.37021").as_deref(),
            Some("52.37")
        );
        assert_eq!(
            out(Action::CoarsenLocation, Some(&two), "-4.8959").as_deref(),
            Some("-4.90")
        );
        assert_eq!(
            out(Action::CoarsenLocation, Some(&two), "500"),
            None,
            "not a coordinate"
        );
        assert_eq!(out(Action::CoarsenLocation, Some(&two), "\"52.3\""), None);
    }

    #[test]
    fn geohash_cells() {
        // The reference point of the geohash literature.
        assert_eq!(
            geohash(57.64911, 10.40744, 11).as_deref(),
            Some("u4pruydqqvj")
        );
        assert_eq!(geohash(52.3702, 4.8952, 5).as_deref(), Some("u173z"));
        assert_eq!(geohash(-33.8688, 151.2093, 6).as_deref(), Some("r3gx2f"));
        assert_eq!(geohash(91.0, 0.0, 5), None);
        assert_eq!(geohash(0.0, 180.5, 5), None);
        // A lone coordinate under a geohash rule is withheld, not sent.
        let gh = Transform::CoarsenLocation(Coarsen::Geohash(5));
        assert_eq!(out(Action::CoarsenLocation, Some(&gh), "52.37"), None);
    }

    #[test]
    fn age_recipients_are_recognised_by_shape() {
        let r = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert!(is_age_recipient(r));
        assert!(!is_age_recipient(&r[..61]));
        assert!(!is_age_recipient(&r.replace("age1", "agf1")));
        assert!(!is_age_recipient(&r.replace('q', "b")), "b is not bech32");
    }

    #[test]
    fn bucket() {
        let b = Transform::Bucket {
            edges: vec![18.0, 65.0],
            labels: vec!["minor".into(), "adult".into(), "senior".into()],
        };
        assert_eq!(
            out(Action::Bucket, Some(&b), "12").as_deref(),
            Some("\"minor\"")
        );
        assert_eq!(
            out(Action::Bucket, Some(&b), "18").as_deref(),
            Some("\"adult\"")
        );
        assert_eq!(
            out(Action::Bucket, Some(&b), "90.5").as_deref(),
            Some("\"senior\"")
        );
        assert_eq!(out(Action::Bucket, Some(&b), "\"x\""), None);
    }

    #[test]
    fn truncate_time_keeps_the_offset_and_the_kind() {
        let hour = Transform::TruncateTime(TimeUnit::Hour);
        let day = Transform::TruncateTime(TimeUnit::Day);
        assert_eq!(
            out(
                Action::TruncateTime,
                Some(&hour),
                "\"2026-11-30T16:35:14.123+01:00\""
            )
            .as_deref(),
            Some("\"2026-11-30T16:00:00+01:00\"")
        );
        assert_eq!(
            out(Action::TruncateTime, Some(&day), "\"2026-11-30T16:35:14Z\"").as_deref(),
            Some("\"2026-11-30T00:00:00Z\"")
        );
        // Unix seconds and milliseconds.
        assert_eq!(
            out(Action::TruncateTime, Some(&hour), "1764520514").as_deref(),
            Some("1764518400")
        );
        assert_eq!(
            out(Action::TruncateTime, Some(&hour), "1764520514123").as_deref(),
            Some("1764518400000")
        );
        for bad in [
            "-9223372036854775808",
            "\"yesterday\"",
            "\"2026-11-30\"",
            "\"2026-11-30T16:35:14+1\"",
            "1.5",
            "{}",
        ] {
            assert_eq!(out(Action::TruncateTime, Some(&hour), bad), None, "{bad}");
        }
    }
}
