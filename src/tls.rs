//! TLS pieces the node and the client share: [`TlsSession`], one side of a TLS connection
//! driven through rustls' sans-IO API, and the reading of the PEM files a node or client is
//! configured with.
//!
//! [`TlsSession`] does no I/O and reads no clock: ciphertext in ([`TlsSession::receive`]),
//! plaintext out ([`TlsSession::read`]), plaintext in ([`TlsSession::write`]), ciphertext out
//! ([`TlsSession::take_output`]). Its callers own the buffers and the sockets: `net::tls` on a
//! shard's executor, `client::tls` on plain threads. Both sides of a connection can so be
//! driven over in-memory buffers (see the tests). The files (`--tls-cert`, `--tls-key`,
//! `--tls-ca`, `--tls-client-ca`) are read and checked at start, so that a missing,
//! unreadable or mismatched file is one sentence before anything connects or listens.
//!
//! TLS 1.3 only, with rustls' `ring` provider (no cmake, no aws-lc build).

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::constants::{TLS_PEM_FILE_BYTES_MAX, TLS_SEND_BUFFER_BYTES_MAX};

// ---- the sans-IO session ------------------------------------------------------------------

/// A TLS protocol failure: a bad record, a refused certificate, an alert from the peer. The
/// session is unusable after one; an alert for the peer may be queued in its output.
#[derive(Debug)]
pub struct TlsError(pub rustls::Error);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS failed: {}", self.0)
    }
}

impl std::error::Error for TlsError {}

/// What [`TlsSession::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plaintext {
    /// This many bytes were copied out.
    Data(usize),
    /// Nothing yet: more ciphertext must be received first.
    NeedMore,
    /// The peer closed (with a `close_notify`, or its socket ended) and everything it sent
    /// has been read.
    Closed,
}

/// One side of a TLS connection, without I/O. See the module documentation.
pub struct TlsSession {
    connection: rustls::Connection,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .finish()
    }
}

impl TlsSession {
    /// The node's side of a new connection.
    pub fn server(config: Arc<ServerConfig>) -> Result<TlsSession, TlsError> {
        let connection = rustls::ServerConnection::new(config).map_err(TlsError)?;
        Ok(TlsSession::with(connection.into()))
    }

    /// A client's side of a new connection to the node named `name`.
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsSession, TlsError> {
        let connection = rustls::ClientConnection::new(config, name).map_err(TlsError)?;
        Ok(TlsSession::with(connection.into()))
    }

    fn with(mut connection: rustls::Connection) -> TlsSession {
        connection.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES_MAX));
        TlsSession { connection }
    }

    /// Still negotiating: application data cannot flow yet.
    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// Takes ciphertext from the peer and processes every whole record in it; returns how
    /// much it took. It takes less than all of it only while decrypted plaintext waits to be
    /// read: read that first, then offer the rest again. After the peer's `close_notify`,
    /// whatever follows is taken and dropped.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<usize, TlsError> {
        let mut rest = ciphertext;
        while !rest.is_empty() {
            match self.connection.read_tls(&mut rest) {
                // The peer said close_notify: nothing after it is read.
                Ok(0) => return Ok(ciphertext.len()),
                Ok(_) => {}
                // The plaintext buffer is full (rustls' own limit): read it out first.
                Err(_) => break,
            }
            self.connection.process_new_packets().map_err(TlsError)?;
        }
        Ok(ciphertext.len() - rest.len())
    }

    /// The peer's socket ended (TCP EOF): once the plaintext already received is read,
    /// [`Self::read`] says `Closed`.
    pub fn receive_eof(&mut self) {
        // Reading from an empty slice is how rustls learns of the end of the stream.
        let _ = self.connection.read_tls(&mut &[][..]);
    }

    /// Copies decrypted plaintext into `buf`.
    ///
    /// A peer that ends the TCP stream without a `close_notify` reads as `Closed` too: trove's
    /// frames carry their own lengths, so a stream cut short mid-frame is still caught by the
    /// frame decoder, and one cut between frames loses no more than a reset connection would.
    pub fn read(&mut self, buf: &mut [u8]) -> Plaintext {
        match self.connection.reader().read(buf) {
            Ok(0) if !buf.is_empty() => Plaintext::Closed,
            Ok(len) => Plaintext::Data(len),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Plaintext::NeedMore,
            Err(_) => Plaintext::Closed,
        }
    }

    /// Whether decrypted plaintext waits to be read.
    pub fn has_plaintext(&mut self) -> bool {
        self.connection
            .reader()
            .fill_buf()
            .is_ok_and(|chunk| !chunk.is_empty())
    }

    /// Encrypts as much of `plaintext` as the send buffer holds (`TLS_SEND_BUFFER_BYTES_MAX`
    /// of records waiting for [`Self::take_output`]); returns how much it took. During the
    /// handshake the plaintext waits, unencrypted, in the same bounded buffer.
    pub fn write(&mut self, plaintext: &[u8]) -> usize {
        self.connection.writer().write(plaintext).unwrap_or(0)
    }

    /// Appends every record the session wants sent (handshake messages, encrypted data,
    /// alerts) to `out`; returns how many bytes.
    pub fn take_output(&mut self, out: &mut Vec<u8>) -> usize {
        let mut taken = 0;
        while self.connection.wants_write() {
            // Writing to a Vec cannot fail.
            match self.connection.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(len) => taken += len,
            }
        }
        taken
    }

    /// Queues a `close_notify`: this side sends nothing more.
    pub fn close(&mut self) {
        self.connection.send_close_notify();
    }
}

// ---- configuration files ------------------------------------------------------------------

/// The crypto provider every TLS configuration of trove uses: rustls' `ring`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file's bytes, with the flag it was given by in any error.
fn read_pem(flag: &str, path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let cannot_read = |error: &dyn fmt::Display| {
        format!(
            "{flag} {}: cannot read it ({error}); give the PEM file of {what}",
            path.display()
        )
    };
    let file = std::fs::File::open(path).map_err(|error| cannot_read(&error))?;
    let mut bytes = Vec::new();
    file.take(TLS_PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| cannot_read(&error))?;
    if bytes.len() as u64 > TLS_PEM_FILE_BYTES_MAX {
        return Err(format!(
            "{flag} {}: larger than {} KiB, too large for a PEM file of {what}; is it the right file?",
            path.display(),
            TLS_PEM_FILE_BYTES_MAX / 1024
        ));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order (a chain: the end-entity certificate first).
pub fn read_certificates(
    flag: &str,
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(flag, path, what)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            format!(
                "{flag} {}: not valid PEM ({error}); give the PEM file of {what}",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "{flag} {}: holds no certificate (no \"-----BEGIN CERTIFICATE-----\" section); give the PEM file of {what}",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let what = "the certificate's private key";
    let bytes = read_pem(flag, path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{flag} {}: holds no private key (no \"-----BEGIN PRIVATE KEY-----\" section); give the PEM file of {what}",
            path.display()
        ),
        error => format!(
            "{flag} {}: not valid PEM ({error}); give the PEM file of {what}",
            path.display()
        ),
    })
}

/// A store of the CA certificates in a PEM file, to check peers' certificates against.
pub fn read_roots(flag: &str, path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for (index, certificate) in read_certificates(flag, path, "the CA certificates to trust")?
        .into_iter()
        .enumerate()
    {
        roots.add(certificate).map_err(|error| {
            format!(
                "{flag} {}: certificate {} is not a usable CA certificate ({error})",
                path.display(),
                index + 1
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// The node's TLS configuration: its certificate chain and key, and, with `client_ca`, the
/// CA whose certificates clients must present.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::{Decoded, FrameBuilder, FrameKind, ReceiveBuffer, decode_frame};
    use crate::core::ids::{HuntId, PlayerId};
    use crate::core::message::{Event, EventKind};

    /// A CA, and a node certificate for "localhost" and 127.0.0.1 signed by it, as PEM.
    struct Certs {
        ca: String,
        cert: String,
        key: String,
    }

    fn certs(ca_name: &str) -> Certs {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        Certs {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn pair(certs: &Certs) -> (TlsSession, TlsSession) {
        let chain = CertificateDer::pem_slice_iter(certs.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(certs.key.as_bytes()).unwrap();
        let server = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(certs.ca.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let client = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        (
            TlsSession::client(Arc::new(client), name).unwrap(),
            TlsSession::server(Arc::new(server)).unwrap(),
        )
    }

    /// Moves everything `from` wants sent into `to`, `chunk` bytes at a time, reading out
    /// `to`'s plaintext whenever it stops taking input. Returns the plaintext `to` produced.
    fn deliver(from: &mut TlsSession, to: &mut TlsSession, chunk: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        from.take_output(&mut wire);
        let mut plaintext = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let len = rest.len().min(chunk);
            let taken = to.receive(&rest[..len]).expect("valid records");
            rest = &rest[taken..];
            drain(to, &mut plaintext);
        }
        drain(to, &mut plaintext);
        plaintext
    }

    fn drain(session: &mut TlsSession, into: &mut Vec<u8>) {
        let mut buf = [0u8; 1000];
        while let Plaintext::Data(len) = session.read(&mut buf) {
            into.extend_from_slice(&buf[..len]);
        }
    }

    fn handshake(client: &mut TlsSession, server: &mut TlsSession) {
        for _ in 0..4 {
            deliver(client, server, usize::MAX);
            deliver(server, client, usize::MAX);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
    }

    fn event_frame(events: u64) -> Vec<u8> {
        let mut frames = FrameBuilder::new();
        frames.begin(FrameKind::Events);
        for seq in 0..events {
            let event = Event {
                hunt: HuntId(seq % 7),
                player: PlayerId(seq),
                client_session: 0,
                client_seq: seq,
                client_ts: seq,
                kind: EventKind::Join,
            };
            frames.push(&event).unwrap();
        }
        frames.finish(0);
        frames.bytes().to_vec()
    }

    #[test]
    fn a_client_and_a_node_agree_over_memory_and_exchange_data_both_ways() {
        let certs = certs("trove test CA");
        let (mut client, mut server) = pair(&certs);
        handshake(&mut client, &mut server);
        assert_eq!(client.write(b"ping"), 4);
        assert_eq!(deliver(&mut client, &mut server, usize::MAX), b"ping");
        assert_eq!(server.write(b"pong"), 4);
        assert_eq!(deliver(&mut server, &mut client, usize::MAX), b"pong");
    }

    #[test]
    fn plaintext_arrives_whole_when_ciphertext_comes_a_few_bytes_at_a_time() {
        let certs = certs("trove test CA");
        let (mut client, mut server) = pair(&certs);
        handshake(&mut client, &mut server);
        let message: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(client.write(&message), message.len());
        let mut wire = Vec::new();
        client.take_output(&mut wire);
        let mut received = Vec::new();
        for piece in wire.chunks(7) {
            assert_eq!(server.receive(piece).unwrap(), piece.len());
            // Nothing decrypts before a record is whole: no partial record leaks out.
            drain(&mut server, &mut received);
        }
        assert_eq!(received, message);
    }

    #[test]
    fn a_frame_split_across_records_decodes_from_the_aligned_receive_buffer() {
        let certs = certs("trove test CA");
        let (mut client, mut server) = pair(&certs);
        handshake(&mut client, &mut server);
        let frame = event_frame(40);
        let (first, second) = frame.split_at(frame.len() / 2 + 3);
        // Two writes: two records, each holding part of the frame.
        client.write(first);
        let mut wire = Vec::new();
        client.take_output(&mut wire);
        let first_record_len = wire.len();
        client.write(second);
        client.take_output(&mut wire);
        assert!(wire.len() > first_record_len, "a second record");

        let mut input = ReceiveBuffer::new();
        let mut frame_len = None;
        let mut offset = 0;
        let mut frames = 0;
        while offset < wire.len() || frames == 0 {
            let end = (offset + 300).min(wire.len());
            offset += server.receive(&wire[offset..end]).unwrap();
            while let Plaintext::Data(len) = server.read(input.spare(frame_len)) {
                input.filled(len);
            }
            match decode_frame(input.pending()).unwrap() {
                Decoded::NeedMore { frame_len: len } => frame_len = len,
                Decoded::Frame {
                    body, frame_len, ..
                } => {
                    assert_eq!(body, &frame[frame.len() - body.len()..]);
                    assert_eq!(
                        body.as_ptr() as usize % 16,
                        0,
                        "the body is 16-byte aligned"
                    );
                    input.consume(frame_len);
                    frames += 1;
                }
            }
            if offset == wire.len() && frames == 0 {
                panic!("the whole frame arrived but did not decode");
            }
        }
        assert_eq!(frames, 1);
        assert!(input.pending().is_empty());
    }

    #[test]
    fn a_large_write_is_taken_in_bounded_steps() {
        let certs = certs("trove test CA");
        let (mut client, mut server) = pair(&certs);
        handshake(&mut client, &mut server);
        let message = vec![7u8; 3 * TLS_SEND_BUFFER_BYTES_MAX];
        let taken = client.write(&message);
        assert!(
            taken > 0 && taken <= TLS_SEND_BUFFER_BYTES_MAX,
            "took {taken}"
        );
        assert_eq!(client.write(&message[taken..]), 0, "the buffer is full");
        let mut received = deliver(&mut client, &mut server, 4096);
        let mut sent = taken;
        while sent < message.len() {
            sent += client.write(&message[sent..]);
            received.extend(deliver(&mut client, &mut server, 4096));
        }
        assert_eq!(received, message);
    }

    #[test]
    fn a_close_notify_reads_as_closed_after_the_data_before_it() {
        let certs = certs("trove test CA");
        let (mut client, mut server) = pair(&certs);
        handshake(&mut client, &mut server);
        client.write(b"last words");
        client.close();
        assert_eq!(deliver(&mut client, &mut server, 5), b"last words");
        assert_eq!(server.read(&mut [0u8; 16]), Plaintext::Closed);
    }

    #[test]
    fn a_stream_that_ends_without_close_notify_reads_as_closed() {
        let certs = certs("trove test CA");
        let (mut client, mut server) = pair(&certs);
        handshake(&mut client, &mut server);
        assert_eq!(server.read(&mut [0u8; 16]), Plaintext::NeedMore);
        server.receive_eof();
        assert_eq!(server.read(&mut [0u8; 16]), Plaintext::Closed);
    }

    #[test]
    fn plaintext_trove_frames_fail_the_handshake_and_queue_an_alert() {
        let certs = certs("trove test CA");
        let (_, mut server) = pair(&certs);
        let error = server.receive(&event_frame(1)).unwrap_err();
        assert!(
            matches!(error.0, rustls::Error::InvalidMessage(_)),
            "{error}"
        );
        let mut alert = Vec::new();
        server.take_output(&mut alert);
        assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
    }

    #[test]
    fn a_client_refuses_a_node_whose_certificate_another_ca_signed() {
        let (mut client, _) = pair(&certs("trove test CA"));
        let (_, mut stranger) = pair(&certs("another CA"));
        deliver(&mut client, &mut stranger, usize::MAX);
        let mut wire = Vec::new();
        stranger.take_output(&mut wire);
        let error = client.receive(&wire).unwrap_err();
        assert!(
            matches!(
                error.0,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{error}"
        );
    }
}
