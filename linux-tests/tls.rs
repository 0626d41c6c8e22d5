//! TLS between clients and a node (issue 12), over loopback: a TLS node serves the client
//! library and `trove bench`, with a shared secret inside TLS too; a plaintext client, a
//! client of a plain node, a wrong CA, a wrong name and a missing or foreign client
//! certificate are each refused with a message that says what to do; bad files stop
//! `trove node` with exit 2 and one sentence; a handshake that never finishes is closed.
//!
//! Certificates are made in the test (rcgen). Every wait is bounded: child processes are
//! killed on a deadline, sockets time out.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use trove::client::tls::{TlsClient, TlsClientFiles};
use trove::client::{self, ClientConfig};
use trove::core::auth::AuthSecret;
use trove::net::tls::server_config;
use trove::node::{Node, NodeConfig, NodeReport};

use support::pki::Ca;
use support::{
    COMMAND_WAIT, ChildNode, in_process_node, round_trip, run_bounded, scratch_dir, stderr, text,
    trove,
};

const SECRET: &str = "a shared secret for the TLS tests";

/// Everything a test needs: a CA, the node's certificate for "localhost" and 127.0.0.1, a
/// client certificate from the same CA, and a second CA with its own client certificate.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    node_cert: PathBuf,
    node_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
}

fn pki(name: &str) -> Pki {
    let dir = scratch_dir(&format!("tls-{name}"));
    let (ca, other) = (Ca::new("trove test CA"), Ca::new("another CA"));
    let (node_cert, node_key) = ca.issue(
        &dir,
        "node",
        &["localhost", "127.0.0.1"],
        &[ExtendedKeyUsagePurpose::ServerAuth],
    );
    let (client_cert, client_key) = ca.issue(
        &dir,
        "client",
        &["client"],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    let (other_client_cert, other_client_key) = other.issue(
        &dir,
        "other-client",
        &["client"],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    Pki {
        ca: ca.write(&dir, "ca"),
        other_ca: other.write(&dir, "other-ca"),
        dir,
        node_cert,
        node_key,
        client_cert,
        client_key,
        other_client_cert,
        other_client_key,
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An in-process TLS node on loopback, on `shards` of the CPUs this process may use.
fn tls_node(pki: &Pki, shards: usize, configure: impl FnOnce(&mut NodeConfig)) -> Node {
    in_process_node(shards, |config| {
        config.tls = Some(server_config(&pki.node_cert, &pki.node_key, None).unwrap());
        configure(config);
    })
}

fn tls_client(files: TlsClientFiles) -> Arc<TlsClient> {
    Arc::new(TlsClient::from_files(files).expect("the client's TLS files are good"))
}

fn trusting(ca: &Path) -> TlsClientFiles {
    TlsClientFiles {
        ca: ca.to_owned(),
        ..TlsClientFiles::default()
    }
}

fn refusal(config: &ClientConfig) -> String {
    match round_trip(config, 1) {
        Err(error) => error,
        Ok(()) => panic!("the client was served"),
    }
}

fn tls_failures(report: &NodeReport) -> u64 {
    report
        .shards
        .iter()
        .map(|shard| shard.connections_tls_failed)
        .sum()
}

// ---- served over TLS ----------------------------------------------------------------------

#[test]
fn a_tls_node_serves_a_tls_client_on_every_shard_port_and_answers_every_event() {
    let pki = pki("serves");
    let node = tls_node(&pki, 2, |_| {});
    let mut config = ClientConfig::new(node.addr());
    config.tls = Some(tls_client(trusting(&pki.ca)));
    round_trip(&config, 500).expect("every event is answered over TLS");
    // Not shard-aware: one connection, the node forwards between its shards.
    config.shard_aware = false;
    round_trip(&config, 500).expect("every event is answered over one TLS connection");
    // By name instead of by IP: the certificate holds both.
    config.tls = Some(tls_client(TlsClientFiles {
        server_name: Some("localhost".into()),
        ..trusting(&pki.ca)
    }));
    round_trip(&config, 10).expect("the node proves the name localhost too");
    let report = node.stop();
    assert_eq!(tls_failures(&report), 0, "{}", report.describe());
    let applied: u64 = report
        .shards
        .iter()
        .map(|shard| shard.events_applied + shard.events_applied_for_peers)
        .sum();
    assert_eq!(applied, 1010, "{}", report.describe());
}

#[test]
fn a_secret_is_proved_inside_tls_and_a_wrong_one_is_refused() {
    let pki = pki("secret");
    let node = tls_node(&pki, 1, |config| {
        config.auth = Some(AuthSecret::from_file_contents(SECRET.as_bytes()).unwrap());
    });
    let mut config = ClientConfig::new(node.addr());
    config.tls = Some(tls_client(trusting(&pki.ca)));
    config.auth = Some(Arc::new(
        AuthSecret::from_file_contents(SECRET.as_bytes()).unwrap(),
    ));
    round_trip(&config, 100).expect("TLS, then the secret's handshake inside it");
    config.auth = Some(Arc::new(
        AuthSecret::from_file_contents(b"not the secret the node was given").unwrap(),
    ));
    let text = refusal(&config);
    assert!(text.contains("does not match"), "{text}");
    config.auth = None;
    let text = refusal(&config);
    assert!(text.contains("requires authentication"), "{text}");
    let report = node.stop();
    let shard = &report.shards[0];
    assert_eq!(
        shard.connections_unauthenticated,
        2,
        "{}",
        report.describe()
    );
    assert_eq!(shard.connections_tls_failed, 0, "{}", report.describe());
}

// ---- refused, with a reason -----------------------------------------------------------------

#[test]
fn a_plaintext_client_against_a_tls_node_is_closed_cleanly_and_told_why() {
    let pki = pki("plaintext-client");
    let node = tls_node(&pki, 1, |_| {});
    // Raw: a map request in plain trove frames. The node answers with a TLS alert and closes;
    // the socket reaches its end (no reset, no hang) well within the read timeout.
    let mut raw = TcpStream::connect(node.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(client::proto::map_request().bytes()).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let ended = raw.read_to_end(&mut received);
    assert!(ended.is_ok(), "not a clean close: {ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(received.first(), Some(&0x15), "a TLS alert: {received:?}");
    // The client library names the fix.
    let text = refusal(&ClientConfig::new(node.addr()));
    assert!(
        text.contains("speaks TLS") && text.contains("--tls-ca"),
        "{text}"
    );
    let report = node.stop();
    assert_eq!(tls_failures(&report), 2, "{}", report.describe());
}

#[test]
fn a_tls_client_against_a_plain_node_is_told_the_node_has_no_tls() {
    let pki = pki("plain-node");
    let node = in_process_node(1, |_| {});
    let mut config = ClientConfig::new(node.addr());
    config.tls = Some(tls_client(trusting(&pki.ca)));
    config.connect_timeout = Duration::from_secs(5);
    let text = refusal(&config);
    assert!(
        text.contains("without TLS") && text.contains("--tls-cert"),
        "{text}"
    );
    node.stop();
}

#[test]
fn a_node_certificate_the_client_does_not_trust_or_for_another_name_is_refused() {
    let pki = pki("wrong-ca");
    let node = tls_node(&pki, 1, |_| {});
    let mut config = ClientConfig::new(node.addr());
    config.tls = Some(tls_client(trusting(&pki.other_ca)));
    let text = refusal(&config);
    assert!(
        text.contains("no CA in --tls-ca") && text.contains("other-ca.pem"),
        "{text}"
    );
    config.tls = Some(tls_client(TlsClientFiles {
        server_name: Some("trove.example".into()),
        ..trusting(&pki.ca)
    }));
    let text = refusal(&config);
    assert!(
        text.contains("not valid for the name trove.example") && text.contains("--tls-server-name"),
        "{text}"
    );
    node.stop();
}

#[test]
fn a_node_that_requires_client_certificates_serves_only_those_its_ca_signed() {
    let pki = pki("client-certs");
    let node = tls_node(&pki, 2, |config| {
        config.tls = Some(server_config(&pki.node_cert, &pki.node_key, Some(&pki.ca)).unwrap());
    });
    let mut config = ClientConfig::new(node.addr());
    config.tls = Some(tls_client(TlsClientFiles {
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..trusting(&pki.ca)
    }));
    round_trip(&config, 100).expect("a client with a certificate from the node's CA is served");

    config.tls = Some(tls_client(trusting(&pki.ca)));
    let text = refusal(&config);
    assert!(
        text.contains("requires a client certificate") && text.contains("--tls-cert"),
        "{text}"
    );
    config.tls = Some(tls_client(TlsClientFiles {
        cert: Some(pki.other_client_cert.clone()),
        key: Some(pki.other_client_key.clone()),
        ..trusting(&pki.ca)
    }));
    let text = refusal(&config);
    assert!(text.contains("refused this client's certificate"), "{text}");
    let report = node.stop();
    assert_eq!(tls_failures(&report), 2, "{}", report.describe());
}

// ---- handshakes that never finish ---------------------------------------------------------

#[test]
fn a_handshake_that_never_finishes_is_closed_by_the_idle_timeout() {
    let pki = pki("stalled");
    let idle = Duration::from_millis(300);
    let node = tls_node(&pki, 1, |config| config.runtime.idle_timeout = idle);
    // One says nothing at all; the other starts a ClientHello record and stops mid-way.
    let silent = TcpStream::connect(node.addr()).unwrap();
    let mut partial = TcpStream::connect(node.addr()).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for mut stream in [silent, partial] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        let ended = stream.read_to_end(&mut Vec::new());
        let waited = started.elapsed();
        assert!(ended.is_ok(), "the node kept the connection: {ended:?}");
        // Well before TLS_HANDSHAKE_MS_MAX: the shard's idle timeout ended it.
        assert!(
            waited < Duration::from_millis(trove::constants::TLS_HANDSHAKE_MS_MAX),
            "closed after {waited:?}"
        );
    }
    let report = node.stop();
    assert_eq!(
        report.shards[0].connections_idle_closed,
        2,
        "{}",
        report.describe()
    );
}

// ---- the command line ---------------------------------------------------------------------

fn node_refuses(args: &[&str], expected: &[&str]) {
    let output = run_bounded(
        trove()
            .args([
                "node",
                "--metrics-listen",
                "off",
                "--port",
                "0",
                "--shards",
                "1",
            ])
            .args(args),
        COMMAND_WAIT,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
    assert_eq!(text.trim().lines().count(), 1, "one sentence: {text}");
    for word in expected {
        assert!(text.contains(word), "{args:?}: no `{word}` in {text}");
    }
}

#[test]
fn bad_tls_files_stop_the_node_with_exit_2_and_one_sentence() {
    let pki = pki("bad-files");
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    let (cert, key) = (path(&pki.node_cert), path(&pki.node_key));
    let missing = path(&pki.dir.join("missing.pem"));
    node_refuses(
        &["--tls-cert", &missing, "--tls-key", &key],
        &["--tls-cert", "missing.pem", "cannot read it"],
    );
    node_refuses(
        &["--tls-cert", &cert, "--tls-key", &missing],
        &["--tls-key", "missing.pem", "cannot read it"],
    );
    // A key that belongs to another certificate.
    node_refuses(
        &["--tls-cert", &cert, "--tls-key", &path(&pki.client_key)],
        &["--tls-key", "does not go with the certificate"],
    );
    // Files swapped: no certificate where one is expected.
    node_refuses(
        &["--tls-cert", &key, "--tls-key", &cert],
        &["--tls-cert", "holds no certificate"],
    );
    node_refuses(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &missing,
        ],
        &["--tls-client-ca", "cannot read it"],
    );
    // TLS alone authenticates no client: off loopback it needs a secret or client certificates.
    node_refuses(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--listen",
            "0.0.0.0",
        ],
        &[
            "lets any client in",
            "--tls-client-ca",
            "--auth-secret-file",
        ],
    );
}

#[test]
fn trove_bench_drives_a_tls_node_with_a_secret_and_every_event_is_answered() {
    let pki = pki("bench");
    let secret = pki.dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    let node = ChildNode::start(&[
        "--port",
        "0",
        "--shards",
        "2",
        "--tls-cert",
        &path(&pki.node_cert),
        "--tls-key",
        &path(&pki.node_key),
        "--tls-client-ca",
        &path(&pki.ca),
        "--auth-secret-file",
        &path(&secret),
    ]);
    assert!(
        node.banner.contains("(TLS"),
        "the banner says TLS: {}",
        node.banner
    );
    let out = pki.dir.join("bench");
    let output = run_bounded(
        trove()
            .args(["bench", "--target", &node.addr.to_string()])
            .args(["--tls-ca", &path(&pki.ca), "--tls-server-name", "localhost"])
            .args(["--tls-cert", &path(&pki.client_cert)])
            .args(["--tls-key", &path(&pki.client_key)])
            .args(["--auth-secret-file", &path(&secret)])
            .args(["--warmup", "0", "--duration", "1", "--connections", "2"])
            .args(["--hunts", "50", "--players", "10", "--quiet", "--out"])
            .arg(&out),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{}", text(&output));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let events = &summary["main"]["events"];
    let count = |name: &str| events[name].as_u64().unwrap();
    let sent = count("sent");
    assert!(sent > 0, "{summary}");
    let answered = count("acknowledged") + count("rejected") + count("busy");
    assert_eq!(answered, sent, "{summary}");
    assert_eq!(count("errors"), 0, "{summary}");

    // Without its certificate the bench is refused, with the reason, not a hang.
    let output = run_bounded(
        trove()
            .args(["bench", "--target", &node.addr.to_string()])
            .args(["--tls-ca", &path(&pki.ca), "--tls-server-name", "localhost"])
            .args(["--auth-secret-file", &path(&secret)])
            .args(["--warmup", "0", "--duration", "1", "--quiet"]),
        Duration::from_secs(60),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("requires a client certificate"), "{text}");
}

#[test]
fn bench_tls_flags_need_a_target_and_good_files() {
    let pki = pki("bench-flags");
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    // An embedded node has no TLS: --tls-ca without --target is a usage error.
    let output = run_bounded(
        trove().args(["bench", "--tls-ca", &path(&pki.ca), "--duration", "1"]),
        COMMAND_WAIT,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let missing = path(&pki.dir.join("missing.pem"));
    let output = run_bounded(
        trove().args(["bench", "--target", "127.0.0.1:9", "--tls-ca", &missing]),
        COMMAND_WAIT,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--tls-ca") && text.contains("missing.pem"),
        "{text}"
    );
}
