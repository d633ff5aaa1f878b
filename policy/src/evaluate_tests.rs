//! Evaluation with a caller's inventory and windows: the quarantine for
//! new fields, `aggregate`, and `coarsen_location` to a geohash.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::aggregate::{AggregateFn, WindowSlot};
use crate::path::FieldPath;
use crate::{transform, Evaluation, Message, Policy};

const DESTS: &[&str] = &["vendor_cloud", "utility"];

/// (destination, field, function, window, value) as a window got it.
type Added = (String, String, AggregateFn, u64, String);

/// Knows which fields are approved (by their generic name), and records
/// what reaches its windows.
#[derive(Default)]
struct Inventory {
    approved: BTreeSet<String>,
    new_destinations: BTreeSet<String>,
    windows: RefCell<Vec<Added>>,
}

impl transform::Context for Inventory {
    fn seal(&self, _: &[u8], recipient: Option<&str>) -> Option<String> {
        Some(format!("sealed-to-{}", recipient.unwrap_or("user")))
    }
    fn pseudonym(&self, _: &str, _: &[u8]) -> Option<String> {
        None
    }
    fn allow_once_per(&self, _: &str, _: u64) -> bool {
        true
    }
    fn accumulate(&self, slot: &WindowSlot<'_>, value: &[u8]) {
        self.windows.borrow_mut().push((
            slot.destination.to_string(),
            slot.field.to_string(),
            slot.func,
            slot.window_ms,
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    fn field_approved(&self, device: &str, field: &FieldPath) -> bool {
        self.approved
            .contains(&format!("{device}/{}", field.generic()))
    }
    fn destination_approved(&self, destination: &str) -> bool {
        !self.new_destinations.contains(destination)
    }
}

fn eval(policy: &str, ctx: &Inventory, device: &str, payload: &str) -> Evaluation {
    Policy::parse(policy)
        .expect("test policy parses")
        .evaluate_with(
            &Message {
                device,
                topic: "tele/x",
                payload: payload.as_bytes(),
            },
            DESTS,
            ctx,
        )
}

fn out<'a>(e: &'a Evaluation, dest: &str) -> Option<&'a str> {
    e.outputs
        .iter()
        .find(|o| o.destination == dest)
        .and_then(|o| o.payload.as_deref())
        .and_then(|p| std::str::from_utf8(p).ok())
}

const WILDCARD: &str =
    "[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n";

#[test]
fn a_new_field_is_held_from_wildcard_rules_until_approved() {
    let mut inv = Inventory::default();
    inv.approved.insert("plug/power".into());
    let e = eval(WILDCARD, &inv, "plug", r#"{"power":12,"ssid":"home"}"#);
    assert_eq!(out(&e, "vendor_cloud"), Some(r#"{"power":12}"#));
    let ssid = &e.outputs[0].decisions[1];
    assert!(ssid.held && !ssid.is_shared() && ssid.rule.is_some());
    assert!(!e.outputs[0].decisions[0].held);
    // Approved: it flows.
    inv.approved.insert("plug/ssid".into());
    let e = eval(WILDCARD, &inv, "plug", r#"{"power":12,"ssid":"home"}"#);
    assert_eq!(
        out(&e, "vendor_cloud"),
        Some(r#"{"power":12,"ssid":"home"}"#)
    );
}

#[test]
fn a_new_device_sends_nothing_under_a_wildcard_payload_included() {
    let inv = Inventory::default();
    let e = eval(WILDCARD, &inv, "newcomer", r#"{"a":1,"b":{"c":2}}"#);
    assert_eq!(out(&e, "vendor_cloud"), None);
    assert!(e.outputs[0].decisions.iter().all(|d| d.held));
    let e = eval(WILDCARD, &inv, "newcomer", "plain text");
    assert_eq!(out(&e, "vendor_cloud"), None);
    assert!(e.outputs[0].decisions[0].held);
}

#[test]
fn a_rule_that_names_the_field_shares_it_at_once() {
    let inv = Inventory::default();
    let policy = format!(
        "{WILDCARD}\n[[rule]]\ndevice = \"*\"\nfield = \"power\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n\
         [[rule]]\ndevice = \"plug\"\nfield = \"loc\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n"
    );
    let e = eval(
        &policy,
        &inv,
        "plug",
        r#"{"power":12,"loc":{"lat":1},"x":3,"n":[{"a":1}]}"#,
    );
    // `power` and `loc` (a parent of `loc.lat`) are named; `x` and `n[0].a`
    // only by `*`.
    assert_eq!(
        out(&e, "vendor_cloud"),
        Some(r#"{"power":12,"loc":{"lat":1}}"#)
    );
}

#[test]
fn an_exempt_device_shares_new_fields_at_once_and_others_stay_held() {
    let inv = Inventory::default();
    let policy =
        format!("[groups]\nlab = [\"bench\"]\n\n[quarantine]\nexempt = [\"@lab\"]\n\n{WILDCARD}");
    let e = eval(&policy, &inv, "bench", r#"{"new":1}"#);
    assert_eq!(out(&e, "vendor_cloud"), Some(r#"{"new":1}"#));
    let e = eval(&policy, &inv, "other", r#"{"new":1}"#);
    assert_eq!(out(&e, "vendor_cloud"), None);
    // The exemption names devices like any rule does.
    let p = Policy::parse("[quarantine]\nexempt = [\"thermo\"]\n").expect("parse");
    assert!(p.named_devices().iter().any(|(d, _)| d == "thermo"));
    assert!(!p.quarantines("thermo") && p.quarantines("plug"));
    let bad =
        Policy::parse("[quarantine]\nexempt = [\"@nogroup\"]\n").expect_err("undefined group");
    assert_eq!(bad.position.line, 2);
    assert!(
        Policy::parse("[quarantine]\nexcempt = [\"a\"]\n").is_err(),
        "a typo is an error"
    );
}

#[test]
fn array_elements_are_one_field_for_the_quarantine() {
    let mut inv = Inventory::default();
    inv.approved.insert("scanner/nets[*].rssi".into());
    let e = eval(
        WILDCARD,
        &inv,
        "scanner",
        r#"{"nets":[{"rssi":-50,"ssid":"a"},{"rssi":-70,"ssid":"b"}]}"#,
    );
    assert_eq!(
        out(&e, "vendor_cloud"),
        Some(r#"{"nets":[{"rssi":-50},{"rssi":-70}]}"#)
    );
}

const METER: &str = r#"
[quarantine]
exempt = ["meter"]

[[rule]]
device = "meter"
field = "energy_wh"
destination = "utility"
action = "aggregate"
fn = "sum"
window = "1h"

[[rule]]
device = "meter"
field = "power_w"
destination = "*"
action = "aggregate"
fn = "max"
window = "15m"

[[rule]]
device = "meter"
field = "status"
destination = "utility"
action = "share"
"#;

#[test]
fn aggregated_values_go_to_the_window_not_out() {
    let inv = Inventory::default();
    let e = eval(
        METER,
        &inv,
        "meter",
        r#"{"energy_wh":12.5,"power_w":800,"status":"ok","serial":"X1"}"#,
    );
    assert_eq!(out(&e, "utility"), Some(r#"{"status":"ok"}"#));
    assert_eq!(
        out(&e, "vendor_cloud"),
        None,
        "only an aggregate for the vendor"
    );
    let w = inv.windows.borrow();
    assert_eq!(
        *w,
        vec![
            (
                "vendor_cloud".into(),
                "power_w".into(),
                AggregateFn::Max,
                900_000,
                "800".into()
            ),
            (
                "utility".into(),
                "energy_wh".into(),
                AggregateFn::Sum,
                3_600_000,
                "12.5".into()
            ),
            (
                "utility".into(),
                "power_w".into(),
                AggregateFn::Max,
                900_000,
                "800".into()
            ),
        ]
    );
}

#[test]
fn held_fields_never_reach_a_window() {
    let inv = Inventory::default();
    let policy = "[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"utility\"\naction = \"aggregate\"\nfn = \"count\"\nwindow = \"1m\"\n";
    let e = eval(policy, &inv, "meter", r#"{"a":1}"#);
    assert!(inv.windows.borrow().is_empty());
    assert!(e.outputs[1].decisions[0].held);
}

const GPS: &str = r#"
[quarantine]
exempt = ["*"]

[[rule]]
device = "tracker"
field = "*"
destination = "vendor_cloud"
action = "coarsen_location"
geohash = 5

[[rule]]
device = "tracker"
field = "*"
destination = "utility"
action = "seal"
recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
"#;

#[test]
fn a_geohash_replaces_a_pair_in_every_shape() {
    let inv = Inventory::default();
    let cases = [
        (r#"{"lat":52.3702,"lon":4.8952}"#, r#"{"geohash":"u173z"}"#),
        (
            r#"{"pos":{"latitude":52.3702,"longitude":4.8952},"acc":3}"#,
            r#"{"pos":{"geohash":"u173z"}}"#,
        ),
        (r#"{"pos":[52.3702,4.8952]}"#, r#"{"pos":"u173z"}"#),
        (r#"[52.3702,4.8952]"#, r#""u173z""#),
    ];
    for (payload, want) in cases {
        let e = eval(GPS, &inv, "tracker", payload);
        assert_eq!(out(&e, "vendor_cloud"), Some(want), "{payload}");
    }
    // Withheld: a lone coordinate, a pair off the globe, a clash.
    for payload in [
        r#"{"lat":52.37}"#,
        r#"{"lat":95,"lon":4.8}"#,
        r#"{"lat":"52.3","lon":4.8}"#,
        r#"{"lat":52.3,"lon":4.8,"geohash":"x"}"#,
    ] {
        let e = eval(GPS, &inv, "tracker", payload);
        assert_eq!(out(&e, "vendor_cloud"), None, "{payload}");
    }
}

#[test]
fn seal_names_its_recipient_to_the_context() {
    let inv = Inventory::default();
    let e = eval(GPS, &inv, "tracker", r#"{"lat":52.3702}"#);
    assert_eq!(
        out(&e, "utility"),
        Some(
            r#"{"lat":"sealed-to-age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}"#
        )
    );
}

/// The energy meter of docs/policy.md does what the text says: readings
/// go to hourly windows for the utility, nothing to the vendor.
#[test]
fn the_documented_energy_meter_keeps_readings_home() {
    let doc = include_str!("../../docs/policy.md");
    let Some(section) = doc.split("### An energy meter").nth(1) else {
        panic!("the energy meter example is gone from docs/policy.md");
    };
    let Some(text) = section
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
    else {
        panic!("no TOML block in the energy meter example");
    };
    let inv = Inventory::default();
    let e = eval(
        text,
        &inv,
        "meter",
        r#"{"energy_wh":12.5,"power_w":2300,"voltage":231}"#,
    );
    assert_eq!(out(&e, "utility"), None);
    assert_eq!(out(&e, "vendor_cloud"), None);
    let w = inv.windows.borrow();
    let got: Vec<(&str, &str, AggregateFn, u64)> = w
        .iter()
        .map(|(d, f, func, ms, _)| (d.as_str(), f.as_str(), *func, *ms))
        .collect();
    assert_eq!(
        got,
        [
            ("utility", "energy_wh", AggregateFn::Sum, 3_600_000),
            ("utility", "power_w", AggregateFn::Max, 3_600_000),
        ]
    );
}

#[test]
fn a_new_destination_gets_only_what_rules_naming_it_share() {
    let mut inv = Inventory::default();
    inv.new_destinations.insert("utility".into());
    let policy = "[quarantine]\nexempt = [\"*\"]\n\n\
        [[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n\n\
        [[rule]]\ndevice = \"meter\"\nfield = \"kwh\"\ndestination = \"utility\"\naction = \"share\"\n";
    let e = eval(policy, &inv, "meter", r#"{"kwh":3,"ssid":"home"}"#);
    assert_eq!(out(&e, "vendor_cloud"), Some(r#"{"kwh":3,"ssid":"home"}"#));
    assert_eq!(out(&e, "utility"), Some(r#"{"kwh":3}"#));
    assert!(e.outputs[1].held && !e.outputs[0].held);
    inv.new_destinations.clear();
    let e = eval(policy, &inv, "meter", r#"{"kwh":3,"ssid":"home"}"#);
    assert_eq!(out(&e, "utility"), Some(r#"{"kwh":3,"ssid":"home"}"#));
}

/// A rule for every destination still decides for a new one: its drop or
/// its transform is not skipped in favour of a less specific rule that
/// names the destination.
#[test]
fn a_new_destination_does_not_escape_wildcard_drops_and_transforms() {
    let mut inv = Inventory::default();
    inv.new_destinations.insert("utility".into());
    let policy = "[quarantine]\nexempt = [\"*\"]\n\n\
        [[rule]]\ndevice = \"camera\"\nfield = \"*\"\ndestination = \"*\"\naction = \"drop\"\n\n\
        [[rule]]\ndevice = \"*\"\nfield = \"battery\"\ndestination = \"utility\"\naction = \"share\"\n\n\
        [[rule]]\ndevice = \"tracker\"\nfield = \"loc\"\ndestination = \"*\"\naction = \"coarsen_location\"\ngeohash = 5\n\n\
        [[rule]]\ndevice = \"*\"\nfield = \"loc\"\ndestination = \"utility\"\naction = \"share\"\n";
    let e = eval(policy, &inv, "camera", r#"{"battery":80}"#);
    assert_eq!(out(&e, "utility"), None, "the camera's drop holds");
    let e = eval(
        policy,
        &inv,
        "tracker",
        r#"{"loc":{"lat":52.3702,"lon":4.8952}}"#,
    );
    assert_eq!(out(&e, "utility"), None, "withheld, never the raw location");
    inv.new_destinations.clear();
    let e = eval(
        policy,
        &inv,
        "tracker",
        r#"{"loc":{"lat":52.3702,"lon":4.8952}}"#,
    );
    assert_eq!(out(&e, "utility"), Some(r#"{"loc":{"geohash":"u173z"}}"#));
    let e = eval(policy, &inv, "camera", r#"{"battery":80}"#);
    assert_eq!(out(&e, "utility"), None);
}

/// What left is what was written: a shared field its action withholds is
/// not marked sent; a geohash pair is.
#[test]
fn sent_marks_exactly_the_values_in_the_payload() {
    let inv = Inventory::default();
    let policy = "[quarantine]\nexempt = [\"*\"]\n\n\
        [[rule]]\ndevice = \"d\"\nfield = \"t\"\ndestination = \"utility\"\naction = \"round\"\nstep = 1\n\n\
        [[rule]]\ndevice = \"d\"\nfield = \"pos\"\ndestination = \"utility\"\naction = \"coarsen_location\"\ngeohash = 5\n\n\
        [[rule]]\ndevice = \"d\"\nfield = \"n\"\ndestination = \"utility\"\naction = \"share\"\n";
    let e = eval(
        policy,
        &inv,
        "d",
        r#"{"t":"warm","pos":{"lon":4.8952,"x":1,"lat":52.3702},"n":1}"#,
    );
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"pos":{"geohash":"u173z"},"n":1}"#)
    );
    let names: Vec<String> = e.fields.iter().map(|f| f.to_string()).collect();
    let sent: Vec<&str> = names
        .iter()
        .zip(&e.outputs[1].sent)
        .filter(|(_, s)| **s)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        sent,
        ["pos.lon", "pos.lat", "n"],
        "text under round is withheld"
    );
    assert!(e.outputs[0].sent.iter().all(|s| !s));
}
