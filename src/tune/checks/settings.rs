//! Memory and network settings: transparent huge pages, swappiness, automatic NUMA balancing,
//! the accept and SYN backlogs, and kernel busy polling. All warnings.

use super::{Check, Context, Severity};
use crate::constants::{SOMAXCONN_MIN, SWAPPINESS_MAX, TCP_MAX_SYN_BACKLOG_MIN};

pub fn checks(context: &Context) -> Vec<Check> {
    vec![
        transparent_hugepages(context),
        sysctl(context, "vm.swappiness", Bound::AtMost(SWAPPINESS_MAX), 1),
        sysctl(context, "kernel.numa_balancing", Bound::AtMost(0), 0),
        sysctl(
            context,
            "net.core.somaxconn",
            Bound::AtLeast(SOMAXCONN_MIN),
            SOMAXCONN_MIN,
        ),
        sysctl(
            context,
            "net.ipv4.tcp_max_syn_backlog",
            Bound::AtLeast(TCP_MAX_SYN_BACKLOG_MIN),
            TCP_MAX_SYN_BACKLOG_MIN,
        ),
        busy_polling(context),
    ]
}

/// What a numeric sysctl must be. An absent sysctl (a kernel built without the feature) meets
/// an upper bound, since the feature is off, and fails a lower one.
#[derive(Clone, Copy)]
enum Bound {
    AtMost(u64),
    AtLeast(u64),
}

impl Bound {
    fn holds(self, value: Option<u64>, present: bool) -> bool {
        match (self, value) {
            (Bound::AtMost(_), None) => !present,
            (Bound::AtMost(max), Some(value)) => value <= max,
            (Bound::AtLeast(min), Some(value)) => value >= min,
            (Bound::AtLeast(_), None) => false,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtMost(0) => "0".to_string(),
            Bound::AtMost(max) => format!("<= {max}"),
            Bound::AtLeast(min) => format!(">= {min}"),
        }
    }
}

/// A check that one numeric sysctl meets `bound`; the fix sets it to `fix_value`.
fn sysctl(context: &Context, name: &'static str, bound: Bound, fix_value: u64) -> Check {
    let text = context.host.sysctl(name);
    let value = text.as_deref().and_then(|text| text.parse::<u64>().ok());
    let current = text.clone().unwrap_or_else(|| "absent".to_string());
    Check::new(
        name,
        Severity::Warning,
        bound.text(),
        current,
        bound.holds(value, text.is_some()),
    )
    .fix([format!("sysctl -w {name}={fix_value}")])
}

/// Kernel busy polling spins inside blocking reads and poll/epoll. Shards never block there
/// (they submit through io_uring and poll it themselves), so a global setting only makes other
/// processes spin on the housekeeping CPUs.
fn busy_polling(context: &Context) -> Check {
    let read = |name| context.host.sysctl(name);
    let (busy_read, busy_poll) = (read("net.core.busy_read"), read("net.core.busy_poll"));
    let off = |value: &Option<String>| value.as_deref().is_none_or(|value| value == "0");
    let shown = |value: Option<String>| value.unwrap_or_else(|| "absent".to_string());
    let passed = off(&busy_read) && off(&busy_poll);
    Check::new(
        "net.core.busy_read/busy_poll",
        Severity::Warning,
        "0 / 0",
        format!("{} / {}", shown(busy_read), shown(busy_poll)),
        passed,
    )
    .fix(["sysctl -w net.core.busy_read=0 net.core.busy_poll=0".to_string()])
}

/// Transparent huge pages set to `always` make page faults stop to compact memory and
/// khugepaged collapse pages under a running shard; `madvise` leaves them to those who ask.
fn transparent_hugepages(context: &Context) -> Check {
    let dir = "sys/kernel/mm/transparent_hugepage";
    let enabled = context.host.read_line(&format!("{dir}/enabled"));
    let defrag = context.host.read_line(&format!("{dir}/defrag"));
    let (passed, current) = match (enabled.as_deref(), defrag.as_deref()) {
        (None, _) => (true, "absent (kernel without THP)".to_string()),
        (Some(enabled), defrag) => {
            let enabled = selected(enabled);
            let defrag = defrag.map(selected).unwrap_or("absent");
            let passed = enabled != "always" && defrag != "always";
            (passed, format!("enabled {enabled}, defrag {defrag}"))
        }
    };
    Check::new(
        "transparent hugepages",
        Severity::Warning,
        "enabled and defrag not always",
        current,
        passed,
    )
    .fix([
        format!("echo madvise > /{dir}/enabled"),
        format!("echo defer+madvise > /{dir}/defrag"),
    ])
}

/// The bracketed choice of a sysfs menu: `always [madvise] never` → `madvise`.
fn selected(menu: &str) -> &str {
    menu.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(menu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menus_yield_their_selection() {
        assert_eq!(selected("always [madvise] never"), "madvise");
        assert_eq!(selected("[always] madvise never"), "always");
        assert_eq!(selected("plain"), "plain");
    }

    #[test]
    fn bounds_treat_absent_sysctls_as_off() {
        assert!(Bound::AtMost(0).holds(None, false));
        assert!(!Bound::AtMost(0).holds(None, true));
        assert!(!Bound::AtMost(10).holds(Some(60), true));
        assert!(Bound::AtMost(10).holds(Some(1), true));
        assert!(!Bound::AtLeast(4096).holds(None, false));
        assert!(!Bound::AtLeast(4096).holds(Some(128), true));
        assert!(Bound::AtLeast(4096).holds(Some(4096), true));
    }
}
