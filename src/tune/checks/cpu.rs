//! Are the shard CPUs quiet: isolated from the scheduler, without timer ticks and RCU callbacks,
//! alone on their cores, at full frequency, with a cheap clock, on a machine nobody else's
//! virtual CPUs share. All warnings: a node runs without them, with longer tails.

use super::{Check, Context, Severity};
use crate::constants::STEAL_PERMILLE_MAX;
use crate::host::cpuset::CpuSet;
use crate::host::tree::Host;

pub fn checks(context: &Context) -> Vec<Check> {
    vec![
        isolcpus(context),
        nohz_full(context),
        rcu_nocbs(context),
        smt(context),
        governor(context),
        clocksource(context),
        virtualisation(context),
        steal(context),
    ]
}

/// The value of a kernel command-line parameter: `Some(Some(v))` for `name=v`, `Some(None)`
/// for a bare `name`. Only the kernel's part counts: what follows `--` is init's.
fn kernel_param<'t>(cmdline: &'t str, name: &str) -> Option<Option<&'t str>> {
    cmdline
        .split_whitespace()
        .take_while(|word| *word != "--")
        .filter_map(|word| match word.split_once('=') {
            Some((key, value)) if key == name => Some(Some(value)),
            None if word == name => Some(None),
            _ => None,
        })
        .last()
}

/// The line that adds `param` to the kernel command line, with grubby or by hand.
fn cmdline_fix(param: String) -> Vec<String> {
    vec![
        "if command -v grubby >/dev/null 2>&1; then".to_string(),
        format!("  grubby --update-kernel=ALL --args='{param}'"),
        "else".to_string(),
        format!(
            "  echo \"add {param} to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub (or grub2-mkconfig -o /boot/grub2/grub.cfg)\" >&2"
        ),
        "fi".to_string(),
        "echo 'the kernel command line takes effect at the next reboot' >&2".to_string(),
    ]
}

/// A check that the shard CPUs are in a set of CPUs the kernel treats specially.
fn shards_within(
    context: &Context,
    name: &'static str,
    cpus: Result<CpuSet, String>,
    param: String,
) -> Check {
    let required = format!("includes {}", context.shards);
    let (current, passed) = match cpus {
        Ok(cpus) if cpus.is_empty() => ("none".to_string(), false),
        Ok(cpus) => (cpus.to_string(), context.shards.is_subset(&cpus)),
        Err(reason) => (reason, false),
    };
    Check::new(name, Severity::Warning, required, current, passed).fix(cmdline_fix(param))
}

/// Reads a sysfs CPU list, where the kernel writes `(null)` for none.
fn read_cpu_list(host: &Host, path: &str) -> Result<CpuSet, String> {
    let text = host.read(path).ok_or_else(|| format!("absent ({path})"))?;
    if text.trim() == "(null)" {
        return Ok(CpuSet::default());
    }
    CpuSet::parse(&text).map_err(|error| format!("{path}: {error}"))
}

fn isolcpus(context: &Context) -> Check {
    let isolated = read_cpu_list(context.host, "sys/devices/system/cpu/isolated");
    let param = format!("isolcpus=managed_irq,domain,{}", context.shard_cores());
    shards_within(context, "isolcpus", isolated, param)
}

fn nohz_full(context: &Context) -> Check {
    let nohz = read_cpu_list(context.host, "sys/devices/system/cpu/nohz_full")
        .map_err(|_| "unsupported (kernel without CONFIG_NO_HZ_FULL)".to_string());
    let unsupported = nohz.is_err();
    let param = format!("nohz_full={}", context.shard_cores());
    let mut check = shards_within(context, "nohz_full", nohz, param);
    if unsupported && !check.passed {
        let note = "# this kernel ignores nohz_full=: it needs one built with CONFIG_NO_HZ_FULL";
        check.fix.insert(0, note.to_string());
    }
    check
}

/// CPUs whose RCU callbacks are offloaded: `rcu_nocbs=` on the command line, and every
/// `nohz_full` CPU, which the kernel offloads as well.
fn rcu_nocbs(context: &Context) -> Check {
    let offloaded = rcu_nocbs_cmdline(context).map(|cmdline| {
        let nohz = read_cpu_list(context.host, "sys/devices/system/cpu/nohz_full");
        cmdline.union(&nohz.unwrap_or_default())
    });
    let param = format!("rcu_nocbs={}", context.shard_cores());
    shards_within(context, "rcu_nocbs", offloaded, param)
}

fn rcu_nocbs_cmdline(context: &Context) -> Result<CpuSet, String> {
    let cmdline = context
        .host
        .read("proc/cmdline")
        .ok_or("unreadable (proc/cmdline)")?;
    match kernel_param(&cmdline, "rcu_nocbs") {
        None | Some(None) => Ok(CpuSet::default()),
        Some(Some("all")) => Ok(context.topology.online.clone()),
        Some(Some(list)) => CpuSet::parse(list).map_err(|error| format!("rcu_nocbs: {error}")),
    }
}

/// A shard CPU should have its core to itself: no other shard on it, and its other threads
/// isolated (so the scheduler puts nothing there) or offline.
fn smt(context: &Context) -> Check {
    let isolated =
        read_cpu_list(context.host, "sys/devices/system/cpu/isolated").unwrap_or_default();
    let siblings = context.shard_cores().difference(&context.shards);
    let busy_siblings = siblings.difference(&isolated);
    let mut problems = Vec::new();
    let sharing = shards_sharing_a_core(context);
    if !sharing.is_empty() {
        problems.push(format!("shards {sharing} share cores"));
    }
    if !busy_siblings.is_empty() {
        problems.push(format!("siblings {busy_siblings} not isolated"));
    }
    let current = if problems.is_empty() && siblings.is_empty() {
        "no SMT siblings".to_string()
    } else if problems.is_empty() {
        format!("siblings {siblings} isolated")
    } else {
        problems.join("; ")
    };
    let mut fix = Vec::new();
    if !sharing.is_empty() {
        fix.push("# give each shard a core of its own: see `trove tune cpus`".to_string());
    }
    if !busy_siblings.is_empty() {
        fix.push("# take the shards' SMT siblings offline until the next boot".to_string());
        fix.push(format!(
            "for cpu in {}; do echo 0 > /sys/devices/system/cpu/cpu$cpu/online; done",
            words(&busy_siblings)
        ));
    }
    Check::new(
        "smt siblings",
        Severity::Warning,
        "each shard CPU alone on its core",
        current,
        problems.is_empty(),
    )
    .fix(fix)
}

/// Shard CPUs whose core also runs another shard.
fn shards_sharing_a_core(context: &Context) -> CpuSet {
    let sharing = context.shards.iter().filter(|&cpu| {
        context
            .topology
            .core_of(cpu)
            .intersection(&context.shards)
            .len()
            > 1
    });
    CpuSet::from_cpus(sharing)
}

/// CPU numbers separated by spaces, for a shell `for` loop.
fn words(cpus: &CpuSet) -> String {
    let words: Vec<String> = cpus.iter().map(|cpu| cpu.to_string()).collect();
    words.join(" ")
}

fn governor(context: &Context) -> Check {
    let mut slow = CpuSet::default();
    let mut seen = Vec::new();
    for cpu in context.shards.iter() {
        let path = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        if let Some(governor) = context.host.read_line(&path) {
            if governor != "performance" {
                slow = slow.union(&CpuSet::from_cpus([cpu]));
            }
            if !seen.contains(&governor) {
                seen.push(governor);
            }
        }
    }
    let current = match seen.as_slice() {
        [] => "no cpufreq driver (the platform sets the frequency)".to_string(),
        _ if slow.is_empty() => "performance".to_string(),
        _ => format!("{} (on {slow})", seen.join(", ")),
    };
    Check::new(
        "cpu governor",
        Severity::Warning,
        "performance",
        current,
        slow.is_empty(),
    )
    .fix([format!(
        "for cpu in {}; do echo performance > /sys/devices/system/cpu/cpu$cpu/cpufreq/scaling_governor; done",
        words(&slow)
    )])
}

/// Clocks the vDSO reads without a system call: every timestamp a shard takes stays cheap.
const VDSO_CLOCKSOURCES: [&str; 4] = [
    "tsc",
    "kvm-clock",
    "arch_sys_counter",
    "hyperv_clocksource_tsc_page",
];

fn clocksource(context: &Context) -> Check {
    let dir = "sys/devices/system/clocksource/clocksource0";
    let current = context
        .host
        .read_line(&format!("{dir}/current_clocksource"));
    let available = context
        .host
        .read_line(&format!("{dir}/available_clocksource"))
        .unwrap_or_default();
    let passed = current
        .as_deref()
        .is_some_and(|clock| VDSO_CLOCKSOURCES.contains(&clock));
    let fix = if available.split_whitespace().any(|clock| clock == "tsc") {
        format!("echo tsc > /{dir}/current_clocksource")
    } else {
        format!("# no vDSO clock among '{available}': check the BIOS/hypervisor TSC settings")
    };
    Check::new(
        "clocksource",
        Severity::Warning,
        VDSO_CLOCKSOURCES.join(" | "),
        current.unwrap_or_else(|| "unreadable".to_string()),
        passed,
    )
    .fix([fix])
}

fn virtualisation(context: &Context) -> Check {
    let evidence = hypervisor_evidence(context.host);
    let current = match &evidence {
        Some(evidence) => format!("virtual machine ({evidence})"),
        None => "bare metal".to_string(),
    };
    Check::new(
        "virtualisation",
        Severity::Warning,
        "bare metal",
        current,
        evidence.is_none(),
    )
    .fix([
        "# a hypervisor can deschedule a shard's vCPU at any moment: run on bare metal, or on dedicated, pinned vCPUs".to_string(),
    ])
}

/// Why the host looks virtual, if it does.
fn hypervisor_evidence(host: &Host) -> Option<String> {
    let flagged = host.read("proc/cpuinfo").is_some_and(|cpuinfo| {
        cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|flag| flag == "hypervisor"))
    });
    if flagged {
        return Some("cpuinfo hypervisor flag".to_string());
    }
    if let Some(kind) = host
        .read_line("sys/hypervisor/type")
        .filter(|kind| !kind.is_empty())
    {
        return Some(format!("hypervisor {kind}"));
    }
    const VENDORS: [&str; 5] = ["QEMU", "KVM", "VMware", "innotek", "Xen"];
    let vendor = host.read_line("sys/class/dmi/id/sys_vendor")?;
    VENDORS
        .iter()
        .any(|known| vendor.contains(known))
        .then(|| format!("vendor {vendor}"))
}

fn steal(context: &Context) -> Check {
    let worst = context
        .host
        .read("proc/stat")
        .map(|stat| worst_steal_permille(&stat, &context.shards));
    let (current, passed) = match worst {
        Some(Some(permille)) => (
            format!("{}.{}% since boot", permille / 10, permille % 10),
            permille <= STEAL_PERMILLE_MAX,
        ),
        _ => (
            "unreadable (no proc/stat line for a shard CPU)".to_string(),
            false,
        ),
    };
    Check::new(
        "steal time",
        Severity::Warning,
        format!(
            "<= {}.{}% of each shard CPU",
            STEAL_PERMILLE_MAX / 10,
            STEAL_PERMILLE_MAX % 10
        ),
        current,
        passed,
    )
    .fix([
        "# the hypervisor runs other guests on these CPUs: ask for dedicated host CPUs".to_string(),
    ])
}

/// The largest share of time stolen from any of `cpus`, in per-mille, from `/proc/stat`
/// (`cpuN user nice system idle iowait irq softirq steal …`). `None` if a CPU has no line.
fn worst_steal_permille(stat: &str, cpus: &CpuSet) -> Option<u64> {
    let mut worst = 0;
    for cpu in cpus.iter() {
        let label = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|line| line.split_whitespace().next() == Some(label.as_str()))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|value| value.parse().ok())
            .collect();
        let total: u64 = ticks.iter().sum();
        let stolen = ticks.get(7).copied().unwrap_or(0);
        worst = worst.max(stolen.saturating_mul(1000).checked_div(total).unwrap_or(0));
    }
    Some(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_params_stop_at_init_arguments() {
        let cmdline = "quiet rcu_nocbs=2-7 nohz -- rcu_nocbs=0";
        assert_eq!(kernel_param(cmdline, "rcu_nocbs"), Some(Some("2-7")));
        assert_eq!(kernel_param(cmdline, "nohz"), Some(None));
        assert_eq!(kernel_param(cmdline, "isolcpus"), None);
        assert_eq!(kernel_param("a=1 a=2", "a"), Some(Some("2")));
    }

    #[test]
    fn steal_is_the_worst_shard_cpu() {
        let stat = "cpu  100 0 0 800 0 0 0 100 0 0\n\
                    cpu0 50 0 0 450 0 0 0 0 0 0\n\
                    cpu1 50 0 0 350 0 0 0 100 0 0\n";
        let both = CpuSet::parse("0-1").unwrap();
        assert_eq!(worst_steal_permille(stat, &both), Some(200));
        assert_eq!(
            worst_steal_permille(stat, &CpuSet::parse("0").unwrap()),
            Some(0)
        );
        assert_eq!(
            worst_steal_permille(stat, &CpuSet::parse("5").unwrap()),
            None
        );
    }
}
