//! The `dataward` binary as a user runs it: the CLI, and `dataward run`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cloud::{signal, Cloud};

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
            .stdin(Stdio::null())
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
    /// The devices' TLS port, when the config opens one.
    pub mqtts: Option<SocketAddr>,
    child: Child,
    stderr_log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML text, written next to the
    /// data directory); MQTT and HTTP listen on free loopback ports.
    pub fn start(dir: &Path, config: &str) -> Result<Self> {
        Self::start_with_env(dir, config, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Self> {
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
            .envs(env.iter().copied())
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
            mqtts: addr("mqtts=").ok(),
            child,
            stderr_log: dir.join("gateway.log"),
        })
    }

    /// The one-time setup token a gateway without keys logs at start.
    pub fn setup_token(&self) -> Result<String> {
        self.wait_for_log("setup?token=", Duration::from_secs(10))?;
        self.log()
            .split("setup?token=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no setup token in the log"))
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

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(self) -> Result<std::process::ExitStatus> {
        self.signal_and_wait("TERM")
    }

    /// SIGINT (Ctrl-C), and wait for the exit.
    pub fn interrupt(self) -> Result<std::process::ExitStatus> {
        self.signal_and_wait("INT")
    }

    fn signal_and_wait(mut self, sig: &str) -> Result<std::process::ExitStatus> {
        signal(&self.child, sig)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("dataward did not stop within 20 s of SIG{sig}");
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

/// A policy that shares every field of every device with every destination,
/// new fields included (no quarantine).
pub const SHARE_ALL: &str = "[quarantine]\nexempt = [\"*\"]\n\n\
     [[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n";

/// Writes `text` as `policy.toml` in `dir` and returns its path.
pub fn write_policy(dir: &Path, text: &str) -> Result<PathBuf> {
    let p = dir.join("policy.toml");
    std::fs::write(&p, text)?;
    Ok(p)
}

/// The passphrase the tests set up keys with.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The file beside `data_dir` holding [`PASSPHRASE`].
pub fn passphrase_file(data_dir: &Path) -> Result<PathBuf> {
    let p = data_dir.with_file_name("passphrase.txt");
    if !p.exists() {
        std::fs::write(&p, format!("{PASSPHRASE}\n"))?;
    }
    Ok(p)
}

/// `dataward init` with [`PASSPHRASE`]; returns the recovery key printed.
pub fn init_keys(data_dir: &Path) -> Result<String> {
    let pass = passphrase_file(data_dir)?;
    let answer = cli_json(
        data_dir,
        &["init", "--passphrase-file", &pass.to_string_lossy()],
    )?;
    answer["recovery_key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("init printed no recovery key: {answer}"))
}

/// The `seq` numbers of one device's stored messages, read back through
/// `dataward export` (gateway stopped) from JSON payloads like
/// `{"seq":12,...}`.
pub fn stored_seqs(data_dir: &Path, device: &str) -> Result<std::collections::HashSet<usize>> {
    let pass = passphrase_file(data_dir)?;
    let out = cli(&[
        "export",
        "--device",
        device,
        "--passphrase-file",
        &pass.to_string_lossy(),
        "--data-dir",
        &data_dir.to_string_lossy(),
    ])?;
    if !out.status.success() {
        bail!("export failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["payload"]["seq"].as_u64().map(|s| s as usize))
        .collect())
}

/// `dataward ARGS --data-dir DIR`; fails unless it exits 0. Returns stdout.
pub fn cli_ok(data_dir: &Path, args: &[&str]) -> Result<String> {
    let dir = data_dir.to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--data-dir", &dir]);
    let out = cli(&all)?;
    if !out.status.success() {
        bail!(
            "dataward {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Like [`cli_ok`] with `--json`; returns the parsed answer.
pub fn cli_json(data_dir: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    Ok(serde_json::from_str(&cli_ok(data_dir, &all)?)?)
}

/// Publishes each payload as the generic device `dev`, on
/// `devices/<id>/state` at QoS 1, with `mosquitto_pub` (one connection per
/// message).
pub fn publish_each(gw: &Gateway, dev: &DeviceCreds, payloads: &[String]) -> Result<()> {
    for payload in payloads {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &gw.mqtt.port().to_string()])
            .args(["-u", &dev.id, "-P", &dev.password, "-i", &dev.id])
            .args(["-t", &format!("devices/{}/state", dev.id), "-q", "1"])
            .args(["-m", payload])
            .output()?;
        if !out.status.success() {
            bail!("mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}
