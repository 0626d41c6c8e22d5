//! The client's side of TLS: [`TlsClient`] (the CA to trust, the name to check, and the
//! client's own certificate when the node requires one) and [`TlsStream`], a std socket with
//! a `crate::tls::TlsSession` driven over it through trove's own buffers.
//!
//! A `TlsStream` works on blocking sockets (the client's sender and reader threads) and on
//! non-blocking ones (the bench's generator threads, which poll). [`TlsStream::try_clone`]
//! gives a second stream over the same socket and session, for a reader thread: the session
//! sits behind a mutex held only while it is driven, never across a socket call, so a sender
//! blocked on a full socket never stops the reader that would drain the node's replies.
//! Only one of the clones may write (the sender); what the reader's input makes the session
//! queue goes out with the sender's next write.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig};

use super::ClientError;
use crate::constants::{FRAME_MAGIC, TLS_CIPHERTEXT_READ_BYTES_MAX};
use crate::tls::{
    Plaintext, TlsError, TlsSession, crypto_provider, read_certificates, read_private_key,
    read_roots,
};

/// The files a client's TLS is configured from (`--tls-ca`, `--tls-server-name`,
/// `--tls-cert`, `--tls-key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsClientFiles {
    /// The CA certificates (PEM) the node's certificate must be signed by.
    pub ca: PathBuf,
    /// The name the node's certificate must be valid for [default: the address's IP].
    pub server_name: Option<String>,
    /// The client's own certificate chain and key (PEM), for a node that requires them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How a client connects to a TLS node. Shared by all of a client's connections.
#[derive(Clone, Debug)]
pub struct TlsClient {
    files: TlsClientFiles,
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

/// Compared by the files it was made from: for comparing configurations.
impl PartialEq for TlsClient {
    fn eq(&self, other: &TlsClient) -> bool {
        self.files == other.files
    }
}

impl TlsClient {
    /// Reads and checks the files; the message names the flag of the one that is wrong.
    pub fn from_files(files: TlsClientFiles) -> Result<TlsClient, String> {
        let roots = read_roots("--tls-ca", &files.ca)?;
        let builder = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| format!("the TLS provider cannot do TLS 1.3: {error}"))?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates("--tls-cert", cert, "this client's certificate")?;
                let private_key = read_private_key("--tls-key", key)?;
                builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|error| mismatched_key(cert, key, &error))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--tls-cert and --tls-key go together: give both, or neither".into()),
        };
        let server_name = match &files.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                format!(
                    "--tls-server-name {name:?} is not a DNS name or IP address; give the name the node's certificate was issued for"
                )
            })?),
        };
        Ok(TlsClient {
            files,
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name the node at `addr` must prove: `--tls-server-name`, or the address's IP.
    fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    fn name_text(&self, addr: SocketAddr) -> String {
        match &self.files.server_name {
            Some(name) => name.clone(),
            None => addr.ip().to_string(),
        }
    }
}

fn mismatched_key(cert: &Path, key: &Path, error: &rustls::Error) -> String {
    format!(
        "--tls-key {} does not go with the certificate in --tls-cert {} ({error}); give the key the certificate was made for",
        key.display(),
        cert.display()
    )
}

/// A TLS failure, in words that say what to do about it.
fn explain(error: &rustls::Error, tls: &TlsClient, addr: SocketAddr) -> String {
    use rustls::Error as E;
    match error {
        // A bad signature: a CA of the same name, but not the one that signed it.
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!(
                "the node at {addr} presented a certificate that no CA in --tls-ca {} signed; give the CA that issued the node's certificate",
                tls.files.ca.display()
            )
        }
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the node's certificate at {addr} is not valid for the name {}; give the name it was issued for with --tls-server-name",
            tls.name_text(addr)
        ),
        E::InvalidCertificate(other) => {
            format!("the node at {addr} presented an unusable certificate: {other:?}")
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the node at {addr} requires a client certificate: give --tls-cert and --tls-key, signed by the CA of its --tls-client-ca"
        ),
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        ) => format!(
            "the node at {addr} refused this client's certificate: it is not signed by the CA of the node's --tls-client-ca"
        ),
        other => format!("TLS with the node at {addr} failed: {other}"),
    }
}

/// The session, even if another thread panicked holding it: the connection is then used as
/// it is, and one left broken fails with a TLS error of its own.
fn lock(session: &Mutex<TlsSession>) -> MutexGuard<'_, TlsSession> {
    session.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A TLS connection over a std socket. See the module documentation.
#[derive(Debug)]
pub struct TlsStream {
    socket: TcpStream,
    session: Arc<Mutex<TlsSession>>,
    tls: Arc<TlsClient>,
    addr: SocketAddr,
    /// Ciphertext read from the socket; `received..read` not yet taken by the session.
    ciphertext_in: Vec<u8>,
    received: usize,
    read: usize,
    /// Records taken from the session; `sent..` not yet written to the socket.
    ciphertext_out: Vec<u8>,
    sent: usize,
}

impl TlsStream {
    /// Runs the handshake with the node at `addr` over the connected, blocking `socket`,
    /// giving up when the node sends nothing for `timeout`. With a client certificate, the
    /// node may still refuse it after this returns (TLS 1.3 checks it last): that shows as
    /// an error on the first read.
    pub fn connect(
        socket: TcpStream,
        tls: Arc<TlsClient>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TlsStream, ClientError> {
        let session = TlsSession::client(tls.config.clone(), tls.name_for(addr))
            .map_err(|TlsError(error)| ClientError::Tls(explain(&error, &tls, addr)))?;
        let mut stream = TlsStream {
            socket,
            session: Arc::new(Mutex::new(session)),
            tls,
            addr,
            ciphertext_in: vec![0; TLS_CIPHERTEXT_READ_BYTES_MAX],
            received: 0,
            read: 0,
            ciphertext_out: Vec::new(),
            sent: 0,
        };
        let set_timeouts = |socket: &TcpStream, timeout| {
            socket
                .set_read_timeout(timeout)
                .and_then(|()| socket.set_write_timeout(timeout))
                .map_err(|error| ClientError::Io {
                    what: "cannot set the socket's timeouts".into(),
                    error,
                })
        };
        set_timeouts(&stream.socket, Some(timeout))?;
        stream.handshake(timeout)?;
        set_timeouts(&stream.socket, None)?;
        Ok(stream)
    }

    fn handshake(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let addr = self.addr;
        let io_failed = |error: io::Error| match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Tls(format!(
                "the node at {addr} did not answer the TLS handshake within {} ms (is it started with --tls-cert? is it overloaded?)",
                timeout.as_millis()
            )),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => ClientError::Tls(format!(
                "the node at {addr} closed the connection during the TLS handshake (is it full? does it speak TLS?)"
            )),
            _ => ClientError::Io {
                what: format!("TLS handshake with {addr}"),
                error,
            },
        };
        loop {
            self.flush().map_err(io_failed)?;
            if !self.lock().is_handshaking() {
                return Ok(());
            }
            if self.received == self.read {
                match self.fill() {
                    Ok(0) => return Err(io_failed(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(io_failed(error)),
                }
            }
            let pending = &self.ciphertext_in[self.received..self.read];
            let plaintext_node =
                self.received == 0 && pending.starts_with(&FRAME_MAGIC[..pending.len().min(4)]);
            let received = self.lock().receive(pending);
            match received {
                Ok(taken) => self.received += taken,
                Err(_) if plaintext_node => {
                    return Err(ClientError::Tls(format!(
                        "the node at {addr} answered in plain trove frames, without TLS: it was not started with --tls-cert; connect without --tls-ca, or start the node with TLS"
                    )));
                }
                Err(TlsError(error)) => {
                    // Tell the node why (the alert the session queued), then give up.
                    let _ = self.flush();
                    return Err(ClientError::Tls(explain(&error, &self.tls, addr)));
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, TlsSession> {
        lock(&self.session)
    }

    /// A second stream over the same socket and session, for a reader thread: the clone
    /// reads from here on (it takes over any ciphertext read and not yet decrypted), `self`
    /// only writes. See the module documentation.
    pub fn try_clone(&self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            socket: self.socket.try_clone()?,
            session: self.session.clone(),
            tls: self.tls.clone(),
            addr: self.addr,
            ciphertext_in: self.ciphertext_in.clone(),
            received: self.received,
            read: self.read,
            ciphertext_out: Vec::new(),
            sent: 0,
        })
    }

    /// The socket under the session (for timeouts, polling and shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Ciphertext taken from the session and not yet written to the socket (a non-blocking
    /// socket was full): the caller should wait for the socket to be writable and flush.
    pub fn has_unsent(&self) -> bool {
        self.sent < self.ciphertext_out.len()
    }

    /// Input that a read would return without touching the socket.
    pub fn has_buffered_input(&self) -> bool {
        self.received < self.read || self.lock().has_plaintext()
    }

    /// Sends a `close_notify` and closes the sending side of the socket; replies still
    /// arrive.
    pub fn close_write(&mut self) -> io::Result<()> {
        self.lock().close();
        self.flush()?;
        self.socket.shutdown(std::net::Shutdown::Write)
    }

    /// One read from the socket into the ciphertext buffer; at the end of the stream the
    /// session is told.
    fn fill(&mut self) -> io::Result<usize> {
        let len = self.socket.read(&mut self.ciphertext_in)?;
        (self.received, self.read) = (0, len);
        if len == 0 {
            self.lock().receive_eof();
        }
        Ok(len)
    }

    /// Writes the ciphertext already taken from the session.
    fn send_taken(&mut self) -> io::Result<()> {
        while self.has_unsent() {
            match self.socket.write(&self.ciphertext_out[self.sent..])? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                len => self.sent += len,
            }
        }
        self.ciphertext_out.clear();
        self.sent = 0;
        Ok(())
    }

    fn tls_failed(&self, error: &TlsError) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            explain(&error.0, &self.tls, self.addr),
        )
    }
}

impl Read for TlsStream {
    /// Decrypted bytes from the node; `Ok(0)` once it has closed. `WouldBlock` on a
    /// non-blocking socket with nothing to read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let plaintext = self.lock().read(buf);
            match plaintext {
                Plaintext::Data(len) => return Ok(len),
                Plaintext::Closed => return Ok(0),
                Plaintext::NeedMore => {}
            }
            if self.received == self.read {
                self.fill()?;
                continue;
            }
            let received = self
                .lock()
                .receive(&self.ciphertext_in[self.received..self.read]);
            match received {
                Ok(0) => return Err(io::Error::other("the TLS session took no input")),
                Ok(taken) => self.received += taken,
                Err(error) => return Err(self.tls_failed(&error)),
            }
        }
    }
}

impl Write for TlsStream {
    /// Encrypts what the session's send buffer takes of `bytes` and writes it. On a
    /// non-blocking socket, records the socket cannot take yet wait for the next write or
    /// [`Write::flush`] (see [`TlsStream::has_unsent`]).
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.send_taken()?;
        let taken = {
            let mut session = lock(&self.session);
            let taken = session.write(bytes);
            session.take_output(&mut self.ciphertext_out);
            taken
        };
        match self.send_taken() {
            Err(error) if error.kind() != io::ErrorKind::WouldBlock => Err(error),
            _ => Ok(taken),
        }
    }

    /// Writes everything the session has queued.
    fn flush(&mut self) -> io::Result<()> {
        self.send_taken()?;
        lock(&self.session).take_output(&mut self.ciphertext_out);
        self.send_taken()
    }
}
