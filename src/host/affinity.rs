//! The CPUs this process may run on (its affinity mask), and pinning the calling thread to
//! one of them. Read on whichever thread asks; pinning affects only the calling thread.

/// The CPUs in this process's affinity mask, in order. When the mask cannot be read, every
/// CPU the standard library says is available, from 0.
pub fn allowed_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(cores) if !cores.is_empty() => {
            let mut cpus: Vec<usize> = cores.into_iter().map(|core| core.id).collect();
            cpus.sort_unstable();
            cpus
        }
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Pins the calling thread to `cpu`. False if that is impossible: a CPU outside the affinity
/// mask, offline, or beyond the fixed-size `cpu_set_t` (which `core_affinity` would index out
/// of bounds, so it is refused before the call).
pub fn pin_current_thread(cpu: usize) -> bool {
    cpu < libc::CPU_SETSIZE as usize
        && core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_sorted_without_duplicates_and_pinnable() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|pair| pair[0] < pair[1]), "{cpus:?}");
        let last = *cpus.last().unwrap();
        // Pinning to an allowed CPU works; pinning outside the mask or the set size does not.
        let pinned = std::thread::spawn(move || pin_current_thread(last));
        assert!(pinned.join().unwrap());
        let beyond = std::thread::spawn(|| pin_current_thread(libc::CPU_SETSIZE as usize));
        assert!(!beyond.join().unwrap());
    }

    #[test]
    fn the_mask_agrees_with_the_kernels_status_file() {
        // This thread's mask: the one `sched_getaffinity(0)` reads.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        let from_kernel: Vec<usize> = crate::host::cpuset::CpuSet::parse(list)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(allowed_cpus(), from_kernel);
    }
}
