//! The flags that name a cluster: the etcd that coordinates it (`--cluster`) and its name
//! (`--cluster-name`). One clap struct that `trove node` (to join the cluster) and `trove top`
//! (to watch its nodes) both flatten, so that the two read the same flags, with the same help,
//! checked the same way. Parsed on the CLI's thread.

use clap::Args;

use crate::cluster::etcd::parse_endpoints;
use crate::cluster::keys::ClusterKeys;

/// `--cluster URLS` and `--cluster-name NAME`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ClusterFlags {
    /// The etcd that coordinates the cluster (its client URLs: http://HOST:2379[,…])
    #[arg(long, value_name = "URLS")]
    pub cluster: Option<String>,
    /// The cluster's name (with --cluster): its keys live under /trove/NAME/ in etcd
    #[arg(
        long,
        value_name = "NAME",
        default_value = "trove",
        requires = "cluster"
    )]
    pub cluster_name: String,
}

impl ClusterFlags {
    /// The etcd endpoints and the cluster's keys, checked; `Ok(None)` without `--cluster`.
    pub fn parse(&self) -> Result<Option<(Vec<String>, ClusterKeys)>, String> {
        let Some(list) = &self.cluster else {
            return Ok(None);
        };
        let endpoints = parse_endpoints(list).map_err(|error| format!("--cluster {error}"))?;
        let keys = ClusterKeys::new(&self.cluster_name)
            .map_err(|error| format!("--cluster-name: {error}"))?;
        Ok(Some((endpoints, keys)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Command {
        #[command(flatten)]
        cluster: ClusterFlags,
    }

    fn parse(args: &[&str]) -> Result<ClusterFlags, String> {
        Command::try_parse_from(std::iter::once("trove").chain(args.iter().copied()))
            .map(|command| command.cluster)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn a_cluster_is_named_by_its_etcd_and_its_name() {
        let flags = parse(&[
            "--cluster",
            "http://10.0.0.1:2379",
            "--cluster-name",
            "east",
        ])
        .unwrap();
        let (endpoints, keys) = flags.parse().unwrap().expect("--cluster was given");
        assert_eq!(endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(keys.prefix(), "/trove/east/");
        let alone = parse(&[]).unwrap();
        assert_eq!(alone.cluster_name, "trove");
        assert_eq!(alone.parse(), Ok(None));
    }

    #[test]
    fn a_name_without_a_cluster_or_a_bad_name_is_refused() {
        let error = parse(&["--cluster-name", "east"]).unwrap_err();
        assert!(error.contains("--cluster"), "{error}");
        let flags = parse(&["--cluster", "http://10.0.0.1:2379", "--cluster-name", "a/b"]).unwrap();
        let error = flags.parse().unwrap_err();
        assert!(error.starts_with("--cluster-name: "), "{error}");
    }
}
