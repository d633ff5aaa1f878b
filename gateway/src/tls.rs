//! The hub's own TLS certificates, for the web UI (`[http]`) and for
//! devices (`[mqtt] tls_listen`): the user's (`tls_cert` and `tls_key`),
//! or a self-signed one generated at first start and kept in the data
//! directory (`http-tls/`, `mqtt-tls/`). Its SHA-256 fingerprint is
//! printed at every start and by `dataward status`, so the user can check
//! that the certificate a browser or a device sees is the hub's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate (DER), as `AB:CD:…`.
    pub fingerprint: String,
    /// Where the certificate is, for the user to install or compare.
    pub cert_path: PathBuf,
}

/// `AB:CD:…` over the SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The names the generated certificate is for: this host as the LAN
/// reaches it, and loopback.
fn names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            names.push(h.to_string());
            names.push(format!("{h}.local"));
        }
    }
    names
}

/// Generates the self-signed pair into `dir`, unless both files exist.
fn ensure_generated(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(names())
        .map_err(|e| anyhow!("generating the web UI's certificate: {e}"))?;
    // The key first: a crash between the two leaves no certificate
    // without its key, and the next start makes a fresh pair.
    crate::write_private(&key, &made.key_pair.serialize_pem())
        .with_context(|| format!("writing {}", key.display()))?;
    crate::write_private(&cert, &made.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate for the web UI");
    Ok((cert, key))
}

fn read_pair(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading the certificates in {}", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))
    .with_context(|| format!("reading the private key in {}", key.display()))?
    .ok_or_else(|| anyhow!("{} holds no private key", key.display()))?;
    Ok((certs, key))
}

/// Where a listener's certificate comes from.
pub struct CertSource<'a> {
    /// TLS wanted (with a generated certificate unless `cert` and `key`).
    pub enabled: bool,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// Where a generated pair is kept.
    pub generated_dir: PathBuf,
    /// The config section, for messages: `[http]`, `[mqtt]`.
    pub section: &'a str,
}

/// A listener's TLS, if asked for.
pub fn load(src: &CertSource<'_>) -> anyhow::Result<Option<ServerTls>> {
    let (cert_path, key_path) = match (src.cert, src.key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) if src.enabled => ensure_generated(&src.generated_dir)?,
        (None, None) => return Ok(None),
        _ => {
            return Err(anyhow!(
                "{} needs both tls_cert and tls_key, or neither",
                src.section
            ))
        }
    };
    let (certs, key) = read_pair(&cert_path, &key_path)?;
    let fingerprint = fingerprint(certs[0].as_ref());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not fit its certificate",
                key_path.display()
            )
        })?;
    Ok(Some(ServerTls {
        config: Arc::new(config),
        fingerprint,
        cert_path,
    }))
}

/// The web UI's TLS, if the config asks for it.
pub fn for_http(
    cfg: &crate::config::HttpConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<ServerTls>> {
    load(&CertSource {
        enabled: cfg.tls,
        cert: cfg.tls_cert.as_deref(),
        key: cfg.tls_key.as_deref(),
        generated_dir: data_dir.join("http-tls"),
        section: "[http]",
    })
}

/// The devices' TLS listener's certificate, if one is configured.
pub fn for_mqtt(
    cfg: &crate::config::MqttConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<ServerTls>> {
    load(&CertSource {
        enabled: cfg.tls_listen.is_some(),
        cert: cfg.tls_cert.as_deref(),
        key: cfg.tls_key.as_deref(),
        generated_dir: data_dir.join("mqtt-tls"),
        section: "[mqtt]",
    })
}

/// The fingerprint of a certificate file, for `status` (gateway running
/// or not).
pub fn fingerprint_of(cert: &Path) -> Option<String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).ok()?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .ok()?;
    certs.first().map(|c| fingerprint(c.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_kept_and_reused_with_a_private_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        use crate::config::HttpConfig;
        let cfg = HttpConfig {
            tls: true,
            ..HttpConfig::default()
        };
        let first = for_http(&cfg, dir.path()).expect("loads").expect("tls");
        let again = for_http(&cfg, dir.path()).expect("loads").expect("tls");
        assert_eq!(first.fingerprint, again.fingerprint, "reused, not remade");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("http-tls/key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(for_http(&HttpConfig::default(), dir.path())
            .expect("loads")
            .is_none());
        let half = HttpConfig {
            tls_cert: Some(first.cert_path.clone()),
            ..HttpConfig::default()
        };
        assert!(for_http(&half, dir.path()).is_err());
        std::fs::write(dir.path().join("http-tls/key.pem"), "not a key").expect("write");
        assert!(
            for_http(&cfg, dir.path()).is_err(),
            "a broken key is an error, not a new pair"
        );
    }
}
