//! HTTPS registries behind the link relay: the relay is an HTTP CONNECT proxy, so every TLS
//! connection lamina (or skopeo) opens — to the registry, and to any host its blobs are
//! redirected to — is a tunnel across the emulated link.
//!
//! ```text
//! lamina ──CONNECT host:443──► relay ──TCP──► host          (answered at once, not paced)
//! lamina ◄═══════ TLS bytes, paced, delayed, counted ═══════► host
//! ```
//!
//! The CONNECT exchange is local: what crosses the link is the tunnel, as a direct
//! connection's byte stream would (the plain relay does not emulate the TCP handshake either).
//! Bytes down are counted as they are, TLS records included; requests cannot be read inside
//! TLS, so the engine takes them from lamina's own count (see `measure`).
//!
//! The link check's client is here too: it times requests over TLS, through the tunnel and
//! direct, without checking the server's certificate — it sends no credentials and uses
//! nothing it reads but its length and timing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// Longest CONNECT request head read (a request line and a few headers).
const MAX_CONNECT_HEAD: usize = 8 << 10;
/// How long a client may take to send its CONNECT request.
const CONNECT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream the link check can speak HTTP/1.1 on.
pub(super) trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Read a CONNECT request from `client`, connect to the host it names and tell the client the
/// tunnel is open: the two ends, to be carried over the link. Anything else is answered with
/// an error status and refused.
pub(super) fn accept(mut client: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    client.set_read_timeout(Some(CONNECT_READ_TIMEOUT))?;
    let head = read_head(&mut client)?;
    let target = match connect_target(&head) {
        Some(t) => t,
        None => {
            let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
            return Err(std::io::Error::other("not a CONNECT request"));
        }
    };
    let server = match TcpStream::connect(&target) {
        Ok(s) => s,
        Err(e) => {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return Err(e);
        }
    };
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    client.set_read_timeout(None)?;
    Ok((client, server))
}

/// The request head, byte by byte up to its blank line (nothing of the tunnel is read: a
/// client sends its first TLS bytes only after the 200).
fn read_head(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_HEAD || client.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("no complete CONNECT request"));
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// `host:port` of `CONNECT host:port HTTP/1.x`.
fn connect_target(head: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    (method == "CONNECT" && version.starts_with("HTTP/1.") && target.contains(':') && words.next().is_none())
        .then(|| target.to_string())
}

/// `host` and `port` of `host[:port]` (443 by default; `[v6]:port` kept bracketed for
/// connecting).
fn host_port(host: &str) -> (String, u16) {
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().unwrap_or(443)),
        _ => (host, 443),
    };
    (name.to_string(), port)
}

/// A tunnel to `host` (`name[:port]`) through the CONNECT proxy at `proxy`.
fn via_proxy(proxy: &str, host: &str) -> std::io::Result<TcpStream> {
    let (name, port) = host_port(host);
    let mut s = TcpStream::connect(proxy)?;
    s.set_nodelay(true)?;
    write!(s, "CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n")?;
    let mut reader = BufReader::new(&mut s);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if status.split(' ').nth(1) != Some("200") {
        return Err(std::io::Error::other(format!(
            "the relay refused the tunnel: {}",
            status.trim()
        )));
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    Ok(s)
}

/// A TLS connection to `host`, through the proxy at `proxy` or direct.
pub(super) fn open_tls(proxy: Option<&str>, host: &str) -> std::io::Result<Box<dyn Stream>> {
    let tcp = match proxy {
        Some(p) => via_proxy(p, host)?,
        None => {
            let (name, port) = host_port(host);
            let s = TcpStream::connect((name.trim_start_matches('[').trim_end_matches(']'), port))?;
            s.set_nodelay(true)?;
            s
        }
    };
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (name, _) = host_port(host);
    let server = rustls::pki_types::ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?
        .to_owned();
    let conn = rustls::ClientConnection::new(client_config(), server).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now, so the first timed request does not include it.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Box::new(tls))
}

/// rustls settings of the link check: any certificate (see the module doc), HTTP/1.1.
fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts any server certificate (signatures still checked, so the handshake is the real
/// one): the link check only times bytes.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (
                b"CONNECT reg.example:443 HTTP/1.1\r\nHost: reg.example:443\r\n\r\n",
                Some("reg.example:443"),
            ),
            (b"CONNECT 127.0.0.1:5000 HTTP/1.0\r\n\r\n", Some("127.0.0.1:5000")),
            (b"GET / HTTP/1.1\r\n\r\n", None),
            (b"CONNECT reg.example HTTP/1.1\r\n\r\n", None),
            (b"CONNECT a:1 HTTP/1.1 x\r\n\r\n", None),
        ];
        for (head, want) in cases {
            assert_eq!(
                connect_target(head).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(host_port("ghcr.io"), ("ghcr.io".into(), 443));
        assert_eq!(host_port("127.0.0.1:5000"), ("127.0.0.1".into(), 5000));
        assert_eq!(host_port("[::1]:5000"), ("[::1]".into(), 5000));
        assert_eq!(host_port("[::1]"), ("[::1]".into(), 443));
    }
}
