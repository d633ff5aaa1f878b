//! The harness for dataward's end-to-end tests and load generator: a real
//! mosquitto as the cloud, the real `dataward` binary, real MQTT clients.
//!
//! - [`Cloud`]: a mosquitto on a free loopback port, stoppable and
//!   restartable on the same port (with persistence, so sessions survive).
//! - [`Gateway`]: the `dataward` binary on a data directory, with its ports
//!   read from its startup line.
//! - [`cli`] / [`add_device`]: the command line, as a user runs it.
//! - [`device_client`] / [`cloud_subscriber`]: rumqttc clients.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

/// The workspace's target directory, where `dataward` is built.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path to the `dataward` binary, building it once if needed (so a test
/// never fails or skips just because the binary was not built first).
pub fn dataward_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("DATAWARD_BIN") {
            return Ok(PathBuf::from(p));
        }
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let mut args = vec!["build", "-q", "-p", "gateway", "--bin", "dataward"];
        if profile == "release" {
            args.push("--release");
        }
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(&args)
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("building dataward failed".into());
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        Ok(target.join(profile).join("dataward"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A port that was free a moment ago on loopback.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after {timeout:?}")
}

/// Fails loudly (never skips) when mosquitto is not installed.
pub fn mosquitto_bin() -> Result<PathBuf> {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("mosquitto is not installed: run scripts/test.sh, which installs it (apt-get install mosquitto)")
}

/// A real mosquitto broker playing the vendor cloud.
pub struct Cloud {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Cloud {
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// `extra` lines are appended to the config (e.g. a bridge).
    pub fn start_with(extra: &[String]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_queued_messages 1000000\nmax_inflight_messages 100\nset_tcp_nodelay true\n\
             # As root, mosquitto would drop to its own user, which cannot write\n\
             # the persistence file into this test's directory.\nuser root\n",
            dir.path().display()
        );
        if std::env::var_os("DATAWARD_TEST_KEEP").is_some() {
            text.push_str("log_type all\n");
            eprintln!("cloud dir kept: {}", dir.path().display());
        }
        for l in extra {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&conf, text)?;
        let mut cloud = Self {
            port,
            dir,
            child: None,
        };
        cloud.spawn()?;
        Ok(cloud)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))?;
        let child = Command::new(mosquitto_bin()?)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mosquitto")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// Stops the broker with SIGTERM (it saves its sessions).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM")?;
            c.wait()?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if std::env::var_os("DATAWARD_TEST_KEEP").is_some() {
            let keep = tempfile::tempdir().map(|d| d.keep()).unwrap_or_default();
            let _ = std::fs::rename(self.dir.path(), keep.join("cloud"));
            eprintln!("cloud files moved to {}", keep.display());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{sig} {} failed", child.id());
    }
    Ok(())
}

/// A throwaway certificate authority and a server certificate for
/// 127.0.0.1, made with the openssl command line.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let p = |n: &str| dir.path().join(n);
        let ext = p("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let steps: Vec<Vec<String>> = vec![
            vec![
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=dataward test CA",
                "-keyout",
            ]
            .into_iter()
            .map(String::from)
            .chain(
                [p("ca.key"), p("ca.pem")]
                    .iter()
                    .enumerate()
                    .flat_map(|(i, x)| {
                        let v = x.display().to_string();
                        if i == 0 {
                            vec![v]
                        } else {
                            vec!["-out".to_string(), v]
                        }
                    }),
            )
            .collect(),
            vec![
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ]
            .into_iter()
            .map(String::from)
            .chain([
                p("server.key").display().to_string(),
                "-out".into(),
                p("server.csr").display().to_string(),
            ])
            .collect(),
            vec!["x509", "-req", "-days", "2", "-in"]
                .into_iter()
                .map(String::from)
                .chain([
                    p("server.csr").display().to_string(),
                    "-CA".into(),
                    p("ca.pem").display().to_string(),
                    "-CAkey".into(),
                    p("ca.key").display().to_string(),
                    "-CAcreateserial".into(),
                    "-out".into(),
                    p("server.pem").display().to_string(),
                    "-extfile".into(),
                    ext.display().to_string(),
                ])
                .collect(),
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .context("running openssl (scripts/test.sh installs it)")?;
            if !out.status.success() {
                bail!(
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(Self {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
            _dir: dir,
        })
    }

    /// mosquitto config lines for an extra TLS listener on `port`.
    pub fn listener(&self, port: u16) -> Vec<String> {
        vec![
            format!("listener {port} 127.0.0.1"),
            format!("cafile {}", self.ca.display()),
            format!("certfile {}", self.cert.display()),
            format!("keyfile {}", self.key.display()),
        ]
    }
}

/// Runs `dataward ARGS`; returns its output whatever the exit code.
pub fn cli(args: &[&str]) -> Result<Output> {
    Ok(Command::new(dataward_bin()?)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// A registered device's credentials, as `device add --json` printed them.
#[derive(Debug, Clone)]
pub struct DeviceCreds {
    pub id: String,
    pub password: String,
}

pub fn add_device(data_dir: &Path, name: &str, preset: &str) -> Result<DeviceCreds> {
    let dir = data_dir.to_string_lossy();
    let out = cli(&[
        "device",
        "add",
        name,
        "--preset",
        preset,
        "--json",
        "--data-dir",
        &dir,
    ])?;
    if !out.status.success() {
        bail!(
            "device add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no {k} in {v}"))
    };
    Ok(DeviceCreds {
        id: field("id")?,
        password: field("password")?,
    })
}

/// A running `dataward run`.
pub struct Gateway {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    child: Child,
    stderr_log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML text, written next to the
    /// data directory); MQTT and HTTP listen on free loopback ports.
    pub fn start(dir: &Path, config: &str) -> Result<Self> {
        let conf = dir.join("dataward.toml");
        std::fs::write(&conf, config)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))?;
        let mut child = Command::new(dataward_bin()?)
            .args(["run", "--config"])
            .arg(&conf)
            .args([
                "--mqtt-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env(
                "RUST_LOG",
                std::env::var("DATAWARD_TEST_LOG").unwrap_or_else(|_| "info,rmqtt=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting dataward")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            anyhow!(
                "dataward did not start; see {}",
                dir.join("gateway.log").display()
            )
        })?;
        let addr = |key: &str| -> Result<SocketAddr> {
            let part = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .ok_or_else(|| anyhow!("no {key} in {line:?}"))?;
            Ok(part.parse()?)
        };
        Ok(Self {
            mqtt: addr("mqtt=")?,
            http: addr("http=")?,
            child,
            stderr_log: dir.join("gateway.log"),
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Waits until the gateway's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{needle:?} did not appear in the gateway log within {timeout:?}")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        signal(&self.child, "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("dataward did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: no chance to flush anything.
    pub fn crash(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn healthz(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(self.http)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway config with one destination, `vendor_cloud`, at `cloud`.
pub fn config_for(data_dir: &Path, cloud: &Cloud, policy: Option<&Path>, extra: &str) -> String {
    let policy = policy
        .map(|p| format!("policy = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    format!(
        "data_dir = {:?}\n{policy}\n[[destination]]\nname = \"vendor_cloud\"\nurl = \"{}\"\ntopic_prefix = \"home/\"\n\
         command_prefix = \"home/cmd/\"\nmax_inflight = 64\n{extra}",
        data_dir.display().to_string(),
        cloud.url()
    )
}

/// MQTT 3.1.1 client options for a device.
pub fn device_options(addr: SocketAddr, creds: &DeviceCreds, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(creds.id.clone(), creds.password.clone());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

/// Connects and waits for the CONNACK; errors if the broker refuses.
pub async fn connect(opts: MqttOptions) -> Result<(AsyncClient, EventLoop)> {
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a)))
                    if a.code == rumqttc::ConnectReturnCode::Success =>
                {
                    return Ok(())
                }
                Ok(Event::Incoming(Packet::ConnAck(a))) => bail!("refused: {:?}", a.code),
                Ok(_) => {}
                Err(e) => bail!("connection failed: {e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no CONNACK within {deadline:?}"))??;
    Ok((client, events))
}

/// A cloud-side subscriber with a persistent session and manual acks: a
/// message is acknowledged only once [`collect`] has recorded it, so a cloud
/// restart loses nothing queued for, or in flight to, the subscriber.
pub async fn cloud_subscriber(
    cloud: &Cloud,
    filter: &str,
    client_id: &str,
) -> Result<(AsyncClient, EventLoop)> {
    let (client, events, early) = resume_cloud_subscriber(cloud, filter, client_id).await?;
    if !early.is_empty() {
        bail!(
            "a new subscriber {client_id} got {} messages from an old session",
            early.len()
        );
    }
    Ok((client, events))
}

/// Like [`cloud_subscriber`], for a client id that may have a session on
/// the cloud already: also returns the messages the cloud redelivered from
/// that session before the SUBACK.
pub async fn resume_cloud_subscriber(
    cloud: &Cloud,
    filter: &str,
    client_id: &str,
) -> Result<(AsyncClient, EventLoop, Vec<(String, Vec<u8>)>)> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", cloud.port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = connect(o).await?;
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let mut early = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                early.push((p.topic.clone(), p.payload.to_vec()));
                client.try_ack(&p)?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("subscriber failed: {e}"),
            Err(_) => bail!("no SUBACK"),
        }
    }
    Ok((client, events, early))
}

/// Collects publishes from `events` until `done` says so or `timeout`
/// passes, acknowledging each through `acker` when the client uses manual
/// acks. Connection errors are retried (the broker may be restarting).
pub async fn collect<F>(
    acker: Option<&AsyncClient>,
    events: &mut EventLoop,
    timeout: Duration,
    mut done: F,
) -> Vec<(String, Vec<u8>)>
where
    F: FnMut(&[(String, Vec<u8>)]) -> bool,
{
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push((p.topic.clone(), p.payload.to_vec()));
                if let Some(c) = acker {
                    let _ = c.try_ack(&p);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    got
}
