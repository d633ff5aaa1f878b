//! The command line's shape: every command and flag (clap). `--help`
//! prints what is written here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dataward",
    version,
    about = "Personal data control gateway for home IoT devices",
    after_help = "Every command works with the gateway running (through its control socket, \
                  <data_dir>/control.sock) or stopped (on the store directly)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Config file (default: /etc/dataward/dataward.toml if it exists, else embedded defaults)
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the config's data_dir)
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Machine-readable output: the answer as one JSON document
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway: MQTT broker for devices, uplinks, control socket, HTTP
    Run {
        #[command(flatten)]
        common: Common,
        /// MQTT listen address for devices (default 0.0.0.0:1883)
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// HTTP listen address (default 0.0.0.0:8080)
        #[arg(long)]
        http_listen: Option<SocketAddr>,
    },
    /// Whether the gateway runs, what is connected, what waits to leave
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Manage devices
    Device {
        #[command(subcommand)]
        action: DeviceCommand,
    },
    /// Accounts for local apps (Home Assistant, say) that read a local destination's view
    Consumer {
        #[command(subcommand)]
        action: ConsumerCommand,
    },
    /// Work with the sharing policy
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
    /// What each device sends; fields seen for the first time are held from
    /// wildcard rules until you approve them
    Fields {
        #[command(flatten)]
        common: Common,
        /// Only the held fields, with a recent sample while the gateway runs
        #[arg(long)]
        pending: bool,
        /// Only this device
        #[arg(long)]
        device: Option<String>,
        #[command(subcommand)]
        action: Option<FieldsCommand>,
    },
    /// The configured destinations; one added after the first start gets
    /// nothing from rules for every destination ("*") until you approve it
    Destinations {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: Option<DestinationsCommand>,
    },
    /// What left the home, to whom, under which rule; and every act of control
    Ledger {
        #[command(flatten)]
        common: Common,
        /// From this time: RFC 3339 UTC, a date, or a duration ago (7d)
        #[arg(long)]
        since: Option<String>,
        /// Only entries about this destination
        #[arg(long)]
        destination: Option<String>,
        /// Only entries about this device
        #[arg(long)]
        device: Option<String>,
        #[command(subcommand)]
        action: Option<LedgerCommand>,
    },
    /// The policy in force, in plain words: per device and destination, what leaves and in which form
    Statement {
        #[command(flatten)]
        common: Common,
        /// As JSON-LD in the W3C Data Privacy Vocabulary (DPV)
        #[arg(long)]
        json_ld: bool,
    },
    /// Set up your keys: a passphrase, your key pair and a one-time recovery key.
    /// Until then, no history is kept
    Init {
        #[command(flatten)]
        common: Common,
        /// Read the passphrase from this file instead of the terminal
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Change the passphrase, or set a new one with the recovery key
    Passphrase {
        #[command(subcommand)]
        action: PassphraseCommand,
    },
    /// Export stored device history (needs the passphrase)
    Export {
        #[command(flatten)]
        common: Common,
        /// Only this device
        #[arg(long)]
        device: Option<String>,
        /// From this time: RFC 3339 UTC (2026-11-30T08:00:00Z), a date, or a duration ago (7d)
        #[arg(long)]
        since: Option<String>,
        /// Up to (not including) this time, written like --since
        #[arg(long)]
        until: Option<String>,
        /// ndjson (one JSON object per message) or csv (one row per message)
        #[arg(long, value_enum, default_value = "ndjson")]
        format: FormatArg,
        /// Encrypt the output to this age recipient (age1…); `age -d` opens it
        #[arg(long)]
        encrypt_to: Option<String>,
        /// Write to this file instead of standard output
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Read the passphrase from this file instead of the terminal
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Delete a device's history for good (crypto-shredding), all of it or a time range
    Delete {
        #[command(flatten)]
        common: Common,
        /// The device
        #[arg(long)]
        device: String,
        /// From this time: RFC 3339 UTC, a date, or a duration ago (7d)
        #[arg(long)]
        since: Option<String>,
        /// Up to (not including) this time
        #[arg(long)]
        until: Option<String>,
        /// Read the passphrase from this file instead of the terminal
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Delete all history and everything waiting to leave; --factory also removes devices,
    /// policies and keys
    Wipe {
        #[command(flatten)]
        common: Common,
        /// Also remove every device, every policy version and your keys
        #[arg(long)]
        factory: bool,
        /// Read the passphrase from this file instead of the terminal
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Open values sealed to your key (dw1.…): one given, or every one in an NDJSON stream
    Decrypt {
        #[command(flatten)]
        common: Common,
        /// A sealed value; without it, lines are read from --input or standard input
        value: Option<String>,
        /// Read lines from this file
        #[arg(long, conflicts_with = "value")]
        input: Option<PathBuf>,
        /// Read the passphrase from this file instead of the terminal
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Write the man pages and shell completions into DIR (for packaging)
    #[command(hide = true)]
    GenerateDocs {
        /// Where `man/` and `completions/` are written
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Ndjson,
    Csv,
}

#[derive(Subcommand)]
pub enum PassphraseCommand {
    /// Change the passphrase (the history is not touched)
    Change {
        #[command(flatten)]
        common: Common,
        /// Read the current passphrase from this file
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Read the new passphrase from this file
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Set a new passphrase with the recovery key printed at init
    Reset {
        #[command(flatten)]
        common: Common,
        /// Read the recovery key from this file instead of the terminal
        #[arg(long)]
        recovery_key_file: Option<PathBuf>,
        /// Read the new passphrase from this file
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ConsumerCommand {
    /// Give a local app an account; prints its password once. It may subscribe only to the
    /// view of a destination of kind "local": what the policy shares with it, never devices' topics
    Add {
        #[command(flatten)]
        common: Common,
        /// Its id, which is also its MQTT username (e.g. home-assistant)
        id: String,
        /// The local destination it reads (needed when the config has several)
        #[arg(long)]
        destination: Option<String>,
    },
    /// List local consumers
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Remove a local consumer: its credential stops working and its sessions end at once
    Remove {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Register a device; prints its id and a random password, once
    Add {
        #[command(flatten)]
        common: Common,
        /// Display name; the id is derived from it unless --id is given
        name: String,
        #[arg(long)]
        id: Option<String>,
        /// Topic conventions: generic, tasmota, shelly, zigbee2mqtt
        #[arg(long, default_value = "generic")]
        preset: String,
    },
    /// List registered devices
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Show one device
    Show {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Remove a device: its credential stops working and its sessions end at once
    Remove {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Check the hash chain: "intact", or the first broken entry
    Verify,
    /// Counts per day, destination, device and field
    Summary {
        /// From this time (default: 7 days ago)
        #[arg(long = "since", id = "summary_since")]
        since: Option<String>,
    },
    /// What one destination was sent: what the recipient has about you
    Received {
        #[arg(long = "destination", id = "received_destination")]
        destination: String,
        /// From this time (default: everything in the ledger)
        #[arg(long = "since", id = "received_since")]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DestinationsCommand {
    /// Let rules for every destination ("*") reach this one
    Approve {
        /// The destination's name in the config
        name: String,
    },
}

#[derive(Subcommand)]
pub enum FieldsCommand {
    /// Release a held field: wildcard rules share it from the next message on
    Approve {
        /// The device
        device: String,
        /// The field, as `dataward fields` writes it (loc.lat, nets[*].ssid, $payload)
        #[arg(required_unless_present = "all")]
        field: Option<String>,
        /// Every held field of the device
        #[arg(long, conflicts_with = "field")]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file against the configured destinations
    Check {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
    },
    /// Validate a policy file and put it in force as the next version
    Apply {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
    },
    /// Print the policy in force, or a stored version, or the list of versions
    Show {
        #[command(flatten)]
        common: Common,
        /// A stored version instead of the one in force
        #[arg(long, conflicts_with = "list")]
        version: Option<u64>,
        /// List every stored version
        #[arg(long)]
        list: bool,
    },
    /// Show what each destination would receive of a sample message, and why
    Preview {
        #[command(flatten)]
        common: Common,
        /// The device that sends it
        #[arg(long)]
        device: String,
        /// The topic it is sent on (default: one of the device's topics)
        #[arg(long)]
        topic: Option<String>,
        /// The payload, e.g. '{"temp":21.5,"hum":40}'
        #[arg(long, required_unless_present_any = ["payload_file", "last"])]
        payload: Option<String>,
        /// Read the payload from this file
        #[arg(long, conflicts_with = "payload")]
        payload_file: Option<PathBuf>,
        /// Use the device's last real message (the gateway must be running; it keeps it in
        /// memory only)
        #[arg(long, conflicts_with_all = ["payload", "payload_file"])]
        last: bool,
        /// Preview this policy file instead of the policy in force
        #[arg(long)]
        candidate: Option<PathBuf>,
    },
}
