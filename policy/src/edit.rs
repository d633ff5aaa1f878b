//! Editing a policy's text for one device, as the web UI's sharing grid
//! does. The grid owns the device's *own* rules for the fields it shows: a
//! `[[rule]]` naming exactly that device, that field and one destination
//! by name, without a topic. Saving replaces those with the grid's cells;
//! every other rule, comment and blank line stays as the user wrote it.
//! The same for `[[retain]]`: the device's own retention, and its
//! per-field `keep = "none"` ("don't store").
//!
//! Nothing here validates the result as a policy: the caller parses the
//! new text, so an edit can never apply what [`crate::Policy::parse`]
//! would refuse.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// Keys a cell's parameters may not set: the grid sets them.
const OWN_KEYS: &[&str] = &["device", "field", "destination", "action", "topic", "name"];

/// One cell of the grid: what `field` becomes at `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub field: String,
    pub destination: String,
    /// None: no rule of the device's own; other rules decide.
    pub action: Option<String>,
    /// The action's parameters, as TOML `key = value` pairs separated by
    /// commas: `step = 0.5`, `fn = "max", window = "1h"`.
    pub params: String,
}

/// What the grid shows for a device, read from the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRules {
    /// The device's own rules, as cells (with an action each).
    pub cells: Vec<Cell>,
    /// Fields with a `keep = "none"` rule of the device's own.
    pub not_stored: Vec<String>,
    /// The device's own `keep`, if it has one.
    pub retention: Option<String>,
}

/// A grid as saved: every cell and field it showed, set or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GridEdit {
    pub device: String,
    /// The fields shown: the device's own rules and `keep = "none"` for
    /// these are replaced, for any other field they stay.
    pub fields: Vec<String>,
    pub cells: Vec<Cell>,
    pub not_stored: Vec<String>,
    /// The device's own retention ("30d", "forever", "none"); none: the
    /// config's default or a group's rule.
    pub retention: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the policy is not TOML: {0}")]
    NotToml(String),
    #[error("`{0}` is not a list of tables ([[{0}]]); edit the file by hand")]
    NotTables(String),
    #[error("the parameters of {field} → {destination} ({params:?}) are not `key = value` pairs separated by commas: {why}")]
    Params {
        field: String,
        destination: String,
        params: String,
        why: String,
    },
}

fn str_of<'t>(t: &'t Table, key: &str) -> Option<&'t str> {
    t.get(key).and_then(Item::as_str)
}

fn tables<'d>(doc: &'d DocumentMut, key: &str) -> Result<Vec<&'d Table>, EditError> {
    match doc.get(key) {
        None => Ok(Vec::new()),
        Some(Item::ArrayOfTables(a)) => Ok(a.iter().collect()),
        Some(_) => Err(EditError::NotTables(key.into())),
    }
}

/// A rule the grid owns for `device`: the device by name, a destination
/// by name, no topic.
fn owned_rule<'t>(t: &'t Table, device: &str) -> Option<(&'t str, &'t str)> {
    if str_of(t, "device") != Some(device) || t.contains_key("topic") {
        return None;
    }
    let destination = str_of(t, "destination").filter(|d| *d != "*")?;
    Some((str_of(t, "field")?, destination))
}

fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::NotToml(e.to_string()))
}

/// The device's own rules and retention, as the grid shows them.
pub fn device_rules(text: &str, device: &str) -> Result<DeviceRules, EditError> {
    let doc = parse(text)?;
    let mut out = DeviceRules::default();
    for t in tables(&doc, "rule")? {
        let Some((field, destination)) = owned_rule(t, device) else {
            continue;
        };
        let params: Vec<String> = t
            .iter()
            .filter(|(k, _)| !OWN_KEYS.contains(k))
            .filter_map(|(k, v)| Some(format!("{k} = {}", v.as_value()?.to_string().trim())))
            .collect();
        out.cells.push(Cell {
            field: field.into(),
            destination: destination.into(),
            action: str_of(t, "action").map(str::to_string),
            params: params.join(", "),
        });
    }
    for t in tables(&doc, "retain")? {
        if str_of(t, "device") != Some(device) {
            continue;
        }
        match (str_of(t, "field"), str_of(t, "keep")) {
            (Some(f), Some("none")) => out.not_stored.push(f.into()),
            (None, Some(keep)) => out.retention = Some(keep.into()),
            _ => {}
        }
    }
    Ok(out)
}

/// `step = 0.5, unit = "hour"` as key/value pairs.
fn params_of(cell: &Cell) -> Result<Vec<(String, toml_edit::Value)>, EditError> {
    let err = |why: String| EditError::Params {
        field: cell.field.clone(),
        destination: cell.destination.clone(),
        params: cell.params.clone(),
        why,
    };
    if cell.params.trim().is_empty() {
        return Ok(Vec::new());
    }
    if cell.params.contains(['\n', '\r']) {
        return Err(err("one line only".into()));
    }
    let doc = format!("p = {{ {} }}", cell.params)
        .parse::<DocumentMut>()
        .map_err(|e| err(e.to_string()))?;
    let table = doc
        .get("p")
        .and_then(Item::as_inline_table)
        .ok_or_else(|| err("not key = value pairs".into()))?;
    let mut out = Vec::new();
    for (k, v) in table.iter() {
        if OWN_KEYS.contains(&k) {
            return Err(err(format!("`{k}` is set by the grid")));
        }
        let mut v = v.clone();
        v.decor_mut().clear();
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn array_mut<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut ArrayOfTables, EditError> {
    if !doc.contains_key(key) {
        doc.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut(key)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::NotTables(key.into()))
}

/// The highest position any table has, so new ones go at the end.
fn last_position(doc: &DocumentMut) -> isize {
    doc.iter()
        .flat_map(|(_, item)| match item {
            Item::Table(t) => vec![t.position()],
            Item::ArrayOfTables(a) => a.iter().map(Table::position).collect(),
            _ => Vec::new(),
        })
        .flatten()
        .max()
        .unwrap_or(0)
}

/// The text with the grid's cells in place of the device's own rules for
/// the fields it showed.
pub fn apply_grid(text: &str, edit: &GridEdit) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let shown = |f: &str| edit.fields.iter().any(|s| s == f);
    // Parameters first: a bad one changes nothing.
    let mut new_rules = Vec::new();
    for cell in &edit.cells {
        let Some(action) = cell.action.as_deref().filter(|a| !a.is_empty()) else {
            continue;
        };
        let mut t = Table::new();
        t.insert("device", toml_edit::value(edit.device.as_str()));
        t.insert("field", toml_edit::value(cell.field.as_str()));
        t.insert("destination", toml_edit::value(cell.destination.as_str()));
        t.insert("action", toml_edit::value(action));
        for (k, v) in params_of(cell)? {
            t.insert(&k, Item::Value(v));
        }
        new_rules.push(t);
    }
    let cell_dests: Vec<&str> = edit.cells.iter().map(|c| c.destination.as_str()).collect();
    if doc.contains_key("rule") {
        array_mut(&mut doc, "rule")?.retain(|t| {
            !owned_rule(t, &edit.device).is_some_and(|(f, d)| shown(f) && cell_dests.contains(&d))
        });
    }
    if doc.contains_key("retain") {
        array_mut(&mut doc, "retain")?.retain(|t| {
            if str_of(t, "device") != Some(edit.device.as_str()) {
                return true;
            }
            match str_of(t, "field") {
                None => false,
                Some(f) => !(shown(f) && str_of(t, "keep") == Some("none")),
            }
        });
    }
    let mut at = last_position(&doc) + 1;
    if !new_rules.is_empty() {
        let rules = array_mut(&mut doc, "rule")?;
        for mut t in new_rules {
            t.set_position(Some(at));
            at += 1;
            rules.push(t);
        }
    }
    let mut retains = Vec::new();
    if let Some(keep) = edit.retention.as_deref().filter(|k| !k.trim().is_empty()) {
        let mut t = Table::new();
        t.insert("device", toml_edit::value(edit.device.as_str()));
        t.insert("keep", toml_edit::value(keep.trim()));
        retains.push(t);
    }
    for f in edit.not_stored.iter().filter(|f| shown(f)) {
        let mut t = Table::new();
        t.insert("device", toml_edit::value(edit.device.as_str()));
        t.insert("field", toml_edit::value(f.as_str()));
        t.insert("keep", toml_edit::value("none"));
        retains.push(t);
    }
    if !retains.is_empty() {
        let list = array_mut(&mut doc, "retain")?;
        for mut t in retains {
            t.set_position(Some(at));
            at += 1;
            list.push(t);
        }
    }
    // Emptied lists go, rather than leave a `rule = []` behind.
    for key in ["rule", "retain"] {
        if doc
            .get(key)
            .and_then(Item::as_array_of_tables)
            .is_some_and(ArrayOfTables::is_empty)
        {
            doc.remove(key);
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# my policy
[groups]
heating = ["plug"]

# everything of the plug to the vendor
[[rule]]
device = "plug"
field = "*"
destination = "vendor"
action = "share"

[[rule]]
name = "power-rounded"
device = "plug"
field = "power"
destination = "vendor"
action = "round"
step = 5

# the other device stays as it is
[[rule]]
device = "meter"
field = "power"
destination = "vendor"
action = "share"

[[rule]]
device = "plug"
field = "power"
topic = "tele/plug/STATE"
destination = "vendor"
action = "drop"

[[retain]]
device = "plug"
keep = "30d"
"#;

    fn cell(field: &str, dest: &str, action: Option<&str>, params: &str) -> Cell {
        Cell {
            field: field.into(),
            destination: dest.into(),
            action: action.map(str::to_string),
            params: params.into(),
        }
    }

    #[test]
    fn the_grid_reads_only_the_devices_own_plain_rules() {
        let r = device_rules(TEXT, "plug").expect("reads");
        assert_eq!(
            r.cells,
            vec![
                cell("*", "vendor", Some("share"), ""),
                cell("power", "vendor", Some("round"), "step = 5"),
            ]
        );
        assert_eq!(r.retention.as_deref(), Some("30d"));
        assert!(r.not_stored.is_empty());
        assert_eq!(device_rules(TEXT, "meter").expect("reads").cells.len(), 1);
    }

    #[test]
    fn saving_replaces_the_shown_cells_and_keeps_everything_else() {
        let edit = GridEdit {
            device: "plug".into(),
            fields: vec!["power".into(), "ssid".into()],
            cells: vec![
                cell("power", "vendor", Some("round"), "step = 0.5"),
                cell("ssid", "vendor", None, ""),
                cell("power", "backup", Some("seal"), ""),
            ],
            not_stored: vec!["ssid".into(), "voltage".into()],
            retention: None,
        };
        let out = apply_grid(TEXT, &edit).expect("edits");
        crate::Policy::parse(&out).expect("still a policy");
        let r = device_rules(&out, "plug").expect("reads");
        assert_eq!(
            r.cells,
            vec![
                cell("*", "vendor", Some("share"), ""),
                cell("power", "vendor", Some("round"), "step = 0.5"),
                cell("power", "backup", Some("seal"), ""),
            ]
        );
        assert_eq!(
            r.not_stored,
            vec!["ssid".to_string()],
            "voltage was not shown"
        );
        assert_eq!(r.retention, None);
        for kept in [
            "# my policy",
            "# everything of the plug to the vendor",
            "# the other device stays as it is",
            "topic = \"tele/plug/STATE\"",
            "device = \"meter\"",
        ] {
            assert!(out.contains(kept), "{kept} in {out}");
        }
        assert!(!out.contains("power-rounded"), "the replaced rule went");
        // Saving the same grid again changes nothing more.
        assert_eq!(apply_grid(&out, &edit).expect("edits"), out);
    }

    #[test]
    fn an_empty_policy_gets_rules_and_a_retention() {
        let edit = GridEdit {
            device: "plug".into(),
            fields: vec!["power".into()],
            cells: vec![cell("power", "vendor", Some("share"), "")],
            not_stored: vec![],
            retention: Some("7d".into()),
        };
        let out = apply_grid("", &edit).expect("edits");
        assert_eq!(
            out,
            "[[rule]]\ndevice = \"plug\"\nfield = \"power\"\ndestination = \"vendor\"\naction = \"share\"\n\n[[retain]]\ndevice = \"plug\"\nkeep = \"7d\"\n"
        );
        let cleared = GridEdit {
            cells: vec![cell("power", "vendor", None, "")],
            retention: None,
            ..edit
        };
        assert_eq!(apply_grid(&out, &cleared).expect("edits"), "");
    }

    #[test]
    fn bad_parameters_and_hostile_names_change_nothing() {
        for params in [
            "step",
            "step = ",
            "action = \"share\"",
            "device = \"other\"",
            "a = 1\n[[rule]]",
            "} x = {",
        ] {
            let edit = GridEdit {
                device: "plug".into(),
                fields: vec!["power".into()],
                cells: vec![cell("power", "vendor", Some("round"), params)],
                ..GridEdit::default()
            };
            assert!(
                matches!(apply_grid(TEXT, &edit), Err(EditError::Params { .. })),
                "{params:?}"
            );
        }
        // A name with quotes and newlines is a TOML string, not syntax.
        let edit = GridEdit {
            device: "plug".into(),
            fields: vec!["a\"\n[[rule]]".into()],
            cells: vec![cell("a\"\n[[rule]]", "vendor", Some("share"), "")],
            ..GridEdit::default()
        };
        let out = apply_grid("", &edit).expect("edits");
        let r = device_rules(&out, "plug").expect("reads");
        assert_eq!(r.cells[0].field, "a\"\n[[rule]]");
        assert!(matches!(
            apply_grid("rule = 1", &edit),
            Err(EditError::NotTables(_))
        ));
        assert!(matches!(
            apply_grid("[[rule]", &edit),
            Err(EditError::NotToml(_))
        ));
    }
}
