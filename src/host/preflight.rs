//! Start-up checks: can this process run glommio executors at all?
//!
//! glommio needs io_uring (kernel ≥ 5.8, not disabled by sysctl, not blocked by seccomp) and an
//! RLIMIT_MEMLOCK of at least 512 KiB. Without them it fails deep inside executor creation with
//! an error a user cannot act on; these checks run first and say, in one sentence, what to
//! change. `trove node` and `trove bench` run them before starting a shard; `trove tune check`
//! reports them in its table. Process-wide facts, read on whichever thread asks.

use std::fmt;

use crate::constants::{MEMLOCK_BYTES_MIN, SHARD_IO_MEMORY_BYTES};

/// What probing `io_uring_setup` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoUringStatus {
    /// A ring was created (and closed again).
    Usable,
    /// `kernel.io_uring_disabled = 2`: io_uring is off for every process on this host.
    DisabledBySysctl,
    /// `kernel.io_uring_disabled = 1` and this process is neither privileged nor in
    /// `kernel.io_uring_group`.
    RestrictedBySysctl,
    /// EPERM while the sysctl allows io_uring: a seccomp filter (a container runtime's default
    /// profile, typically) or a security module blocks it.
    BlockedBySeccomp,
    /// ENOSYS: the kernel was built without io_uring, or a filter pretends it was.
    NotSupported,
    /// Any other failure, with its errno.
    Failed { errno: i32 },
}

impl IoUringStatus {
    pub fn is_usable(&self) -> bool {
        *self == IoUringStatus::Usable
    }
}

/// Reads `kernel.io_uring_disabled` (absent on kernels older than 6.6: treated as 0).
pub fn io_uring_disabled_sysctl() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Creates a one-entry io_uring and closes it, and explains a failure.
pub fn probe_io_uring() -> IoUringStatus {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) takes an entry count and a pointer to a writable
    // io_uring_params, which `params` is for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: `fd` is a descriptor this function just created and owns.
        unsafe { libc::close(fd as i32) };
        return IoUringStatus::Usable;
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    classify_io_uring_failure(errno, io_uring_disabled_sysctl())
}

/// Names the cause of an `io_uring_setup` failure from its errno and the sysctl's value.
pub fn classify_io_uring_failure(errno: i32, disabled_sysctl: u8) -> IoUringStatus {
    match (errno, disabled_sysctl) {
        (libc::EPERM, 2) => IoUringStatus::DisabledBySysctl,
        (libc::EPERM, 1) => IoUringStatus::RestrictedBySysctl,
        (libc::EPERM, _) => IoUringStatus::BlockedBySeccomp,
        (libc::ENOSYS, _) => IoUringStatus::NotSupported,
        (errno, _) => IoUringStatus::Failed { errno },
    }
}

/// The soft and hard RLIMIT_MEMLOCK of this process, in bytes (`u64::MAX` = unlimited).
pub fn memlock_limits() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if result != 0 {
        return (0, 0);
    }
    let bytes = |value: libc::rlim_t| {
        if value == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            value
        }
    };
    (bytes(limit.rlim_cur), bytes(limit.rlim_max))
}

/// Locked memory `shards` executors need: glommio's floor, or every shard's registered io_uring
/// buffers (registered once in each of glommio's three rings), whichever is larger.
pub fn memlock_required_bytes(shards: usize) -> u64 {
    let registered = shards as u64 * 3 * SHARD_IO_MEMORY_BYTES as u64;
    registered.max(MEMLOCK_BYTES_MIN)
}

/// Why this process cannot run shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreflightError {
    IoUring(IoUringStatus),
    /// RLIMIT_MEMLOCK is below glommio's floor.
    MemlockTooLow {
        limit_bytes: u64,
        required_bytes: u64,
    },
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightError::IoUring(IoUringStatus::DisabledBySysctl) => write!(
                f,
                "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2); as root, run `sysctl -w kernel.io_uring_disabled=0`, or run trove on a host that allows io_uring"
            ),
            PreflightError::IoUring(IoUringStatus::RestrictedBySysctl) => write!(
                f,
                "io_uring is restricted on this host (sysctl kernel.io_uring_disabled = 1); run trove as a member of the group in kernel.io_uring_group, or as root run `sysctl -w kernel.io_uring_disabled=0`"
            ),
            PreflightError::IoUring(IoUringStatus::BlockedBySeccomp) => write!(
                f,
                "io_uring is blocked for this process (EPERM while the kernel allows it): a seccomp profile or security module forbids io_uring_setup; in a container, run it with a profile that allows the io_uring syscalls"
            ),
            PreflightError::IoUring(IoUringStatus::NotSupported) => write!(
                f,
                "this kernel does not support io_uring (ENOSYS); trove needs Linux 5.8 or newer built with CONFIG_IO_URING"
            ),
            PreflightError::IoUring(IoUringStatus::Failed { errno }) => write!(
                f,
                "io_uring_setup failed: {}; trove cannot start shards on this host",
                std::io::Error::from_raw_os_error(*errno)
            ),
            PreflightError::IoUring(IoUringStatus::Usable) => write!(f, "io_uring is usable"),
            PreflightError::MemlockTooLow {
                limit_bytes,
                required_bytes,
            } => write!(
                f,
                "RLIMIT_MEMLOCK is {} KiB but trove's shards need at least {} KiB of locked memory; raise it with `ulimit -l {}` in this shell (or LimitMEMLOCK= in a systemd unit, or a memlock line in /etc/security/limits.d)",
                kib(*limit_bytes),
                kib(*required_bytes),
                kib(*required_bytes).max(1024)
            ),
        }
    }
}

impl std::error::Error for PreflightError {}

/// Checks that `shards` executors can start in this process.
pub fn preflight(shards: usize) -> Result<(), PreflightError> {
    let status = probe_io_uring();
    if !status.is_usable() {
        return Err(PreflightError::IoUring(status));
    }
    let (soft, _) = memlock_limits();
    // glommio refuses outright below its floor; above it, buffer registration degrades
    // gracefully, so only the floor is fatal.
    if soft < MEMLOCK_BYTES_MIN {
        return Err(PreflightError::MemlockTooLow {
            limit_bytes: soft,
            required_bytes: memlock_required_bytes(shards),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart() {
        assert_eq!(
            classify_io_uring_failure(libc::EPERM, 2),
            IoUringStatus::DisabledBySysctl
        );
        assert_eq!(
            classify_io_uring_failure(libc::EPERM, 1),
            IoUringStatus::RestrictedBySysctl
        );
        assert_eq!(
            classify_io_uring_failure(libc::EPERM, 0),
            IoUringStatus::BlockedBySeccomp
        );
        assert_eq!(
            classify_io_uring_failure(libc::ENOSYS, 0),
            IoUringStatus::NotSupported
        );
        assert_eq!(
            classify_io_uring_failure(libc::ENOMEM, 0),
            IoUringStatus::Failed {
                errno: libc::ENOMEM
            }
        );
    }

    #[test]
    fn messages_say_what_to_change() {
        let low = PreflightError::MemlockTooLow {
            limit_bytes: 64 * 1024,
            required_bytes: 512 * 1024,
        };
        let text = low.to_string();
        assert!(
            text.contains("64 KiB") && text.contains("ulimit -l"),
            "{text}"
        );
        let disabled = PreflightError::IoUring(IoUringStatus::DisabledBySysctl).to_string();
        assert!(disabled.contains("kernel.io_uring_disabled"), "{disabled}");
    }

    #[test]
    fn memlock_need_grows_with_shards_above_the_floor() {
        assert_eq!(memlock_required_bytes(1), MEMLOCK_BYTES_MIN);
        assert!(memlock_required_bytes(64) > MEMLOCK_BYTES_MIN);
    }
}
