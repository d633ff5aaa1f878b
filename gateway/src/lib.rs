//! dataward's gateway: the program that sits between a home's IoT devices
//! and the clouds they would otherwise talk to directly.
//!
//! Data flows one way: device → [`broker`] → [`pipeline`] (identify →
//! policy → store → outbox) → [`uplink`] → cloud. Commands flow back through
//! [`uplink`] → [`commands`] (policy check) → [`broker`] → device.
//!
//! - [`config`]: the TOML config file and its embedded defaults.
//! - [`devices`]: device identities, credentials and topic permissions;
//!   local consumers' accounts.
//! - [`keys`]: the user's key pair, wrapped by passphrase and recovery key;
//!   HPKE sealing to it.
//! - [`broker`]: the embedded MQTT broker (rmqtt, behind this one module).
//! - [`pipeline`]: policy evaluation and durable storage per message.
//! - [`windows`]: the open windows of `aggregate`, sent when they end.
//! - [`store`]: sled behind small interfaces: encrypted history and its
//!   crypto-shredding, outboxes, group commit, the field inventory.
//! - [`ledger`]: the tamper-evident record of what left and of every act
//!   of control.
//! - [`retention`]: the hourly sweep that deletes history past its
//!   retention, and prunes the ledger.
//! - [`uplink`]: one MQTT client per destination, fed from its outbox.
//! - [`local`]: local destinations: policy-filtered views on the hub's
//!   broker for apps such as Home Assistant, with its MQTT discovery.
//! - [`commands`]: cloud → device commands, allowed only by a rule.
//! - [`control`]: the operations layer: everything a user can ask for,
//!   behind the CLI, the control socket and the web UI.
//! - [`tls`]: the hub's certificates for the web UI and the devices' TLS
//!   port (the user's, or one made at first start) and their fingerprints.
//! - [`cli`]: the text the command line prints for each answer.
//! - [`supervise`]: long-lived tasks, watched; a failed stage stops the
//!   gateway with a non-zero exit, for the service manager to restart.
//! - [`app`]: `dataward run`, wiring it all and shutting down cleanly;
//!   [`notify`]: telling systemd it is ready.
//! - [`when`]: times and durations as users read and write them (UTC).

pub mod app;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod devices;
pub mod keys;
pub mod ledger;
pub mod local;
pub mod notify;
pub mod pipeline;
pub mod retention;
pub mod store;
pub mod supervise;
pub mod tls;
pub mod uplink;
pub mod when;
pub mod windows;

/// An error caused by the user's input (a file, a flag): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// A device-supplied string as logs show it: at most 200 bytes (cut at a
/// character boundary), so that a 64 KiB topic cannot turn each log line
/// into 64 KiB. Logged with `?` (Debug), which also escapes it.
/// Writes `text` to `path`, readable by this user only (0600), whole or
/// not at all: through a temporary file, synced, then renamed.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn short(s: &str) -> &str {
    if s.len() <= 200 {
        return s;
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_device_strings_are_cut_for_the_log() {
        assert_eq!(super::short("plug"), "plug");
        let long = "é".repeat(1000);
        let cut = super::short(&long);
        assert!(cut.len() <= 200 && cut.chars().all(|c| c == 'é'));
    }
}
