//! Connection authentication: a shared-secret challenge-response, sans-IO.
//!
//! A node started with a secret (`trove node --auth-secret-file`) speaks first on every
//! connection it accepts, before any event or map request is read:
//!
//! ```text
//! node   → client  AuthChallenge { node_nonce }
//! client → node    AuthResponse  { client_nonce, proof = HMAC(secret, "client" | node_nonce | client_nonce) }
//! node   → client  AuthAccepted  { proof = HMAC(secret, "node" | node_nonce | client_nonce) }
//!                  (or an error frame, then the node closes)
//! ```
//!
//! The secret never crosses the wire, only HMAC-SHA-256 tags over two fresh 32-byte nonces,
//! so a recorded handshake is useless on another connection (the node's nonce differs) and a
//! node that does not know the secret cannot pass itself off as one (the client checks the
//! node's proof). Tags are compared in constant time (`hmac`'s `verify_slice`). Each side's
//! role is part of what it signs, so a proof cannot be reflected back to its sender.
//!
//! [`ServerHandshake`] and [`ClientHandshake`] are plain state machines: bytes received go in,
//! frames to send come out in a [`FrameBuilder`], and the caller owns the socket, the clock
//! and the random source (nonces are passed in). The node's shell lives in `net::auth`, the
//! blocking client's in `client::auth`. Links between nodes use the same handshake: the shard
//! that dials is the client (`net::auth::authenticate_link`), and the listening shard is the
//! node, as for any connection. Values here live on one thread: the shard's executor for a
//! node's connection or link, the connecting thread for a client's.

use std::fmt;

use hmac::{Hmac, Mac};
use rkyv::{Archive, Serialize};
use sha2::Sha256;

use crate::constants::{
    AUTH_RECORD_BYTES_MAX, AUTH_SECRET_BYTES_MAX, AUTH_SECRET_BYTES_MIN, FRAME_HEADER_BYTES,
};
use crate::core::codec::{
    Decoded, FrameBuilder, FrameError, FrameKind, Records, access_record, decode_frame,
    decode_header,
};
use crate::core::ids::NodeId;
use crate::core::message::ArchivedErrorMessage;

/// Error code of the error frame a node sends when a client fails authentication. Codes below
/// 100 are `FrameError` codes; 100 is the connection limit.
pub const ERROR_CODE_AUTH_FAILED: u16 = 101;

/// Bytes of each side's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of an HMAC-SHA-256 tag.
const PROOF_BYTES: usize = 32;

/// A handshake frame: a header and one small record.
pub const AUTH_FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + AUTH_RECORD_BYTES_MAX + 16;

/// What each side signs before the nonces: the protocol version and the signer's role.
const CLIENT_LABEL: &[u8] = b"trove-auth-v1 client";
const NODE_LABEL: &[u8] = b"trove-auth-v1 node";

/// The node's opening: its fresh nonce.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub node_nonce: [u8; NONCE_BYTES],
}

/// The client's answer: its own fresh nonce and its proof of the secret.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub client_nonce: [u8; NONCE_BYTES],
    pub proof: [u8; PROOF_BYTES],
}

/// The node's acceptance: its proof of the secret, so the client knows whom it talks to.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub proof: [u8; PROOF_BYTES],
}

/// A shared secret, as read from a secret file. Its bytes are never printed.
#[derive(Clone)]
pub struct AuthSecret(Vec<u8>);

impl fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthSecret({} bytes)", self.0.len())
    }
}

/// Equal secrets: for comparing configurations. Compares every byte whatever the first
/// difference, so the time taken tells nothing of where two secrets differ.
impl PartialEq for AuthSecret {
    fn eq(&self, other: &AuthSecret) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

impl AuthSecret {
    /// The secret held by a secret file's contents: everything but trailing whitespace (so a
    /// file written by `echo` works), from `AUTH_SECRET_BYTES_MIN` to `AUTH_SECRET_BYTES_MAX`
    /// bytes.
    pub fn from_file_contents(contents: &[u8]) -> Result<AuthSecret, SecretError> {
        let end = contents
            .iter()
            .rposition(|byte| !byte.is_ascii_whitespace())
            .map_or(0, |last| last + 1);
        let secret = &contents[..end];
        if secret.len() < AUTH_SECRET_BYTES_MIN {
            return Err(SecretError::TooShort { len: secret.len() });
        }
        if secret.len() > AUTH_SECRET_BYTES_MAX {
            return Err(SecretError::TooLong { len: secret.len() });
        }
        Ok(AuthSecret(secret.to_vec()))
    }

    fn proof(&self, label: &[u8], node_nonce: &[u8], client_nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts a key of any length");
        mac.update(label);
        mac.update(node_nonce);
        mac.update(client_nonce);
        mac
    }
}

/// What is wrong with a secret file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretError {
    TooShort { len: usize },
    TooLong { len: usize },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::TooShort { len } => write!(
                f,
                "the secret is {len} bytes long; it must be at least {AUTH_SECRET_BYTES_MIN} (make one with `head -c 32 /dev/urandom | base64`)"
            ),
            SecretError::TooLong { len } => write!(
                f,
                "the secret is {len} bytes long; it must be at most {AUTH_SECRET_BYTES_MAX}"
            ),
        }
    }
}

impl std::error::Error for SecretError {}

/// Why a handshake failed. The text is trove's own and safe to send to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The peer's proof does not match this side's secret.
    WrongSecret,
    /// The peer sent a frame other than the handshake's next one (a client that does not
    /// authenticate sends a map request or events first).
    UnexpectedFrame {
        expected: FrameKind,
        found: FrameKind,
    },
    /// The peer's bytes are not a valid frame, or the record is not the expected message.
    Malformed(FrameError),
    /// The connection ended before the handshake did.
    Truncated,
    /// The node answered with an error frame instead.
    Refused { code: u16, message: String },
    /// The handshake is over; nothing more is expected.
    Finished,
}

impl AuthError {
    /// The error-frame code a node sends for it.
    pub fn code(&self) -> u16 {
        match self {
            AuthError::Malformed(error) => error.code(),
            _ => ERROR_CODE_AUTH_FAILED,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::WrongSecret => write!(
                f,
                "authentication failed: the peer's proof does not match this side's secret; give both sides the same --auth-secret-file"
            ),
            AuthError::UnexpectedFrame { expected, found } => write!(
                f,
                "authentication failed: expected a {expected:?} frame, got {found:?}; this node requires authentication (give the client --auth-secret-file)"
            ),
            AuthError::Malformed(error) => write!(f, "authentication failed: {error}"),
            AuthError::Truncated => {
                write!(
                    f,
                    "authentication failed: the connection ended mid-handshake"
                )
            }
            AuthError::Refused { code, message } => {
                write!(
                    f,
                    "the node refused the connection (error {code}): {message}"
                )
            }
            AuthError::Finished => write!(f, "the handshake is already over"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Why an outgoing link between nodes could not authenticate with node `peer`, for the line
/// its node prints. A link sends a well-formed response, so a node that refuses it with
/// `ERROR_CODE_AUTH_FAILED` refused the proof: the two nodes hold different secrets.
pub fn describe_link_auth_failure(peer: NodeId, error: &AuthError) -> String {
    let peer = peer.0;
    match error {
        AuthError::Refused {
            code: ERROR_CODE_AUTH_FAILED,
            ..
        } => format!(
            "node {peer} refused this node's proof: the secret differs; give every node of the cluster the same --auth-secret-file"
        ),
        AuthError::WrongSecret => format!(
            "node {peer} could not prove this node's secret: the secret differs; give every node of the cluster the same --auth-secret-file"
        ),
        AuthError::UnexpectedFrame { found, .. } => format!(
            "node {peer} sent a {found:?} frame instead of an authentication challenge; does it run without --auth-secret-file? every node of the cluster needs the same secret"
        ),
        error => format!("authenticating the link with node {peer} failed: {error}"),
    }
}

/// What a handshake step did with the bytes it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No whole frame yet. `frame_len` is the whole frame's size once its header is in, so a
    /// caller can read exactly that much and nothing past the handshake.
    NeedMore { frame_len: Option<usize> },
    /// A frame was handled (its `consumed` bytes can go) and the handshake goes on; frames to
    /// send may have been added to the output.
    Continue { consumed: usize },
    /// The handshake succeeded; frames to send may have been added to the output. Bytes past
    /// `consumed` belong to the authenticated stream.
    Done { consumed: usize },
}

/// The one frame of `expected` kind at the front of `input`, with its single record. A frame
/// of another kind is refused as soon as its header is in; an error frame is the node's
/// refusal, which only a client may receive.
fn next_record(input: &[u8], expected: FrameKind) -> Result<Option<(&[u8], usize)>, AuthError> {
    let node_may_refuse = expected != FrameKind::AuthResponse;
    let Some(header) = decode_header(input).map_err(AuthError::Malformed)? else {
        return Ok(None);
    };
    if header.kind != expected && !(node_may_refuse && header.kind == FrameKind::Error) {
        return Err(AuthError::UnexpectedFrame {
            expected,
            found: header.kind,
        });
    }
    if header.kind == expected
        && FRAME_HEADER_BYTES + header.body_len as usize > AUTH_FRAME_BYTES_MAX
    {
        return Err(AuthError::Malformed(FrameError::BodyTooLarge {
            body_len: header.body_len,
        }));
    }
    let (body, frame_len) = match decode_frame(input).map_err(AuthError::Malformed)? {
        Decoded::NeedMore { .. } => return Ok(None),
        Decoded::Frame {
            body, frame_len, ..
        } => (body, frame_len),
    };
    if header.kind == FrameKind::Error {
        return Err(refusal(body));
    }
    let records = Records::parse(header.kind, body).map_err(AuthError::Malformed)?;
    let record = records
        .iter()
        .next()
        .ok_or(AuthError::Malformed(FrameError::BadTrailer))?;
    Ok(Some((record, frame_len)))
}

/// The error a node sent instead of the next handshake frame.
fn refusal(body: &[u8]) -> AuthError {
    let parsed = Records::parse(FrameKind::Error, body).and_then(|records| {
        let record = records.iter().next().ok_or(FrameError::BadTrailer)?;
        let message = access_record::<ArchivedErrorMessage>(0, record)?;
        Ok(AuthError::Refused {
            code: message.code.to_native(),
            message: message.message.to_string(),
        })
    });
    parsed.unwrap_or_else(AuthError::Malformed)
}

/// The length the caller should read up to: a whole header first, then the whole frame.
fn need_more(input: &[u8]) -> Step {
    let frame_len = decode_header(input)
        .ok()
        .flatten()
        .map(|header| FRAME_HEADER_BYTES + header.body_len as usize);
    Step::NeedMore { frame_len }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitResponse,
    Done,
}

/// The node's side of one connection's handshake.
pub struct ServerHandshake<'s> {
    secret: &'s AuthSecret,
    node_nonce: [u8; NONCE_BYTES],
    state: ServerState,
}

impl<'s> ServerHandshake<'s> {
    /// Starts a handshake with a fresh random `node_nonce` (never reuse one) and appends the
    /// challenge to `out`, to be sent at once.
    pub fn start(
        secret: &'s AuthSecret,
        node_nonce: [u8; NONCE_BYTES],
        out: &mut FrameBuilder,
    ) -> ServerHandshake<'s> {
        out.single(FrameKind::AuthChallenge, 0, Some(&Challenge { node_nonce }))
            .expect("a challenge fits its frame");
        ServerHandshake {
            secret,
            node_nonce,
            state: ServerState::AwaitResponse,
        }
    }

    /// Handles the bytes received so far (from the front). On success appends the node's
    /// proof to `out`; on error the caller sends `error` in an error frame and closes.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        out: &mut FrameBuilder,
    ) -> Result<Step, AuthError> {
        if self.state == ServerState::Done {
            return Err(AuthError::Finished);
        }
        let Some((record, consumed)) = next_record(input, FrameKind::AuthResponse)? else {
            return Ok(need_more(input));
        };
        let response =
            access_record::<ArchivedResponse>(0, record).map_err(AuthError::Malformed)?;
        self.secret
            .proof(CLIENT_LABEL, &self.node_nonce, &response.client_nonce)
            .verify_slice(&response.proof)
            .map_err(|_| AuthError::WrongSecret)?;
        let proof = self
            .secret
            .proof(NODE_LABEL, &self.node_nonce, &response.client_nonce)
            .finalize()
            .into_bytes()
            .into();
        out.single(FrameKind::AuthAccepted, 0, Some(&Accepted { proof }))
            .expect("an acceptance fits its frame");
        self.state = ServerState::Done;
        Ok(Step::Done { consumed })
    }

    /// Appends the error frame that tells the client why it was refused.
    pub fn refuse(error: &AuthError, out: &mut FrameBuilder) {
        out.error_message(0, error.code(), error.to_string());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    AwaitChallenge,
    AwaitAccepted { node_nonce: [u8; NONCE_BYTES] },
    Done,
}

/// The client's side of one connection's handshake.
pub struct ClientHandshake<'s> {
    secret: &'s AuthSecret,
    client_nonce: [u8; NONCE_BYTES],
    state: ClientState,
}

impl<'s> ClientHandshake<'s> {
    /// A handshake with a fresh random `client_nonce` (never reuse one). The node speaks
    /// first: feed what it sends to [`Self::handle_input`].
    pub fn new(secret: &'s AuthSecret, client_nonce: [u8; NONCE_BYTES]) -> ClientHandshake<'s> {
        ClientHandshake {
            secret,
            client_nonce,
            state: ClientState::AwaitChallenge,
        }
    }

    /// Handles the bytes received so far (from the front); appends the response to `out` when
    /// the challenge is in.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        out: &mut FrameBuilder,
    ) -> Result<Step, AuthError> {
        match self.state {
            ClientState::AwaitChallenge => {
                let Some((record, consumed)) = next_record(input, FrameKind::AuthChallenge)? else {
                    return Ok(need_more(input));
                };
                let challenge =
                    access_record::<ArchivedChallenge>(0, record).map_err(AuthError::Malformed)?;
                let node_nonce = challenge.node_nonce;
                let proof = self
                    .secret
                    .proof(CLIENT_LABEL, &node_nonce, &self.client_nonce)
                    .finalize()
                    .into_bytes()
                    .into();
                let response = Response {
                    client_nonce: self.client_nonce,
                    proof,
                };
                out.single(FrameKind::AuthResponse, 0, Some(&response))
                    .expect("a response fits its frame");
                self.state = ClientState::AwaitAccepted { node_nonce };
                Ok(Step::Continue { consumed })
            }
            ClientState::AwaitAccepted { node_nonce } => {
                let Some((record, consumed)) = next_record(input, FrameKind::AuthAccepted)? else {
                    return Ok(need_more(input));
                };
                let accepted =
                    access_record::<ArchivedAccepted>(0, record).map_err(AuthError::Malformed)?;
                self.secret
                    .proof(NODE_LABEL, &node_nonce, &self.client_nonce)
                    .verify_slice(&accepted.proof)
                    .map_err(|_| AuthError::WrongSecret)?;
                self.state = ClientState::Done;
                Ok(Step::Done { consumed })
            }
            ClientState::Done => Err(AuthError::Finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rkyv::util::AlignedVec;

    fn secret(text: &str) -> AuthSecret {
        AuthSecret::from_file_contents(text.as_bytes()).unwrap()
    }

    fn aligned(bytes: &[u8]) -> AlignedVec {
        let mut buf: AlignedVec = AlignedVec::new();
        buf.extend_from_slice(bytes);
        buf
    }

    /// Runs a whole handshake in memory; returns the node's and the client's outcome.
    fn handshake(
        node_secret: &AuthSecret,
        client_secret: &AuthSecret,
    ) -> (Result<Step, AuthError>, Option<Result<Step, AuthError>>) {
        let mut to_client = FrameBuilder::new();
        let mut node = ServerHandshake::start(node_secret, [1; NONCE_BYTES], &mut to_client);
        let mut client = ClientHandshake::new(client_secret, [2; NONCE_BYTES]);
        let mut to_node = FrameBuilder::new();
        let step = client
            .handle_input(to_client.bytes(), &mut to_node)
            .unwrap();
        assert_eq!(
            step,
            Step::Continue {
                consumed: to_client.len()
            }
        );
        let mut to_client = FrameBuilder::new();
        let node_outcome = node.handle_input(&aligned(to_node.bytes()), &mut to_client);
        let client_outcome = node_outcome
            .is_ok()
            .then(|| client.handle_input(&aligned(to_client.bytes()), &mut FrameBuilder::new()));
        (node_outcome, client_outcome)
    }

    #[test]
    fn the_right_secret_is_accepted_by_both_sides() {
        let shared = secret("correct horse battery staple");
        let (node, client) = handshake(&shared, &shared);
        assert!(matches!(node, Ok(Step::Done { .. })), "{node:?}");
        assert!(matches!(client, Some(Ok(Step::Done { .. }))), "{client:?}");
    }

    #[test]
    fn a_wrong_secret_is_refused_with_a_clear_error() {
        let (node, _) = handshake(
            &secret("correct horse battery staple"),
            &secret("incorrect horse battery staple"),
        );
        let error = node.unwrap_err();
        assert_eq!(error, AuthError::WrongSecret);
        assert_eq!(error.code(), ERROR_CODE_AUTH_FAILED);
        let text = error.to_string();
        assert!(text.contains("--auth-secret-file"), "{text}");
        // The node's error frame carries that text and no secret.
        let mut out = FrameBuilder::new();
        ServerHandshake::refuse(&error, &mut out);
        let wrong = secret("incorrect horse battery staple");
        let mut client = ClientHandshake::new(&wrong, [2; 32]);
        match client.handle_input(&aligned(out.bytes()), &mut FrameBuilder::new()) {
            Err(AuthError::Refused { code, message }) => {
                assert_eq!(code, ERROR_CODE_AUTH_FAILED);
                assert!(message.contains("does not match"), "{message}");
                assert!(!message.contains("horse"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_link_refused_for_its_proof_is_described_as_a_secret_that_differs() {
        let node_secret = secret("the cluster's secret, node 2");
        let link_secret = secret("another secret entirely, node 1");
        let (node, _) = handshake(&node_secret, &link_secret);
        let mut refusal = FrameBuilder::new();
        ServerHandshake::refuse(&node.unwrap_err(), &mut refusal);
        let mut link = ClientHandshake::new(&link_secret, [2; NONCE_BYTES]);
        let error = link
            .handle_input(&aligned(refusal.bytes()), &mut FrameBuilder::new())
            .unwrap_err();
        let text = describe_link_auth_failure(NodeId(2), &error);
        assert!(text.starts_with("node 2 refused"), "{text}");
        assert!(text.contains("the secret differs"), "{text}");
        // The other way round: the link's peer answered with a proof it could not make.
        let text = describe_link_auth_failure(NodeId(3), &AuthError::WrongSecret);
        assert!(
            text.contains("node 3") && text.contains("the secret differs"),
            "{text}"
        );
        // Another refusal is passed on as the peer said it, never blamed on the secret.
        let other = AuthError::Refused {
            code: 100,
            message: "too many connections".into(),
        };
        let text = describe_link_auth_failure(NodeId(2), &other);
        assert!(!text.contains("secret differs"), "{text}");
        assert!(text.contains("too many connections"), "{text}");
    }

    #[test]
    fn a_node_that_does_not_know_the_secret_is_refused_by_the_client() {
        let real = secret("correct horse battery staple");
        let impostor = secret("some other secret entirely");
        let mut to_client = FrameBuilder::new();
        let mut node = ServerHandshake::start(&impostor, [1; NONCE_BYTES], &mut to_client);
        let mut client = ClientHandshake::new(&real, [2; NONCE_BYTES]);
        let mut to_node = FrameBuilder::new();
        client
            .handle_input(to_client.bytes(), &mut to_node)
            .unwrap();
        // The impostor cannot verify the client, and cannot forge an acceptance either:
        assert_eq!(
            node.handle_input(&aligned(to_node.bytes()), &mut FrameBuilder::new()),
            Err(AuthError::WrongSecret)
        );
        let mut forged = FrameBuilder::new();
        forged
            .single(
                FrameKind::AuthAccepted,
                0,
                Some(&Accepted {
                    proof: [0; PROOF_BYTES],
                }),
            )
            .unwrap();
        assert_eq!(
            client.handle_input(&aligned(forged.bytes()), &mut FrameBuilder::new()),
            Err(AuthError::WrongSecret)
        );
    }

    #[test]
    fn a_replayed_response_is_refused_on_a_new_connection() {
        let shared = secret("correct horse battery staple");
        // A recorded, valid response to the challenge of connection one...
        let mut to_client = FrameBuilder::new();
        let mut first = ServerHandshake::start(&shared, [1; NONCE_BYTES], &mut to_client);
        let mut client = ClientHandshake::new(&shared, [2; NONCE_BYTES]);
        let mut recorded = FrameBuilder::new();
        client
            .handle_input(to_client.bytes(), &mut recorded)
            .unwrap();
        let recorded = aligned(recorded.bytes());
        assert!(matches!(
            first.handle_input(&recorded, &mut FrameBuilder::new()),
            Ok(Step::Done { .. })
        ));
        // ...is worthless against connection two, whose challenge has another nonce.
        let mut second =
            ServerHandshake::start(&shared, [3; NONCE_BYTES], &mut FrameBuilder::new());
        assert_eq!(
            second.handle_input(&recorded, &mut FrameBuilder::new()),
            Err(AuthError::WrongSecret)
        );
        // And the finished handshake takes nothing more.
        assert_eq!(
            first.handle_input(&recorded, &mut FrameBuilder::new()),
            Err(AuthError::Finished)
        );
    }

    #[test]
    fn a_truncated_response_waits_for_the_rest_and_reports_the_frame_length() {
        let shared = secret("correct horse battery staple");
        let mut to_client = FrameBuilder::new();
        let mut node = ServerHandshake::start(&shared, [1; NONCE_BYTES], &mut to_client);
        let mut response = FrameBuilder::new();
        ClientHandshake::new(&shared, [2; NONCE_BYTES])
            .handle_input(to_client.bytes(), &mut response)
            .unwrap();
        let whole = aligned(response.bytes());
        for cut in [0, 5, FRAME_HEADER_BYTES - 1] {
            assert_eq!(
                node.handle_input(&whole[..cut], &mut FrameBuilder::new()),
                Ok(Step::NeedMore { frame_len: None })
            );
        }
        for cut in [FRAME_HEADER_BYTES, whole.len() - 1] {
            assert_eq!(
                node.handle_input(&aligned(&whole[..cut]), &mut FrameBuilder::new()),
                Ok(Step::NeedMore {
                    frame_len: Some(whole.len())
                })
            );
        }
    }

    #[test]
    fn a_client_that_skips_the_handshake_is_told_to_authenticate() {
        let shared = secret("correct horse battery staple");
        let mut node = ServerHandshake::start(&shared, [1; NONCE_BYTES], &mut FrameBuilder::new());
        let mut map_request = FrameBuilder::new();
        map_request
            .single::<Challenge>(FrameKind::MapRequest, 0, None)
            .unwrap();
        let error = node
            .handle_input(&aligned(map_request.bytes()), &mut FrameBuilder::new())
            .unwrap_err();
        assert_eq!(
            error,
            AuthError::UnexpectedFrame {
                expected: FrameKind::AuthResponse,
                found: FrameKind::MapRequest
            }
        );
        assert!(error.to_string().contains("requires authentication"));
    }

    #[test]
    fn a_large_frame_in_place_of_a_response_is_refused_from_its_header() {
        let shared = secret("correct horse battery staple");
        let mut node = ServerHandshake::start(&shared, [1; NONCE_BYTES], &mut FrameBuilder::new());
        let mut events = FrameBuilder::new();
        events.begin(FrameKind::Events);
        for _ in 0..20 {
            events
                .push(&Challenge {
                    node_nonce: [7; 32],
                })
                .unwrap();
        }
        events.finish(0);
        let header_only = aligned(&events.bytes()[..FRAME_HEADER_BYTES]);
        assert!(matches!(
            node.handle_input(&header_only, &mut FrameBuilder::new()),
            Err(AuthError::UnexpectedFrame { .. })
        ));
    }

    #[test]
    fn secrets_are_trimmed_and_bounded() {
        assert_eq!(
            AuthSecret::from_file_contents(b"0123456789abcdef\n")
                .unwrap()
                .0,
            b"0123456789abcdef"
        );
        assert_eq!(
            AuthSecret::from_file_contents(b"short\n").unwrap_err(),
            SecretError::TooShort { len: 5 }
        );
        assert!(AuthSecret::from_file_contents(&vec![b'x'; AUTH_SECRET_BYTES_MAX + 1]).is_err());
        assert!(!format!("{:?}", secret("correct horse battery staple")).contains("horse"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics_either_side(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let shared = secret("correct horse battery staple");
            let input = aligned(&bytes);
            let mut node = ServerHandshake::start(&shared, [1; 32], &mut FrameBuilder::new());
            let node_step = node.handle_input(&input, &mut FrameBuilder::new());
            let accepted = matches!(node_step, Ok(Step::Done { .. }));
            prop_assert!(!accepted);
            let mut client = ClientHandshake::new(&shared, [2; 32]);
            let _ = client.handle_input(&input, &mut FrameBuilder::new());
        }

        #[test]
        fn a_corrupted_response_is_never_accepted(at in 0usize..200, flip in 1u8..=255) {
            let shared = secret("correct horse battery staple");
            let mut to_client = FrameBuilder::new();
            let mut node = ServerHandshake::start(&shared, [1; 32], &mut to_client);
            let mut response = FrameBuilder::new();
            ClientHandshake::new(&shared, [2; 32]).handle_input(to_client.bytes(), &mut response).unwrap();
            let mut bytes = aligned(response.bytes());
            let at = at % bytes.len();
            bytes[at] ^= flip;
            let step = node.handle_input(&bytes, &mut FrameBuilder::new());
            let accepted = matches!(step, Ok(Step::Done { .. }));
            prop_assert!(!accepted, "{:?}", step);
        }
    }
}
