//! Home Assistant MQTT discovery: for each field a local view carries, the
//! config message that makes it appear in Home Assistant as a sensor (or a
//! binary sensor, for a true/false value), without YAML.
//!
//! Pure: a view message in, announcements out. What a view carries is what
//! the policy shares with its destination, so a field the policy keeps home
//! is never announced either.
//!
//! A field is announced only if every step of its path is a plain name
//! (letters, digits, `_`, `-`): the path goes into a Jinja template that
//! Home Assistant runs, so a device-chosen key must not be able to write
//! template code. Other fields still reach the view; they are just not
//! announced.

use serde_json::{json, Map, Value};

use super::DISCOVERY_PREFIX;

/// Fields announced per view message, at most (a message with more is
/// announced in part).
pub const MAX_FIELDS_PER_MESSAGE: usize = 64;
/// Nesting followed into a payload, at most.
const MAX_DEPTH: usize = 8;
const MAX_KEY_BYTES: usize = 64;

/// The device a message came from, as Home Assistant shows it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLabel<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// Its firmware family (the preset), shown as the model.
    pub model: &'a str,
}

/// One discovery config message.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// `homeassistant/<component>/<object id>/config`.
    pub topic: String,
    pub payload: Vec<u8>,
    /// The field's name as the policy spells it (`ENERGY.Power`;
    /// `$payload` for a message that is one value).
    pub field: String,
    /// A value of the field's type at its path, for asking the policy
    /// later whether the field is still shared ([`stand_in_payload`]).
    pub stand_in: (Vec<String>, Value),
}

/// The announcements for the fields of one message of `device` that
/// destination `destination`'s view carries on `view_topic` (`device_topic`
/// is the topic the device used).
pub fn announcements(
    destination: &str,
    device: DeviceLabel<'_>,
    device_topic: &str,
    view_topic: &str,
    payload: &[u8],
) -> Vec<Announcement> {
    let parsed = serde_json::from_slice::<Value>(payload);
    let mut leaves = Vec::new();
    match &parsed {
        Ok(Value::Object(map)) => collect(map, &mut Vec::new(), &mut leaves),
        Ok(Value::Array(_)) => {}
        Ok(value) => leaves.push((Vec::new(), kind_of(value))),
        // Not JSON: the payload is the value (`ON`, say).
        Err(_) if !payload.is_empty() => leaves.push((Vec::new(), Some(Kind::Text))),
        Err(_) => {}
    }
    leaves
        .into_iter()
        .filter_map(|(path, kind)| Some((path, kind?)))
        .take(MAX_FIELDS_PER_MESSAGE)
        .map(|(path, kind)| announce(destination, device, device_topic, view_topic, &path, kind))
        .collect()
}

/// The empty config message that removes an announced field's entity.
pub fn withdrawal(topic: &str) -> Announcement {
    Announcement {
        topic: topic.to_string(),
        payload: Vec::new(),
        field: String::new(),
        stand_in: (Vec::new(), Value::Null),
    }
}

/// A message with the announced fields' paths and stand-in values: what
/// the policy in force is asked about to learn which of them it still
/// shares. A message that was one value is that value alone.
pub fn stand_in_payload<'a>(fields: impl Iterator<Item = &'a (Vec<String>, Value)>) -> Vec<u8> {
    let mut root = Map::new();
    for (path, value) in fields {
        if path.is_empty() {
            return match value {
                Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
        }
        insert_at(&mut root, path, value.clone());
    }
    Value::Object(root).to_string().into_bytes()
}

fn insert_at(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let next = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            if let Value::Object(inner) = next {
                insert_at(inner, rest, value);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Switch,
}

impl Kind {
    fn stand_in(self) -> Value {
        match self {
            Kind::Number => json!(0),
            Kind::Text => json!("x"),
            Kind::Switch => json!(true),
        }
    }
}

fn kind_of(v: &Value) -> Option<Kind> {
    match v {
        Value::Number(_) => Some(Kind::Number),
        Value::String(_) => Some(Kind::Text),
        Value::Bool(_) => Some(Kind::Switch),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_BYTES
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn collect<'a>(
    map: &'a Map<String, Value>,
    path: &mut Vec<&'a str>,
    out: &mut Vec<(Vec<&'a str>, Option<Kind>)>,
) {
    for (k, v) in map {
        if out.len() >= MAX_FIELDS_PER_MESSAGE || !plain_key(k) {
            continue;
        }
        path.push(k);
        match v {
            Value::Object(inner) if path.len() < MAX_DEPTH => collect(inner, path, out),
            Value::Object(_) | Value::Array(_) | Value::Null => {}
            leaf => out.push((path.clone(), kind_of(leaf))),
        }
        path.pop();
    }
}

fn announce(
    destination: &str,
    device: DeviceLabel<'_>,
    device_topic: &str,
    view_topic: &str,
    path: &[&str],
    kind: Kind,
) -> Announcement {
    let field = if path.is_empty() {
        policy::path::WHOLE_PAYLOAD.to_string()
    } else {
        path.join(".")
    };
    // Stable across restarts and unique per view, device topic and field;
    // the hash keeps any topic's characters out of the id.
    let digest = crate::ledger::entry::sha256(
        format!("{destination}\0{}\0{device_topic}\0{field}", device.id).as_bytes(),
    );
    let object_id = format!(
        "dataward_{destination}_{}_{}",
        device.id,
        &crate::ledger::entry::hex(&digest)[..16]
    );
    let access: String = path.iter().map(|k| format!("[\"{k}\"]")).collect();
    let value = format!("value_json{access}");
    let name = if path.is_empty() {
        device_topic
            .rsplit('/')
            .next()
            .unwrap_or(device_topic)
            .to_string()
    } else {
        path.join(" ")
    };
    let mut config = json!({
        "name": name,
        "unique_id": object_id,
        "state_topic": view_topic,
        "device": {
            "identifiers": [format!("dataward_{}", device.id)],
            "name": device.name,
            "model": device.model,
        },
        "origin": {
            "name": "dataward",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
    });
    let component = match kind {
        Kind::Switch => {
            config["value_template"] = json!(format!("{{{{ 'ON' if {value} else 'OFF' }}}}"));
            "binary_sensor"
        }
        Kind::Number | Kind::Text => {
            if !path.is_empty() {
                config["value_template"] = json!(format!("{{{{ {value} }}}}"));
            }
            if kind == Kind::Number {
                config["state_class"] = json!("measurement");
            }
            "sensor"
        }
    };
    Announcement {
        topic: format!("{DISCOVERY_PREFIX}/{component}/{object_id}/config"),
        payload: serde_json::to_vec(&config).unwrap_or_default(),
        field,
        stand_in: (
            path.iter().map(|k| k.to_string()).collect(),
            kind.stand_in(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLUG: DeviceLabel<'static> = DeviceLabel {
        id: "plug",
        name: "Living room \"plug\" <b>",
        model: "tasmota",
    };

    fn config(a: &Announcement) -> Value {
        serde_json::from_slice(&a.payload).expect("json")
    }

    #[test]
    fn each_plain_leaf_is_a_sensor_of_the_view_topic() {
        let payload = br#"{"ENERGY":{"Power":42,"Unit":"W"},"On":true,"Time":"2026-12-01","nets":[1,2],"gone":null}"#;
        let all = announcements(
            "home",
            PLUG,
            "tele/plug/SENSOR",
            "local/home/tele/plug/SENSOR",
            payload,
        );
        let fields: Vec<&str> = all.iter().map(|a| a.field.as_str()).collect();
        assert_eq!(fields, ["ENERGY.Power", "ENERGY.Unit", "On", "Time"]);
        let power = config(&all[0]);
        assert!(all[0]
            .topic
            .starts_with("homeassistant/sensor/dataward_home_plug_"));
        assert!(all[0].topic.ends_with("/config"));
        assert_eq!(power["state_topic"], "local/home/tele/plug/SENSOR");
        assert_eq!(
            power["value_template"],
            "{{ value_json[\"ENERGY\"][\"Power\"] }}"
        );
        assert_eq!(power["state_class"], "measurement");
        assert_eq!(power["device"]["name"], PLUG.name, "as JSON, not as markup");
        assert!(config(&all[1]).get("state_class").is_none(), "text");
        assert!(all[2].topic.starts_with("homeassistant/binary_sensor/"));
        assert_eq!(
            config(&all[2])["value_template"],
            "{{ 'ON' if value_json[\"On\"] else 'OFF' }}"
        );
        // Stable and distinct ids.
        let again = announcements("home", PLUG, "tele/plug/SENSOR", "x", payload);
        assert_eq!(again[0].topic, all[0].topic);
        let ids: std::collections::HashSet<_> = all.iter().map(|a| &a.topic).collect();
        assert_eq!(ids.len(), all.len());
        let elsewhere = announcements("home", PLUG, "tele/plug/STATE", "y", payload);
        assert_ne!(elsewhere[0].topic, all[0].topic);
    }

    #[test]
    fn keys_that_could_write_template_code_are_not_announced() {
        let payload = br#"{"a\"] }}{{ 7*7 }}":1,"x y":2,"{{x}}":3,"":4,"ok":5}"#;
        let all = announcements("home", PLUG, "t", "local/home/t", payload);
        let fields: Vec<&str> = all.iter().map(|a| a.field.as_str()).collect();
        assert_eq!(fields, ["ok"]);
    }

    #[test]
    fn a_single_value_message_is_one_sensor_without_a_template() {
        let all = announcements(
            "home",
            PLUG,
            "stat/plug/POWER",
            "local/home/stat/plug/POWER",
            b"ON",
        );
        assert_eq!(all.len(), 1);
        let c = config(&all[0]);
        assert_eq!(c["name"], "POWER");
        assert!(c.get("value_template").is_none());
        let n = announcements("home", PLUG, "t/temp", "local/home/t/temp", b"21.5");
        assert_eq!(config(&n[0])["state_class"], "measurement");
        assert!(announcements("home", PLUG, "t", "v", b"").is_empty());
        assert!(announcements("home", PLUG, "t", "v", b"[1,2]").is_empty());
    }

    #[test]
    fn huge_and_deep_messages_are_bounded() {
        let wide: Map<String, Value> = (0..500).map(|i| (format!("f{i}"), json!(i))).collect();
        let wide = serde_json::to_vec(&Value::Object(wide)).expect("json");
        assert_eq!(
            announcements("home", PLUG, "t", "v", &wide).len(),
            MAX_FIELDS_PER_MESSAGE
        );
        let deep = format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100));
        // Past the depth followed, nothing; and no panic.
        assert!(announcements("home", PLUG, "t", "v", deep.as_bytes()).is_empty());
        // Broken JSON is a value of its own (the view carries it as sent).
        assert_eq!(
            announcements("home", PLUG, "t", "v", &b"{\"a\":".repeat(10_000)).len(),
            1
        );
    }

    #[test]
    fn stand_ins_rebuild_the_fields_shape() {
        let payload = br#"{"ENERGY":{"Power":42.5,"Unit":"W"},"On":false}"#;
        let all = announcements("home", PLUG, "t", "v", payload);
        let back = stand_in_payload(all.iter().map(|a| &a.stand_in));
        let again = announcements("home", PLUG, "t", "v", &back);
        assert_eq!(
            all.iter().map(|a| &a.topic).collect::<Vec<_>>(),
            again.iter().map(|a| &a.topic).collect::<Vec<_>>(),
            "{}",
            String::from_utf8_lossy(&back)
        );
        let raw = announcements("home", PLUG, "stat/plug/POWER", "v", b"ON");
        assert_eq!(stand_in_payload(raw.iter().map(|a| &a.stand_in)), b"x");
    }

    #[test]
    fn a_withdrawal_is_an_empty_config() {
        let w = withdrawal("homeassistant/sensor/x/config");
        assert!(w.payload.is_empty());
    }
}
