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
pub const FRAME_VERSION: u8 = 1;
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

// ---------------------------------------------------------------------------------------------
// Back-pressure budgets (see `core::credit`). Configuration may lower them.
// ---------------------------------------------------------------------------------------------

/// Events a shard accepts from its sockets before their replies are written back.
pub const SHARD_EVENTS_INFLIGHT_MAX: u32 = 16_384;
/// Event bytes a shard accepts from its sockets before their replies are written back.
pub const SHARD_BYTES_INFLIGHT_MAX: u32 = 8 * 1024 * 1024;
/// Events one connection may have in flight, so one greedy client cannot hold a whole shard.
pub const CONNECTION_EVENTS_INFLIGHT_MAX: u32 = 8192;
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
/// How long a stopping node waits for work in flight to drain before it closes anyway.
pub const SHUTDOWN_GRACE_MS_MAX: u64 = 5_000;
/// A shard's task queue that runs this long past its time slice (glommio's preempt timer,
/// 100 ms) without yielding counts as a stall.
pub const STALL_THRESHOLD_MS_DEFAULT: u64 = 10;
/// Largest stall threshold a configuration may set.
pub const STALL_THRESHOLD_MS_MAX: u64 = 60_000;
/// Bytes of glommio's stall report read for its figures (they come first; the backtrace after
/// them is never formatted).
pub const STALL_REPORT_HEAD_BYTES_MAX: usize = 512;

// ---------------------------------------------------------------------------------------------
// Worst-case memory of a node, as a sum. Estimates of container overhead are stated as such.
// ---------------------------------------------------------------------------------------------

/// One entry of a hunt's player table (`core::hunt::PlayerEntry`): id 8, visited set 8,
/// score 4, slot 4.
pub const PLAYER_ENTRY_BYTES: usize = 24;
/// What a hunt keeps per player outside its table: a pointer to the player's wrong-code
/// counters (8), and the counters, one byte per treasure, once the player presents a wrong
/// code (with 16 for the allocator's overhead).
pub const PLAYER_COLD_BYTES_MAX: usize = 8 + TREASURES_PER_HUNT_MAX + 16;

/// Worst-case bytes of one hunt's state.
pub const HUNT_STATE_BYTES_MAX: usize = PLAYER_TABLE_ENTRIES_MAX * PLAYER_ENTRY_BYTES // the player table, at most half full
    + PLAYERS_PER_HUNT_MAX * PLAYER_COLD_BYTES_MAX // wrong-code counters
    + WAYPOINTS_PER_HUNT_MAX * (32 + 8) // waypoint: position 8, radius 4, points 4, two cosine bounds 16; its latitude band 8
    + TREASURES_PER_HUNT_MAX * 24 // treasure: code hash 8, winner 8, points 4, won 1, padding 3
    + LEADERBOARD_TOP_K_MAX * 16 // leaderboard entry: player 8, score 4, padding 4
    + 256; // the hunt's own fields and table headers

/// Worst-case bytes of one partition's state machine.
pub const PARTITION_STATE_BYTES_MAX: usize = HUNTS_PER_PARTITION_MAX * HUNT_STATE_BYTES_MAX // hunts
    + HUNTS_PER_PARTITION_MAX * 16 // the partition's hunt slots: id 8, pointer 8
    + 64; // the partition's own fields

/// Worst-case bytes of one shard's network and back-pressure buffers (not its hunt state).
pub const SHARD_IO_BYTES_MAX: usize = CONNECTIONS_PER_SHARD_MAX * READ_BUFFER_BYTES_MAX // a receive buffer per connection
    + CONNECTIONS_PER_SHARD_MAX * 2 * WRITE_BUFFER_RETAINED_BYTES_MAX // two reply buffers per connection, kept between bursts
    + CONNECTIONS_PER_SHARD_MAX * (CONNECTION_BACKLOG_BYTES_MAX + FRAME_RECORDS_MAX * REPLY_FIXED_BYTES) // uncredited answers (Busy, maps): the backlog, plus one frame's worth past it
    + SHARD_EVENTS_INFLIGHT_MAX as usize * REPLY_BYTES_MAX // replies to every event in flight, waiting for their socket
    + MESH_BYTES_INFLIGHT_MAX as usize // events other shards forwarded here, waiting to be applied
    + MESH_EVENTS_INFLIGHT_MAX as usize * REPLY_BYTES_MAX // replies to those, waiting to go back
    + MESH_CHANNEL_BATCHES_MAX * 64 // one channel slot per batch, per source (times shards below)
    + SHARD_IO_MEMORY_BYTES; // glommio's registered io_uring buffers

/// Worst-case resident bytes of a node with `partitions` partitions and `shards` shards.
pub const fn node_memory_bytes_max(partitions: usize, shards: usize) -> usize {
    partitions * PARTITION_STATE_BYTES_MAX // every partition's hunts, wherever it lives
        + shards * SHARD_IO_BYTES_MAX // every shard's buffers
        + shards * shards * MESH_CHANNEL_BATCHES_MAX * 64 // channel rings of the full mesh
}

// The budgets must be able to carry at least one frame's worth of work, or a shard could wait
// forever for credit it can never get.
const _: () = assert!(SHARD_EVENTS_INFLIGHT_MAX as usize >= FRAME_RECORDS_MAX);
const _: () = assert!(SHARD_BYTES_INFLIGHT_MAX as usize >= FRAME_BODY_BYTES_MAX);
const _: () = assert!(CONNECTION_EVENTS_INFLIGHT_MAX as usize >= FRAME_RECORDS_MAX);
const _: () = assert!(CONNECTION_EVENTS_INFLIGHT_MAX <= SHARD_EVENTS_INFLIGHT_MAX);
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
// A default node (1024 partitions) on a 64-core machine stays inside 8 GiB even at its worst.
const _: () = assert!(node_memory_bytes_max(PARTITIONS_DEFAULT as usize, 64) < 8 << 30);

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

const _: () = assert!(SIM_NODES_MAX <= u32::MAX as usize);
const _: () = assert!(SIM_QUEUE_EVENTS_MAX as usize >= 1);
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
// The Redis peer (`bench::redis`, `bench::resp`) and the loopback calibration
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
/// Most elements one array of a Redis reply may have (a leaderboard has two per entry).
pub const REDIS_REPLY_ELEMENTS_MAX: usize = 1024;
/// Deepest nesting of arrays in a Redis reply (the claim function answers a flat array).
pub const REDIS_REPLY_DEPTH_MAX: usize = 4;
/// Commands the Redis set-up writes before it reads their replies.
pub const REDIS_SETUP_BATCH_COMMANDS_MAX: usize = 1024;
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
const _: () = assert!(REDIS_REPLY_ELEMENTS_MAX >= 2 * LEADERBOARD_TOP_K_MAX);
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

const _: () = assert!(CLUSTER_LEASE_TTL_S_MIN <= CLUSTER_LEASE_TTL_S_DEFAULT);
const _: () = assert!(CLUSTER_LEASE_TTL_S_DEFAULT <= CLUSTER_LEASE_TTL_S_MAX);
const _: () = assert!(CLUSTER_POLL_MS_DEFAULT <= CLUSTER_POLL_MS_MAX);
const _: () = assert!(CLUSTER_SETTLE_MS_DEFAULT <= CLUSTER_SETTLE_MS_MAX);
const _: () = assert!(CLUSTER_RETRY_MS_MIN <= CLUSTER_RETRY_MS_MAX);
const _: () = assert!(CLUSTER_NODES_MAX <= u32::MAX as usize);
