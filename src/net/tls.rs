//! The node's side of TLS: its configuration from `--tls-cert`, `--tls-key` and
//! `--tls-client-ca`, and [`TlsStream`], a client connection's transport on a shard when the
//! node speaks TLS.
//!
//! A `TlsStream` is a glommio socket plus a `crate::tls::TlsSession` shared by the
//! connection's reader and writer tasks (an `Rc<RefCell>` on the shard's executor, never
//! borrowed across an await), each task with its own ciphertext buffers. Plaintext is copied
//! from the session into the reader's 16-byte-aligned receive buffer exactly where the
//! socket's bytes go without TLS, so frames are cut out of it the same way.
//!
//! No session resumption: a node keeps no ticket keys or session cache, so nothing grows with
//! the number of clients that ever connected.
//!
//! Who writes: only a stream's `write_all`, `flush`, `close` and `refuse` write ciphertext to
//! the socket, and after a split only the writer half calls them. What the reader half's
//! input makes the session queue (a TLS 1.3 key-update answer, an alert) goes out with the
//! writer's next write, so two tasks never interleave records on the socket.

use std::cell::RefCell;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use crate::constants::{
    CONNECTION_LINGER_MS_MAX, TLS_CERT_CHAIN_BYTES_MAX, TLS_CIPHERTEXT_READ_BYTES_MAX,
};
use crate::net::transport::dup_stream;
use crate::tls::{
    Plaintext, TlsSession, crypto_provider, read_certificates, read_private_key, read_roots,
};

pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = read_certificates("--tls-cert", cert, "the node's certificate chain")?;
    let chain_bytes: usize = chain.iter().map(|certificate| certificate.len()).sum();
    if chain_bytes > TLS_CERT_CHAIN_BYTES_MAX {
        // The chain goes out whole in every handshake: the memory sum counts it at this bound.
        return Err(format!(
            "--tls-cert {}: the certificate chain is {chain_bytes} bytes (DER), more than the {TLS_CERT_CHAIN_BYTES_MAX} a node sends in a handshake; give the node's certificate and its intermediates only",
            cert.display()
        ));
    }
    let private_key = read_private_key("--tls-key", key)?;
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| format!("the TLS provider cannot do TLS 1.3: {error}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_roots("--tls-client-ca", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|error| {
                    format!(
                        "--tls-client-ca {}: cannot check clients' certificates with it ({error})",
                        path.display()
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|error| {
            format!(
                "--tls-key {} does not go with the certificate in --tls-cert {} ({error}); give the key the certificate was made for",
                key.display(),
                cert.display()
            )
        })?;
    // No resumption: no ticket keys, no session cache that grows with the clients seen.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

// ---- the node's transport -----------------------------------------------------------------

/// A TLS connection on a shard: the socket (or, after [`Self::split`], one task's descriptor
/// of it), the session both tasks share, and this task's ciphertext buffers.
pub(crate) struct TlsStream {
    socket: TcpStream,
    session: Rc<RefCell<TlsSession>>,
    /// Ciphertext read from the socket; `received..read` is not yet taken by the session.
    /// Allocated on the first read: a writer half never needs it.
    ciphertext_in: Vec<u8>,
    received: usize,
    read: usize,
    /// Records taken from the session, being written.
    ciphertext_out: Vec<u8>,
}

impl TlsStream {
    /// The socket's descriptor.
    pub(crate) fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    /// The node's side of a freshly accepted socket, before its [`Self::handshake`].
    pub(crate) fn server(socket: TcpStream, config: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let session = TlsSession::server(config.clone())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(TlsStream {
            socket,
            session: Rc::new(RefCell::new(session)),
            ciphertext_in: Vec::new(),
            received: 0,
            read: 0,
            ciphertext_out: Vec::new(),
        })
    }

    /// Runs the handshake to its end. On failure, [`Self::refuse`] tells the client. The
    /// caller bounds the time it may take.
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.flush().await?;
            if !self.session.borrow().is_handshaking() {
                return Ok(());
            }
            if self.received < self.read {
                self.feed()?;
            } else if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends what the failed session queued (its alert), closes the sending side, and drops
    /// what the client still sends until it closes too or `CONNECTION_LINGER_MS_MAX` passes:
    /// closing on unread input would reset the connection and could destroy the alert.
    pub(crate) async fn refuse(&mut self) {
        let linger = Duration::from_millis(CONNECTION_LINGER_MS_MAX);
        let refusal = async {
            if self.flush().await.is_err() {
                return;
            }
            let _ = self.socket.close().await;
            let mut scratch = [0u8; 4096];
            while let Ok(len) = self.socket.read(&mut scratch).await {
                if len == 0 {
                    return;
                }
            }
        };
        or(refusal, async {
            glommio::timer::sleep(linger).await;
        })
        .await;
    }

    /// A second stream over the same connection (a duplicated descriptor, the same session)
    /// for the writer task; `self` stays the reader and keeps the ciphertext it has read.
    pub(crate) fn split(self) -> io::Result<(TlsStream, TlsStream)> {
        let writer = TlsStream {
            socket: dup_stream(&self.socket)?,
            session: self.session.clone(),
            ciphertext_in: Vec::new(),
            received: 0,
            read: 0,
            ciphertext_out: Vec::new(),
        };
        Ok((self, writer))
    }

    /// Reads decrypted bytes into `buf`; `Ok(0)` when the client has closed. A TLS failure
    /// is an `InvalidData` error.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let plaintext = self.session.borrow_mut().read(buf);
            match plaintext {
                Plaintext::Data(len) => return Ok(len),
                Plaintext::Closed => return Ok(0),
                Plaintext::NeedMore => {}
            }
            if self.received < self.read {
                self.feed()?;
            } else {
                self.fill().await?;
            }
        }
    }

    /// Offers the session the ciphertext read and not yet taken.
    fn feed(&mut self) -> io::Result<()> {
        let pending = &self.ciphertext_in[self.received..self.read];
        let taken = self
            .session
            .borrow_mut()
            .receive(pending)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        if taken == 0 {
            // Only a full plaintext buffer refuses ciphertext, and callers read it first.
            return Err(io::Error::other("the TLS session took no input"));
        }
        self.received += taken;
        Ok(())
    }

    /// One read from the socket into the ciphertext buffer; at the end of the stream the
    /// session is told.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.ciphertext_in.is_empty() {
            self.ciphertext_in.resize(TLS_CIPHERTEXT_READ_BYTES_MAX, 0);
        }
        let len = self.socket.read(&mut self.ciphertext_in).await?;
        (self.received, self.read) = (0, len);
        if len == 0 {
            self.session.borrow_mut().receive_eof();
        }
        Ok(len)
    }

    /// Encrypts and writes all of `bytes`, in steps of at most `TLS_SEND_BUFFER_BYTES_MAX`.
    pub(crate) async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        loop {
            let taken = self.session.borrow_mut().write(bytes);
            bytes = &bytes[taken..];
            let sent = self.flush_taking().await?;
            if bytes.is_empty() {
                return Ok(());
            }
            if taken == 0 && sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
    }

    /// Writes every record the session has queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        self.flush_taking().await.map(|_| ())
    }

    async fn flush_taking(&mut self) -> io::Result<usize> {
        let taken = self
            .session
            .borrow_mut()
            .take_output(&mut self.ciphertext_out);
        if taken > 0 {
            // Kept between writes: it holds at most the session's send buffer
            // (`TLS_SEND_BUFFER_BYTES_MAX`) plus records' overhead, or once the handshake's
            // flight (the certificate chain, at most `TLS_PEM_FILE_BYTES_MAX` as PEM).
            self.socket.write_all(&self.ciphertext_out).await?;
            self.ciphertext_out.clear();
        }
        Ok(taken)
    }

    /// Sends a `close_notify`, then closes the sending side of the socket (FIN).
    pub(crate) async fn close(&mut self) -> io::Result<()> {
        self.session.borrow_mut().close();
        self.flush().await?;
        self.socket.close().await
    }

    /// Reads raw bytes from the socket, undecrypted: for dropping what a client still sends
    /// to a closing connection.
    pub(crate) async fn discard_input(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        self.socket.read(scratch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_chain_past_its_limit_is_refused_with_its_size() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("trove-tls-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_path = dir.join("node.key");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let write_chain = |name: &str, copies: usize| {
            let path = dir.join(name);
            std::fs::write(&path, cert.pem().repeat(copies)).unwrap();
            path
        };
        let one = write_chain("one.pem", 1);
        assert!(server_config(&one, &key_path, None).is_ok());
        let copies = TLS_CERT_CHAIN_BYTES_MAX / cert.der().len() + 1;
        let long = write_chain("long.pem", copies);
        let error = server_config(&long, &key_path, None).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = copies * cert.der().len();
        assert!(
            error.contains(&format!("the certificate chain is {bytes} bytes"))
                && error.contains(&TLS_CERT_CHAIN_BYTES_MAX.to_string()),
            "{error}"
        );
    }
}
