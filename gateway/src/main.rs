//! The `dataward` command line. Exit codes: 0 success, 1 runtime failure,
//! 2 bad usage or input.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gateway::config::{Config, ConfigError, SYSTEM_CONFIG};
use gateway::devices::{id_from_name, DeviceRegistry, Preset};
use gateway::store::{HistoryStore, Store};
use gateway::BadInput;

#[derive(Parser)]
#[command(
    name = "dataward",
    version,
    about = "Personal data control gateway for home IoT devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Config file (default: /etc/dataward/dataward.toml if it exists, else embedded defaults)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides the config's data_dir)
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: MQTT broker for devices, uplinks, HTTP
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
    /// Manage devices (while the gateway is stopped)
    Device {
        #[command(subcommand)]
        action: DeviceCommand,
    },
    /// Work with the sharing policy
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
    /// Export stored device history as NDJSON (while the gateway is stopped)
    Export {
        #[command(flatten)]
        common: Common,
        /// Only this device
        #[arg(long)]
        device: Option<String>,
        /// Write to this file instead of standard output
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
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
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// List registered devices
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Show one device
    Show {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a device; its credential stops working
    Remove {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file against the configured destinations
    Check {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    limit_allocator_retention();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_input = e.downcast_ref::<BadInput>().is_some()
                || matches!(
                    e.downcast_ref::<ConfigError>(),
                    Some(ConfigError::Invalid { .. })
                )
                || e.downcast_ref::<gateway::devices::DeviceError>()
                    .is_some_and(|d| {
                        !matches!(
                            d,
                            gateway::devices::DeviceError::Store(_)
                                | gateway::devices::DeviceError::Hash(_)
                        )
                    });
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

/// glibc raises its mmap threshold after a large block is freed, so later
/// large blocks (Argon2's 19 MiB) come from heap arenas and stay resident.
/// Pinning the threshold at 1 MiB keeps large blocks in mmap, returned to
/// the system as soon as they are freed: a small hub's RSS stays small.
fn limit_allocator_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn init_logging() {
    // rmqtt logs through `log`; the subscriber's log bridge turns those
    // records into tracing events, filtered by RUST_LOG like ours.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rmqtt=warn,rmqtt_net=warn,sled=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::load(path)?,
        None if std::path::Path::new(SYSTEM_CONFIG).exists() => {
            Config::load(std::path::Path::new(SYSTEM_CONFIG))?
        }
        None => Config::default(),
    };
    if let Some(dir) = &common.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

fn now_ms() -> u64 {
    gateway::pipeline::now_ms()
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            common,
            mqtt_listen,
            http_listen,
        } => {
            let mut config = load_config(&common)?;
            if let Some(a) = mqtt_listen {
                config.mqtt.listen = a;
            }
            if let Some(a) = http_listen {
                config.http.listen = a;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(gateway::app::run(config))
        }
        Command::Device { action } => device(action),
        Command::Policy {
            action: PolicyCommand::Check { common, file },
        } => {
            let config = load_config(&common)?;
            let policy = gateway::read_policy(&file, &config)?;
            println!(
                "{}: valid ({} sharing rules, {} command rules)",
                file.display(),
                policy.rules().len(),
                policy.command_rules().len()
            );
            Ok(())
        }
        Command::Export {
            common,
            device,
            output,
        } => {
            let config = load_config(&common)?;
            let store = Store::open_existing(&config.data_dir)?;
            let history = store.history()?;
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut n = 0u64;
            for rec in history.scan(device.as_deref()) {
                let rec = rec?;
                let mut line = serde_json::json!({
                    "device": rec.device,
                    "seq": rec.seq,
                    "received_ms": rec.received_ms,
                    "topic": rec.topic,
                });
                match std::str::from_utf8(&rec.payload) {
                    Ok(s) => line["payload"] = s.into(),
                    Err(_) => {
                        use base64::Engine;
                        line["payload_base64"] = base64::engine::general_purpose::STANDARD
                            .encode(&rec.payload)
                            .into();
                    }
                }
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
                n += 1;
            }
            out.flush()?;
            eprintln!("exported {n} records");
            Ok(())
        }
    }
}

fn device_json(d: &gateway::devices::Device) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "name": d.name,
        "preset": d.preset,
        "username": d.id,
        "publish": d.publish,
        "subscribe": d.subscribe,
        "created_ms": d.created_ms,
    })
}

fn device(action: DeviceCommand) -> anyhow::Result<()> {
    let open = |common: &Common, create: bool| -> anyhow::Result<(Store, DeviceRegistry)> {
        let config = load_config(common)?;
        let store = if create {
            Store::open(&config.data_dir)?
        } else {
            Store::open_existing(&config.data_dir)?
        };
        let reg = DeviceRegistry::open(&store)?;
        Ok((store, reg))
    };
    match action {
        DeviceCommand::Add {
            common,
            name,
            id,
            preset,
            json,
        } => {
            let preset = Preset::parse(&preset)?;
            let id = match id {
                Some(id) => id,
                None => id_from_name(&name)?,
            };
            let (store, reg) = open(&common, true)?;
            let (device, password) = reg.add(&id, &name, preset, now_ms())?;
            store.flush()?;
            if json {
                let mut v = device_json(&device);
                v["password"] = password.as_str().into();
                println!("{v}");
            } else {
                println!("Device added. The password is shown only now; dataward keeps just a hash of it.");
                println!("  id / MQTT username: {}", device.id);
                println!(
                    "  MQTT client id:     {} (or {}.<suffix> for more connections)",
                    device.id, device.id
                );
                println!("  password:           {}", password.as_str());
                println!("  may publish to:     {}", device.publish.join(", "));
                println!("  may subscribe to:   {}", device.subscribe.join(", "));
            }
            Ok(())
        }
        DeviceCommand::List { common, json } => {
            let (_, reg) = open(&common, false)?;
            let devices = reg.list();
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(devices.iter().map(|d| device_json(d)).collect())
                );
            } else if devices.is_empty() {
                println!("no devices; add one with `dataward device add NAME`");
            } else {
                for d in devices {
                    println!(
                        "{}\t{:?}\t{}",
                        d.id,
                        d.name,
                        serde_json::to_string(&d.preset)?.trim_matches('"')
                    );
                }
            }
            Ok(())
        }
        DeviceCommand::Show { common, id, json } => {
            let (_, reg) = open(&common, false)?;
            let d = reg
                .get(&id)
                .ok_or(gateway::devices::DeviceError::NotFound(id))?;
            if json {
                println!("{}", device_json(&d));
            } else {
                println!(
                    "id:         {}\nname:       {:?}\npublish:    {}\nsubscribe:  {}",
                    d.id,
                    d.name,
                    d.publish.join(", "),
                    d.subscribe.join(", ")
                );
            }
            Ok(())
        }
        DeviceCommand::Remove { common, id } => {
            let (store, reg) = open(&common, false)?;
            reg.remove(&id)?;
            store.flush()?;
            println!("removed device {id}; its credential no longer works (its history stays until deleted)");
            Ok(())
        }
    }
}
