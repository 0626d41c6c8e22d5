//! The tests' own scaffolding (`support/mod.rs`) under test: its bounds kill what outlives
//! them, within the bound, and its waits give back what the children printed.

#[path = "mod.rs"]
mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    ChildNode, Spawned, free_port, run_bounded, run_bounded_with_input, stderr, stdout, wait_until,
};

/// The message of the panic `run` ends in; fails if it returns.
fn panic_message(run: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(run)).expect_err("it should have panicked");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_default()
}

/// Whether `pid` is a process of this host (a zombie counts: not yet reaped).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn run_bounded_kills_a_command_that_outlives_its_bound_and_names_it() {
    let started = Instant::now();
    let message = panic_message(|| {
        run_bounded(Command::new("sleep").arg("60"), Duration::from_millis(500));
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "returned after {took:?}"
    );
    assert!(
        message.contains("\"sleep\" \"60\"") && message.contains("500ms"),
        "{message}"
    );
}

#[test]
fn a_spawned_child_past_its_bound_is_killed_and_reaped() {
    let sleeper = Spawned::start(Command::new("sleep").arg("60"));
    let pid = sleeper.pid();
    assert!(exists(pid));
    panic_message(|| {
        sleeper.finish(Duration::from_millis(200));
    });
    assert!(!exists(pid), "sleep {pid} outlived its bound");
}

#[test]
fn run_bounded_gives_the_exit_code_and_both_outputs() {
    let output = run_bounded(
        Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        (stdout(&output), stderr(&output)),
        ("out\n".into(), "err\n".into())
    );
    let output = run_bounded_with_input(
        &mut Command::new("cat"),
        b"given on stdin",
        Duration::from_secs(20),
    );
    assert_eq!(stdout(&output), "given on stdin");
}

#[test]
fn a_grandchild_that_keeps_the_output_open_does_not_hold_run_bounded() {
    // The shell exits at once; the sleep it leaves behind holds its stdout and stderr, as a
    // server a command started would (with pipes, reading to their end would wait for it).
    let started = Instant::now();
    let output = run_bounded(
        Command::new("sh").args(["-c", "sleep 30 & echo $!"]),
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    let grandchild: i32 = stdout(&output).trim().parse().unwrap();
    // SAFETY: kill(2) on the sleep this test started.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    assert!(output.status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn wait_until_gives_the_value_or_names_what_never_came() {
    let mut tries = 0;
    let value = wait_until("the third try", Duration::from_secs(10), || {
        tries += 1;
        if tries == 3 {
            Ok(tries * 10)
        } else {
            Err(format!("try {tries}"))
        }
    });
    assert_eq!((value, tries), (30, 3));
    let started = Instant::now();
    let message = panic_message(|| {
        wait_until(
            "a thing that never comes",
            Duration::from_millis(300),
            || Err::<(), _>("nothing yet".to_string()),
        );
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        message.contains("a thing that never comes") && message.contains("nothing yet"),
        "{message}"
    );
}

#[test]
fn a_child_node_reports_its_ports_and_its_stop() {
    let node = ChildNode::start(&[
        "--port",
        "0",
        "--shards",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert!(
        node.banner.contains(&node.addr.to_string()),
        "{}",
        node.banner
    );
    std::net::TcpStream::connect(node.addr).expect("the node accepts on its address");
    std::net::TcpStream::connect(node.metrics()).expect("and serves metrics where it says");
    let report = node.stop();
    assert!(report.contains("stopping"), "{report}");
}

#[test]
fn a_child_node_that_ignores_sigterm_is_killed_after_the_bound() {
    let node = ChildNode::start(&["--port", "0", "--shards", "1"]);
    let pid = node.pid();
    // Stopped, it cannot act on SIGTERM (and `stop` does not resume it).
    node.signal(libc::SIGSTOP);
    let started = Instant::now();
    let message = panic_message(|| {
        node.stop_within(Duration::from_millis(500));
    });
    let took = started.elapsed();
    assert!(message.contains("did not stop within 500ms"), "{message}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!exists(pid), "the node {pid} outlived its stop");
}

#[test]
fn a_dropped_child_node_is_killed() {
    let node = ChildNode::start(&["--port", "0", "--shards", "1"]);
    let pid = node.pid();
    drop(node);
    assert!(!exists(pid), "the node {pid} outlived its owner");
}

#[test]
fn a_node_that_cannot_start_fails_at_once_with_what_it_said() {
    let started = Instant::now();
    let message = panic_message(|| {
        ChildNode::start(&["--port", "65535", "--shards", "1"]);
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.contains("exited with") && message.contains("past 65535"),
        "{message}"
    );
}

#[test]
fn a_free_port_can_be_listened_on() {
    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}

#[test]
fn installed_finds_a_program_on_path_and_not_one_that_is_missing() {
    assert!(support::installed("sh").is_some_and(|path| path.is_file()));
    assert_eq!(support::installed("trove-no-such-service-anywhere"), None);
}
