//! Sets of CPU numbers, read and written in the kernel's list syntax (`0-3,8,10-11`) and shown as
//! the kernel's hexadecimal masks (`00000d0f`).
//!
//! This is the one place CPU lists are parsed: `--cpus`, sysfs files (`online`, `isolated`,
//! `thread_siblings_list`, `smp_affinity_list`), `Cpus_allowed_list` and kernel command-line
//! parameters all go through [`CpuSet::parse`], so they accept and reject the same things.

use std::collections::BTreeSet;
use std::fmt;

use crate::constants::CPU_ID_MAX;

/// A set of CPU numbers, each at most [`CPU_ID_MAX`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<usize>);

/// Why a CPU list could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuListError {
    list: String,
    reason: String,
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid CPU list '{}': {}; write CPUs the kernel's way, e.g. 0-3,8,10-11",
            self.list, self.reason
        )
    }
}

impl std::error::Error for CpuListError {}

impl CpuSet {
    /// Parses a kernel CPU list. Blank text is the empty set (an empty sysfs file).
    pub fn parse(list: &str) -> Result<CpuSet, CpuListError> {
        let error = |reason: String| CpuListError {
            list: list.trim().to_string(),
            reason,
        };
        let mut cpus = BTreeSet::new();
        let trimmed = list.trim();
        if trimmed.is_empty() {
            return Ok(CpuSet(cpus));
        }
        for item in trimmed.split(',') {
            let (first, last) = parse_range(item).map_err(error)?;
            cpus.extend(first..=last);
        }
        Ok(CpuSet(cpus))
    }

    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> CpuSet {
        CpuSet(cpus.into_iter().filter(|&cpu| cpu <= CPU_ID_MAX).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: usize) -> bool {
        self.0.contains(&cpu)
    }

    pub fn first(&self) -> Option<usize> {
        self.0.first().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().copied()
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.union(&other.0).copied().collect())
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }

    /// The kernel's hexadecimal mask: 32-bit words of eight digits, most significant first,
    /// separated by commas, as `/proc/irq/N/smp_affinity` takes it.
    pub fn to_mask(&self) -> String {
        let words = self.0.last().map_or(1, |&highest| highest / 32 + 1);
        let mut bits = vec![0u32; words];
        for cpu in self.iter() {
            bits[cpu / 32] |= 1 << (cpu % 32);
        }
        let hex: Vec<String> = bits
            .iter()
            .rev()
            .map(|word| format!("{word:08x}"))
            .collect();
        hex.join(",")
    }
}

/// Parses one item of a list: `N` or `N-M`, each at most [`CPU_ID_MAX`].
fn parse_range(item: &str) -> Result<(usize, usize), String> {
    let (first, last) = match item.split_once('-') {
        Some((first, last)) => (parse_cpu(first)?, parse_cpu(last)?),
        None => {
            let cpu = parse_cpu(item)?;
            (cpu, cpu)
        }
    };
    if first > last {
        return Err(format!("the range '{item}' runs backwards"));
    }
    Ok((first, last))
}

fn parse_cpu(text: &str) -> Result<usize, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an item is empty (a stray comma or dash?)".to_string());
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("'{text}' is not a CPU number"));
    }
    match text.parse::<usize>() {
        Ok(cpu) if cpu <= CPU_ID_MAX => Ok(cpu),
        _ => Err(format!(
            "CPU {text} is above the kernel's limit of {CPU_ID_MAX}"
        )),
    }
}

/// Writes the set as the kernel does: runs of two or more consecutive CPUs as ranges.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for cpu in self.iter() {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == cpu => *last = cpu,
                _ => runs.push((cpu, cpu)),
            }
        }
        let items: Vec<String> = runs
            .iter()
            .map(|&(first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            })
            .collect();
        write!(f, "{}", items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(list: &str) -> Vec<usize> {
        CpuSet::parse(list).unwrap().iter().collect()
    }

    #[test]
    fn reads_the_kernel_list_syntax() {
        assert_eq!(cpus("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpus(" 5 \n"), vec![5]);
        assert_eq!(cpus("3,1,1-2"), vec![1, 2, 3]);
        assert!(CpuSet::parse("\n").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_lists_with_the_reason() {
        let reason = |list: &str| CpuSet::parse(list).unwrap_err().to_string();
        assert!(
            reason("3-1").contains("runs backwards"),
            "{}",
            reason("3-1")
        );
        assert!(reason("0-x").contains("'x' is not a CPU number"));
        assert!(reason("1,,2").contains("empty"));
        assert!(reason("0-99999999999999999999").contains("above the kernel's limit"));
        assert!(reason("0-3:1/2").contains("not a CPU number"));
        assert!(reason("-1").contains("empty"));
    }

    #[test]
    fn writes_runs_as_ranges() {
        for list in ["0-3,8,10-11", "0-1", "7", "0,2,4-6", ""] {
            assert_eq!(CpuSet::parse(list).unwrap().to_string(), list);
        }
    }

    #[test]
    fn masks_are_32_bit_words_most_significant_first() {
        assert_eq!(CpuSet::parse("0-3,8").unwrap().to_mask(), "0000010f");
        assert_eq!(
            CpuSet::parse("0,33").unwrap().to_mask(),
            "00000002,00000001"
        );
        assert_eq!(CpuSet::default().to_mask(), "00000000");
    }

    #[test]
    fn set_algebra() {
        let a = CpuSet::parse("0-3").unwrap();
        let b = CpuSet::parse("2-5").unwrap();
        assert_eq!(a.intersection(&b).to_string(), "2-3");
        assert_eq!(a.difference(&b).to_string(), "0-1");
        assert_eq!(a.union(&b).to_string(), "0-5");
        assert!(CpuSet::parse("1-2").unwrap().is_subset(&a));
        assert!(!b.is_subset(&a));
    }
}
