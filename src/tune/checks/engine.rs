//! Can glommio run here at all: io_uring, the kernel version, locked memory for the shards'
//! rings, and the shard CPUs being online and inside the process's affinity mask. All fatal
//! except locked memory beyond glommio's floor, where buffer registration degrades gracefully.

use super::{Check, Context, Severity};
use crate::constants::{KERNEL_VERSION_MIN, MEMLOCK_BYTES_MIN};
use crate::host::cpuset::CpuSet;
use crate::host::preflight::{IoUringStatus, PreflightError, memlock_required_bytes};

pub fn checks(context: &Context) -> Vec<Check> {
    let memlock = context.host.memlock_limits();
    vec![
        io_uring(context),
        kernel(context),
        memlock_floor(memlock),
        memlock_for_shards(memlock, context.shards.len()),
        affinity(context),
    ]
}

fn io_uring(context: &Context) -> Check {
    let status = context.host.io_uring();
    let current = match &status {
        Ok(status) => io_uring_text(status),
        Err(reason) => reason.clone(),
    };
    let passed = status.as_ref().is_ok_and(IoUringStatus::is_usable);
    let check = Check::new(
        "io_uring",
        Severity::Fatal,
        "io_uring_setup succeeds",
        current,
        passed,
    );
    match status {
        Ok(IoUringStatus::DisabledBySysctl | IoUringStatus::RestrictedBySysctl) => {
            check.fix(["sysctl -w kernel.io_uring_disabled=0".to_string()])
        }
        Ok(status) => check.fix([format!("# {}", PreflightError::IoUring(status))]),
        Err(_) => check.fix(["# probe io_uring on the host itself: trove tune check".to_string()]),
    }
}

fn io_uring_text(status: &IoUringStatus) -> String {
    match status {
        IoUringStatus::Usable => "usable".to_string(),
        IoUringStatus::DisabledBySysctl => "disabled (kernel.io_uring_disabled = 2)".to_string(),
        IoUringStatus::RestrictedBySysctl => {
            "restricted to kernel.io_uring_group (kernel.io_uring_disabled = 1)".to_string()
        }
        IoUringStatus::BlockedBySeccomp => {
            "blocked: EPERM while the sysctl allows it (seccomp or a security module)".to_string()
        }
        IoUringStatus::NotSupported => "not supported (ENOSYS)".to_string(),
        IoUringStatus::Failed { errno } => {
            format!("failed: {}", std::io::Error::from_raw_os_error(*errno))
        }
    }
}

fn kernel(context: &Context) -> Check {
    let release = context.host.read_line("proc/sys/kernel/osrelease");
    let version = release.as_deref().and_then(parse_kernel_version);
    let (major, minor) = KERNEL_VERSION_MIN;
    let passed = version.is_some_and(|version| version >= KERNEL_VERSION_MIN);
    let current = release.unwrap_or_else(|| "unreadable (proc/sys/kernel/osrelease)".to_string());
    Check::new(
        "kernel",
        Severity::Fatal,
        format!(">= {major}.{minor}"),
        current,
        passed,
    )
    .fix([format!(
        "# upgrade to Linux {major}.{minor} or newer: glommio issues io_uring operations older kernels lack"
    )])
}

/// Reads `6.8.0-45-generic` as (6, 8).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>());
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    Some((major, minor))
}

fn memlock_floor(limits: Option<(u64, u64)>) -> Check {
    let passed = limits.is_some_and(|(soft, _)| soft >= MEMLOCK_BYTES_MIN);
    Check::new(
        "memlock (glommio floor)",
        Severity::Fatal,
        format!(">= {}", bytes_text(MEMLOCK_BYTES_MIN)),
        limits_text(limits),
        passed,
    )
    .fix(memlock_fix())
}

fn memlock_for_shards(limits: Option<(u64, u64)>, shards: usize) -> Check {
    let required = memlock_required_bytes(shards);
    let passed = limits.is_some_and(|(soft, _)| soft >= required);
    Check::new(
        "memlock (shards)",
        Severity::Warning,
        format!(
            ">= {} for {shards} shard{}",
            bytes_text(required),
            if shards == 1 { "" } else { "s" }
        ),
        limits_text(limits),
        passed,
    )
    .fix(memlock_fix())
}

/// One fix for both memlock rows, so the script writes it once.
fn memlock_fix() -> Vec<String> {
    vec![
        "# raise locked memory for future logins of $TROVE_USER".to_string(),
        "printf '%s soft memlock unlimited\\n%s hard memlock unlimited\\n' \"$TROVE_USER\" \"$TROVE_USER\" > /etc/security/limits.d/60-trove-memlock.conf".to_string(),
        "# a node run by systemd takes LimitMEMLOCK=infinity in its unit instead (tuning/systemd/)".to_string(),
    ]
}

fn limits_text(limits: Option<(u64, u64)>) -> String {
    match limits {
        Some((soft, hard)) if soft == hard => bytes_text(soft),
        Some((soft, hard)) => format!("{} (hard {})", bytes_text(soft), bytes_text(hard)),
        None => "unreadable (no Max locked memory in proc/self/limits)".to_string(),
    }
}

fn bytes_text(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".to_string()
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

fn affinity(context: &Context) -> Check {
    let allowed = allowed_cpus(context);
    let online = &context.topology.online;
    let required = format!("shard CPUs {} online and allowed", context.shards);
    let (current, passed) = match &allowed {
        Err(reason) => (reason.clone(), false),
        Ok(allowed) => {
            let usable = online.intersection(allowed);
            let outside = context.shards.difference(&usable);
            let current = format!("online {online}, allowed {allowed}");
            if outside.is_empty() {
                (current, true)
            } else {
                (format!("{current}: {outside} outside"), false)
            }
        }
    };
    Check::new("cpu affinity", Severity::Fatal, required, current, passed).fix([
        format!(
            "# choose --cpus inside the CPUs this process may use ({}), or widen its affinity (taskset, CPUAffinity= in the unit, the container's cpuset)",
            allowed.map(|cpus| cpus.to_string()).unwrap_or_default()
        ),
    ])
}

/// `Cpus_allowed_list` of the process, from `proc/self/status`.
fn allowed_cpus(context: &Context) -> Result<CpuSet, String> {
    let status = context
        .host
        .read("proc/self/status")
        .ok_or("unreadable (proc/self/status)")?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .ok_or("no Cpus_allowed_list in proc/self/status")?;
    CpuSet::parse(list).map_err(|error| format!("Cpus_allowed_list: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_are_read_from_the_release() {
        assert_eq!(parse_kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!(parse_kernel_version("5.4.0").unwrap() < KERNEL_VERSION_MIN);
        assert!(parse_kernel_version("5.10.1").unwrap() >= KERNEL_VERSION_MIN);
    }

    #[test]
    fn memlock_for_many_shards_needs_more_than_the_floor() {
        let floor = Some((MEMLOCK_BYTES_MIN, MEMLOCK_BYTES_MIN));
        assert!(memlock_floor(floor).passed);
        assert!(memlock_for_shards(floor, 1).passed);
        assert!(!memlock_for_shards(floor, 64).passed);
        assert!(!memlock_floor(Some((65536, 65536))).passed);
        assert!(memlock_for_shards(Some((u64::MAX, u64::MAX)), 256).passed);
        assert!(!memlock_floor(None).passed);
    }
}
