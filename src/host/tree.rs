//! A host's tree of `/proc` and `/sys` under a root, and the facts about a process that no file
//! holds: what the tuning checks inspect, the topology is read from and the bench's fingerprint
//! is made of. Read on the thread that asks (`trove tune`'s, the bench's coordinating thread).
//!
//! Every file goes through [`Host::read`] with a path relative to the root, so the same code
//! runs against the machine (`/`) and against fixture trees in tests. Two facts are
//! not files: whether `io_uring_setup` works for this process, and its `RLIMIT_MEMLOCK`. On the
//! live host they are probed with the engine's own start-up checks ([`crate::host::preflight`]);
//! under any other root they are recorded:
//!
//! - `trove-probe/io_uring_setup`: `ok`, or the errno `io_uring_setup` failed with (`EPERM`,
//!   `ENOSYS`, …, or its number). It is classified exactly as a live failure is, together with
//!   the root's `proc/sys/kernel/io_uring_disabled`.
//! - `proc/self/limits`: the `Max locked memory` line, as the kernel writes it.
//!
//! The live host reads `proc/self/...` of the trove process itself, which is the process whose
//! readiness is asked about.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::constants::HOST_FILE_BYTES_MAX;
use crate::host::preflight::{self, IoUringStatus};

/// Where the file under a non-live root records the io_uring probe.
pub const IO_URING_PROBE_PATH: &str = "trove-probe/io_uring_setup";

/// A host to check: the live machine, or a tree recorded from one.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
    live: bool,
}

impl Host {
    /// Opens the host at `root`: the live machine when `root` is `/`, else a recorded tree,
    /// which must hold `proc/` and `sys/`.
    pub fn open(root: &Path) -> Result<Host, String> {
        let canonical = fs::canonicalize(root).map_err(|error| {
            format!(
                "cannot open --root {}: {error}; give the root of a host's /proc and /sys (default /)",
                root.display()
            )
        })?;
        let live = canonical == Path::new("/");
        for tree in ["proc", "sys"] {
            if !canonical.join(tree).is_dir() {
                return Err(format!(
                    "--root {} has no {tree}/ directory; give the root of a host's /proc and /sys (default /)",
                    root.display()
                ));
            }
        }
        Ok(Host {
            root: canonical,
            live,
        })
    }

    /// Whether this is the machine trove runs on (so CPUs can be spun on and probes run).
    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The text of a file under the root, or `None` if it is absent or unreadable.
    /// Reads at most [`HOST_FILE_BYTES_MAX`] bytes.
    pub fn read(&self, path: &str) -> Option<String> {
        let file = fs::File::open(self.root.join(path)).ok()?;
        let mut text = String::new();
        file.take(HOST_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }

    /// A file's first line, trimmed.
    pub fn read_line(&self, path: &str) -> Option<String> {
        self.read(path)
            .map(|text| text.lines().next().unwrap_or("").trim().to_string())
    }

    /// A sysctl's value by its dotted name (`vm.swappiness`), trimmed.
    pub fn sysctl(&self, name: &str) -> Option<String> {
        self.read_line(&format!("proc/sys/{}", name.replace('.', "/")))
    }

    /// The names in a directory under the root, sorted; empty if it is absent.
    pub fn list_dir(&self, path: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join(path)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// The last component of a symbolic link's target (`sys/class/net/eth0/device` → `virtio2`),
    /// without following it, so it works for links that point outside a recorded tree.
    pub fn link_target_name(&self, path: &str) -> Option<String> {
        let target = fs::read_link(self.root.join(path)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Whether `io_uring_setup` works for the process, and if not, why.
    pub fn io_uring(&self) -> Result<IoUringStatus, String> {
        if self.live {
            return Ok(preflight::probe_io_uring());
        }
        let recorded = self
            .read_line(IO_URING_PROBE_PATH)
            .ok_or_else(|| format!("not probed: the root records no {IO_URING_PROBE_PATH}"))?;
        if recorded.eq_ignore_ascii_case("ok") {
            return Ok(IoUringStatus::Usable);
        }
        let errno = parse_errno(&recorded).ok_or_else(|| {
            format!("{IO_URING_PROBE_PATH} holds '{recorded}', not ok or an errno")
        })?;
        Ok(preflight::classify_io_uring_failure(
            errno,
            self.io_uring_disabled(),
        ))
    }

    /// `kernel.io_uring_disabled` under the root (absent before Linux 6.6: 0).
    fn io_uring_disabled(&self) -> u8 {
        self.sysctl("kernel.io_uring_disabled")
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    }

    /// The process's soft and hard RLIMIT_MEMLOCK in bytes (`u64::MAX` is unlimited).
    pub fn memlock_limits(&self) -> Option<(u64, u64)> {
        if self.live {
            return Some(preflight::memlock_limits());
        }
        parse_memlock_limits(&self.read("proc/self/limits")?)
    }
}

/// Reads an errno written as its name or its number.
fn parse_errno(text: &str) -> Option<i32> {
    const NAMES: [(&str, i32); 7] = [
        ("EPERM", libc::EPERM),
        ("ENOSYS", libc::ENOSYS),
        ("ENOMEM", libc::ENOMEM),
        ("EINVAL", libc::EINVAL),
        ("EFAULT", libc::EFAULT),
        ("EMFILE", libc::EMFILE),
        ("ENFILE", libc::ENFILE),
    ];
    let named = NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|&(_, errno)| errno);
    named.or_else(|| text.parse().ok().filter(|&errno| errno > 0))
}

/// Finds `Max locked memory  SOFT  HARD  bytes` in the text of `/proc/PID/limits`.
fn parse_memlock_limits(limits: &str) -> Option<(u64, u64)> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max locked memory"))?;
    let mut values =
        line["Max locked memory".len()..]
            .split_whitespace()
            .map(|value| match value {
                "unlimited" => Some(u64::MAX),
                number => number.parse().ok(),
            });
    Some((values.next()??, values.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_are_read_by_name_or_number() {
        assert_eq!(parse_errno("EPERM"), Some(libc::EPERM));
        assert_eq!(parse_errno("enosys"), Some(libc::ENOSYS));
        assert_eq!(parse_errno("12"), Some(12));
        assert_eq!(parse_errno("0"), None);
        assert_eq!(parse_errno("ESOMETHING"), None);
    }

    #[test]
    fn memlock_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 4096                 files\n\
                      Max locked memory         65536                unlimited            bytes\n";
        assert_eq!(parse_memlock_limits(limits), Some((65536, u64::MAX)));
        assert_eq!(parse_memlock_limits("Max open files 1 2 files"), None);
    }

    #[test]
    fn a_root_without_proc_and_sys_is_refused() {
        let error = Host::open(Path::new("/definitely/not/here")).unwrap_err();
        assert!(error.contains("cannot open --root"), "{error}");
        let empty = std::env::temp_dir().join(format!("trove-tune-empty-{}", std::process::id()));
        fs::create_dir_all(&empty).unwrap();
        let error = Host::open(&empty).unwrap_err();
        fs::remove_dir(&empty).unwrap();
        assert!(error.contains("has no proc/"), "{error}");
    }

    #[test]
    fn slash_is_the_live_host() {
        let host = Host::open(Path::new("/")).unwrap();
        assert!(host.is_live());
        assert!(host.read("proc/self/status").is_some());
        assert!(host.memlock_limits().is_some());
    }
}
