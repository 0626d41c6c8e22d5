//! The node's side of TLS: its configurations from `--tls-cert`, `--tls-key` and
//! `--tls-client-ca` (the listener's, and its links' to other nodes), and [`TlsStream`], the
//! transport of a TLS connection on a shard: a client's connection or an inbound link (the
//! node is the TLS server), or an outgoing link (the node is the TLS client, presenting its
//! own certificate as a client certificate, so links are mutually authenticated).
//!
//! A `TlsStream` is a glommio socket plus a `crate::tls::TlsSession` shared by the
//! connection's reader and writer tasks (an `Rc<RefCell>` on the shard's executor, never
//! borrowed across an await), each task with its own ciphertext buffers. Plaintext is copied
//! from the session into the reader's 16-byte-aligned receive buffer exactly where the
//! socket's bytes go without TLS, so frames are cut out of it the same way.
//!
//! No session resumption: a node keeps no ticket keys or session cache, and its links keep no
//! tickets, so nothing grows with the number of clients or peers that ever connected.
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
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, ServerConfig};

use crate::constants::{
    CONNECTION_LINGER_MS_MAX, TLS_CERT_CHAIN_BYTES_MAX, TLS_CIPHERTEXT_READ_BYTES_MAX,
};
use crate::core::ids::NodeId;
use crate::net::transport::dup_stream;
use crate::tls::{
    Plaintext, TlsError, TlsSession, crypto_provider, read_certificates, read_private_key,
    read_roots,
};

/// The node's TLS configuration: its certificate chain and key, and, with `client_ca`, the
/// CA whose certificates clients (and other nodes' links) must present.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = node_chain(cert)?;
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
        .map_err(|error| mismatched_key(cert, key, &error))?;
    // No resumption: no ticket keys, no session cache that grows with the clients seen.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The node's certificate chain from `--tls-cert`, within the size a handshake sends.
fn node_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = read_certificates("--tls-cert", cert, "the node's certificate chain")?;
    let chain_bytes: usize = chain.iter().map(|certificate| certificate.len()).sum();
    if chain_bytes > TLS_CERT_CHAIN_BYTES_MAX {
        // The chain goes out whole in every handshake: the memory sum counts it at this bound.
        return Err(format!(
            "--tls-cert {}: the certificate chain is {chain_bytes} bytes (DER), more than the {TLS_CERT_CHAIN_BYTES_MAX} a node sends in a handshake; give the node's certificate and its intermediates only",
            cert.display()
        ));
    }
    Ok(chain)
}

fn mismatched_key(cert: &Path, key: &Path, error: &rustls::Error) -> String {
    format!(
        "--tls-key {} does not go with the certificate in --tls-cert {} ({error}); give the key the certificate was made for",
        key.display(),
        cert.display()
    )
}

/// The TLS configuration of a cluster node's outgoing links: a peer's certificate must be
/// signed by a CA in `--tls-client-ca` (the CA that signs the cluster's node certificates,
/// whose client certificates the peer's listener requires in turn), and this node presents
/// its own `--tls-cert` as its client certificate.
///
/// The certificate is checked here as its peers will check it, against the same CA file, so
/// that one that cannot serve as a client certificate (another CA's, or one whose extended
/// key usage allows server authentication only) stops the node at start, not every link.
pub fn link_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let chain = node_chain(cert)?;
    let private_key = read_private_key("--tls-key", key)?;
    let roots = read_roots("--tls-client-ca", ca)?;
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| {
            format!(
                "--tls-client-ca {}: cannot check certificates with it ({error})",
                ca.display()
            )
        })?;
    let (end_entity, intermediates) = chain.split_first().expect("a chain is never empty");
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map_err(|error| {
            format!(
                "--tls-cert {} cannot prove this node to its peers on links: {}; a cluster node's certificate must be signed by the CA in --tls-client-ca {} and allow client authentication (extendedKeyUsage clientAuth, besides serverAuth)",
                cert.display(),
                describe_certificate_error(&error),
                ca.display()
            )
        })?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| format!("the TLS provider cannot do TLS 1.3: {error}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private_key)
        .map_err(|error| mismatched_key(cert, key, &error))?;
    // No resumption: links are opened rarely, and a ticket cache would grow with the peers.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name a link checks its peer's certificate against: the host the peer advertises in
/// the placement (an IP address or a DNS name). It is the name clients connect to as well,
/// so a node certificate that serves clients (who check the address they dial) serves links
/// with no extra name; a fixed cluster-wide name would let any node's certificate stand in
/// for any other's address, and would need a flag of its own.
pub fn link_server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|_| {
        format!("{host:?} is not an IP address or DNS name a certificate can be issued for")
    })
}

// ---- what a failed handshake means --------------------------------------------------------

/// The rustls error inside an I/O error from a [`TlsStream`], if TLS is what failed.
pub(crate) fn tls_error_of(error: &io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
        .map(|TlsError(error)| error)
}

fn describe_certificate_error(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "it is not signed by the CA".into()
        }
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "it has expired".into(),
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "it is not valid yet".into(),
        E::InvalidCertificate(other) => format!("it is not usable ({other:?})"),
        other => other.to_string(),
    }
}

/// Why the node refused a connection in its TLS handshake, for the line it prints.
pub(crate) fn describe_refusal(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "its certificate is not signed by a CA in this node's --tls-client-ca (a node of another cluster, or a client of another CA?)".into()
        }
        E::InvalidCertificate(_) => format!(
            "its certificate was refused: {}",
            describe_certificate_error(error)
        ),
        E::NoCertificatesPresented => {
            "it presented no certificate, and this node's --tls-client-ca requires one".into()
        }
        E::InvalidMessage(_) => {
            "it does not speak TLS (a client without --tls-ca, or a node without --tls-cert?)"
                .into()
        }
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        ) => "it does not trust this node's certificate (is this node's --tls-cert signed by the CA it trusts?)".into(),
        other => format!("TLS failed: {other}"),
    }
}

/// Why an outgoing link to node `peer` at `host` failed in TLS, for the line the node prints.
pub(crate) fn describe_link_failure(peer: NodeId, host: &str, error: &rustls::Error) -> String {
    use rustls::Error as E;
    let peer = peer.0;
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!(
                "node {peer}'s certificate is not signed by a CA in this node's --tls-client-ca; every node of the cluster needs a certificate from the cluster's CA"
            )
        }
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "node {peer}'s certificate is not valid for {host}, the host it advertises; issue it for that address or name"
        ),
        E::InvalidCertificate(_) => format!(
            "node {peer}'s certificate was refused: {}",
            describe_certificate_error(error)
        ),
        E::InvalidMessage(_) => format!(
            "node {peer} does not speak TLS (it answered in plaintext); give every node of the cluster --tls-cert, --tls-key and --tls-client-ca"
        ),
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate,
        ) => format!(
            "node {peer} refused this node's certificate: it is not signed by the CA of node {peer}'s --tls-client-ca"
        ),
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            format!("node {peer} requires a client certificate this node did not send")
        }
        other => format!("TLS with node {peer} failed: {other}"),
    }
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
        Ok(TlsStream::over(socket, session))
    }

    /// The client's side of a connected socket (an outgoing link) to the node that must
    /// prove `name`, before its [`Self::handshake`].
    pub(crate) fn client(
        socket: TcpStream,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let session = TlsSession::client(config.clone(), name)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(TlsStream::over(socket, session))
    }

    fn over(socket: TcpStream, session: TlsSession) -> TlsStream {
        TlsStream {
            socket,
            session: Rc::new(RefCell::new(session)),
            ciphertext_in: Vec::new(),
            received: 0,
            read: 0,
            ciphertext_out: Vec::new(),
        }
    }

    /// Runs the handshake to its end, on either side. On failure, [`Self::refuse`] tells the
    /// peer why (the session's alert). The caller bounds the time it may take. A client's
    /// handshake ends before the server has checked the client's certificate (TLS 1.3): a
    /// refusal of it arrives as an error on the first read.
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
    use std::path::PathBuf;

    /// A CA's certificate and key.
    fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    /// A node certificate for 127.0.0.1 signed by `ca`, for servers and clients, as files
    /// `NAME.pem` and `NAME.key` in `dir`.
    fn node_files(
        dir: &Path,
        name: &str,
        (ca, ca_key): &(rcgen::Certificate, rcgen::KeyPair),
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, ca, ca_key).unwrap();
        let paths = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        paths
    }

    /// Moves records between a link (client) and a listener (server) until neither has any
    /// to send; the first TLS error of each side.
    fn pump(
        link: &mut TlsSession,
        listener: &mut TlsSession,
    ) -> (Option<rustls::Error>, Option<rustls::Error>) {
        let (mut link_error, mut listener_error) = (None, None);
        for _ in 0..8 {
            let mut wire = Vec::new();
            link.take_output(&mut wire);
            if listener_error.is_none() && !wire.is_empty() {
                listener_error = listener.receive(&wire).err().map(|TlsError(error)| error);
            }
            let mut wire = Vec::new();
            listener.take_output(&mut wire);
            if link_error.is_none() && !wire.is_empty() {
                link_error = link.receive(&wire).err().map(|TlsError(error)| error);
            }
        }
        (link_error, listener_error)
    }

    #[test]
    fn links_of_one_ca_authenticate_each_other_and_another_cas_node_is_refused_saying_why() {
        let dir = std::env::temp_dir().join(format!("trove-link-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cluster, stranger) = (ca("cluster CA"), ca("another CA"));
        let (ca_path, both_path) = (dir.join("ca.pem"), dir.join("both.pem"));
        std::fs::write(&ca_path, cluster.0.pem()).unwrap();
        std::fs::write(&both_path, cluster.0.pem() + &stranger.0.pem()).unwrap();
        let (node, node_key) = node_files(&dir, "node", &cluster);
        let (outsider, outsider_key) = node_files(&dir, "outsider", &stranger);
        let listener = server_config(&node, &node_key, Some(&ca_path)).unwrap();
        let name = link_server_name("127.0.0.1").unwrap();

        // A node of the same CA: both certificates are checked, and data flows.
        let member = link_config(&node, &node_key, &ca_path).unwrap();
        let mut link = TlsSession::client(member, name.clone()).unwrap();
        let mut server = TlsSession::server(listener.clone()).unwrap();
        link.write(b"link hello");
        assert!(matches!(pump(&mut link, &mut server), (None, None)));
        let mut plaintext = [0u8; 32];
        assert_eq!(server.read(&mut plaintext), Plaintext::Data(10));
        assert_eq!(&plaintext[..10], b"link hello");
        // What crosses the wire after the handshake is ciphertext.
        let secret = b"claim code 4821 for hunt 77";
        assert_eq!(link.write(secret), secret.len());
        let mut wire = Vec::new();
        link.take_output(&mut wire);
        assert!(!wire.windows(secret.len()).any(|window| window == secret));
        assert_eq!(server.receive(&wire).unwrap(), wire.len());
        assert_eq!(server.read(&mut plaintext), Plaintext::Data(secret.len()));
        assert_eq!(&plaintext[..secret.len()], secret);

        // A node of another CA (which trusts both, so it gets as far as presenting its own
        // certificate): the listener refuses it, and each side's line says why.
        let outsider_config = link_config(&outsider, &outsider_key, &both_path).unwrap();
        let mut link = TlsSession::client(outsider_config, name).unwrap();
        let mut server = TlsSession::server(listener).unwrap();
        let (link_error, listener_error) = pump(&mut link, &mut server);
        let _ = std::fs::remove_dir_all(&dir);
        let refused = describe_refusal(&listener_error.expect("the listener refuses"));
        assert!(
            refused
                .contains("its certificate is not signed by a CA in this node's --tls-client-ca"),
            "{refused}"
        );
        let told = describe_link_failure(NodeId(7), "127.0.0.1", &link_error.expect("told"));
        assert!(
            told.contains("node 7 refused this node's certificate"),
            "{told}"
        );
    }

    #[test]
    fn a_node_certificate_for_servers_only_cannot_be_a_links_client_certificate() {
        let dir = std::env::temp_dir().join(format!("trove-link-eku-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = ca("cluster CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, cluster.0.pem()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &cluster.0, &cluster.1).unwrap();
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let error = link_config(&cert_path, &key_path, &ca_path).unwrap_err();
        // The listener still takes it: only links need client authentication.
        assert!(server_config(&cert_path, &key_path, Some(&ca_path)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            error.contains("cannot prove this node to its peers") && error.contains("clientAuth"),
            "{error}"
        );
    }

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
