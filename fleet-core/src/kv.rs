//! `kv`: the built-in key-value state machine (get, put, delete, compare-and-set, append, scan by
//! prefix). The daemon registers it under the kind `"kv"`; the simulator and tests use it too.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state_machine::{SnapshotError, StateMachine};
use crate::types::FORMAT_VERSION;

/// Bounds of the key-value machine.
pub const SCAN_ENTRIES_MAX: usize = 10_000;

/// A command of the key-value machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`. Outputs the previous value.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key`. Outputs the previous value.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` (or removes it if `None`) if its value is `expected` (`None`: absent).
    /// Outputs whether it did, and the value before.
    CompareAndSet {
        /// The key.
        key: String,
        /// The value the key must have.
        expected: Option<Bytes>,
        /// The value to set, or `None` to delete.
        new: Option<Bytes>,
    },
    /// Appends `value` to the value of `key`. Outputs the new length.
    Append {
        /// The key.
        key: String,
        /// The bytes to append.
        value: Bytes,
    },
}

/// A query of the key-value machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    /// The value of `key`.
    Get {
        /// The key.
        key: String,
    },
    /// Keys starting with `prefix`, in order, at most `limit` (capped at [`SCAN_ENTRIES_MAX`]).
    Scan {
        /// The prefix.
        prefix: String,
        /// The most entries to return.
        limit: usize,
    },
}

/// The answer of the key-value machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// A value, or `None` if absent.
    Value(Option<Bytes>),
    /// The outcome of a compare-and-set, with the value before it.
    CompareAndSet {
        /// The value matched and was replaced.
        succeeded: bool,
        /// The value before the command.
        previous: Option<Bytes>,
    },
    /// The length of a value after an append.
    Length(u64),
    /// Key-value pairs of a scan.
    Entries(Vec<(String, Bytes)>),
}

/// The key-value state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<String, Bytes>,
}

#[derive(Serialize, Deserialize)]
struct KvSnapshot {
    version: u16,
    map: BTreeMap<String, Bytes>,
}

impl KvStore {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Bytes)> {
        self.map.iter()
    }
}

impl StateMachine for KvStore {
    type Command = KvCommand;
    type Query = KvQuery;
    type Output = KvOutput;

    fn new() -> Self {
        KvStore::default()
    }

    fn command(&mut self, cmd: KvCommand) -> KvOutput {
        match cmd {
            KvCommand::Put { key, value } => KvOutput::Value(self.map.insert(key, value)),
            KvCommand::Delete { key } => KvOutput::Value(self.map.remove(&key)),
            KvCommand::CompareAndSet { key, expected, new } => {
                let previous = self.map.get(&key).cloned();
                let succeeded = previous == expected;
                if succeeded {
                    match new {
                        Some(v) => {
                            self.map.insert(key, v);
                        }
                        None => {
                            self.map.remove(&key);
                        }
                    }
                }
                KvOutput::CompareAndSet {
                    succeeded,
                    previous,
                }
            }
            KvCommand::Append { key, value } => {
                let entry = self.map.entry(key).or_default();
                let mut joined = Vec::with_capacity(entry.len() + value.len());
                joined.extend_from_slice(entry);
                joined.extend_from_slice(&value);
                *entry = Bytes::from(joined);
                KvOutput::Length(entry.len() as u64)
            }
        }
    }

    fn query(&self, q: &KvQuery) -> KvOutput {
        match q {
            KvQuery::Get { key } => KvOutput::Value(self.map.get(key).cloned()),
            KvQuery::Scan { prefix, limit } => KvOutput::Entries(
                self.map
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .take((*limit).min(SCAN_ENTRIES_MAX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&KvSnapshot {
            version: FORMAT_VERSION,
            map: self.map.clone(),
        })
        .expect("kv snapshots encode")
    }

    fn restore(snapshot: &[u8]) -> Result<Self, SnapshotError> {
        let snap: KvSnapshot = postcard::from_bytes(snapshot)
            .map_err(|e| SnapshotError(format!("undecodable kv snapshot: {e}")))?;
        if snap.version != FORMAT_VERSION {
            return Err(SnapshotError(format!(
                "kv snapshot version {} is not {FORMAT_VERSION}",
                snap.version
            )));
        }
        Ok(KvStore { map: snap.map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn put_get_delete_cas_append_scan() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.command(KvCommand::Put {
                key: "a/1".into(),
                value: b("x")
            }),
            KvOutput::Value(None)
        );
        assert_eq!(
            kv.command(KvCommand::Put {
                key: "a/2".into(),
                value: b("y")
            }),
            KvOutput::Value(None)
        );
        assert_eq!(
            kv.command(KvCommand::Put {
                key: "b".into(),
                value: b("z")
            }),
            KvOutput::Value(None)
        );
        let cas_miss = kv.command(KvCommand::CompareAndSet {
            key: "a/1".into(),
            expected: Some(b("nope")),
            new: Some(b("w")),
        });
        assert_eq!(
            cas_miss,
            KvOutput::CompareAndSet {
                succeeded: false,
                previous: Some(b("x"))
            }
        );
        let cas_hit = kv.command(KvCommand::CompareAndSet {
            key: "a/1".into(),
            expected: Some(b("x")),
            new: Some(b("w")),
        });
        assert_eq!(
            cas_hit,
            KvOutput::CompareAndSet {
                succeeded: true,
                previous: Some(b("x"))
            }
        );
        let create = kv.command(KvCommand::CompareAndSet {
            key: "c".into(),
            expected: None,
            new: Some(b("1")),
        });
        assert_eq!(
            create,
            KvOutput::CompareAndSet {
                succeeded: true,
                previous: None
            }
        );
        assert_eq!(
            kv.command(KvCommand::Append {
                key: "c".into(),
                value: b("23")
            }),
            KvOutput::Length(3)
        );
        assert_eq!(
            kv.command(KvCommand::Delete { key: "b".into() }),
            KvOutput::Value(Some(b("z")))
        );
        assert_eq!(
            kv.query(&KvQuery::Get { key: "b".into() }),
            KvOutput::Value(None)
        );
        assert_eq!(
            kv.query(&KvQuery::Scan {
                prefix: "a/".into(),
                limit: 10
            }),
            KvOutput::Entries(vec![("a/1".into(), b("w")), ("a/2".into(), b("y"))])
        );
        assert_eq!(
            kv.query(&KvQuery::Scan {
                prefix: "a/".into(),
                limit: 1
            }),
            KvOutput::Entries(vec![("a/1".into(), b("w"))])
        );
        let restored = KvStore::restore(&kv.snapshot()).unwrap();
        assert_eq!(restored, kv);
        assert!(KvStore::restore(b"\x02").is_err());
    }
}
