//! TLS for NBD over TCP (the spec's STARTTLS): TLS 1.3 only, rustls with the ring provider,
//! a server certificate and key from PEM files, and optionally client certificates checked
//! against a CA. A TLS connection is shared by the thread that reads requests and the workers
//! that write replies: one rustls connection behind a mutex, socket reads done without it.

use crate::error::{Error, Result};
use crate::nbd::stream::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Builds the server's TLS configuration from PEM files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    let pem = |p: &Path, what: &str, e: rustls::pki_types::pem::Error| {
        Error::Usage(format!(
            "{}: cannot read the {what} (PEM expected): {e}",
            p.display()
        ))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, "certificate chain", e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| pem(cert, "certificate chain", e))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, "private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem(ca, "client CA", e))? {
                roots
                    .add(c.map_err(|e| pem(ca, "client CA", e))?)
                    .map_err(|e| {
                        Error::Usage(format!(
                            "{}: not a usable CA certificate: {e}",
                            ca.display()
                        ))
                    })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Usage(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        Error::Usage(format!(
            "{}: the key does not fit the certificate: {e}",
            cert.display()
        ))
    })?;
    Ok(Arc::new(config))
}

/// One TLS connection, usable from several threads.
pub struct TlsStream {
    conn: Mutex<ServerConnection>,
    raw_read: Mutex<Stream>,
    raw_write: Mutex<Stream>,
    /// Ciphertext read from the socket that rustls has not taken yet (it takes no more while
    /// its decrypted-data buffer is full).
    pending: Mutex<Vec<u8>>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Runs the TLS handshake on `raw` (just after the STARTTLS reply).
    pub fn accept(raw: Stream, config: Arc<ServerConfig>) -> io::Result<Arc<TlsStream>> {
        let mut conn = ServerConnection::new(config).map_err(tls_err)?;
        let mut rw = raw.try_clone()?;
        while conn.is_handshaking() {
            conn.complete_io(&mut rw)?;
        }
        Ok(Arc::new(TlsStream {
            conn: Mutex::new(conn),
            raw_read: Mutex::new(raw.try_clone()?),
            raw_write: Mutex::new(raw),
            pending: Mutex::new(Vec::new()),
        }))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_tls(&self, conn: &mut ServerConnection) -> io::Result<()> {
        let mut w = Self::lock(&self.raw_write);
        while conn.wants_write() {
            conn.write_tls(&mut *w)?;
        }
        Ok(())
    }

    /// Reads plaintext.
    pub fn read_plain(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut c = Self::lock(&self.conn);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let mut pending = Self::lock(&self.pending);
            if pending.is_empty() {
                let mut raw = [0u8; 16 << 10];
                let n = Self::lock(&self.raw_read).read(&mut raw)?;
                if n == 0 {
                    return Ok(0);
                }
                pending.extend_from_slice(&raw[..n]);
            }
            // Feed one piece, then go back to draining what it decrypted.
            let mut c = Self::lock(&self.conn);
            let mut input = &pending[..];
            let taken = c.read_tls(&mut input)?;
            pending.drain(..taken);
            c.process_new_packets().map_err(tls_err)?;
            self.flush_tls(&mut c)?;
        }
    }

    /// Writes plaintext.
    pub fn write_plain(&self, mut buf: &[u8]) -> io::Result<()> {
        let mut c = Self::lock(&self.conn);
        // rustls takes a bounded amount of plaintext before it must be sent: alternate.
        while !buf.is_empty() {
            let n = c.writer().write(buf)?;
            buf = &buf[n..];
            self.flush_tls(&mut c)?;
            if n == 0 && c.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "TLS connection takes no more data",
                ));
            }
        }
        self.flush_tls(&mut c)
    }

    /// The underlying socket (for shutdown and timeouts).
    pub fn raw(&self) -> std::sync::MutexGuard<'_, Stream> {
        Self::lock(&self.raw_write)
    }
}
