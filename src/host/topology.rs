//! The host's CPUs as a thread-per-core engine sees them: online CPUs, grouped into physical
//! cores (SMT siblings) and NUMA nodes, and the split of them into shard CPUs and housekeeping
//! CPUs that `trove tune cpus` proposes and the checks use when `--cpus` is not given.
//!
//! The split follows perftune's reasoning: the first core of each NUMA node does housekeeping
//! (IRQs, kernel threads, the OS), so every node keeps its NIC interrupts local; every other core
//! gets one shard, on its first thread; that core's other threads stay idle, because a sibling
//! that runs work takes execution units and cache from the shard beside it.

use crate::host::cpuset::CpuSet;
use crate::host::tree::Host;

/// The online CPUs of a host, by core and by NUMA node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub online: CpuSet,
    /// Physical cores: each is the set of online SMT threads sharing it, ordered by first CPU.
    pub cores: Vec<CpuSet>,
    /// NUMA nodes: each the set of online CPUs in it, ordered by node number.
    pub nodes: Vec<CpuSet>,
}

/// Which CPUs run shards and which are left to the rest of the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSplit {
    /// One CPU per core, one shard each.
    pub shards: CpuSet,
    /// SMT siblings of shard CPUs: isolated with them, and left idle.
    pub idle_siblings: CpuSet,
    /// CPUs for IRQs, kernel threads and everything else.
    pub housekeeping: CpuSet,
}

impl CpuSplit {
    /// The CPUs to take away from the scheduler: shards and their idle siblings.
    pub fn isolated(&self) -> CpuSet {
        self.shards.union(&self.idle_siblings)
    }
}

impl Topology {
    /// Reads the topology from `sys/devices/system/{cpu,node}` under the host's root.
    pub fn read(host: &Host) -> Result<Topology, String> {
        let online_text = host
            .read("sys/devices/system/cpu/online")
            .ok_or("cannot read sys/devices/system/cpu/online under the root")?;
        let online = CpuSet::parse(&online_text)
            .map_err(|error| format!("sys/devices/system/cpu/online: {error}"))?;
        if online.is_empty() {
            return Err("sys/devices/system/cpu/online lists no CPU".to_string());
        }
        let cores = read_cores(host, &online);
        let nodes = read_nodes(host, &online);
        Ok(Topology {
            online,
            cores,
            nodes,
        })
    }

    /// The online SMT threads sharing `cpu`'s core, `cpu` included.
    pub fn core_of(&self, cpu: usize) -> CpuSet {
        self.cores
            .iter()
            .find(|core| core.contains(cpu))
            .cloned()
            .unwrap_or_else(|| CpuSet::from_cpus([cpu]))
    }

    /// The proposed split (see the module doc). On a host of one core the core's first thread
    /// does housekeeping and the others run shards; on a host of one CPU that CPU does both.
    pub fn split(&self) -> CpuSplit {
        let mut housekeeping = CpuSet::default();
        for node in &self.nodes {
            if let Some(first) = node.first() {
                housekeeping = housekeeping.union(&self.core_of(first));
            }
        }
        let mut split = self.split_around(&housekeeping);
        if split.shards.is_empty() {
            let first_core = &self.cores[0];
            split = self.split_around(first_core);
        }
        if split.shards.is_empty() {
            split = self.split_one_core();
        }
        split
    }

    /// Shards on the first thread of every core outside `housekeeping_cores`.
    fn split_around(&self, housekeeping_cores: &CpuSet) -> CpuSplit {
        let mut shards = CpuSet::default();
        let mut idle_siblings = CpuSet::default();
        for core in &self.cores {
            if core.is_subset(housekeeping_cores) {
                continue;
            }
            let first = CpuSet::from_cpus(core.first());
            idle_siblings = idle_siblings.union(&core.difference(&first));
            shards = shards.union(&first);
        }
        CpuSplit {
            shards,
            idle_siblings,
            housekeeping: housekeeping_cores.clone(),
        }
    }

    /// A host of one core: its first thread does housekeeping, its others run shards.
    fn split_one_core(&self) -> CpuSplit {
        let core = &self.cores[0];
        let first = CpuSet::from_cpus(core.first());
        let others = core.difference(&first);
        let shards = if others.is_empty() {
            first.clone()
        } else {
            others
        };
        CpuSplit {
            shards,
            idle_siblings: CpuSet::default(),
            housekeeping: first,
        }
    }
}

/// Groups online CPUs by `topology/thread_siblings_list`; a CPU without one is its own core.
fn read_cores(host: &Host, online: &CpuSet) -> Vec<CpuSet> {
    let mut cores: Vec<CpuSet> = Vec::new();
    for cpu in online.iter() {
        if cores.iter().any(|core| core.contains(cpu)) {
            continue;
        }
        let path = format!("sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        let siblings = host
            .read(&path)
            .and_then(|text| CpuSet::parse(&text).ok())
            .map(|siblings| siblings.intersection(online))
            .filter(|siblings| siblings.contains(cpu))
            .unwrap_or_else(|| CpuSet::from_cpus([cpu]));
        cores.push(siblings);
    }
    cores
}

/// Reads `sys/devices/system/node/nodeN/cpulist`; a host without them is one node.
fn read_nodes(host: &Host, online: &CpuSet) -> Vec<CpuSet> {
    let mut numbered: Vec<(usize, CpuSet)> = host
        .list_dir("sys/devices/system/node")
        .iter()
        .filter_map(|name| {
            let number = name.strip_prefix("node")?.parse().ok()?;
            let list = host.read(&format!("sys/devices/system/node/{name}/cpulist"))?;
            let cpus = CpuSet::parse(&list).ok()?.intersection(online);
            Some((number, cpus))
        })
        .filter(|(_, cpus)| !cpus.is_empty())
        .collect();
    numbered.sort_by_key(|(number, _)| *number);
    let nodes: Vec<CpuSet> = numbered.into_iter().map(|(_, cpus)| cpus).collect();
    if nodes.is_empty() {
        vec![online.clone()]
    } else {
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    fn topology(cores: &[&str], nodes: &[&str]) -> Topology {
        let cores: Vec<CpuSet> = cores.iter().map(|core| set(core)).collect();
        let online = cores
            .iter()
            .fold(CpuSet::default(), |all, core| all.union(core));
        Topology {
            online,
            cores,
            nodes: nodes.iter().map(|node| set(node)).collect(),
        }
    }

    #[test]
    fn two_sockets_with_smt_keep_one_core_per_node() {
        let cores = ["0,8", "1,9", "2,10", "3,11", "4,12", "5,13", "6,14", "7,15"];
        let split = topology(&cores, &["0-3,8-11", "4-7,12-15"]).split();
        assert_eq!(split.housekeeping, set("0,4,8,12"));
        assert_eq!(split.shards, set("1-3,5-7"));
        assert_eq!(split.idle_siblings, set("9-11,13-15"));
        assert_eq!(split.isolated(), set("1-3,5-7,9-11,13-15"));
    }

    #[test]
    fn two_cpus_without_smt_give_one_shard() {
        let split = topology(&["0", "1"], &["0-1"]).split();
        assert_eq!(split.housekeeping, set("0"));
        assert_eq!(split.shards, set("1"));
        assert!(split.idle_siblings.is_empty());
    }

    #[test]
    fn one_core_per_node_keeps_only_the_first_for_housekeeping() {
        let split = topology(&["0", "1"], &["0", "1"]).split();
        assert_eq!(split.housekeeping, set("0"));
        assert_eq!(split.shards, set("1"));
    }

    #[test]
    fn one_core_with_smt_splits_its_threads() {
        let split = topology(&["0-1"], &["0-1"]).split();
        assert_eq!(split.housekeeping, set("0"));
        assert_eq!(split.shards, set("1"));
    }

    #[test]
    fn one_cpu_does_both() {
        let split = topology(&["0"], &["0"]).split();
        assert_eq!(split.housekeeping, set("0"));
        assert_eq!(split.shards, set("0"));
    }
}
