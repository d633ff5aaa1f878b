//! `dataward run`: wires the store, policy, broker, uplinks and HTTP
//! together, and takes them down in order on Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};

use crate::broker::{Broker, BrokerSettings};
use crate::config::Config;
use crate::devices::DeviceRegistry;
use crate::pipeline::{Lane, Pipeline};
use crate::store::{Durability, Store};
use crate::uplink::Uplink;
use crate::{commands, load_policy};

struct HubState {
    durability: Arc<Durability>,
}

impl web_ui::Hub for HubState {
    fn health(&self) -> web_ui::Health {
        web_ui::Health {
            store_ok: self.durability.healthy(),
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is announced: a signal that arrives between the
    // "running" line and the first poll must still mean a clean stop.
    let stop = StopSignal::install().context("watching for Ctrl-C and SIGTERM")?;
    let store = Store::open(&config.data_dir)?;
    let registry = Arc::new(DeviceRegistry::open(&store).context("loading devices")?);
    let policy = load_policy(&config)?;
    if registry.list().is_empty() {
        tracing::warn!("no devices registered yet: add one with `dataward device add NAME` (with the hub stopped)");
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let durability = Arc::clone(&store.durability);
    let committer = {
        let d = Arc::clone(&durability);
        let rx = shutdown_rx.clone();
        tokio::spawn(async move { d.run(rx).await })
    };

    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let mut lanes = Vec::new();
    let mut uplinks = Vec::new();
    for dest in &config.destinations {
        let outbox = Arc::new(store.outbox(&dest.name, config.store.outbox_max_entries)?);
        let wake = Arc::new(Notify::new());
        lanes.push(Lane {
            name: dest.name.clone(),
            outbox: Arc::clone(&outbox),
            wake: Arc::clone(&wake),
        });
        uplinks.push(Uplink::new(dest.clone(), outbox, wake, cmd_tx.clone())?);
    }
    drop(cmd_tx);
    let history = Arc::new(store.history()?);
    let pipeline = Arc::new(Pipeline::new(
        policy,
        history,
        lanes,
        Arc::clone(&durability),
    ));

    let broker = Arc::new(
        Broker::start(
            BrokerSettings {
                listen: config.mqtt.listen,
                max_packet_bytes: config.mqtt.max_packet_bytes,
                max_connections_per_device: config.mqtt.max_connections_per_device,
                max_queued_messages: config.mqtt.max_queued_messages,
                message_expiry: Duration::from_secs(config.mqtt.message_expiry_secs),
            },
            Arc::clone(&registry),
            Arc::clone(&pipeline),
        )
        .await?,
    );
    let mut uplink_tasks = Vec::new();
    for u in uplinks {
        let rx = shutdown_rx.clone();
        uplink_tasks.push(tokio::spawn(u.run(rx)));
    }
    let router_task = tokio::spawn(commands::route(
        cmd_rx,
        Arc::clone(&registry),
        Arc::clone(&pipeline),
        Arc::clone(&broker),
    ));

    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let (mqtt_addr, http_addr) = (broker.local_addr(), http.local_addr()?);
    let app = web_ui::router(Arc::new(HubState {
        durability: Arc::clone(&durability),
    }));
    let mut http_shutdown = shutdown_rx.clone();
    let http_task = tokio::spawn(async move {
        let serve = axum::serve(http, app).with_graceful_shutdown(async move {
            let _ = http_shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });

    // Tests and scripts read this line to find the ports.
    println!(
        "dataward running: mqtt={} http={} data_dir={}",
        mqtt_addr,
        http_addr,
        config.data_dir.display()
    );
    tracing::info!(mqtt = %mqtt_addr, http = %http_addr, destinations = config.destinations.len(), devices = registry.list().len(), "dataward running");

    stop.wait().await;
    tracing::info!("shutting down");
    // Devices first, so nothing new arrives; then uplinks and HTTP; the
    // committer flushes last.
    broker.stop();
    let _ = shutdown_tx.send(true);
    for t in uplink_tasks {
        let _ = t.await;
    }
    router_task.abort();
    let _ = http_task.await;
    let _ = committer.await;
    store.flush().context("final flush of the store")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Ctrl-C or SIGTERM, registered up front so neither can kill the process
/// with its default action once startup has begun.
struct StopSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
