//! Every limit trove has, in one place.
//!
//! TigerBeetle's rule: put a limit on everything. Every queue, table and buffer in trove is
//! bounded by a constant from this file, named `*_max` (units and qualifiers last), and the
//! worst-case memory of a node is written below as a sum with one reason per term, tied to the
//! limits by `const` assertions. A limit that is configurable at run time has its hard ceiling
//! here; configuration may lower it, never raise it.
//!
//! This module is the innermost layer: it depends on nothing.

// ---------------------------------------------------------------------------------------------
// Wire format (see `core::codec`).
// ---------------------------------------------------------------------------------------------

/// The four bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 4] = *b"TROV";
/// The wire version this build speaks. A frame with another version is rejected.
/// 2: the partition map names each owner's node and where every node is reached.
/// 3: events carry the client's session (`Event::client_session`), replies may say `Duplicate`.
/// 4: replies may say `Unavailable { partition }` (was `Error { OwnerUnavailable }`, no partition).
pub const FRAME_VERSION: u8 = 4;
/// Size of the fixed frame header. A multiple of [`ARCHIVE_ALIGN`] so that bodies that start
/// right after a header in an aligned buffer are themselves aligned.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Every rkyv archive on the wire starts at a multiple of this, relative to an aligned buffer.
pub const ARCHIVE_ALIGN: usize = 16;
/// Largest frame body a peer may send. Bounds every receive buffer.
pub const FRAME_BODY_BYTES_MAX: usize = 128 * 1024;
/// Largest frame, header included.
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX;
/// Most records (events, replies) one frame may carry.
pub const FRAME_RECORDS_MAX: usize = 4096;
/// Largest archived event. A `CreateHunt` with every waypoint and treasure fits well inside.
pub const EVENT_BYTES_MAX: usize = 4096;
/// Size of an archived event's fixed part (`ArchivedEvent`: hunt, player, client session,
/// seq and time stamp 8 each, the kind 20, padding): a check-in or a join is this and nothing
/// more, one cache line; a claim adds its code. Checked by a test.
pub const EVENT_FIXED_BYTES: usize = 64;
/// Largest archived reply: a leaderboard of `LEADERBOARD_TOP_K_MAX` entries fits inside.
pub const REPLY_BYTES_MAX: usize = 512;
/// Size of an archived reply without a leaderboard (`Busy`, `Accepted`…); checked by a test.
pub const REPLY_FIXED_BYTES: usize = 32;
/// Longest secret code a claim may carry.
pub const CLAIM_CODE_BYTES_MAX: usize = 64;
/// Longest human-readable message in an error frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;
/// Largest record of an authentication frame (a challenge, a response, an acceptance: two
/// 32-byte nonces and a 32-byte MAC at most).
pub const AUTH_RECORD_BYTES_MAX: usize = 128;

// ---------------------------------------------------------------------------------------------
// Authentication (see `core::auth`).
// ---------------------------------------------------------------------------------------------

/// Shortest shared secret a node or client accepts: 16 bytes, 128 bits if chosen at random.
pub const AUTH_SECRET_BYTES_MIN: usize = 16;
/// Longest shared secret a node or client reads from its secret file.
pub const AUTH_SECRET_BYTES_MAX: usize = 4096;
/// How long a new connection has to complete the authentication handshake before the node
/// closes it; it holds one of the shard's connection slots meanwhile.
pub const AUTH_HANDSHAKE_MS_MAX: u64 = 5_000;

// ---------------------------------------------------------------------------------------------
// TLS (see `net::tls`, `client::tls`).
// ---------------------------------------------------------------------------------------------

/// How long a new connection has to complete the TLS handshake before the node closes it
/// (the idle timeout and an eviction end it sooner); it holds one of the shard's connection
/// slots meanwhile. The authentication handshake, when configured, then has its own
/// `AUTH_HANDSHAKE_MS_MAX`.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 5_000;
/// Ciphertext a TLS connection reads from its socket at once: one whole record (16 KiB of
/// plaintext plus its header and the largest expansion a TLS 1.3 cipher adds) fits.
pub const TLS_CIPHERTEXT_READ_BYTES_MAX: usize = 16 * 1024 + 256;
/// Encrypted records a TLS session queues before its writer must send them (rustls' buffer
/// limit); a write of more plaintext is encrypted and sent in steps of this size.
pub const TLS_SEND_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Largest PEM file (`--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-client-ca`) read: a chain of
/// certificates is a few KiB; anything this large is the wrong file.
pub const TLS_PEM_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest certificate chain (DER, every certificate of `--tls-cert`) a node sends in its
/// handshake; a longer one is refused at start. It bounds the handshake flight, which rustls
/// queues whatever its send buffer limit.
pub const TLS_CERT_CHAIN_BYTES_MAX: usize = 64 * 1024;
/// What a TLS 1.3 record adds to its plaintext, at most (header, content type, tag, with room
/// to spare): the same allowance as [`TLS_CIPHERTEXT_READ_BYTES_MAX`] makes.
pub const TLS_RECORD_EXPANSION_BYTES_MAX: usize = 256;
/// The server's handshake flight beside its certificate chain (hello, extensions, each
/// certificate's framing, the signature, finished, records' expansion): an estimate with room
/// for a chain of many small certificates and a 4096-bit RSA signature.
pub const TLS_HANDSHAKE_FLIGHT_EXTRA_BYTES_MAX: usize = 8 * 1024;
/// Largest handshake message rustls 0.23 accepts (its `MAX_HANDSHAKE_SIZE`): bounds what it
/// buffers of the client's flight, and the client certificate chain a session keeps.
pub const RUSTLS_HANDSHAKE_MESSAGE_BYTES_MAX: usize = 0xffff;
/// rustls' buffer of ciphertext not yet processed: a handshake message being joined plus the
/// 4 KiB it reads at once (after the handshake, one record of 18 KiB).
pub const RUSTLS_DEFRAMER_BYTES_MAX: usize = RUSTLS_HANDSHAKE_MESSAGE_BYTES_MAX + 4096;
/// rustls' decrypted plaintext not yet read: it takes no more ciphertext past 16 KiB (its
/// `DEFAULT_RECEIVED_PLAINTEXT_LIMIT`), checked before a record is added: one record more.
pub const RUSTLS_RECEIVED_PLAINTEXT_BYTES_MAX: usize = 2 * 16 * 1024;
/// A server session's own state: the `rustls::ServerConnection` (its `size_of` is checked
/// below) and its boxed handshake state, keys and cipher contexts. An estimate.
pub const TLS_SESSION_STATE_BYTES_MAX: usize = 8 * 1024;
/// Ciphertext a session queues at once, and so what a writer takes in one go: its send buffer
/// of application data with each 16 KiB record's expansion, or the handshake flight.
pub const TLS_OUTPUT_BYTES_MAX: usize = {
    let data = TLS_SEND_BUFFER_BYTES_MAX
        + (TLS_SEND_BUFFER_BYTES_MAX / (16 * 1024) + 1) * TLS_RECORD_EXPANSION_BYTES_MAX;
    let flight = TLS_CERT_CHAIN_BYTES_MAX + TLS_HANDSHAKE_FLIGHT_EXTRA_BYTES_MAX;
    if data > flight { data } else { flight }
};
/// Worst-case bytes of one TLS connection on a node, beyond its plaintext buffers (counted in
/// `SHARD_IO_BYTES_MAX` with or without TLS).
pub const TLS_CONNECTION_BYTES_MAX: usize = TLS_CIPHERTEXT_READ_BYTES_MAX // the reader's ciphertext buffer (`net::tls`, exactly this)
    + 2 * TLS_OUTPUT_BYTES_MAX // the writer's ciphertext buffer: a doubling Vec, kept between writes
    + TLS_OUTPUT_BYTES_MAX // rustls' queue of the same records until the writer takes them
    + TLS_SEND_BUFFER_BYTES_MAX // plaintext written before the handshake ends (rustls holds it, same limit)
    + RUSTLS_DEFRAMER_BYTES_MAX // ciphertext rustls has not processed yet
    + RUSTLS_RECEIVED_PLAINTEXT_BYTES_MAX // plaintext decrypted and not read yet
    + RUSTLS_HANDSHAKE_MESSAGE_BYTES_MAX // the client's certificate chain, kept by the session
    + TLS_SESSION_STATE_BYTES_MAX; // the session itself

const _: () = assert!(size_of::<rustls::ServerConnection>() <= TLS_SESSION_STATE_BYTES_MAX / 2);
// An outgoing link is a TLS client (`net::link`): its session fits the same estimate.
const _: () = assert!(size_of::<rustls::ClientConnection>() <= TLS_SESSION_STATE_BYTES_MAX / 2);
/// Lines a shard prints a minute about connections it refused in a TLS or secret handshake
/// (`net::transport`): whom and why, so that the node an unwelcome link reaches says so;
/// past this many they are counted and the count is said with the next line, so a flood of
/// bad connections cannot flood the node's output.
pub const REFUSAL_LINES_PER_MINUTE_MAX: u32 = 10;

// ---------------------------------------------------------------------------------------------
// Partitions, shards, connections.
// ---------------------------------------------------------------------------------------------

/// Partition count of a node unless configured otherwise.
pub const PARTITIONS_DEFAULT: u32 = 1024;
/// Most partitions a node may have (its owner table must fit one map frame).
pub const PARTITIONS_MAX: u32 = 16_384;
/// Highest CPU number a CPU list may name: the kernel's own ceiling (NR_CPUS with MAXSMP is 8192).
pub const CPU_ID_MAX: usize = 8191;
/// Most shards (cores) a node may run.
pub const SHARDS_MAX: usize = 256;
/// Most open client connections one shard serves; one more is answered with an error frame.
pub const CONNECTIONS_PER_SHARD_MAX: usize = 128;
/// Connections one source address may hold open at one shard unless configured otherwise
/// (`trove node --connections-per-source-max`): half the shard's slots, so that one host
/// (or one runaway client) cannot take every slot, while a load generator on loopback still
/// gets most of them.
pub const CONNECTIONS_PER_SOURCE_DEFAULT: usize = CONNECTIONS_PER_SHARD_MAX / 2;
/// Default TCP port every shard accepts on (SO_REUSEPORT).
pub const PORT_DEFAULT: u16 = 7700;
/// Connections the kernel queues on a listening socket before the shard accepts them.
pub const LISTEN_BACKLOG_MAX: i32 = 1024;

// ---------------------------------------------------------------------------------------------
// Treasure-hunt state (see `core::hunt`). A full table is a `Rejected` reason, never growth.
// ---------------------------------------------------------------------------------------------

/// Most hunts one partition holds.
pub const HUNTS_PER_PARTITION_MAX: usize = 16;
/// Most players who may join one hunt.
pub const PLAYERS_PER_HUNT_MAX: usize = 1024;
/// Most waypoints in one hunt (a player's visits are a `u64` bit set).
pub const WAYPOINTS_PER_HUNT_MAX: usize = 64;
/// Most treasures in one hunt.
pub const TREASURES_PER_HUNT_MAX: usize = 64;
/// Longest leaderboard a hunt keeps and a query may ask for.
pub const LEADERBOARD_TOP_K_MAX: usize = 16;
/// Largest radius a waypoint may have, in metres (a hunt is a city, not a continent).
pub const WAYPOINT_RADIUS_M_MAX: u32 = 100_000;
/// Wrong codes one player may present for one treasure; further claims of it by that player
/// are `Rejected(TooManyAttempts)`. Generous to a player who mistypes, and a brute force then
/// needs a new player (a `Join`, in a hunt of at most `PLAYERS_PER_HUNT_MAX`) every 32 guesses.
pub const CLAIM_WRONG_CODES_MAX: usize = 32;
/// Most entries of a hunt's player table: it is kept at most half full, so lookups stay short.
pub const PLAYER_TABLE_ENTRIES_MAX: usize = 2 * PLAYERS_PER_HUNT_MAX;
/// Entries of a new hunt's player table; it doubles as players join.
pub const PLAYER_TABLE_ENTRIES_MIN: usize = 16;
/// Client sessions one partition remembers for de-duplicating retries (`core::partition_sessions`).
/// A new session past it evicts the one whose last event is oldest in the partition's own
/// count of applied events; a retry of an evicted session's event is applied again. Enough for
/// every connection of a busy bench (64 per shard) to keep its place.
pub const SESSIONS_PER_PARTITION_MAX: usize = 64;
/// Most recent events of one session whose outcome class a partition remembers: a retry of
/// one of them is answered `Duplicate` with its class; an older one `DuplicateUnknown`. It
/// covers a client's unanswered events in one partition at a crash when it is no smaller than
/// what the client keeps in flight towards that partition.
pub const SESSION_WINDOW_EVENTS_MAX: usize = 32;

// ---------------------------------------------------------------------------------------------
// Back-pressure budgets (see `core::credit`). Configuration may lower them.
// ---------------------------------------------------------------------------------------------

/// Events a shard accepts from its sockets before their replies are written back.
pub const SHARD_EVENTS_INFLIGHT_MAX: u32 = 16_384;
/// Event bytes a shard accepts from its sockets before their replies are written back.
pub const SHARD_BYTES_INFLIGHT_MAX: u32 = 8 * 1024 * 1024;
/// Events one connection may have in flight, so one greedy client cannot hold a whole shard.
pub const CONNECTION_EVENTS_INFLIGHT_MAX: u32 = 8192;
/// The fewest connections that, together, may hold a whole shard budget (events and bytes)
/// with the default shares: a few clients that never read their replies hold their shares
/// and no more, and every other connection is still served.
pub const CONNECTION_SHARES_PER_SHARD_MIN: u32 = 8;
/// Events one connection may have in flight unless configured otherwise: its share.
pub const CONNECTION_EVENTS_INFLIGHT_DEFAULT: u32 =
    SHARD_EVENTS_INFLIGHT_MAX / CONNECTION_SHARES_PER_SHARD_MIN;
/// Events a receiving shard holds for all other shards together; each source shard gets an
/// equal share, so the mesh's memory grows with the shard count, not with its square.
pub const MESH_EVENTS_INFLIGHT_MAX: u32 = 16_384;
/// Event bytes a receiving shard holds for all other shards together, shared out like
/// [`MESH_EVENTS_INFLIGHT_MAX`].
pub const MESH_BYTES_INFLIGHT_MAX: u32 = 4 * 1024 * 1024;
/// Events in one cross-shard batch; a batch is flushed when full or at the end of a loop pass.
pub const MESH_BATCH_EVENTS_MAX: usize = 256;
/// Batches one cross-shard channel holds. Senders wait for room; the credits above already
/// bound what the batches can contain.
pub const MESH_CHANNEL_BATCHES_MAX: usize = 64;

/// Events one shard may have in flight at one shard of another node: its share of that
/// shard's link budget. Enforced at the sender (it waits for credit, as for the mesh) and
/// checked again at the receiver, which closes a link whose sender goes past it. A link
/// carries at most this many events per round trip: 1024 is four full batches, so that the
/// receiver applies one while the next ones cross, and 2 M events/s over a link round trip of
/// up to 500 µs (`benches/link_hop.rs` measured 200–370 µs at p50 with 384, where the credit
/// held the link to 0.5–1 M/s).
pub const LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX: u32 = 1024;
/// Event bytes one shard may have in flight at one shard of another node, like
/// [`LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX`]: 256 bytes an event on average (the workload's
/// events are 64 bytes archived), so the event count is what binds.
pub const LINK_BYTES_INFLIGHT_PER_SOURCE_MAX: u32 = 256 * 1024;
/// Events (or replies) in one link frame; a link's batch is handed to its writer when full or
/// at the end of a loop pass.
pub const LINK_BATCH_EVENTS_MAX: usize = 256;
/// Capacity a link's frame buffer keeps once its frames are handed to the writer (the
/// `LinkEvents` frames of an outgoing link, the `LinkReplies` of an inbound one), so that the
/// next batch does not allocate and grow it again; a buffer grown larger is released. Within
/// the memory sum's terms for links, which count each link's bytes in flight twice.
pub const LINK_BUFFER_RETAINED_BYTES_MAX: usize = 64 * 1024;
/// Outgoing links one shard keeps, one per shard of another node it forwards to (enough for
/// a cluster of 16 one-shard nodes within the memory sum). Events for a shard past this many
/// are answered `Moved` (the owner hint) instead of forwarded.
pub const LINKS_PER_SHARD_MAX: usize = 15;
/// Incoming links one shard accepts, one per shard of another node that forwards to it; one
/// more is refused at its handshake.
pub const LINK_SOURCES_PER_SHARD_MAX: usize = 15;
/// Largest token record of a link frame (`core::message::LinkTokens`): a u64 per event of a
/// full batch, and the vector's own 8 bytes, aligned.
pub const LINK_TOKENS_RECORD_BYTES_MAX: usize = 8 * LINK_BATCH_EVENTS_MAX + 16;
/// Largest record of a link handshake frame (`LinkHello`, `LinkAccepted`): a cluster name of
/// `CLUSTER_NAME_BYTES_MAX` and a few integers.
pub const LINK_HELLO_BYTES_MAX: usize = 256;
/// Live partition moves (`core::shard::moves`): a source shard streams one partition at a
/// time to each target; it starts at most this many outgoing moves at once (a placement that
/// asks more is refused per move with `MoveStep::Refused`).
pub const MOVES_OUTGOING_MAX: usize = 8;
/// Moves one target shard receives at once (snapshot or tail still arriving, not handed off
/// yet); one more is refused with a reason on the link.
pub const MOVES_INCOMING_MAX: usize = 4;
/// Moves one target shard stages at once, counting those handed off and waiting for this
/// node to see their flip (which lags the controller's write on a busy machine, while the
/// controller already starts the next moves); one more is refused with a reason.
pub const MOVES_STAGED_MAX: usize = 16;
/// Tail events a source has streamed that its target has not acknowledged yet: past this the
/// source stops applying the partition's events and holds them instead of growing the tail.
pub const MOVE_TAIL_EVENTS_MAX: u64 = 4_096;
/// Tail bytes (archived events) streamed and not acknowledged, like [`MOVE_TAIL_EVENTS_MAX`].
pub const MOVE_TAIL_BYTES_MAX: u64 = 1024 * 1024;
/// The target is caught up when it acknowledged all but at most this many of the tail events
/// the source applied: the source then hands off, and answers the partition's next events only
/// once the target acknowledges them.
pub const MOVE_CATCHUP_EVENTS_MAX: u64 = 64;
/// Bytes of a partition snapshot in one `MoveSnapshot` frame (the snapshot is split into as
/// many frames as it needs; its whole size is bounded by `SNAPSHOT_ARCHIVE_BYTES_MAX`).
pub const MOVE_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Largest record of a `MoveSnapshot` frame: a chunk and its few integers.
pub const MOVE_CHUNK_RECORD_BYTES_MAX: usize = MOVE_CHUNK_BYTES_MAX + 64;
/// Largest `MoveAck` record: a few integers and a refusal of at most
/// `ERROR_MESSAGE_BYTES_MAX` bytes.
pub const MOVE_ACK_RECORD_BYTES_MAX: usize = ERROR_MESSAGE_BYTES_MAX + 96;
/// Move reports (`MoveReport`) a shard keeps for its control thread until taken; the runtime
/// drains them every loop pass, and a move makes at most two.
pub const MOVE_REPORTS_QUEUED_MAX: usize = 2 * MOVES_OUTGOING_MAX + 8;
/// How long a shard waits for a link to connect and its peer to accept the hello, in ms;
/// past that the link has failed (its events are answered `Unavailable`).
pub const LINK_CONNECT_MS_MAX: u64 = 2_000;
/// First wait before a failed link is tried again, in ms; it doubles up to
/// [`LINK_RETRY_MS_MAX`] while the link keeps failing. Events for it meanwhile are answered
/// `Unavailable` at once.
pub const LINK_RETRY_MS_MIN: u64 = 50;
/// Longest wait before a failed link is tried again, in ms.
pub const LINK_RETRY_MS_MAX: u64 = 1_000;
/// What one outgoing link keeps per event awaiting its reply
/// (`core::shard::links::LinkPending` in a hash map slot: token, batch entry, reply fields,
/// the map's control byte).
pub const LINK_PENDING_ENTRY_BYTES: usize = 72;

// ---------------------------------------------------------------------------------------------
// Buffers of the network layer.
// ---------------------------------------------------------------------------------------------

/// Bytes a connection asks the kernel for in one read.
pub const READ_CHUNK_BYTES: usize = 32 * 1024;
/// A connection's receive buffer: one whole frame plus one read chunk.
pub const READ_BUFFER_BYTES_MAX: usize = FRAME_BYTES_MAX + READ_CHUNK_BYTES;
/// Reply bytes a connection may have waiting for its socket before it stops reading: what
/// credit does not bound (`Busy` answers in fail-fast mode, map replies) is bounded by this.
pub const CONNECTION_BACKLOG_BYTES_MAX: usize = 64 * 1024;
/// Capacity a connection's reply buffer keeps between bursts; anything larger is released.
pub const WRITE_BUFFER_RETAINED_BYTES_MAX: usize = 64 * 1024;
/// io_uring buffer memory glommio registers per shard (glommio's minimum).
pub const SHARD_IO_MEMORY_BYTES: usize = 64 * 1024;
/// RLIMIT_MEMLOCK glommio insists on before it creates one executor.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

/// Reply frames a client's reader threads queue for the caller before they stop reading.
pub const CLIENT_REPLY_FRAMES_QUEUED_MAX: usize = 256;
/// How long `trove bench --cluster` waits for its local cluster's placement to settle on every
/// node before it gives up.
pub const BENCH_CLUSTER_SETTLE_MS_MAX: u64 = 60_000;
/// Most connections one shard-aware client opens: one per (node, shard) that owns partitions.
/// Each has a reader thread in the blocking client.
pub const CLIENT_LINKS_MAX: usize = 1_024;
/// Events a cluster-aware client (`client::connect_cluster`) keeps unanswered: each is kept
/// (as an owned event) until its reply, so that one answered `Moved` can be sent again.
pub const CLUSTER_CLIENT_INFLIGHT_MAX: usize = 65_536;
/// Times a cluster-aware client sends one event again after `Moved` before it hands the
/// `Moved` reply to its caller.
pub const CLUSTER_CLIENT_RESENDS_MAX: u32 = 4;
/// How long a cluster-aware client waits for the newer map a `Moved` reply announced before
/// it sends the moved events again by the map it has.
pub const CLUSTER_CLIENT_MAP_WAIT_MS_MAX: u64 = 2_000;

// ---------------------------------------------------------------------------------------------
// The load generator (`trove bench`).
// ---------------------------------------------------------------------------------------------

/// Most hunts a benchmark workload may create (its Zipf table is 8 bytes a hunt).
pub const WORKLOAD_HUNTS_MAX: u64 = 1_000_000;
/// Longest measured phase of a benchmark run: one interval histogram per second is kept.
pub const BENCH_DURATION_S_MAX: u64 = 600;
/// Most load-generator threads (connections) one run may use.
pub const BENCH_CONNECTIONS_MAX: usize = 256;
/// Events one generator connection may have in flight in a closed-loop run.
pub const BENCH_WINDOW_MAX: u32 = 65_536;
/// Bytes a generator connection buffers for a socket that does not take them; past this it
/// stops making events and falls behind schedule (which the lag histogram shows).
pub const BENCH_SEND_BACKLOG_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most steps a rate sweep runs (rising steps and the bisection after the knee together).
pub const SWEEP_STEPS_MAX: usize = 24;
/// Largest latency a histogram records: anything slower is clamped to it.
pub const BENCH_LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Bits of an event's 64-bit timestamp that carry its intended send time, in nanoseconds since
/// the run started: 2^40 ns is about 18 minutes, which bounds a run's warm-up plus duration.
pub const BENCH_TS_INTENDED_NS_BITS: u32 = 40;
/// Bits of an event's timestamp that carry how late it was made, in microseconds (clamped):
/// 2^24 µs is about 16 s.
pub const BENCH_TS_LAG_US_BITS: u32 = 24;
/// Longest warm-up plus measured phase of one benchmark run, in seconds: every intended send
/// time must fit [`BENCH_TS_INTENDED_NS_BITS`].
pub const BENCH_SCHEDULE_S_MAX: u64 = 1_000;

const _: () = assert!(BENCH_TS_INTENDED_NS_BITS + BENCH_TS_LAG_US_BITS == u64::BITS);
const _: () = assert!(BENCH_SCHEDULE_S_MAX * 1_000_000_000 < 1 << BENCH_TS_INTENDED_NS_BITS);
const _: () = assert!(BENCH_DURATION_S_MAX <= BENCH_SCHEDULE_S_MAX);
/// Longest the benchmark's set-up waits for a node that neither takes its events nor answers
/// them before it gives up with a message (a shard that stopped reading, say).
pub const BENCH_STALL_MS_MAX: u64 = 10_000;

/// Samples a second per CPU that `trove bench --profile` asks of `perf record` (an odd rate,
/// so sampling does not beat in time with periodic work).
pub const PROFILE_SAMPLE_HZ_DEFAULT: u32 = 999;
/// Longest `trove bench --profile` waits for `perf record` to write its data once asked to
/// stop, before it kills it and says so.
pub const PROFILE_PERF_STOP_MS_MAX: u64 = 30_000;

// ---------------------------------------------------------------------------------------------
// The write-ahead log (see `store`).
// ---------------------------------------------------------------------------------------------

/// The eight bytes every log segment starts with.
pub const WAL_MAGIC: [u8; 8] = *b"TROVWAL\0";
/// The log format this build writes and reads. A segment of another version is refused.
/// 2: records hold events with their client session (`Event::client_session`).
pub const WAL_FORMAT_VERSION: u32 = 2;
/// Size of one pre-allocated log segment file.
pub const WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The next segment is prepared (zero-filled) once the current one holds this much: early
/// enough that the writer rarely waits for it, late enough that the space it takes ahead is
/// held for half a segment's worth of log at most.
pub const WAL_PREPARE_AFTER_BYTES: u64 = WAL_SEGMENT_BYTES / 2;
/// Size of each write that zero-fills a new segment before the log uses it (one in flight
/// per shard, beside the log's own writes).
pub const WAL_ZERO_FILL_WRITE_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(WAL_SEGMENT_BYTES % WAL_ZERO_FILL_WRITE_BYTES_MAX as u64 == 0);
/// The segment header's share of a segment: one block of the largest alignment supported, so
/// the first record starts aligned whatever the device's block size.
pub const WAL_SEGMENT_HEADER_BYTES: usize = 4096;
/// The largest direct-I/O alignment the log supports; a device asking for more is refused.
pub const WAL_BLOCK_BYTES_MAX: usize = WAL_SEGMENT_HEADER_BYTES;
/// The fixed part of a log record: length, partition, sequence number, checksum, marker.
pub const WAL_RECORD_HEADER_BYTES: usize = 32;
/// Replies that need no log record (refusals) held behind replies waiting for their sync;
/// past this the shard stops reading until the sync completes. Credit bounds the others.
pub const DURABILITY_HELD_UNCREDITED_MAX: usize = 4096;
/// In async mode, events a shard answers before their records are synced; past this, replies
/// wait for the sync as in sync mode, so a slow disk still pushes back and a crash loses at
/// most this many answered events per shard.
pub const DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX: u64 = 4096;

/// Log records a shard holds that are not durable yet, at most: every event its sockets'
/// credit lets in, every event peers forward under their mesh credit (in sync mode an event's
/// credit stays held until its record is durable; in async mode too once past the next term),
/// and in async mode the events answered before their sync, whose credit is back.
pub const WAL_UNSYNCED_EVENTS_MAX: usize = SHARD_EVENTS_INFLIGHT_MAX as usize
    + MESH_EVENTS_INFLIGHT_MAX as usize
    + DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX as usize;
/// Their payload bytes: the same budgets in bytes, and a whole event for each answered one.
pub const WAL_UNSYNCED_PAYLOAD_BYTES_MAX: usize = SHARD_BYTES_INFLIGHT_MAX as usize
    + MESH_BYTES_INFLIGHT_MAX as usize
    + DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX as usize * EVENT_BYTES_MAX;
/// What the group-commit machine (`store::commit`) holds unwritten, at most: those records
/// framed (a header each, padded to 16 bytes), and for two segments (a batch may cross into
/// the next) a header and the partial block written again.
pub const WAL_UNWRITTEN_BYTES_MAX: usize = WAL_UNSYNCED_PAYLOAD_BYTES_MAX
    + WAL_UNSYNCED_EVENTS_MAX * (WAL_RECORD_HEADER_BYTES + ARCHIVE_ALIGN)
    + 2 * (WAL_SEGMENT_HEADER_BYTES + WAL_BLOCK_BYTES_MAX);
// Unwritten records span two segments at most (the memory sum counts two headers).
const _: () = assert!(WAL_UNWRITTEN_BYTES_MAX <= WAL_SEGMENT_BYTES as usize);

/// A record queued in the core for the log task (`core::shard::durability::QueuedRecord`):
/// LSN 8, partition 4, offset 4, length 4, padded; checked by a const assert there.
pub const DURABILITY_QUEUED_RECORD_BYTES: usize = 24;
/// A reply held for its sync, with the LSN it waits for (`(u64, HeldReply)` in
/// `core::shard::durability`); checked by a const assert there. A leaderboard's entries are on
/// the heap besides, no more than its archive: `REPLY_BYTES_MAX`.
pub const DURABILITY_HELD_REPLY_BYTES_MAX: usize = 128;
/// Worst-case bytes of one shard's write-ahead log buffers and its log-sync stage (with a data
/// dir).
pub const WAL_SHARD_BYTES_MAX: usize = 2 * WAL_UNSYNCED_PAYLOAD_BYTES_MAX // the core's queue of payloads: a doubling Vec, kept at its peak
    + 2 * WAL_UNSYNCED_EVENTS_MAX * DURABILITY_QUEUED_RECORD_BYTES // its index of records, likewise
    + 2 * WAL_UNWRITTEN_BYTES_MAX // the group-commit tails: doubling Vecs, drained in place
    + WAL_UNWRITTEN_BYTES_MAX + WAL_BLOCK_BYTES_MAX // the aligned buffer of the one write in flight
    + WAL_ZERO_FILL_WRITE_BYTES_MAX // the buffer of the zero-fill write in flight
    + 2 * (WAL_UNSYNCED_EVENTS_MAX + DURABILITY_HELD_UNCREDITED_MAX) // replies held for a sync: a doubling VecDeque
        * (DURABILITY_HELD_REPLY_BYTES_MAX + REPLY_BYTES_MAX)
    + LOG_STAGE_HISTOGRAMS_PER_SHARD_MAX * STAGE_HISTOGRAM_BYTES_MAX // the log-sync and snapshot-pause stage histograms, and a copy of each
    + SNAPSHOT_IN_FLIGHT_BYTES_MAX; // the partition snapshot being taken and written

const _: () = assert!(WAL_SEGMENT_HEADER_BYTES % WAL_BLOCK_BYTES_MAX == 0);
const _: () = assert!(
    WAL_SEGMENT_BYTES as usize
        >= WAL_SEGMENT_HEADER_BYTES
            + WAL_RECORD_HEADER_BYTES
            + EVENT_BYTES_MAX
            + WAL_BLOCK_BYTES_MAX
);

// ---------------------------------------------------------------------------------------------
// Snapshots, truncation and the log's disk bound (see `store::snapfile`, `store::retention`).
// ---------------------------------------------------------------------------------------------

/// The eight bytes every snapshot file starts with.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TROVSNAP";
/// The snapshot format this build writes and reads. A snapshot of another version is refused.
/// 2: a partition's snapshot holds its table of client sessions (`core::partition_sessions`).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// A snapshot file's header: one block of the largest alignment supported, so the archive
/// after it starts aligned.
pub const SNAPSHOT_HEADER_BYTES: usize = WAL_BLOCK_BYTES_MAX;
/// One player in a snapshot's archive (`core::snapshot::PlayerSnapshot`): id 8, visited 8,
/// score 4, the wrong-code option and its vector 12, padding and the counters' alignment; the
/// counters besides.
pub const SNAPSHOT_PLAYER_BYTES: usize = 48;
/// One hunt's fixed part in a snapshot's archive: slot, id, organiser, four vectors.
pub const SNAPSHOT_HUNT_BYTES: usize = 64;
/// Largest archive of one partition's state: every hunt full, every player with wrong-code
/// counters; what a snapshot file may hold beyond its header. A unit test builds such a
/// partition and checks its archive fits.
pub const SNAPSHOT_ARCHIVE_BYTES_MAX: usize = 64
    + HUNTS_PER_PARTITION_MAX
        * (SNAPSHOT_HUNT_BYTES
            + PLAYERS_PER_HUNT_MAX * (SNAPSHOT_PLAYER_BYTES + TREASURES_PER_HUNT_MAX) // players
            + WAYPOINTS_PER_HUNT_MAX * 16 // waypoints: position, radius, points
            + TREASURES_PER_HUNT_MAX * 24 // treasures: code hash, points, winner
            + LEADERBOARD_TOP_K_MAX * 16) // the leaderboard
    + 16 // the session table: its applied-event count and vector
    + SESSIONS_PER_PARTITION_MAX * SNAPSHOT_SESSION_BYTES;
/// One client session in a snapshot's archive (`core::snapshot::SessionSnapshot`): id, last
/// use, highest and forgotten seqs 32, cursor 4, two vectors 16, padding, and its window of
/// seqs (8 each) and outcome classes (2 each).
pub const SNAPSHOT_SESSION_BYTES: usize = 64 + SESSION_WINDOW_EVENTS_MAX * 10;
/// Snapshots kept per partition, at most: the newest, and the one before it to fall back to
/// when the newest is damaged. The log is kept from the older one on.
pub const SNAPSHOT_GENERATIONS_MAX: usize = 2;
/// Start a snapshot round after this much log was written since the last one (`trove node
/// --snapshot-every-mb`).
pub const SNAPSHOT_EVERY_MB_DEFAULT: u64 = 32;
/// At most one segment of log between rounds: truncation frees whole segments.
pub const SNAPSHOT_EVERY_MB_MAX: u64 = WAL_SEGMENT_BYTES / (1024 * 1024);
/// Start a snapshot round this long after the last one when anything changed (`trove node
/// --snapshot-every-s`).
pub const SNAPSHOT_EVERY_S_DEFAULT: u64 = 60;
/// The longest interval between rounds a node accepts: an hour.
pub const SNAPSHOT_EVERY_S_MAX: u64 = 3_600;
/// Longest a shard's snapshot task waits before it looks again whether a round is due, in
/// milliseconds.
pub const SNAPSHOT_CHECK_INTERVAL_MS_MAX: u64 = 50;
/// A node's log and snapshots together, on disk, by default (`trove node --log-disk-max-mb`):
/// shared equally by its shards.
pub const LOG_DISK_MB_DEFAULT: u64 = 16 * 1024;
/// The largest disk bound a node accepts: 16 TiB.
pub const LOG_DISK_MB_MAX: u64 = 16 * 1024 * 1024;
/// Each shard's share of the bound must hold the segment being written, the one before it
/// (kept until the snapshots after it are durable) and room for the next, with its snapshots.
pub const LOG_DISK_BYTES_PER_SHARD_MIN: u64 = 3 * WAL_SEGMENT_BYTES;

const _: () = assert!(LOG_DISK_MB_DEFAULT * 1024 * 1024 >= 8 * LOG_DISK_BYTES_PER_SHARD_MIN);

/// First wait before a shard retries a log write, segment allocation, sync or snapshot that
/// failed (ENOSPC, EIO), in ms; it doubles up to [`LOG_FAULT_RETRY_MS_MAX`] while the disk
/// keeps failing. Events the shard would apply meanwhile are answered `Unavailable`
/// (`DiskFull` or `DiskFailed`) at once.
pub const LOG_FAULT_RETRY_MS_MIN: u64 = 10;
/// Longest wait before a shard retries a failed log operation, in ms: how late, at most, a
/// shard notices that space came back.
pub const LOG_FAULT_RETRY_MS_MAX: u64 = 1_000;
const _: () =
    assert!(LOG_FAULT_RETRY_MS_MIN > 0 && LOG_FAULT_RETRY_MS_MIN <= LOG_FAULT_RETRY_MS_MAX);
/// How long a shard holds the replies waiting for records that an I/O error (EIO, not a full
/// disk) keeps from the disk, in ms: past it they are answered `OutcomeUnknown` (the record
/// may or may not be on disk) so that the refusals queued behind them reach their clients.
/// A full disk holds them until space returns: an operator can free space, a failed disk
/// rarely comes back.
pub const LOG_FAULT_HOLD_MS_MAX: u64 = 2_000;
/// How long a stopping shard waits for its log to be durable (a failed or hung disk) before it
/// gives up on it: replies still waiting are answered `OutcomeUnknown`, the shard says so in
/// one line and the node exits with `runtime::store::EXIT_LOG_NOT_CLOSED`. Shorter than the
/// connections' grace period, so that those answers still reach their clients.
pub const LOG_STOP_WAIT_MS_MAX: u64 = 2_000;

/// One partition's retention state in a shard's log task (`store::retention::PartitionLog`:
/// two generations and the last record seen); checked by a const assert there.
pub const RETENTION_PARTITION_BYTES: usize = 80;
/// Replaced snapshot files a shard keeps, emptied, to write its next snapshots into (an
/// unfinished `.snap.tmp` to recovery, which deletes them). Creating a file costs more than
/// writing it: on ext4 without a journal, a new inode is searched for past every one freed
/// in the last seconds, and a shard replaces hundreds of snapshot files a second.
pub const SNAPSHOT_SPARE_FILES_MAX: usize = 4;
/// Snapshot files one shard writes at once (its own partitions' and the partitions moved to
/// it, taking turns): `SNAPSHOT_IN_FLIGHT_BYTES_MAX` counts one.
pub const SNAPSHOT_WRITES_INFLIGHT_MAX: u64 = 1;
/// What one shard's snapshot in flight holds at its peak, at most: the partition's state as
/// plain values (every player's entry and its wrong-code counters on the heap, under twice the
/// archive's size), the archive in a doubling buffer, the file's bytes (header and archive)
/// in another, and the aligned write buffer of the file.
pub const SNAPSHOT_IN_FLIGHT_BYTES_MAX: usize = 2 * SNAPSHOT_ARCHIVE_BYTES_MAX // the values
    + 2 * SNAPSHOT_ARCHIVE_BYTES_MAX // the archive, a doubling AlignedVec
    + 2 * (SNAPSHOT_HEADER_BYTES + SNAPSHOT_ARCHIVE_BYTES_MAX) // the file's bytes, a growing Vec
    + SNAPSHOT_HEADER_BYTES + SNAPSHOT_ARCHIVE_BYTES_MAX + WAL_BLOCK_BYTES_MAX; // the DMA buffer

/// Worst-case bytes of one shard's log state that grow with the node's partitions: each
/// partition's retention state and its place in a snapshot round (a `u32` in a doubling
/// `VecDeque`).
pub const fn wal_partition_bytes_max(partitions: usize) -> usize {
    partitions * (RETENTION_PARTITION_BYTES + 2 * size_of::<u32>())
}

// ---------------------------------------------------------------------------------------------
// Time.
// ---------------------------------------------------------------------------------------------

/// Longest stage latency a shard's histograms record; anything slower is clamped to it.
pub const STAGE_LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Longest an idle shard may spin before it parks (`trove node --spin-before-park-us`).
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;
/// How long a closing connection keeps reading (and dropping) what its client still sends, so
/// that closing does not reset the connection under replies the client has yet to read.
pub const CONNECTION_LINGER_MS_MAX: u64 = 1_000;
/// How long a connection with nothing in flight may stay silent before it is closed, unless
/// configured otherwise (`trove node --idle-timeout-ms`). It also bounds how long a frame
/// may take to arrive once started: a half-sent frame holds no credit, so it is idle.
pub const CONNECTION_IDLE_MS_DEFAULT: u64 = 60_000;
/// Longest idle timeout a node may be configured with.
pub const CONNECTION_IDLE_MS_MAX: u64 = 3_600_000;
/// How long replies may wait for a socket that takes none of them before the connection is
/// closed and their credit returns, unless configured otherwise (`--write-stall-ms`).
pub const WRITE_STALL_MS_DEFAULT: u64 = 10_000;
/// Longest write-stall timeout a node may be configured with.
pub const WRITE_STALL_MS_MAX: u64 = 600_000;
/// How often a shard checks its connections' timeouts: the most a timeout may overshoot.
pub const TIMEOUT_CHECK_INTERVAL_MS_MAX: u64 = 100;
/// How long a frame may take to arrive whole once its first byte was read, unless configured
/// otherwise (`trove node --frame-arrival-ms`): a client that dribbles a frame (slowloris)
/// is closed after this, not after the idle timeout.
pub const FRAME_ARRIVAL_MS_DEFAULT: u64 = 10_000;
/// Longest frame-arrival time a node may be configured with.
pub const FRAME_ARRIVAL_MS_MAX: u64 = 600_000;
/// In `--fail-fast` mode, the longest an event may have waited in its socket (and receive
/// buffer) before it is read and dispatched, unless configured (`--shed-target-ms`): past it,
/// under a standing queue, the event is answered `Busy` (see `core::shard::shedding`).
pub const SHED_TARGET_MS_DEFAULT: u64 = 5;
/// Largest shedding target a node may be configured with.
pub const SHED_TARGET_MS_MAX: u64 = 10_000;
/// CoDel's interval: a queue whose events wait past the target for this long is a standing
/// queue (shed from then on); one that stays under the target for this long is drained (stop
/// shedding). Shorter waits past the target are a burst, absorbed up to this long.
pub const SHED_BURST_MS_MAX: u64 = 100;
/// Sojourn samples a connection's reader keeps (see `net::sojourn`): more only make the
/// measured wait tighter, fewer leave it a valid lower bound.
pub const SOJOURN_SAMPLES_MAX: usize = 32;
/// Bytes a stopping shard still reads from one connection, after its last whole frames, to
/// count the events that will not be applied (they are named in one error frame, never
/// answered one by one, so this costs no memory beyond the receive buffer).
pub const STOP_DRAIN_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A stopping shard counts what a connection still sends until the socket has been quiet
/// this long (or the grace period ends).
pub const STOP_DRAIN_WAIT_MS_MAX: u64 = 50;
/// How long the node tries to write the error frame that says why it closes a connection
/// (idle, evicted, a frame too slow) before it closes without it.
pub const CLOSE_NOTICE_MS_MAX: u64 = 100;
const _: () = assert!(SHED_TARGET_MS_DEFAULT < SHED_BURST_MS_MAX);
const _: () = assert!(SHED_TARGET_MS_DEFAULT <= SHED_TARGET_MS_MAX);
const _: () = assert!(FRAME_ARRIVAL_MS_DEFAULT <= FRAME_ARRIVAL_MS_MAX);
const _: () = assert!(CONNECTIONS_PER_SOURCE_DEFAULT >= 1);
const _: () = assert!(CONNECTIONS_PER_SOURCE_DEFAULT <= CONNECTIONS_PER_SHARD_MAX);
/// How long a stopping node waits for work in flight to drain before it closes anyway.
pub const SHUTDOWN_GRACE_MS_MAX: u64 = 5_000;
const _: () = assert!(LOG_STOP_WAIT_MS_MAX < SHUTDOWN_GRACE_MS_MAX);
/// How long a node waits for its shards to exit after the stop signal, in ms: the grace
/// period, then closing what is left; past it the process exits (`EXIT_STOP_HUNG`).
pub const SHARDS_STOP_MS_MAX: u64 = 2 * SHUTDOWN_GRACE_MS_MAX;
/// A shard's task that runs this long without yielding (one poll) counts as a stall
/// (`runtime::stall`).
pub const STALL_THRESHOLD_MS_DEFAULT: u64 = 10;
/// Largest stall threshold a configuration may set.
pub const STALL_THRESHOLD_MS_MAX: u64 = 60_000;

// ---------------------------------------------------------------------------------------------
// Worst-case memory of a node, as a sum. Estimates of container overhead are stated as such.
// ---------------------------------------------------------------------------------------------

/// Bytes the allocator adds to every allocation: glibc's malloc keeps an 8-byte header and
/// rounds each chunk up to 16 bytes. An estimate, stated as such.
pub const ALLOCATION_OVERHEAD_BYTES: usize = 16;
/// One entry of a hunt's player table (`core::hunt::PlayerEntry`): id 8, visited set 8,
/// score 4, slot 4.
pub const PLAYER_ENTRY_BYTES: usize = 24;
/// A player's reference to its wrong-code counters (`Option<Box<[u8]>>`, a slice pointer):
/// pointer 8, length 8.
pub const WRONG_CODES_REF_BYTES: usize = 16;
/// A player's wrong-code counters, allocated at its first wrong code: one byte per treasure.
pub const PLAYER_COLD_BYTES_MAX: usize = TREASURES_PER_HUNT_MAX + ALLOCATION_OVERHEAD_BYTES;
/// A waypoint (`core::hunt::Waypoint`): position 8, radius 4, points 4, two cosine bounds 16.
pub const WAYPOINT_BYTES: usize = 32;
/// A waypoint's band (`core::hunt::LatitudeBand`): latitude 4, longitude 4, longitude gap 4,
/// latitude gap 2, waypoint index 1, padding 1.
pub const LATITUDE_BAND_BYTES: usize = 16;
/// A treasure (`core::hunt::Treasure`): code hash 8, winner 8, points 4, won 1, padding 3.
pub const TREASURE_BYTES: usize = 24;
/// A leaderboard entry (`core::message::LeaderboardEntry`): player 8, score 4, padding 4.
pub const LEADERBOARD_ENTRY_BYTES: usize = 16;
/// A hunt's own fields and table headers (`core::hunt::Hunt`, aligned to 64), plus the 64
/// bytes an aligned allocation may waste to reach its alignment.
pub const HUNT_BYTES_MAX: usize = 256;
/// A partition's hunt slot (`core::hunt::HuntSlot`): id 8, pointer 8.
pub const HUNT_SLOT_BYTES: usize = 16;
/// A shard's entry for one partition (`Option<core::hunt::PartitionState>`): the hunt slots
/// inline, the partition id and the occupied set 8, the session table's pointer 8, the events
/// applied counter 8 (`trove_partition_events_applied_total`), the option's tag 8. Every shard
/// has one per partition of the node, `None` for the partitions it does not serve.
pub const PARTITION_SLOT_BYTES_MAX: usize = HUNTS_PER_PARTITION_MAX * HUNT_SLOT_BYTES + 32;
/// One partition's owner in a shard's copy of the placement (`core::partition::Owner`).
pub const PLACEMENT_OWNER_BYTES_MAX: usize = 24;
/// Longest host a node may advertise (`--advertise`), in bytes: a DNS name's limit.
pub const NODE_HOST_BYTES_MAX: usize = 253;
/// One node's address in a shard's copy of the placement (`core::partition::NodeAddress`): the
/// struct, its host and its shard ports at their limits, and the allocator's share of both.
pub const PLACEMENT_NODE_BYTES_MAX: usize =
    64 + NODE_HOST_BYTES_MAX + SHARDS_MAX * size_of::<u16>() + 2 * ALLOCATION_OVERHEAD_BYTES;
/// Where a shard sends one partition's events now (`core::shard::Route`, in `ShardCore`'s
/// route table): a tag and a node and shard, or the partition when the shard serves it.
pub const PARTITION_ROUTE_BYTES: usize = 8;

/// Allocations of one hunt: the hunt itself, its player table, bands, waypoints, treasures,
/// leaderboard and wrong-code references.
const HUNT_ALLOCATIONS: usize = 7;

/// Worst-case bytes of one hunt's state. A `Vec` that doubles ends at the next power of two
/// of its limit.
pub const HUNT_STATE_BYTES_MAX: usize = HUNT_BYTES_MAX // the hunt's own fields
    + PLAYER_TABLE_ENTRIES_MAX * PLAYER_ENTRY_BYTES // the player table, at most half full
    + PLAYERS_PER_HUNT_MAX.next_power_of_two() * WRONG_CODES_REF_BYTES // a doubling Vec, one reference per player
    + PLAYERS_PER_HUNT_MAX * PLAYER_COLD_BYTES_MAX // every player's wrong-code counters
    + WAYPOINTS_PER_HUNT_MAX * (WAYPOINT_BYTES + LATITUDE_BAND_BYTES) // waypoints and their bands
    + TREASURES_PER_HUNT_MAX * TREASURE_BYTES // treasures
    + LEADERBOARD_TOP_K_MAX.next_power_of_two() * LEADERBOARD_ENTRY_BYTES // a doubling Vec
    + HUNT_ALLOCATIONS * ALLOCATION_OVERHEAD_BYTES; // the allocator's share of each

/// One session of a partition's session table (`core::partition_sessions::SessionEntry`):
/// its last use, highest and forgotten seqs 32, the window's length and cursor, padding to 64
/// (it is aligned to a cache line), then its window of seqs beside their outcome classes (16
/// each, padded). A `const` assert there holds it.
pub const SESSION_ENTRY_BYTES: usize = 64 + SESSION_WINDOW_EVENTS_MAX * 16;
/// Allocations of a session table: the table itself (boxed, so a partition without sessions
/// pays a pointer), its ids and its entries.
const SESSION_TABLE_ALLOCATIONS: usize = 3;
/// Worst-case bytes of one partition's session table (`core::partition_sessions`): the
/// table's own fields, then each session's id (scanned apart) and entry. Both vectors double
/// up to `SESSIONS_PER_PARTITION_MAX`, a power of two, and end there.
pub const SESSION_TABLE_BYTES_MAX: usize = 64
    + SESSIONS_PER_PARTITION_MAX * (8 + SESSION_ENTRY_BYTES)
    + SESSION_TABLE_ALLOCATIONS * ALLOCATION_OVERHEAD_BYTES;
const _: () = assert!(SESSIONS_PER_PARTITION_MAX.is_power_of_two());

/// Worst-case bytes of the hunts and client sessions of one partition (its slots live in the
/// shards' partition tables, [`PARTITION_SLOT_BYTES_MAX`]).
pub const PARTITION_STATE_BYTES_MAX: usize =
    HUNTS_PER_PARTITION_MAX * HUNT_STATE_BYTES_MAX + SESSION_TABLE_BYTES_MAX;

/// While a table doubles, its old array and the new one are both alive: one hunt's player
/// table and wrong-code references at most per shard, since a shard applies one event at a time.
pub const HUNT_GROWTH_SLACK_BYTES_MAX: usize = PLAYER_TABLE_ENTRIES_MAX / 2 * PLAYER_ENTRY_BYTES
    + PLAYERS_PER_HUNT_MAX.next_power_of_two() / 2 * WRONG_CODES_REF_BYTES;

/// Where one archive sits in a mesh batch (`core::shard::mesh::BatchEntry`): offset 4,
/// length 4, connection 8, credit 8, forwarding time 8.
pub const BATCH_ENTRY_BYTES: usize = 32;
/// One cross-shard batch (`core::shard::mesh::MeshBatch`) without its arrays: two archive
/// batches of a byte vector and an entry vector (24 each), the opening time and a flag.
pub const MESH_BATCH_BYTES: usize = 112;
/// What a batch costs beyond what it carries: the batch itself, the allocator's share of its
/// four arrays, and the four entries each entry vector starts with.
pub const MESH_BATCH_OVERHEAD_BYTES_MAX: usize =
    MESH_BATCH_BYTES + 4 * ALLOCATION_OVERHEAD_BYTES + 2 * 4 * BATCH_ENTRY_BYTES;
/// One of a shard's stage-latency HdrHistograms (`Histogram::new_with_bounds(1,
/// STAGE_LATENCY_NS_MAX, 3)`): its counters, 8 bytes each, and its fields, 221 280 bytes as
/// measured by a unit test (`core::shard::counters`), plus the allocator's share.
pub const STAGE_HISTOGRAM_BYTES_MAX: usize = 220 * 1024;
/// Stage histograms alive per shard, with or without a data dir: the shard's three (frame
/// dispatch, mesh round trip, link round trip), and a copy's three while its stats are taken
/// whole (the stop report). Metrics snapshots carry classic buckets, not these. The log
/// stages' (log sync, snapshot pause) are counted with the log
/// ([`LOG_STAGE_HISTOGRAMS_PER_SHARD_MAX`]).
pub const STAGE_HISTOGRAMS_PER_SHARD_MAX: usize = 3 * (1 + 1);
/// Log stage histograms alive per shard with a log (a data dir): log sync and snapshot pause,
/// the shard's and a copy's. A shard without a log allocates none
/// (`core::shard::StageLatencies`).
pub const LOG_STAGE_HISTOGRAMS_PER_SHARD_MAX: usize = 2 * (1 + 1);
/// Metrics snapshots alive per shard: one being taken, those queued to the housekeeping
/// thread, and the latest one the housekeeping thread keeps.
pub const METRICS_SNAPSHOTS_PER_SHARD_MAX: usize = 1 + METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX + 1;
/// One connection's state on its shard (`Option<core::shard::connections::Connection>`),
/// without its buffers.
pub const CONNECTION_STATE_BYTES_MAX: usize = 336;

/// Worst-case bytes of one shard's network and back-pressure buffers (not its hunt state). A
/// byte or entry vector that doubles holds up to twice what it carries: counted as `2 *`.
pub const SHARD_IO_BYTES_MAX: usize = CONNECTIONS_PER_SHARD_MAX * CONNECTION_STATE_BYTES_MAX // connection slots
    + CONNECTIONS_PER_SHARD_MAX * READ_BUFFER_BYTES_MAX // a receive buffer per connection
    + CONNECTIONS_PER_SHARD_MAX * 2 * WRITE_BUFFER_RETAINED_BYTES_MAX // two reply buffers per connection, kept between bursts
    + CONNECTIONS_PER_SHARD_MAX * 2 * (CONNECTION_BACKLOG_BYTES_MAX + FRAME_RECORDS_MAX * REPLY_FIXED_BYTES) // uncredited answers (Busy, maps): the backlog, plus one frame's worth past it
    + 2 * SHARD_EVENTS_INFLIGHT_MAX as usize * REPLY_BYTES_MAX // replies to every event in flight, waiting for their socket
    + 2 * MESH_BYTES_INFLIGHT_MAX as usize // events other shards forwarded here, waiting to be applied
    + 2 * MESH_EVENTS_INFLIGHT_MAX as usize * (ARCHIVE_ALIGN + BATCH_ENTRY_BYTES) // their alignment padding and batch entries
    + 2 * MESH_EVENTS_INFLIGHT_MAX as usize * (REPLY_BYTES_MAX + BATCH_ENTRY_BYTES) // replies to those, waiting to go back
    + 2 * MESH_EVENTS_INFLIGHT_MAX as usize * MESH_BATCH_OVERHEAD_BYTES_MAX // every event and reply alone in its batch
    + LINKS_PER_SHARD_MAX * 2 * (LINK_BYTES_INFLIGHT_PER_SOURCE_MAX as usize + LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX as usize * (ARCHIVE_ALIGN + 4 + LINK_PENDING_ENTRY_BYTES)) // events forwarded to other nodes: their frames and what waits for each reply
    + LINK_SOURCES_PER_SHARD_MAX * 2 * LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX as usize * (REPLY_BYTES_MAX + 8 + 4) // replies to other nodes' events, waiting for their link
    + STAGE_HISTOGRAMS_PER_SHARD_MAX * STAGE_HISTOGRAM_BYTES_MAX // the frame-dispatch, mesh and link stage histograms and a copy
    + METRICS_SNAPSHOTS_PER_SHARD_MAX * METRICS_SNAPSHOT_BYTES_MAX // metrics snapshots
    + HUNT_GROWTH_SLACK_BYTES_MAX // a player table doubling
    + SHARD_IO_MEMORY_BYTES; // glommio's registered io_uring buffers

/// One event held for its partition at a flip (`core::shard::moves::HeldEvent`), its archived
/// bytes apart. `core::shard::moves` asserts the type fits.
pub const MOVE_HELD_EVENT_BYTES: usize = 64;
/// One reply a move's source keeps back until its target has the event
/// (`core::shard::moves::GatedReply`), what the reply owns apart. `core::shard::moves` asserts
/// the type fits.
pub const MOVE_GATED_REPLY_BYTES: usize = 256;
/// Events a shard may hold admitted at once, whoever sent them: its clients' (the shard
/// budget), other shards' (the mesh budget) and other nodes' (each source's link share).
pub const SHARD_EVENTS_ADMITTED_MAX: usize = SHARD_EVENTS_INFLIGHT_MAX as usize
    + MESH_EVENTS_INFLIGHT_MAX as usize
    + LINK_SOURCES_PER_SHARD_MAX * LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX as usize;
/// Their archived bytes, likewise.
pub const SHARD_EVENT_BYTES_ADMITTED_MAX: usize = SHARD_BYTES_INFLIGHT_MAX as usize
    + MESH_BYTES_INFLIGHT_MAX as usize
    + LINK_SOURCES_PER_SHARD_MAX * LINK_BYTES_INFLIGHT_PER_SOURCE_MAX as usize;
/// A partition's snapshot as move frames: its archive cut into `MOVE_CHUNK_BYTES_MAX` pieces,
/// each in a frame of its own.
pub const MOVE_SNAPSHOT_FRAMES_BYTES_MAX: usize = SNAPSHOT_ARCHIVE_BYTES_MAX
    + SNAPSHOT_ARCHIVE_BYTES_MAX.div_ceil(MOVE_CHUNK_BYTES_MAX)
        * (FRAME_HEADER_BYTES + MOVE_CHUNK_RECORD_BYTES_MAX - MOVE_CHUNK_BYTES_MAX);
/// Worst-case bytes live moves hold at one shard of a cluster node, beyond the partitions'
/// state (counted wherever a partition lives, staged copies included). A vector that doubles
/// holds up to twice what it carries: counted as `2 *`.
pub const SHARD_MOVES_BYTES_MAX: usize = 2 * SNAPSHOT_ARCHIVE_BYTES_MAX // the archive of a partition being cut into pieces (one at a time)
    + MOVES_OUTGOING_MAX * 2 * 2 * (MOVE_SNAPSHOT_FRAMES_BYTES_MAX + MOVE_TAIL_BYTES_MAX as usize + FRAME_BODY_BYTES_MAX) // each outgoing move's frames not yet acknowledged (its snapshot, its tail up to the bound and a frame past it), in its stream and again in the link's write buffer
    + MOVES_STAGED_MAX * 2 * SNAPSHOT_ARCHIVE_BYTES_MAX // each staged move's snapshot as its pieces arrive
    + 2 * SHARD_EVENTS_ADMITTED_MAX * (MOVE_GATED_REPLY_BYTES + REPLY_BYTES_MAX) // every admitted event held at a flip (a copy, below) or its reply kept back, in doubling queues
    + SHARD_EVENT_BYTES_ADMITTED_MAX + SHARD_EVENTS_ADMITTED_MAX * (ARCHIVE_ALIGN + ALLOCATION_OVERHEAD_BYTES); // the held copies of their archives

/// One partition's entry in a shard's metrics report (`metrics::PartitionApplied`): the
/// partition 4, padding 4, the events applied 8.
pub const METRICS_PARTITION_ENTRY_BYTES: usize = 16;

/// Worst-case bytes of one shard's partition table and copy of the placement: every shard
/// has an entry for each of the node's partitions, and the address of each node the owners
/// name (at most one per partition, at most `CLUSTER_NODES_MAX`); and the per-partition
/// counts of its metrics reports alive at once, should it own every partition.
pub const fn shard_partition_table_bytes_max(partitions: usize) -> usize {
    let nodes = if partitions < CLUSTER_NODES_MAX {
        partitions
    } else {
        CLUSTER_NODES_MAX
    };
    partitions
        * (PARTITION_SLOT_BYTES_MAX
            + PLACEMENT_OWNER_BYTES_MAX
            + PARTITION_ROUTE_BYTES
            + METRICS_SNAPSHOTS_PER_SHARD_MAX * METRICS_PARTITION_ENTRY_BYTES)
        + nodes * PLACEMENT_NODE_BYTES_MAX
}

/// Worst-case resident bytes of a node, term by term: what `trove node` prints at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMemory {
    /// Every partition's hunts, wherever it lives.
    pub state_bytes: usize,
    /// Every shard's partition table and copy of the placement.
    pub tables_bytes: usize,
    /// Every shard's network, mesh and metrics buffers.
    pub buffers_bytes: usize,
    /// The slots of the mesh's channel rings: one channel per ordered pair of shards.
    pub mesh_rings_bytes: usize,
    /// Every shard's write-ahead log buffers and log-sync stage histograms: 0 without a data
    /// dir ([`NodeMemory::with_log`]).
    pub log_bytes: usize,
    /// Every connection's TLS buffers and session: 0 without TLS ([`NodeMemory::with_tls`]).
    pub tls_bytes: usize,
    /// Every shard's live moves (snapshots streamed and staged, events held at flips, replies
    /// kept back): 0 outside a cluster ([`NodeMemory::with_moves`]).
    pub moves_bytes: usize,
}

impl NodeMemory {
    /// The worst case of a node with `partitions` partitions and `shards` shards.
    pub const fn of(partitions: usize, shards: usize) -> NodeMemory {
        NodeMemory {
            state_bytes: partitions * PARTITION_STATE_BYTES_MAX,
            tables_bytes: shards * shard_partition_table_bytes_max(partitions),
            buffers_bytes: shards * SHARD_IO_BYTES_MAX,
            mesh_rings_bytes: shards * shards * MESH_CHANNEL_BATCHES_MAX * MESH_BATCH_BYTES,
            log_bytes: 0,
            tls_bytes: 0,
            moves_bytes: 0,
        }
    }

    /// Counts what live moves hold at `shards` shards (a cluster node).
    pub const fn with_moves(self, shards: usize) -> NodeMemory {
        NodeMemory {
            moves_bytes: shards * SHARD_MOVES_BYTES_MAX,
            ..self
        }
    }

    /// Counts the write-ahead log's buffers, log stages and snapshot state of `shards` shards
    /// serving `partitions` partitions (a node with a data dir).
    pub const fn with_log(self, shards: usize, partitions: usize) -> NodeMemory {
        NodeMemory {
            log_bytes: shards * (WAL_SHARD_BYTES_MAX + wal_partition_bytes_max(partitions)),
            ..self
        }
    }

    /// Counts the TLS buffers of every connection `shards` shards may hold (a node with TLS):
    /// clients' connections and, in a cluster, links to and from other nodes (which speak TLS
    /// too and hold no client slot once linked).
    pub const fn with_tls(self, shards: usize) -> NodeMemory {
        let connections =
            CONNECTIONS_PER_SHARD_MAX + LINKS_PER_SHARD_MAX + LINK_SOURCES_PER_SHARD_MAX;
        NodeMemory {
            tls_bytes: shards * connections * TLS_CONNECTION_BYTES_MAX,
            ..self
        }
    }

    pub const fn total_bytes(&self) -> usize {
        self.state_bytes
            + self.tables_bytes
            + self.buffers_bytes
            + self.mesh_rings_bytes
            + self.log_bytes
            + self.tls_bytes
            + self.moves_bytes
    }
}

/// Worst-case resident bytes of a node with `partitions` partitions and `shards` shards.
pub const fn node_memory_bytes_max(partitions: usize, shards: usize) -> usize {
    NodeMemory::of(partitions, shards).total_bytes()
}

// A link's share carries at least one event of the largest size.
const _: () = assert!(LINK_BYTES_INFLIGHT_PER_SOURCE_MAX as usize >= EVENT_BYTES_MAX);
// A link's retained frame buffer fits in what the memory sum counts for it.
const _: () =
    assert!(LINK_BUFFER_RETAINED_BYTES_MAX <= LINK_BYTES_INFLIGHT_PER_SOURCE_MAX as usize);

// The budgets must be able to carry at least one frame's worth of work, or a shard could wait
// forever for credit it can never get.
const _: () = assert!(SHARD_EVENTS_INFLIGHT_MAX as usize >= FRAME_RECORDS_MAX);
const _: () = assert!(SHARD_BYTES_INFLIGHT_MAX as usize >= FRAME_BODY_BYTES_MAX);
const _: () = assert!(CONNECTION_EVENTS_INFLIGHT_MAX as usize >= FRAME_RECORDS_MAX);
const _: () = assert!(CONNECTION_EVENTS_INFLIGHT_MAX <= SHARD_EVENTS_INFLIGHT_MAX);
const _: () = assert!(CONNECTION_EVENTS_INFLIGHT_DEFAULT <= CONNECTION_EVENTS_INFLIGHT_MAX);
// A default share still carries the bench's window of 1024 events in flight.
const _: () = assert!(CONNECTION_EVENTS_INFLIGHT_DEFAULT >= 1024);
const _: () = assert!(MESH_EVENTS_INFLIGHT_MAX as usize >= SHARDS_MAX);
const _: () = assert!(MESH_BYTES_INFLIGHT_MAX as usize >= SHARDS_MAX * EVENT_BYTES_MAX);
const _: () = assert!(FRAME_HEADER_BYTES % ARCHIVE_ALIGN == 0);
const _: () = assert!(FRAME_BODY_BYTES_MAX % ARCHIVE_ALIGN == 0);
const _: () = assert!(EVENT_BYTES_MAX <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(PARTITIONS_DEFAULT.is_power_of_two() && PARTITIONS_MAX.is_power_of_two());
const _: () = assert!(WAYPOINTS_PER_HUNT_MAX <= 64, "visits are a u64 bit set");
const _: () = assert!(
    HUNTS_PER_PARTITION_MAX <= 32,
    "occupied hunt slots are a u32 bit set"
);
const _: () = assert!(
    CLAIM_WRONG_CODES_MAX < u8::MAX as usize,
    "counters are bytes"
);
const _: () = assert!(
    PLAYER_TABLE_ENTRIES_MAX.is_power_of_two()
        && PLAYER_TABLE_ENTRIES_MIN.is_power_of_two()
        && PLAYER_TABLE_ENTRIES_MIN <= PLAYER_TABLE_ENTRIES_MAX
);
const _: () = assert!(
    PLAYER_TABLE_ENTRIES_MAX >= 2 * PLAYERS_PER_HUNT_MAX,
    "at most half full"
);
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);
// A default node (1024 partitions) on a 64-core machine stays inside 13 GiB even at its worst:
// the sum with growth slack, stage histograms and single-event mesh batches counted. (It was
// 12 GiB until the links' per-source credit grew from 384 to 1024 events, which adds 16 MiB
// a shard at its worst: 15 outgoing and 15 inbound links each holding a full share.)
const _: () = assert!(node_memory_bytes_max(PARTITIONS_DEFAULT as usize, 64) < 13 << 30);

// ---------------------------------------------------------------------------------------------
// Host checks (`trove tune`): what a host must offer a node, and bounds on what the checks read
// and measure. "Required" values are the checks' pass marks; `--jitter-*` flags may change the
// jitter ones for one run.
// ---------------------------------------------------------------------------------------------

/// Oldest kernel (major, minor) glommio runs on: the io_uring operations it issues arrived in 5.8.
pub const KERNEL_VERSION_MIN: (u32, u32) = (5, 8);
/// Largest `vm.swappiness` that keeps the kernel from swapping a node's anonymous memory out
/// under page-cache pressure.
pub const SWAPPINESS_MAX: u64 = 10;
/// Smallest `net.core.somaxconn`: the accept backlog of one shard's listener is capped by it.
pub const SOMAXCONN_MIN: u64 = 4096;
/// Smallest `net.ipv4.tcp_max_syn_backlog`, so a burst of connecting clients is not dropped.
pub const TCP_MAX_SYN_BACKLOG_MIN: u64 = 4096;
/// Largest share of a shard CPU's time the hypervisor may have stolen since boot, in per-mille.
pub const STEAL_PERMILLE_MAX: u64 = 10;
/// Largest file a check reads from /proc or /sys (a large host's /proc/interrupts is ~1 MiB).
pub const HOST_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Default spin per shard CPU for the measured-jitter check, in milliseconds.
pub const JITTER_MS_DEFAULT: u64 = 200;
/// Longest spin per shard CPU the measured-jitter check may be asked for, in milliseconds.
pub const JITTER_MS_MAX: u64 = 60_000;
/// A gap between two successive clock reads of a spinning thread longer than this is a hiccup.
pub const HICCUP_THRESHOLD_NS_DEFAULT: u64 = 1_000;
/// Longest hiccup the histogram tells apart; longer ones are recorded as this.
pub const HICCUP_NS_MAX: u64 = 10_000_000_000;
/// Default pass mark of the jitter check: the longest hiccup a shard CPU may suffer.
pub const HICCUP_US_MAX_DEFAULT: u64 = 50;

const _: () = assert!(SHARDS_MAX <= CPU_ID_MAX + 1);
const _: () = assert!(JITTER_MS_DEFAULT <= JITTER_MS_MAX);
const _: () = assert!(HICCUP_THRESHOLD_NS_DEFAULT < HICCUP_NS_MAX);
const _: () = assert!(HICCUP_US_MAX_DEFAULT * 1000 < HICCUP_NS_MAX);
// The simulator (see `sim`). What one `trove sim` may ask for, so that a slip of the finger in a
// flag is refused with a sentence instead of filling the memory or running for an hour.
// ---------------------------------------------------------------------------------------------

/// Most nodes one simulated cluster may have.
pub const SIM_NODES_MAX: usize = 1024;
/// Most node counts one `trove sim --nodes` list may hold.
pub const SIM_NODE_COUNTS_MAX: usize = 64;
/// Most client sessions per simulated node.
pub const SIM_SESSIONS_PER_NODE_MAX: usize = 4096;
/// Most events all clients of one simulated run may send: bounds the run's event table.
pub const SIM_EVENTS_PER_RUN_MAX: u64 = 4_000_000;
/// Most network messages one run may be expected to send (the broadcast strategy sends one
/// per node per event): bounds the work, and so the wall-clock time, of one run.
pub const SIM_MESSAGES_PER_RUN_MAX: u64 = 200_000_000;
/// Most events a simulated shard's queue may hold, which is its credit budget in events.
pub const SIM_QUEUE_EVENTS_MAX: u32 = SHARD_EVENTS_INFLIGHT_MAX;
/// Longest simulated load (warm-up plus measured window), in virtual milliseconds.
pub const SIM_LOAD_MS_MAX: u64 = 60_000;
/// Longest a run may take to drain after its clients stop, in virtual milliseconds; a run that
/// has not drained by then is reported as stuck.
pub const SIM_DRAIN_MS_MAX: u64 = 60_000;
/// Most nodes `trove sim --strategy coordination` may model.
pub const SIM_COORDINATION_NODES_MAX: usize = 256;
/// Longest one phase of the coordination model (settle, detect, failover) may take, in virtual
/// ms; a phase that has not finished by then is reported as not finished.
pub const SIM_COORDINATION_PHASE_MS_MAX: u64 = 120_000;
/// Most examples each oracle keeps of what it found wrong in one run (it counts them all).
pub const SIM_VIOLATION_EXAMPLES_MAX: usize = 8;
/// Most connections the simulated clients open to one shard: sessions beyond share them, as a
/// load generator multiplexes its players, so that a shard's connection table never fills.
pub const SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX: usize = 16;

/// Most nodes `trove sim --strategy moves` runs (it models a small cluster in detail).
pub const SIM_MOVES_NODES_MAX: usize = 8;
/// Most seeds one `trove sim --strategy moves --seeds N` may run.
pub const SIM_MOVES_SEEDS_MAX: u64 = 100_000;
/// Most client events one moves run may send: bounds its ledger.
pub const SIM_MOVES_EVENTS_MAX: usize = 100_000;
/// Most actions one moves run may take before it is cut off and reported as stuck (a
/// livelock in the protocol would otherwise run forever).
pub const SIM_MOVES_ACTIONS_MAX: u64 = 5_000_000;

const _: () = assert!(SIM_NODES_MAX <= u32::MAX as usize);
const _: () = assert!(SIM_QUEUE_EVENTS_MAX as usize >= 1);
const _: () = assert!(SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX < CONNECTIONS_PER_SHARD_MAX);
// A queue's byte budget is its event budget times the largest event, and must fit a credit.
const _: () = assert!(SIM_QUEUE_EVENTS_MAX as u64 * EVENT_BYTES_MAX as u64 <= u32::MAX as u64);
// Regression gate (see `gate`). Inputs are files a user commits; these bound what one gate
// invocation reads and holds.
// ---------------------------------------------------------------------------------------------

/// Most benchmark runs `trove gate --runs N` performs.
pub const GATE_RUNS_MAX: u32 = 100;
/// Most runs one baseline file, or all `--current` files together, may hold.
pub const GATE_RUNS_PER_SIDE_MAX: usize = 1_000;
/// Most `--current` files one invocation reads.
pub const GATE_CURRENT_FILES_MAX: usize = 1_000;
/// Largest baseline or summary file the gate reads, in bytes. A summary is a few KiB; a
/// baseline of `GATE_RUNS_PER_SIDE_MAX` runs stays well below this.
pub const GATE_INPUT_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The Redis peer (`bench::redis`) and the loopback calibration
// (`bench::calibrate`): what the generator holds for a Redis connection, how large a reply it
// accepts, and how long the calibration runs.
// ---------------------------------------------------------------------------------------------

/// Events one Redis connection may have in flight. Redis answers in order, so each one waits
/// in a FIFO (16 bytes an entry: 32 MiB a connection at most). Open loop beyond what Redis
/// sustains fills every buffer on the way: the send backlog (4 MiB), the client's socket send
/// buffer (`tcp_wmem`, 4 MiB) and Redis's receive buffer (`tcp_rmem`, up to 32 MiB on current
/// kernels): ~800 000 commands were in flight at 250 000 events/s offered on a 2-vCPU VM. This
/// leaves 2.5 times that; a run that still reaches it ends with a message.
pub const REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX: usize = 1 << 21;
/// Largest single Redis reply the generator parses (a leaderboard of
/// `LEADERBOARD_TOP_K_MAX` entries is well under 1 KiB); one must fit a receive buffer.
pub const REDIS_REPLY_BYTES_MAX: usize = 64 * 1024;
/// Deepest nesting of arrays in a Redis reply (the claim function answers a flat array). The
/// RESP decoder recurses once per level, so deeper replies are refused before it sees them.
pub const REDIS_REPLY_DEPTH_MAX: usize = 4;
/// Commands the Redis set-up writes before it reads their replies.
pub const REDIS_SETUP_BATCH_COMMANDS_MAX: usize = 1024;
/// Arguments of all the commands of one set-up batch (a hunt's players join in one command,
/// two arguments each): about 2 MiB of commands at most.
pub const REDIS_SETUP_BATCH_ARGS_MAX: usize = 65_536;
/// How long a blocking Redis call (set-up, read-back) waits to connect or for a reply, in seconds.
pub const REDIS_CALL_WAIT_S_MAX: u64 = 30;

/// Length of each of the calibration's two measurements (round trips, then a one-way stream)
/// unless asked otherwise, in milliseconds: short, since it runs inside a benchmark.
pub const CALIBRATION_MS_DEFAULT: u64 = 200;
/// Longest each calibration measurement may be asked to run, in milliseconds.
pub const CALIBRATION_MS_MAX: u64 = 10_000;
/// Size of the message the calibration's ping-pong bounces: about one small event frame.
pub const CALIBRATION_PING_BYTES: usize = 64;
/// Size of each write of the calibration's one-way stream.
pub const CALIBRATION_STREAM_WRITE_BYTES: usize = 256 * 1024;
/// How long a calibration thread waits on its socket before it gives up, in milliseconds.
pub const CALIBRATION_IO_WAIT_MS_MAX: u64 = 5_000;

const _: () = assert!(REDIS_REPLY_BYTES_MAX <= READ_BUFFER_BYTES_MAX);
const _: () = assert!(CALIBRATION_MS_DEFAULT <= CALIBRATION_MS_MAX);
// A closed-loop window never fills a Redis connection's FIFO.
const _: () = assert!(REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX >= BENCH_WINDOW_MAX as usize);

// ---------------------------------------------------------------------------------------------
// Cluster coordination (see `cluster`): leases, the etcd gateway, what a node reads back.
// ---------------------------------------------------------------------------------------------

/// A node's lease TTL unless configured otherwise (`--lease-ttl-s`). etcd leases are whole seconds.
pub const CLUSTER_LEASE_TTL_S_DEFAULT: u64 = 5;
/// Shortest lease TTL: etcd itself refuses leases much shorter than its election timeout.
pub const CLUSTER_LEASE_TTL_S_MIN: u64 = 2;
/// Longest lease TTL: a dead node's partitions are unavailable for this long before `Offline`.
pub const CLUSTER_LEASE_TTL_S_MAX: u64 = 60;
/// How often a node reads the cluster's keys back unless configured otherwise, in ms.
pub const CLUSTER_POLL_MS_DEFAULT: u64 = 250;
/// Longest pause between reads of the cluster's keys, in ms.
pub const CLUSTER_POLL_MS_MAX: u64 = 10_000;
/// How long the set of live nodes must stay unchanged before the controller writes a cluster's
/// first placement (so nodes started together share the partitions), unless configured, in ms.
pub const CLUSTER_SETTLE_MS_DEFAULT: u64 = 1_000;
/// Longest settle time, in ms.
pub const CLUSTER_SETTLE_MS_MAX: u64 = 60_000;
/// Longest wait between two attempts to reach an unreachable etcd, in ms (back-off doubles to this).
pub const CLUSTER_RETRY_MS_MAX: u64 = 1_000;
/// First wait after a failed etcd request, in ms.
pub const CLUSTER_RETRY_MS_MIN: u64 = 50;
/// Most nodes one cluster may register; more are ignored (and reported) by every reader.
pub const CLUSTER_NODES_MAX: usize = 1_024;
/// Most etcd endpoints `--cluster` may list.
pub const CLUSTER_ENDPOINTS_MAX: usize = 16;
/// Longest cluster name (letters, digits, `-` and `_`), in bytes.
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;
/// Largest etcd reply a node reads: the assignment record of `PARTITIONS_MAX` partitions and
/// `CLUSTER_NODES_MAX` node records fit well inside.
pub const CLUSTER_REPLY_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Largest assignment record a node inflates (it is stored compressed): the record of
/// `PARTITIONS_MAX` partitions, each entry at most 64 bytes of JSON (the widest, a `Migrating`
/// one with every number at its largest, is 59), so a record that inflates past it is refused.
pub const ASSIGNMENT_RECORD_JSON_BYTES_MAX: usize = 64 * PARTITIONS_MAX as usize + 1024;
/// Most coordination events (placement changes, lease lost…) queued for a reader before the
/// oldest are dropped; the latest placement is always kept apart from this queue.
pub const CLUSTER_EVENTS_QUEUED_MAX: usize = 64;
/// Most offline partitions `trove cluster status` names on one line; it always gives the count.
pub const CLUSTER_STATUS_OFFLINE_LISTED_MAX: usize = 32;
/// Most nodes `trove cluster up` starts on one machine.
pub const CLUSTER_UP_NODES_MAX: usize = 64;
/// How long `trove cluster up` waits for its etcd, and for each node to print its address, in ms.
pub const CLUSTER_UP_START_MS_MAX: u64 = 15_000;
/// How long `trove cluster up` waits for a node or etcd to stop after SIGTERM before SIGKILL, in ms.
pub const CLUSTER_UP_STOP_MS_MAX: u64 = 10_000;

/// Live partition moves in flight at once unless `settings` says otherwise (`--moves-max`).
pub const MOVES_INFLIGHT_DEFAULT: u32 = 4;
/// Most live partition moves in flight at once, whatever `settings` says.
pub const MOVES_INFLIGHT_MAX: u32 = 64;
/// How long the controller waits for a move's source to report it ready before abandoning it
/// (timed by the controller's own clock from when it first saw the move), in ms.
pub const MOVE_TIMEOUT_MS_MAX: u64 = 30_000;
/// How long a partition whose move failed (abandoned, refused, timed out) is left where it is
/// before the controller tries to move it again, in ms.
pub const MOVE_RETRY_BACKOFF_MS_MAX: u64 = 10_000;
/// Least time between two placement writes that start moves (so moves are paced, not dealt
/// all at once when a node joins), in ms.
pub const MOVE_START_GAP_MS_DEFAULT: u64 = 200;
/// Most live moves `trove bench --cluster N --moves K` makes in one run (one at a time).
pub const BENCH_MOVES_MAX: u32 = 10_000;
/// Most move reports of a node's shards queued for its control thread; a shard whose report
/// does not fit keeps it and sends it on its next pass (see `ControlHandle::start`).
pub const NODE_MOVE_REPORTS_QUEUED_MAX: usize = 256;
/// Most `moves/<p>` records a node has waiting to be put in etcd; the oldest are dropped first.
pub const MOVE_RECORDS_QUEUED_MAX: usize = 1_024;
/// Most `moves/<p>` records a node puts in one etcd transaction (etcd refuses a transaction of
/// more than `--max-txn-ops` operations, 128 by default).
pub const MOVE_RECORDS_PER_WRITE_MAX: usize = 64;
/// Longest reason a `moves/<p>` record keeps, in bytes (longer ones are cut).
pub const MOVE_REASON_BYTES_MAX: usize = 256;
/// How long `trove cluster move|drain|rebalance` follow the moves unless `--timeout`, in s.
pub const MOVE_FOLLOW_S_DEFAULT: u64 = 300;
/// Longest `--timeout` of those commands, in s.
pub const MOVE_FOLLOW_S_MAX: u64 = 86_400;
/// How often those commands read the cluster back while following, in ms.
pub const MOVE_FOLLOW_POLL_MS_DEFAULT: u64 = 200;
/// Reads a finished follow of moves waits for their sources' released reports (the events
/// held and the pause at each flip), which come within a few reads.
pub const MOVE_FOLLOW_RELEASED_POLLS_MAX: u32 = 10;
/// How long `trove cluster rebalance --by load` measures each partition's events/s, unless
/// `--sample-s`, in s.
pub const REBALANCE_SAMPLE_S_DEFAULT: u64 = 5;
/// Longest `--sample-s`, in s.
pub const REBALANCE_SAMPLE_S_MAX: u64 = 600;
/// Most steps `rebalance --by load` plans per partition (each step moves one partition from the
/// busiest shard to the idlest).
pub const REBALANCE_LOAD_STEPS_PER_PARTITION_MAX: usize = 8;
/// Shards (busiest first) and planned moves (hottest first) `rebalance --by load` lists one
/// by one before following the moves; the rest are counted.
pub const REBALANCE_LISTED_MAX: usize = 20;

const _: () = assert!(CLUSTER_LEASE_TTL_S_MIN <= CLUSTER_LEASE_TTL_S_DEFAULT);
const _: () = assert!(CLUSTER_LEASE_TTL_S_DEFAULT <= CLUSTER_LEASE_TTL_S_MAX);
const _: () = assert!(CLUSTER_POLL_MS_DEFAULT <= CLUSTER_POLL_MS_MAX);
const _: () = assert!(CLUSTER_SETTLE_MS_DEFAULT <= CLUSTER_SETTLE_MS_MAX);
const _: () = assert!(CLUSTER_RETRY_MS_MIN <= CLUSTER_RETRY_MS_MAX);
const _: () = assert!(CLUSTER_NODES_MAX <= u32::MAX as usize);
const _: () = assert!(MOVES_INFLIGHT_DEFAULT >= 1 && MOVES_INFLIGHT_DEFAULT <= MOVES_INFLIGHT_MAX);
const _: () = assert!(MOVES_INCOMING_MAX <= MOVES_STAGED_MAX);
const _: () = assert!(MOVE_RECORDS_PER_WRITE_MAX >= 1 && MOVE_RECORDS_PER_WRITE_MAX <= 128);
const _: () = assert!(MOVE_FOLLOW_S_DEFAULT <= MOVE_FOLLOW_S_MAX);
const _: () = assert!(REBALANCE_SAMPLE_S_DEFAULT <= REBALANCE_SAMPLE_S_MAX);
// Metrics: shard snapshots, the `/metrics` endpoint on the housekeeping thread, `trove top`.
// ---------------------------------------------------------------------------------------------

/// Where `trove node` serves `/metrics` unless told otherwise: loopback only.
pub const METRICS_PORT_DEFAULT: u16 = 9700;
/// How often each shard hands its snapshot to the housekeeping thread, in milliseconds.
pub const METRICS_SNAPSHOT_MS_DEFAULT: u64 = 1_000;
/// Largest snapshot a shard hands the housekeeping thread (`metrics::ShardSnapshot`, plain
/// values with no heap: counters, gauges, events by kind and outcome, stage latencies as
/// classic buckets); checked by a unit test. 2,960 bytes today (2.9 KiB).
pub const METRICS_SNAPSHOT_BYTES_MAX: usize = 4 * 1024;
/// Snapshots of one shard that may wait in the channel to the housekeeping thread; a shard
/// whose snapshot finds the channel full drops it (and counts the drop) rather than wait.
pub const METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX: usize = 2;
/// Largest HTTP request head the endpoint reads; a larger one is answered 431.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Most header lines an HTTP request may carry; more is answered 431.
pub const METRICS_REQUEST_HEADERS_MAX: usize = 32;
/// Scrape connections served at once; one more is answered 503 and closed.
pub const METRICS_CONNECTIONS_MAX: usize = 64;
/// How long a scrape connection may take to send its request, and then to read the answer,
/// in milliseconds; a slower client is answered 408 (or cut) and closed.
pub const METRICS_CONNECTION_MS_MAX: u64 = 2_000;
/// How long the housekeeping thread sleeps in `poll(2)` at most, in milliseconds: the delay
/// with which it notices a stop or a new snapshot when no scrape wakes it.
pub const METRICS_POLL_MS_MAX: u64 = 50;
/// Largest `/metrics` answer a scraper in this crate (`trove top`, `trove bench --target`)
/// reads; a node with `SHARDS_MAX` shards answers well under 1 MiB.
pub const METRICS_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Nodes `trove top` watches at once.
pub const TOP_NODES_MAX: usize = 64;
/// How long `trove top` and `trove bench --target` wait for one scrape, in milliseconds.
pub const METRICS_SCRAPE_MS_MAX: u64 = 3_000;

/// Most placement updates queued from a node's control thread to one shard; when a shard is
/// behind, the oldest update is dropped (each carries the whole placement and lease, so only
/// the latest matters) and the control thread never waits.
pub const SHARD_PLACEMENT_UPDATES_QUEUED_MAX: usize = 4;
