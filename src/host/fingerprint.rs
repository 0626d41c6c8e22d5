//! The host fingerprint: the facts about a machine that move latency figures (kernel, CPU
//! model, core counts, frequency governor, SMT, transparent huge pages, virtualisation), read
//! from /proc and /sys through [`Host`] like every other host fact, so that `trove gate` can
//! tell results from like hosts from results from unlike ones. Made on the bench's
//! coordinating thread when it writes a summary.
//!
//! Two fingerprints are of like hosts when every field but `like_key` is equal; `like_key` is
//! a hash of those fields, for a quick equality check by other tools. A fact that cannot be
//! read (no cpufreq in a VM, no SMT control on an old kernel) is `null`, and `null` only
//! matches `null`.

use std::path::Path;

use crate::host::cpuset::CpuSet;
use crate::host::tree::Host;

use serde::{Deserialize, Serialize};

/// What a bench summary records about the machine it ran on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Instruction set (`x86_64`, `aarch64`).
    pub arch: String,
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Logical CPUs online.
    pub cpus_online: u32,
    /// Physical cores (distinct package and core ids).
    pub cores_physical: u32,
    /// cpufreq scaling governor of CPU 0 (`performance`, `powersave`), if cpufreq is exposed.
    pub governor: Option<String>,
    /// SMT control (`on`, `off`, `forceoff`, `notsupported`), if the kernel exposes it.
    pub smt: Option<String>,
    /// Transparent huge pages mode (`always`, `madvise`, `never`), if exposed.
    pub thp: Option<String>,
    /// Whether the CPU reports running under a hypervisor.
    pub virtualized: bool,
    /// The hypervisor's name, when the machine says (DMI vendor or /sys/hypervisor).
    pub hypervisor: Option<String>,
    /// `xxh3-64:` and 16 hex digits over every field above.
    pub like_key: String,
}

/// The raw texts a fingerprint is made from, so parsing is tested without this machine.
#[derive(Clone, Debug, Default)]
pub struct HostSources {
    pub osrelease: Option<String>,
    pub cpuinfo: Option<String>,
    pub cpus_online_list: Option<String>,
    pub governor: Option<String>,
    pub smt_control: Option<String>,
    pub thp_enabled: Option<String>,
    pub hypervisor_type: Option<String>,
    pub dmi_sys_vendor: Option<String>,
}

/// One field on which two fingerprints differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDifference {
    pub field: &'static str,
    pub ours: String,
    pub theirs: String,
}

impl HostSources {
    /// Reads the sources of this machine; a file that cannot be read is `None`.
    pub fn of_this_host() -> HostSources {
        match Host::open(Path::new("/")) {
            Ok(host) => HostSources::read(&host),
            Err(_) => HostSources::default(),
        }
    }

    /// Reads the sources under a host's root; a file that cannot be read is `None`.
    pub fn read(host: &Host) -> HostSources {
        HostSources {
            osrelease: host.read("proc/sys/kernel/osrelease"),
            cpuinfo: host.read("proc/cpuinfo"),
            cpus_online_list: host.read("sys/devices/system/cpu/online"),
            governor: host.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            smt_control: host.read("sys/devices/system/cpu/smt/control"),
            thp_enabled: host.read("sys/kernel/mm/transparent_hugepage/enabled"),
            hypervisor_type: host.read("sys/hypervisor/type"),
            dmi_sys_vendor: host.read("sys/class/dmi/id/sys_vendor"),
        }
    }
}

impl HostFingerprint {
    /// The fingerprint of the machine this runs on.
    pub fn of_this_host() -> HostFingerprint {
        HostFingerprint::from_sources(&HostSources::of_this_host(), std::env::consts::ARCH)
    }

    /// The fingerprint the given sources describe.
    pub fn from_sources(sources: &HostSources, arch: &str) -> HostFingerprint {
        let cpuinfo = sources.cpuinfo.as_deref().unwrap_or("");
        let cpus_online = sources
            .cpus_online_list
            .as_deref()
            .map(count_cpu_list)
            .filter(|count| *count > 0)
            .unwrap_or_else(|| cpuinfo_field_count(cpuinfo, "processor"));
        let cores_physical = match physical_core_count(cpuinfo) {
            0 => cpus_online,
            cores => cores,
        };
        let virtualized = cpuinfo_flags_contain(cpuinfo, "hypervisor");
        let hypervisor = trimmed(&sources.hypervisor_type)
            .or_else(|| trimmed(&sources.dmi_sys_vendor).filter(|_| virtualized));
        let mut fingerprint = HostFingerprint {
            kernel: trimmed(&sources.osrelease).unwrap_or_else(|| "unknown".to_string()),
            arch: arch.to_string(),
            cpu_model: cpu_model(cpuinfo),
            cpus_online,
            cores_physical,
            governor: trimmed(&sources.governor),
            smt: trimmed(&sources.smt_control),
            thp: sources.thp_enabled.as_deref().and_then(bracketed_choice),
            virtualized,
            hypervisor,
            like_key: String::new(),
        };
        fingerprint.like_key = fingerprint.compute_like_key();
        fingerprint
    }

    /// The fields that decide likeness, by name, as text.
    pub fn fields(&self) -> [(&'static str, String); 10] {
        let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_string());
        [
            ("kernel", self.kernel.clone()),
            ("arch", self.arch.clone()),
            ("cpu_model", self.cpu_model.clone()),
            ("cpus_online", self.cpus_online.to_string()),
            ("cores_physical", self.cores_physical.to_string()),
            ("governor", optional(&self.governor)),
            ("smt", optional(&self.smt)),
            ("thp", optional(&self.thp)),
            ("virtualized", self.virtualized.to_string()),
            ("hypervisor", optional(&self.hypervisor)),
        ]
    }

    fn compute_like_key(&self) -> String {
        let text: Vec<String> = self
            .fields()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        format!(
            "xxh3-64:{:016x}",
            xxhash_rust::xxh3::xxh3_64(text.join("\n").as_bytes())
        )
    }

    /// The fields on which `self` and `other` differ; empty for like hosts.
    pub fn differences(&self, other: &HostFingerprint) -> Vec<HostDifference> {
        self.fields()
            .into_iter()
            .zip(other.fields())
            .filter(|((_, ours), (_, theirs))| ours != theirs)
            .map(|((field, ours), (_, theirs))| HostDifference {
                field,
                ours,
                theirs,
            })
            .collect()
    }
}

fn trimmed(text: &Option<String>) -> Option<String> {
    text.as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
}

/// Counts the CPUs of a kernel CPU list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> u32 {
    // The project's one CPU-list parser; an unreadable list counts as none.
    CpuSet::parse(list).map_or(0, |cpus| cpus.len() as u32)
}

/// The values of `key : value` lines of /proc/cpuinfo.
fn cpuinfo_values<'a>(cpuinfo: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    cpuinfo.lines().filter_map(move |line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim())
    })
}

fn cpuinfo_field_count(cpuinfo: &str, key: &str) -> u32 {
    cpuinfo_values(cpuinfo, key).count() as u32
}

/// The CPU model: x86's `model name`, else ARM's `Hardware`/`CPU part`, else "unknown".
fn cpu_model(cpuinfo: &str) -> String {
    ["model name", "Hardware", "CPU part", "cpu model"]
        .iter()
        .find_map(|key| cpuinfo_values(cpuinfo, key).next())
        .filter(|model| !model.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// Distinct (physical id, core id) pairs; 0 when cpuinfo does not say.
fn physical_core_count(cpuinfo: &str) -> u32 {
    let mut cores = std::collections::BTreeSet::new();
    for block in cpuinfo.split("\n\n") {
        let package = cpuinfo_values(block, "physical id").next();
        let core = cpuinfo_values(block, "core id").next();
        if let Some(core) = core {
            cores.insert((package.unwrap_or("0").to_string(), core.to_string()));
        }
    }
    cores.len() as u32
}

fn cpuinfo_flags_contain(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo_values(cpuinfo, "flags")
        .next()
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag))
}

/// The selected word of a sysfs choice list such as `always [madvise] never`.
fn bracketed_choice(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO_TWO_CORES_SMT: &str = "processor\t: 0\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu sse2 hypervisor\n\n\
processor\t: 1\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu sse2 hypervisor\n\n\
processor\t: 2\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 1\nflags\t\t: fpu sse2 hypervisor\n\n\
processor\t: 3\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 1\nflags\t\t: fpu sse2 hypervisor\n";

    fn sources() -> HostSources {
        HostSources {
            osrelease: Some("6.1.0-18-amd64\n".into()),
            cpuinfo: Some(CPUINFO_TWO_CORES_SMT.into()),
            cpus_online_list: Some("0-3\n".into()),
            governor: Some("performance\n".into()),
            smt_control: Some("on\n".into()),
            thp_enabled: Some("always [madvise] never\n".into()),
            hypervisor_type: None,
            dmi_sys_vendor: Some("QEMU\n".into()),
        }
    }

    #[test]
    fn the_fingerprint_reads_every_fact_from_its_sources() {
        let host = HostFingerprint::from_sources(&sources(), "x86_64");
        assert_eq!(host.kernel, "6.1.0-18-amd64");
        assert_eq!(host.cpu_model, "Example CPU 9000");
        assert_eq!(host.cpus_online, 4);
        assert_eq!(host.cores_physical, 2);
        assert_eq!(host.governor.as_deref(), Some("performance"));
        assert_eq!(host.smt.as_deref(), Some("on"));
        assert_eq!(host.thp.as_deref(), Some("madvise"));
        assert!(host.virtualized);
        assert_eq!(host.hypervisor.as_deref(), Some("QEMU"));
    }

    #[test]
    fn missing_sources_give_nulls_not_guesses() {
        let host = HostFingerprint::from_sources(&HostSources::default(), "aarch64");
        assert_eq!(host.kernel, "unknown");
        assert_eq!(host.cpu_model, "unknown");
        assert_eq!(host.governor, None);
        assert_eq!(host.thp, None);
        assert!(!host.virtualized);
    }

    #[test]
    fn like_hosts_share_a_key_and_unlike_ones_name_their_differences() {
        let a = HostFingerprint::from_sources(&sources(), "x86_64");
        let b = HostFingerprint::from_sources(&sources(), "x86_64");
        assert_eq!(a.like_key, b.like_key);
        assert!(a.differences(&b).is_empty());

        let mut other = sources();
        other.governor = Some("powersave".into());
        other.cpus_online_list = Some("0-7".into());
        let c = HostFingerprint::from_sources(&other, "x86_64");
        assert_ne!(a.like_key, c.like_key);
        let fields: Vec<_> = a.differences(&c).iter().map(|d| d.field).collect();
        assert_eq!(fields, ["cpus_online", "governor"]);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-3,8,10-11\n"), 7);
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list(""), 0);
        assert_eq!(count_cpu_list("3-1"), 0);
    }

    #[test]
    fn a_recorded_tree_gives_its_own_facts_not_this_machines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux-tests/fixtures/tune/tuned");
        let sources = HostSources::read(&Host::open(&root).unwrap());
        let host = HostFingerprint::from_sources(&sources, "x86_64");
        assert_eq!(host.kernel, "6.8.0-45-generic");
        assert_eq!(host.cpus_online, 16);
        assert_eq!(host.governor.as_deref(), Some("performance"));
        assert_eq!(host.thp.as_deref(), Some("madvise"));
    }

    #[test]
    fn this_host_has_a_fingerprint() {
        let host = HostFingerprint::of_this_host();
        assert!(host.cpus_online >= 1);
        assert!(host.cores_physical >= 1);
        assert!(host.like_key.starts_with("xxh3-64:"));
    }
}
