//! Field paths: where a value sits inside a message, and the patterns that
//! rules use to address them.
//!
//! A concrete [`FieldPath`] is built from the parsed payload, so keys that
//! contain `.` or `[` never make it ambiguous. A [`FieldPattern`] is parsed
//! from policy text: `temp`, `loc.lat`, `items[*].c`, `a.*`, `*` (every
//! field) and `$payload` (the whole body of a message that is not a JSON
//! object).

use std::fmt;

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Where one value sits in a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldPath {
    segments: Vec<Segment>,
    /// The whole payload of a message that is not a JSON object.
    whole_payload: bool,
}

impl FieldPath {
    /// The path of a non-JSON (or non-object) payload: `$payload`.
    pub fn whole_payload() -> Self {
        Self {
            segments: Vec::new(),
            whole_payload: true,
        }
    }

    pub fn from_segments(segments: Vec<Segment>) -> Self {
        Self {
            segments,
            whole_payload: false,
        }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn is_whole_payload(&self) -> bool {
        self.whole_payload
    }

    /// The field as the quarantine knows it: every array index written
    /// `[*]`, so `nets[0].ssid` and `nets[7].ssid` are one field, and a
    /// list that grows does not bring "new" fields with every element.
    pub fn generic(&self) -> String {
        if self.whole_payload {
            return WHOLE_PAYLOAD.to_string();
        }
        let mut out = String::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => out.push_str(k),
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Index(_) => out.push_str("[*]"),
            }
        }
        out
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.whole_payload {
            return f.write_str(WHOLE_PAYLOAD);
        }
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The field name that stands for a whole non-JSON payload.
pub const WHOLE_PAYLOAD: &str = "$payload";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternSegment {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

impl PatternSegment {
    fn matches(&self, seg: &Segment) -> bool {
        match (self, seg) {
            (PatternSegment::Key(p), Segment::Key(k)) => p == k,
            (PatternSegment::AnyKey, Segment::Key(_)) => true,
            (PatternSegment::Index(p), Segment::Index(i)) => p == i,
            (PatternSegment::AnyIndex, Segment::Index(_)) => true,
            _ => false,
        }
    }

    fn is_literal(&self) -> bool {
        matches!(self, PatternSegment::Key(_) | PatternSegment::Index(_))
    }

    /// Whether some concrete segment matches both.
    fn overlaps(&self, other: &PatternSegment) -> bool {
        use PatternSegment::*;
        match (self, other) {
            (Key(a), Key(b)) => a == b,
            (Index(a), Index(b)) => a == b,
            (Key(_) | AnyKey, Key(_) | AnyKey) => true,
            (Index(_) | AnyIndex, Index(_) | AnyIndex) => true,
            _ => false,
        }
    }
}

/// A field pattern from a rule. It matches a field and everything below it:
/// `loc` covers `loc.lat` and `loc.lon`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPattern {
    text: String,
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternKind {
    Everything,
    WholePayload,
    Segments(Vec<PatternSegment>),
}

/// How specific a field pattern is, compared lexicographically: a deeper
/// pattern beats a shallower one, and at equal depth more literal segments
/// beat wildcards. `*` is the least specific of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldSpecificity {
    depth: usize,
    literals: usize,
}

/// Why a field pattern could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path {text:?}: {reason}")]
pub struct PatternError {
    pub text: String,
    pub reason: &'static str,
}

impl FieldPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            text: text.to_string(),
            reason,
        };
        let kind = match text {
            "" => return Err(err("it is empty")),
            "*" => PatternKind::Everything,
            WHOLE_PAYLOAD => PatternKind::WholePayload,
            _ => PatternKind::Segments(parse_segments(text).map_err(err)?),
        };
        Ok(Self {
            text: text.to_string(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, path: &FieldPath) -> bool {
        match &self.kind {
            PatternKind::Everything => true,
            PatternKind::WholePayload => path.is_whole_payload(),
            PatternKind::Segments(segs) => {
                !path.is_whole_payload()
                    && segs.len() <= path.segments().len()
                    && segs.iter().zip(path.segments()).all(|(p, s)| p.matches(s))
            }
        }
    }

    /// Whether this pattern names `path` by name, with no wildcard: the
    /// field itself (`loc.lat`) or a parent the user named (`loc` for
    /// `loc.lat`). Only such a rule shares a field the quarantine holds.
    pub fn names(&self, path: &FieldPath) -> bool {
        match &self.kind {
            PatternKind::Everything => false,
            PatternKind::WholePayload => path.is_whole_payload(),
            PatternKind::Segments(segs) => {
                segs.iter().all(PatternSegment::is_literal) && self.matches(path)
            }
        }
    }

    pub fn specificity(&self) -> FieldSpecificity {
        match &self.kind {
            PatternKind::Everything => FieldSpecificity {
                depth: 0,
                literals: 0,
            },
            PatternKind::WholePayload => FieldSpecificity {
                depth: 1,
                literals: 1,
            },
            PatternKind::Segments(segs) => FieldSpecificity {
                depth: segs.len(),
                literals: segs.iter().filter(|s| s.is_literal()).count(),
            },
        }
    }

    /// Whether some field exists that both patterns match with equal
    /// specificity, which would make two otherwise equal rules tie.
    pub fn ties_with(&self, other: &FieldPattern) -> bool {
        if self.specificity() != other.specificity() {
            return false;
        }
        match (&self.kind, &other.kind) {
            (PatternKind::Everything, PatternKind::Everything) => true,
            (PatternKind::WholePayload, PatternKind::WholePayload) => true,
            (PatternKind::Segments(a), PatternKind::Segments(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.overlaps(y))
            }
            _ => false,
        }
    }
}

impl fmt::Display for FieldPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_segments(text: &str) -> Result<Vec<PatternSegment>, &'static str> {
    let mut out = Vec::new();
    for part in text.split('.') {
        if part.is_empty() {
            return Err("it has an empty segment (two dots, or a dot at an end)");
        }
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        match key {
            // A leading index addresses a payload that is a JSON array.
            "" => {}
            "*" => out.push(PatternSegment::AnyKey),
            k if k.contains(['*', ']', '"', '$']) => {
                return Err("a field name may not contain '*', ']', '\"' or '$'")
            }
            k => out.push(PatternSegment::Key(k.to_string())),
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or("an index is missing its ']'")?;
            let inner = &rest[1..close];
            if inner == "*" {
                out.push(PatternSegment::AnyIndex);
            } else {
                let n: usize = inner
                    .parse()
                    .map_err(|_| "an index must be a number or '*', as in items[0] or items[*]")?;
                out.push(PatternSegment::Index(n));
            }
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err("text follows an index; use a dot before the next field name");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> FieldPath {
        FieldPath::from_segments(
            parts
                .iter()
                .map(|p| match p.parse::<usize>() {
                    Ok(n) => Segment::Index(n),
                    Err(_) => Segment::Key(p.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn patterns_match_fields_and_their_subtrees() {
        let loc = FieldPattern::parse("loc").unwrap();
        assert!(loc.matches(&path(&["loc", "lat"])));
        assert!(loc.matches(&path(&["loc"])));
        assert!(!loc.matches(&path(&["locx"])));
        let items = FieldPattern::parse("a.items[*].c").unwrap();
        assert!(items.matches(&path(&["a", "items", "3", "c"])));
        assert!(!items.matches(&path(&["a", "items", "3", "d"])));
        assert!(!items.matches(&path(&["a", "items"])));
        let first = FieldPattern::parse("items[0]").unwrap();
        assert!(first.matches(&path(&["items", "0", "x"])));
        assert!(!first.matches(&path(&["items", "1", "x"])));
        let all = FieldPattern::parse("*").unwrap();
        assert!(all.matches(&path(&["x"])));
        assert!(all.matches(&FieldPath::whole_payload()));
        let body = FieldPattern::parse("$payload").unwrap();
        assert!(body.matches(&FieldPath::whole_payload()));
        assert!(!body.matches(&path(&["x"])));
        assert!(!loc.matches(&FieldPath::whole_payload()));
    }

    #[test]
    fn deeper_and_literal_patterns_are_more_specific() {
        let s = |t| FieldPattern::parse(t).unwrap().specificity();
        assert!(s("a.b") > s("a.*"));
        assert!(s("a.*") > s("a"));
        assert!(s("a") > s("*"));
        assert!(s("a.b") > s("a"));
    }

    #[test]
    fn ties_are_detected() {
        let p = |t| FieldPattern::parse(t).unwrap();
        // Both match `a.b` at depth 2 with one literal segment.
        assert!(p("a.*").ties_with(&p("*.b")));
        assert!(p("a.*").ties_with(&p("a.*")));
        assert!(!p("a.b").ties_with(&p("a.c")));
        assert!(!p("a.b").ties_with(&p("a.*")));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["", "a..b", ".a", "a.", "[x]", "a[x]", "a[0", "a[0]b", "a*b"] {
            assert!(
                FieldPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn only_a_pattern_without_wildcards_names_a_field() {
        let p = |t| FieldPattern::parse(t).unwrap();
        let lat = path(&["loc", "lat"]);
        assert!(p("loc.lat").names(&lat));
        assert!(p("loc").names(&lat), "a parent the user named");
        assert!(!p("loc.*").names(&lat));
        assert!(!p("*").names(&lat));
        assert!(!p("loc.lon").names(&lat));
        assert!(p("items[2]").names(&path(&["items", "2"])));
        assert!(!p("items[*]").names(&path(&["items", "2"])));
        assert!(!p("items[*]").names(&path(&["items", "2", "x"])));
        assert!(p("$payload").names(&FieldPath::whole_payload()));
        assert!(!p("*").names(&FieldPath::whole_payload()));
        assert_eq!(path(&["nets", "7", "ssid"]).generic(), "nets[*].ssid");
        assert_eq!(FieldPath::whole_payload().generic(), "$payload");
    }

    #[test]
    fn paths_display_like_patterns() {
        assert_eq!(path(&["a", "items", "2", "c"]).to_string(), "a.items[2].c");
        assert_eq!(FieldPath::whole_payload().to_string(), "$payload");
    }
}
