//! A JSON document that keeps every scalar exactly as the device wrote it:
//! `1e2` stays `1e2`, and integers above 2^53 keep every digit. Objects
//! and arrays are split into their members; each scalar is kept as its raw
//! text (serde_json's `RawValue`), and written back byte for byte.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The deepest nesting a payload may have (serde_json's own limit).
pub const MAX_DEPTH: usize = 128;

/// The deepest nesting of `[` and `{` outside strings.
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A parsed payload.
#[derive(Debug, Clone)]
pub enum Json {
    /// Members in the order the device wrote them.
    Object(Vec<(String, Json)>),
    Array(Vec<Json>),
    /// A string, number, boolean or null, as written.
    Scalar(Box<RawValue>),
}

impl Json {
    /// The value at `path`, if the document has one there.
    pub fn at(&self, path: &[crate::path::Segment]) -> Option<&Json> {
        let mut j = self;
        for seg in path {
            j = match (j, seg) {
                (Json::Object(m), crate::path::Segment::Key(k)) => {
                    &m.iter().find(|(name, _)| name == k)?.1
                }
                (Json::Array(a), crate::path::Segment::Index(i)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(j)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Json::Object(a), Json::Object(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a == b,
            (Json::Scalar(a), Json::Scalar(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

/// Appends `"key":`, the key escaped as JSON requires.
pub fn write_key(out: &mut Vec<u8>, key: &str) {
    // Writing to a Vec cannot fail, and a &str always serialises.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
}

impl Json {
    /// Parses a whole payload; trailing data or invalid JSON is an error,
    /// and so is nesting deeper than [`MAX_DEPTH`] (each level is parsed on
    /// its own, so serde_json's own depth limit does not reach across).
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        if nesting(bytes) > MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        serde_json::from_slice(bytes)
    }

    /// Appends the JSON text, compact; scalars exactly as parsed.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Object(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_key(out, k);
                    v.write(out);
                }
                out.push(b'}');
            }
            Json::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            Json::Scalar(raw) => out.extend_from_slice(raw.get().trim().as_bytes()),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    pub fn is_structured(&self) -> bool {
        matches!(self, Json::Object(_) | Json::Array(_))
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The raw text first; then, for an object or array, its members,
        // each parsed the same way. A scalar stays raw.
        let raw = Box::<RawValue>::deserialize(d)?;
        let text = raw.get().trim_start();
        match text.as_bytes().first() {
            Some(b'{') => serde_json::from_str::<Members>(raw.get())
                .map(|m| Json::Object(m.0))
                .map_err(serde::de::Error::custom),
            Some(b'[') => serde_json::from_str::<Items>(raw.get())
                .map(|i| Json::Array(i.0))
                .map_err(serde::de::Error::custom),
            _ => Ok(Json::Scalar(raw)),
        }
    }
}

struct Members(Vec<(String, Json)>);
struct Items(Vec<Json>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Json>()? {
                    out.push(v);
                }
                Ok(Items(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_come_back_as_written() {
        let text = r#"{"a":1e2,"big":12345678901234567890123,"s":"x\u00e9\"y","n":null,"l":[1.50,true,{}],"e":[]}"#;
        let j = Json::parse(text.as_bytes()).expect("parse");
        assert_eq!(String::from_utf8(j.to_vec()).expect("utf8"), text);
        // Whitespace goes; values stay.
        let spaced = "{ \"a\" : 1e2 ,\n \"b\" : [ 1 , 2 ] }";
        assert_eq!(
            Json::parse(spaced.as_bytes()).expect("parse").to_vec(),
            br#"{"a":1e2,"b":[1,2]}"#
        );
        for bad in [&b"{"[..], b"[1,", b"{\"a\":NaN}", b"1 2", b"\xff"] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Json::parse(b"21.5").expect("scalar"),
            Json::Scalar(_)
        ));
    }
}

#[cfg(test)]
mod depth {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Json::parse(deep.as_bytes()).is_err());
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(Json::parse(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let quoted = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(Json::parse(quoted.as_bytes()).is_ok(), "{quoted}");
    }
}
