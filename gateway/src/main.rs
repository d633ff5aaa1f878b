//! The `dataward` command line: argument parsing and dispatch. Every
//! command but `run` is a request to the operations layer, answered by the
//! running gateway through its control socket, or on the store directly
//! when none runs. Exit codes: 0 success, 1 runtime failure, 2 bad usage
//! or input.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gateway::config::{Config, ConfigError};
use gateway::control::{client, ErrorClass, ExportFormat, ExportRequest, OpError, Request};
use gateway::BadInput;

mod args;
mod prompt;

use args::{
    Cli, Command, Common, ConsumerCommand, DestinationsCommand, DeviceCommand, FieldsCommand,
    FormatArg, LedgerCommand, PassphraseCommand, PolicyCommand,
};

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
    // `run` logs what it does; a command's own log lines would only clutter
    // its answer, so they show warnings and errors unless RUST_LOG asks.
    init_logging(if matches!(cli.command, Command::Run { .. }) {
        "info,rmqtt=warn,rmqtt_net=warn,sled=warn"
    } else {
        "warn,sled=warn"
    });
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The man pages (one per command, as `dataward-device-add.1`) and the
/// bash, zsh and fish completions, from the same clap definition that
/// parses the command line: they cannot drift from it.
fn generate_docs(dir: &Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "dataward", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}

fn exit_code(e: &anyhow::Error) -> u8 {
    let bad_input = e.downcast_ref::<BadInput>().is_some()
        || e.downcast_ref::<OpError>()
            .is_some_and(|o| o.class == ErrorClass::Input)
        || matches!(
            e.downcast_ref::<ConfigError>(),
            Some(ConfigError::Invalid { .. })
        )
        // A config file named on the command line that is not there.
        || matches!(
            e.downcast_ref::<ConfigError>(),
            Some(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
        );
    if bad_input {
        2
    } else {
        1
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

fn init_logging(default: &str) {
    // rmqtt logs through `log`; the subscriber's log bridge turns those
    // records into tracing events, filtered by RUST_LOG like ours.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    Ok(Config::for_command(
        common.config.as_deref(),
        common.data_dir.as_deref(),
    )?)
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("cannot read {what} {}: {e}", path.display())).into())
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let (common, request, output) = match cli.command {
        Command::Run {
            common,
            mqtt_listen,
            http_listen,
        } => {
            let mut config = Config::resolve(common.config.as_deref(), common.data_dir.as_deref())?;
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
            return runtime.block_on(gateway::app::run(config));
        }
        Command::Status { common } => (common, Request::Status, None),
        Command::Device { action } => match action {
            DeviceCommand::Add {
                common,
                name,
                id,
                preset,
            } => (common, Request::DeviceAdd { name, id, preset }, None),
            DeviceCommand::List { common } => (common, Request::DeviceList, None),
            DeviceCommand::Show { common, id } => (common, Request::DeviceShow { id }, None),
            DeviceCommand::Remove { common, id } => (common, Request::DeviceRemove { id }, None),
        },
        Command::Consumer { action } => match action {
            ConsumerCommand::Add {
                common,
                id,
                destination,
            } => (common, Request::ConsumerAdd { id, destination }, None),
            ConsumerCommand::List { common } => (common, Request::ConsumerList, None),
            ConsumerCommand::Remove { common, id } => {
                (common, Request::ConsumerRemove { id }, None)
            }
        },
        Command::Policy { action } => match action {
            PolicyCommand::Check { common, file } => {
                let text = read_text(&file, "policy file")?;
                let name = file.display().to_string();
                (common, Request::PolicyCheck { text, name }, None)
            }
            PolicyCommand::Apply { common, file } => {
                let text = read_text(&file, "policy file")?;
                let name = file.display().to_string();
                (common, Request::PolicyApply { text, name }, None)
            }
            PolicyCommand::Show {
                common,
                version,
                list,
            } => {
                let request = if list {
                    Request::PolicyVersions
                } else {
                    Request::PolicyShow {
                        policy_version: version,
                    }
                };
                (common, request, None)
            }
            PolicyCommand::Preview {
                common,
                device,
                topic,
                payload,
                payload_file,
                candidate,
                last,
            } => {
                let payload = match (payload, payload_file) {
                    (Some(p), _) => p,
                    (None, Some(f)) => read_text(&f, "payload file")?,
                    (None, None) if last => String::new(),
                    (None, None) => {
                        return Err(
                            BadInput("give --payload, --payload-file or --last".into()).into()
                        )
                    }
                };
                let candidate = candidate
                    .map(|f| read_text(&f, "candidate policy"))
                    .transpose()?;
                (
                    common,
                    Request::PolicyPreview {
                        device,
                        topic,
                        payload,
                        candidate,
                        last,
                    },
                    None,
                )
            }
        },
        Command::Fields {
            common,
            pending,
            device,
            action,
        } => match action {
            None => (common, Request::Fields { device, pending }, None),
            Some(FieldsCommand::Approve { device, field, .. }) => {
                (common, Request::FieldsApprove { device, field }, None)
            }
        },
        Command::Ledger {
            common,
            since,
            destination,
            device,
            action,
        } => {
            let request = match action {
                None => Request::Ledger {
                    since_ms: time_range(since, None)?.0,
                    destination,
                    device,
                },
                Some(LedgerCommand::Verify) => Request::LedgerVerify,
                Some(LedgerCommand::Summary { since: s }) => Request::LedgerSummary {
                    since_ms: Some(
                        time_range(s.or(since).or(Some("7d".into())), None)?
                            .0
                            .unwrap_or(0),
                    ),
                },
                Some(LedgerCommand::Received {
                    destination,
                    since: s,
                }) => Request::LedgerReceived {
                    destination,
                    since_ms: time_range(s.or(since), None)?.0,
                },
            };
            (common, request, None)
        }
        Command::Statement { common, json_ld } => (common, Request::Statement { json_ld }, None),
        Command::Destinations { common, action } => match action {
            None => (common, Request::Destinations, None),
            Some(DestinationsCommand::Approve { name }) => {
                (common, Request::DestinationApprove { name }, None)
            }
        },
        Command::Init {
            common,
            passphrase_file,
        } => {
            let passphrase = prompt::secret(
                passphrase_file.as_deref(),
                "New passphrase (at least 8 characters): ",
                true,
            )?;
            (common, Request::Init { passphrase }, None)
        }
        Command::Passphrase { action } => match action {
            PassphraseCommand::Change {
                common,
                passphrase_file,
                new_passphrase_file,
            } => {
                let old =
                    prompt::secret(passphrase_file.as_deref(), "Current passphrase: ", false)?;
                let new = prompt::secret(new_passphrase_file.as_deref(), "New passphrase: ", true)?;
                (common, Request::PassphraseChange { old, new }, None)
            }
            PassphraseCommand::Reset {
                common,
                recovery_key_file,
                new_passphrase_file,
            } => {
                let recovery_key = prompt::secret(
                    recovery_key_file.as_deref(),
                    "Recovery key (8 groups of 5 characters): ",
                    false,
                )?;
                let new = prompt::secret(new_passphrase_file.as_deref(), "New passphrase: ", true)?;
                (common, Request::PassphraseReset { recovery_key, new }, None)
            }
        },
        Command::Export {
            common,
            device,
            since,
            until,
            format,
            encrypt_to,
            output,
            passphrase_file,
        } => {
            let (since_ms, until_ms) = time_range(since, until)?;
            let passphrase = prompt::secret(passphrase_file.as_deref(), "Passphrase: ", false)?;
            let request = Request::Export(ExportRequest {
                device,
                since_ms,
                until_ms,
                format: match format {
                    FormatArg::Ndjson => ExportFormat::Ndjson,
                    FormatArg::Csv => ExportFormat::Csv,
                },
                encrypt_to,
                passphrase,
            });
            (common, request, output)
        }
        Command::Delete {
            common,
            device,
            since,
            until,
            passphrase_file,
        } => {
            let (since_ms, until_ms) = time_range(since, until)?;
            let passphrase = prompt::secret(passphrase_file.as_deref(), "Passphrase: ", false)?;
            let request = Request::Delete {
                device,
                since_ms,
                until_ms,
                passphrase,
            };
            (common, request, None)
        }
        Command::Wipe {
            common,
            factory,
            passphrase_file,
        } => {
            let passphrase = prompt::secret(passphrase_file.as_deref(), "Passphrase: ", false)?;
            (
                common,
                Request::Wipe {
                    factory,
                    passphrase,
                },
                None,
            )
        }
        Command::Decrypt {
            common,
            value,
            input,
            passphrase_file,
        } => return decrypt(&common, value, input, passphrase_file.as_deref()),
        Command::GenerateDocs { dir } => return generate_docs(&dir),
    };
    let config = load_config(&common)?;
    // An output file is written beside its final name and renamed only once
    // complete: a failed export never destroys an earlier good one. An
    // output that exists and is not a regular file (a pipe, a terminal,
    // /dev/null) is written to directly: renaming over it would replace
    // the device with a file.
    let special = output
        .as_ref()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| !m.file_type().is_file()));
    let partial = output.as_ref().filter(|_| special.is_none()).map(|p| {
        let mut name = p.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    });
    let mut sink: Box<dyn Write> = match (&partial, special) {
        (_, Some(p)) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        )),
        (Some(p), None) => {
            // Only for the user (it may hold decrypted history), and never
            // through a link someone planted: a leftover is removed, then the
            // file is created exclusively.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(p);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            Box::new(std::io::BufWriter::new(file))
        }
        (None, None) => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reply = runtime
        .block_on(client::request(config, request.clone(), &mut sink))
        .map_err(anyhow::Error::from)
        .and_then(|r| sink.flush().context("writing the output").map(|()| r));
    drop(sink);
    if let (Some(part), Some(out)) = (&partial, &output) {
        match &reply {
            Ok(_) => {
                if let Err(e) = std::fs::rename(part, out) {
                    let _ = std::fs::remove_file(part);
                    return Err(e).with_context(|| format!("cannot write {}", out.display()));
                }
            }
            Err(_) => {
                let _ = std::fs::remove_file(part);
            }
        }
    }
    let reply = reply?;
    // An export's data went to the sink; its summary goes to stderr so
    // that standard output stays pure NDJSON.
    let text = if common.json {
        format!("{reply}\n")
    } else {
        gateway::cli::render(&request, &reply)?
    };
    if request.is_streamed() {
        eprint!("{text}");
        let unreadable = reply["unreadable"].as_array().map_or(0, Vec::len);
        if unreadable > 0 {
            anyhow::bail!(
                "{unreadable} part(s) of the history could not be read (listed above): the export is incomplete"
            );
        }
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// `--since` and `--until` as milliseconds (see `gateway::when`).
fn time_range(
    since: Option<String>,
    until: Option<String>,
) -> Result<(Option<u64>, Option<u64>), BadInput> {
    let now = gateway::pipeline::now_ms();
    let time = |t: Option<String>| {
        t.map(|t| gateway::when::parse_time_ms(&t, now).map_err(BadInput))
            .transpose()
    };
    Ok((time(since)?, time(until)?))
}

/// `decrypt`: unlocks the private key here, from the stored key record
/// (which the running gateway, or the store, gives), and opens values.
fn decrypt(
    common: &Common,
    value: Option<String>,
    input: Option<PathBuf>,
    passphrase_file: Option<&Path>,
) -> anyhow::Result<()> {
    let config = load_config(common)?;
    let passphrase = prompt::secret(passphrase_file, "Passphrase: ", false)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let record = runtime.block_on(client::request(
        config,
        Request::KeyRecord,
        &mut std::io::sink(),
    ))?;
    let keys = gateway::keys::StoredKeys::from_json(record["record"].to_string().as_bytes())
        .context("the key record")?;
    let pad: [u8; 32] = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(record["passphrase_pad"].as_str().unwrap_or_default())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("the gateway sent no usable key pad"))?
    };
    let pad = zeroize::Zeroizing::new(pad);
    let sk = keys
        .unlock(passphrase.as_bytes(), &pad)
        .map_err(OpError::from)?;
    let pk = keys.public()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(v) = value {
        let plain =
            gateway::keys::seal::open_value(&sk, &pk, &v).map_err(|e| BadInput(e.to_string()))?;
        out.write_all(&plain)?;
        out.write_all(b"\n")?;
        out.flush()?;
        return Ok(());
    }
    let reader: Box<dyn std::io::BufRead> = match &input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .map_err(|e| BadInput(format!("cannot read {}: {e}", p.display())))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut failed = 0u64;
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("reading the input")?;
        match gateway::keys::open_line(&sk, &pk, &line) {
            Ok(opened) => {
                out.write_all(opened.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("line {}: {e}", n + 1);
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        anyhow::bail!("{failed} line(s) held sealed values that did not open (left as they were)");
    }
    Ok(())
}
