use super::*;

const DESTS: &[&str] = &["vendor_cloud", "utility"];

fn eval(policy: &str, device: &str, payload: &str) -> Evaluation {
    let p = Policy::parse(policy).expect("test policy parses");
    p.evaluate(
        &Message {
            device,
            topic: "t",
            payload: payload.as_bytes(),
        },
        DESTS,
    )
}

fn out<'a>(e: &'a Evaluation, dest: &str) -> Option<&'a str> {
    e.outputs
        .iter()
        .find(|o| o.destination == dest)
        .and_then(|o| o.payload.as_deref())
        .map(|p| std::str::from_utf8(p).expect("utf8"))
}

const SAMPLE: &str = r#"{"temp":21.5,"ssid":"home","loc":{"lat":52.37,"lon":4.89}}"#;

#[test]
fn shares_only_the_allowed_field() {
    let e = eval(
        r#"
[[rule]]
device = "thermo"
field = "temp"
destination = "vendor_cloud"
action = "share"
"#,
        "thermo",
        SAMPLE,
    );
    assert_eq!(out(&e, "vendor_cloud"), Some(r#"{"temp":21.5}"#));
    assert_eq!(out(&e, "utility"), None, "another destination gets nothing");
}

#[test]
fn default_is_deny() {
    let e = eval("", "thermo", SAMPLE);
    assert!(e.outputs.iter().all(|o| o.payload.is_none()));
    assert!(e
        .outputs
        .iter()
        .all(|o| o.decisions.iter().all(|d| d.rule.is_none())));
    assert_eq!(e.fields.len(), 4);
}

#[test]
fn most_specific_rule_wins_and_is_reported() {
    let policy = r#"
[[rule]]
device = "*"
field = "*"
destination = "*"
action = "share"

[[rule]]
device = "thermo"
field = "loc"
destination = "*"
action = "drop"

[[rule]]
device = "thermo"
field = "loc.lat"
destination = "utility"
action = "share"
"#;
    let e = eval(policy, "thermo", SAMPLE);
    assert_eq!(
        out(&e, "vendor_cloud"),
        Some(r#"{"temp":21.5,"ssid":"home"}"#)
    );
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"temp":21.5,"ssid":"home","loc":{"lat":52.37}}"#)
    );
    let utility = &e.outputs[1];
    let lat = e
        .fields
        .iter()
        .position(|f| f.to_string() == "loc.lat")
        .expect("lat field");
    assert_eq!(utility.decisions[lat].rule, Some(RuleId(2)));
    let lon = e
        .fields
        .iter()
        .position(|f| f.to_string() == "loc.lon")
        .expect("lon field");
    assert_eq!(utility.decisions[lon].rule, Some(RuleId(1)));
    // Another device only sees the catch-all.
    let other = eval(policy, "plug", SAMPLE);
    assert_eq!(out(&other, "utility"), Some(SAMPLE));
}

#[test]
fn device_beats_group_beats_everyone() {
    let policy = r#"
[groups]
heating = ["thermo", "boiler"]

[[rule]]
device = "*"
field = "temp"
destination = "*"
action = "share"

[[rule]]
device = "@heating"
field = "temp"
destination = "*"
action = "drop"

[[rule]]
device = "boiler"
field = "temp"
destination = "*"
action = "share"
"#;
    assert_eq!(
        out(&eval(policy, "plug", SAMPLE), "utility"),
        Some(r#"{"temp":21.5}"#)
    );
    assert_eq!(out(&eval(policy, "thermo", SAMPLE), "utility"), None);
    assert_eq!(
        out(&eval(policy, "boiler", SAMPLE), "utility"),
        Some(r#"{"temp":21.5}"#)
    );
}

#[test]
fn non_json_payload_is_the_payload_field() {
    let policy = r#"
[[rule]]
device = "plug"
field = "$payload"
destination = "vendor_cloud"
action = "share"
"#;
    let e = eval(policy, "plug", "ON");
    assert_eq!(out(&e, "vendor_cloud"), Some("ON"));
    assert_eq!(e.fields[0].to_string(), "$payload");
    // A JSON object is not addressed by $payload.
    assert_eq!(out(&eval(policy, "plug", SAMPLE), "vendor_cloud"), None);
}

#[test]
fn malformed_json_goes_nowhere_whatever_the_rules_say() {
    let share_all =
        "[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n";
    for bad in [
        r#"{"ssid":"home","loc":[52.1,"#,
        r#"  [1, 2"#,
        r#"{"a":NaN}"#,
        "{",
    ] {
        let e = eval(share_all, "tracker", bad);
        assert!(e.malformed, "{bad}");
        assert!(e.outputs.iter().all(|o| o.payload.is_none()), "{bad}");
        assert!(e.fields.is_empty());
    }
    // Text that does not start like JSON is still the one field $payload,
    // and so are JSON scalars.
    for fine in ["ON", "21.5", "\"text\"", "} not json"] {
        let e = eval(share_all, "plug", fine);
        assert!(!e.malformed, "{fine}");
        assert_eq!(out(&e, "utility"), Some(fine));
    }
}

#[test]
fn share_forwards_numbers_exactly_as_written() {
    let policy = r#"
[[rule]]
device = "meter"
field = "*"
destination = "utility"
action = "share"

[[rule]]
device = "meter"
field = "x"
destination = "utility"
action = "drop"
"#;
    let e = eval(
        policy,
        "meter",
        r#"{"t":1e2,"big":12345678901234567890123,"x":1,"f":0.10}"#,
    );
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"t":1e2,"big":12345678901234567890123,"f":0.10}"#)
    );
}

#[test]
fn a_top_level_array_is_split_into_its_elements() {
    let policy = r#"
[[rule]]
device = "sensor"
field = "[*].t"
destination = "utility"
action = "share"

[[rule]]
device = "sensor"
field = "[0]"
destination = "vendor_cloud"
action = "share"
"#;
    let e = eval(policy, "sensor", r#"[{"t":1,"id":"a"},{"t":2,"id":"b"}]"#);
    assert_eq!(out(&e, "utility"), Some(r#"[{"t":1},{"t":2}]"#));
    assert_eq!(out(&e, "vendor_cloud"), Some(r#"[{"t":1,"id":"a"}]"#));
    assert_eq!(e.fields[0].to_string(), "[0].t");
}

#[test]
fn arrays_are_addressed_with_index_patterns() {
    let policy = r#"
[[rule]]
device = "meter"
field = "phases[*].w"
destination = "utility"
action = "share"
"#;
    let e = eval(
        policy,
        "meter",
        r#"{"phases":[{"w":1,"v":230},{"w":2,"v":231}],"id":"x"}"#,
    );
    assert_eq!(out(&e, "utility"), Some(r#"{"phases":[{"w":1},{"w":2}]}"#));
}

#[test]
fn errors_carry_line_and_column() {
    let err = Policy::parse(
        "[[rule]]\ndevice = \"a\"\nfield = \"temp\"\ndestination = \"x\"\naction = \"launch\"\n",
    )
    .expect_err("unknown action");
    assert_eq!(
        err.position,
        Position {
            line: 5,
            column: 10
        }
    );
    assert!(err.message.contains("launch"), "{}", err.message);

    let err = Policy::parse(
        "[[rule]]\ndevice = \"a\"\nfield = \"a..b\"\ndestination = \"*\"\naction = \"share\"\n",
    )
    .expect_err("bad path");
    assert_eq!(err.position.line, 3);

    let err = Policy::parse("[[rule]]\ndevise = \"a\"\n").expect_err("unknown key");
    assert_eq!(err.position.line, 2);

    let err = Policy::parse("[[rule]\n").expect_err("syntax");
    assert_eq!(err.position.line, 1);
}

#[test]
fn ties_are_rejected_naming_both_rules() {
    let policy = r#"
[[rule]]
device = "a"
field = "x.*"
destination = "d"
action = "share"

[[rule]]
device = "a"
field = "*.y"
destination = "d"
action = "drop"
"#;
    let err = Policy::parse(policy).expect_err("tie");
    assert_eq!(err.position.line, 8);
    assert!(err.message.contains("line 2"), "{}", err.message);

    let groups = r#"
[groups]
g1 = ["a", "b"]
g2 = ["b", "c"]

[[rule]]
device = "@g1"
field = "x"
destination = "*"
action = "share"

[[rule]]
device = "@g2"
field = "x"
destination = "*"
action = "drop"
"#;
    assert!(
        Policy::parse(groups).is_err(),
        "overlapping groups tie on device b"
    );
}

#[test]
fn unknown_destination_is_an_error() {
    let p = Policy::parse(
        "[[rule]]\ndevice = \"a\"\nfield = \"x\"\ndestination = \"vendr\"\naction = \"share\"\n",
    )
    .expect("parses");
    let err = p.check_destinations(&["vendor_cloud"]).expect_err("typo");
    assert_eq!(err.position.line, 1);
    assert!(err.message.contains("vendr"));
    assert!(p.check_destinations(&["vendr"]).is_ok());
}

#[test]
fn commands_are_allowed_only_by_a_rule() {
    let p = Policy::parse(
        r#"
[[command]]
device = "plug"
destination = "vendor_cloud"
topic = "cmnd/plug/POWER"
"#,
    )
    .expect("parses");
    assert_eq!(
        p.allows_command("plug", "vendor_cloud", "cmnd/plug/POWER"),
        Some(0)
    );
    assert_eq!(
        p.allows_command("plug", "vendor_cloud", "cmnd/plug/Upgrade"),
        None
    );
    assert_eq!(p.allows_command("plug", "utility", "cmnd/plug/POWER"), None);
    assert_eq!(
        p.allows_command("other", "vendor_cloud", "cmnd/plug/POWER"),
        None
    );
    assert!(
        Policy::parse("[[command]]\ndevice=\"a\"\ndestination=\"d\"\ntopic=\"a/#/b\"\n").is_err()
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_object() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z]{0,6}".prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
        ];
        let tree = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-d]{1,2}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-d]{1,2}", tree, 1..5)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = Policy::parse(&text);
        }

        #[test]
        fn parsing_rule_shaped_text_never_panics(
            device in "[@*a-z\\[\\]\"$.]{0,8}",
            field in "[a-z*.\\[\\]0-9$\"]{0,12}",
            action in "[a-z]{0,6}",
        ) {
            let text = format!("[[rule]]\ndevice = {device:?}\nfield = {field:?}\ndestination = \"*\"\naction = {action:?}\n");
            if let Err(e) = Policy::parse(&text) {
                prop_assert!(e.position.line >= 1 && e.position.column >= 1);
            }
        }

        #[test]
        fn empty_policy_never_shares(payload in prop::collection::vec(any::<u8>(), 0..256)) {
            let e = Policy::default().evaluate(&Message { device: "d", topic: "t", payload: &payload }, DESTS);
            prop_assert!(e.outputs.iter().all(|o| o.payload.is_none()));
        }

        #[test]
        fn share_everything_is_identity(v in json_object()) {
            let p = Policy::parse("[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"*\"\naction=\"share\"\n").unwrap();
            let bytes = serde_json::to_vec(&v).unwrap();
            let e = p.evaluate(&Message { device: "d", topic: "t", payload: &bytes }, DESTS);
            for o in &e.outputs {
                let got: serde_json::Value = serde_json::from_slice(o.payload.as_deref().unwrap()).unwrap();
                prop_assert_eq!(&got, &v);
            }
        }

        #[test]
        fn output_holds_only_shared_fields(v in json_object(), key in "[a-d]{1,2}") {
            let policy = format!("[[rule]]\ndevice=\"d\"\nfield=\"{key}\"\ndestination=\"utility\"\naction=\"share\"\n");
            let p = Policy::parse(&policy).unwrap();
            let bytes = serde_json::to_vec(&v).unwrap();
            let e = p.evaluate(&Message { device: "d", topic: "t", payload: &bytes }, DESTS);
            prop_assert!(e.outputs[0].payload.is_none());
            match (&e.outputs[1].payload, v.get(&key)) {
                (Some(out), Some(orig)) => {
                    let got: serde_json::Value = serde_json::from_slice(out).unwrap();
                    let obj = got.as_object().unwrap();
                    prop_assert_eq!(obj.len(), 1);
                    // Empty containers are leaves and kept as they are; others keep only their leaves.
                    prop_assert_eq!(&got[&key], orig);
                }
                (None, orig) => {
                    // A present key always has at least one leaf, so it must be shared.
                    prop_assert!(orig.is_none());
                }
                (Some(_), None) => prop_assert!(false, "shared a field that is not there"),
            }
        }

        /// Whatever the other fields' actions, a dropped field's value
        /// appears in no output, and is never handed to the context (so it
        /// cannot leave sealed or pseudonymized either).
        #[test]
        fn a_dropped_value_never_leaves_in_any_form(
            v in json_object(),
            action in prop::sample::select(ACTIONS.to_vec()),
            secret in "[A-Z]{12}",
        ) {
            let mut v = v;
            v["zz"] = serde_json::Value::from(format!("SECRET{secret}"));
            let params = params_of(action);
            let policy = format!(
                "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"*\"\naction=\"{action}\"\n{params}\n\
                 [[rule]]\ndevice=\"*\"\nfield=\"zz\"\ndestination=\"*\"\naction=\"drop\"\n"
            );
            let p = Policy::parse(&policy).unwrap();
            let ctx = Recording::default();
            let bytes = serde_json::to_vec(&v).unwrap();
            let e = p.evaluate_with(&Message { device: "d", topic: "t", payload: &bytes }, DESTS, &ctx);
            for o in &e.outputs {
                if let Some(out) = &o.payload {
                    prop_assert!(!String::from_utf8_lossy(out).contains(&secret));
                }
            }
            prop_assert!(!ctx.seen.borrow().iter().any(|s| s.contains(&secret)));
        }

        /// A field the inventory has not approved, under wildcard rules of
        /// any action, appears in no output and never reaches the context;
        /// the approved ones still go.
        #[test]
        fn a_held_value_never_leaves_in_any_form(
            v in json_object(),
            action in prop::sample::select(ACTIONS.to_vec()),
            secret in "[A-Z]{12}",
        ) {
            let mut v = v;
            v["zz"] = serde_json::Value::from(format!("SECRET{secret}"));
            v["zz_nested"] = serde_json::json!({"x": [format!("SECRET{secret}")]});
            let policy = format!(
                "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"*\"\naction=\"{action}\"\n{}",
                params_of(action)
            );
            let p = Policy::parse(&policy).unwrap();
            let ctx = Recording { unapproved_prefix: Some("zz"), ..Default::default() };
            let bytes = serde_json::to_vec(&v).unwrap();
            let e = p.evaluate_with(&Message { device: "d", topic: "t", payload: &bytes }, DESTS, &ctx);
            for o in &e.outputs {
                if let Some(out) = &o.payload {
                    prop_assert!(!String::from_utf8_lossy(out).contains(&secret));
                }
                for (f, d) in e.fields.iter().zip(&o.decisions) {
                    prop_assert_eq!(f.generic().starts_with("zz"), d.held);
                }
            }
            prop_assert!(!ctx.seen.borrow().iter().any(|s| s.contains(&secret)));
        }

        /// The same policy, message and context state give the same output.
        #[test]
        fn evaluation_is_deterministic(v in json_object()) {
            let p = Policy::parse(
                "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"*\"\naction=\"pseudonymize\"\n\
                 [[rule]]\ndevice=\"*\"\nfield=\"a\"\ndestination=\"utility\"\naction=\"round\"\nstep = 2\n",
            ).unwrap();
            let bytes = serde_json::to_vec(&v).unwrap();
            let msg = Message { device: "d", topic: "t", payload: &bytes };
            let a = p.evaluate_with(&msg, DESTS, &Recording::default());
            let b = p.evaluate_with(&msg, DESTS, &Recording::default());
            prop_assert_eq!(a, b);
        }

        /// A JSON object cut short is malformed: nothing goes anywhere.
        #[test]
        fn malformed_payloads_never_produce_output(v in json_object(), cut in 1usize..64) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let end = bytes.len().saturating_sub(cut).max(1);
            let short = &bytes[..end];
            prop_assume!(serde_json::from_slice::<serde_json::Value>(short).is_err());
            let p = Policy::parse("[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"*\"\naction=\"share\"\n").unwrap();
            let e = p.evaluate(&Message { device: "d", topic: "t", payload: short }, DESTS);
            prop_assert!(e.malformed);
            prop_assert!(e.outputs.iter().all(|o| o.payload.is_none()));
        }
    }

    const ACTIONS: &[&str] = &[
        "share",
        "redact",
        "round",
        "bucket",
        "truncate_time",
        "seal",
        "pseudonymize",
        "coarsen_location",
        "rate_limit",
        "aggregate",
    ];

    fn params_of(action: &str) -> &'static str {
        match action {
            "round" => "step = 0.5\n",
            "bucket" => "edges = [1]\nlabels = [\"lo\", \"hi\"]\n",
            "truncate_time" => "unit = \"hour\"\n",
            "coarsen_location" => "decimals = 2\n",
            "rate_limit" => "interval = \"1m\"\n",
            "aggregate" => "fn = \"sum\"\nwindow = \"1m\"\n",
            _ => "",
        }
    }

    /// A context that records what it is handed, and answers
    /// deterministically; fields whose name starts with
    /// `unapproved_prefix` are not approved.
    #[derive(Default)]
    struct Recording {
        seen: std::cell::RefCell<Vec<String>>,
        unapproved_prefix: Option<&'static str>,
    }

    impl transform::Context for Recording {
        fn accumulate(&self, _: &crate::aggregate::WindowSlot<'_>, value: &[u8]) {
            self.seen
                .borrow_mut()
                .push(String::from_utf8_lossy(value).into_owned());
        }
        fn field_approved(&self, _: &str, field: &FieldPath) -> bool {
            self.unapproved_prefix
                .is_none_or(|p| !field.generic().starts_with(p))
        }
        fn destination_approved(&self, _: &str) -> bool {
            true
        }
        fn seal(&self, value: &[u8], _: Option<&str>) -> Option<String> {
            let v = String::from_utf8_lossy(value).into_owned();
            self.seen.borrow_mut().push(v.clone());
            Some(format!("dw1.{}", v.len()))
        }
        fn pseudonym(&self, destination: &str, value: &[u8]) -> Option<String> {
            let v = String::from_utf8_lossy(value).into_owned();
            self.seen.borrow_mut().push(v.clone());
            Some(format!("ps-{destination}-{}", v.len()))
        }
        fn allow_once_per(&self, key: &str, _: u64) -> bool {
            self.seen.borrow_mut().push(key.to_string());
            true
        }
    }
}

#[test]
fn rules_have_stable_ids_by_name_or_content() {
    let one = r#"
[[rule]]
name = "temp-to-vendor"
device = "thermo"
field = "temp"
destination = "vendor_cloud"
action = "share"

[[rule]]
device = "thermo"
field = "hum"
destination = "vendor_cloud"
action = "share"
"#;
    let p = Policy::parse(one).expect("parse");
    assert_eq!(p.rules()[0].id, "temp-to-vendor");
    let hashed = p.rules()[1].id.clone();
    assert!(hashed.starts_with("r-") && hashed.len() == 14, "{hashed}");
    // The same rule, elsewhere in another file, has the same id.
    let other = r#"
[[rule]]
device = "plug"
field = "*"
destination = "utility"
action = "drop"

[[rule]]
device = "thermo"
field = "hum"
destination = "vendor_cloud"
action = "share"
"#;
    let q = Policy::parse(other).expect("parse");
    assert_eq!(q.rules()[1].id, hashed);
    assert_ne!(q.rules()[0].id, hashed);
    // Names are unique, and of the safe alphabet.
    let twice = one.replace(
        "field = \"hum\"",
        "name = \"temp-to-vendor\"\nfield = \"hum\"",
    );
    let e = Policy::parse(&twice).expect_err("duplicate name");
    assert!(e.message.contains("already used"), "{e}");
    let bad = one.replace("temp-to-vendor", "temp to vendor");
    assert!(Policy::parse(&bad).is_err());
}

fn eval_on(policy: &str, device: &str, topic: &str, payload: &str) -> Evaluation {
    Policy::parse(policy).expect("test policy parses").evaluate(
        &Message {
            device,
            topic,
            payload: payload.as_bytes(),
        },
        DESTS,
    )
}

#[test]
fn rules_can_look_at_the_topic() {
    // Tasmota: SENSOR carries energy, STATE carries Wi-Fi details.
    let policy = r#"
[[rule]]
device = "plug"
field = "*"
destination = "utility"
action = "share"

[[rule]]
device = "plug"
topic = "tele/plug/STATE"
field = "*"
destination = "utility"
action = "drop"

[[rule]]
device = "plug"
topic = "tele/+/STATE"
field = "POWER"
destination = "utility"
action = "share"
"#;
    let sensor = eval_on(
        policy,
        "plug",
        "tele/plug/SENSOR",
        r#"{"ENERGY":{"Power":12}}"#,
    );
    assert_eq!(out(&sensor, "utility"), Some(r#"{"ENERGY":{"Power":12}}"#));
    let state = eval_on(
        policy,
        "plug",
        "tele/plug/STATE",
        r#"{"POWER":"ON","Wifi":{"SSId":"home"}}"#,
    );
    assert_eq!(out(&state, "utility"), Some(r#"{"POWER":"ON"}"#));
    // The deciding rule for Wifi is the topic rule, not the general one.
    let p = Policy::parse(policy).expect("parse");
    let wifi = state
        .fields
        .iter()
        .position(|f| f.to_string() == "Wifi.SSId")
        .expect("field");
    let decided = state.outputs[1].decisions[wifi]
        .rule
        .expect("a rule decided");
    assert_eq!(
        p.rule(decided).and_then(|r| r.topic.as_deref()),
        Some("tele/plug/STATE")
    );
}

#[test]
fn topic_rules_tie_only_when_their_filters_can_meet() {
    let rule = |topic: &str, action: &str| {
        format!("[[rule]]\ndevice = \"plug\"\ntopic = \"{topic}\"\nfield = \"a\"\ndestination = \"utility\"\naction = \"{action}\"\n")
    };
    // Disjoint topics: no tie.
    let ok = format!(
        "{}{}",
        rule("tele/plug/SENSOR", "share"),
        rule("tele/plug/STATE", "drop")
    );
    assert!(Policy::parse(&ok).is_ok());
    // Both could match tele/plug/STATE: a tie, rejected.
    let tie = format!(
        "{}{}",
        rule("tele/+/STATE", "share"),
        rule("tele/plug/#", "drop")
    );
    let e = Policy::parse(&tie).expect_err("tie");
    assert!(e.message.contains("ties"), "{e}");
    // A filter that is not one is refused with its position.
    let bad = rule("tele/#/x", "share");
    let e = Policy::parse(&bad).expect_err("bad filter");
    assert_eq!(e.position.line, 3);
}

#[test]
fn value_actions_transform_what_is_shared() {
    let policy = r#"
[[rule]]
device = "thermo"
field = "temp"
destination = "utility"
action = "round"
step = 0.5

[[rule]]
device = "thermo"
field = "ssid"
destination = "utility"
action = "redact"

[[rule]]
device = "thermo"
field = "age"
destination = "utility"
action = "bucket"
edges = [18, 65]
labels = ["minor", "adult", "senior"]

[[rule]]
device = "thermo"
field = "at"
destination = "utility"
action = "truncate_time"
unit = "hour"

[[rule]]
device = "thermo"
field = "note"
destination = "utility"
action = "round"
step = 1
"#;
    let e = eval(
        policy,
        "thermo",
        r#"{"temp":21.74,"ssid":"home","age":40,"at":"2026-11-30T16:35:14Z","note":"warm","x":1}"#,
    );
    // `note` is text under `round`: withheld. `x` has no rule: not shared.
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"temp":21.5,"ssid":"[redacted]","age":"adult","at":"2026-11-30T16:00:00Z"}"#)
    );
    assert_eq!(out(&e, "vendor_cloud"), None);
}

#[test]
fn value_actions_check_their_parameters() {
    let rule = |extra: &str| {
        format!("[[rule]]\ndevice = \"d\"\nfield = \"f\"\ndestination = \"utility\"\n{extra}\n")
    };
    for (extra, needle) in [
        ("action = \"round\"", "needs \"step\""),
        ("action = \"round\"\nstep = 0", "above 0"),
        ("action = \"share\"\nstep = 1", "takes no \"step\""),
        (
            "action = \"bucket\"\nedges = [2, 1]\nlabels = [\"a\", \"b\", \"c\"]",
            "ascending",
        ),
        (
            "action = \"bucket\"\nedges = [1]\nlabels = [\"a\"]",
            "give 2 labels",
        ),
        ("action = \"truncate_time\"\nunit = \"week\"", "not one of"),
        ("action = \"aggregate\"", "needs \"fn\""),
        (
            "action = \"aggregate\"\nfn = \"median\"\nwindow = \"1h\"",
            "not one of",
        ),
        (
            "action = \"aggregate\"\nfn = \"sum\"\nwindow = \"10ms\"",
            "from 1s to 31d",
        ),
        ("action = \"aggregate\"\nfn = \"sum\"", "needs \"window\""),
        (
            "action = \"round\"\nstep = 1\nwindow = \"1h\"",
            "takes no \"window\"",
        ),
        (
            "action = \"coarsen_location\"",
            "needs \"decimals or geohash\"",
        ),
        ("action = \"coarsen_location\"\ngeohash = 13", "1 to 12"),
        (
            "action = \"coarsen_location\"\ngeohash = 5\ndecimals = 2",
            "not both",
        ),
        (
            "action = \"seal\"\nrecipient = \"bob\"",
            "not an age public key",
        ),
        (
            "action = \"share\"\nrecipient = \"bob\"",
            "takes no \"recipient\"",
        ),
        (
            "action = \"share\"\ninterval = \"1m\"",
            "takes no \"interval\"",
        ),
        ("action = \"frobnicate\"", "unknown action"),
    ] {
        let e = Policy::parse(&rule(extra)).expect_err(extra);
        assert!(e.message.contains(needle), "{extra}: {e}");
        assert!(e.position.line >= 1);
    }
}

#[test]
fn seal_goes_through_the_context_and_is_withheld_without_one() {
    struct Fake;
    impl transform::Context for Fake {
        fn accumulate(&self, _: &crate::aggregate::WindowSlot<'_>, _: &[u8]) {}
        fn field_approved(&self, _: &str, _: &FieldPath) -> bool {
            true
        }
        fn destination_approved(&self, _: &str) -> bool {
            true
        }
        fn seal(&self, value: &[u8], _: Option<&str>) -> Option<String> {
            Some(format!("dw1.sealed({})", String::from_utf8_lossy(value)))
        }
        fn pseudonym(&self, _: &str, _: &[u8]) -> Option<String> {
            None
        }
        fn allow_once_per(&self, _: &str, _: u64) -> bool {
            false
        }
    }
    let policy = r#"
[[rule]]
device = "tracker"
field = "loc"
destination = "utility"
action = "seal"

[[rule]]
device = "tracker"
field = "bat"
destination = "utility"
action = "share"
"#;
    let p = Policy::parse(policy).expect("parse");
    let msg = Message {
        device: "tracker",
        topic: "t",
        payload: br#"{"loc":[52.37,4.89],"bat":90}"#,
    };
    let e = p.evaluate_with(&msg, DESTS, &Fake);
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"loc":["dw1.sealed(52.37)","dw1.sealed(4.89)"],"bat":90}"#)
    );
    // With no key, the sealed fields are withheld, never sent in the clear.
    let e = p.evaluate(&msg, DESTS);
    assert_eq!(out(&e, "utility"), Some(r#"{"bat":90}"#));
}

#[test]
fn pseudonyms_come_from_the_context_per_destination() {
    struct Fake;
    impl transform::Context for Fake {
        fn accumulate(&self, _: &crate::aggregate::WindowSlot<'_>, _: &[u8]) {}
        fn field_approved(&self, _: &str, _: &FieldPath) -> bool {
            true
        }
        fn destination_approved(&self, _: &str) -> bool {
            true
        }
        fn seal(&self, _: &[u8], _: Option<&str>) -> Option<String> {
            None
        }
        fn pseudonym(&self, destination: &str, value: &[u8]) -> Option<String> {
            Some(format!(
                "ps({destination}:{})",
                String::from_utf8_lossy(value)
            ))
        }
        fn allow_once_per(&self, _: &str, _: u64) -> bool {
            false
        }
    }
    let policy = "[[rule]]\ndevice = \"lock\"\nfield = \"user\"\ndestination = \"*\"\naction = \"pseudonymize\"\n";
    let p = Policy::parse(policy).expect("parse");
    let msg = Message {
        device: "lock",
        topic: "t",
        payload: br#"{"user":"alice","pin":1234}"#,
    };
    let e = p.evaluate_with(&msg, DESTS, &Fake);
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"user":"ps(utility:\"alice\")"}"#)
    );
    assert_eq!(
        out(&e, "vendor_cloud"),
        Some(r#"{"user":"ps(vendor_cloud:\"alice\")"}"#)
    );
    assert_eq!(
        out(&p.evaluate(&msg, DESTS), "utility"),
        None,
        "no key: withheld"
    );
}

#[test]
fn a_location_is_coarsened_as_siblings_an_object_or_an_array() {
    let rule = |field: &str| {
        format!("[[rule]]\ndevice = \"gps\"\nfield = \"{field}\"\ndestination = \"utility\"\naction = \"coarsen_location\"\ndecimals = 2\n")
    };
    let siblings = format!("{}{}", rule("lat"), rule("lon"));
    let e = eval(
        &siblings,
        "gps",
        r#"{"lat":52.37021,"lon":4.89517,"speed":3}"#,
    );
    assert_eq!(out(&e, "utility"), Some(r#"{"lat":52.37,"lon":4.90}"#));
    let e = eval(
        &rule("loc"),
        "gps",
        r#"{"loc":{"lat":52.37021,"lon":4.89517}}"#,
    );
    assert_eq!(
        out(&e, "utility"),
        Some(r#"{"loc":{"lat":52.37,"lon":4.90}}"#)
    );
    let e = eval(&rule("pos"), "gps", r#"{"pos":[52.37021,4.89517]}"#);
    assert_eq!(out(&e, "utility"), Some(r#"{"pos":[52.37,4.90]}"#));
    let bad = rule("loc").replace("decimals = 2", "decimals = 9");
    assert!(Policy::parse(&bad).is_err());
}

#[test]
fn rate_limit_asks_the_context_once_per_field_and_destination() {
    use std::cell::RefCell;
    struct Clocked(RefCell<Vec<String>>);
    impl transform::Context for Clocked {
        fn accumulate(&self, _: &crate::aggregate::WindowSlot<'_>, _: &[u8]) {}
        fn field_approved(&self, _: &str, _: &FieldPath) -> bool {
            true
        }
        fn destination_approved(&self, _: &str) -> bool {
            true
        }
        fn seal(&self, _: &[u8], _: Option<&str>) -> Option<String> {
            None
        }
        fn pseudonym(&self, _: &str, _: &[u8]) -> Option<String> {
            None
        }
        fn allow_once_per(&self, key: &str, interval_ms: u64) -> bool {
            assert_eq!(interval_ms, 60_000);
            let mut seen = self.0.borrow_mut();
            if seen.iter().any(|k| k == key) {
                return false;
            }
            seen.push(key.to_string());
            true
        }
    }
    let policy = "[[rule]]\ndevice = \"meter\"\nfield = \"w\"\ndestination = \"*\"\naction = \"rate_limit\"\ninterval = \"1m\"\n\n\
                  [[rule]]\ndevice = \"meter\"\nfield = \"v\"\ndestination = \"*\"\naction = \"share\"\n";
    let p = Policy::parse(policy).expect("parse");
    let ctx = Clocked(RefCell::new(Vec::new()));
    let msg = Message {
        device: "meter",
        topic: "t",
        payload: br#"{"w":5,"v":230}"#,
    };
    let first = p.evaluate_with(&msg, DESTS, &ctx);
    assert_eq!(out(&first, "utility"), Some(r#"{"w":5,"v":230}"#));
    assert_eq!(
        out(&first, "vendor_cloud"),
        Some(r#"{"w":5,"v":230}"#),
        "its own turn per destination"
    );
    let second = p.evaluate_with(&msg, DESTS, &ctx);
    assert_eq!(
        out(&second, "utility"),
        Some(r#"{"v":230}"#),
        "w waits for the interval"
    );
    assert!(Policy::parse(&policy.replace("\"1m\"", "\"soon\"")).is_err());
}

/// Every TOML example in docs/policy.md parses: the documentation cannot
/// drift from the syntax.
#[test]
fn the_documented_examples_parse() {
    let doc = include_str!("../../docs/policy.md");
    let mut parsed = 0;
    for block in doc.split("```toml").skip(1) {
        let Some(text) = block.split("```").next() else {
            continue;
        };
        if !text.contains("[[rule]]") || text.contains('…') {
            continue;
        }
        if let Err(e) = Policy::parse(text) {
            panic!("a docs/policy.md example does not parse: {e}\n{text}");
        }
        parsed += 1;
    }
    assert!(parsed >= 6, "only {parsed} examples found");
}
