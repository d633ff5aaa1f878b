//! The field inventory: every field each device has sent, and whether the
//! user approved it. It is what the policy's quarantine asks: a field that
//! is not approved is shared only by a rule that names it (no wildcard), so a
//! firmware update that adds telemetry does not leak it through a `*` rule.
//!
//! A field that is not approved is *held* while some wildcard rule would
//! share it but the quarantine keeps it back (that is what waits for the
//! user), and merely *new* otherwise (a rule names it, or nothing shares
//! it). On disk (the `fields` tree): device, field name, that state, and
//! when it was first seen. Never a value: the sample shown with a held
//! field, and the counts, live in memory only.
//!
//! Bounded: at most [`MAX_FIELDS_PER_DEVICE`] names per device are
//! remembered. Past that, a new name is held and not recorded (a device
//! inventing names cannot grow the disk or the memory).

use std::collections::HashMap;
use std::sync::Mutex;

use policy::json::Json;
use policy::FieldPath;
use serde::{Deserialize, Serialize};

use super::StoreError;

pub const MAX_FIELDS_PER_DEVICE: usize = 1024;
/// Bytes of a field name the inventory records; a longer one is held and
/// never recorded (nor approvable): a rule naming it still shares it.
pub const MAX_FIELD_NAME_BYTES: usize = 256;
/// Characters of a sample kept (the rest is cut, marked with `…`).
const SAMPLE_CHARS: usize = 80;

/// One field of one device, as `dataward fields` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldInfo {
    pub device: String,
    /// Its name, with array indices as `[*]` (`nets[*].ssid`).
    pub field: String,
    pub approved: bool,
    /// Not approved, and a wildcard rule would share it at its last
    /// sighting: it waits for the user.
    pub held: bool,
    pub first_seen_ms: u64,
    /// Messages that carried it since the gateway started.
    pub seen_since_start: u64,
    /// Its first value since the gateway started, while held, from memory
    /// (none after a restart until the device sends it again).
    pub sample: Option<String>,
}

struct FieldState {
    approved: bool,
    held: bool,
    first_seen_ms: u64,
    seen: u64,
    sample: Option<String>,
}

pub struct FieldInventory {
    tree: sled::Tree,
    /// The store's flag for writes that are not journaled: a field seen
    /// for the first time is made durable by the next checkpoint.
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The approved names per device, rebuilt when an approval changes:
    /// the pipeline asks once per field and destination of every message,
    /// and this answers without the inventory's lock, which every
    /// connection's messages would otherwise contend for.
    approved: arc_swap::ArcSwap<HashMap<String, std::collections::HashSet<String>>>,
    devices: Mutex<HashMap<String, HashMap<String, FieldState>>>,
}

fn approved_names(
    devices: &HashMap<String, HashMap<String, FieldState>>,
) -> HashMap<String, std::collections::HashSet<String>> {
    devices
        .iter()
        .map(|(d, fields)| {
            let names: std::collections::HashSet<String> = fields
                .iter()
                .filter(|(_, s)| s.approved)
                .map(|(n, _)| n.clone())
                .collect();
            (d.clone(), names)
        })
        .filter(|(_, names)| !names.is_empty())
        .collect()
}

fn key(device: &str, field: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 1 + field.len());
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(field.as_bytes());
    k
}

const NEW: u8 = 0;
const APPROVED: u8 = 1;
const HELD: u8 = 2;

fn value(state: u8, first_seen_ms: u64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = state;
    v[1..].copy_from_slice(&first_seen_ms.to_le_bytes());
    v
}

impl FieldInventory {
    pub(crate) fn open(
        tree: sled::Tree,
        dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, StoreError> {
        let mut devices: HashMap<String, HashMap<String, FieldState>> = HashMap::new();
        for entry in tree.iter() {
            let (k, v) = entry?;
            let split = k.iter().position(|b| *b == 0);
            let (Some(split), true) = (split, v.len() == 9) else {
                return Err(StoreError::Corrupt("a field inventory entry".into()));
            };
            let device = String::from_utf8_lossy(&k[..split]).into_owned();
            let field = String::from_utf8_lossy(&k[split + 1..]).into_owned();
            let mut first = [0u8; 8];
            first.copy_from_slice(&v[1..]);
            devices.entry(device).or_default().insert(
                field,
                FieldState {
                    approved: v[0] == APPROVED,
                    held: v[0] == HELD,
                    first_seen_ms: u64::from_le_bytes(first),
                    seen: 0,
                    sample: None,
                },
            );
        }
        let approved = arc_swap::ArcSwap::from_pointee(approved_names(&devices));
        Ok(Self {
            tree,
            dirty,
            approved,
            devices: Mutex::new(devices),
        })
    }

    /// After an approval changed: the pipeline's snapshot follows.
    fn publish_approved(&self, devices: &HashMap<String, HashMap<String, FieldState>>) {
        self.approved
            .store(std::sync::Arc::new(approved_names(devices)));
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, FieldState>>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the user approved `field` of `device`.
    pub fn is_approved(&self, device: &str, field: &FieldPath) -> bool {
        let approved = self.approved.load();
        // Most devices have no approved field: no name is built for them.
        approved
            .get(device)
            .is_some_and(|names| names.contains(&field.generic()))
    }

    /// Notes the fields of one message, and for each whether the
    /// quarantine held it from some destination (`held`, same order): new
    /// names are recorded, known ones counted, and a held field keeps a
    /// sample in memory. Returns how many names were new.
    pub fn observe(
        &self,
        device: &str,
        fields: &[FieldPath],
        held: &[bool],
        payload: &[u8],
        now_ms: u64,
    ) -> usize {
        let mut new = 0;
        let mut want_sample: Vec<(String, &FieldPath)> = Vec::new();
        {
            let mut devices = self.lock();
            if !devices.contains_key(device) {
                devices.insert(device.to_string(), HashMap::new());
            }
            let Some(known) = devices.get_mut(device) else {
                return 0;
            };
            for (i, path) in fields.iter().enumerate() {
                let held_now = held.get(i).copied().unwrap_or(false);
                let name = path.generic();
                let room =
                    known.len() < MAX_FIELDS_PER_DEVICE && name.len() <= MAX_FIELD_NAME_BYTES;
                match known.get_mut(&name) {
                    Some(state) => {
                        state.seen += 1;
                        if !state.approved && state.held != held_now {
                            // Rare (a policy change): the state on disk follows.
                            let v = value(if held_now { HELD } else { NEW }, state.first_seen_ms);
                            match self.tree.insert(key(device, &name), &v) {
                                Ok(_) => self.mark_dirty(),
                                Err(e) => {
                                    tracing::warn!(error = %e, "a field's state could not be recorded")
                                }
                            }
                            state.held = held_now;
                            if !held_now {
                                state.sample = None;
                            }
                        }
                        if state.held && state.sample.is_none() {
                            want_sample.push((name, path));
                        }
                    }
                    None if room => {
                        let v = value(if held_now { HELD } else { NEW }, now_ms);
                        if let Err(e) = self.tree.insert(key(device, &name), &v) {
                            // Still not approved: an unknown name never is.
                            tracing::warn!(error = %e, "a new field could not be recorded");
                            continue;
                        }
                        self.mark_dirty();
                        new += 1;
                        known.insert(
                            name.clone(),
                            FieldState {
                                approved: false,
                                held: held_now,
                                first_seen_ms: now_ms,
                                seen: 1,
                                sample: None,
                            },
                        );
                        if held_now {
                            want_sample.push((name, path));
                        }
                    }
                    None => {}
                }
            }
        }
        if !want_sample.is_empty() {
            self.take_samples(device, &want_sample, payload);
        }
        if new > 0 {
            tracing::info!(device = %crate::short(device), new, "new fields (held ones: dataward fields --pending)");
        }
        new
    }

    fn take_samples(&self, device: &str, wanted: &[(String, &FieldPath)], payload: &[u8]) {
        let parsed = Json::parse(payload).ok();
        let mut devices = self.lock();
        let Some(known) = devices.get_mut(device) else {
            return;
        };
        for (name, path) in wanted {
            let text = if path.is_whole_payload() {
                String::from_utf8_lossy(payload).into_owned()
            } else {
                match parsed.as_ref().and_then(|j| j.at(path.segments())) {
                    Some(j) => String::from_utf8_lossy(&j.to_vec()).into_owned(),
                    None => continue,
                }
            };
            if let Some(state) = known.get_mut(name) {
                state.sample = Some(cut(&text));
            }
        }
    }

    /// Releases a held field. Errors name the device's fields when the
    /// name is not one of them.
    pub fn approve(&self, device: &str, field: &str) -> Result<ApproveOutcome, StoreError> {
        let mut devices = self.lock();
        let Some(state) = devices.get_mut(device).and_then(|f| f.get_mut(field)) else {
            return Ok(ApproveOutcome::Unknown);
        };
        if state.approved {
            return Ok(ApproveOutcome::AlreadyApproved);
        }
        self.tree
            .insert(key(device, field), &value(APPROVED, state.first_seen_ms))?;
        state.approved = true;
        state.held = false;
        state.sample = None;
        self.publish_approved(&devices);
        Ok(ApproveOutcome::Approved)
    }

    /// Releases every field of `device` not approved yet, held or new;
    /// returns their names.
    pub fn approve_all(&self, device: &str) -> Result<Vec<String>, StoreError> {
        let mut devices = self.lock();
        let mut names = Vec::new();
        if let Some(fields) = devices.get_mut(device) {
            for (name, state) in fields.iter_mut().filter(|(_, s)| !s.approved) {
                self.tree
                    .insert(key(device, name), &value(APPROVED, state.first_seen_ms))?;
                state.approved = true;
                state.held = false;
                state.sample = None;
                names.push(name.clone());
            }
        }
        self.publish_approved(&devices);
        names.sort();
        Ok(names)
    }

    /// The fields, sorted by device and name; only held ones if `pending`
    /// (approving a field that is merely new is allowed too: it matters
    /// once a wildcard rule would share it).
    pub fn list(&self, device: Option<&str>, pending: bool) -> Vec<FieldInfo> {
        let devices = self.lock();
        let mut out: Vec<FieldInfo> = devices
            .iter()
            .filter(|(d, _)| device.is_none_or(|want| want == d.as_str()))
            .flat_map(|(d, fields)| {
                fields
                    .iter()
                    .filter(|(_, s)| !pending || s.held)
                    .map(move |(name, s)| FieldInfo {
                        device: d.clone(),
                        field: name.clone(),
                        approved: s.approved,
                        held: s.held,
                        first_seen_ms: s.first_seen_ms,
                        seen_since_start: s.seen,
                        sample: s.sample.clone(),
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.device, &a.field).cmp(&(&b.device, &b.field)));
        out
    }

    /// Forgets every field of `device` (its history was deleted, or the
    /// device removed): whatever it sends next is new again.
    pub fn forget_device(&self, device: &str) -> Result<usize, StoreError> {
        let mut devices = self.lock();
        let mut prefix = device.as_bytes().to_vec();
        prefix.push(0);
        let mut n = 0;
        for k in self.tree.scan_prefix(&prefix).keys() {
            self.tree.remove(k?)?;
            n += 1;
        }
        devices.remove(device);
        self.publish_approved(&devices);
        Ok(n)
    }

    /// Forgets every field of every device.
    pub fn forget_all(&self) -> Result<(), StoreError> {
        let mut devices = self.lock();
        self.tree.clear()?;
        devices.clear();
        Ok(())
    }
}

/// What `approve` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproveOutcome {
    Approved,
    AlreadyApproved,
    Unknown,
}

/// A sample as shown: at most [`SAMPLE_CHARS`] characters.
pub(crate) fn cut(text: &str) -> String {
    match text.char_indices().nth(SAMPLE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::path::Segment;

    fn paths(payload: &str) -> Vec<FieldPath> {
        policy::Policy::default()
            .evaluate(
                &policy::Message {
                    device: "d",
                    topic: "t",
                    payload: payload.as_bytes(),
                },
                &["x"],
            )
            .fields
    }

    fn open(dir: &std::path::Path) -> FieldInventory {
        let db = crate::store::open_test_db(dir);
        FieldInventory::open(db.open_tree("fields").expect("tree"), Default::default())
            .expect("open")
    }

    #[test]
    fn new_fields_are_held_then_approved_and_that_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let inv = open(dir.path());
            let p = r#"{"power":12,"ssid":"home-wifi","nets":[{"c":1},{"c":2}],"x":1}"#;
            // `x` is new but nothing would share it: not waiting for anyone.
            let held = [true, true, true, true, false];
            assert_eq!(inv.observe("plug", &paths(p), &held, p.as_bytes(), 1000), 4);
            assert_eq!(inv.observe("plug", &paths(p), &held, p.as_bytes(), 2000), 0);
            let pending = inv.list(Some("plug"), true);
            let names: Vec<&str> = pending.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(names, ["nets[*].c", "power", "ssid"]);
            assert_eq!(inv.list(Some("plug"), false).len(), 4);
            let ssid = &pending[2];
            assert_eq!(ssid.sample.as_deref(), Some("\"home-wifi\""));
            assert_eq!((ssid.first_seen_ms, ssid.seen_since_start), (1000, 2));
            let power = FieldPath::from_segments(vec![Segment::Key("power".into())]);
            assert!(!inv.is_approved("plug", &power));
            assert_eq!(
                inv.approve("plug", "power").expect("approve"),
                ApproveOutcome::Approved
            );
            assert_eq!(
                inv.approve("plug", "power").expect("again"),
                ApproveOutcome::AlreadyApproved
            );
            assert_eq!(
                inv.approve("plug", "nope").expect("unknown"),
                ApproveOutcome::Unknown
            );
            assert!(inv.is_approved("plug", &power));
            assert_eq!(inv.list(None, true).len(), 2);
        }
        let inv = open(dir.path());
        let power = FieldPath::from_segments(vec![Segment::Key("power".into())]);
        assert!(inv.is_approved("plug", &power), "approval is kept on disk");
        let ssid = inv
            .list(Some("plug"), true)
            .into_iter()
            .find(|f| f.field == "ssid");
        let ssid = ssid.expect("still held after a reopen");
        assert_eq!(ssid.sample, None, "samples are never on disk");
        // A policy change that names `ssid`: no longer held, no sample.
        let p = r#"{"ssid":"x"}"#;
        inv.observe("plug", &paths(p), &[false], p.as_bytes(), 3000);
        assert_eq!(inv.list(Some("plug"), true).len(), 1, "only nets[*].c");
        assert_eq!(inv.approve_all("plug").expect("all").len(), 3);
        assert!(inv.list(None, true).is_empty());
        assert_eq!(inv.forget_device("plug").expect("forget"), 4);
        assert!(inv.list(None, false).is_empty());
    }

    #[test]
    fn the_disk_holds_names_never_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let inv = open(dir.path());
        let p = r#"{"secret_field":"VALUE-4711"}"#;
        inv.observe("d", &paths(p), &[true], p.as_bytes(), 1);
        inv.observe("d", &[FieldPath::whole_payload()], &[true], b"TEXT-4712", 2);
        let all: Vec<u8> = inv
            .tree
            .iter()
            .flat_map(|e| {
                let (k, v) = e.expect("entry");
                [k.to_vec(), v.to_vec()].concat()
            })
            .collect();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("secret_field") && text.contains("$payload"));
        assert!(!text.contains("4711") && !text.contains("4712"));
        let samples: Vec<_> = inv
            .list(None, true)
            .into_iter()
            .filter_map(|f| f.sample)
            .collect();
        assert!(samples.contains(&"TEXT-4712".to_string()));
    }

    #[test]
    fn a_device_inventing_names_is_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let inv = open(dir.path());
        for i in 0..(MAX_FIELDS_PER_DEVICE + 50) {
            let p = format!("{{\"f{i}\":1}}");
            inv.observe("noisy", &paths(&p), &[true], p.as_bytes(), 1);
        }
        assert_eq!(inv.list(Some("noisy"), false).len(), MAX_FIELDS_PER_DEVICE);
        assert_eq!(inv.tree.len(), MAX_FIELDS_PER_DEVICE);
        let name = "n".repeat(MAX_FIELD_NAME_BYTES + 1);
        let p = format!("{{\"{name}\":1}}");
        assert_eq!(
            inv.observe("other", &paths(&p), &[true], p.as_bytes(), 1),
            0
        );
        let long = "x".repeat(500);
        let p = format!("{{\"a\":\"{long}\"}}");
        inv.observe("other", &paths(&p), &[true], p.as_bytes(), 1);
        let sample = inv.list(Some("other"), true)[0]
            .sample
            .clone()
            .expect("sample");
        assert_eq!(sample.chars().count(), SAMPLE_CHARS + 1);
    }

    #[test]
    fn approving_all_and_forgetting_a_device_show_in_what_the_pipeline_asks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inv = open(dir.path());
        let p = r#"{"power":1,"ssid":"x"}"#;
        inv.observe("plug", &paths(p), &[true, true], p.as_bytes(), 1000);
        inv.observe("lamp", &paths(p), &[true, true], p.as_bytes(), 1000);
        let ssid = FieldPath::from_segments(vec![Segment::Key("ssid".into())]);
        assert!(!inv.is_approved("plug", &ssid));
        assert_eq!(inv.approve_all("plug").expect("approve").len(), 2);
        assert!(inv.is_approved("plug", &ssid));
        assert!(!inv.is_approved("lamp", &ssid), "another device's field");
        inv.forget_device("plug").expect("forget");
        assert!(!inv.is_approved("plug", &ssid), "forgotten with the device");
    }
}
