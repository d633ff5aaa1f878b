//! The CSV export: one row per message. Fixed columns first (`device`,
//! `topic`, `received`, `qos`, `retain`, `payload_text`, `payload_b64`),
//! then one column per field path seen in the exported range, sorted, each
//! starting with `$` so that no device can name a field like a fixed
//! column: `$.temp`, `$.env.hum`, `$.list[0]`, and `$["a.b"]` for a key
//! that is not plain letters, digits, `_` and `-`. A message without a field leaves its cell
//! empty, so fields that come and go over time share one header. A JSON
//! object payload fills field columns; any other payload fills
//! `payload_text` (valid UTF-8) or `payload_b64`. Past [`MAX_COLUMNS`]
//! field paths (a device inventing names), the rest of a message's fields
//! go, as a JSON object, into a last column `other_fields`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use crate::store::HistoryRecord;

pub const MAX_COLUMNS: usize = 1000;

#[derive(Default)]
pub struct CsvWriter {
    paths: BTreeSet<String>,
    overflow: bool,
    index: BTreeMap<String, usize>,
}

/// Leaves of a JSON value, by path: objects by `.name`, arrays by `[i]`.
/// An empty object or array is a leaf of its own (written as JSON).
fn leaves(
    prefix: &mut String,
    v: &serde_json::Value,
    out: &mut dyn FnMut(&str, &serde_json::Value),
) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let len = prefix.len();
                let plain = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if plain {
                    prefix.push('.');
                    prefix.push_str(k);
                } else {
                    // Quoted, so the key `a.b` and the path a → b differ.
                    prefix.push('[');
                    prefix.push_str(&serde_json::Value::from(k.as_str()).to_string());
                    prefix.push(']');
                }
                leaves(prefix, child, out);
                prefix.truncate(len);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                let len = prefix.len();
                prefix.push_str(&format!("[{i}]"));
                leaves(prefix, child, out);
                prefix.truncate(len);
            }
        }
        leaf => out(prefix, leaf),
    }
}

fn object(rec: &HistoryRecord) -> Option<serde_json::Value> {
    match serde_json::from_slice::<serde_json::Value>(&rec.payload) {
        Ok(v @ serde_json::Value::Object(_)) => Some(v),
        _ => None,
    }
}

const FIXED: [&str; 7] = [
    "device",
    "topic",
    "received",
    "qos",
    "retain",
    "payload_text",
    "payload_b64",
];

fn cell(text: &str, out: &mut Vec<u8>) {
    if text.contains(|c: char| c == ',' || c == '"' || c.is_control()) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl CsvWriter {
    /// First pass: notes the field paths of `rec`.
    pub fn learn(&mut self, rec: &HistoryRecord) {
        if let Some(v) = object(rec) {
            let (paths, overflow) = (&mut self.paths, &mut self.overflow);
            leaves(&mut String::from("$"), &v, &mut |p, _| {
                if paths.len() < MAX_COLUMNS {
                    paths.insert(p.to_string());
                } else if !paths.contains(p) {
                    *overflow = true;
                }
            });
        }
    }

    pub fn header(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut line = Vec::new();
        let mut names: Vec<&str> = FIXED.to_vec();
        names.extend(self.paths.iter().map(String::as_str));
        if self.overflow {
            names.push("other_fields");
        }
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            cell(n, &mut line);
        }
        line.extend_from_slice(b"\r\n");
        self.index = self
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        out.write_all(&line)
    }

    pub fn row(&self, rec: &HistoryRecord, out: &mut dyn Write) -> std::io::Result<()> {
        let mut cells: Vec<String> = vec![String::new(); self.paths.len()];
        let mut other = serde_json::Map::new();
        let (mut text, mut b64) = (String::new(), String::new());
        match object(rec) {
            Some(v) => leaves(
                &mut String::from("$"),
                &v,
                &mut |p, leaf| match self.index.get(p) {
                    Some(i) => cells[*i] = scalar_text(leaf),
                    None => {
                        other.insert(p.to_string(), leaf.clone());
                    }
                },
            ),
            None => match std::str::from_utf8(&rec.payload) {
                Ok(t) => text = t.to_string(),
                Err(_) => {
                    use base64::Engine;
                    b64 = base64::engine::general_purpose::STANDARD.encode(&rec.payload);
                }
            },
        }
        let mut line = Vec::with_capacity(256);
        let fixed = [
            rec.device.clone(),
            rec.topic.clone(),
            crate::when::rfc3339_ms(rec.received_ms),
            rec.qos.to_string(),
            rec.retain.to_string(),
            text,
            b64,
        ];
        for (i, c) in fixed.iter().chain(cells.iter()).enumerate() {
            if i > 0 {
                line.push(b',');
            }
            cell(c, &mut line);
        }
        if self.overflow {
            line.push(b',');
            if !other.is_empty() {
                cell(&serde_json::Value::Object(other).to_string(), &mut line);
            }
        }
        line.extend_from_slice(b"\r\n");
        out.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(payload: &[u8]) -> HistoryRecord {
        HistoryRecord {
            device: "plug".into(),
            seq: 1,
            received_ms: 0,
            qos: 1,
            retain: false,
            topic: "devices/plug/state".into(),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn fields_become_columns_and_cells_are_quoted() {
        let recs = [
            rec(br#"{"power":12.5,"env":{"hum":40},"list":[1,2]}"#),
            rec(br#"{"power":3,"note":"a,\"b\"\nc"}"#),
            rec(b"plain text"),
            rec(b"\xff\x00"),
        ];
        let mut w = CsvWriter::default();
        recs.iter().for_each(|r| w.learn(r));
        let mut out = Vec::new();
        w.header(&mut out).expect("header");
        for r in &recs {
            w.row(r, &mut out).expect("row");
        }
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "device,topic,received,qos,retain,payload_text,payload_b64,$.env.hum,$.list[0],$.list[1],$.note,$.power"
        );
        assert_eq!(
            lines[1],
            "plug,devices/plug/state,1970-01-01T00:00:00.000Z,1,false,,,40,1,2,,12.5"
        );
        assert!(text.contains(",\"a,\"\"b\"\"\nc\",3\r\n"), "{text}");
        assert!(text.contains(",plain text,,,,,,\r\n"), "{text}");
        assert!(text.contains(",,/wA=,,,,,\r\n"), "{text}");
    }

    #[test]
    fn a_device_cannot_forge_a_column_or_merge_two() {
        let recs = [rec(
            br#"{"device":"forged","a.b":1,"a":{"b":2},"":3,"nul":"x\u0000y"}"#,
        )];
        let mut w = CsvWriter::default();
        recs.iter().for_each(|r| w.learn(r));
        let mut out = Vec::new();
        w.header(&mut out).expect("header");
        w.row(&recs[0], &mut out).expect("row");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[0],
            concat!(
                "device,topic,received,qos,retain,payload_text,payload_b64,",
                r#"$.a.b,$.device,$.nul,"$[""""]","$[""a.b""]""#
            )
        );
        assert!(lines[1].starts_with("plug,"), "{}", lines[1]);
        assert!(
            lines[1].ends_with(",2,forged,\"x\0y\",3,1"),
            "{:?}",
            lines[1]
        );
    }
}
