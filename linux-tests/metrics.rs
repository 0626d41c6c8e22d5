//! The `/metrics` endpoint as an operator and Prometheus see it: a real node under a real
//! bench, scraped over HTTP and read with a Prometheus text-format parser; Debian's
//! `promtool` and `prometheus` on a real scrape and on the alert rules (skipped, saying so,
//! where they are not installed); and the endpoint under abuse.
//!
//! Every node here listens on loopback, on ports the kernel picks, and is stopped by the test.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trove::constants::PARTITIONS_DEFAULT;

use support::{
    COMMAND_WAIT, ChildNode, Spawned, disk_scratch_dir, free_port, installed, one_at_a_time,
    repo_path, run_bounded, run_bounded_with_input, scratch_dir, stderr, stdout, text, trove,
    wait_until, whole_lines,
};

/// How long a bench of these tests may run: seconds of load, a loaded host's set-up.
const BENCH_WAIT: Duration = Duration::from_secs(120);

/// A `trove node` child with 2 shards and `/metrics` on a free port, with `extra` arguments.
fn metrics_node(extra: &[&str]) -> ChildNode {
    let mut args = vec!["--listen", "127.0.0.1", "--port", "0", "--shards", "2"];
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    ChildNode::start(&args)
}

/// A child's resident memory, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// One HTTP/1.1 exchange over loopback: the status code and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("the endpoint accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("an answer within 10 s");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn scrape(metrics: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned())))
        .expect("the exposition parses as Prometheus text")
}

/// A family summed over every shard.
fn total(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    support::metric_sum(scrape, name, &[])
}

/// Scrapes until `ready` holds (snapshots arrive about once a second), or panics with the
/// last scrape after 10 s.
fn scrape_until(
    metrics: SocketAddr,
    what: &str,
    ready: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    wait_until(what, Duration::from_secs(10), || {
        let scrape = scrape(metrics);
        if ready(&scrape) {
            return Ok(scrape);
        }
        Err(format!(
            "{:?}",
            scrape
                .samples
                .iter()
                .map(|s| (&s.metric, &s.labels, &s.value))
                .collect::<Vec<_>>()
        ))
    })
}

const HUNTS: u64 = 50;
const PLAYERS: u64 = 10;

/// Runs a short open-loop bench against `node`, not shard-aware (so shards forward), and
/// returns its summary and what it printed.
fn bench(node: &ChildNode, name: &str) -> (Value, String) {
    let dir = scratch_dir(&format!("metrics-{name}"));
    let output = run_bounded(
        trove()
            .args(["bench", "--target", &node.addr.to_string()])
            .args(["--rate", "20000", "--warmup", "0", "--duration", "1"])
            .args([
                "--hunts",
                &HUNTS.to_string(),
                "--players",
                &PLAYERS.to_string(),
            ])
            .args(["--connections", "2", "--no-shard-aware", "--quiet"])
            .args(["--target-metrics", &node.metrics().to_string(), "--out"])
            .arg(&dir),
        BENCH_WAIT,
    );
    assert!(output.status.success(), "{}", text(&output));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (summary, stdout(&output))
}

#[test]
fn the_counters_add_up_to_what_the_bench_sent() {
    let _serial = one_at_a_time();
    let node = metrics_node(&[]);
    let before = scrape_until(node.metrics(), "both shards", |s| {
        s.samples
            .iter()
            .filter(|sample| sample.metric == "trove_events_applied_total")
            .count()
            == 2
    });
    assert_eq!(total(&before, "trove_events_applied_total"), 0.0);
    let (summary, printed) = bench(&node, "counters");
    let events = &summary["main"]["events"];
    let sent = events["sent"].as_u64().unwrap();
    assert!(sent > 0, "{summary}");
    assert_eq!(events["errors"].as_u64(), Some(0), "{summary}");
    // The bench sets each hunt up first: one CreateHunt and one Join per player.
    let expected = (sent + HUNTS * (1 + PLAYERS)) as f64;
    scrape_until(node.metrics(), "every event applied", |s| {
        total(s, "trove_events_applied_total") >= expected
    });
    // The bench's own account of the node, from /metrics before and after (--target-metrics).
    let (_, difference) = printed
        .split_once("the node's /metrics, over the set-up and the run:\n")
        .unwrap_or_else(|| panic!("no /metrics difference in:\n{printed}"));
    let applied_by_difference: u64 = difference
        .lines()
        .filter_map(|line| {
            line.split(": ")
                .nth(1)?
                .split(" events applied")
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(applied_by_difference as f64, expected, "{difference}");
    // One more snapshot period: every shard's snapshot is now from after the bench ended.
    std::thread::sleep(Duration::from_millis(1_500));
    let after = scrape(node.metrics());
    assert_eq!(total(&after, "trove_events_applied_total"), expected);
    // Per partition: one series for each of the node's partitions, on its owning shard, and
    // together every event applied.
    let partition_series: Vec<_> = after
        .samples
        .iter()
        .filter(|s| s.metric == "trove_partition_events_applied_total")
        .collect();
    assert_eq!(partition_series.len(), PARTITIONS_DEFAULT as usize);
    let partitions: std::collections::BTreeSet<&str> = partition_series
        .iter()
        .filter_map(|s| s.labels.get("partition"))
        .collect();
    assert_eq!(partitions.len(), PARTITIONS_DEFAULT as usize, "each once");
    assert_eq!(
        total(&after, "trove_partition_events_applied_total"),
        expected
    );
    let forwarded = total(&after, "trove_events_forwarded_total");
    assert!(
        forwarded > 0.0,
        "a client that is not shard-aware makes shards forward"
    );
    // Every forwarded event is applied by its owner, and its reply's round trip recorded.
    assert_eq!(
        total(&after, "trove_events_applied_for_peers_total"),
        forwarded
    );
    assert_eq!(total(&after, "trove_stage_latency_seconds_count"), {
        let dispatch: f64 = after
            .samples
            .iter()
            .filter(|s| {
                s.metric == "trove_stage_latency_seconds_count"
                    && s.labels.get("stage") == Some("frame_dispatch")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum();
        dispatch + forwarded
    });
    assert!(total(&after, "trove_frames_received_total") > 0.0);
    assert!(total(&after, "trove_connections_accepted_total") >= 2.0);
    assert_eq!(total(&after, "trove_frames_rejected_total"), 0.0);
    assert_eq!(total(&after, "trove_busy_replies_total"), 0.0);
    assert_eq!(total(&after, "trove_config_shards"), 2.0);
    // What became of each event, by the node's account and by the bench's own.
    let outcome = |name: &str| -> f64 {
        after
            .samples
            .iter()
            .filter(|s| s.metric == "trove_events_total" && s.labels.get("outcome") == Some(name))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{s:?}"),
            })
            .sum()
    };
    let setup = (HUNTS * (1 + PLAYERS)) as f64;
    let bench_count = |field: &str| events[field].as_u64().unwrap() as f64;
    assert_eq!(total(&after, "trove_events_total"), expected);
    assert_eq!(outcome("accepted"), bench_count("acknowledged") + setup);
    assert_eq!(outcome("rejected"), bench_count("rejected"));
    assert_eq!(
        total(&after, "trove_events_rejected_total"),
        bench_count("rejected")
    );
    let not_applied = [
        "busy",
        "unavailable",
        "log_full",
        "disk_full",
        "disk_failed",
        "moved",
        "shutting_down",
        "outcome_unknown",
        "duplicate",
    ];
    for outcome_label in not_applied {
        assert_eq!(outcome(outcome_label), 0.0, "{outcome_label}");
    }
    // Every outcome of every kind is served, zeros included: 6 kinds of 11 outcomes a shard.
    let events_series = after
        .samples
        .iter()
        .filter(|s| s.metric == "trove_events_total")
        .count();
    assert_eq!(events_series, 2 * 6 * (2 + not_applied.len()));
    // A node that moved nothing and logs nothing serves the moves' and the log's unknown
    // replies as zeros, one series a shard.
    for family in [
        "trove_move_replies_kept_back_total",
        "trove_move_replies_unknown_total",
        "trove_log_replies_unknown_total",
    ] {
        let series: Vec<f64> = after
            .samples
            .iter()
            .filter(|s| s.metric == family)
            .map(value_of)
            .collect();
        assert_eq!(series, [0.0, 0.0], "{family}");
    }
    // Bytes each way: at least a frame header per frame in, something out.
    assert!(
        total(&after, "trove_bytes_received_total")
            >= 32.0 * total(&after, "trove_frames_received_total")
    );
    assert!(total(&after, "trove_bytes_sent_total") > 0.0);
    assert!(total(&after, "trove_frames_sent_total") > 0.0);
    // Both executors ran; neither has anything queued once the bench is over.
    for sample in after
        .samples
        .iter()
        .filter(|s| s.metric == "trove_executor_busy_seconds_total")
    {
        assert!(
            matches!(sample.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v > 0.0),
            "{sample:?}"
        );
    }
    assert_eq!(total(&after, "trove_mesh_batches_queued"), 0.0);
    assert_eq!(total(&after, "trove_reply_bytes_queued"), 0.0);
    // Every series the dashboard and the alert rules name is one a node serves (the
    // cluster's: a node in a cluster, see the cluster test).
    let (_, text) = get(node.metrics(), "/metrics");
    assert_names_served(&text, |name| !name.starts_with("trove_cluster_"));
    // Every histogram's +Inf bucket holds its count.
    for sample in after
        .samples
        .iter()
        .filter(|s| s.metric == "trove_stage_latency_seconds")
    {
        let prometheus_parse::Value::Histogram(buckets) = &sample.value else {
            panic!("{sample:?}");
        };
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .unwrap()
            .count;
        let count = after
            .samples
            .iter()
            .find(|s| s.metric == "trove_stage_latency_seconds_count" && s.labels == sample.labels)
            .map(|s| match s.value {
                prometheus_parse::Value::Untyped(v) => v,
                _ => -1.0,
            })
            .unwrap();
        assert_eq!(inf, count, "{sample:?}");
    }
}

/// A labelled sample's value (counters, gauges and a histogram's `_count` alike).
fn value_of(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{sample:?} is a histogram"),
    }
}

#[test]
fn a_node_with_a_data_dir_serves_its_log_syncs() {
    let _serial = one_at_a_time();
    // On the disk the build is on, not tmpfs: the syncs are real.
    let data = disk_scratch_dir("metrics-log");
    let node = metrics_node(&["--data-dir", data.to_str().unwrap()]);
    let (summary, _) = bench(&node, "log");
    let sent = summary["main"]["events"]["sent"].as_u64().unwrap();
    assert!(sent > 0, "{summary}");
    let expected = (sent + HUNTS * (1 + PLAYERS)) as f64;
    // In sync mode every answered event's record was synced first, so once every event is
    // applied and answered, the log's records are exactly the events applied.
    let after = scrape_until(node.metrics(), "every event's record synced", |s| {
        total(s, "trove_events_applied_total") >= expected
            && total(s, "trove_log_records_total") == total(s, "trove_events_applied_total")
    });
    let records = total(&after, "trove_log_records_total");
    let syncs = total(&after, "trove_log_syncs_total");
    let bytes = total(&after, "trove_log_bytes_total");
    assert!(
        syncs > 0.0 && syncs <= records,
        "{syncs} syncs for {records} records"
    );
    // Every record has its 32-byte header; every write is whole blocks of at least 512 bytes.
    assert!(
        bytes >= 32.0 * records,
        "{bytes} bytes for {records} records"
    );
    assert_eq!(bytes % 512.0, 0.0, "{bytes}");
    // One log_sync sample per sync, shard by shard.
    for shard in ["0", "1"] {
        let of = |name: &str, stage: Option<&str>| -> f64 {
            after
                .samples
                .iter()
                .filter(|s| {
                    s.metric == name
                        && s.labels.get("shard") == Some(shard)
                        && s.labels.get("stage") == stage
                })
                .map(value_of)
                .sum()
        };
        let shard_syncs = of("trove_log_syncs_total", None);
        assert!(shard_syncs > 0.0, "shard {shard} applies events: it syncs");
        assert_eq!(
            of("trove_stage_latency_seconds_count", Some("log_sync")),
            shard_syncs,
            "shard {shard}"
        );
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
}

/// Whether `text` (an exposition) serves the series `name`: a sample of it, or its family's
/// `# HELP` line (a family whose labelled series appear once they count something).
fn serves(text: &str, name: &str) -> bool {
    let family = name.strip_suffix("_total").unwrap_or(name);
    text.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            || line.starts_with(&format!("# HELP {name} "))
            || line.starts_with(&format!("# HELP {family} "))
    })
}

/// Asserts that every `trove_*` series the alert rules and the dashboard name (and `check`
/// selects) is one `text` serves.
fn assert_names_served(text: &str, check: impl Fn(&str) -> bool) {
    for file in [
        "tuning/monitoring/alerts.yml",
        "tuning/monitoring/dashboard.json",
    ] {
        let source = std::fs::read_to_string(repo_path(file)).unwrap();
        for (start, _) in source.match_indices("trove_") {
            let name: String = source[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if check(&name) {
                assert!(
                    serves(text, &name),
                    "{file} names {name}, which no node serves"
                );
            }
        }
    }
}

#[test]
fn promtool_accepts_a_real_scrape_and_the_alert_rules() {
    let Some(promtool) = installed("promtool") else {
        return;
    };
    let _serial = one_at_a_time();
    let node = metrics_node(&[]);
    let _ = bench(&node, "promtool");
    let (status, body) = get(node.metrics(), "/metrics");
    assert_eq!(status, 200);
    let output = run_bounded_with_input(
        Command::new(&promtool).args(["check", "metrics"]),
        body.as_bytes(),
        COMMAND_WAIT,
    );
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}",
        text(&output)
    );
    let output = run_bounded(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(repo_path("tuning/monitoring/alerts.yml")),
        COMMAND_WAIT,
    );
    assert!(
        output.status.success(),
        "promtool check rules: {}",
        text(&output)
    );
}

#[test]
fn prometheus_scrapes_a_node_and_answers_a_trove_series() {
    let Some(prometheus) = installed("prometheus") else {
        return;
    };
    let _serial = one_at_a_time();
    let node = metrics_node(&[]);
    let dir = scratch_dir("metrics-prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trove\n    static_configs:\n      - targets: ['{}']\n",
            node.metrics()
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prometheus = Spawned::start(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}")),
    );
    let first = wait_until(
        "prometheus answers trove_config_shards",
        Duration::from_secs(30),
        || {
            let answer = TcpStream::connect(web)
                .ok()
                .map(|_| get(web, "/api/v1/query?query=trove_config_shards"));
            if let Some((200, body)) = &answer {
                let json: Value = serde_json::from_str(body).unwrap();
                if let Some(first) = json["data"]["result"].as_array().and_then(|r| r.first()) {
                    return Ok(first.clone());
                }
            }
            Err(format!("{answer:?}"))
        },
    );
    assert_eq!(first["value"][1], "2", "{first}");
    assert_eq!(first["metric"]["job"], "trove", "{first}");
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_endpoint_refuses_bad_requests_with_a_4xx_that_says_why() {
    let _serial = one_at_a_time();
    let node = metrics_node(&[]);
    let cases: [(&[u8], u16, &str); 5] = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405, "use GET"),
        (b"GET /admin HTTP/1.1\r\n\r\n", 404, "/metrics"),
        (b"GET / HTTP/1.1\r\n\r\n", 200, "/metrics"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 200, "trove_build_info"),
    ];
    for (request, status, says) in cases {
        let (got, body) = http(node.metrics(), request);
        assert_eq!(got, status, "{}: {body}", String::from_utf8_lossy(request));
        assert!(body.contains(says), "{body}");
    }
    let mut oversized = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    oversized.resize(64 * 1024, b'x');
    let (got, body) = http(node.metrics(), &oversized);
    assert_eq!(got, 431, "{body}");
    assert!(body.contains("bytes"), "{body}");
    let mut headers = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for header in 0..100 {
        headers.extend_from_slice(format!("X-{header}: 1\r\n").as_bytes());
    }
    headers.extend_from_slice(b"\r\n");
    let (got, body) = http(node.metrics(), &headers);
    assert_eq!(got, 431, "{body}");
    assert!(body.contains("headers"), "{body}");
}

#[test]
fn slow_clients_and_bursts_of_scrapes_are_bounded() {
    let _serial = one_at_a_time();
    let node = metrics_node(&[]);
    // A client that sends half a request and waits: answered 408 and closed, in bounded time,
    // while other scrapes are served meanwhile.
    let mut slow = TcpStream::connect(node.metrics()).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(node.metrics(), "/metrics").0, 200);
    }
    let mut answer = String::new();
    slow.read_to_string(&mut answer)
        .expect("the slow client is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // 1,000 scrapes in bursts of 100 at once: each is answered, 200 with the exposition or
    // 503 when every slot is taken, and never anything else; the node's memory stays put.
    let rss_before = rss_bytes(node.pid());
    let mut served = 0;
    let mut refused = 0;
    for _burst in 0..10 {
        let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..100)
                .map(|_| scope.spawn(|| get(node.metrics(), "/metrics")))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for (status, body) in answers {
            match status {
                200 => {
                    assert!(body.contains("trove_events_applied_total"));
                    served += 1;
                }
                503 => {
                    assert!(body.contains("retry"), "{body}");
                    refused += 1;
                }
                other => panic!("a scrape was answered {other}: {body}"),
            }
        }
    }
    assert_eq!(served + refused, 1000);
    // Each of METRICS_CONNECTIONS_MAX (64) slots holds at most a request head (8 KiB) and one
    // answer (tens of KiB for two shards); the bound is several times that.
    let growth = rss_bytes(node.pid()).saturating_sub(rss_before);
    assert!(
        growth < 16 << 20,
        "the node grew by {growth} bytes serving 1,000 scrapes"
    );
    assert!(
        served >= 500,
        "only {served} of 1000 scrapes were served ({refused} refused)"
    );
    // Still serving afterwards.
    assert_eq!(get(node.metrics(), "/metrics").0, 200);
}

#[test]
fn top_once_shows_every_shard_busy_under_load() {
    let _serial = one_at_a_time();
    let node = metrics_node(&[]);
    let dir = scratch_dir("metrics-top");
    let bench = Spawned::start(
        trove()
            .args(["bench", "--target", &node.addr.to_string()])
            .args(["--rate", "20000", "--warmup", "0", "--duration", "5"])
            .args([
                "--hunts",
                "100",
                "--players",
                "10",
                "--no-shard-aware",
                "--quiet",
                "--out",
            ])
            .arg(&dir),
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let output = run_bounded(
        trove().args(["top", "--once", "--node", &node.metrics().to_string()]),
        COMMAND_WAIT,
    );
    // Only the table is judged here; the bench just has to end.
    let _ = bench.finish(BENCH_WAIT);
    let _ = std::fs::remove_dir_all(&dir);
    let table = stdout(&output);
    assert!(output.status.success(), "{}", text(&output));
    assert!(table.starts_with("NODE"), "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    let mut shards: Vec<&str> = rows.iter().map(|row| row[1]).collect();
    shards.sort();
    assert_eq!(shards, ["0", "1"], "{table}");
    for row in &rows {
        assert_eq!(row[0], node.metrics().to_string(), "{table}");
        assert_ne!(
            row[2], "0",
            "shard {} shows no events/s under load:\n{table}",
            row[1]
        );
    }
    // The shard whose port the connections reached dispatched frames (the other may only
    // apply what it is forwarded).
    assert!(
        rows.iter().any(|row| row[4] != "-"),
        "no dispatch p99 under load:\n{table}"
    );
    // A node that is not there: exit 1, and a sentence that names it.
    let output = run_bounded(
        trove().args(["top", "--once", "--node", "127.0.0.1:9"]),
        COMMAND_WAIT,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot connect to 127.0.0.1:9"));
}

/// A client of `addr` that sends leaderboard queries as fast as the node takes them and never
/// reads a reply, with a small receive buffer so that its replies back up into the node
/// quickly; returns once the node has stopped reading it (a write waited a second), or after
/// 2,000 frames.
fn never_reading_client(addr: SocketAddr) -> TcpStream {
    use trove::core::codec::{FrameBuilder, FrameKind};
    use trove::core::message::EventKind;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut raw: TcpStream = socket.into();
    raw.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let hunt = support::create_hunt(1);
    let mut seq = 1;
    for _ in 0..2_000 {
        let mut frames = FrameBuilder::new();
        frames.begin(FrameKind::Events);
        if seq == 1 {
            frames.push(&hunt).unwrap();
        }
        for _ in 0..256 {
            seq += 1;
            let query = trove::core::message::Event {
                client_seq: seq,
                kind: EventKind::Leaderboard { top_k: 16 },
                ..hunt.clone()
            };
            frames.push(&query).unwrap();
        }
        frames.finish(1);
        if raw.write_all(frames.bytes()).is_err() {
            break; // the node stopped reading: this connection holds its share
        }
    }
    raw
}

/// The largest value of a family over the shards.
fn largest(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .map(value_of)
        .fold(f64::NEG_INFINITY, f64::max)
}

#[test]
fn a_client_that_never_reads_raises_the_fullest_connection_to_its_share() {
    let _serial = one_at_a_time();
    // A small share, so that the hog reaches it long before the shard's budget; a long write
    // stall, so that the node does not close the hog while the test looks at it.
    let node = metrics_node(&["--connection-events-max", "64", "--write-stall-ms", "60000"]);
    let quiet = scrape_until(node.metrics(), "both shards", |s| {
        s.samples
            .iter()
            .filter(|sample| sample.metric == "trove_connection_credit_events_capacity")
            .count()
            == 2
    });
    assert_eq!(
        largest(&quiet, "trove_connection_credit_events_capacity"),
        64.0
    );
    assert_eq!(
        largest(&quiet, "trove_connection_credit_events_held_max"),
        0.0
    );
    assert_eq!(total(&quiet, "trove_connections_at_credit_share"), 0.0);
    let hog = never_reading_client(node.addr);
    let hogged = scrape_until(node.metrics(), "the hog at its share", |s| {
        largest(s, "trove_connection_credit_events_held_max") == 64.0
            && total(s, "trove_connections_at_credit_share") == 1.0
    });
    assert_eq!(
        largest(&hogged, "trove_connection_credit_use_ratio_max"),
        1.0
    );
    assert!(
        total(&hogged, "trove_socket_credit_events_held") >= 64.0,
        "the hog's share is held in its shard's budget"
    );
    // `trove top` shows the fullest connection (FULLEST, fourth column from the end).
    let output = run_bounded(
        trove().args(["top", "--once", "--node", &node.metrics().to_string()]),
        COMMAND_WAIT,
    );
    let table = stdout(&output);
    assert!(output.status.success(), "{}", text(&output));
    let fullest: Vec<&str> = table
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words[words.len() - 4]
        })
        .collect();
    assert_eq!(fullest[0], "FULLEST", "{table}");
    assert!(fullest[1..].contains(&"100%"), "{table}");
    // The hog goes: its credit comes back.
    drop(hog);
    scrape_until(node.metrics(), "the hog's share returned", |s| {
        largest(s, "trove_connection_credit_events_held_max") == 0.0
            && total(s, "trove_connections_at_credit_share") == 0.0
    });
}

#[test]
fn an_embedded_bench_serves_metrics_and_its_summary_carries_the_node_s_counters_and_stages() {
    let _serial = one_at_a_time();
    let dir = scratch_dir("metrics-embedded");
    let bench = Spawned::start(
        trove()
            .args([
                "bench",
                "--node-cpus",
                "0-1",
                "--rate",
                "20000",
                "--warmup",
                "0",
            ])
            .args(["--duration", "2", "--hunts", &HUNTS.to_string()])
            .args(["--players", &PLAYERS.to_string(), "--no-shard-aware"])
            .args(["--metrics-listen", "127.0.0.1:0", "--out"])
            .arg(&dir),
    );
    // The embedded node's endpoint answers during the run.
    let metrics: SocketAddr = wait_until("the embedded node's metrics address", BENCH_WAIT, || {
        let said = bench.stderr();
        whole_lines(&said)
            .find_map(|line| {
                line.split("serves http://")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or(said)
    });
    let scrape = scrape(metrics);
    assert_eq!(total(&scrape, "trove_config_shards"), 2.0);
    let output = bench.finish(BENCH_WAIT);
    assert!(output.status.success(), "{}", text(&output));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(summary["schema"], "trove.bench.summary/v2");
    let sent = summary["main"]["events"]["sent"].as_u64().unwrap();
    let shards = summary["node"]["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no node in {summary}"));
    assert_eq!(shards.len(), 2, "{summary}");
    let sum = |field: &str| -> u64 { shards.iter().map(|s| s[field].as_u64().unwrap()).sum() };
    assert_eq!(
        sum("events_applied"),
        sent + HUNTS * (1 + PLAYERS),
        "{summary}"
    );
    assert_eq!(
        sum("events_applied_for_peers"),
        sum("events_forwarded"),
        "{summary}"
    );
    let stage_count = |stage: &str| -> u64 {
        shards
            .iter()
            .map(|s| s[stage]["count"].as_u64().unwrap())
            .sum()
    };
    assert!(stage_count("frame_dispatch_us") > 0, "{summary}");
    assert_eq!(
        stage_count("mesh_round_trip_us"),
        sum("events_forwarded"),
        "{summary}"
    );
}

/// The metrics address each node of cluster `name` registered in etcd, once `count` have.
fn registered_metrics(etcd: &str, name: &str, count: usize) -> Vec<SocketAddr> {
    use trove::cluster::coordinator::{ClusterView, Request, Response};
    let keys = trove::cluster::keys::ClusterKeys::new(name).unwrap();
    let mut client =
        trove::cluster::etcd::EtcdClient::new(vec![etcd.to_owned()], Duration::from_secs(2));
    let what = format!("{count} nodes register their /metrics");
    wait_until(&what, Duration::from_secs(20), || {
        let request = Request::RangePrefix {
            prefix: keys.prefix().to_owned(),
        };
        let Ok(Response::Range { revision, kvs }) = client.execute(&request) else {
            return Err("etcd did not answer".to_owned());
        };
        let view = ClusterView::from_range(&keys, revision, &kvs);
        let addrs: Vec<SocketAddr> = view
            .nodes
            .values()
            .filter_map(|entry| entry.info.metrics.as_ref()?.parse().ok())
            .collect();
        if addrs.len() == count {
            return Ok(addrs);
        }
        Err(format!("registered: {addrs:?}"))
    })
}

/// A node-level gauge of a scrape (no `shard` label), by name.
fn node_gauge(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| sample.metric == name)
        .and_then(|sample| match sample.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn cluster_nodes_serve_their_standing_and_top_finds_them_through_etcd() {
    use trove::cluster::local::{EtcdProcess, LocalNodeConfig, NodeProcess};
    if installed("etcd").is_none() {
        return;
    }
    let _serial = one_at_a_time();
    const PARTITIONS: u32 = 16;
    let etcd = EtcdProcess::start().expect("etcd starts");
    let _nodes: Vec<NodeProcess> = (1..=2)
        .map(|node_id| {
            NodeProcess::start(&LocalNodeConfig {
                trove: support::trove_binary().into(),
                etcd: etcd.endpoint(),
                cluster_name: "metrics".into(),
                node_id,
                shards: 1,
                partitions: PARTITIONS,
                lease_ttl_s: 3,
            })
            .expect("the node starts")
        })
        .collect();
    let metrics = registered_metrics(&etcd.endpoint(), "metrics", 2);
    // Once the controller has placed every partition, the nodes' own accounts add up: every
    // partition owned by one of them, one controller, valid leases, nothing offline.
    let what = "the nodes report every partition placed";
    let scrapes = wait_until(what, Duration::from_secs(20), || {
        let scrapes: Vec<prometheus_parse::Scrape> = metrics.iter().map(|&m| scrape(m)).collect();
        let sum = |name: &str| -> f64 {
            scrapes
                .iter()
                .map(|s| node_gauge(s, name).unwrap_or(0.0))
                .sum()
        };
        let placed = sum("trove_cluster_partitions_owned") == f64::from(PARTITIONS)
            && sum("trove_cluster_partitions_moving") == 0.0
            && sum("trove_cluster_controller") == 1.0;
        if placed {
            return Ok(scrapes);
        }
        Err(format!(
            "owned {}, moving {}, controllers {}",
            sum("trove_cluster_partitions_owned"),
            sum("trove_cluster_partitions_moving"),
            sum("trove_cluster_controller")
        ))
    });
    let (_, text) = get(metrics[0], "/metrics");
    assert_names_served(&text, |name| name.starts_with("trove_cluster_"));
    for scrape in &scrapes {
        let lease_left = node_gauge(scrape, "trove_cluster_lease_left_seconds").unwrap();
        assert!(lease_left > 0.0 && lease_left <= 3.0, "{lease_left}");
        assert!(node_gauge(scrape, "trove_cluster_map_epoch").unwrap() > 0.0);
        assert_eq!(
            node_gauge(scrape, "trove_cluster_partitions_offline"),
            Some(0.0)
        );
        assert_eq!(
            node_gauge(scrape, "trove_cluster_etcd_reachable"),
            Some(1.0)
        );
    }
    // trove top finds both nodes through etcd and shows each one's shard.
    let output = run_bounded(
        trove()
            .args(["top", "--once", "--cluster", &etcd.endpoint()])
            .args(["--cluster-name", "metrics"]),
        COMMAND_WAIT,
    );
    let table = stdout(&output);
    assert!(output.status.success(), "{table}{}", stderr(&output));
    let mut shown: Vec<String> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .collect();
    shown.sort();
    let mut expected: Vec<String> = metrics.iter().map(SocketAddr::to_string).collect();
    expected.sort();
    assert_eq!(shown, expected, "{table}");
    // A cluster name nobody registered under: exit 1, and a sentence that says so.
    let output = run_bounded(
        trove()
            .args(["top", "--once", "--cluster", &etcd.endpoint()])
            .args(["--cluster-name", "nobody"]),
        COMMAND_WAIT,
    );
    assert_eq!(output.status.code(), Some(1));
    let said = stderr(&output);
    assert!(said.contains("no node is registered"), "{said}");
}
