//! `dataward run`: wires the store, policy, broker, uplinks, the control
//! socket and HTTP together, and takes them down in order on Ctrl-C or
//! SIGTERM. SIGHUP re-reads the configured policy file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};

use crate::broker::{Broker, BrokerSettings};
use crate::commands;
use crate::config::Config;
use crate::control::lock::{DataDirLock, LockError, Role};
use crate::control::server::ControlServer;
use crate::control::{LinkHandle, Live, Operations};
use crate::devices::DeviceRegistry;
use crate::pipeline::{Lane, Pipeline};
use crate::store::{Durability, Store};
use crate::supervise::Supervisor;
use crate::uplink::Uplink;

/// The web UI's view of the hub: the same operations layer as the CLI.
struct HubState {
    durability: Arc<Durability>,
    stages: Arc<std::sync::atomic::AtomicBool>,
    ops: Arc<Operations>,
}

fn hub_error(e: crate::control::OpError) -> web_ui::HubError {
    web_ui::HubError {
        status: match e.class {
            crate::control::ErrorClass::Input => 400,
            crate::control::ErrorClass::Runtime => 500,
            crate::control::ErrorClass::Busy => 503,
        },
        message: e.message,
    }
}

/// The operations the web UI may ask for through [`web_ui::Hub::call`]:
/// reading, approving and adding a device. Keys, exports and deletes have
/// their own paths.
const UI_OPS: &[&str] = &[
    "status",
    "device_add",
    "statement",
    "ledger",
    "ledger_verify",
    "ledger_summary",
    "ledger_received",
    "fields",
    "fields_approve",
    "destinations",
    "device_list",
    "device_activity",
    "device_show",
    "policy_show",
    "policy_versions",
    "policy_preview",
    "policy_check",
    "policy_apply",
    "device_remove",
    "delete",
    "wipe",
];

impl web_ui::Hub for HubState {
    fn health(&self) -> web_ui::Health {
        web_ui::Health {
            store_ok: self.durability.healthy(),
            stages_ok: self.stages.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    fn is_set_up(&self) -> bool {
        self.ops.is_set_up()
    }

    fn set_up(
        &self,
        passphrase: zeroize::Zeroizing<String>,
    ) -> web_ui::HubFuture<'_, Result<zeroize::Zeroizing<String>, web_ui::HubError>> {
        let ops = Arc::clone(&self.ops);
        Box::pin(async move {
            let request = crate::control::Request::Init {
                passphrase: crate::control::Passphrase(passphrase),
            };
            let reply = as_web_ui(move || ops.call_blocking(request)).await?;
            let key = reply["recovery_key"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok(zeroize::Zeroizing::new(key))
        })
    }

    fn check_passphrase(
        &self,
        passphrase: zeroize::Zeroizing<String>,
    ) -> web_ui::HubFuture<'_, Result<bool, web_ui::HubError>> {
        Box::pin(async move {
            self.ops
                .check_passphrase(&crate::control::Passphrase(passphrase))
                .await
                .map_err(hub_error)
        })
    }

    fn call(
        &self,
        request: serde_json::Value,
    ) -> web_ui::HubFuture<'_, Result<serde_json::Value, web_ui::HubError>> {
        Box::pin(async move {
            let op = request["op"].as_str().unwrap_or_default().to_string();
            let request: crate::control::Request =
                serde_json::from_value(request).map_err(|e| web_ui::HubError {
                    status: 400,
                    message: format!("not a request: {e}"),
                })?;
            self.call_parsed(&op, request).await
        })
    }

    fn call_unlocked(
        &self,
        mut request: serde_json::Value,
        passphrase: zeroize::Zeroizing<String>,
    ) -> web_ui::HubFuture<'_, Result<serde_json::Value, web_ui::HubError>> {
        Box::pin(async move {
            // A placeholder, so the request parses; the passphrase itself
            // goes in as the zeroizing type, never through the JSON.
            request["passphrase"] = "".into();
            let op = request["op"].as_str().unwrap_or_default().to_string();
            let mut parsed: crate::control::Request = serde_json::from_value(request.clone())
                .map_err(|e| web_ui::HubError {
                    status: 400,
                    message: format!("not a request: {e}"),
                })?;
            match &mut parsed {
                crate::control::Request::Delete { passphrase: p, .. }
                | crate::control::Request::Wipe { passphrase: p, .. } => {
                    *p = crate::control::Passphrase(passphrase);
                }
                _ => {
                    return Err(web_ui::HubError {
                        status: 400,
                        message: format!("{op:?} takes no passphrase"),
                    })
                }
            }
            self.call_parsed(&op, parsed).await
        })
    }

    fn export(
        &self,
        mut request: serde_json::Value,
        passphrase: zeroize::Zeroizing<String>,
        chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> web_ui::HubFuture<'_, Result<serde_json::Value, web_ui::HubError>> {
        Box::pin(async move {
            request["passphrase"] = "".into();
            let mut request: crate::control::ExportRequest = serde_json::from_value(request)
                .map_err(|e| web_ui::HubError {
                    status: 400,
                    message: format!("not an export request: {e}"),
                })?;
            request.passphrase = crate::control::Passphrase(passphrase);
            let ops = Arc::clone(&self.ops);
            let summary = as_web_ui(move || {
                let mut sink = crate::control::server::ChunkSender::new(chunks);
                let summary = ops.export(&request, &mut sink)?;
                std::io::Write::flush(&mut sink).map_err(|e| {
                    crate::control::OpError::runtime(format!("the download stopped: {e}"))
                })?;
                Ok(summary)
            })
            .await?;
            serde_json::to_value(summary).map_err(|e| web_ui::HubError {
                status: 500,
                message: format!("the export's summary: {e}"),
            })
        })
    }
}

impl HubState {
    /// Runs one of the web UI's operations, as the web UI.
    async fn call_parsed(
        &self,
        op: &str,
        request: crate::control::Request,
    ) -> Result<serde_json::Value, web_ui::HubError> {
        if !UI_OPS.contains(&op) {
            return Err(web_ui::HubError {
                status: 400,
                message: format!("{op:?} is not an operation of the web UI"),
            });
        }
        if matches!(request, crate::control::Request::Wipe { factory: true, .. }) {
            return Err(web_ui::HubError {
                status: 400,
                message: "a factory reset is done on the hub: `dataward wipe --factory`".into(),
            });
        }
        if request.is_blocking() {
            let ops = Arc::clone(&self.ops);
            return as_web_ui(move || ops.call_blocking(request)).await;
        }
        crate::control::ACTOR
            .scope(WEB_ACTOR.into(), self.ops.call(request))
            .await
            .map_err(hub_error)
    }
}

/// Runs `work` off the runtime's threads (which serve the devices), as the
/// web UI for the ledger's record.
async fn as_web_ui<T, F>(work: F) -> Result<T, web_ui::HubError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, crate::control::OpError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || crate::control::ACTOR.sync_scope(WEB_ACTOR.into(), work))
        .await
        .map_err(|e| web_ui::HubError {
            status: 500,
            message: format!("the web UI's task failed: {e}"),
        })?
        .map_err(hub_error)
}

/// Where the running gateway keeps its setup link until the keys exist.
pub const SETUP_LINK_FILE: &str = "setup-link";

/// Who the ledger says acted, for what the web UI does.
const WEB_ACTOR: &str = "web UI";

/// How long the gateway waits for a CLI command to finish with the store.
const COMMAND_WAIT: Duration = Duration::from_secs(300);

/// Takes the data directory for this gateway. Another gateway there is an
/// error at once; a CLI command working on the store is waited for.
async fn lock_data_dir(config: &Config) -> anyhow::Result<DataDirLock> {
    let dir = &config.data_dir;
    crate::control::lock::prepare_data_dir(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    // A command (an export to a slow reader, say) may hold the directory
    // for a while: waited for, with a word in the log now and then.
    let deadline = Instant::now() + COMMAND_WAIT;
    let mut told = Instant::now();
    loop {
        match DataDirLock::try_acquire(dir, Role::Gateway) {
            Ok(lock) => return Ok(lock),
            // Only a live gateway is refused at once. A holder that has not
            // written its name yet, or a name left by a dead process, means
            // the real holder is in between.
            Err(LockError::Held { holder, .. })
                if Instant::now() < deadline
                    && !holder
                        .as_ref()
                        .is_some_and(|h| h.role == Role::Gateway && h.is_alive()) =>
            {
                if told.elapsed() >= Duration::from_secs(5) {
                    told = Instant::now();
                    tracing::warn!(holder = ?holder, "waiting for a dataward command to finish with the data directory");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("another dataward is using this data directory; not starting"))
            }
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is announced: a signal that arrives between the
    // "running" line and the first poll must still mean a clean stop.
    let mut signals = Signals::install().context("watching for Ctrl-C, SIGTERM and SIGHUP")?;
    raise_fd_limit();
    let lock = lock_data_dir(&config).await?;
    config
        .remember_for_commands()
        .context("recording the config file for commands")?;
    let started = Instant::now();
    let store = Store::open(&config.data_dir)?;
    let registry = Arc::new(DeviceRegistry::open(&store).context("loading devices")?);
    let policy = crate::control::policy_at_start(&config, &store)?;
    tracing::info!(version = policy.version, "policy in force");
    if registry.list().is_empty() {
        tracing::warn!("no devices registered yet: add one with `dataward device add NAME`");
    }

    let mut supervisor = Supervisor::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let durability = Arc::clone(&store.durability);
    let committer = {
        let d = Arc::clone(&durability);
        let rx = shutdown_rx.clone();
        supervisor.spawn("committer", async move { d.run(rx).await })
    };

    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let mut lanes = Vec::new();
    let mut uplinks = Vec::new();
    // Local views need the broker, which needs the pipeline: they are
    // made once it runs.
    let mut views = Vec::new();
    let mut links = Vec::new();
    for dest in &config.destinations {
        let outbox = Arc::new(store.outbox(&dest.name, config.store.outbox_max_entries)?);
        let wake = Arc::new(Notify::new());
        lanes.push(Lane {
            name: dest.name.clone(),
            topic_prefix: dest.remote_prefix(),
            outbox: Arc::clone(&outbox),
            wake: Arc::clone(&wake),
        });
        let state = if dest.is_local() {
            let state = Arc::new(crate::uplink::LinkState::default());
            views.push((dest.clone(), Arc::clone(&outbox), wake, Arc::clone(&state)));
            state
        } else {
            let uplink = Uplink::new(
                dest.clone(),
                Arc::clone(&outbox),
                wake,
                cmd_tx.clone(),
                config.mqtt.max_command_bytes,
            )?;
            let state = uplink.state();
            uplinks.push(uplink);
            state
        };
        links.push(LinkHandle {
            name: dest.name.clone(),
            state,
            outbox,
        });
    }
    drop(cmd_tx);
    let pipeline = Arc::new(Pipeline::new(
        policy,
        &store,
        lanes,
        config.store.retention(),
        config
            .destinations
            .iter()
            .map(|d| Ok((d.name.clone(), store.pseudonym_key(&d.name)?)))
            .collect::<Result<_, crate::store::StoreError>>()?,
    ));
    let ledger = store.ledger();
    ledger.configure(
        config
            .destinations
            .iter()
            .filter(|d| d.ledger == crate::config::LedgerDetail::Detailed)
            .map(|d| d.name.clone()),
        config.ledger.bucket_ms(),
        config.ledger.record_egress,
    );
    let recovered = ledger.recover(crate::pipeline::now_ms())?;
    if recovered > 0 {
        tracing::info!(
            buckets = recovered,
            "ledger buckets left open by the last run were closed"
        );
    }
    for name in store.destinations().settle(&config.destination_names())? {
        tracing::warn!(destination = %name, "a new destination: rules for every destination (\"*\") do not reach it until you approve it (dataward destinations approve {name}); rules that name it apply");
    }

    let local_access = crate::local::LocalAccess::from_config(&config.destinations);
    let mqtt_tls = crate::tls::for_mqtt(&config.mqtt, &config.data_dir)
        .context("setting up TLS for devices")?;
    let broker = Arc::new(
        Broker::start(
            BrokerSettings {
                listen: config.mqtt.listen,
                plain: config.mqtt.plain,
                tls: match (&mqtt_tls, config.mqtt.tls_listen) {
                    (Some(t), Some(addr)) => Some((addr, Arc::clone(&t.config))),
                    _ => None,
                },
                max_packet_bytes: config.mqtt.max_packet_bytes,
                max_connections_per_device: config.mqtt.max_connections_per_device,
                max_queued_messages: config.mqtt.max_queued_messages,
                max_retained: config.mqtt.max_retained,
                message_expiry: Duration::from_secs(config.mqtt.message_expiry_secs),
                connect_timeout: Duration::from_secs(config.mqtt.connect_timeout_secs),
                max_connections: config.mqtt.max_connections,
                max_handshakes: config.mqtt.max_handshakes,
                max_handshakes_per_address: config.mqtt.max_handshakes_per_address,
                local: local_access.clone(),
            },
            Arc::clone(&registry),
            Arc::clone(&pipeline),
            &supervisor,
        )
        .await?,
    );
    let mut uplink_tasks = Vec::new();
    for u in uplinks {
        let rx = shutdown_rx.clone();
        uplink_tasks.push(supervisor.spawn("uplink", u.run(rx)));
    }
    for (dest, outbox, wake, state) in views {
        let view = crate::local::view::LocalView {
            name: dest.name.clone(),
            discovery: dest.home_assistant_discovery,
            outbox,
            wake,
            birth: local_access.birth(&dest.name),
            broker: Arc::clone(&broker),
            registry: Arc::clone(&registry),
            pipeline: Arc::clone(&pipeline),
            state,
        };
        uplink_tasks.push(supervisor.spawn("local view", view.run(shutdown_rx.clone())));
    }
    // Commands come only from remote destinations; without one there is
    // nothing to route.
    let router_task = config.destinations.iter().any(|d| !d.is_local()).then(|| {
        supervisor.spawn(
            "command router",
            commands::route(
                cmd_rx,
                Arc::clone(&registry),
                Arc::clone(&pipeline),
                Arc::clone(&broker),
            ),
        )
    });
    let tick_task = supervisor.spawn(
        "tick (aggregate windows, ledger buckets)",
        Arc::clone(&pipeline).run_tick(shutdown_rx.clone()),
    );
    let retention_task = supervisor.spawn(
        "retention",
        crate::retention::run(
            store.history(),
            Arc::clone(&pipeline),
            config.store.retention(),
            (store.ledger(), config.ledger.retention_ms()),
            shutdown_rx.clone(),
        ),
    );
    let ops = Arc::new(Operations::running(
        config.clone(),
        store.clone(),
        Arc::clone(&registry),
        Live {
            broker: Arc::clone(&broker),
            pipeline: Arc::clone(&pipeline),
            links,
            started,
        },
    ));
    let control = ControlServer::start(
        &config.data_dir,
        Arc::clone(&ops),
        shutdown_rx.clone(),
        &supervisor,
    )
    .with_context(|| {
        format!(
            "cannot serve the control socket in {}",
            config.data_dir.display()
        )
    })?;

    let http_tls = crate::tls::for_http(&config.http, &config.data_dir)
        .context("setting up HTTPS for the web UI")?;
    let scheme = if http_tls.is_some() { "https" } else { "http" };
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let (mqtt_addr, http_addr) = (broker.local_addr(), http.local_addr()?);
    // Until the keys exist, the web UI's setup needs this token: it is
    // printed here, so only who reads the console (or the journal) has it.
    let setup_token = if ops.is_set_up() {
        None
    } else {
        web_ui::session::random_token()
    };
    let app = web_ui::router(
        Arc::new(HubState {
            durability: Arc::clone(&durability),
            stages: supervisor.health(),
            ops: Arc::clone(&ops),
        }),
        web_ui::UiConfig {
            setup_token: setup_token.clone(),
            secure: http_tls.is_some(),
            mqtt_port: mqtt_addr.port(),
            metrics_token: config.http.metrics_token.clone(),
            closing: Some(shutdown_rx.clone()),
        },
    );
    let mut http_shutdown = shutdown_rx.clone();
    let tls_config = http_tls.as_ref().map(|t| Arc::clone(&t.config));
    let http_task = supervisor.spawn("http", async move {
        web_ui::serve::serve(http, app, tls_config, async move {
            let _ = http_shutdown.changed().await;
        })
        .await;
    });

    match store.migrate_plaintext_history() {
        Ok((moved, _)) if moved > 0 => {
            tracing::info!(
                moved,
                "plaintext history from an earlier version is now encrypted"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "encrypting plaintext history from an earlier version failed; it is tried again at the next start")
        }
    }
    if !store.history().keeps_history() {
        tracing::warn!(
            "no history is kept: the keys are not set up; run `dataward init` to keep history, encrypted to your own key (forwarding works meanwhile)"
        );
    }
    // Tests and scripts read this line to find the ports.
    println!(
        "dataward running: mqtt={} http={} data_dir={} pid={}{}",
        mqtt_addr,
        http_addr,
        config.data_dir.display(),
        std::process::id(),
        broker
            .tls_addr()
            .map(|a| format!(" mqtts={a}"))
            .unwrap_or_default()
    );
    tracing::info!(mqtt = %mqtt_addr, http = %http_addr, destinations = config.destinations.len(), devices = registry.list().len(), "dataward running");
    if let (Some(tls), Some(addr)) = (&mqtt_tls, broker.tls_addr()) {
        println!(
            "mqtts: {addr} certificate {} SHA-256 fingerprint {}",
            tls.cert_path.display(),
            tls.fingerprint
        );
        tracing::info!(%addr, cert = %tls.cert_path.display(), mqtt_fingerprint = %tls.fingerprint, "devices may connect over TLS");
    }
    if let Some(tls) = &http_tls {
        println!(
            "https: certificate {} SHA-256 fingerprint {}",
            tls.cert_path.display(),
            tls.fingerprint
        );
        tracing::info!(cert = %tls.cert_path.display(), fingerprint = %tls.fingerprint, "the web UI is served over HTTPS; check the browser shows this fingerprint");
    }
    let token_file = config.data_dir.join(SETUP_LINK_FILE);
    let _ = std::fs::remove_file(&token_file);
    if let Some(token) = &setup_token {
        let link = format!("{scheme}://{http_addr}/setup?token={token}");
        // For `dataward status`, as the service's user or root: under
        // systemd, nobody watches the console.
        if let Err(e) = crate::write_private(&token_file, &link) {
            tracing::warn!(error = %e, "the setup link could not be kept for `dataward status`");
        }
        println!(
            "setup: {scheme}://{http_addr}/setup?token={token} (one time: it sets your passphrase)"
        );
        tracing::warn!(
            "first run: set your passphrase at {scheme}://{http_addr}/setup?token={token} or with `dataward init`"
        );
    }

    crate::notify::notify(&format!(
        "READY=1\nSTATUS=running: mqtt {mqtt_addr}, http {http_addr}"
    ));
    let outcome = loop {
        let signal = tokio::select! {
            s = signals.next() => s,
            f = supervisor.failed() => break Err(anyhow::anyhow!(
                "the {} stage failed ({}); stopping so that the service manager restarts dataward",
                f.task, f.reason
            )),
        };
        if signal == Signal::Stop {
            break Ok(());
        }
        match ops.reload_policy_file().await {
            Ok(Some(a)) if a.changed => {
                tracing::info!(version = a.version, "SIGHUP: policy file applied")
            }
            Ok(Some(a)) => {
                tracing::info!(version = a.version, "SIGHUP: policy file unchanged")
            }
            Ok(None) => tracing::info!("SIGHUP: no policy file is configured"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: policy file rejected; the policy in force stays")
            }
        }
    };
    supervisor.stopping();
    crate::notify::notify("STOPPING=1");
    let _ = std::fs::remove_file(&token_file);
    tracing::info!("shutting down");
    // The control socket first (no new requests), then devices, so nothing
    // new arrives; then uplinks and HTTP; the committer flushes last.
    drop(control);
    broker.stop();
    let _ = shutdown_tx.send(true);
    for t in uplink_tasks {
        t.join().await;
    }
    if let Some(t) = router_task {
        t.abort();
    }
    http_task.join().await;
    retention_task.join().await;
    tick_task.join().await;
    committer.join().await;
    store.flush().context("final flush of the store")?;
    drop(lock);
    // A stage that panicked while stopping still makes the exit non-zero.
    let outcome = match outcome {
        Ok(())
            if !supervisor
                .health()
                .load(std::sync::atomic::Ordering::Acquire) =>
        {
            Err(anyhow::anyhow!(
                "a stage failed while the gateway was stopping; see the log"
            ))
        }
        other => other,
    };
    if outcome.is_ok() {
        tracing::info!("stopped cleanly");
    }
    outcome
}

/// Each device connection takes three descriptors (the device's socket and
/// both ends of the gate's hop to the broker); the soft limit is often
/// 1024 while the hard one is far higher.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = lim.rlim_cur, "could not raise the open-files limit");
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Stop,
    ReloadPolicy,
}

/// Ctrl-C, SIGTERM and SIGHUP, registered up front so none of them can
/// kill the process with its default action once startup has begun.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.hangup.recv() => Signal::ReloadPolicy,
        }
    }
}
