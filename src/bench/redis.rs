//! The load generator speaking to Redis, the peer trove is compared with: the same event
//! stream (same seed, mix, skew and pipelining) turned into Redis commands, and the hunts set
//! up beforehand. RESP2 is the `redis-protocol` crate's: commands are encoded with it and
//! replies decoded by it into ranges of the receive buffer; the set-up and reading results
//! back use the `redis` crate's blocking client (its sync API, no async runtime).
//!
//! # What each event becomes
//!
//! Every key of a hunt is namespaced and carries the hunt id as a Redis Cluster hash tag, so
//! one hunt's keys stay together: `trove:hunt:{H}:scores` (a sorted set, player → score) and
//! `trove:hunt:{H}:treasure:{T}` (a hash: `code_hash`, `points`, `winner` once won).
//!
//! | event | command | reply → [`ReplyClass`] |
//! |---|---|---|
//! | join | `ZADD scores NX 0 player` | `1` → Ok; `0` (already joined) → Rejected |
//! | check-in | `ZINCRBY scores points player` | the new score → Ok |
//! | claim | `FCALL trove_claim 2 treasure scores player code_hash` | `claimed`, `already_claimed` → Ok; `wrong_code`, `unknown_player`, `unknown_treasure` → Rejected |
//! | leaderboard | `ZREVRANGE scores 0 k-1 WITHSCORES` | the array → Ok |
//!
//! An error reply (`-ERR …`, `-OOM …`) to any command is [`ReplyClass::Error`]; a reply of
//! the wrong shape, or a claim function Redis does not know, stops the run with a message.
//! The claim is a Redis function ([`CLAIM_FUNCTION`], loaded once by the set-up with
//! `FUNCTION LOAD`, so Redis 7.0 or later is needed): first writer wins, then the winner's
//! score rises by the treasure's points, atomically, as trove's partition applies it.
//!
//! Two differences from trove, both in Redis's favour: Redis has no xxh3, so the client hashes
//! the claim code (trove hashes it on the node); and a check-in is a plain increment, with no
//! waypoint geometry and no "already checked in" rule (trove refuses those check-ins).
//!
//! # Matching replies
//!
//! Redis answers each connection's commands in order, so each connection keeps a FIFO of
//! what it sent ([`REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX`] at most) and hands each reply's
//! timestamp back to the generator. A [`RedisProtocol`] lives on one load-generator thread.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

use crate::bench::generator::{Parsed, Protocol, ReplyClass};
use crate::bench::workload::Workload;
use crate::client::Connection;
use crate::constants::{
    REDIS_CALL_WAIT_S_MAX, REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX, REDIS_REPLY_BYTES_MAX,
    REDIS_REPLY_DEPTH_MAX, REDIS_SETUP_BATCH_ARGS_MAX, REDIS_SETUP_BATCH_COMMANDS_MAX,
    WRITE_BUFFER_RETAINED_BYTES_MAX,
};
use crate::core::ids::{HuntId, PlayerId, TreasureId};
use crate::core::message::{Event, EventKind, claim_code_hash};

/// The Redis function library that claims treasures; `trove_claim` is its one function.
pub const CLAIM_FUNCTION: &str = r#"#!lua name=trove
-- First writer wins a treasure; the winner's score then rises by the treasure's points.
-- KEYS[1]: the treasure (a hash: code_hash, points, winner); KEYS[2]: the hunt's scores.
-- ARGV[1]: the player; ARGV[2]: the hash of the code presented, in decimal.
local function claim(keys, args)
  if not redis.call('ZSCORE', keys[2], args[1]) then
    return {'unknown_player'}
  end
  local treasure = redis.call('HMGET', keys[1], 'code_hash', 'points', 'winner')
  if not treasure[1] then
    return {'unknown_treasure'}
  end
  if treasure[1] ~= args[2] then
    return {'wrong_code'}
  end
  if treasure[3] then
    return {'already_claimed', treasure[3]}
  end
  redis.call('HSET', keys[1], 'winner', args[1])
  local score = redis.call('ZINCRBY', keys[2], treasure[2], args[1])
  return {'claimed', treasure[2], score}
end
redis.register_function('trove_claim', claim)
"#;

/// The name `FCALL` calls the claim function by.
const CLAIM_FUNCTION_NAME: &[u8] = b"trove_claim";

/// A number written in decimal on the stack, to pass as a key part or a command argument.
#[derive(Clone, Copy)]
struct Decimal {
    digits: [u8; 20],
    start: u8,
}

impl Decimal {
    fn new(mut value: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        Decimal {
            digits,
            start: start as u8,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[usize::from(self.start)..]
    }
}

/// A command argument: a RESP2 bulk string.
fn arg(bytes: &[u8]) -> BorrowedFrame<'_> {
    BorrowedFrame::BulkString(bytes)
}

/// Appends the command `args` (an array of bulk strings) to `out`.
fn push_command(out: &mut Vec<u8>, args: &[BorrowedFrame<'_>]) {
    let command = BorrowedFrame::Array(args);
    let start = out.len();
    out.resize(start + command.encode_len(false), 0);
    encode_borrowed(&mut out[start..], &command, false)
        .expect("the buffer was sized by encode_len");
}
/// The field of a treasure's hash that holds its winner.
pub const WINNER_FIELD: &str = "winner";

/// A key, formatted on the stack.
pub struct Key {
    bytes: [u8; 64],
    len: usize,
}

impl Key {
    /// Joins `parts`; the longest key (a 20-digit hunt id, a 10-digit treasure id and the
    /// prefixes) is 53 bytes.
    fn of(parts: &[&[u8]]) -> Key {
        let mut key = Key {
            bytes: [0; 64],
            len: 0,
        };
        for part in parts {
            key.bytes[key.len..key.len + part.len()].copy_from_slice(part);
            key.len += part.len();
        }
        key
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The sorted set of a hunt's players and their scores.
pub fn scores_key(hunt: HuntId) -> Key {
    Key::of(&[
        b"trove:hunt:{",
        Decimal::new(hunt.0).as_bytes(),
        b"}:scores",
    ])
}

/// The hash of one treasure of a hunt.
pub fn treasure_key(hunt: HuntId, treasure: TreasureId) -> Key {
    Key::of(&[
        b"trove:hunt:{",
        Decimal::new(hunt.0).as_bytes(),
        b"}:treasure:",
        Decimal::new(u64::from(treasure.0)).as_bytes(),
    ])
}

/// The Redis command an event became, remembered until its reply comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Join,
    CheckIn,
    Claim { treasure: TreasureId },
    Leaderboard,
}

impl Command {
    fn describe(self) -> &'static str {
        match self {
            Command::Join => "a join (ZADD NX)",
            Command::CheckIn => "a check-in (ZINCRBY)",
            Command::Claim { .. } => "a claim (FCALL trove_claim)",
            Command::Leaderboard => "a leaderboard (ZREVRANGE)",
        }
    }
}

/// An event sent and not yet answered: its timestamp and what it became.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    ts: u64,
    command: Command,
}

// The bound on the FIFO is stated in bytes in `constants.rs`.
const _: () = assert!(std::mem::size_of::<InFlight>() == 16);

/// A change of score a Redis reply reported: what a run did, to check against the database
/// afterwards (the peer integration test does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreChange {
    pub hunt: HuntId,
    pub player: PlayerId,
    pub points: u32,
    /// The treasure the player won, when a claim scored.
    pub won: Option<TreasureId>,
}

/// One Redis connection of one load-generator thread: commands waiting to be written and the
/// FIFO of commands waiting for their replies.
pub struct RedisProtocol {
    output: Vec<u8>,
    /// Bytes of `output` already written.
    written: usize,
    inflight: VecDeque<InFlight>,
    /// What a check-in adds to a score: a waypoint's points in the workload.
    checkin_points: u32,
    score_log: Option<ScoreLog>,
}

/// Where changes of score go, and whose events are in flight (in the order of the FIFO).
struct ScoreLog {
    changes: flume::Sender<ScoreChange>,
    players: VecDeque<(HuntId, PlayerId)>,
}

impl ScoreLog {
    fn record(&mut self, scored: Option<Scored>) -> Result<(), String> {
        let (hunt, player) = self
            .players
            .pop_front()
            .expect("one entry per event in flight");
        let Some(Scored { points, won }) = scored else {
            return Ok(());
        };
        let change = ScoreChange {
            hunt,
            player,
            points,
            won,
        };
        match self.changes.try_send(change) {
            Ok(()) | Err(flume::TrySendError::Disconnected(_)) => Ok(()),
            Err(flume::TrySendError::Full(_)) => Err(format!(
                "the score log is full ({} entries); give it room for every event of the run",
                self.changes.capacity().unwrap_or(0)
            )),
        }
    }
}

/// What a reply says an event added to a score.
struct Scored {
    points: u32,
    won: Option<TreasureId>,
}

impl RedisProtocol {
    pub fn new(workload: &Workload) -> RedisProtocol {
        let spec = workload.hunt_spec(Workload::hunt_id(0));
        RedisProtocol {
            output: Vec::new(),
            written: 0,
            inflight: VecDeque::new(),
            checkin_points: spec.waypoints.first().map_or(0, |waypoint| waypoint.points),
            score_log: None,
        }
    }

    /// Reports every change of score a reply tells of into `log`. A full log ends the run
    /// with an error rather than losing an entry; a log whose receiver is gone is ignored.
    /// Attach it before any event is sent.
    pub fn with_score_log(mut self, log: flume::Sender<ScoreChange>) -> RedisProtocol {
        assert!(
            self.inflight.is_empty(),
            "a score log is attached before any event is sent"
        );
        self.score_log = Some(ScoreLog {
            changes: log,
            players: VecDeque::new(),
        });
        self
    }

    /// Appends the command `event` maps to and returns what to remember of it.
    fn push_event(&mut self, event: &Event) -> Result<Command, String> {
        let scores = scores_key(event.hunt);
        let player = Decimal::new(event.player.0);
        let out = &mut self.output;
        match &event.kind {
            EventKind::Join => {
                push_command(
                    out,
                    &[
                        arg(b"ZADD"),
                        arg(scores.as_bytes()),
                        arg(b"NX"),
                        arg(b"0"),
                        arg(player.as_bytes()),
                    ],
                );
                Ok(Command::Join)
            }
            EventKind::CheckIn { .. } => {
                let points = Decimal::new(u64::from(self.checkin_points));
                push_command(
                    out,
                    &[
                        arg(b"ZINCRBY"),
                        arg(scores.as_bytes()),
                        arg(points.as_bytes()),
                        arg(player.as_bytes()),
                    ],
                );
                Ok(Command::CheckIn)
            }
            EventKind::Claim { treasure, code } => {
                let code_hash = Decimal::new(claim_code_hash(code.as_bytes()));
                push_command(
                    out,
                    &[
                        arg(b"FCALL"),
                        arg(CLAIM_FUNCTION_NAME),
                        arg(b"2"),
                        arg(treasure_key(event.hunt, *treasure).as_bytes()),
                        arg(scores.as_bytes()),
                        arg(player.as_bytes()),
                        arg(code_hash.as_bytes()),
                    ],
                );
                Ok(Command::Claim {
                    treasure: *treasure,
                })
            }
            EventKind::Leaderboard { top_k } => {
                let Some(last) = top_k.checked_sub(1) else {
                    return Err("a leaderboard of 0 entries has no Redis equivalent".into());
                };
                push_command(
                    out,
                    &[
                        arg(b"ZREVRANGE"),
                        arg(scores.as_bytes()),
                        arg(b"0"),
                        arg(Decimal::new(u64::from(last)).as_bytes()),
                        arg(b"WITHSCORES"),
                    ],
                );
                Ok(Command::Leaderboard)
            }
            EventKind::CreateHunt(_) => Err(
                "hunts are created on Redis by the set-up (set_up_hunts_redis), not during a run"
                    .into(),
            ),
            EventKind::EndHunt => {
                Err("the benchmark's workload never ends a hunt; it has no Redis mapping".into())
            }
        }
    }

    /// Classifies the reply to `command`, and says what it added to a score.
    fn answer(
        &self,
        command: Command,
        reply: Reply<'_>,
    ) -> Result<(ReplyClass, Option<Scored>), String> {
        let applied = |points, won| Ok((ReplyClass::Ok, Some(Scored { points, won })));
        match (command, reply.frame) {
            (_, RangeFrame::Error(range)) => Ok((error_class(command, reply.text(range))?, None)),
            (Command::Join, RangeFrame::Integer(1)) => Ok((ReplyClass::Ok, None)),
            (Command::Join, RangeFrame::Integer(0)) => Ok((ReplyClass::Rejected, None)),
            (Command::CheckIn, RangeFrame::BulkString(_)) => applied(self.checkin_points, None),
            (Command::Leaderboard, RangeFrame::Array(_)) => Ok((ReplyClass::Ok, None)),
            (Command::Claim { treasure }, RangeFrame::Array(fields)) => {
                match claim_outcome(reply, fields) {
                    Some(ClaimOutcome::Claimed { points }) => applied(points, Some(treasure)),
                    Some(ClaimOutcome::AlreadyClaimed) => Ok((ReplyClass::Ok, None)),
                    Some(ClaimOutcome::Refused) => Ok((ReplyClass::Rejected, None)),
                    None => Err(unexpected(command, reply)),
                }
            }
            _ => Err(unexpected(command, reply)),
        }
    }
}

/// One decoded reply: its frame, whose ranges point into `bytes`.
#[derive(Clone, Copy)]
struct Reply<'a> {
    frame: &'a RangeFrame,
    bytes: &'a [u8],
}

impl<'a> Reply<'a> {
    fn text(self, range: &(usize, usize)) -> &'a [u8] {
        &self.bytes[range.0..range.1]
    }

    /// The bulk string `frame` (an element of this reply), if it is one.
    fn bulk(self, frame: Option<&RangeFrame>) -> Option<&'a [u8]> {
        match frame? {
            RangeFrame::BulkString(range) => Some(self.text(range)),
            _ => None,
        }
    }

    /// A short description for error messages: the type and the start of any text.
    fn describe(self) -> String {
        let text = |range: &(usize, usize)| {
            let shown = self.text(range);
            String::from_utf8_lossy(&shown[..shown.len().min(80)]).into_owned()
        };
        match self.frame {
            RangeFrame::SimpleString(range) => format!("the status `{}`", text(range)),
            RangeFrame::Error(range) => format!("the error `{}`", text(range)),
            RangeFrame::Integer(value) => format!("the integer {value}"),
            RangeFrame::BulkString(range) => format!("the bulk string `{}`", text(range)),
            RangeFrame::Array(items) => format!("an array of {} elements", items.len()),
            RangeFrame::Null => "a null".into(),
        }
    }
}

/// What the claim function answered.
enum ClaimOutcome {
    Claimed {
        points: u32,
    },
    AlreadyClaimed,
    /// Wrong code, unknown player or unknown treasure.
    Refused,
}

fn claim_outcome(reply: Reply<'_>, fields: &[RangeFrame]) -> Option<ClaimOutcome> {
    match reply.bulk(fields.first())? {
        b"claimed" => {
            let points = reply.bulk(fields.get(1))?;
            let points = std::str::from_utf8(points).ok()?.parse().ok()?;
            Some(ClaimOutcome::Claimed { points })
        }
        b"already_claimed" => Some(ClaimOutcome::AlreadyClaimed),
        b"wrong_code" | b"unknown_player" | b"unknown_treasure" => Some(ClaimOutcome::Refused),
        _ => None,
    }
}

/// An error reply is counted as an error, except one that says the claim function is missing:
/// then every claim would fail, and the run stops to say so.
fn error_class(command: Command, message: &[u8]) -> Result<ReplyClass, String> {
    if matches!(command, Command::Claim { .. }) && message.starts_with(b"ERR Function not found") {
        return Err(
            "Redis does not know the trove_claim function: set the hunts up first \
             (set_up_hunts_redis loads it), on Redis 7.0 or later"
                .into(),
        );
    }
    Ok(ReplyClass::Error)
}

fn unexpected(command: Command, reply: Reply<'_>) -> String {
    format!(
        "Redis answered {} with {}, which is not what that command returns; is the address a Redis server?",
        command.describe(),
        reply.describe()
    )
}

/// Whether the arrays of the reply at the front of `input` (as much of it as has arrived)
/// nest deeper than [`REDIS_REPLY_DEPTH_MAX`]. Only the framing is walked (no allocation);
/// anything malformed is left for the decoder to refuse.
fn nested_too_deep(input: &[u8]) -> bool {
    // Elements still to come in each open array, outermost first.
    let mut remaining = [0i64; REDIS_REPLY_DEPTH_MAX];
    let mut depth = 0;
    let mut at = 0;
    loop {
        let Some(line) = input.get(at..).and_then(|rest| {
            let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
            Some(&rest[..end])
        }) else {
            return false;
        };
        at += line.len() + 2;
        let Some((&kind, header)) = line.split_first() else {
            return false;
        };
        let number = std::str::from_utf8(header)
            .ok()
            .and_then(|text| text.parse::<i64>().ok());
        match (kind, number) {
            (b'$', Some(len)) if len >= 0 => at += len as usize + 2,
            (b'*', Some(count)) if count > 0 => {
                if depth == REDIS_REPLY_DEPTH_MAX {
                    return true;
                }
                remaining[depth] = count;
                depth += 1;
                continue;
            }
            _ => {}
        }
        // An element ended, and with it every array it was the last element of.
        loop {
            if depth == 0 {
                return false;
            }
            remaining[depth - 1] -= 1;
            if remaining[depth - 1] > 0 {
                break;
            }
            depth -= 1;
        }
    }
}

/// Decodes the reply at the front of `input`: `None` while it is incomplete. A reply that
/// does not fit [`REDIS_REPLY_BYTES_MAX`] is an error, not a reason to buffer more.
fn decode_reply(input: &[u8]) -> Result<Option<(RangeFrame, usize)>, String> {
    if nested_too_deep(input) {
        return Err(format!(
            "Redis sent a reply with arrays nested more than {REDIS_REPLY_DEPTH_MAX} deep, \
             which none of the benchmark's commands return; is the address a Redis server?"
        ));
    }
    match decode_range(input) {
        Ok(Some((frame, len))) if len <= REDIS_REPLY_BYTES_MAX => Ok(Some((frame, len))),
        Ok(None) if input.len() < REDIS_REPLY_BYTES_MAX => Ok(None),
        Ok(_) => Err(format!(
            "Redis sent a reply larger than {REDIS_REPLY_BYTES_MAX} bytes, far more than any \
             the benchmark's commands return; is the address a Redis server?"
        )),
        Err(error) => Err(format!(
            "Redis sent a malformed reply ({error}); is the address a Redis server?"
        )),
    }
}

impl Protocol for RedisProtocol {
    fn links(&self) -> usize {
        1
    }

    fn link_for(&self, _event: &Event) -> usize {
        0
    }

    fn encode(&mut self, _link: usize, event: &Event, ts: u64) -> Result<(), String> {
        if self.inflight.len() >= REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX {
            return Err(format!(
                "Redis is {REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX} events behind on one \
                 connection: the offered rate is far beyond what it sustains; offer less or \
                 use more connections"
            ));
        }
        let command = self.push_event(event)?;
        self.inflight.push_back(InFlight { ts, command });
        if let Some(log) = &mut self.score_log {
            log.players.push_back((event.hunt, event.player));
        }
        Ok(())
    }

    fn backlog_bytes(&self, _link: usize) -> usize {
        self.output.len() - self.written
    }

    fn pending_output(&mut self, _link: usize) -> &[u8] {
        &self.output[self.written..]
    }

    fn consumed_output(&mut self, _link: usize, len: usize) {
        self.written += len;
        if self.written == self.output.len() {
            self.output.clear();
            self.output.shrink_to(WRITE_BUFFER_RETAINED_BYTES_MAX);
            self.written = 0;
        }
    }

    fn parse(
        &mut self,
        _link: usize,
        input: &[u8],
        on_reply: &mut dyn FnMut(u64, ReplyClass),
    ) -> Result<Parsed, String> {
        let mut consumed = 0;
        while let Some((frame, len)) = decode_reply(&input[consumed..])? {
            let reply = Reply {
                frame: &frame,
                bytes: &input[consumed..consumed + len],
            };
            let Some(sent) = self.inflight.pop_front() else {
                return Err(format!(
                    "Redis sent {} when no command was waiting for a reply",
                    reply.describe()
                ));
            };
            let (class, scored) = self.answer(sent.command, reply)?;
            if let Some(log) = &mut self.score_log {
                log.record(scored)?;
            }
            on_reply(sent.ts, class);
            consumed += len;
        }
        Ok(Parsed {
            consumed,
            message_len: None,
        })
    }
}

/// Opens one generator connection to Redis: the protocol and its one stream, for
/// [`crate::bench::run::measure`].
pub fn connect_redis(
    addr: SocketAddr,
    workload: &Workload,
) -> Result<(RedisProtocol, Vec<Connection>), String> {
    let stream = connect_stream(addr)?;
    Ok((RedisProtocol::new(workload), vec![Connection::from(stream)]))
}

fn connect_stream(addr: SocketAddr) -> Result<TcpStream, String> {
    let wait = Duration::from_secs(REDIS_CALL_WAIT_S_MAX);
    let stream = TcpStream::connect_timeout(&addr, wait).map_err(|error| {
        format!("cannot connect to Redis at {addr}: {error}; is redis-server running there?")
    })?;
    stream
        .set_nodelay(true)
        .map_err(|error| format!("cannot set TCP_NODELAY on the connection to {addr}: {error}"))?;
    Ok(stream)
}

/// Stores every hunt's treasures and joins every player on the Redis at `addr`, pipelined,
/// waiting for every reply, and loads the claim function.
///
/// The benchmark needs a database of its own: an empty one is used as it is; one that holds
/// keys is flushed (`FLUSHDB`) only when `wipe` is set, and refused otherwise, so nobody's
/// data is lost by surprise.
pub fn set_up_hunts_redis(addr: SocketAddr, workload: &Workload, wipe: bool) -> Result<(), String> {
    workload.check()?;
    let mut redis = connect_blocking(addr)?;
    let failed = |what: &'static str| {
        move |error: redis::RedisError| explain(&format!("{what} (Redis at {addr})"), &error)
    };
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut redis)
        .map_err(failed("DBSIZE"))?;
    if keys > 0 {
        if !wipe {
            return Err(format!(
                "the Redis database at {addr} is not empty ({keys} keys); the benchmark \
                 clears it first, and does so only when asked to: point it at an empty \
                 database, or pass --redis-flush"
            ));
        }
        redis::cmd("FLUSHDB")
            .query::<()>(&mut redis)
            .map_err(failed("FLUSHDB"))?;
    }
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(CLAIM_FUNCTION)
        .query::<String>(&mut redis)
        .map_err(failed(
            "Redis refused to load the claim function (Redis 7.0 or later is needed)",
        ))?;
    let mut batch = Batch::default();
    for rank in 0..workload.hunts {
        let hunt = Workload::hunt_id(rank);
        for (index, treasure) in workload.hunt_spec(hunt).treasures.iter().enumerate() {
            batch
                .pipe
                .cmd("HSET")
                .arg(treasure_key(hunt, TreasureId(index as u32)).as_bytes())
                .arg("code_hash")
                .arg(treasure.code_hash)
                .arg("points")
                .arg(treasure.points);
            batch.added(&mut redis, addr, 6)?;
        }
        let scores = scores_key(hunt);
        let join_all = batch.pipe.cmd("ZADD").arg(scores.as_bytes()).arg("NX");
        for player in 1..=u64::from(workload.players_per_hunt) {
            join_all.arg(0).arg(player);
        }
        let args = 3 + 2 * workload.players_per_hunt as usize;
        batch.added(&mut redis, addr, args)?;
    }
    batch.run(&mut redis, addr)?;
    let expected = u64::from(workload.hunts) * (u64::from(workload.treasures_per_hunt) + 1);
    let found: u64 = redis::cmd("DBSIZE")
        .query(&mut redis)
        .map_err(failed("DBSIZE"))?;
    if found != expected {
        return Err(format!(
            "after setting the hunts up, the Redis database at {addr} holds {found} keys, not \
             the {expected} expected; is another client writing to it?"
        ));
    }
    Ok(())
}

/// Set-up commands written together, then answered together: each answers a count.
#[derive(Default)]
struct Batch {
    pipe: redis::Pipeline,
    count: usize,
    args: usize,
}

impl Batch {
    /// Counts the command just added to the pipeline, of `args` arguments; runs the batch
    /// once it is full.
    fn added(
        &mut self,
        redis: &mut redis::Connection,
        addr: SocketAddr,
        args: usize,
    ) -> Result<(), String> {
        self.count += 1;
        self.args += args;
        if self.count >= REDIS_SETUP_BATCH_COMMANDS_MAX || self.args >= REDIS_SETUP_BATCH_ARGS_MAX {
            self.run(redis, addr)?;
        }
        Ok(())
    }

    /// Sends the batch and reads every reply; fails on the first that is not a count.
    fn run(&mut self, redis: &mut redis::Connection, addr: SocketAddr) -> Result<(), String> {
        if self.count > 0 {
            self.pipe.query::<Vec<u64>>(redis).map_err(|error| {
                explain(&format!("setting the hunts up on Redis at {addr}"), &error)
            })?;
        }
        self.pipe.clear();
        self.count = 0;
        self.args = 0;
        Ok(())
    }
}

/// A blocking connection to the Redis at `addr` for the set-up and for reading results back
/// (not for load: the generator drives [`RedisProtocol`]). Connecting, and every call after,
/// waits at most [`REDIS_CALL_WAIT_S_MAX`].
pub fn connect_blocking(addr: SocketAddr) -> Result<redis::Connection, String> {
    let wait = Duration::from_secs(REDIS_CALL_WAIT_S_MAX);
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()),
        redis: redis::RedisConnectionInfo::default(),
    };
    let cannot = |error: redis::RedisError| {
        let text = explain(&format!("cannot connect to Redis at {addr}"), &error);
        if error.kind() == redis::ErrorKind::ParseError {
            text
        } else {
            format!("{text}; is redis-server running there?")
        }
    };
    let client = redis::Client::open(info).map_err(cannot)?;
    let connection = client.get_connection_with_timeout(wait).map_err(cannot)?;
    connection
        .set_read_timeout(Some(wait))
        .and_then(|()| connection.set_write_timeout(Some(wait)))
        .map_err(|error| format!("cannot set timeouts on the connection to {addr}: {error}"))?;
    Ok(connection)
}

/// A failed call: `what`, then why in one line. A reply that is not RESP means the address is
/// not a Redis server (the parser's own text, several lines of byte values, is left out).
fn explain(what: &str, error: &redis::RedisError) -> String {
    if error.kind() == redis::ErrorKind::ParseError {
        return format!("{what}: it sent a malformed reply; is the address a Redis server?");
    }
    if error.is_timeout() {
        return format!("{what}: no reply within {REDIS_CALL_WAIT_S_MAX} s");
    }
    let text = error.to_string();
    format!("{what}: {}", text.lines().next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Position;

    fn event(kind: EventKind) -> Event {
        Event {
            hunt: HuntId(7),
            player: PlayerId(42),
            client_session: 0,
            client_seq: 1,
            client_ts: 99,
            kind,
        }
    }

    /// The arguments of the one command `event` encodes to, as text.
    fn command_of(protocol: &mut RedisProtocol, event: &Event) -> Vec<String> {
        protocol
            .encode(0, event, 5)
            .expect("the event maps to a command");
        let output = protocol.pending_output(0).to_vec();
        let len = output.len();
        protocol.consumed_output(0, len);
        let (frame, parsed_len) = decode_range(&output).unwrap().unwrap();
        assert_eq!(parsed_len, len, "one command per event");
        let RangeFrame::Array(args) = frame else {
            panic!("{frame:?}")
        };
        args.iter()
            .map(|arg| match arg {
                RangeFrame::BulkString((start, end)) => {
                    String::from_utf8(output[*start..*end].to_vec()).unwrap()
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_event_maps_to_its_redis_equivalent() {
        let workload = Workload::default();
        let mut protocol = RedisProtocol::new(&workload);
        let scores = "trove:hunt:{7}:scores";
        assert_eq!(
            command_of(&mut protocol, &event(EventKind::Join)),
            ["ZADD", scores, "NX", "0", "42"]
        );
        let checkin = EventKind::CheckIn {
            position: Position::default(),
        };
        assert_eq!(
            command_of(&mut protocol, &event(checkin)),
            ["ZINCRBY", scores, "10", "42"]
        );
        let claim = EventKind::Claim {
            treasure: TreasureId(3),
            code: "T7-3".into(),
        };
        let hash = claim_code_hash(b"T7-3").to_string();
        assert_eq!(
            command_of(&mut protocol, &event(claim)),
            [
                "FCALL",
                "trove_claim",
                "2",
                "trove:hunt:{7}:treasure:3",
                scores,
                "42",
                hash.as_str()
            ]
        );
        assert_eq!(
            command_of(&mut protocol, &event(EventKind::Leaderboard { top_k: 10 })),
            ["ZREVRANGE", scores, "0", "9", "WITHSCORES"]
        );
        // The set-up stores exactly the hash the client computes for the right code.
        let spec = workload.hunt_spec(HuntId(7));
        assert_eq!(spec.treasures[3].code_hash.to_string(), hash);
        assert_eq!(protocol.inflight.len(), 4);
    }

    #[test]
    fn events_without_an_equivalent_are_refused() {
        let mut protocol = RedisProtocol::new(&Workload::default());
        let create = event(EventKind::CreateHunt(Default::default()));
        assert!(
            protocol
                .encode(0, &create, 1)
                .unwrap_err()
                .contains("set-up")
        );
        let empty_board = event(EventKind::Leaderboard { top_k: 0 });
        assert!(protocol.encode(0, &empty_board, 1).is_err());
        assert!(protocol.inflight.is_empty() && protocol.pending_output(0).is_empty());
    }

    /// Sends `kinds` in order, then parses `replies`, fed one byte at a time; returns the
    /// (ts, class) pairs handed back.
    fn answer_bytewise(
        protocol: &mut RedisProtocol,
        kinds: Vec<EventKind>,
        replies: &[u8],
    ) -> Result<Vec<(u64, ReplyClass)>, String> {
        for (ts, kind) in kinds.into_iter().enumerate() {
            protocol.encode(0, &event(kind), ts as u64 + 100)?;
        }
        let mut answers = Vec::new();
        let mut buffered = Vec::new();
        for &byte in replies {
            buffered.push(byte);
            let parsed =
                protocol.parse(0, &buffered, &mut |ts, class| answers.push((ts, class)))?;
            buffered.drain(..parsed.consumed);
        }
        assert!(buffered.is_empty(), "every reply was consumed");
        Ok(answers)
    }

    fn claim(treasure: u32) -> EventKind {
        EventKind::Claim {
            treasure: TreasureId(treasure),
            code: "x".into(),
        }
    }

    #[test]
    fn replies_come_back_in_order_with_their_timestamps_and_classes() {
        let (log_tx, log_rx) = flume::bounded(16);
        let mut protocol = RedisProtocol::new(&Workload::default()).with_score_log(log_tx);
        let checkin = EventKind::CheckIn {
            position: Position::default(),
        };
        let kinds = vec![
            EventKind::Join,
            EventKind::Join,
            checkin,
            claim(1),
            claim(2),
            claim(3),
            EventKind::Leaderboard { top_k: 2 },
            claim(4),
        ];
        let replies = b":1\r\n:0\r\n$2\r\n10\r\n\
            *3\r\n$7\r\nclaimed\r\n$3\r\n100\r\n$3\r\n110\r\n\
            *2\r\n$15\r\nalready_claimed\r\n$1\r\n9\r\n\
            *1\r\n$10\r\nwrong_code\r\n\
            *4\r\n$2\r\n42\r\n$3\r\n110\r\n$1\r\n9\r\n$3\r\n100\r\n\
            -OOM command not allowed\r\n";
        let answers = answer_bytewise(&mut protocol, kinds, replies).unwrap();
        use ReplyClass::*;
        let classes = [Ok, Rejected, Ok, Ok, Ok, Rejected, Ok, Error];
        let expected: Vec<(u64, ReplyClass)> = (100..).zip(classes).collect();
        assert_eq!(answers, expected);
        let changes: Vec<ScoreChange> = log_rx.drain().collect();
        let change = |points, won| ScoreChange {
            hunt: HuntId(7),
            player: PlayerId(42),
            points,
            won,
        };
        assert_eq!(
            changes,
            [change(10, None), change(100, Some(TreasureId(1)))]
        );
        assert!(protocol.inflight.is_empty());
    }

    #[test]
    fn replies_that_do_not_fit_the_command_stop_the_run() {
        let cases: [(EventKind, &[u8], &str); 5] = [
            (
                EventKind::Join,
                b"+OK\r\n",
                "a join (ZADD NX) with the status `OK`",
            ),
            (claim(0), b"*1\r\n$5\r\nmaybe\r\n", "a claim"),
            (claim(0), b":1\r\n", "a claim"),
            (
                claim(0),
                b"-ERR Function not found\r\n",
                "set the hunts up first",
            ),
            (EventKind::Join, b"TROV\x01", "malformed reply"),
        ];
        for (kind, reply, expected) in cases {
            let mut protocol = RedisProtocol::new(&Workload::default());
            let error = answer_bytewise(&mut protocol, vec![kind], reply).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let mut idle = RedisProtocol::new(&Workload::default());
        let error = answer_bytewise(&mut idle, vec![], b":1\r\n").unwrap_err();
        assert!(error.contains("no command was waiting"), "{error}");
    }

    #[test]
    fn a_full_score_log_is_an_error_not_a_loss() {
        let (log_tx, _log_rx) = flume::bounded(1);
        let mut protocol = RedisProtocol::new(&Workload::default()).with_score_log(log_tx);
        let checkin = || EventKind::CheckIn {
            position: Position::default(),
        };
        let error = answer_bytewise(
            &mut protocol,
            vec![checkin(), checkin()],
            b"$2\r\n10\r\n$2\r\n20\r\n",
        )
        .unwrap_err();
        assert!(error.contains("score log is full"), "{error}");
    }

    #[test]
    fn the_fifo_is_bounded() {
        let mut protocol = RedisProtocol::new(&Workload::default());
        let join = event(EventKind::Join);
        for ts in 0..REDIS_EVENTS_INFLIGHT_PER_CONNECTION_MAX as u64 {
            protocol.encode(0, &join, ts).unwrap();
            // As if written: only the FIFO fills, not the output buffer.
            let written = protocol.pending_output(0).len();
            protocol.consumed_output(0, written);
        }
        let error = protocol.encode(0, &join, 0).unwrap_err();
        assert!(error.contains("events behind"), "{error}");
    }

    #[test]
    fn a_reply_larger_than_the_limit_is_refused_not_buffered() {
        let mut protocol = RedisProtocol::new(&Workload::default());
        protocol.encode(0, &event(EventKind::Join), 1).unwrap();
        let mut huge = format!("${}\r\n", REDIS_REPLY_BYTES_MAX).into_bytes();
        huge.resize(REDIS_REPLY_BYTES_MAX, b'x');
        let Err(error) = protocol.parse(0, &huge, &mut |_, _| {}) else {
            panic!("a reply of {} bytes was accepted", huge.len());
        };
        assert!(error.contains("larger than"), "{error}");
        // A partial reply below the limit is simply waited for.
        let parsed = protocol.parse(0, &huge[..100], &mut |_, _| {}).unwrap();
        assert_eq!(parsed.consumed, 0);
    }

    #[test]
    fn deeply_nested_arrays_do_not_exhaust_a_generator_threads_stack() {
        // Nothing nests deeper than the size limit allows: "*1\r\n" is four bytes a level.
        let levels = REDIS_REPLY_BYTES_MAX / 4 - 1;
        let mut nested = b"*1\r\n".repeat(levels);
        nested.extend_from_slice(b":1\r\n");
        // A generator thread has the default stack of a spawned thread (2 MiB).
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || decode_reply(&nested).map(|reply| reply.map(|(_, len)| len)))
            .unwrap()
            .join()
            .unwrap();
        let error = decoded.unwrap_err();
        assert!(error.contains("nested more than"), "{error}");
        // As deep as allowed, and right-nested after scalars, still decodes.
        let allowed = b"*2\r\n:1\r\n*2\r\n$1\r\nx\r\n*1\r\n*1\r\n:3\r\n+OK\r\n";
        assert_eq!(decode_reply(allowed).unwrap().unwrap().1, allowed.len() - 5);
        let deeper = b"*2\r\n:1\r\n*2\r\n$1\r\nx\r\n*1\r\n*1\r\n*1\r\n:3\r\n";
        assert!(decode_reply(deeper).is_err());
    }

    #[test]
    fn keys_are_namespaced_and_tagged_by_hunt() {
        assert_eq!(
            treasure_key(HuntId(u64::MAX), TreasureId(u32::MAX)).as_bytes(),
            b"trove:hunt:{18446744073709551615}:treasure:4294967295"
        );
        assert_eq!(scores_key(HuntId(1)).as_bytes(), b"trove:hunt:{1}:scores");
    }
}
