//! Editing a policy's text for one device, as the web UI's sharing grid
//! does. The grid owns the device's *own* rules for the fields it shows: a
//! `[[rule]]` naming exactly that device, that field and one destination
//! by name, without a topic. Saving replaces those with the grid's cells;
//! every other rule, comment and blank line stays as the user wrote it.
//! The same for `[[retain]]`: the device's own retention, and its
//! per-field `keep = "none"` ("don't store").
//!
//! A cell whose action and parameters did not change keeps its rule as
//! written (name, comments, place in the file). Only the (field,
//! destination) pairs a grid sends are touched.
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
    /// The shown fields not to store; none leaves "don't store" as it is.
    pub not_stored: Option<Vec<String>>,
    /// The device's own retention: none leaves it as it is; `""` removes
    /// it (the config's default or a group's rule then decide); else
    /// "30d", "forever", "none".
    pub retention: Option<String>,
}

/// Whether the grid can write a rule for `field` as its name says: a
/// device's key with `*`, `$` or `"` in it would read as a wildcard (a
/// key named `*` would become `field = "*"`, every field), and one with a
/// control character would not come back from a browser as it went, so
/// such a field is left to rules written by hand.
pub fn grid_can_name(field: &str) -> bool {
    if field == "$payload" {
        return true;
    }
    let without_indices = field.replace("[*]", "");
    !field.is_empty()
        // A control character (NUL above all) does not survive a form: a
        // browser would send another name back.
        && !field.chars().any(char::is_control)
        && !without_indices.contains(['*', '$', '"', '[', ']'])
        && !field.starts_with('.')
        && !field.ends_with('.')
        && !field.contains("..")
        && crate::FieldPattern::parse(field).is_ok()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the policy is not TOML: {0}")]
    NotToml(String),
    #[error("`{0}` is not a list of tables ([[{0}]]); edit the file by hand")]
    NotTables(String),
    #[error("the field {0:?} cannot be named by a rule as it is (its name has *, $ or \"); write a rule for it by hand")]
    Unnameable(String),
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
        out.cells.push(Cell {
            field: field.into(),
            destination: destination.into(),
            action: str_of(t, "action").map(str::to_string),
            params: params_text(t),
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

/// A value on one line, without the comments or layout around it.
fn plain(v: &toml_edit::Value) -> String {
    let mut v = v.clone();
    match &mut v {
        toml_edit::Value::Array(a) => a.fmt(),
        toml_edit::Value::InlineTable(t) => t.fmt(),
        _ => {}
    }
    v.decor_mut().clear();
    v.to_string().trim().to_string()
}

/// A rule's parameters as a cell shows them: `step = 0.5, unit = "hour"`.
fn params_text(t: &Table) -> String {
    t.iter()
        .filter(|(k, _)| !OWN_KEYS.contains(k))
        .filter_map(|(k, v)| Some(format!("{k} = {}", plain(v.as_value()?))))
        .collect::<Vec<_>>()
        .join(", ")
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

/// The cell's parameters as [`params_text`] would show them once written.
fn params_normal(cell: &Cell) -> Result<String, EditError> {
    Ok(params_of(cell)?
        .iter()
        .map(|(k, v)| format!("{k} = {}", plain(v)))
        .collect::<Vec<_>>()
        .join(", "))
}

fn array_mut<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut ArrayOfTables, EditError> {
    if !doc.contains_key(key) {
        doc.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc.get_mut(key)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::NotTables(key.into()))
}

/// A table of string values, in the order given.
fn table(pairs: &[(&str, &str)]) -> Table {
    let mut t = Table::new();
    for (k, v) in pairs {
        t.insert(k, toml_edit::value(*v));
    }
    t
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
/// the (field, destination) pairs it sent.
pub fn apply_grid(text: &str, edit: &GridEdit) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let shown = |f: &str| edit.fields.iter().any(|s| s == f);
    // What each sent pair should be: (action, its parameters normalised).
    let mut wanted: Vec<(&Cell, Option<(&str, String)>)> = Vec::new();
    for cell in &edit.cells {
        let action = cell.action.as_deref().filter(|a| !a.is_empty());
        if action.is_some() && !grid_can_name(&cell.field) {
            return Err(EditError::Unnameable(cell.field.clone()));
        }
        // Parameters first: a bad one changes nothing.
        let normal = match action {
            Some(a) => Some((a, params_normal(cell)?)),
            None => None,
        };
        wanted.push((cell, normal));
    }
    let wants = |f: &str, d: &str| {
        wanted
            .iter()
            .find(|(c, _)| c.field == f && c.destination == d)
    };
    // Rules that already say what their cell wants stay as written.
    let mut kept: Vec<(String, String)> = Vec::new();
    if doc.contains_key("rule") {
        array_mut(&mut doc, "rule")?.retain(|t| {
            let Some((f, d)) = owned_rule(t, &edit.device) else {
                return true;
            };
            let Some((_, want)) = wants(f, d) else {
                return true;
            };
            let same = want
                .as_ref()
                .is_some_and(|(a, p)| str_of(t, "action") == Some(*a) && params_text(t) == *p);
            if same && !kept.iter().any(|(kf, kd)| kf == f && kd == d) {
                kept.push((f.to_string(), d.to_string()));
                return true;
            }
            false
        });
    }
    let mut new_rules = Vec::new();
    for (cell, want) in &wanted {
        let Some((action, _)) = want else {
            continue;
        };
        if kept
            .iter()
            .any(|(f, d)| *f == cell.field && *d == cell.destination)
        {
            continue;
        }
        let mut t = table(&[
            ("device", &edit.device),
            ("field", &cell.field),
            ("destination", &cell.destination),
            ("action", action),
        ]);
        for (k, v) in params_of(cell)? {
            t.insert(&k, Item::Value(v));
        }
        new_rules.push(t);
    }
    let not_stored = edit.not_stored.as_deref();
    for f in not_stored.into_iter().flatten().filter(|f| shown(f)) {
        if !grid_can_name(f) {
            return Err(EditError::Unnameable(f.clone()));
        }
    }
    let retention = edit.retention.as_deref().map(str::trim);
    if doc.contains_key("retain") {
        array_mut(&mut doc, "retain")?.retain(|t| {
            if str_of(t, "device") != Some(edit.device.as_str()) {
                return true;
            }
            match str_of(t, "field") {
                None => match retention {
                    None => true,
                    Some(r) => str_of(t, "keep") == Some(r) && !r.is_empty(),
                },
                Some(f) => !(not_stored.is_some() && shown(f) && str_of(t, "keep") == Some("none")),
            }
        });
    }
    let has_own_keep = tables(&doc, "retain")?
        .iter()
        .any(|t| str_of(t, "device") == Some(edit.device.as_str()) && !t.contains_key("field"));
    let mut retains = Vec::new();
    if let Some(keep) = retention.filter(|k| !k.is_empty() && !has_own_keep) {
        retains.push(table(&[("device", &edit.device), ("keep", keep)]));
    }
    for f in not_stored.into_iter().flatten().filter(|f| shown(f)) {
        retains.push(table(&[
            ("device", &edit.device),
            ("field", f),
            ("keep", "none"),
        ]));
    }
    let mut at = last_position(&doc) + 1;
    for (key, new) in [("rule", new_rules), ("retain", retains)] {
        if new.is_empty() {
            continue;
        }
        let list = array_mut(&mut doc, key)?;
        for mut t in new {
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
            not_stored: Some(vec!["ssid".into(), "voltage".into()]),
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
        assert_eq!(r.retention.as_deref(), Some("30d"), "not sent: left alone");
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
            not_stored: Some(vec![]),
            retention: Some("7d".into()),
        };
        let out = apply_grid("", &edit).expect("edits");
        assert_eq!(
            out,
            "[[rule]]\ndevice = \"plug\"\nfield = \"power\"\ndestination = \"vendor\"\naction = \"share\"\n\n[[retain]]\ndevice = \"plug\"\nkeep = \"7d\"\n"
        );
        let cleared = GridEdit {
            cells: vec![cell("power", "vendor", None, "")],
            retention: Some(String::new()),
            ..edit
        };
        assert_eq!(apply_grid(&out, &cleared).expect("edits"), "");
    }

    #[test]
    fn unchanged_cells_keep_their_rule_and_only_sent_pairs_change() {
        let text = "[[rule]]\nname = \"mine\"  # my rule\ndevice = \"plug\"\nfield = \"power\"\ndestination = \"vendor\"\naction = \"round\"\nstep = 5 # watts\n\n[[rule]]\ndevice = \"plug\"\nfield = \"power\"\ndestination = \"backup\"\naction = \"seal\"\n\n[[rule]]\ndevice = \"plug\"\nfield = \"power\"\ndestination = \"lab\"\naction = \"bucket\"\nedges = [\n  1,\n  2,\n]\nlabels = [\"a\", \"b\", \"c\"]\n";
        let own = device_rules(text, "plug").expect("reads");
        assert_eq!(
            own.cells[0].params, "step = 5",
            "the comment is not a parameter"
        );
        assert_eq!(
            own.cells[2].params,
            "edges = [1, 2], labels = [\"a\", \"b\", \"c\"]"
        );
        // The grid sends back what it read, for vendor and lab only.
        let edit = GridEdit {
            device: "plug".into(),
            fields: vec!["power".into()],
            cells: vec![own.cells[0].clone(), own.cells[2].clone()],
            ..GridEdit::default()
        };
        assert_eq!(
            apply_grid(text, &edit).expect("edits"),
            text,
            "nothing changed"
        );
        // Changing vendor's cell leaves backup's rule, which was not sent.
        let mut changed = edit.clone();
        changed.cells[0].params = "step = 10".into();
        let out = apply_grid(text, &changed).expect("edits");
        assert!(out.contains("destination = \"backup\""), "{out}");
        assert!(
            out.contains("step = 10") && !out.contains("# watts"),
            "{out}"
        );
        assert!(
            out.contains("edges = [\n  1,\n  2,\n]"),
            "lab's rule kept as written: {out}"
        );
    }

    #[test]
    fn fields_whose_names_read_as_wildcards_are_refused() {
        for ok in ["power", "loc.lat", "nets[*].ssid", "$payload", "a-b_c"] {
            assert!(grid_can_name(ok), "{ok}");
        }
        for bad in [
            "*", "a.*", "$x", "a\"b", "", "[0]", "a..b", "x[1]", "x\0y", "a\nb",
        ] {
            assert!(!grid_can_name(bad), "{bad}");
        }
        let edit = GridEdit {
            device: "plug".into(),
            fields: vec!["*".into()],
            cells: vec![cell("*", "vendor", Some("share"), "")],
            ..GridEdit::default()
        };
        assert!(matches!(
            apply_grid("", &edit),
            Err(EditError::Unnameable(_))
        ));
        // Leaving such a cell to other rules is fine.
        let edit = GridEdit {
            cells: vec![cell("*", "vendor", None, "")],
            ..edit
        };
        assert_eq!(apply_grid("", &edit).expect("edits"), "");
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
        // A device or destination with quotes and newlines is a TOML
        // string, not syntax.
        let hostile = "p\"\n[[rule]]\ndevice = \"*";
        let edit = GridEdit {
            device: hostile.into(),
            fields: vec!["power".into()],
            cells: vec![cell("power", hostile, Some("share"), "")],
            ..GridEdit::default()
        };
        let out = apply_grid("", &edit).expect("edits");
        let r = device_rules(&out, hostile).expect("reads");
        assert_eq!(r.cells[0].destination, hostile);
        let doc = parse(&out).expect("TOML");
        assert_eq!(tables(&doc, "rule").expect("rules").len(), 1, "{out}");
        assert!(device_rules(&out, "*").expect("reads").cells.is_empty());
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
