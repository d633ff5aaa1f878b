//! Home Assistant as a policed local consumer. A real Tasmota-style device
//! publishes; the cloud (a real mosquitto) gets what the policy shares with
//! it; a consumer account (a real rumqttc client, set up as Home Assistant
//! sets up its MQTT client: a will and a birth on `homeassistant/status`)
//! gets only the fields the policy shares with the local destination, and
//! its subscriptions to devices' topics, to other views and to `#` are
//! refused. The discovery messages are checked by Home Assistant's own code
//! (its discovery schema and template engine, installed by the test
//! script). A new policy withdraws what it stops sharing, and clears the
//! retained view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dataward_tests::*;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use serde_json::{json, Value};

const VIEW: &str = "local/home_assistant/";

const LOCAL: &str = "\n[[destination]]\nname = \"home_assistant\"\nkind = \"local\"\n\
     home_assistant_discovery = true\nrecipient = \"Home Assistant on this hub\"\n\
     \n[[destination]]\nname = \"panel\"\nkind = \"local\"\n";

/// The cloud gets every field; Home Assistant gets the power reading and
/// the online flag, nothing else.
const POLICY: &str = "[quarantine]\nexempt = [\"*\"]\n\n\
     [[rule]]\ndevice = \"plug\"\nfield = \"*\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n\n\
     [[rule]]\ndevice = \"plug\"\nfield = \"ENERGY.Power\"\ndestination = \"home_assistant\"\naction = \"share\"\n\n\
     [[rule]]\ndevice = \"plug\"\nfield = \"Online\"\ndestination = \"home_assistant\"\naction = \"share\"\n";

/// The next version: Home Assistant keeps the power reading only.
const POLICY_V2: &str = "[quarantine]\nexempt = [\"*\"]\n\n\
     [[rule]]\ndevice = \"plug\"\nfield = \"*\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n\n\
     [[rule]]\ndevice = \"plug\"\nfield = \"ENERGY.Power\"\ndestination = \"home_assistant\"\naction = \"share\"\n";

const READING: &str =
    r#"{"ENERGY":{"Power":42,"Total":1234.5},"Online":true,"Wifi":{"SSId":"home-net"}}"#;

/// A consumer that is not Home Assistant: no will.
fn panel_options(gw: &Gateway, user: &str, password: &str, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", gw.mqtt.port());
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

fn consumer_options(gw: &Gateway, user: &str, password: &str, client_id: &str) -> MqttOptions {
    let mut o = panel_options(gw, user, password, client_id);
    // As Home Assistant does: its will says it went offline.
    o.set_last_will(LastWill::new(
        "homeassistant/status",
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    o
}

/// Subscribes to `filter` and answers whether the broker granted it; the
/// messages that arrive meanwhile (retained ones, say) go into `seen`.
async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: &str,
    seen: &mut BTreeMap<String, Vec<u8>>,
) -> Result<bool> {
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::SubAck(a)) => {
                    return Ok(matches!(
                        a.return_codes.first(),
                        Some(SubscribeReasonCode::Success(_))
                    ))
                }
                Event::Incoming(Packet::Publish(p)) => {
                    seen.insert(p.topic.clone(), p.payload.to_vec());
                }
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no SUBACK for {filter}"))?
}

/// Messages arriving on `events` for `wait`, by topic (the last per topic).
async fn gather(events: &mut EventLoop, wait: Duration) -> BTreeMap<String, Vec<u8>> {
    collect(None, events, wait, |_| false)
        .await
        .into_iter()
        .collect()
}

fn configs(got: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    got.iter()
        .filter(|(t, _)| t.starts_with("homeassistant/") && t.ends_with("/config"))
        .map(|(t, p)| (t.clone(), p.clone()))
        .collect()
}

/// Runs Home Assistant's own checks (tests/tools/ha_discovery_check.py)
/// over `configs`, with `states` as the state topics' messages.
fn home_assistant_check(
    dir: &Path,
    configs: &BTreeMap<String, Vec<u8>>,
    states: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<Value>> {
    let python = ha_python()?;
    let input = json!({
        "configs": configs.iter().map(|(t, p)| json!({
            "topic": t, "payload": String::from_utf8_lossy(p),
        })).collect::<Vec<_>>(),
        "states": states.iter().map(|(t, p)| (t.clone(), json!(String::from_utf8_lossy(p))))
            .collect::<serde_json::Map<_, _>>(),
    });
    let file = dir.join("discovery.json");
    std::fs::write(&file, serde_json::to_vec(&input)?)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/ha_discovery_check.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&file)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "the Home Assistant check failed to run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// The Python with Home Assistant installed, which scripts/test.sh puts
/// under target/tools (never skipped: without it, the test fails).
fn ha_python() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("DATAWARD_HA_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/home-assistant/bin/python");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "Home Assistant is not installed at {}: run scripts/test.sh, which installs it",
            p.display()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_reads_only_what_the_policy_shares_with_it() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let plug = add_device(&data, "plug", "tasmota")?;
    let policy = write_policy(dir.path(), POLICY)?;
    let config = config_for(&data, &cloud, Some(&policy), LOCAL);
    let conf_file = dir.path().join("dataward.toml");
    std::fs::write(&conf_file, &config)?;
    let conf = conf_file.to_string_lossy().into_owned();

    // Added with the gateway stopped. With two local destinations, the
    // one it reads must be named.
    let unnamed = cli(&["consumer", "add", "home-assistant", "--config", &conf])?;
    assert_eq!(unnamed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unnamed.stderr).contains("--destination"));
    let out = cli(&[
        "consumer",
        "add",
        "home-assistant",
        "--destination",
        "home_assistant",
        "--json",
        "--config",
        &conf,
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(added["destination"], "home_assistant");
    assert_eq!(added["discovery"], true);
    let password = added["password"]
        .as_str()
        .ok_or_else(|| anyhow!("no password in {added}"))?
        .to_string();
    // A consumer of a destination that is not local is refused, as is an
    // id a device has.
    let refused = cli(&[
        "consumer",
        "add",
        "x",
        "--destination",
        "vendor_cloud",
        "--config",
        &conf,
    ])?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not local"));
    let taken = cli(&[
        "consumer",
        "add",
        "plug",
        "--destination",
        "panel",
        "--config",
        &conf,
    ])?;
    assert_eq!(taken.status.code(), Some(2));
    // The wall panel's consumer reads the other local destination.
    let panel = cli(&[
        "consumer",
        "add",
        "wall-panel",
        "--destination",
        "panel",
        "--json",
        "--config",
        &conf,
    ])?;
    assert!(panel.status.success());
    let panel: Value = serde_json::from_slice(&panel.stdout)?;
    let panel_password = panel["password"].as_str().unwrap_or_default().to_string();

    let gw = Gateway::start(dir.path(), &config)?;
    // Home Assistant's account, with the client id given.
    let ha_options =
        |client_id: &str| consumer_options(&gw, "home-assistant", &password, client_id);
    let (cloud_client, mut cloud_events) =
        cloud_subscriber(&cloud, "home/#", "local-consumer-cloud").await?;

    let (ha, mut ha_events) = connect(ha_options("home-assistant")).await?;
    let mut early = BTreeMap::new();
    for refused in [
        "tele/plug/SENSOR",
        "tele/#",
        "#",
        "local/#",
        "local/vendor_cloud/#",
        "+/home_assistant/#",
    ] {
        assert!(
            !subscribe(&ha, &mut ha_events, refused, &mut early).await?,
            "a consumer subscribed to {refused}"
        );
    }
    assert!(subscribe(&ha, &mut ha_events, &format!("{VIEW}#"), &mut early).await?);
    assert!(subscribe(&ha, &mut ha_events, "homeassistant/#", &mut early).await?);
    assert!(early.is_empty(), "nothing to read yet: {early:?}");
    // Its birth message is allowed (and goes nowhere but to consumers).
    ha.publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await?;

    // A consumer's client id is its own: not a device's, and not another
    // consumer's (whose session, subscriptions and all, it would take).
    let stolen = connect(ha_options("plug.ha")).await;
    assert!(stolen.is_err(), "a consumer took a device's client id");
    let mut panel_opts = panel_options(&gw, "wall-panel", &panel_password, "home-assistant");
    panel_opts.set_clean_session(false);
    assert!(
        connect(panel_opts).await.is_err(),
        "a consumer took another's session"
    );
    assert_eq!(
        gw.log()
            .matches("a consumer's client id must be its id")
            .count(),
        2,
        "both refused for their client id"
    );
    // The panel sees its own view only, and no discovery.
    let (wall, mut wall_events) = connect(panel_options(
        &gw,
        "wall-panel",
        &panel_password,
        "wall-panel",
    ))
    .await?;
    let mut wall_seen = BTreeMap::new();
    for refused in [&*format!("{VIEW}#"), "homeassistant/#"] {
        assert!(!subscribe(&wall, &mut wall_events, refused, &mut wall_seen).await?);
    }
    assert!(subscribe(&wall, &mut wall_events, "local/panel/#", &mut wall_seen).await?);

    let (device, mut device_events) = connect(device_options(gw.mqtt, &plug, "plug")).await?;
    tokio::spawn(async move { while device_events.poll().await.is_ok() {} });
    device
        .publish("tele/plug/SENSOR", QoS::AtLeastOnce, false, READING)
        .await?;

    let got = gather(&mut ha_events, Duration::from_secs(3)).await;
    let view_topic = format!("{VIEW}tele/plug/SENSOR");
    let view: Value = serde_json::from_slice(
        got.get(&view_topic)
            .ok_or_else(|| anyhow!("no view message; got {:?}", got.keys()))?,
    )?;
    assert_eq!(view, json!({"ENERGY": {"Power": 42}, "Online": true}));
    let announced = configs(&got);
    assert_eq!(announced.len(), 2, "{:?}", announced.keys());
    for topic in got.keys() {
        assert!(
            *topic == view_topic
                || announced.contains_key(topic)
                || topic == "homeassistant/status",
            "the consumer got {topic}"
        );
    }
    // The cloud got every field, on its own topic.
    let at_cloud = collect(
        Some(&cloud_client),
        &mut cloud_events,
        Duration::from_secs(10),
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(at_cloud.len(), 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&at_cloud[0].1)?,
        serde_json::from_str::<Value>(READING)?
    );

    // Home Assistant's own code accepts both configs, keeps every key, and
    // its templates read the values out of the view message. A config
    // without a state topic is refused by the same check.
    let mut checked = announced.clone();
    checked.insert(
        "homeassistant/sensor/broken/config".into(),
        br#"{"name":"no state topic"}"#.to_vec(),
    );
    let states = BTreeMap::from([(view_topic.clone(), got[&view_topic].clone())]);
    let verdicts = home_assistant_check(dir.path(), &checked, &states)?;
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    let mut values = Vec::new();
    for v in &verdicts {
        if v["topic"] == "homeassistant/sensor/broken/config" {
            assert_eq!(v["ok"], false, "{v}");
            continue;
        }
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(
            v["dropped"],
            json!([]),
            "keys Home Assistant does not know: {v}"
        );
        values.push((v["component"].clone(), v["value"].clone()));
    }
    values.sort_by_key(|v| v.0.to_string());
    assert_eq!(
        values,
        [
            (json!("binary_sensor"), json!("ON")),
            (json!("sensor"), json!("42"))
        ]
    );

    // A consumer publishing into a device's topic or the view reaches
    // neither the cloud nor the view.
    ha.publish(
        "tele/plug/SENSOR",
        QoS::AtLeastOnce,
        false,
        r#"{"ENERGY":{"Power":999}}"#,
    )
    .await?;
    ha.publish(
        view_topic.as_str(),
        QoS::AtLeastOnce,
        false,
        r#"{"forged":1}"#,
    )
    .await?;
    let after = gather(&mut ha_events, Duration::from_secs(2)).await;
    assert!(!after.contains_key(&view_topic), "{after:?}");
    let leaked = collect(
        Some(&cloud_client),
        &mut cloud_events,
        Duration::from_secs(2),
        |g| !g.is_empty(),
    )
    .await;
    assert!(leaked.is_empty(), "{leaked:?}");

    // A consumer that starts later gets the current view and the configs
    // at once (retained).
    let (late, mut late_events) = connect(ha_options("home-assistant.late")).await?;
    let mut retained = BTreeMap::new();
    assert!(subscribe(&late, &mut late_events, &format!("{VIEW}#"), &mut retained).await?);
    assert!(subscribe(&late, &mut late_events, "homeassistant/#", &mut retained).await?);
    retained.extend(gather(&mut late_events, Duration::from_secs(2)).await);
    assert_eq!(retained.get(&view_topic), got.get(&view_topic));
    assert_eq!(configs(&retained), announced);
    // (Two connections per account at most, by default.)
    late.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while late_events.poll().await.is_ok() {}
    })
    .await;
    drop((late, late_events));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status = cli_json(&data, &["status"])?;
    let local = status["destinations"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "home_assistant"))
        .ok_or_else(|| anyhow!("no home_assistant in {status}"))?;
    assert_eq!(
        local["consumers_online"], 1,
        "one account, two connections: {status}"
    );
    assert_eq!(
        status["devices"]["connected"], 1,
        "consumers are not devices"
    );

    // A new policy stops sharing `Online`: its entity is withdrawn (an
    // empty config), and the retained view goes until the next message.
    let v2 = dir.path().join("policy-v2.toml");
    std::fs::write(&v2, POLICY_V2)?;
    cli_ok(&data, &["policy", "apply", &v2.to_string_lossy()])?;
    let withdrawn = gather(&mut ha_events, Duration::from_secs(3)).await;
    let online_topic = announced
        .keys()
        .find(|t| t.starts_with("homeassistant/binary_sensor/"))
        .ok_or_else(|| anyhow!("no binary sensor"))?;
    assert_eq!(
        withdrawn.get(online_topic).map(Vec::len),
        Some(0),
        "{withdrawn:?}"
    );
    assert_eq!(
        configs(&withdrawn).len(),
        1,
        "the withdrawal only; the power sensor stays: {withdrawn:?}"
    );
    let (fresh, mut fresh_events) = connect(ha_options("home-assistant.fresh")).await?;
    let mut cleared = BTreeMap::new();
    assert!(subscribe(&fresh, &mut fresh_events, &format!("{VIEW}#"), &mut cleared).await?);
    cleared.extend(gather(&mut fresh_events, Duration::from_secs(2)).await);
    assert!(cleared.is_empty(), "the view kept {cleared:?}");

    // The next message carries the power reading only, and nothing is
    // announced again.
    device
        .publish(
            "tele/plug/SENSOR",
            QoS::AtLeastOnce,
            false,
            READING.replace("42", "43"),
        )
        .await?;
    let next = gather(&mut ha_events, Duration::from_secs(3)).await;
    assert_eq!(
        serde_json::from_slice::<Value>(next.get(&view_topic).map_or(&[][..], |v| &v[..])).ok(),
        Some(json!({"ENERGY": {"Power": 43}})),
        "{next:?}"
    );
    assert!(configs(&next).is_empty(), "{next:?}");
    // Home Assistant's birth (it restarted) brings the configs again.
    ha.publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await?;
    let again = gather(&mut ha_events, Duration::from_secs(3)).await;
    let power_topic = announced
        .keys()
        .find(|t| t.starts_with("homeassistant/sensor/"))
        .ok_or_else(|| anyhow!("no sensor"))?;
    assert_eq!(configs(&again).get(power_topic), announced.get(power_topic));
    assert_eq!(configs(&again).len(), 1, "{again:?}");

    // Removing the device clears its values from the views at once.
    // (What reached this subscriber live so far is not the question.)
    gather(&mut fresh_events, Duration::from_millis(500)).await;
    cli_ok(&data, &["device", "remove", "plug"])?;
    let mut after_remove = BTreeMap::new();
    assert!(
        subscribe(
            &fresh,
            &mut fresh_events,
            "local/home_assistant/tele/#",
            &mut after_remove
        )
        .await?
    );
    after_remove.extend(gather(&mut fresh_events, Duration::from_secs(2)).await);
    assert!(after_remove.is_empty(), "the view kept {after_remove:?}");

    // Removing the consumer ends its sessions; its password stops working.
    let removed = cli_json(&data, &["consumer", "remove", "home-assistant"])?;
    assert!(
        removed["sessions_closed"].as_u64().unwrap_or(0) >= 1,
        "{removed}"
    );
    assert!(connect(ha_options("home-assistant")).await.is_err());
    let ledger = cli_json(&data, &["ledger"])?;
    let kinds: Vec<&str> = ledger["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"consumer_added") && kinds.contains(&"consumer_removed"),
        "{kinds:?}"
    );
    gw.stop()?;
    // The ledger records what Home Assistant received, field by field (a
    // stop closes the open minute's counts into it).
    let received = cli_json(
        &data,
        &["ledger", "received", "--destination", "home_assistant"],
    )?;
    let fields = &received["devices"][0]["fields"];
    let names: Vec<&String> = fields
        .as_object()
        .ok_or_else(|| anyhow!("no fields in {received}"))?
        .keys()
        .collect();
    assert_eq!(names, ["ENERGY.Power", "Online"], "{received}");
    assert_eq!(received["recipient"], "Home Assistant on this hub");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_local_destination_a_consumer_has_nothing_to_read() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let config = config_for(&data, &cloud, None, "");
    let conf_file = dir.path().join("dataward.toml");
    std::fs::write(&conf_file, &config)?;
    let out = cli(&[
        "consumer",
        "add",
        "home-assistant",
        "--config",
        &conf_file.to_string_lossy(),
    ])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no local destination"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
