//! TLS for SMTP sessions: which certificate authorities are trusted, lettre's
//! parameters for STARTTLS, and implicit-TLS sockets of our own.
//!
//! Implicit TLS (`security = "tls"`) is opened here rather than by lettre's
//! `connect_tokio1` so that the socket underneath has Nagle's algorithm off, like the
//! plain and STARTTLS sessions: lettre writes the message content and the final
//! `.` separately, and with Nagle on the second write waits for the server's delayed
//! ACK (~40 ms) on every message.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use lettre::transport::smtp::client::{AsyncTokioStream, Certificate, TlsParameters};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Reads the certificates of `smtp.extra_root_certificates`: every PEM certificate
/// block of every file, each returned as its own PEM text.
pub fn extra_roots(paths: &[PathBuf]) -> Result<Vec<String>, String> {
    let mut roots = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "smtp.extra_root_certificates: reading {}: {e}",
                path.display()
            )
        })?;
        let before = roots.len();
        let mut rest = text.as_str();
        while let Some(start) = rest.find(BEGIN) {
            let Some(len) = rest[start..].find(END) else {
                break;
            };
            let end = start + len + END.len();
            let pem = &rest[start..end];
            native_tls::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                format!(
                    "smtp.extra_root_certificates: {} holds an invalid certificate: {e}",
                    path.display()
                )
            })?;
            roots.push(pem.to_owned());
            rest = &rest[end..];
        }
        if roots.len() == before {
            return Err(format!(
                "smtp.extra_root_certificates: {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    Ok(roots)
}

/// lettre's TLS parameters for STARTTLS to `host`: the system's roots plus the extra
/// ones, certificate and host name verified, TLS 1.2 at least.
pub fn parameters(host: &str, roots: &[String]) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(host.to_owned());
    for pem in roots {
        let cert = Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("TLS setup: extra root certificate: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| format!("TLS setup: {e}"))
}

/// A TLS session over a TCP socket with Nagle's algorithm off.
#[derive(Debug)]
pub struct TlsSocket(tokio_native_tls::TlsStream<TcpStream>);

/// Opens TLS to `host` over `tcp` (Nagle already off): the same verification as
/// [`parameters`] (system roots plus the extra ones, host name checked, TLS 1.2 at
/// least). The error says which part failed.
pub async fn connect_implicit(
    tcp: TcpStream,
    host: &str,
    roots: &[String],
) -> Result<TlsSocket, String> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    for pem in roots {
        let cert = native_tls::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| format!("TLS setup: extra root certificate: {e}"))?;
        builder.add_root_certificate(cert);
    }
    let connector = builder.build().map_err(|e| format!("TLS setup: {e}"))?;
    tokio_native_tls::TlsConnector::from(connector)
        .connect(host, tcp)
        .await
        .map(TlsSocket)
        .map_err(|e| format!("TLS handshake with {host}: {e}"))
}

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().get_ref().get_ref().peer_addr()
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_with_the_key_named() {
        let path = std::env::temp_dir().join(format!("pw-roots-{}.pem", uuid::Uuid::now_v7()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = extra_roots(std::slice::from_ref(&path)).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(error.starts_with("smtp.extra_root_certificates"), "{error}");
        assert!(error.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn a_missing_file_is_refused_with_its_path() {
        let error = extra_roots(&[PathBuf::from("/nonexistent/ca.pem")]).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
