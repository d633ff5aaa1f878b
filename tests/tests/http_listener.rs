//! The web UI's listener against the real gateway: HTTPS with the
//! certificate generated at first start (its fingerprint, as printed,
//! pinned by the client; cookies `Secure`), and the limits a LAN-facing
//! listener needs: a client that trickles its request head or body, or
//! idles, is cut off, and connections beyond the cap are closed at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use dataward_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Trusts exactly the certificate whose SHA-256 is `pin`, as a user who
/// compared the printed fingerprint does; signatures are still checked.
#[derive(Debug)]
struct Pinned {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ::gateway::tls::fingerprint(end_entity.as_ref());
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "fingerprint {got} is not the pinned one"
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One request over TLS to `addr`, pinned to `pin`: the raw answer.
async fn https(addr: std::net::SocketAddr, pin: &str, request: &str) -> Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin: pin.to_string(),
            provider,
        }))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_generated_certificate_and_its_printed_fingerprint() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let gw = Gateway::start(
        dir.path(),
        &config_for(&data, &cloud, None, "\n[http]\ntls = true\n"),
    )?;
    gw.wait_for_log("fingerprint=", Duration::from_secs(10))?;
    let pin = gw
        .log()
        .split("fingerprint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no fingerprint in the log"))?;
    let token = gw.setup_token()?;
    assert!(gw.log().contains("https://"), "the setup link is https");
    let get = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let health = https(gw.http, &pin, get).await?;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Another certificate would be refused: the pin is what decides.
    let wrong = pin.replace(&pin[..2], if &pin[..2] == "00" { "01" } else { "00" });
    assert!(https(gw.http, &wrong, get).await.is_err());
    // Plain HTTP on the HTTPS port gets no page.
    let plain = http(gw.http, "GET", "/healthz", &[], b"");
    assert!(plain.map_or(true, |r| r.status != 200));
    // Setup over HTTPS: the session cookie is Secure.
    let body = format!(r#"{{"token":"{token}","passphrase":"{PASSPHRASE}"}}"#);
    let setup = https(
        gw.http,
        &pin,
        &format!(
            "POST /api/v1/setup HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await?;
    assert!(setup.starts_with("HTTP/1.1 201"), "{setup}");
    let cookie = setup
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(gw.stop()?.success());
    // The next start keeps the same certificate.
    let gw = Gateway::start(
        dir.path(),
        &config_for(&data, &cloud, None, "\n[http]\ntls = true\n"),
    )?;
    gw.wait_for_log("fingerprint=", Duration::from_secs(10))?;
    assert!(https(gw.http, &pin, get).await?.starts_with("HTTP/1.1 200"));
    assert!(gw.stop()?.success());
    Ok(())
}

/// Reads until the server closes; how long that took.
fn closed_after(mut s: TcpStream) -> Result<(Duration, String)> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    Ok((start.elapsed(), String::from_utf8_lossy(&got).into_owned()))
}

#[test]
fn trickling_idle_and_surplus_clients_are_cut_off() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    // A head that never ends, a body that never comes, an idle connection.
    let mut head = TcpStream::connect(gw.http)?;
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")?;
    let mut body = TcpStream::connect(gw.http)?;
    body.write_all(
        b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pass",
    )?;
    let idle = TcpStream::connect(gw.http)?;
    let (slow_head, slow_body, idled) = std::thread::scope(|s| {
        let a = s.spawn(|| closed_after(head));
        let b = s.spawn(|| closed_after(body));
        let c = s.spawn(|| closed_after(idle));
        (a.join(), b.join(), c.join())
    });
    let (slow_head, slow_body, idled) = (
        slow_head.map_err(|_| anyhow!("reader"))??,
        slow_body.map_err(|_| anyhow!("reader"))??,
        idled.map_err(|_| anyhow!("reader"))??,
    );
    for (what, (took, _)) in [("head", &slow_head), ("idle", &idled)] {
        assert!(*took < Duration::from_secs(40), "{what} held for {took:?}");
    }
    assert!(
        slow_body.0 < Duration::from_secs(40),
        "body held for {:?}",
        slow_body.0
    );
    assert!(slow_body.1.starts_with("HTTP/1.1 408"), "{}", slow_body.1);
    // The cap per address: beyond it, a connection is closed at once,
    // while another address still gets in.
    let held: Vec<TcpStream> = (0..web_ui::serve::MAX_PER_ADDRESS)
        .map(|_| TcpStream::connect(gw.http))
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let surplus = TcpStream::connect(gw.http)?;
    let (took, got) = closed_after(surplus)?;
    assert!(
        took < Duration::from_secs(5) && got.is_empty(),
        "{took:?} {got:?}"
    );
    let other = std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind("127.0.0.2:0".parse()?)?;
                let mut s = sock.connect(gw.http).await?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await?;
                Ok(String::from_utf8_lossy(&out).into_owned())
            })
        })
        .join()
        .map_err(|_| anyhow!("client thread"))?
    })?;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if http(gw.http, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "serves again");
    assert!(gw.stop()?.success());
    Ok(())
}
