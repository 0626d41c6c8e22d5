//! Keeps the architecture of DESIGN.md true in the source itself:
//! - `src/core` and `src/sim` are sans-IO: no glommio, sockets, threads, clocks, files or
//!   printing;
//! - `src/runtime` and `src/net` hold no Mutex, RwLock or atomics (nothing shared between
//!   shards on the data path);
//! - dependencies point inward: no layer names a layer outside it;
//! - `src/host` (facts about the machine) names no other layer and few crates;
//! - every limit is named `*_MAX` (or is a `*_DEFAULT`/`*_MIN` beside one) in `constants.rs`.
//!
//! It also keeps the integration tests from hanging: outside `linux-tests/support/`, no test
//! waits for a child process without a bound.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// Lines of code (not comments) under `dir` that contain any of `needles`.
fn offending_lines(dir: &str, needles: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut hits = Vec::new();
    for file in rust_files(&root) {
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if let Some(needle) = needles.iter().find(|needle| code.contains(*needle)) {
                hits.push(format!(
                    "{}:{}: {needle}: {}",
                    file.display(),
                    number + 1,
                    code
                ));
            }
        }
    }
    hits
}

#[test]
fn the_core_and_the_simulator_are_sans_io() {
    let banned = [
        "glommio",
        "std::net",
        "std::thread",
        // Clocks: time is a `now_ns` passed in.
        "Instant",
        "SystemTime",
        "clock_gettime",
        // Files and printing: inputs and outputs are calls and return values.
        "std::fs",
        "fs::",
        "File::",
        "print!",
        "println!",
        "dbg!",
        "stdout",
        "stderr",
    ];
    // The client's protocol is sans-IO too: the simulator drives it.
    for dir in ["src/core", "src/sim", "src/client/proto.rs"] {
        let hits = offending_lines(dir, &banned);
        assert!(
            hits.is_empty(),
            "{dir} must stay sans-IO:\n{}",
            hits.join("\n")
        );
    }
}

#[test]
fn the_runtime_and_the_network_share_nothing_between_shards() {
    let banned = ["Mutex", "RwLock", "std::sync::atomic", "Atomic"];
    for dir in ["src/runtime", "src/net"] {
        let hits = offending_lines(dir, &banned);
        assert!(
            hits.is_empty(),
            "{dir} must hold no locks or atomics:\n{}",
            hits.join("\n")
        );
    }
}

#[test]
fn dependencies_point_inward() {
    // Each layer, and the layers further out that it must not name.
    let layers: &[(&str, &[&str])] = &[
        (
            "src/core",
            &[
                "runtime", "net", "client", "sim", "bench", "gate", "tune", "cli", "node", "host",
                "cluster", "metrics", "store",
            ],
        ),
        (
            "src/sim",
            &[
                "runtime", "net", "bench", "gate", "tune", "cli", "node", "host",
            ],
        ),
        (
            "src/runtime",
            &[
                "net", "client", "sim", "bench", "gate", "tune", "cli", "node",
            ],
        ),
        (
            "src/net",
            &["client", "sim", "bench", "gate", "tune", "cli", "node"],
        ),
        (
            "src/client",
            &[
                "runtime", "net", "sim", "bench", "gate", "tune", "cli", "node",
            ],
        ),
        (
            "src/cluster",
            &[
                "runtime", "net", "client", "sim", "bench", "gate", "tune", "cli", "node",
            ],
        ),
        (
            "src/gate",
            &["runtime", "net", "client", "sim", "tune", "cli"],
        ),
        (
            "src/tls.rs",
            &[
                "runtime", "net", "client", "sim", "bench", "gate", "tune", "cli", "node",
                "cluster", "metrics",
            ],
        ),
        (
            "src/host",
            &[
                "core", "runtime", "net", "client", "cluster", "store", "metrics", "node", "sim",
                "bench", "gate", "tune", "cli",
            ],
        ),
    ];
    // The simulator may use the client's sans-IO parts (its protocol, and the cluster
    // client's re-routing rules), not the blocking client.
    let sim_clients: Vec<String> = offending_lines("src/sim", &["crate::client"])
        .into_iter()
        .filter(|hit| {
            !hit.contains("crate::client::proto") && !hit.contains("crate::client::redirect")
        })
        .collect();
    assert!(
        sim_clients.is_empty(),
        "src/sim may name only crate::client::proto and crate::client::redirect:\n{}",
        sim_clients.join("\n")
    );
    for &(dir, outer) in layers {
        // `crate::cli` is a prefix of `crate::client`: a needle ends where the path goes on.
        let needles: Vec<String> = outer
            .iter()
            .flat_map(|layer| ["::", ";", ",", "}", " "].map(|end| format!("crate::{layer}{end}")))
            .collect();
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let hits = offending_lines(dir, &needles);
        assert!(
            hits.is_empty(),
            "{dir} names a layer outside it:\n{}",
            hits.join("\n")
        );
    }
    let constants =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/constants.rs")).unwrap();
    assert!(
        !constants.contains("use crate::"),
        "constants.rs depends on nothing"
    );
}

/// The `[dependencies]` of Cargo.toml, as Rust names them (`-` becomes `_`).
fn dependency_crates() -> Vec<String> {
    let manifest =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let section = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .expect("Cargo.toml has [dependencies]");
    section
        .lines()
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .map(|name| name.replace('-', "_"))
        .collect()
}

#[test]
fn the_host_layer_uses_std_libc_and_little_else() {
    // `core_affinity` reads and sets the affinity mask without unsafe code of our own; the
    // fingerprint is a serde type with an xxh3 key because bench summaries store it.
    let allowed = ["libc", "core_affinity", "serde", "xxhash_rust"];
    let banned: Vec<String> = dependency_crates()
        .into_iter()
        .filter(|name| !allowed.contains(&name.as_str()))
        .map(|name| format!("{name}::"))
        .collect();
    assert!(banned.iter().any(|name| name == "glommio::"), "{banned:?}");
    let banned: Vec<&str> = banned.iter().map(String::as_str).collect();
    let hits = offending_lines("src/host", &banned);
    assert!(
        hits.is_empty(),
        "src/host uses a crate beyond std, libc and its few exceptions:\n{}",
        hits.join("\n")
    );
}

#[test]
fn limits_are_named_for_what_they_are() {
    let constants =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/constants.rs")).unwrap();
    let mut unnamed = Vec::new();
    for line in constants.lines() {
        let Some(rest) = line
            .strip_prefix("pub const ")
            .filter(|rest| !rest.starts_with("fn "))
        else {
            continue;
        };
        let name = rest.split(':').next().unwrap();
        // A limit ends in _MAX; its companions say what they are: a floor (_MIN), a default
        // (_DEFAULT), a fixed size of the wire format (_BYTES, _BITS, _ALIGN, MAGIC, VERSION).
        let described = [
            "_MAX", "_MIN", "_DEFAULT", "_BYTES", "_BITS", "_ALIGN", "_MAGIC", "_VERSION",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix) || name.contains(&format!("{suffix}_")));
        if !described {
            unnamed.push(name.to_owned());
        }
    }
    assert!(
        unnamed.is_empty(),
        "constants that do not say what kind of limit they are: {unnamed:?}"
    );
}

/// Test files that still wait on child processes themselves, to move onto `support`'s bounded
/// helpers (`run_bounded`, `Spawned`, `ChildNode`). Other work edits them today; each one
/// migrated leaves this list. A new file never joins it.
const UNBOUNDED_WAITS_TO_MIGRATE: &[&str] = &["cluster.rs", "durability.rs"];

#[test]
fn tests_wait_for_child_processes_only_within_a_bound() {
    // `Command::output` and `Child::wait` (and `wait_with_output`) wait for ever: a hung node
    // would hang `cargo test`. `support` bounds every wait and kills the child past it.
    let banned = [".output()", ".wait()", ".wait_with_output()"];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux-tests");
    let mut hits = Vec::new();
    for entry in fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        // `support/` is where the bounded waits live; this file names the banned calls.
        let exempt = UNBOUNDED_WAITS_TO_MIGRATE.contains(&name) || name == "tidy.rs";
        if path.is_dir() || !name.ends_with(".rs") || exempt {
            continue;
        }
        hits.extend(offending_lines(&format!("linux-tests/{name}"), &banned));
    }
    assert!(
        hits.is_empty(),
        "a test waits for a child process without a bound; use `support::run_bounded`, \
         `Spawned::finish` or `ChildNode::stop` (linux-tests/support/mod.rs):\n{}",
        hits.join("\n")
    );
}
