//! The blocking client's side of connection authentication: reads a secret file, and drives
//! `core::auth::ClientHandshake` over a freshly connected socket before any other frame.
//!
//! Runs on the connecting thread, over plain TCP or inside TLS. Reads are exact (a header, then the rest of the frame it
//! announces), so nothing after the handshake is consumed, and bounded by the timeout given.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::{ClientError, Connection, NodeStream};
use crate::constants::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::core::auth::{AuthError, AuthSecret, ClientHandshake, NONCE_BYTES, Step};
use crate::core::codec::FrameBuilder;

/// Reads a shared secret from a file (`--auth-secret-file`), for a node or a client.
pub fn read_secret_file(path: &Path) -> Result<AuthSecret, String> {
    let contents = std::fs::read(path).map_err(|error| {
        format!(
            "--auth-secret-file {}: cannot read it: {error}; give the path of a file holding the shared secret",
            path.display()
        )
    })?;
    AuthSecret::from_file_contents(&contents)
        .map_err(|error| format!("--auth-secret-file {}: {error}", path.display()))
}

fn auth_failed(error: AuthError) -> ClientError {
    ClientError::Auth(error)
}

fn io_failed(what: &str, timeout: Duration) -> impl FnOnce(io::Error) -> ClientError + '_ {
    move |error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Io {
            what: format!(
                "{what}: the node did not answer within {} ms (is it started with --auth-secret-file? is it overloaded?)",
                timeout.as_millis()
            ),
            // Not the OS's "Resource temporarily unavailable": what happened is a timeout.
            error: io::ErrorKind::TimedOut.into(),
        },
        io::ErrorKind::UnexpectedEof => ClientError::Io {
            what: format!("{what}: the node closed the connection mid-handshake"),
            error,
        },
        _ => ClientError::Io {
            what: what.to_owned(),
            error,
        },
    }
}

/// Proves to the node at the other end of `stream` that this client knows `secret`, and checks
/// that the node knows it too. The stream's read timeout is `timeout` during the handshake and
/// cleared after it.
pub fn authenticate(
    stream: &mut Connection,
    secret: &AuthSecret,
    timeout: Duration,
) -> Result<(), ClientError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut nonce).map_err(|error| ClientError::Io {
        what: "cannot draw a random nonce".into(),
        error: io::Error::other(error.to_string()),
    })?;
    let mut client = ClientHandshake::new(secret, nonce);
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_failed("cannot set a read timeout", timeout))?;
    let mut input: AlignedVec = AlignedVec::new();
    let mut want = FRAME_HEADER_BYTES;
    loop {
        let have = input.len();
        input.resize(want, 0);
        stream
            .read_exact(&mut input[have..want])
            .map_err(io_failed("authenticating with the node", timeout))?;
        let mut out = FrameBuilder::new();
        let step = client.handle_input(&input, &mut out).map_err(auth_failed)?;
        if !out.is_empty() {
            // `flush`: TLS sends what it holds; a plain socket holds nothing.
            let sent = stream.write_all(out.bytes()).and_then(|()| stream.flush());
            sent.map_err(io_failed(
                "cannot send the authentication response",
                timeout,
            ))?;
        }
        want = match step {
            Step::NeedMore { frame_len } => frame_len.unwrap_or(FRAME_HEADER_BYTES),
            Step::Continue { .. } => {
                input.clear();
                FRAME_HEADER_BYTES
            }
            Step::Done { .. } => break,
        };
        if want > FRAME_BYTES_MAX || want <= input.len() {
            return Err(auth_failed(AuthError::Truncated));
        }
    }
    stream
        .set_read_timeout(None)
        .map_err(io_failed("cannot clear the read timeout", timeout))
}
