//! Evaluation: one message in, one output per destination out.
//!
//! The payload is parsed once. Every leaf field is decided per destination by
//! the most specific matching rule; a field no rule matches is not shared.

use crate::aggregate::WindowSlot;
use crate::json::Json;
use crate::transform::{Coarsen, Context, Transform};

use crate::path::{FieldPath, Segment};
use crate::rule::{Action, DestinationSelector, RuleId, SharingRule};
use crate::Policy;

/// A message as the policy sees it: who sent it and what it says.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub device: &'a str,
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// How one field was decided for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The rule that decided, or `None` when no rule matched (default deny).
    pub rule: Option<RuleId>,
    pub action: Action,
    /// The rule would share the field, but the field is new and held
    /// until the user approves it: `action` is then `Drop`.
    pub held: bool,
}

impl Decision {
    /// Whether the field leaves, as it is or transformed.
    pub fn is_shared(&self) -> bool {
        self.action.sends()
    }
}

/// What one destination receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationOutput {
    pub destination: String,
    /// The payload to forward, or `None` when no field is shared: the whole
    /// message is then not forwarded to this destination.
    pub payload: Option<Vec<u8>>,
    /// One decision per entry of [`Evaluation::fields`], in the same order.
    pub decisions: Vec<Decision>,
    /// The destination is new: rules for every destination (`*`) did not
    /// reach it, only rules that name it.
    pub held: bool,
    /// Per entry of [`Evaluation::fields`]: whether its value is in
    /// `payload` (transformed or not). A shared field can still be left out
    /// (`rate_limit` between sends, a value its action cannot read, no key
    /// to seal with): what left is this, not the decisions.
    pub sent: Vec<bool>,
}

/// The result of evaluating one message against one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Every leaf field of the message, in payload order.
    pub fields: Vec<FieldPath>,
    pub outputs: Vec<DestinationOutput>,
    /// The payload starts like JSON (`{` or `[`) but does not parse: its
    /// fields cannot be told apart, so it goes to no destination, whatever
    /// the rules say.
    pub malformed: bool,
}

enum Body {
    /// A JSON object, or a JSON array (its elements addressed `[i]`).
    Structured(Json),
    Opaque,
    Malformed,
}

/// Whether a payload is meant as a JSON object or array: its first
/// non-blank byte is `{` or `[`.
pub fn looks_like_json(payload: &[u8]) -> bool {
    matches!(payload.trim_ascii_start().first(), Some(b'{' | b'['))
}

pub(crate) fn evaluate<S: AsRef<str>>(
    policy: &Policy,
    msg: &Message<'_>,
    destinations: &[S],
    ctx: &dyn Context,
) -> Evaluation {
    let body = match Json::parse(msg.payload) {
        Ok(v) if v.is_structured() => Body::Structured(v),
        Ok(_) => Body::Opaque,
        Err(_) if looks_like_json(msg.payload) => Body::Malformed,
        Err(_) => Body::Opaque,
    };
    let fields = match &body {
        Body::Structured(v) => {
            let mut out = Vec::new();
            collect_leaves(v, &mut Vec::new(), &mut out);
            out
        }
        Body::Opaque => vec![FieldPath::whole_payload()],
        Body::Malformed => Vec::new(),
    };

    // Only the rules about this device can decide anything; their ranks
    // are worked out once per message, not once per field.
    let for_device: Vec<Candidate<'_>> = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.device.selects(msg.device, &policy.groups) && r.covers_topic(msg.topic))
        .map(|(i, r)| (RuleId(i), r, r.rank()))
        .collect();

    // Asked once per field, not per destination: the inventory is the
    // caller's, behind a lock.
    let approved: Vec<bool> = if policy.quarantines(msg.device) {
        fields
            .iter()
            .map(|f| ctx.field_approved(msg.device, f))
            .collect()
    } else {
        vec![true; fields.len()]
    };

    let outputs = destinations
        .iter()
        .map(|dest| {
            let dest = dest.as_ref();
            let approved_dest = ctx.destination_approved(dest);
            let candidates: Vec<&Candidate<'_>> = for_device
                .iter()
                .filter(|(_, r, _)| r.destination.selects(dest))
                .collect();
            let decisions: Vec<Decision> = fields
                .iter()
                .zip(&approved)
                .map(|(f, ok)| {
                    let d = decide(&candidates, f, *ok);
                    // A new destination: a rule for every destination still
                    // decides (its drops and transforms hold), but what it
                    // would share is withheld until the user approves.
                    let wildcard = d
                        .rule
                        .and_then(|id| policy.rules.get(id.0))
                        .is_some_and(|r| matches!(r.destination, DestinationSelector::Any));
                    if !approved_dest && wildcard && d.action.sends() {
                        Decision {
                            action: Action::Drop,
                            ..d
                        }
                    } else {
                        d
                    }
                })
                .collect();
            let mut sent = vec![false; fields.len()];
            let payload = if decisions.iter().any(Decision::is_shared) {
                let out = Out {
                    rules: &policy.rules,
                    ctx,
                    destination: dest,
                    device: msg.device,
                    topic: msg.topic,
                    fields: &fields,
                };
                match &body {
                    // Shared scalars leave exactly as the device wrote them;
                    // transformed ones as their action makes them.
                    Body::Structured(v) => {
                        let mut buf = Vec::with_capacity(msg.payload.len());
                        write_filtered(v, &decisions, &mut 0, &out, &mut buf, &mut sent)
                            .then_some(buf)
                    }
                    Body::Opaque => {
                        let p = opaque(msg.payload, &decisions, &out);
                        if let Some(s) = sent.first_mut() {
                            *s = p.is_some();
                        }
                        p
                    }
                    Body::Malformed => None,
                }
            } else {
                None
            };
            DestinationOutput {
                destination: dest.to_string(),
                payload,
                decisions,
                held: !approved_dest,
                sent,
            }
        })
        .collect();

    Evaluation {
        fields,
        outputs,
        malformed: matches!(body, Body::Malformed),
    }
}

/// The most specific matching rule decides; a field that is not approved
/// is held from every rule that does not name it (see
/// [`FieldPattern::names`](crate::FieldPattern::names)).
type Candidate<'a> = (RuleId, &'a SharingRule, crate::rule::Rank);

fn decide(candidates: &[&Candidate<'_>], field: &FieldPath, approved: bool) -> Decision {
    let mut best: Option<&Candidate<'_>> = None;
    for c in candidates {
        let (_, rule, rank) = c;
        // Validation rejects ties, so `>` picks the one winner; file order
        // breaks any tie that slipped through, deterministically.
        if best.is_none_or(|(_, _, b)| rank > b) && rule.field.matches(field) {
            best = Some(c);
        }
    }
    match best {
        Some((id, rule, _)) => {
            let (id, action) = (*id, rule.action);
            let held = action.sends() && !approved && !rule.field.names(field);
            Decision {
                rule: Some(id),
                action: if held { Action::Drop } else { action },
                held,
            }
        }
        None => Decision {
            rule: None,
            action: Action::Drop,
            held: false,
        },
    }
}

/// Leaves are scalars and empty containers; traversal order here and in
/// [`write_filtered`] must be the same.
fn collect_leaves(v: &Json, prefix: &mut Vec<Segment>, out: &mut Vec<FieldPath>) {
    match v {
        Json::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(Segment::Key(k.clone()));
                collect_leaves(child, prefix, out);
                prefix.pop();
            }
        }
        Json::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Segment::Index(i));
                collect_leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => out.push(FieldPath::from_segments(prefix.clone())),
    }
}

/// `$payload` under its deciding action: as it is for `share`, else
/// transformed as a JSON scalar (a number, say), or withheld.
fn opaque(payload: &[u8], decisions: &[Decision], out: &Out<'_>) -> Option<Vec<u8>> {
    let d = decisions.first()?;
    match d.action {
        Action::Drop => None,
        Action::Share => Some(payload.to_vec()),
        Action::Redact => Some(crate::transform::REDACTED.as_bytes().to_vec()),
        // Any payload, JSON or not, sealed or pseudonymized whole.
        Action::Seal => {
            let recipient = match out.transform(d) {
                Some(Transform::SealTo { recipient }) => Some(recipient.as_str()),
                _ => None,
            };
            out.ctx.seal(payload, recipient).map(String::into_bytes)
        }
        Action::Pseudonymize => out
            .ctx
            .pseudonym(out.destination, payload)
            .map(String::into_bytes),
        Action::Aggregate => {
            out.accumulate(d, payload, 0);
            None
        }
        Action::RateLimit => {
            // Any payload: as it is, when its turn comes.
            let leaf = Json::Scalar(serde_json::value::RawValue::from_string("null".into()).ok()?);
            out.apply(Action::RateLimit, d, &leaf, 0)
                .map(|_| payload.to_vec())
        }
        action => {
            let leaf = Json::parse(payload).ok()?;
            out.apply(action, d, &leaf, 0).map(|j| j.to_vec())
        }
    }
}

/// What a leaf's action needs: the rules (for parameters), the caller's
/// context, and the destination the output is for.
struct Out<'a> {
    rules: &'a [SharingRule],
    ctx: &'a dyn Context,
    destination: &'a str,
    device: &'a str,
    topic: &'a str,
    /// Every leaf's path, in order (for `rate_limit`'s key).
    fields: &'a [FieldPath],
}

impl Out<'_> {
    fn transform(&self, d: &Decision) -> Option<&Transform> {
        d.rule
            .and_then(|id| self.rules.get(id.0))
            .and_then(|r| r.transform.as_ref())
    }

    /// Hands the value of leaf `index` to its window; nothing is sent now.
    fn accumulate(&self, d: &Decision, value: &[u8], index: usize) {
        let rule = d.rule.and_then(|id| self.rules.get(id.0));
        if let (Some(rule), Some(Transform::Aggregate { func, window_ms }), Some(field)) =
            (rule, self.transform(d), self.fields.get(index))
        {
            self.ctx.accumulate(
                &WindowSlot {
                    device: self.device,
                    topic: self.topic,
                    destination: self.destination,
                    field,
                    func: *func,
                    window_ms: *window_ms,
                    rule: &rule.id,
                },
                value,
            );
        }
    }

    /// The geohash precision that decides leaf `index`, if a geohash does.
    fn geohash_of(&self, decisions: &[Decision], index: usize) -> Option<u32> {
        let d = decisions.get(index)?;
        match (d.action, self.transform(d)) {
            (Action::CoarsenLocation, Some(Transform::CoarsenLocation(Coarsen::Geohash(n)))) => {
                Some(*n)
            }
            _ => None,
        }
    }

    fn apply(&self, action: Action, d: &Decision, leaf: &Json, index: usize) -> Option<Json> {
        let rule = d.rule.and_then(|id| self.rules.get(id.0));
        let t = rule.and_then(|r| r.transform.as_ref());
        if action == Action::Aggregate {
            self.accumulate(d, &leaf.to_vec(), index);
            return None;
        }
        if let (Action::RateLimit, Some(Transform::RateLimit { interval_ms })) = (action, t) {
            // Once per interval per rule, device, destination and field.
            let field = self
                .fields
                .get(index)
                .map(|f| f.to_string())
                .unwrap_or_default();
            let id = rule.map_or("", |r| r.id.as_str());
            let key = format!(
                "{id}\u{1f}{}\u{1f}{}\u{1f}{field}",
                self.device, self.destination
            );
            return self
                .ctx
                .allow_once_per(&key, *interval_ms)
                .then(|| leaf.clone());
        }
        crate::transform::apply(action, t, leaf, self.ctx, self.destination)
    }
}

/// Writes `v` to `buf` with only the shared leaves, each as its action
/// makes it; returns whether anything was written. A container left empty
/// vanishes (what was begun for it is taken back); array elements keep
/// their relative order. Written straight to bytes: a shared leaf is
/// copied as the device wrote it, with no tree in between.
fn write_filtered(
    v: &Json,
    decisions: &[Decision],
    idx: &mut usize,
    out: &Out<'_>,
    buf: &mut Vec<u8>,
    sent: &mut [bool],
) -> bool {
    match v {
        Json::Object(m) if !m.is_empty() => {
            let start = buf.len();
            buf.push(b'{');
            let mut any = false;
            let pair = geohash_pair(m, decisions, *idx, out);
            for (i, (k, child)) in m.iter().enumerate() {
                let mark = buf.len();
                if any {
                    buf.push(b',');
                }
                let wrote = match &pair {
                    // The pair leaves as one cell, where the latitude stood.
                    Some((lat, lon, cell)) if i == *lat => {
                        *idx += 1;
                        match cell {
                            Some(c) => {
                                crate::json::write_key(buf, "geohash");
                                c.write(buf);
                                mark_pair(m, *idx - 1, *lat, *lon, sent);
                                true
                            }
                            None => false,
                        }
                    }
                    Some((_, lon, _)) if i == *lon => {
                        *idx += 1;
                        false
                    }
                    _ => {
                        crate::json::write_key(buf, k);
                        write_filtered(child, decisions, idx, out, buf, sent)
                    }
                };
                if wrote {
                    any = true;
                } else {
                    buf.truncate(mark);
                }
            }
            if any {
                buf.push(b'}');
            } else {
                buf.truncate(start);
            }
            any
        }
        Json::Array(a) if !a.is_empty() => {
            // `[lat, lon]` under a geohash: one cell in place of the array.
            if let [Json::Scalar(_), Json::Scalar(_)] = a.as_slice() {
                let (lat_ix, lon_ix) = (*idx, *idx + 1);
                if let (Some(p1), Some(p2)) = (
                    out.geohash_of(decisions, lat_ix),
                    out.geohash_of(decisions, lon_ix),
                ) {
                    *idx += 2;
                    return match cell(&a[0], &a[1], p1.min(p2)) {
                        Some(c) => {
                            c.write(buf);
                            for i in [lat_ix, lon_ix] {
                                if let Some(s) = sent.get_mut(i) {
                                    *s = true;
                                }
                            }
                            true
                        }
                        None => false,
                    };
                }
            }
            let start = buf.len();
            buf.push(b'[');
            let mut any = false;
            for child in a {
                let mark = buf.len();
                if any {
                    buf.push(b',');
                }
                if write_filtered(child, decisions, idx, out, buf, sent) {
                    any = true;
                } else {
                    buf.truncate(mark);
                }
            }
            if any {
                buf.push(b']');
            } else {
                buf.truncate(start);
            }
            any
        }
        leaf => {
            let index = *idx;
            *idx += 1;
            let Some(d) = decisions.get(index) else {
                return false;
            };
            let wrote = if d.action == Action::Share {
                leaf.write(buf);
                true
            } else {
                match out.apply(d.action, d, leaf, index) {
                    Some(j) => {
                        j.write(buf);
                        true
                    }
                    None => false,
                }
            };
            if wrote {
                if let Some(s) = sent.get_mut(index) {
                    *s = true;
                }
            }
            wrote
        }
    }
}

/// Marks the latitude (leaf `lat_leaf`) and the longitude of a pair that
/// left as one geohash cell.
fn mark_pair(m: &[(String, Json)], lat_leaf: usize, lat: usize, lon: usize, sent: &mut [bool]) {
    // Members' leaves follow their order; the pair's two are scalars.
    let between = |r: std::ops::Range<usize>| -> usize {
        m.get(r)
            .map_or(0, |ms| ms.iter().map(|(_, v)| leaf_count(v)).sum())
    };
    let lon_leaf = if lon > lat {
        lat_leaf + between(lat..lon)
    } else {
        lat_leaf.saturating_sub(between(lon..lat))
    };
    for i in [lat_leaf, lon_leaf] {
        if let Some(s) = sent.get_mut(i) {
            *s = true;
        }
    }
}

const LATITUDE: &[&str] = &["lat", "latitude"];
const LONGITUDE: &[&str] = &["lon", "lng", "long", "longitude"];

/// In an object whose members start at leaf `first`: a latitude and a
/// longitude member, both scalars and both decided by a geohash. Gives
/// their member positions and the cell (`None`: withheld, for a pair that
/// is not on the globe, or an object that already has a `geohash` member
/// the cell would collide with).
fn geohash_pair(
    m: &[(String, Json)],
    decisions: &[Decision],
    first: usize,
    out: &Out<'_>,
) -> Option<(usize, usize, Option<Json>)> {
    let lat = m
        .iter()
        .position(|(k, v)| LATITUDE.contains(&k.as_str()) && matches!(v, Json::Scalar(_)))?;
    let lon = m
        .iter()
        .position(|(k, v)| LONGITUDE.contains(&k.as_str()) && matches!(v, Json::Scalar(_)))?;
    let mut leaf = first;
    let mut at = vec![0usize; m.len()];
    for (i, (_, v)) in m.iter().enumerate() {
        at[i] = leaf;
        leaf += leaf_count(v);
    }
    let p1 = out.geohash_of(decisions, at[lat])?;
    let p2 = out.geohash_of(decisions, at[lon])?;
    let clash = m.iter().any(|(k, _)| k == "geohash");
    let value = if clash {
        None
    } else {
        cell(&m[lat].1, &m[lon].1, p1.min(p2))
    };
    Some((lat, lon, value))
}

fn cell(lat: &Json, lon: &Json, chars: u32) -> Option<Json> {
    let (lat, lon) = (
        crate::transform::number(lat)?,
        crate::transform::number(lon)?,
    );
    let hash = crate::transform::geohash(lat, lon, chars)?;
    serde_json::value::RawValue::from_string(format!("\"{hash}\""))
        .ok()
        .map(Json::Scalar)
}

/// How many leaves [`collect_leaves`] finds in `v`.
fn leaf_count(v: &Json) -> usize {
    match v {
        Json::Object(m) if !m.is_empty() => m.iter().map(|(_, c)| leaf_count(c)).sum(),
        Json::Array(a) if !a.is_empty() => a.iter().map(leaf_count).sum(),
        _ => 1,
    }
}
