//! The sharing statement of every worked example in docs/policy.md, word
//! for word against a golden file in tests/golden/. After a deliberate
//! change of wording, `UPDATE_GOLDEN=1 cargo test -p policy --test
//! statement_golden` rewrites them; review the diff.

use policy::statement::{statement, DestinationFacts};
use policy::Policy;

fn facts(name: &str) -> DestinationFacts {
    let (recipient, country, purpose) = match name {
        "vendor_cloud" => (Some("Acme Inc."), Some("US"), Some("remote control")),
        "utility" => (Some("City Energy"), Some("DE"), Some("billing")),
        "tracker_app" => (Some("Trackly Ltd."), Some("GB"), Some("find my bag")),
        _ => (None, None, None),
    };
    DestinationFacts {
        name: name.to_string(),
        recipient: recipient.map(str::to_string),
        purpose: purpose.map(str::to_string),
        country: country.map(str::to_string),
        approved: true,
    }
}

fn slug(title: &str) -> String {
    let mut s: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').chars().take(40).collect()
}

#[test]
fn the_worked_examples_read_as_their_golden_statements() {
    let doc = include_str!("../../docs/policy.md");
    let examples = doc
        .split("## Worked examples")
        .nth(1)
        .expect("the worked examples section");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    for section in examples.split("\n### ").skip(1) {
        let title = section.lines().next().unwrap_or_default();
        let Some(text) = section
            .split("```toml")
            .nth(1)
            .and_then(|b| b.split("```").next())
        else {
            continue;
        };
        let policy = Policy::parse(text).unwrap_or_else(|e| panic!("{title}: {e}"));
        let mut devices: Vec<String> = policy.named_devices().into_iter().map(|(d, _)| d).collect();
        devices.sort();
        devices.dedup();
        let devices: Vec<(String, String)> = devices
            .into_iter()
            .map(|d| {
                let name = d.replace(['-', '_'], " ");
                (d, name)
            })
            .collect();
        let mut dests: Vec<String> = policy
            .rules()
            .iter()
            .filter_map(|r| match &r.destination {
                policy::DestinationSelector::Named(n) => Some(n.clone()),
                policy::DestinationSelector::Any => None,
            })
            .collect();
        dests.sort();
        dests.dedup();
        if dests.is_empty() {
            dests.push("vendor_cloud".into());
        }
        let facts: Vec<DestinationFacts> = dests.iter().map(|d| facts(d)).collect();
        let got = statement(&policy, &devices, &facts).text();
        let file = dir.join(format!("{}.txt", slug(title)));
        if update {
            std::fs::write(&file, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", file.display()));
        assert_eq!(got, want, "{title}: the statement changed");
        // The same, as JSON-LD: one handling per line that shares anything.
        let st = statement(&policy, &devices, &facts);
        let ld = st.to_json_ld();
        let sharing = st.lines.iter().filter(|l| !l.shared.is_empty()).count();
        assert_eq!(
            ld["@graph"].as_array().map(Vec::len),
            Some(sharing),
            "{title}"
        );
        assert_eq!(ld["@context"]["dpv"], "https://w3id.org/dpv#");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples");
}
