//! The cloud side: a real mosquitto on a free loopback port, and a
//! throwaway CA for its TLS listener.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

pub(crate) fn signal(child: &Child, sig: &str) -> Result<()> {
    signal_pid(child.id(), sig)
}

/// `kill -SIG PID`.
pub fn signal_pid(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// A scratch directory, its `data` subdirectory for the gateway, and a
/// cloud: what most end-to-end tests start from.
pub fn scratch() -> Result<(tempfile::TempDir, PathBuf, Cloud)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    Ok((dir, data, Cloud::start()?))
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
        let path = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let (ca_key, ca, key, csr, cert, ext) = (
            path("ca.key"),
            path("ca.pem"),
            path("server.key"),
            path("server.csr"),
            path("server.pem"),
            path("ext.cnf"),
        );
        let steps: [Vec<&str>; 3] = [
            [
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=dataward test CA",
                ][..],
                &ec,
                &["-keyout", &ca_key, "-out", &ca],
            ]
            .concat(),
            [
                &["req", "-subj", "/CN=127.0.0.1"][..],
                &ec,
                &["-keyout", &key, "-out", &csr],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
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
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
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
