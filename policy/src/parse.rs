//! Policy text (TOML) to a validated [`Policy`], with every error tied to a
//! line and column. The syntax is documented in `docs/policy.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::aggregate::AggregateFn;
use crate::path::FieldPattern;
use crate::retention::{Keep, RetainRule};
use crate::rule::{
    Action, CommandRule, DestinationSelector, DeviceSelector, Position, SharingRule,
};
use crate::transform::{Coarsen, TimeUnit, Transform};
use crate::{topic, Policy};

/// Why policy text was rejected. The previous policy stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy error at {position}: {message}")]
pub struct PolicyError {
    pub position: Position,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    groups: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    command: Vec<Spanned<RawCommand>>,
    #[serde(default)]
    retain: Vec<Spanned<RawRetain>>,
    #[serde(default)]
    quarantine: Option<RawQuarantine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuarantine {
    /// Devices (ids, `@group`s or `*`) whose new fields are not held.
    #[serde(default)]
    exempt: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetain {
    device: Spanned<String>,
    #[serde(default)]
    field: Option<Spanned<String>>,
    keep: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<Spanned<String>>,
    device: Spanned<String>,
    #[serde(default)]
    topic: Option<Spanned<String>>,
    field: Spanned<String>,
    destination: Spanned<String>,
    action: Spanned<String>,
    /// `round`: the step.
    #[serde(default)]
    step: Option<Spanned<f64>>,
    /// `bucket`: ascending edges, and one more label than edges.
    #[serde(default)]
    edges: Option<Spanned<Vec<f64>>>,
    #[serde(default)]
    labels: Option<Spanned<Vec<String>>>,
    /// `truncate_time`: second, minute, hour or day.
    #[serde(default)]
    unit: Option<Spanned<String>>,
    /// `coarsen_location`: decimals kept, 0 to 6.
    #[serde(default)]
    decimals: Option<Spanned<i64>>,
    /// `coarsen_location`: geohash characters kept, 1 to 12.
    #[serde(default)]
    geohash: Option<Spanned<i64>>,
    /// `rate_limit`: a duration such as "1m".
    #[serde(default)]
    interval: Option<Spanned<String>>,
    /// `aggregate`: min, max, mean, sum or count.
    #[serde(default, rename = "fn")]
    func: Option<Spanned<String>>,
    /// `aggregate`: a duration such as "1h".
    #[serde(default)]
    window: Option<Spanned<String>>,
    /// `seal`: an age recipient (`age1…`) instead of the user's own key.
    #[serde(default)]
    recipient: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    device: Spanned<String>,
    destination: Spanned<String>,
    #[serde(default)]
    topic: Option<Spanned<String>>,
}

/// Maps byte offsets in the source to 1-based line and column.
struct Locator<'a> {
    src: &'a str,
}

impl Locator<'_> {
    fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.src.len());
        let before = self.src.get(..offset).unwrap_or(self.src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Position { line, column }
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            position: self.position(span.start),
            message: message.into(),
        }
    }
}

/// An identifier for devices, groups and destinations: what ends up in
/// topics and URLs, so kept to a safe alphabet.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn parse(src: &str) -> Result<Policy, PolicyError> {
    let loc = Locator { src };
    let raw: RawPolicy = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        loc.error(span, e.message().trim().to_string())
    })?;

    let mut groups = BTreeMap::new();
    for (name, members) in &raw.groups {
        if !is_valid_name(name) {
            return Err(loc.error(
                members.span(),
                format!("group name {name:?} may use only letters, digits, '_' and '-'"),
            ));
        }
        let mut set = BTreeSet::new();
        for m in members.get_ref() {
            if !is_valid_name(m.get_ref()) {
                return Err(loc.error(
                    m.span(),
                    format!("{:?} is not a valid device id", m.get_ref()),
                ));
            }
            set.insert(m.get_ref().clone());
        }
        groups.insert(name.clone(), set);
    }

    let device = |s: &Spanned<String>| -> Result<DeviceSelector, PolicyError> {
        let text = s.get_ref().as_str();
        if text == "*" {
            Ok(DeviceSelector::Any)
        } else if let Some(g) = text.strip_prefix('@') {
            if groups.contains_key(g) {
                Ok(DeviceSelector::Group(g.to_string()))
            } else {
                Err(loc.error(s.span(), format!("group {g:?} is not defined in [groups]")))
            }
        } else if is_valid_name(text) {
            Ok(DeviceSelector::Device(text.to_string()))
        } else {
            Err(loc.error(
                s.span(),
                format!("{text:?} is not a device id, '@group' or '*'"),
            ))
        }
    };
    let destination = |s: &Spanned<String>| -> Result<DestinationSelector, PolicyError> {
        let text = s.get_ref().as_str();
        if text == "*" {
            Ok(DestinationSelector::Any)
        } else if is_valid_name(text) {
            Ok(DestinationSelector::Named(text.to_string()))
        } else {
            Err(loc.error(
                s.span(),
                format!("{text:?} is not a destination name or '*'"),
            ))
        }
    };

    let mut rules = Vec::with_capacity(raw.rule.len());
    for r in &raw.rule {
        let body = r.get_ref();
        let field = FieldPattern::parse(body.field.get_ref())
            .map_err(|e| loc.error(body.field.span(), e.to_string()))?;
        let action = Action::parse(body.action.get_ref()).ok_or_else(|| {
            loc.error(
                body.action.span(),
                format!(
                    "unknown action {:?}; this version supports: {}",
                    body.action.get_ref(),
                    Action::NAMES.join(", ")
                ),
            )
        })?;
        let transform = transform_of(&loc, body, action, r.span())?;
        let (device, destination) = (device(&body.device)?, destination(&body.destination)?);
        let topic = match &body.topic {
            Some(t) if !topic::is_valid_filter(t.get_ref()) => {
                return Err(loc.error(
                    t.span(),
                    format!("{:?} is not a valid MQTT topic filter", t.get_ref()),
                ))
            }
            Some(t) => Some(t.get_ref().clone()),
            None => None,
        };
        let id = match &body.name {
            Some(n) if !is_valid_name(n.get_ref()) => {
                return Err(loc.error(
                    n.span(),
                    format!(
                        "rule name {:?} may use only letters, digits, '_' and '-'",
                        n.get_ref()
                    ),
                ))
            }
            Some(n) => n.get_ref().clone(),
            None => {
                SharingRule::content_id(&device, topic.as_deref(), &field, &destination, action)
            }
        };
        if let Some(other) = rules.iter().find(|o: &&SharingRule| o.id == id) {
            let span = body.name.as_ref().map_or(r.span(), |n| n.span());
            return Err(loc.error(
                span,
                format!(
                    "rule id {id:?} is already used by the rule at {}{}",
                    other.position,
                    if body.name.is_none() {
                        " (the same rule twice)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        rules.push(SharingRule {
            id,
            device,
            topic,
            field,
            destination,
            action,
            transform,
            position: loc.position(r.span().start),
        });
    }

    let mut commands = Vec::with_capacity(raw.command.len());
    for c in &raw.command {
        let body = c.get_ref();
        let topic = match &body.topic {
            Some(t) if !topic::is_valid_filter(t.get_ref()) => {
                return Err(loc.error(
                    t.span(),
                    format!("{:?} is not a valid MQTT topic filter", t.get_ref()),
                ))
            }
            Some(t) => t.get_ref().clone(),
            None => "#".to_string(),
        };
        commands.push(CommandRule {
            device: device(&body.device)?,
            destination: destination(&body.destination)?,
            topic,
            position: loc.position(c.span().start),
        });
    }

    let mut retain: Vec<RetainRule> = Vec::with_capacity(raw.retain.len());
    for r in &raw.retain {
        let body = r.get_ref();
        let keep = Keep::parse(body.keep.get_ref()).ok_or_else(|| {
            loc.error(
                body.keep.span(),
                format!(
                    "keep {:?} is not \"none\", \"forever\" or a duration such as \"30d\"",
                    body.keep.get_ref()
                ),
            )
        })?;
        let field = match &body.field {
            Some(f) => {
                if keep != Keep::Nothing {
                    return Err(loc.error(
                        body.keep.span(),
                        "per field, only keep = \"none\" is supported (a stored record is one whole message)",
                    ));
                }
                Some(
                    FieldPattern::parse(f.get_ref())
                        .map_err(|e| loc.error(f.span(), e.to_string()))?,
                )
            }
            None => None,
        };
        let rule = RetainRule {
            device: device(&body.device)?,
            field,
            keep,
            position: loc.position(r.span().start),
        };
        if let Some(first) = retain
            .iter()
            .find(|o| o.device == rule.device && o.field == rule.field)
        {
            return Err(loc.error(
                r.span(),
                format!(
                    "retention for device {} is given twice (first at {})",
                    rule.device, first.position
                ),
            ));
        }
        retain.push(rule);
    }

    let mut quarantine_exempt = Vec::new();
    for d in raw.quarantine.iter().flat_map(|q| &q.exempt) {
        quarantine_exempt.push((device(d)?, loc.position(d.span().start)));
    }

    let policy = Policy {
        rules,
        commands,
        groups,
        retain,
        quarantine_exempt,
    };
    check_ties(&policy)?;
    Ok(policy)
}

/// The parameters `action` needs, from the rule's keys; a key the action
/// does not take is an error too, so a typo does not pass unnoticed.
fn transform_of(
    loc: &Locator<'_>,
    body: &RawRule,
    action: Action,
    whole: Range<usize>,
) -> Result<Option<Transform>, PolicyError> {
    let name = action.as_str();
    let unexpected = [
        (
            "step",
            body.step.as_ref().map(|s| s.span()),
            action == Action::Round,
        ),
        (
            "edges",
            body.edges.as_ref().map(|s| s.span()),
            action == Action::Bucket,
        ),
        (
            "labels",
            body.labels.as_ref().map(|s| s.span()),
            action == Action::Bucket,
        ),
        (
            "unit",
            body.unit.as_ref().map(|s| s.span()),
            action == Action::TruncateTime,
        ),
        (
            "decimals",
            body.decimals.as_ref().map(|s| s.span()),
            action == Action::CoarsenLocation,
        ),
        (
            "geohash",
            body.geohash.as_ref().map(|s| s.span()),
            action == Action::CoarsenLocation,
        ),
        (
            "interval",
            body.interval.as_ref().map(|s| s.span()),
            action == Action::RateLimit,
        ),
        (
            "fn",
            body.func.as_ref().map(|s| s.span()),
            action == Action::Aggregate,
        ),
        (
            "window",
            body.window.as_ref().map(|s| s.span()),
            action == Action::Aggregate,
        ),
        (
            "recipient",
            body.recipient.as_ref().map(|s| s.span()),
            action == Action::Seal,
        ),
    ];
    for (key, span, wanted) in unexpected {
        if let (Some(span), false) = (span, wanted) {
            return Err(loc.error(span, format!("action {name:?} takes no {key:?}")));
        }
    }
    let missing = |key: &str| loc.error(whole.clone(), format!("action {name:?} needs {key:?}"));
    Ok(match action {
        Action::Round => {
            let step = body.step.as_ref().ok_or_else(|| missing("step"))?;
            let v = *step.get_ref();
            if !(v.is_finite() && v > 0.0) {
                return Err(loc.error(step.span(), "step must be a number above 0"));
            }
            Some(Transform::Round {
                step: v,
                decimals: crate::transform::decimals_of(v),
            })
        }
        Action::Bucket => {
            let edges = body.edges.as_ref().ok_or_else(|| missing("edges"))?;
            let labels = body.labels.as_ref().ok_or_else(|| missing("labels"))?;
            let (e, l) = (edges.get_ref(), labels.get_ref());
            if e.is_empty()
                || !e.iter().all(|x| x.is_finite())
                || e.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(loc.error(
                    edges.span(),
                    "edges must be finite numbers in ascending order, at least one",
                ));
            }
            if l.len() != e.len() + 1 {
                return Err(loc.error(
                    labels.span(),
                    format!(
                        "{} edges make {} intervals: give {} labels",
                        e.len(),
                        e.len() + 1,
                        e.len() + 1
                    ),
                ));
            }
            Some(Transform::Bucket {
                edges: e.clone(),
                labels: l.clone(),
            })
        }
        Action::TruncateTime => {
            let unit = body.unit.as_ref().ok_or_else(|| missing("unit"))?;
            let u = TimeUnit::parse(unit.get_ref()).ok_or_else(|| {
                loc.error(
                    unit.span(),
                    format!(
                        "unit {:?} is not one of {}",
                        unit.get_ref(),
                        TimeUnit::NAMES.join(", ")
                    ),
                )
            })?;
            Some(Transform::TruncateTime(u))
        }
        Action::CoarsenLocation => match (&body.decimals, &body.geohash) {
            (Some(d), None) => {
                let v = *d.get_ref();
                if !(0..=6).contains(&v) {
                    return Err(loc.error(
                        d.span(),
                        "decimals must be 0 to 6 (2 is about 1 km, 3 about 110 m)",
                    ));
                }
                Some(Transform::CoarsenLocation(Coarsen::Decimals(v as u32)))
            }
            (None, Some(g)) => {
                let v = *g.get_ref();
                if !(1..=12).contains(&v) {
                    return Err(loc.error(
                        g.span(),
                        "geohash must be 1 to 12 characters (5 is about 5 km, 6 about 1 km)",
                    ));
                }
                Some(Transform::CoarsenLocation(Coarsen::Geohash(v as u32)))
            }
            (Some(_), Some(g)) => {
                return Err(loc.error(g.span(), "give either decimals or geohash, not both"))
            }
            (None, None) => return Err(missing("decimals or geohash")),
        },
        Action::Aggregate => {
            let f = body.func.as_ref().ok_or_else(|| missing("fn"))?;
            let func = AggregateFn::parse(f.get_ref()).ok_or_else(|| {
                loc.error(
                    f.span(),
                    format!(
                        "fn {:?} is not one of {}",
                        f.get_ref(),
                        AggregateFn::NAMES.join(", ")
                    ),
                )
            })?;
            let w = body.window.as_ref().ok_or_else(|| missing("window"))?;
            let window_ms = crate::retention::parse_duration_ms(w.get_ref())
                .filter(|ms| *ms >= 1000 && *ms <= 31 * 86_400_000)
                .ok_or_else(|| {
                    loc.error(
                        w.span(),
                        format!(
                            "window {:?} is not a duration from 1s to 31d, such as \"1h\"",
                            w.get_ref()
                        ),
                    )
                })?;
            Some(Transform::Aggregate { func, window_ms })
        }
        Action::Seal => match &body.recipient {
            Some(r) if !crate::transform::is_age_recipient(r.get_ref()) => {
                return Err(loc.error(
                    r.span(),
                    format!(
                        "recipient {:?} is not an age public key (age1 and 58 more characters)",
                        r.get_ref()
                    ),
                ))
            }
            Some(r) => Some(Transform::SealTo {
                recipient: r.get_ref().clone(),
            }),
            None => None,
        },
        Action::RateLimit => {
            let i = body.interval.as_ref().ok_or_else(|| missing("interval"))?;
            let ms = crate::retention::parse_duration_ms(i.get_ref())
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    loc.error(
                        i.span(),
                        format!(
                            "interval {:?} is not a duration such as \"1m\"",
                            i.get_ref()
                        ),
                    )
                })?;
            Some(Transform::RateLimit { interval_ms: ms })
        }
        Action::Share | Action::Drop | Action::Redact | Action::Pseudonymize => None,
    })
}

/// Rejects two rules that could both decide the same field of the same
/// device for the same destination with equal specificity: resolution would
/// have no winner.
fn check_ties(policy: &Policy) -> Result<(), PolicyError> {
    let rules = &policy.rules;
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.rank() != b.rank() || a.destination != b.destination {
                continue;
            }
            let same_devices = match (&a.device, &b.device) {
                (DeviceSelector::Group(x), DeviceSelector::Group(y)) => {
                    x == y
                        || policy
                            .groups
                            .get(x)
                            .zip(policy.groups.get(y))
                            .is_some_and(|(p, q)| !p.is_disjoint(q))
                }
                (x, y) => x == y,
            };
            // Rules for topics that no message can match both of do not
            // meet.
            let same_topics = match (&a.topic, &b.topic) {
                (Some(x), Some(y)) => topic::filters_overlap(x, y),
                _ => true,
            };
            if same_devices && same_topics && a.field.ties_with(&b.field) {
                return Err(PolicyError {
                    position: b.position,
                    message: format!(
                        "this rule (device {}, field {}, destination {}) ties with the rule at {} \
                         (device {}, field {}, destination {}): both match the same field equally \
                         specifically; make one of them more specific or remove one",
                        b.device,
                        b.field,
                        b.destination,
                        a.position,
                        a.device,
                        a.field,
                        a.destination
                    ),
                });
            }
        }
    }
    Ok(())
}
