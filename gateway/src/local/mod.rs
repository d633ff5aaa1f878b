//! Local destinations: views on the hub's own broker for apps on the home
//! network, such as Home Assistant.
//!
//! A destination of `kind = "local"` is a lane of the pipeline like any
//! other: the same policy decides what it receives, and the ledger records
//! it. Instead of an uplink to a broker elsewhere, [`view::LocalView`]
//! publishes its outbox on the hub's broker under `local/<name>/`, where
//! only that destination's consumers may subscribe.
//!
//! - this module: the topics of the views, and who may use them
//!   ([`LocalAccess`]);
//! - [`view`]: the task that publishes a destination's view;
//! - [`discovery`]: Home Assistant's MQTT discovery messages for the fields
//!   a view carries.

pub mod discovery;
pub mod view;

use std::collections::HashMap;

use crate::config::DestinationConfig;

/// Every local view: `local/<destination>/<device topic>`.
pub const ALL_VIEWS: &str = "local/#";

/// Home Assistant's default discovery prefix.
pub const DISCOVERY_PREFIX: &str = "homeassistant";

/// The topic spaces that belong to the hub's local views: no device may
/// publish or subscribe there, whatever its patterns.
pub const RESERVED_FILTERS: [&str; 2] = [ALL_VIEWS, "homeassistant/#"];

/// Where Home Assistant announces that it (re)started, and sets its will.
pub const HOME_ASSISTANT_STATUS: &str = "homeassistant/status";

/// What precedes a device's topic in destination `name`'s view.
pub fn view_prefix(name: &str) -> String {
    format!("local/{name}/")
}

/// The copies of a device's `filter` in every local view.
pub fn in_every_view(filter: &str) -> String {
    format!("local/+/{filter}")
}

/// Whether a topic or filter reaches into the local views.
pub fn is_reserved(topic_or_filter: &str) -> bool {
    RESERVED_FILTERS
        .iter()
        .any(|r| policy::topic::filters_overlap(r, topic_or_filter))
}

/// The local destinations, and what their consumers may do on the broker.
#[derive(Debug, Clone, Default)]
pub struct LocalAccess {
    /// Destination name -> whether it announces to Home Assistant.
    discovery: HashMap<String, bool>,
    /// Destination name -> woken when one of its consumers says Home
    /// Assistant (re)started.
    births: HashMap<String, std::sync::Arc<tokio::sync::Notify>>,
}

impl LocalAccess {
    pub fn from_config(destinations: &[DestinationConfig]) -> Self {
        Self {
            discovery: destinations
                .iter()
                .filter(|d| d.is_local())
                .map(|d| (d.name.clone(), d.home_assistant_discovery))
                .collect(),
            births: destinations
                .iter()
                .filter(|d| d.is_local())
                .map(|d| (d.name.clone(), std::sync::Arc::default()))
                .collect(),
        }
    }

    /// What wakes `destination`'s view when Home Assistant (re)starts.
    pub fn birth(&self, destination: &str) -> std::sync::Arc<tokio::sync::Notify> {
        self.births.get(destination).cloned().unwrap_or_default()
    }

    /// A consumer of `destination` published `payload` on `topic`: Home
    /// Assistant's birth message makes the view announce everything again.
    pub fn heard(&self, destination: &str, topic: &str, payload: &[u8]) {
        if topic == HOME_ASSISTANT_STATUS && payload == b"online" {
            if let Some(n) = self.births.get(destination) {
                n.notify_one();
            }
        }
    }

    /// Whether `destination` is a local destination of this config.
    pub fn is_local(&self, destination: &str) -> bool {
        self.discovery.contains_key(destination)
    }

    /// Whether `destination` announces to Home Assistant.
    pub fn announces(&self, destination: &str) -> bool {
        self.discovery.get(destination) == Some(&true)
    }

    /// The filters a consumer of `destination` may subscribe within: its
    /// view, and the discovery prefix when the destination announces there.
    pub fn filters(&self, destination: &str) -> Vec<String> {
        let mut all = Vec::new();
        if self.is_local(destination) {
            all.push(format!("{}#", view_prefix(destination)));
        }
        if self.announces(destination) {
            all.push(format!("{DISCOVERY_PREFIX}/#"));
        }
        all
    }

    pub fn may_subscribe(&self, destination: &str, filter: &str) -> bool {
        self.filters(destination)
            .iter()
            .any(|f| policy::topic::filter_within(filter, f))
    }

    /// A consumer publishes nothing into the hub, except Home Assistant's
    /// birth and will on its status topic, which it needs to connect; never
    /// retained, so that it does not outlive the connection for the other
    /// local destinations' consumers.
    pub fn may_publish(&self, destination: &str, topic: &str, retain: bool) -> bool {
        !retain && self.announces(destination) && topic == HOME_ASSISTANT_STATUS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn access() -> LocalAccess {
        let c = Config::parse(
            "[[destination]]\nname = \"home\"\nkind = \"local\"\nhome_assistant_discovery = true\n\
             [[destination]]\nname = \"panel\"\nkind = \"local\"\n\
             [[destination]]\nname = \"cloud\"\nurl = \"mqtt://h:1\"\n",
        )
        .expect("valid");
        LocalAccess::from_config(&c.destinations)
    }

    #[test]
    fn consumers_reach_their_own_view_only() {
        let a = access();
        assert!(a.is_local("home") && a.is_local("panel") && !a.is_local("cloud"));
        for ok in [
            "local/home/#",
            "local/home/tele/plug/SENSOR",
            "homeassistant/#",
        ] {
            assert!(a.may_subscribe("home", ok), "{ok}");
        }
        for refused in [
            "#",
            "+/home/#",
            "local/#",
            "local/+/tele/plug/SENSOR",
            "local/panel/#",
            "tele/plug/SENSOR",
            "$SYS/#",
        ] {
            assert!(!a.may_subscribe("home", refused), "{refused}");
        }
        assert!(!a.may_subscribe("panel", "homeassistant/#"), "no discovery");
        assert!(!a.may_subscribe("cloud", "local/cloud/#"), "not local");
        assert!(a.may_publish("home", "homeassistant/status", false));
        assert!(
            !a.may_publish("home", "homeassistant/status", true),
            "retained"
        );
        for refused in [
            "tele/plug/SENSOR",
            "local/home/x",
            "homeassistant/sensor/x/config",
        ] {
            assert!(!a.may_publish("home", refused, false), "{refused}");
        }
        assert!(!a.may_publish("panel", "homeassistant/status", false));
    }

    #[test]
    fn the_views_are_reserved() {
        for t in ["local/x", "local/#", "homeassistant/status", "#", "+/x"] {
            assert!(is_reserved(t), "{t}");
        }
        for t in ["tele/plug/#", "locally/x", "zigbee2mqtt/#"] {
            assert!(!is_reserved(t), "{t}");
        }
    }

    #[test]
    fn a_local_destination_takes_no_remote_settings() {
        for key in [
            "url = \"mqtt://h:1\"",
            "username = \"u\"",
            "topic_prefix = \"x/\"",
            "command_prefix = \"c/\"",
        ] {
            let text = format!("[[destination]]\nname = \"home\"\nkind = \"local\"\n{key}\n");
            let (line, _, msg) = Config::parse(&text).expect_err(key);
            assert_eq!(line, 2, "{msg}");
            assert!(msg.contains("is local"), "{msg}");
        }
        let (_, _, msg) =
            Config::parse("[[destination]]\nname = \"c\"\n").expect_err("no url, not local");
        assert!(msg.contains("needs a url"), "{msg}");
        let (_, _, msg) = Config::parse(
            "[[destination]]\nname = \"c\"\nurl = \"mqtt://h:1\"\nhome_assistant_discovery = true\n",
        )
        .expect_err("discovery is local");
        assert!(msg.contains("for local destinations"), "{msg}");
        let (line, _, msg) = Config::parse(
            "[[destination]]\nname = \"a\"\nkind = \"local\"\nhome_assistant_discovery = true\n\
             [[destination]]\nname = \"b\"\nkind = \"local\"\nhome_assistant_discovery = true\n",
        )
        .expect_err("two announce");
        assert_eq!(line, 6, "{msg}");
        assert!(msg.contains("only one destination"), "{msg}");
    }
}
