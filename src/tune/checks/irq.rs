//! Where interrupts land: a NIC interrupt on a shard CPU stops that shard for the length of the
//! handler and its softirq, however well it is isolated otherwise; and irqbalance, left alone,
//! moves interrupts back onto shard CPUs every ten seconds. Both warnings.

use super::{Check, Context, Severity};
use crate::host::cpuset::CpuSet;
use crate::host::tree::Host;

pub fn checks(context: &Context) -> Vec<Check> {
    vec![nic_irq_affinity(context), irqbalance(context)]
}

/// One interrupt line of a network interface, and the CPUs it may be delivered to.
struct NicIrq {
    irq: u32,
    affinity: Option<CpuSet>,
}

fn nic_irq_affinity(context: &Context) -> Check {
    let irqs = nic_irqs(context.host);
    let offending: Vec<&NicIrq> = irqs
        .iter()
        .filter(|irq| match &irq.affinity {
            Some(affinity) => !affinity.intersection(&context.shards).is_empty(),
            None => true,
        })
        .collect();
    let current = match (irqs.len(), offending.first()) {
        (0, _) => "no NIC interrupts found".to_string(),
        (count, None) => format!("all {count} off shard CPUs"),
        (count, Some(example)) => format!(
            "{} of {count} reach shard CPUs (irq {} → {})",
            offending.len(),
            example.irq,
            affinity_text(&example.affinity)
        ),
    };
    let numbers: Vec<String> = offending.iter().map(|irq| irq.irq.to_string()).collect();
    let fix = [format!(
        "for irq in {}; do echo {} > /proc/irq/$irq/smp_affinity_list 2>/dev/null || echo \"irq $irq: the kernel manages its affinity\" >&2; done",
        numbers.join(" "),
        context.housekeeping
    )];
    Check::new(
        "nic irq affinity",
        Severity::Warning,
        format!("on {} only", context.housekeeping),
        current,
        offending.is_empty(),
    )
    .fix(fix)
}

fn affinity_text(affinity: &Option<CpuSet>) -> String {
    affinity
        .as_ref()
        .map_or("unreadable".to_string(), CpuSet::to_string)
}

/// The interrupts of every interface backed by a device (not `lo`, bridges, veths), found in
/// `/proc/interrupts` by the interface's name or its device's (`virtio2-input.0`,
/// `eth0-TxRx-3`, `mlx5_comp0@pci:0000:3b:00.0`).
fn nic_irqs(host: &Host) -> Vec<NicIrq> {
    let names = nic_device_names(host);
    if names.is_empty() {
        return Vec::new();
    }
    let interrupts = host.read("proc/interrupts").unwrap_or_default();
    interrupts
        .lines()
        .filter_map(|line| {
            let (number, rest) = line.trim_start().split_once(':')?;
            let irq: u32 = number.parse().ok()?;
            let named = rest
                .split_whitespace()
                .any(|word| names.iter().any(|name| names_device(word, name)));
            named.then(|| NicIrq {
                irq,
                affinity: host
                    .read(&format!("proc/irq/{irq}/smp_affinity_list"))
                    .and_then(|list| CpuSet::parse(&list).ok()),
            })
        })
        .collect()
}

/// For each interface with a `device` link: its own name and its device's.
fn nic_device_names(host: &Host) -> Vec<String> {
    let mut names = Vec::new();
    for interface in host.list_dir("sys/class/net") {
        let device = host.link_target_name(&format!("sys/class/net/{interface}/device"));
        if let Some(device) = device {
            names.push(interface);
            names.push(device);
        }
    }
    names
}

/// Whether `word` mentions `name` as a whole token: `virtio2` is in `virtio2-input.0` but not
/// in `virtio21-input.0`, `eth0` is in `i40e-eth0-TxRx-0` but not in `veth0`.
fn names_device(word: &str, name: &str) -> bool {
    word.match_indices(name).any(|(at, _)| {
        let before = word[..at].chars().next_back();
        let after = word[at + name.len()..].chars().next();
        let joins = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        !joins(before) && !joins(after)
    })
}

fn irqbalance(context: &Context) -> Check {
    let running = irqbalance_pid(context.host);
    let banned = banned_cpulist(context.host);
    let shards_banned = banned
        .as_ref()
        .is_some_and(|banned| context.shards.is_subset(banned));
    let current = match (running, &banned) {
        (None, _) => "not running".to_string(),
        (Some(pid), Some(banned)) => format!("running (pid {pid}), banned CPUs {banned}"),
        (Some(pid), None) => format!("running (pid {pid}), no banned CPUs"),
    };
    Check::new(
        "irqbalance",
        Severity::Warning,
        format!("not running, or banned from {}", context.shards),
        current,
        running.is_none() || shards_banned,
    )
    .fix(irqbalance_fix(&context.shards))
}

fn irqbalance_fix(shards: &CpuSet) -> Vec<String> {
    vec![
        "# keep irqbalance off the shard CPUs (or stop it: systemctl disable --now irqbalance)"
            .to_string(),
        "conf=/etc/default/irqbalance; [[ -f /etc/sysconfig/irqbalance ]] && conf=/etc/sysconfig/irqbalance".to_string(),
        format!("echo 'IRQBALANCE_BANNED_CPULIST={shards}' >> \"$conf\""),
        "systemctl restart irqbalance".to_string(),
    ]
}

/// The pid of a running irqbalance, from `proc/PID/comm`.
fn irqbalance_pid(host: &Host) -> Option<u32> {
    host.list_dir("proc")
        .iter()
        .filter_map(|name| name.parse::<u32>().ok())
        .find(|pid| host.read_line(&format!("proc/{pid}/comm")).as_deref() == Some("irqbalance"))
}

/// `IRQBALANCE_BANNED_CPULIST` from irqbalance's configuration (Debian's or Red Hat's path).
fn banned_cpulist(host: &Host) -> Option<CpuSet> {
    ["etc/default/irqbalance", "etc/sysconfig/irqbalance"]
        .iter()
        .filter_map(|path| host.read(path))
        .flat_map(|config| {
            config
                .lines()
                .filter_map(|line| line.trim().strip_prefix("IRQBALANCE_BANNED_CPULIST="))
                .map(|value| value.trim_matches(|c| c == '"' || c == '\''))
                .filter_map(|value| CpuSet::parse(value).ok())
                .collect::<Vec<_>>()
        })
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_match_whole_tokens_only() {
        assert!(names_device("virtio2-input.0", "virtio2"));
        assert!(!names_device("virtio21-input.0", "virtio2"));
        assert!(names_device("i40e-eth0-TxRx-0", "eth0"));
        assert!(!names_device("veth0", "eth0"));
        assert!(names_device("mlx5_comp0@pci:0000:3b:00.0", "0000:3b:00.0"));
        assert!(names_device("eth0", "eth0"));
        assert!(!names_device("eth01", "eth0"));
    }
}
