//! The frame codec: how messages are laid out on a TCP stream, and the one place where bytes
//! from outside the process are checked.
//!
//! ```text
//! frame   := header(32) body(body_len)
//! header  := magic "TROV" | version u8 | kind u8 | flags u16 = 0 | body_len u32 | epoch u32
//!            | xxh3_64(body) u64 | xxh3_64(header[0..24]) u64            (little-endian)
//! body    := record* trailer                                 body_len % 16 == 0
//! record  := one rkyv archive, zero-padded to a multiple of 16
//! trailer := zero padding | len u32 × count | count u32      padded at the front to 16
//! ```
//!
//! Every record is an independent rkyv archive that starts 16-byte aligned when the frame
//! starts 16-byte aligned, so one event can be routed to another core by moving its bytes.
//! Frames carry exact lengths (an rkyv root sits at the end of its bytes), and the lengths sit
//! in a trailer so that a writer can append records without knowing in advance how many a
//! frame will hold. The header checks itself, so a corrupted length is reported as such
//! instead of leaving the reader waiting for bytes that never come.
//!
//! Decoding is sans-IO: [`decode_frame`] looks at the front of a buffer and says "need more",
//! "here is a frame" or what is wrong with it. Records are validated with bytecheck exactly
//! once, where bytes enter the process, and the result is a type that proves it:
//! [`ValidatedFrame`] (a frame's records), [`ValidatedArchive`] (one record) and
//! [`ValidatedArchives`] (an owned pack of validated records, what a mesh batch carries).
//! Holders of these read the records in place, safely, without checking them again; the one
//! `unsafe` read ([`access_validated`]) sits behind them. Every malformed input is a typed
//! [`FrameError`].
//! Types here are plain values; a [`FrameBuilder`] lives on the one thread that fills it.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use rkyv::api::low::{self, LowSerializer, LowValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{BoxedError, Failure};
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::util::AlignedVec;
use rkyv::{Portable, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::constants::{
    ARCHIVE_ALIGN, AUTH_RECORD_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, EVENT_BYTES_MAX,
    FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_RECORDS_MAX, FRAME_VERSION,
    LINK_BATCH_EVENTS_MAX, LINK_HELLO_BYTES_MAX, LINK_TOKENS_RECORD_BYTES_MAX,
    MOVE_ACK_RECORD_BYTES_MAX, MOVE_CHUNK_RECORD_BYTES_MAX, READ_BUFFER_BYTES_MAX,
    READ_CHUNK_BYTES, REPLY_BYTES_MAX,
};
use crate::core::message::ErrorMessage;

/// Error code a node sends when a shard already serves `CONNECTIONS_PER_SHARD_MAX`
/// connections. Codes below 100 are [`FrameError::code`]s.
pub const ERROR_CODE_CONNECTION_LIMIT: u16 = 100;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → node: archived `Event`s.
    Events = 1,
    /// Node → client: archived `Reply`s.
    Replies = 2,
    /// Client → node: no records; asks for the partition map.
    MapRequest = 3,
    /// Node → client: one archived `PartitionMapMessage`.
    MapReply = 4,
    /// Node → client, before closing: one archived `ErrorMessage`.
    Error = 5,
    /// Node → client, first frame of an authenticated connection: one archived
    /// `core::auth::Challenge` (the node's nonce).
    AuthChallenge = 6,
    /// Client → node: one archived `core::auth::Response` (the client's nonce and proof).
    AuthResponse = 7,
    /// Node → client: one archived `core::auth::Accepted` (the node's proof); traffic follows.
    AuthAccepted = 8,
    /// Shard → shard of another node, first frame of a link: one archived `LinkHello`.
    LinkHello = 9,
    /// Answer to a `LinkHello` the receiver accepts: one archived `LinkAccepted`.
    LinkAccepted = 10,
    /// On a link: archived `Event`s exactly as their clients sent them, then one archived
    /// `LinkTokens` (a token per event).
    LinkEvents = 11,
    /// Back on a link: archived `Reply`s, then one archived `LinkTokens` (each reply's token).
    LinkReplies = 12,
    /// On a link, a live move: one archived `MoveChunk` (a piece of a partition's snapshot).
    MoveSnapshot = 13,
    /// On a link, a live move: one archived `MoveHead`, then the tail's archived `Event`s.
    MoveEvents = 14,
    /// On a link, a live move: one archived `MoveHead` saying the tail is complete.
    MoveHandoff = 15,
    /// Back on a link: one archived `MoveAck` (how far the target got, or its refusal).
    MoveAck = 16,
    /// On a link, a live move: one archived `MoveSeal` (the source saw the flip and applies
    /// none of the partition's events any more).
    MoveSeal = 17,
}

impl FrameKind {
    fn from_u8(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Events,
            2 => FrameKind::Replies,
            3 => FrameKind::MapRequest,
            4 => FrameKind::MapReply,
            5 => FrameKind::Error,
            6 => FrameKind::AuthChallenge,
            7 => FrameKind::AuthResponse,
            8 => FrameKind::AuthAccepted,
            9 => FrameKind::LinkHello,
            10 => FrameKind::LinkAccepted,
            11 => FrameKind::LinkEvents,
            12 => FrameKind::LinkReplies,
            13 => FrameKind::MoveSnapshot,
            14 => FrameKind::MoveEvents,
            15 => FrameKind::MoveHandoff,
            16 => FrameKind::MoveAck,
            17 => FrameKind::MoveSeal,
            _ => return None,
        })
    }

    /// Largest record a frame of this kind may carry.
    pub fn record_bytes_max(self) -> usize {
        match self {
            FrameKind::Events => EVENT_BYTES_MAX,
            FrameKind::Replies => REPLY_BYTES_MAX,
            FrameKind::MapRequest => 0,
            FrameKind::MapReply => FRAME_BODY_BYTES_MAX - ARCHIVE_ALIGN,
            FrameKind::Error => ERROR_MESSAGE_BYTES_MAX + 64,
            FrameKind::AuthChallenge | FrameKind::AuthResponse | FrameKind::AuthAccepted => {
                AUTH_RECORD_BYTES_MAX
            }
            FrameKind::LinkHello | FrameKind::LinkAccepted => LINK_HELLO_BYTES_MAX,
            FrameKind::LinkEvents => EVENT_BYTES_MAX.max(LINK_TOKENS_RECORD_BYTES_MAX),
            FrameKind::LinkReplies => REPLY_BYTES_MAX.max(LINK_TOKENS_RECORD_BYTES_MAX),
            FrameKind::MoveSnapshot => MOVE_CHUNK_RECORD_BYTES_MAX,
            FrameKind::MoveEvents | FrameKind::MoveHandoff | FrameKind::MoveSeal => EVENT_BYTES_MAX,
            FrameKind::MoveAck => MOVE_ACK_RECORD_BYTES_MAX,
        }
    }

    /// Most records a frame of this kind may carry.
    pub fn records_max(self) -> usize {
        match self {
            FrameKind::Events | FrameKind::Replies => FRAME_RECORDS_MAX,
            FrameKind::MapRequest => 0,
            FrameKind::MapReply
            | FrameKind::Error
            | FrameKind::AuthChallenge
            | FrameKind::AuthResponse
            | FrameKind::AuthAccepted
            | FrameKind::LinkHello
            | FrameKind::LinkAccepted
            | FrameKind::MoveSnapshot
            | FrameKind::MoveHandoff
            | FrameKind::MoveSeal
            | FrameKind::MoveAck => 1,
            // A move's head and a batch of its tail.
            FrameKind::MoveEvents => LINK_BATCH_EVENTS_MAX + 1,
            // A batch and its token record.
            FrameKind::LinkEvents | FrameKind::LinkReplies => LINK_BATCH_EVENTS_MAX + 1,
        }
    }
}

/// The decoded fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub body_len: u32,
    /// The sender's partition-map epoch (0 when it has none).
    pub epoch: u32,
    pub body_hash: u64,
}

/// Everything that can be wrong with bytes that claim to be frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The stream does not start with `TROV`: not a trove client, or out of step.
    BadMagic { found: [u8; 4] },
    /// A frame of a wire version this build does not speak.
    UnsupportedVersion { found: u8 },
    /// The header's own checksum does not match: corrupted in transit.
    HeaderChecksum,
    /// A frame kind this build does not know.
    UnknownKind { found: u8 },
    /// Reserved header bits are set.
    NonZeroFlags { found: u16 },
    /// The body is larger than `FRAME_BODY_BYTES_MAX`.
    BodyTooLarge { body_len: u32 },
    /// The body length is not a multiple of 16.
    BodyMisaligned { body_len: u32 },
    /// The body's checksum does not match: corrupted in transit.
    BodyChecksum,
    /// The stream ended in the middle of a frame.
    Truncated { have: usize, need: usize },
    /// The body's trailer is missing or does not fit the body.
    BadTrailer,
    /// More records than the frame kind allows.
    TooManyRecords { kind: FrameKind, count: u32 },
    /// A record of zero bytes, or larger than the frame kind allows.
    BadRecordLength { index: u32, len: u32 },
    /// The record lengths do not add up to the body.
    RecordsMismatch,
    /// A record is not a valid archive of the type the frame kind promises.
    InvalidArchive { index: u32, reason: String },
    /// A frame of a kind this side does not accept (a node receiving replies, say).
    UnexpectedKind { kind: FrameKind },
}

impl FrameError {
    /// A stable number for the error, sent in error frames.
    pub fn code(&self) -> u16 {
        match self {
            FrameError::BadMagic { .. } => 1,
            FrameError::UnsupportedVersion { .. } => 2,
            FrameError::HeaderChecksum => 3,
            FrameError::UnknownKind { .. } => 4,
            FrameError::NonZeroFlags { .. } => 5,
            FrameError::BodyTooLarge { .. } => 6,
            FrameError::BodyMisaligned { .. } => 7,
            FrameError::BodyChecksum => 8,
            FrameError::Truncated { .. } => 9,
            FrameError::BadTrailer => 10,
            FrameError::TooManyRecords { .. } => 11,
            FrameError::BadRecordLength { .. } => 12,
            FrameError::RecordsMismatch => 13,
            FrameError::InvalidArchive { .. } => 14,
            FrameError::UnexpectedKind { .. } => 15,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic { found } => write!(
                f,
                "bad magic {found:02x?}: expected \"TROV\"; the peer does not speak the trove protocol or the stream is out of step"
            ),
            FrameError::UnsupportedVersion { found } => write!(
                f,
                "wire version {found} is not supported (this build speaks version {FRAME_VERSION}); upgrade the older side"
            ),
            FrameError::HeaderChecksum => {
                write!(
                    f,
                    "frame header checksum mismatch: the header was corrupted in transit"
                )
            }
            FrameError::UnknownKind { found } => write!(f, "unknown frame kind {found}"),
            FrameError::NonZeroFlags { found } => {
                write!(
                    f,
                    "reserved header flags are set (value {found}); they must be zero"
                )
            }
            FrameError::BodyTooLarge { body_len } => write!(
                f,
                "frame body of {body_len} bytes exceeds the limit of {FRAME_BODY_BYTES_MAX}; send fewer events per frame"
            ),
            FrameError::BodyMisaligned { body_len } => write!(
                f,
                "frame body of {body_len} bytes is not a multiple of {ARCHIVE_ALIGN}"
            ),
            FrameError::BodyChecksum => {
                write!(
                    f,
                    "frame body checksum mismatch: the body was corrupted in transit"
                )
            }
            FrameError::Truncated { have, need } => write!(
                f,
                "the stream ended inside a frame ({have} of {need} bytes arrived)"
            ),
            FrameError::BadTrailer => write!(f, "the frame's record trailer does not fit its body"),
            FrameError::TooManyRecords { kind, count } => write!(
                f,
                "{count} records in one {kind:?} frame exceed the limit of {}",
                kind.records_max()
            ),
            FrameError::BadRecordLength { index, len } => {
                write!(f, "record {index} has an invalid length of {len} bytes")
            }
            FrameError::RecordsMismatch => {
                write!(
                    f,
                    "the record lengths in the trailer do not add up to the body"
                )
            }
            FrameError::InvalidArchive { index, reason } => {
                write!(f, "record {index} is not a valid archive: {reason}")
            }
            FrameError::UnexpectedKind { kind } => {
                write!(f, "a {kind:?} frame is not accepted here")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Offsets of the header fields.
mod layout {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const FLAGS: usize = 6;
    pub const BODY_LEN: usize = 8;
    pub const EPOCH: usize = 12;
    pub const BODY_HASH: usize = 16;
    pub const HEADER_HASH: usize = 24;
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Rounds `len` up to the next multiple of [`ARCHIVE_ALIGN`].
pub const fn align_up(len: usize) -> usize {
    (len + ARCHIVE_ALIGN - 1) & !(ARCHIVE_ALIGN - 1)
}

/// What [`decode_frame`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole frame yet. `frame_len` is the whole frame's size once the header is in.
    NeedMore { frame_len: Option<usize> },
    /// A whole frame whose header and body checksums match.
    Frame {
        header: FrameHeader,
        body: &'a [u8],
        /// Bytes the frame takes from the front of the buffer.
        frame_len: usize,
    },
}

/// Parses and checks the header at the front of `buf`.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return check_partial_magic(buf).map(|()| None);
    }
    // A whole header: the magic compared as one word (a slice compare is a call to memcmp,
    // a tenth of a one-event frame's decoding).
    if read_u32(buf, layout::MAGIC) != u32::from_le_bytes(FRAME_MAGIC) {
        return Err(bad_magic(buf));
    }
    let version = buf[layout::VERSION];
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    if xxh3_64(&buf[..layout::HEADER_HASH]) != read_u64(buf, layout::HEADER_HASH) {
        return Err(FrameError::HeaderChecksum);
    }
    let kind = FrameKind::from_u8(buf[layout::KIND]).ok_or(FrameError::UnknownKind {
        found: buf[layout::KIND],
    })?;
    let flags = read_u16(buf, layout::FLAGS);
    if flags != 0 {
        return Err(FrameError::NonZeroFlags { found: flags });
    }
    let body_len = read_u32(buf, layout::BODY_LEN);
    if body_len as usize > FRAME_BODY_BYTES_MAX {
        return Err(FrameError::BodyTooLarge { body_len });
    }
    if body_len as usize % ARCHIVE_ALIGN != 0 {
        return Err(FrameError::BodyMisaligned { body_len });
    }
    Ok(Some(FrameHeader {
        kind,
        body_len,
        epoch: read_u32(buf, layout::EPOCH),
        body_hash: read_u64(buf, layout::BODY_HASH),
    }))
}

/// Checks the magic of a header that has not all arrived, so that garbage is reported at once
/// rather than after a whole header's worth of it.
fn check_partial_magic(buf: &[u8]) -> Result<(), FrameError> {
    let have = buf.len().min(FRAME_MAGIC.len());
    if buf[..have] != FRAME_MAGIC[..have] {
        return Err(bad_magic(buf));
    }
    Ok(())
}

/// The error for a buffer that does not start with the magic: its first bytes, as found.
#[cold]
fn bad_magic(buf: &[u8]) -> FrameError {
    let have = buf.len().min(FRAME_MAGIC.len());
    let mut found = [0u8; 4];
    found[..have].copy_from_slice(&buf[..have]);
    FrameError::BadMagic { found }
}

/// Looks for one whole, checksummed frame at the front of `buf`.
pub fn decode_frame(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let Some(header) = decode_header(buf)? else {
        return Ok(Decoded::NeedMore { frame_len: None });
    };
    let frame_len = FRAME_HEADER_BYTES + header.body_len as usize;
    if buf.len() < frame_len {
        return Ok(Decoded::NeedMore {
            frame_len: Some(frame_len),
        });
    }
    let body = &buf[FRAME_HEADER_BYTES..frame_len];
    if xxh3_64(body) != header.body_hash {
        return Err(FrameError::BodyChecksum);
    }
    Ok(Decoded::Frame {
        header,
        body,
        frame_len,
    })
}

/// A receive buffer for a byte stream of frames: aligned, so a frame that starts at offset 0
/// (or after whole frames, which are multiples of 16 long) keeps its records 16-byte aligned.
/// Starts at one read chunk and grows to one whole frame plus a chunk at most.
pub struct ReceiveBuffer {
    buf: AlignedVec,
    start: usize,
    end: usize,
}

impl Default for ReceiveBuffer {
    fn default() -> Self {
        ReceiveBuffer::new()
    }
}

impl ReceiveBuffer {
    pub fn new() -> ReceiveBuffer {
        let mut buf = AlignedVec::with_capacity(READ_CHUNK_BYTES);
        buf.resize(READ_CHUNK_BYTES, 0);
        ReceiveBuffer {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Bytes received and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops `len` bytes (whole frames) from the front.
    pub fn consume(&mut self, len: usize) {
        assert!(
            len <= self.end - self.start,
            "consumed more than was received"
        );
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to receive into: at least half a chunk, and the rest of a frame of `frame_len`
    /// bytes when [`decode_frame`] said how long the pending one is.
    pub fn spare(&mut self, frame_len: Option<usize>) -> &mut [u8] {
        let wanted = frame_len
            .unwrap_or(0)
            .max(self.end - self.start + READ_CHUNK_BYTES);
        if self.buf.len() - self.end < READ_CHUNK_BYTES / 2 || self.buf.len() - self.start < wanted
        {
            self.buf.as_mut_slice().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let wanted = wanted.min(READ_BUFFER_BYTES_MAX);
            if self.buf.len() < wanted {
                self.buf.resize(wanted, 0);
            }
        }
        debug_assert!(
            self.end < self.buf.len(),
            "a receive buffer always has room"
        );
        &mut self.buf.as_mut_slice()[self.end..]
    }

    /// Records that `len` bytes were received into [`Self::spare`].
    pub fn filled(&mut self, len: usize) {
        assert!(self.end + len <= self.buf.len());
        self.end += len;
    }
}

/// Reports what is wrong with bytes left over when a stream ends: nothing if there are none.
pub fn check_stream_end(leftover: &[u8]) -> Result<(), FrameError> {
    if leftover.is_empty() {
        return Ok(());
    }
    let need = match decode_header(leftover)? {
        Some(header) => FRAME_HEADER_BYTES + header.body_len as usize,
        None => FRAME_HEADER_BYTES,
    };
    Err(FrameError::Truncated {
        have: leftover.len(),
        need,
    })
}

/// Whether the first `padding_bytes` of `trailer` (the zero padding in front of its lengths:
/// 0, 4, 8 or 12 bytes) are all zeros. The trailer starts 16-byte aligned, so the padding sits
/// in its first 16-byte word, and that word, masked to the padding, is the whole check: a byte
/// loop here was a sixth of parsing a one-event frame.
fn is_padding_zero(trailer: &[u8], padding_bytes: usize) -> bool {
    const _: () = assert!(
        ARCHIVE_ALIGN == size_of::<u128>(),
        "one aligned word is a u128"
    );
    let first_word = u128::from_le_bytes(trailer[..ARCHIVE_ALIGN].try_into().expect("16 bytes"));
    // Little-endian: the padding is the word's low `padding_bytes` bytes (at most 12, so the
    // shift stays below 128).
    let padding_mask = (1u128 << (8 * padding_bytes)) - 1;
    first_word & padding_mask == 0
}

/// The records of one frame body, checked for layout (not yet for content).
#[derive(Clone, Copy, Debug)]
pub struct Records<'a> {
    records: &'a [u8],
    lens: &'a [u8],
    count: u32,
}

impl<'a> Records<'a> {
    /// Checks the trailer and the record lengths of a `kind` frame's body.
    pub fn parse(kind: FrameKind, body: &'a [u8]) -> Result<Records<'a>, FrameError> {
        if body.len() < ARCHIVE_ALIGN || body.len() % ARCHIVE_ALIGN != 0 {
            return Err(FrameError::BadTrailer);
        }
        let count = read_u32(body, body.len() - 4);
        if count as usize > kind.records_max() {
            return Err(FrameError::TooManyRecords { kind, count });
        }
        let lengths_bytes = 4 * (count as usize + 1);
        let trailer_len = align_up(lengths_bytes);
        if trailer_len > body.len() {
            return Err(FrameError::BadTrailer);
        }
        if !is_padding_zero(
            &body[body.len() - trailer_len..],
            trailer_len - lengths_bytes,
        ) {
            return Err(FrameError::BadTrailer);
        }
        let records = Records::from_checked_layout(body, count);
        let record_max = kind.record_bytes_max();
        let mut total = 0usize;
        for index in 0..count {
            let len = records.len_of(index);
            if len == 0 || len as usize > record_max {
                return Err(FrameError::BadRecordLength { index, len });
            }
            total += align_up(len as usize);
        }
        if total != records.records.len() {
            return Err(FrameError::RecordsMismatch);
        }
        Ok(records)
    }

    /// The view of a body whose trailer of `count` lengths [`Records::parse`] has accepted.
    fn from_checked_layout(body: &'a [u8], count: u32) -> Records<'a> {
        let trailer_start = body.len() - align_up(4 * (count as usize + 1));
        let lens_start = body.len() - 4 - 4 * count as usize;
        Records {
            records: &body[..trailer_start],
            lens: &body[lens_start..body.len() - 4],
            count,
        }
    }

    fn len_of(&self, index: u32) -> u32 {
        read_u32(self.lens, 4 * index as usize)
    }

    /// How many records the frame holds.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The records from index `first` on (none when `first` is past the last): the rest of a
    /// frame whose first records were dealt with before.
    pub fn from_index(self, first: u32) -> Records<'a> {
        let first = first.min(self.count);
        let skipped: usize = (0..first)
            .map(|index| align_up(self.len_of(index) as usize))
            .sum();
        Records {
            records: &self.records[skipped..],
            lens: &self.lens[4 * first as usize..],
            count: self.count - first,
        }
    }

    /// The records but the last, and the last one's bytes (a link frame's token record);
    /// `None` for a frame without records.
    pub fn split_last(self) -> Option<(Records<'a>, &'a [u8])> {
        let last = self.count.checked_sub(1)?;
        let start: usize = (0..last)
            .map(|index| align_up(self.len_of(index) as usize))
            .sum();
        let len = self.len_of(last) as usize;
        let head = Records {
            records: &self.records[..start],
            lens: &self.lens[..4 * last as usize],
            count: last,
        };
        Some((head, &self.records[start..start + len]))
    }

    /// The records' bytes, in order, each starting at a multiple of 16 from the body start.
    pub fn iter(self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let records = self.records;
        let lens = self.lens;
        let mut offset = 0usize;
        lens.chunks_exact(4).map(move |len| {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let record = &records[offset..offset + len];
            offset += align_up(len);
            record
        })
    }
}

/// Every archived type that travels in frames and can be checked with bytecheck
/// (`ArchivedEvent`, `ArchivedReply`, `ArchivedPartitionMapMessage`, `ArchivedErrorMessage`).
pub trait WireArchive:
    Portable
    + for<'a> CheckBytes<LowValidator<'a, Failure>>
    + for<'a> CheckBytes<LowValidator<'a, BoxedError>>
{
}

impl<T> WireArchive for T where
    T: Portable
        + for<'a> CheckBytes<LowValidator<'a, Failure>>
        + for<'a> CheckBytes<LowValidator<'a, BoxedError>>
{
}

/// Validates one record as an archived `T`: the only place untrusted bytes become typed.
pub fn access_record<T: WireArchive>(index: u32, bytes: &[u8]) -> Result<&T, FrameError> {
    ValidatedArchive::<T>::validate(index, bytes).map(ValidatedArchive::get)
}

/// Reads an archive without checking it: the one `unsafe` way from bytes to a type, used by
/// [`ValidatedArchive::get`]. Safe code reads records through [`ValidatedFrame`],
/// [`ValidatedArchive`] and [`ValidatedArchives`] instead.
///
/// # Safety
///
/// `bytes` must be exactly the bytes of an archive of `T` that is known valid: either bytes
/// that bytecheck accepted as a `T` (by [`access_record`] or [`ValidatedArchive::validate`]),
/// or bytes rkyv serialized from a value whose archived form is `T`, or a copy of either. They
/// must start 16-byte aligned (copying them into another aligned buffer at an aligned offset
/// keeps them valid: rkyv's pointers are relative and stay inside the archive).
pub unsafe fn access_validated<T: Portable>(bytes: &[u8]) -> &T {
    debug_assert_eq!(
        bytes.as_ptr() as usize % ARCHIVE_ALIGN,
        0,
        "a validated archive is read 16-byte aligned"
    );
    // SAFETY: the caller guarantees these bytes are a valid archive of `T`, aligned; rkyv's
    // unchecked access then reads the root at the end of the bytes.
    unsafe { rkyv::access_unchecked::<T>(bytes) }
}

/// One record known to be a valid archive of `T`: its bytes, and the archived value read in
/// place. It can only be made by validating bytes ([`ValidatedArchive::validate`], a
/// [`ValidatedFrame`]) or by reading a [`ValidatedArchives`], which holds nothing but copies of
/// such records and archives it made itself. So a value of this type is the proof that bytes
/// from outside the process were checked once; whoever holds one reads and moves the bytes
/// without checking them again. A plain borrow: it lives wherever the bytes it borrows live.
pub struct ValidatedArchive<'a, T> {
    bytes: &'a [u8],
    archived: PhantomData<&'a T>,
}

impl<T> Clone for ValidatedArchive<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ValidatedArchive<'_, T> {}

impl<T> fmt::Debug for ValidatedArchive<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatedArchive")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl<'a, T: WireArchive> ValidatedArchive<'a, T> {
    /// Checks `bytes` with bytecheck as an archived `T` (record `index` of its frame, for the
    /// error). `bytes` must start 16-byte aligned, as records of an aligned frame do.
    #[inline]
    pub fn validate(index: u32, bytes: &'a [u8]) -> Result<ValidatedArchive<'a, T>, FrameError> {
        if !is_valid_archive::<T>(bytes) {
            return Err(invalid_archive::<T>(index, bytes));
        }
        Ok(ValidatedArchive {
            bytes,
            archived: PhantomData,
        })
    }
}

/// The check a record that arrives gets, kept to the fast path: aligned, and accepted by
/// bytecheck. Reading in place later relies on the alignment validation saw; records of frames
/// received into aligned buffers always have it.
#[inline]
fn is_valid_archive<T: WireArchive>(bytes: &[u8]) -> bool {
    is_archive_aligned(bytes) && bytecheck_accepts::<T>(bytes)
}

/// Whether `bytes` start 16-byte aligned, as validated archives are read.
#[inline]
fn is_archive_aligned(bytes: &[u8]) -> bool {
    bytes.as_ptr() as usize % ARCHIVE_ALIGN == 0
}

/// Whether bytecheck accepts `bytes` as an archived `T`, with an error type that learns only
/// "invalid" ([`invalid_archive`] says why).
#[inline]
fn bytecheck_accepts<T: WireArchive>(bytes: &[u8]) -> bool {
    low::access::<T, Failure>(bytes).is_ok()
}

/// Why `bytes`, which [`is_valid_archive`] refused, are not a valid `T`. Out of line: the
/// check above sits in the loop over every record, and this (strings, a second validation with
/// a boxed error, since rkyv's own error type hides the reason in release builds) must not
/// weigh on it.
#[cold]
#[inline(never)]
fn invalid_archive<T: WireArchive>(index: u32, bytes: &[u8]) -> FrameError {
    let reason = if bytes.as_ptr() as usize % ARCHIVE_ALIGN != 0 {
        "the record is not 16-byte aligned in memory: receive frames into an aligned buffer (ReceiveBuffer, AlignedVec)".to_owned()
    } else {
        match low::access::<T, BoxedError>(bytes) {
            Ok(_) => "rejected by validation".to_owned(),
            Err(error) => archive_reason::<T>(&error.to_string()),
        }
    };
    FrameError::InvalidArchive { index, reason }
}

/// trove's own words for why a record is not a valid `T`, from rkyv's validator text. That
/// text goes to remote peers in error frames, and rkyv's can hold heap addresses (`subtree
/// pointer overran range: ptr 0x00007f…`), so it is never passed on: it is only matched
/// against, and the reason is built from fixed phrases, the archived type's name and, for an
/// enum, the tag found (digits only).
fn archive_reason<T>(validator_text: &str) -> String {
    let type_name = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("record");
    let type_name = type_name.strip_prefix("Archived").unwrap_or(type_name);
    let text = validator_text.to_ascii_lowercase();
    if text.contains("discriminant") {
        let tag: String = validator_text
            .split('\'')
            .nth(1)
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .take(3)
            .collect();
        let enum_name = validator_text
            .split("for enum '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .map(|name| name.strip_prefix("Archived").unwrap_or(name))
            .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or("an enum");
        return format!(
            "field of type {enum_name} has an unknown tag {tag} (in a record of type {type_name})"
        );
    }
    let what = if text.contains("utf-8") || text.contains("utf8") {
        "a string field is not valid UTF-8"
    } else if text.contains("string") || text.contains("length") {
        "a string field's length does not fit the record"
    } else if text.contains("pointer") || text.contains("range") || text.contains("bounds") {
        "a string or list field points outside the record"
    } else if text.contains("align") {
        "the record is not 16-byte aligned"
    } else if text.contains("bool") {
        "a bool field is neither 0 nor 1"
    } else if text.contains("char") {
        "a char field is not a Unicode scalar value"
    } else {
        "its fields do not validate"
    };
    format!("{what} (in a record of type {type_name})")
}

impl<'a, T: Portable> ValidatedArchive<'a, T> {
    /// The archived value, read in place.
    pub fn get(self) -> &'a T {
        // SAFETY: a `ValidatedArchive` is only made from bytes that passed bytecheck as a `T`
        // (`validate`) or from a `ValidatedArchives`, which holds only copies of those and
        // archives of `T` it serialized itself, each at an aligned offset of an aligned buffer.
        unsafe { access_validated::<T>(self.bytes) }
    }

    /// The archive's bytes, to copy into a frame or a batch.
    pub fn bytes(self) -> &'a [u8] {
        self.bytes
    }
}

/// A frame body every record of which passed bytecheck as an archived `T`: the result of
/// validating a frame, done once where its bytes enter the process. Iterating it reads the
/// records in place, safely. A plain borrow of the body, on the thread that received it.
pub struct ValidatedFrame<'a, T> {
    records: Records<'a>,
    archived: PhantomData<&'a T>,
}

impl<T> Clone for ValidatedFrame<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ValidatedFrame<'_, T> {}

impl<T> fmt::Debug for ValidatedFrame<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatedFrame")
            .field("count", &self.records.count)
            .finish()
    }
}

impl<'a, T: WireArchive> ValidatedFrame<'a, T> {
    /// Checks the layout of a `kind` frame's body (from [`decode_frame`], 16-byte aligned) and
    /// every record in it as an archived `T`. The first bad record is the error.
    pub fn validate(kind: FrameKind, body: &'a [u8]) -> Result<ValidatedFrame<'a, T>, FrameError> {
        ValidatedFrame::validate_from(Records::parse(kind, body)?, 0)
    }

    /// Like [`Self::validate`], for the records of a parsed frame from index `first` on only:
    /// the rest of a frame whose first records were validated and used by an earlier call. The
    /// result holds those records alone; errors name records by their index in the whole frame.
    pub fn validate_from(
        records: Records<'a>,
        first: u32,
    ) -> Result<ValidatedFrame<'a, T>, FrameError> {
        // A whole frame (the common case) skips nothing: no walk over lengths to skip.
        let records = if first == 0 {
            records
        } else {
            records.from_index(first)
        };
        // Every record starts at a multiple of 16 from the first: one check of alignment for
        // the frame, not one per record.
        let aligned = is_archive_aligned(records.records);
        for (offset, record) in records.iter().enumerate() {
            if !aligned || !bytecheck_accepts::<T>(record) {
                return Err(invalid_archive::<T>(first + offset as u32, record));
            }
        }
        Ok(ValidatedFrame {
            records,
            archived: PhantomData,
        })
    }
}

impl<'a, T: Portable> ValidatedFrame<'a, T> {
    /// How many records the frame holds.
    pub fn len(&self) -> usize {
        self.records.count as usize
    }

    /// True when the frame holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.count == 0
    }

    /// The records, in order: each its archived value and its bytes.
    pub fn iter(&self) -> impl Iterator<Item = ValidatedArchive<'a, T>> + use<'a, T> {
        self.records.iter().map(|bytes| ValidatedArchive {
            bytes,
            archived: PhantomData,
        })
    }

    /// The first record, if any (the one record of a map reply or an error frame).
    pub fn first(&self) -> Option<ValidatedArchive<'a, T>> {
        self.iter().next()
    }
}

/// A [`ValidatedFrame`] that owns its body, for a frame handed to another thread (a client's
/// reader passing replies to the caller). It is `Send`; it lives on one thread at a time.
pub struct ValidatedFrameBuf<T> {
    body: AlignedVec,
    count: u32,
    archived: PhantomData<fn() -> T>,
}

impl<T: WireArchive> ValidatedFrameBuf<T> {
    /// Validates `body` as [`ValidatedFrame::validate`] does, keeping it.
    pub fn validate(kind: FrameKind, body: AlignedVec) -> Result<ValidatedFrameBuf<T>, FrameError> {
        let count = ValidatedFrame::<T>::validate(kind, &body)?.records.count;
        Ok(ValidatedFrameBuf {
            body,
            count,
            archived: PhantomData,
        })
    }
}

impl<T: Portable> ValidatedFrameBuf<T> {
    /// The frame, to read its records.
    pub fn frame(&self) -> ValidatedFrame<'_, T> {
        ValidatedFrame {
            records: Records::from_checked_layout(&self.body, self.count),
            archived: PhantomData,
        }
    }
}

/// Archives of `T` packed back to back, each starting 16-byte aligned, that can only hold
/// validated archives: copies of [`ValidatedArchive`]s, and values it archives itself. This is
/// what a mesh batch carries between cores (it is `Send` when `M` is): the receiver reads every
/// archive in place without checking it again, and the type says that is safe. Each archive
/// comes with a value `M` its holder keeps beside it (a mesh batch: whose event it is and the
/// credit it holds); `()` when there is nothing to keep. Built on one core, moved whole to
/// another, read there.
pub struct ValidatedArchives<T, M = ()> {
    bytes: AlignedVec,
    /// Where each archive sits in `bytes`, with its value.
    entries: Vec<ArchiveEntry<M>>,
    archived: PhantomData<fn() -> T>,
}

/// Where one archive of a [`ValidatedArchives`] sits, and the value kept beside it.
#[derive(Clone, Copy, Debug)]
struct ArchiveEntry<M> {
    offset: u32,
    len: u32,
    meta: M,
}

impl<T, M> Default for ValidatedArchives<T, M> {
    fn default() -> Self {
        ValidatedArchives {
            bytes: AlignedVec::new(),
            entries: Vec::new(),
            archived: PhantomData,
        }
    }
}

impl<T, M> ValidatedArchives<T, M> {
    /// Bytes each archive costs in the entry array (its place and its value), for memory sums.
    pub const ENTRY_BYTES: usize = size_of::<ArchiveEntry<M>>();
}

impl<T: Portable, M> ValidatedArchives<T, M> {
    /// How many archives it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, padding included.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Forgets every archive, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    /// Copies a validated archive in, with `meta` beside it; returns its index.
    pub fn push_with(&mut self, archive: ValidatedArchive<'_, T>, meta: M) -> usize {
        let offset = align_up(self.bytes.len());
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(archive.bytes);
        self.entries.push(ArchiveEntry {
            offset: offset as u32,
            len: archive.bytes.len() as u32,
            meta,
        });
        self.entries.len() - 1
    }

    /// Archives `value` in (a reply this shard made, say), with `meta` beside it; returns its
    /// index. On error nothing is added.
    pub fn push_value_with<V>(&mut self, value: &V, meta: M) -> Result<usize, EncodeError>
    where
        V: rkyv::Archive<Archived = T> + for<'b, 'a> Serialize<RecordSerializer<'b, 'a>>,
    {
        let (offset, len) = archive_aligned(&mut self.bytes, value)?;
        self.entries.push(ArchiveEntry {
            offset: offset as u32,
            len: len as u32,
            meta,
        });
        Ok(self.entries.len() - 1)
    }

    /// The archive at `index`.
    pub fn get(&self, index: usize) -> ValidatedArchive<'_, T> {
        self.archive(&self.entries[index])
    }

    fn archive(&self, entry: &ArchiveEntry<M>) -> ValidatedArchive<'_, T> {
        let start = entry.offset as usize;
        ValidatedArchive {
            bytes: &self.bytes[start..start + entry.len as usize],
            archived: PhantomData,
        }
    }

    /// Every archive, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = ValidatedArchive<'_, T>> {
        self.entries.iter().map(|entry| self.archive(entry))
    }

    /// Every archive with the value kept beside it, in the order they were pushed.
    pub fn iter_with(&self) -> impl Iterator<Item = (ValidatedArchive<'_, T>, &M)> {
        self.entries
            .iter()
            .map(|entry| (self.archive(entry), &entry.meta))
    }
}

impl<T: Portable> ValidatedArchives<T> {
    /// Copies a validated archive in; returns its index.
    pub fn push(&mut self, archive: ValidatedArchive<'_, T>) -> usize {
        self.push_with(archive, ())
    }

    /// Archives `value` in; returns its index. On error nothing is added.
    pub fn push_value<V>(&mut self, value: &V) -> Result<usize, EncodeError>
    where
        V: rkyv::Archive<Archived = T> + for<'b, 'a> Serialize<RecordSerializer<'b, 'a>>,
    {
        self.push_value_with(value, ())
    }
}

/// Why a record could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The archive is larger than the frame kind allows.
    RecordTooLarge { len: usize, max: usize },
    /// rkyv could not serialize the value.
    Serialize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::RecordTooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds the limit of {max}")
            }
            EncodeError::Serialize => write!(f, "the value could not be serialized"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The serializer strategy records are written with.
pub type RecordSerializer<'b, 'a> = LowSerializer<&'b mut AlignedVec, ArenaHandle<'a>, Failure>;

thread_local! {
    /// The scratch space rkyv stages a record's lists in while it serializes one, one per
    /// thread, as `rkyv::util::with_arena` keeps. Held here rather than borrowed through
    /// `with_arena`, which moves the arena out of its slot and back and shrinks it twice per
    /// record: on the path of every event a client encodes and every reply a shard encodes,
    /// that was a tenth of the cost of pushing a record. It starts at rkyv's default capacity
    /// (1 KiB) and grows to what the largest record needs (at most `EVENT_BYTES_MAX`), as
    /// rkyv's did.
    static RECORD_SCRATCH: RefCell<Arena> = RefCell::new(Arena::new());
}

/// Archives `value` at the end of `buf`, starting at a multiple of 16 (zero padding first),
/// and returns the archive's offset and length. On error `buf` is left as it was.
pub fn archive_aligned<T>(buf: &mut AlignedVec, value: &T) -> Result<(usize, usize), EncodeError>
where
    T: for<'b, 'a> Serialize<RecordSerializer<'b, 'a>>,
{
    let before = buf.len();
    buf.resize(align_up(before), 0);
    let start = buf.len();
    let result = RECORD_SCRATCH.with_borrow_mut(|arena| {
        low::to_bytes_in_with_alloc::<_, _, Failure>(value, &mut *buf, arena.acquire()).map(|_| ())
    });
    if result.is_err() {
        buf.resize(before, 0);
        return Err(EncodeError::Serialize);
    }
    Ok((start, buf.len() - start))
}

/// Appends frames to an aligned buffer: open a frame, push records, finish it, repeat.
///
/// Lives on one thread (a shard or a client thread). The buffer may hold several finished
/// frames back to back, ready for one write.
pub struct FrameBuilder {
    buf: AlignedVec,
    /// Where the frame being built starts, its kind and body size so far.
    open_frame: Option<OpenFrame>,
    lens: Vec<u32>,
}

#[derive(Clone, Copy)]
struct OpenFrame {
    start: usize,
    kind: FrameKind,
    body_bytes: usize,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        FrameBuilder::new()
    }
}

impl FrameBuilder {
    pub fn new() -> FrameBuilder {
        FrameBuilder {
            buf: AlignedVec::new(),
            open_frame: None,
            lens: Vec::new(),
        }
    }

    /// The finished frames (and the open one, if any, which is not yet valid).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// True when the buffer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes held, finished or not.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Forgets every frame, keeping at most `retain_bytes` of capacity.
    pub fn clear(&mut self, retain_bytes: usize) {
        self.buf.clear();
        self.lens.clear();
        self.open_frame = None;
        if self.buf.capacity() > retain_bytes {
            self.buf = AlignedVec::with_capacity(retain_bytes);
        }
    }

    /// Bytes of the finished frames at the front: all of them but an open frame.
    pub fn closed_len(&self) -> usize {
        self.open_frame.map_or(self.buf.len(), |frame| frame.start)
    }

    /// Drops the open frame and its records, as if it had never been begun.
    pub fn abandon_open(&mut self) {
        if let Some(frame) = self.open_frame.take() {
            self.buf.resize(frame.start, 0);
            self.lens.clear();
        }
    }

    /// True if a frame is open.
    pub fn is_open(&self) -> bool {
        self.open_frame.is_some()
    }

    /// Records in the open frame.
    pub fn open_records(&self) -> usize {
        self.lens.len()
    }

    /// Starts a frame of `kind`. The previous frame must be finished.
    pub fn begin(&mut self, kind: FrameKind) {
        assert!(self.open_frame.is_none(), "a frame is already open");
        debug_assert!(self.buf.len() % ARCHIVE_ALIGN == 0);
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        self.open_frame = Some(OpenFrame {
            start,
            kind,
            body_bytes: 0,
        });
    }

    /// True if one more record of `len` bytes fits the open frame.
    pub fn fits(&self, len: usize) -> bool {
        let Some(frame) = self.open_frame else {
            return false;
        };
        let records = self.lens.len() + 1;
        records <= frame.kind.records_max()
            && frame.body_bytes + align_up(len) + align_up(4 * (records + 1))
                <= FRAME_BODY_BYTES_MAX
    }

    /// Archives `value` as the next record of the open frame. On error nothing is added.
    pub fn push<T>(&mut self, value: &T) -> Result<(), EncodeError>
    where
        T: for<'b, 'a> Serialize<RecordSerializer<'b, 'a>>,
    {
        let frame = self.open_frame.expect("push needs an open frame");
        let start = self.buf.len();
        let (_, len) = archive_aligned(&mut self.buf, value)?;
        let max = frame.kind.record_bytes_max();
        if len > max || !self.fits(len) {
            self.buf.resize(start, 0);
            return Err(EncodeError::RecordTooLarge { len, max });
        }
        self.seal_record(len);
        Ok(())
    }

    /// Copies an archive that was validated before (a reply from another shard) into the
    /// open frame as its next record.
    pub fn push_archived(&mut self, archive: &[u8]) -> Result<(), EncodeError> {
        let frame = self.open_frame.expect("push needs an open frame");
        let max = frame.kind.record_bytes_max();
        if archive.len() > max || archive.is_empty() || !self.fits(archive.len()) {
            return Err(EncodeError::RecordTooLarge {
                len: archive.len(),
                max,
            });
        }
        self.buf.extend_from_slice(archive);
        self.seal_record(archive.len());
        Ok(())
    }

    fn seal_record(&mut self, len: usize) {
        let padded = align_up(len);
        self.buf.resize(self.buf.len() + padded - len, 0);
        self.lens.push(len as u32);
        if let Some(frame) = self.open_frame.as_mut() {
            frame.body_bytes += padded;
        }
    }

    /// Closes the open frame: writes its trailer and fills in its header.
    pub fn finish(&mut self, epoch: u32) {
        let frame = self.open_frame.take().expect("finish needs an open frame");
        let count = self.lens.len();
        let trailer_len = align_up(4 * (count + 1));
        let padding = trailer_len - 4 * (count + 1);
        self.buf.resize(self.buf.len() + padding, 0);
        for len in self.lens.drain(..) {
            self.buf.extend_from_slice(&len.to_le_bytes());
        }
        self.buf.extend_from_slice(&(count as u32).to_le_bytes());
        let body_start = frame.start + FRAME_HEADER_BYTES;
        let body_len = self.buf.len() - body_start;
        debug_assert!(body_len <= FRAME_BODY_BYTES_MAX && body_len % ARCHIVE_ALIGN == 0);
        let body_hash = xxh3_64(&self.buf[body_start..]);
        let header = &mut self.buf[frame.start..body_start];
        header[layout::MAGIC..layout::MAGIC + 4].copy_from_slice(&FRAME_MAGIC);
        header[layout::VERSION] = FRAME_VERSION;
        header[layout::KIND] = frame.kind as u8;
        header[layout::FLAGS..layout::FLAGS + 2].copy_from_slice(&0u16.to_le_bytes());
        header[layout::BODY_LEN..layout::BODY_LEN + 4]
            .copy_from_slice(&(body_len as u32).to_le_bytes());
        header[layout::EPOCH..layout::EPOCH + 4].copy_from_slice(&epoch.to_le_bytes());
        header[layout::BODY_HASH..layout::BODY_HASH + 8].copy_from_slice(&body_hash.to_le_bytes());
        let header_hash = xxh3_64(&header[..layout::HEADER_HASH]);
        header[layout::HEADER_HASH..].copy_from_slice(&header_hash.to_le_bytes());
    }

    /// Appends a whole frame holding one record, or none when `value` is `None`.
    pub fn single<T>(
        &mut self,
        kind: FrameKind,
        epoch: u32,
        value: Option<&T>,
    ) -> Result<(), EncodeError>
    where
        T: for<'b, 'a> Serialize<RecordSerializer<'b, 'a>>,
    {
        self.begin(kind);
        if let Some(value) = value {
            if let Err(error) = self.push(value) {
                self.abandon_open();
                return Err(error);
            }
        }
        self.finish(epoch);
        Ok(())
    }

    /// Appends an error frame that tells the peer what was wrong with its input.
    pub fn error(&mut self, epoch: u32, error: &FrameError) {
        self.error_message(epoch, error.code(), error.to_string());
    }

    /// Appends an error frame with a code and a message for a human (cut to the limit).
    pub fn error_message(&mut self, epoch: u32, code: u16, mut message: String) {
        truncate_to_char_boundary(&mut message, ERROR_MESSAGE_BYTES_MAX);
        let message = ErrorMessage { code, message };
        self.single(FrameKind::Error, epoch, Some(&message))
            .expect("an error message is bounded and always fits its frame");
    }

    /// Appends whole frames encoded elsewhere (a cached map reply, say).
    pub fn append_frames(&mut self, frames: &[u8]) {
        assert!(self.open_frame.is_none(), "finish the open frame first");
        assert!(
            frames.len() % ARCHIVE_ALIGN == 0,
            "frames are whole and aligned"
        );
        self.buf.extend_from_slice(frames);
    }
}

fn truncate_to_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{HuntId, NodeId, PlayerId, TreasureId};
    use crate::core::message::{
        ArchivedEvent, ArchivedEventKind, ArchivedPartitionMapMessage, ArchivedReply, Event,
        EventError, EventKind, HuntSpec, LeaderboardEntry, MapNode, MapOwner, Outcome,
        PartitionMapMessage, Position, RejectReason, Reply, TreasureSpec, WaypointSpec,
    };
    use crate::core::partition::PartitionMap;
    use proptest::prelude::*;

    fn claim(seq: u64, code: &str) -> Event {
        Event {
            hunt: HuntId(7),
            player: PlayerId(9),
            client_session: 0,
            client_seq: seq,
            client_ts: seq * 10,
            kind: EventKind::Claim {
                treasure: TreasureId(3),
                code: code.to_owned(),
            },
        }
    }

    fn events_frame(events: &[Event]) -> Vec<u8> {
        let mut builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        for event in events {
            builder.push(event).unwrap();
        }
        builder.finish(5);
        builder.bytes().to_vec()
    }

    fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, FrameError> {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(bytes);
        let Decoded::Frame {
            header,
            body,
            frame_len,
        } = decode_frame(&aligned)?
        else {
            return Err(FrameError::Truncated {
                have: bytes.len(),
                need: 0,
            });
        };
        assert_eq!(frame_len, bytes.len());
        assert_eq!(header.kind, FrameKind::Events);
        let records = Records::parse(header.kind, body)?;
        records
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                assert_eq!(
                    bytes.as_ptr() as usize % ARCHIVE_ALIGN,
                    0,
                    "records are aligned"
                );
                let archived = access_record::<ArchivedEvent>(index as u32, bytes)?;
                Ok(rkyv::deserialize::<Event, rkyv::rancor::Error>(archived).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_frame_round_trips() {
        let events = vec![
            claim(1, "short"),
            claim(2, "a much longer secret code than eight bytes"),
        ];
        let bytes = events_frame(&events);
        assert_eq!(decode_events(&bytes).unwrap(), events);
    }

    #[test]
    fn an_empty_map_request_round_trips() {
        let mut builder = FrameBuilder::new();
        builder
            .single::<Event>(FrameKind::MapRequest, 0, None)
            .unwrap();
        let Decoded::Frame { header, body, .. } = decode_frame(builder.bytes()).unwrap() else {
            panic!("expected a frame");
        };
        assert_eq!(header.kind, FrameKind::MapRequest);
        assert_eq!(Records::parse(header.kind, body).unwrap().count(), 0);
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let bytes = events_frame(&[claim(1, "x")]);
        for cut in 0..bytes.len() {
            match decode_frame(&bytes[..cut]).unwrap() {
                Decoded::NeedMore { frame_len } => {
                    if cut >= FRAME_HEADER_BYTES {
                        assert_eq!(frame_len, Some(bytes.len()));
                    }
                }
                Decoded::Frame { .. } => panic!("a frame cut at {cut} decoded"),
            }
            if cut > 0 {
                assert!(matches!(
                    check_stream_end(&bytes[..cut]),
                    Err(FrameError::Truncated { .. })
                ));
            }
        }
    }

    #[test]
    fn a_receive_buffer_reassembles_frames_split_anywhere() {
        let mut stream = Vec::new();
        for seq in 0..50 {
            stream.extend_from_slice(&events_frame(&[claim(seq, "code")]));
        }
        let big = vec![claim(99, &"y".repeat(60)); 900];
        stream.extend_from_slice(&events_frame(&big));
        for chunk in [1usize, 7, 100, 4096, 70_000] {
            let mut input = ReceiveBuffer::new();
            let mut frames = 0;
            let mut expected_len = None;
            let mut fed = 0;
            while fed < stream.len() {
                let spare = input.spare(expected_len);
                let take = chunk.min(spare.len()).min(stream.len() - fed);
                spare[..take].copy_from_slice(&stream[fed..fed + take]);
                input.filled(take);
                fed += take;
                loop {
                    match decode_frame(input.pending()).unwrap() {
                        Decoded::NeedMore { frame_len } => {
                            expected_len = frame_len;
                            break;
                        }
                        Decoded::Frame {
                            body, frame_len, ..
                        } => {
                            assert_eq!(body.as_ptr() as usize % ARCHIVE_ALIGN, 0);
                            input.consume(frame_len);
                            frames += 1;
                        }
                    }
                }
            }
            assert_eq!(frames, 51, "chunks of {chunk}");
            assert!(input.pending().is_empty());
        }
    }

    #[test]
    fn garbage_is_bad_magic_at_once() {
        assert!(matches!(
            decode_frame(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::BadMagic { .. })
        ));
        assert!(matches!(
            decode_frame(b"X"),
            Err(FrameError::BadMagic { .. })
        ));
        // A whole header's worth of garbage takes the one-word compare; it names what it found.
        let request = b"GET / HTTP/1.1\r\nHost: trove.example\r\n\r\n";
        assert!(request.len() >= FRAME_HEADER_BYTES);
        assert_eq!(
            decode_frame(request),
            Err(FrameError::BadMagic { found: *b"GET " })
        );
        let mut almost = events_frame(&[claim(1, "x")]);
        almost[3] ^= 1;
        assert!(matches!(
            decode_frame(&almost),
            Err(FrameError::BadMagic { .. })
        ));
    }

    /// A body of `count` records of 16 bytes each, with its trailer: the lengths, the count and
    /// the zero padding in front of them.
    fn body_of_records(count: u32) -> Vec<u8> {
        let lengths_bytes = 4 * (count as usize + 1);
        let mut body = vec![7u8; 16 * count as usize];
        body.resize(body.len() + align_up(lengths_bytes) - lengths_bytes, 0);
        for _ in 0..count {
            body.extend_from_slice(&16u32.to_le_bytes());
        }
        body.extend_from_slice(&count.to_le_bytes());
        body
    }

    #[test]
    fn any_nonzero_byte_of_the_trailer_padding_is_refused() {
        for count in 0..12u32 {
            let body = body_of_records(count);
            assert_eq!(
                Records::parse(FrameKind::Events, &body).map(|records| records.count()),
                Ok(count)
            );
            let trailer_start = body.len() - align_up(4 * (count as usize + 1));
            let padding_end = body.len() - 4 * (count as usize + 1);
            for at in trailer_start..padding_end {
                let mut bad = body.clone();
                bad[at] = 0x80;
                assert_eq!(
                    Records::parse(FrameKind::Events, &bad).map(|records| records.count()),
                    Err(FrameError::BadTrailer),
                    "{count} records, padding byte {at} set"
                );
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut bytes = events_frame(&[claim(1, "x")]);
        bytes[layout::BODY_LEN..layout::BODY_LEN + 4]
            .copy_from_slice(&(FRAME_BODY_BYTES_MAX as u32 + 16).to_le_bytes());
        let hash = xxh3_64(&bytes[..layout::HEADER_HASH]);
        bytes[layout::HEADER_HASH..FRAME_HEADER_BYTES].copy_from_slice(&hash.to_le_bytes());
        assert!(matches!(
            decode_frame(&bytes[..FRAME_HEADER_BYTES]),
            Err(FrameError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn a_corrupted_length_fails_the_header_checksum() {
        let mut bytes = events_frame(&[claim(1, "x")]);
        bytes[layout::BODY_LEN] ^= 0x10;
        assert_eq!(
            decode_frame(&bytes[..FRAME_HEADER_BYTES]),
            Err(FrameError::HeaderChecksum)
        );
    }

    #[test]
    fn a_wrong_version_is_named() {
        let mut bytes = events_frame(&[claim(1, "x")]);
        bytes[layout::VERSION] = 9;
        assert_eq!(
            decode_frame(&bytes),
            Err(FrameError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn a_record_that_is_not_an_event_is_an_invalid_archive() {
        let mut builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        // 64 bytes of 0xff: no valid `ArchivedEvent` (the kind tag is out of range).
        builder.push_archived(&[0xffu8; 64]).unwrap();
        builder.finish(0);
        match decode_events(builder.bytes()) {
            Err(FrameError::InvalidArchive { index: 0, reason }) => {
                assert_eq!(
                    reason,
                    "field of type EventKind has an unknown tag 255 (in a record of type Event)"
                )
            }
            other => panic!("expected an invalid archive, got {other:?}"),
        }
    }

    #[test]
    fn no_error_text_about_a_corrupted_record_holds_an_address() {
        let event = claim(1, "a claim code long enough to live out of line");
        let mut buf: AlignedVec = AlignedVec::new();
        let (start, len) = archive_aligned(&mut buf, &event).unwrap();
        let record = buf[start..start + len].to_vec();
        let mut invalid = 0;
        for at in 0..len {
            for value in [0x01u8, 0x80, 0xff] {
                let mut corrupted: AlignedVec = AlignedVec::new();
                corrupted.extend_from_slice(&record);
                corrupted[at] = value;
                if let Err(error) = access_record::<ArchivedEvent>(0, &corrupted) {
                    invalid += 1;
                    let text = error.to_string();
                    assert!(!text.contains("0x"), "byte {at} = {value}: {text}");
                    assert!(text.contains("(in a record of type Event)"), "{text}");
                }
            }
        }
        // Out-of-range pointers (whose rkyv text holds addresses) are among the cases.
        assert!(invalid > 10, "only {invalid} corruptions were invalid");
    }

    #[test]
    fn validating_the_rest_of_a_frame_skips_its_first_records_and_names_records_by_frame_index() {
        let bytes = events_frame(&[
            claim(1, "first"),
            claim(2, "a claim code long enough to live out of line"),
            claim(3, "third"),
        ]);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!("expected a frame");
        };
        let mut body: AlignedVec = {
            let mut aligned = AlignedVec::new();
            aligned.extend_from_slice(body);
            aligned
        };
        // Corrupt record 1 until bytecheck refuses it.
        let second = Records::parse(header.kind, &body)
            .unwrap()
            .iter()
            .nth(1)
            .unwrap();
        let start = second.as_ptr() as usize - body.as_ptr() as usize;
        let len = second.len();
        let corrupted = (start..start + len).find(|&at| {
            let mut candidate = body.clone();
            candidate[at] = 0xff;
            access_record::<ArchivedEvent>(1, &candidate[start..start + len]).is_err()
        });
        body[corrupted.expect("some byte of a claim invalidates it")] = 0xff;

        let records = Records::parse(header.kind, &body).unwrap();
        for first in [0, 1] {
            match ValidatedFrame::<ArchivedEvent>::validate_from(records, first) {
                Err(FrameError::InvalidArchive { index, .. }) => assert_eq!(index, 1),
                other => panic!("from {first}: expected record 1 invalid, got {other:?}"),
            }
        }
        let rest = ValidatedFrame::<ArchivedEvent>::validate_from(records, 2).unwrap();
        let seqs: Vec<u64> = rest
            .iter()
            .map(|e| e.get().client_seq.to_native())
            .collect();
        assert_eq!(seqs, [3]);
        assert!(
            ValidatedFrame::<ArchivedEvent>::validate_from(records, 7)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_oversized_record_is_not_encoded() {
        let mut builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        let huge = claim(1, &"x".repeat(EVENT_BYTES_MAX));
        assert!(matches!(
            builder.push(&huge),
            Err(EncodeError::RecordTooLarge { .. })
        ));
        builder.push(&claim(2, "ok")).unwrap();
        builder.finish(0);
        assert_eq!(
            decode_events(builder.bytes()).unwrap(),
            vec![claim(2, "ok")]
        );
    }

    #[test]
    fn error_frames_carry_code_and_message() {
        let mut builder = FrameBuilder::new();
        builder.error(3, &FrameError::BodyChecksum);
        let Decoded::Frame { header, body, .. } = decode_frame(builder.bytes()).unwrap() else {
            panic!("expected a frame");
        };
        assert_eq!(header.kind, FrameKind::Error);
        let records = Records::parse(header.kind, body).unwrap();
        let record = records.iter().next().unwrap();
        let message =
            access_record::<crate::core::message::ArchivedErrorMessage>(0, record).unwrap();
        assert_eq!(message.code, FrameError::BodyChecksum.code());
        assert!(message.message.as_str().contains("checksum"));
    }

    #[test]
    fn an_archived_event_reads_in_place() {
        let bytes = events_frame(&[claim(4, "gold")]);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!()
        };
        let records = Records::parse(header.kind, body).unwrap();
        let event = access_record::<ArchivedEvent>(0, records.iter().next().unwrap()).unwrap();
        assert_eq!(event.client_seq, 4);
        match &event.kind {
            ArchivedEventKind::Claim { treasure, code } => {
                assert_eq!(treasure.get(), TreasureId(3));
                assert_eq!(code.as_str(), "gold");
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }

    fn arb_position() -> impl Strategy<Value = Position> {
        (any::<i32>(), any::<i32>()).prop_map(|(lat_e7, lon_e7)| Position { lat_e7, lon_e7 })
    }

    fn arb_hunt_spec() -> impl Strategy<Value = HuntSpec> {
        let waypoint = (arb_position(), any::<u32>(), any::<u32>()).prop_map(
            |(position, radius_m, points)| WaypointSpec {
                position,
                radius_m,
                points,
            },
        );
        let treasure = (any::<u64>(), any::<u32>())
            .prop_map(|(code_hash, points)| TreasureSpec { code_hash, points });
        (
            prop::collection::vec(waypoint, 0..6),
            prop::collection::vec(treasure, 0..6),
        )
            .prop_map(|(waypoints, treasures)| HuntSpec {
                waypoints,
                treasures,
            })
    }

    /// Every kind of event; `kind` picks one (0 to [`EVENT_KINDS`] - 1).
    fn arb_event_kind(kind: usize) -> BoxedStrategy<EventKind> {
        match kind {
            0 => arb_hunt_spec().prop_map(EventKind::CreateHunt).boxed(),
            1 => Just(EventKind::Join).boxed(),
            2 => arb_position()
                .prop_map(|position| EventKind::CheckIn { position })
                .boxed(),
            3 => (any::<u32>(), ".{0,40}")
                .prop_map(|(treasure, code)| EventKind::Claim {
                    treasure: TreasureId(treasure),
                    code,
                })
                .boxed(),
            _ => any::<u16>()
                .prop_map(|top_k| EventKind::Leaderboard { top_k })
                .boxed(),
        }
    }

    const EVENT_KINDS: usize = 5;

    fn arb_event_of(kind: BoxedStrategy<EventKind>) -> impl Strategy<Value = Event> {
        let ids = (any::<u64>(), any::<u64>(), any::<u64>());
        (ids, any::<u64>(), any::<u64>(), kind).prop_map(
            |((hunt, player, client_session), client_seq, client_ts, kind)| Event {
                hunt: HuntId(hunt),
                player: PlayerId(player),
                client_session,
                client_seq,
                client_ts,
                kind,
            },
        )
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (0..EVENT_KINDS).prop_flat_map(|kind| arb_event_of(arb_event_kind(kind)))
    }

    /// A frame's worth of events, all of one kind (any kind).
    fn arb_events_of_one_kind() -> impl Strategy<Value = Vec<Event>> {
        (0..EVENT_KINDS)
            .prop_flat_map(|kind| prop::collection::vec(arb_event_of(arb_event_kind(kind)), 1..20))
    }

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        let entry = (any::<u64>(), any::<u32>()).prop_map(|(player, score)| LeaderboardEntry {
            player: PlayerId(player),
            score,
        });
        prop_oneof![
            any::<u32>().prop_map(|score| Outcome::Accepted { score }),
            Just(Outcome::Rejected {
                reason: RejectReason::WrongCode
            }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(points, score)| Outcome::Claimed { points, score }),
            any::<u64>().prop_map(|winner| Outcome::AlreadyClaimed {
                winner: PlayerId(winner)
            }),
            prop::collection::vec(entry, 0..10)
                .prop_map(|entries| Outcome::Leaderboard { entries }),
            Just(Outcome::Busy),
            Just(Outcome::Error {
                error: EventError::ShuttingDown
            }),
            any::<u32>().prop_map(|partition| Outcome::Unavailable { partition }),
        ]
    }

    /// A single node's map (node 0, "the host you reached me at"), every owner serving.
    fn arb_map_message() -> impl Strategy<Value = PartitionMapMessage> {
        (0u32..=10, 1usize..=8).prop_flat_map(|(partition_bits, shards)| {
            (
                any::<u32>(),
                prop::collection::vec(0..shards as u16, 1usize << partition_bits),
                prop::collection::vec(any::<u16>(), shards),
            )
                .prop_map(|(epoch, owners, shard_ports)| PartitionMapMessage {
                    epoch,
                    answering_node: 0,
                    owners: owners
                        .into_iter()
                        .map(|shard| MapOwner {
                            node: 0,
                            shard,
                            serving: true,
                        })
                        .collect(),
                    nodes: vec![MapNode {
                        node: 0,
                        host: String::new(),
                        shard_ports,
                    }],
                })
        })
    }

    /// Rewrites the checksums of a frame whose body was changed, so that the header and body
    /// checks pass and the body's records are what gets parsed and validated.
    fn reseal(frame: &mut [u8]) {
        let body_hash = xxh3_64(&frame[FRAME_HEADER_BYTES..]);
        frame[layout::BODY_HASH..layout::BODY_HASH + 8].copy_from_slice(&body_hash.to_le_bytes());
        let header_hash = xxh3_64(&frame[..layout::HEADER_HASH]);
        frame[layout::HEADER_HASH..FRAME_HEADER_BYTES].copy_from_slice(&header_hash.to_le_bytes());
    }

    /// Validates a resealed events frame; every record of a frame that validates must read
    /// back as an event. Panics only on a codec bug.
    fn validate_fuzzed(frame: &[u8]) -> Result<Vec<Event>, FrameError> {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(frame);
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(&aligned) else {
            panic!("a resealed frame passes its checksums");
        };
        let frame = ValidatedFrame::<ArchivedEvent>::validate(header.kind, body)?;
        Ok(frame
            .iter()
            .map(|record| rkyv::deserialize::<Event, rkyv::rancor::Error>(record.get()).unwrap())
            .collect())
    }

    #[test]
    fn a_validated_frame_reads_every_record_in_place() {
        let events = vec![claim(1, "a"), claim(2, "bb"), claim(3, "ccc")];
        let bytes = events_frame(&events);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!("expected a frame");
        };
        let frame = ValidatedFrame::<ArchivedEvent>::validate(header.kind, body).unwrap();
        assert_eq!(frame.len(), 3);
        let mut seqs = Vec::new();
        for record in frame.iter() {
            assert!(body.as_ptr_range().contains(&record.bytes().as_ptr()));
            seqs.push(record.get().client_seq.to_native());
        }
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn one_bad_record_refuses_the_whole_frame() {
        let mut builder = FrameBuilder::new();
        builder.begin(FrameKind::Events);
        builder.push(&claim(1, "fine")).unwrap();
        builder.push_archived(&[0xffu8; 64]).unwrap();
        builder.finish(0);
        let Decoded::Frame { header, body, .. } = decode_frame(builder.bytes()).unwrap() else {
            panic!("expected a frame");
        };
        match ValidatedFrame::<ArchivedEvent>::validate(header.kind, body) {
            Err(FrameError::InvalidArchive { index: 1, .. }) => {}
            other => panic!("expected record 1 to be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_misaligned_record_is_refused_not_read() {
        let bytes = events_frame(&[claim(1, "x")]);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!("expected a frame");
        };
        let record = Records::parse(header.kind, body)
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0u8; 8]);
        shifted.extend_from_slice(record);
        let result = ValidatedArchive::<ArchivedEvent>::validate(0, &shifted[8..]);
        assert!(
            matches!(&result, Err(FrameError::InvalidArchive { reason, .. }) if reason.contains("aligned")),
            "{result:?}"
        );
    }

    /// The frame's alignment is checked once, for all its records: a body that is not 16-byte
    /// aligned is refused at its first record to be validated, whole or from an index on.
    #[test]
    fn a_misaligned_frame_body_is_refused_not_read() {
        let bytes = events_frame(&[claim(1, "x"), claim(2, "y"), claim(3, "z")]);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!("expected a frame");
        };
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0u8; 8]);
        shifted.extend_from_slice(body);
        let body = &shifted[8..];
        let records = Records::parse(header.kind, body).unwrap();
        for first in [0, 2] {
            match ValidatedFrame::<ArchivedEvent>::validate_from(records, first) {
                Err(FrameError::InvalidArchive { index, reason }) => {
                    assert_eq!(index, first);
                    assert!(reason.contains("aligned"), "{reason}");
                }
                other => panic!("from {first}: expected a refusal, got {other:?}"),
            }
        }
        assert!(
            ValidatedFrame::<ArchivedEvent>::validate_from(records, 3)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn validated_archives_hold_copies_and_values_and_stay_aligned() {
        let bytes = events_frame(&[claim(1, "copied"), claim(2, "also copied")]);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!("expected a frame");
        };
        let frame = ValidatedFrame::<ArchivedEvent>::validate(header.kind, body).unwrap();
        let mut pack = ValidatedArchives::<ArchivedEvent>::default();
        for record in frame.iter() {
            pack.push(record);
        }
        let made_here = pack.push_value(&claim(3, "archived here")).unwrap();
        assert_eq!(made_here, 2);
        assert_eq!(pack.len(), 3);
        let mut codes = Vec::new();
        for archive in pack.iter() {
            assert_eq!(archive.bytes().as_ptr() as usize % ARCHIVE_ALIGN, 0);
            match &archive.get().kind {
                ArchivedEventKind::Claim { code, .. } => codes.push(code.as_str().to_owned()),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        assert_eq!(codes, ["copied", "also copied", "archived here"]);
        // A copy of a copy is still readable: batches are moved and re-packed between cores.
        let mut repacked = ValidatedArchives::<ArchivedEvent>::default();
        repacked.push(pack.get(1));
        assert_eq!(repacked.get(0).get().client_seq, 2);
        pack.clear();
        assert!(pack.is_empty());
    }

    #[test]
    fn an_owned_validated_frame_reads_like_a_borrowed_one() {
        let bytes = events_frame(&[claim(8, "owned")]);
        let Decoded::Frame { header, body, .. } = decode_frame(&bytes).unwrap() else {
            panic!("expected a frame");
        };
        let mut owned = AlignedVec::new();
        owned.extend_from_slice(body);
        let frame = ValidatedFrameBuf::<ArchivedEvent>::validate(header.kind, owned).unwrap();
        let seqs: Vec<u64> = frame
            .frame()
            .iter()
            .map(|record| record.get().client_seq.to_native())
            .collect();
        assert_eq!(seqs, [8]);
        let mut bad = AlignedVec::new();
        bad.extend_from_slice(&[0u8; 32]);
        bad[28..32].copy_from_slice(&1u32.to_le_bytes());
        assert!(ValidatedFrameBuf::<ArchivedEvent>::validate(FrameKind::Events, bad).is_err());
    }

    #[test]
    fn reseal_makes_a_changed_body_pass_the_checksums() {
        // The fuzz tests below rely on it: without it they would test the checksum only.
        let mut bytes = events_frame(&[claim(1, "x")]);
        let last = bytes.len() - 1;
        bytes[FRAME_HEADER_BYTES] ^= 1;
        assert_eq!(decode_frame(&bytes), Err(FrameError::BodyChecksum));
        reseal(&mut bytes);
        assert!(matches!(decode_frame(&bytes), Ok(Decoded::Frame { .. })));
        bytes[last] ^= 0x80;
        reseal(&mut bytes);
        assert!(matches!(
            validate_fuzzed(&bytes),
            Err(FrameError::TooManyRecords { .. })
        ));
    }

    proptest! {
        #[test]
        fn codec_round_trips(events in prop::collection::vec(arb_event(), 0..40)) {
            let bytes = events_frame(&events);
            prop_assert_eq!(decode_events(&bytes).unwrap(), events);
        }

        #[test]
        fn every_kind_of_event_round_trips(events in arb_events_of_one_kind()) {
            // Frames of one kind each, so that no kind hides behind another in a mixed frame.
            let bytes = events_frame(&events);
            prop_assert_eq!(validate_fuzzed(&bytes).unwrap(), events);
        }

        #[test]
        fn replies_round_trip(
            replies in prop::collection::vec(
                (any::<u64>(), any::<u64>(), arb_outcome()).prop_map(|(client_seq, client_ts, outcome)| Reply {
                    client_seq,
                    client_ts,
                    outcome,
                }),
                0..30,
            ),
        ) {
            let mut builder = FrameBuilder::new();
            builder.begin(FrameKind::Replies);
            for reply in &replies {
                builder.push(reply).unwrap();
            }
            builder.finish(1);
            let Decoded::Frame { header, body, .. } = decode_frame(builder.bytes()).unwrap() else {
                panic!("expected a frame");
            };
            let frame = ValidatedFrame::<ArchivedReply>::validate(header.kind, body).unwrap();
            let decoded: Vec<Reply> = frame
                .iter()
                .map(|record| rkyv::deserialize::<Reply, rkyv::rancor::Error>(record.get()).unwrap())
                .collect();
            prop_assert_eq!(decoded, replies);
        }

        #[test]
        fn partition_maps_round_trip(message in arb_map_message()) {
            let mut builder = FrameBuilder::new();
            builder.single(FrameKind::MapReply, message.epoch, Some(&message)).unwrap();
            let Decoded::Frame { header, body, .. } = decode_frame(builder.bytes()).unwrap() else {
                panic!("expected a frame");
            };
            prop_assert_eq!(header.epoch, message.epoch);
            let frame = ValidatedFrame::<ArchivedPartitionMapMessage>::validate(header.kind, body).unwrap();
            prop_assert_eq!(frame.len(), 1);
            let archived = frame.first().unwrap().get();
            let map = PartitionMap::from_message(archived).unwrap();
            prop_assert_eq!(map.epoch().get(), message.epoch);
            let ports = &message.nodes[0].shard_ports;
            prop_assert_eq!(&map.node_address(NodeId(0)).unwrap().shard_ports, ports);
            prop_assert_eq!(map.to_message(NodeId(0), ports), message);
        }

        #[test]
        fn every_corrupted_byte_is_rejected(
            events in prop::collection::vec(arb_event(), 1..8),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = events_frame(&events);
            let at = position.index(bytes.len());
            bytes[at] ^= flip;
            prop_assert!(decode_events(&bytes).is_err(), "a flip at byte {} went unnoticed", at);
        }

        #[test]
        fn every_truncation_is_incomplete(
            events in prop::collection::vec(arb_event(), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = events_frame(&events);
            let cut = cut.index(bytes.len());
            let incomplete = matches!(decode_frame(&bytes[..cut]), Ok(Decoded::NeedMore { .. }));
            prop_assert!(incomplete);
            prop_assert!(check_stream_end(&bytes[..cut]).is_err() || cut == 0);
        }

        #[test]
        fn every_oversized_length_is_rejected(excess in 1u32..1 << 30) {
            let mut bytes = events_frame(&[claim(1, "x")]);
            let body_len = (FRAME_BODY_BYTES_MAX as u32).saturating_add(excess);
            bytes[layout::BODY_LEN..layout::BODY_LEN + 4].copy_from_slice(&body_len.to_le_bytes());
            let hash = xxh3_64(&bytes[..layout::HEADER_HASH]);
            bytes[layout::HEADER_HASH..FRAME_HEADER_BYTES].copy_from_slice(&hash.to_le_bytes());
            let rejected = matches!(
                decode_frame(&bytes),
                Err(FrameError::BodyTooLarge { .. }) | Err(FrameError::BodyMisaligned { .. })
            );
            prop_assert!(rejected);
        }

        #[test]
        fn random_bytes_never_pass_as_a_frame(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = FRAME_MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            for input in [&framed, &bytes] {
                let decoded = decode_frame(input);
                prop_assert!(!matches!(decoded, Ok(Decoded::Frame { .. })), "{:?}", decoded);
            }
        }

        /// Bodies fuzzed under a valid header: bytes of one kind of event overwritten at
        /// random, checksums recomputed so that the records themselves are parsed and
        /// validated. Whatever validation accepts must read back as events.
        #[test]
        fn fuzzed_bodies_under_a_valid_header_are_refused_or_read(
            events in arb_events_of_one_kind(),
            writes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        ) {
            let mut bytes = events_frame(&events);
            let body_len = bytes.len() - FRAME_HEADER_BYTES;
            for (at, value) in &writes {
                bytes[FRAME_HEADER_BYTES + at.index(body_len)] = *value;
            }
            reseal(&mut bytes);
            // What validation accepts must be events that encode and read back the same.
            if let Ok(read) = validate_fuzzed(&bytes) {
                prop_assert_eq!(validate_fuzzed(&events_frame(&read)).unwrap(), read);
            }
        }

        /// The records alone replaced by random bytes of the same lengths, trailer intact:
        /// every record reaches bytecheck.
        #[test]
        fn random_records_under_a_valid_trailer_are_refused_or_read(
            events in arb_events_of_one_kind(),
            noise in prop::collection::vec(any::<u8>(), 64..2048),
        ) {
            let mut bytes = events_frame(&events);
            let body_len = bytes.len() - FRAME_HEADER_BYTES;
            let records_len = body_len - align_up(4 * (events.len() + 1));
            for (offset, byte) in (FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + records_len).enumerate() {
                bytes[byte] = noise[offset % noise.len()];
            }
            reseal(&mut bytes);
            match validate_fuzzed(&bytes) {
                Ok(read) => prop_assert_eq!(validate_fuzzed(&events_frame(&read)).unwrap(), read),
                Err(FrameError::InvalidArchive { .. }) => {}
                Err(other) => prop_assert!(false, "the layout was intact, yet: {}", other),
            }
        }
    }
}
