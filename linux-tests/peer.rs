//! The Redis peer and the loopback calibration, against real sockets: a redis-server of the
//! test's own (skipped, with a message, where redis-server is not installed) driven by the
//! same generator loop that drives trove, and the plain-socket calibration.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use trove::bench::calibrate::calibrate;
use trove::bench::redis::{
    ScoreChange, WINNER_FIELD, connect_blocking, connect_redis, scores_key, set_up_hunts_redis,
    treasure_key,
};
use trove::bench::run::{LoadSpec, RunPlan, measure};
use trove::bench::workload::{Mix, Workload};
use trove::core::ids::{HuntId, PlayerId, TreasureId};
use trove::host::affinity::allowed_cpus;

use support::{Spawned, free_port, installed, wait_until};

/// A redis-server on a free loopback port, without persistence, killed when dropped.
struct RedisServer {
    _process: Spawned,
    addr: SocketAddr,
}

impl RedisServer {
    /// `None` (after saying why) where redis-server is not installed.
    fn start() -> Option<RedisServer> {
        let program = installed("redis-server")?;
        let port = free_port();
        let process = Spawned::start(
            Command::new(program)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", &std::env::temp_dir().to_string_lossy()]),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(
            "redis-server answers PING",
            Duration::from_secs(10),
            || match connect_blocking(addr).and_then(|mut redis| {
                redis::cmd("PING")
                    .query::<String>(&mut redis)
                    .map_err(|error| error.to_string())
            }) {
                Ok(pong) if pong == "PONG" => Ok(()),
                other => Err(format!("{other:?} from {addr}")),
            },
        );
        Some(RedisServer {
            _process: process,
            addr,
        })
    }
}

fn small_workload() -> Workload {
    Workload {
        hunts: 16,
        zipf: 0.8,
        players_per_hunt: 8,
        waypoints_per_hunt: 4,
        treasures_per_hunt: 4,
        mix: Mix {
            join: 5,
            checkin: 40,
            claim: 45,
            leaderboard: 10,
        },
        wrong_code_percent: 20,
        seed: 7,
        ..Workload::default()
    }
}

/// Every treasure's winner, as Redis holds them.
fn winners_in_redis(
    redis: &mut redis::Connection,
    workload: &Workload,
) -> HashMap<(HuntId, TreasureId), PlayerId> {
    let mut winners = HashMap::new();
    for rank in 0..workload.hunts {
        let hunt = Workload::hunt_id(rank);
        for index in 0..workload.treasures_per_hunt {
            let treasure = TreasureId(index);
            let key = treasure_key(hunt, treasure);
            let winner: Option<u64> = redis::cmd("HGET")
                .arg(key.as_bytes())
                .arg(WINNER_FIELD)
                .query(redis)
                .unwrap();
            if let Some(winner) = winner {
                winners.insert((hunt, treasure), PlayerId(winner));
            }
        }
    }
    winners
}

/// Every player's score above zero, as Redis holds them.
fn scores_in_redis(
    redis: &mut redis::Connection,
    workload: &Workload,
) -> HashMap<(HuntId, PlayerId), u32> {
    let mut scores = HashMap::new();
    for rank in 0..workload.hunts {
        let hunt = Workload::hunt_id(rank);
        let key = scores_key(hunt);
        let pairs: Vec<(u64, f64)> = redis::cmd("ZRANGE")
            .arg(key.as_bytes())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(redis)
            .unwrap();
        for (player, score) in pairs {
            if score > 0.0 {
                scores.insert((hunt, PlayerId(player)), score as u32);
            }
        }
    }
    scores
}

#[test]
fn redis_answers_every_event_and_agrees_with_its_replies() {
    let Some(redis_server) = RedisServer::start() else {
        return;
    };
    let addr = redis_server.addr;
    let workload = small_workload();

    set_up_hunts_redis(addr, &workload, false).expect("an empty database is set up");
    let refusal = set_up_hunts_redis(addr, &workload, false).unwrap_err();
    assert!(refusal.contains("not empty"), "{refusal}");
    set_up_hunts_redis(addr, &workload, true).expect("a wipe was asked for");

    let plan = RunPlan {
        workload: workload.clone(),
        load: LoadSpec::Open {
            rate_per_s: 2_000.0,
            inflight_max: 1024,
        },
        connections: 2,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        client_cpus: Vec::new(),
    };
    // Room for every event of the run, warm-up included, several times over.
    let (log_tx, log_rx) = flume::bounded::<ScoreChange>(20_000);
    let measurement = measure(
        &plan,
        |_| {
            let (protocol, streams) = connect_redis(addr, &workload)?;
            Ok((protocol.with_score_log(log_tx.clone()), streams))
        },
        &mut |_, _, _| {},
    )
    .expect("the run completes");
    drop(log_tx);

    let counts = measurement.counts;
    assert!(counts.sent > 1_000, "{counts:?}");
    assert_eq!(measurement.missing, 0, "every event is answered");
    assert_eq!(counts.acknowledged, counts.sent, "{counts:?}");
    assert_eq!((counts.errors, counts.busy), (0, 0), "{counts:?}");
    assert!(
        counts.rejected > 0 && counts.ok > counts.rejected,
        "wrong codes are refused, the rest applied: {counts:?}"
    );
    assert_eq!(
        measurement.latencies.corrected_ns.len(),
        counts.acknowledged,
        "every measured reply has its latency recorded"
    );

    // What the replies said, warm-up included: every treasure won at most once.
    let mut won: HashMap<(HuntId, TreasureId), PlayerId> = HashMap::new();
    let mut scored: HashMap<(HuntId, PlayerId), u32> = HashMap::new();
    for change in log_rx.drain() {
        if let Some(treasure) = change.won {
            let earlier = won.insert((change.hunt, treasure), change.player);
            assert_eq!(earlier, None, "{treasure:?} of {:?} won twice", change.hunt);
        }
        *scored.entry((change.hunt, change.player)).or_default() += change.points;
    }
    assert!(!won.is_empty(), "some treasure was won");

    let mut redis = connect_blocking(addr).unwrap();
    assert_eq!(winners_in_redis(&mut redis, &workload), won);
    assert_eq!(scores_in_redis(&mut redis, &workload), scored);
}

#[test]
fn set_up_refuses_what_is_not_redis() {
    // A listener that answers nothing like RESP: the set-up says so instead of hanging.
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let talker = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        // Keep the connection open until the client has read and given up.
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 64]);
    });
    let error = set_up_hunts_redis(addr, &small_workload(), false).unwrap_err();
    assert!(error.contains("malformed reply"), "{error}");
    assert!(error.contains("is the address a Redis server"), "{error}");
    talker.join().unwrap();
}

#[test]
fn the_loopback_calibration_measures_round_trips_and_bytes() {
    let cpus = allowed_cpus();
    let client = cpus[0];
    let server = *cpus.get(1).unwrap_or(&cpus[0]);
    let calibration = calibrate(Some(client), Some(server), Duration::from_millis(100))
        .expect("loopback calibrates");
    assert!(!calibration.loopback_rtt_ns.is_empty());
    assert!(
        calibration.loopback_bytes_per_s.is_finite() && calibration.loopback_bytes_per_s > 0.0,
        "{}",
        calibration.loopback_bytes_per_s
    );
    let mut expected = vec![client, server];
    expected.dedup();
    assert_eq!(calibration.cpus, expected);
}
