//! `ModelEtcd`: a small, sans-IO model of the parts of etcd the coordinator uses (revisions,
//! leases with TTLs, ranges, the two transactions), in virtual time. The coordinator's unit
//! tests run nodes against it, and the simulator can too. It answers a [`Request`] the way
//! etcd's JSON gateway does, or fails it while the model is down.
//!
//! One value, owned by whoever drives the model (a test or the simulator's thread).

use std::collections::BTreeMap;

use crate::cluster::coordinator::{KeyValue, Request, Response};

const NS_PER_S: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
struct Stored {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    lease: i64,
}

/// The model. See the module doc.
#[derive(Clone, Debug)]
pub struct ModelEtcd {
    revision: u64,
    kvs: BTreeMap<String, Stored>,
    /// Lease id → when it expires (virtual ns) and its TTL in seconds.
    leases: BTreeMap<i64, (u64, u64)>,
    next_lease: i64,
    down: bool,
}

impl Default for ModelEtcd {
    fn default() -> Self {
        ModelEtcd::new()
    }
}

impl ModelEtcd {
    pub fn new() -> ModelEtcd {
        ModelEtcd {
            revision: 1,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            down: false,
        }
    }

    /// Takes the model down (every request fails) or brings it back. Coming back extends every
    /// lease by its full TTL, as a real etcd does when it elects a leader.
    pub fn set_down(&mut self, now_ns: u64, down: bool) {
        if self.down && !down {
            for (expires_ns, ttl_s) in self.leases.values_mut() {
                *expires_ns = now_ns + *ttl_s * NS_PER_S;
            }
        }
        self.down = down;
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.kvs.get(key).map(|stored| &stored.value[..])
    }

    /// The revision at which `key` was last written, if it exists.
    pub fn mod_revision(&self, key: &str) -> Option<u64> {
        self.kvs.get(key).map(|stored| stored.mod_revision)
    }

    /// Ends every lease whose TTL ran out by `now_ns` and deletes its keys.
    pub fn expire(&mut self, now_ns: u64) {
        if self.down {
            return;
        }
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (expires_ns, _))| *expires_ns <= now_ns)
            .map(|(&lease, _)| lease)
            .collect();
        for lease in expired {
            self.leases.remove(&lease);
            let before = self.kvs.len();
            self.kvs.retain(|_, stored| stored.lease != lease);
            if self.kvs.len() != before {
                self.revision += 1;
            }
        }
    }

    /// Answers `request` at `now_ns`, as etcd would.
    pub fn handle(&mut self, now_ns: u64, request: &Request) -> Result<Response, String> {
        if self.down {
            return Err("the model etcd is down".into());
        }
        self.expire(now_ns);
        let response = match request {
            Request::LeaseGrant { ttl_s } => {
                let lease = self.next_lease;
                self.next_lease += 1;
                self.leases
                    .insert(lease, (now_ns + ttl_s * NS_PER_S, *ttl_s));
                Response::LeaseGranted {
                    lease,
                    ttl_s: *ttl_s as i64,
                }
            }
            Request::LeaseKeepAlive { lease } => match self.leases.get_mut(lease) {
                Some((expires_ns, ttl_s)) => {
                    *expires_ns = now_ns + *ttl_s * NS_PER_S;
                    Response::LeaseKept {
                        ttl_s: *ttl_s as i64,
                    }
                }
                None => Response::LeaseKept { ttl_s: 0 },
            },
            Request::Put { key, value, lease } => {
                // Lease 0 is no lease, as in etcd.
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Err(format!("etcdserver: requested lease not found ({lease})"));
                }
                self.put(key, value, *lease);
                Response::Put {
                    revision: self.revision,
                }
            }
            Request::PutAll { puts } => {
                // One transaction: every key takes the same new revision.
                self.revision += 1;
                for (key, value) in puts {
                    self.put_at_revision(key, value, 0);
                }
                Response::Txn {
                    succeeded: true,
                    revision: self.revision,
                }
            }
            Request::RangePrefix { prefix } => Response::Range {
                revision: self.revision,
                kvs: self.range(prefix),
            },
            Request::RangePrefixChanged {
                prefix,
                after_revision,
            } => Response::Range {
                revision: self.revision,
                kvs: self
                    .range(prefix)
                    .into_iter()
                    .filter(|kv| kv.mod_revision > *after_revision)
                    .collect(),
            },
            Request::Revision { .. } => Response::Revision {
                revision: self.revision,
            },
            Request::CreateIfAbsent { key, value, lease } => {
                let succeeded = !self.kvs.contains_key(key) && self.leases.contains_key(lease);
                if succeeded {
                    self.put(key, value, *lease);
                }
                Response::Txn {
                    succeeded,
                    revision: self.revision,
                }
            }
            Request::CompareAndSwap {
                key,
                value,
                expect_mod_revision,
                guard_key,
                guard_create_revision,
            } => {
                let mod_revision = self.kvs.get(key).map_or(0, |stored| stored.mod_revision);
                let guard = self
                    .kvs
                    .get(guard_key)
                    .map_or(0, |stored| stored.create_revision);
                let succeeded =
                    mod_revision == *expect_mod_revision && guard == *guard_create_revision;
                if succeeded {
                    self.put(key, value, 0);
                }
                Response::Txn {
                    succeeded,
                    revision: self.revision,
                }
            }
        };
        Ok(response)
    }

    fn put(&mut self, key: &str, value: &[u8], lease: i64) {
        self.revision += 1;
        self.put_at_revision(key, value, lease);
    }

    /// Puts `key` at the current revision (a transaction's puts share one).
    fn put_at_revision(&mut self, key: &str, value: &[u8], lease: i64) {
        let create_revision = self
            .kvs
            .get(key)
            .map_or(self.revision, |stored| stored.create_revision);
        self.kvs.insert(
            key.to_owned(),
            Stored {
                value: value.to_vec(),
                create_revision,
                mod_revision: self.revision,
                lease,
            },
        );
    }

    fn range(&self, prefix: &str) -> Vec<KeyValue> {
        self.kvs
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, stored)| KeyValue {
                key: key.clone(),
                value: stored.value.clone(),
                create_revision: stored.create_revision,
                mod_revision: stored.mod_revision,
                lease: stored.lease,
            })
            .collect()
    }
}
