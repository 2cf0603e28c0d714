//! The state machine kinds a node can host, behind one object-safe interface.
//!
//! The runtime drives groups of many kinds from one loop, so each group's [`Applier`] is kept as a
//! `Box<dyn HostedMachine>`. Commands, queries and outputs cross this boundary as postcard bytes:
//! the typed API (`Fleet::command::<S>`) encodes on the caller's side, and the same bytes travel
//! to another node when the request is forwarded.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use fleet_core::{Applied, Applier, Entry, Index, SessionConfig, SnapshotError, StateMachine};

/// Why a hosted state machine could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MachineError {
    /// The bytes do not decode as the kind's command or query type.
    #[error("{what} does not decode as a {kind} {what}: {reason}")]
    Malformed {
        /// The kind.
        kind: String,
        /// "command" or "query".
        what: String,
        /// The decoder's message.
        reason: String,
    },
    /// The state machine panicked; the group is stopped on this node.
    #[error(
        "the {kind} state machine panicked applying index {index}: {message}; the group is stopped on this node"
    )]
    Panicked {
        /// The kind.
        kind: String,
        /// The entry being applied.
        index: Index,
        /// The panic's message.
        message: String,
    },
}

/// One group's state machine, of any kind, behind its session table.
pub trait HostedMachine: Send {
    /// The kind's name.
    fn kind(&self) -> &str;
    /// Applies the next committed entry. A panic in the user's code is caught and reported.
    fn apply(&mut self, entry: &Entry) -> Result<Applied, MachineError>;
    /// Whether `data` decodes as a command of this kind (checked before proposing, so a poison
    /// command never reaches the log).
    fn check_command(&self, data: &[u8]) -> Result<(), MachineError>;
    /// Answers an encoded query with an encoded output.
    fn query(&self, query: &[u8]) -> Result<Bytes, MachineError>;
    /// The whole state, for a snapshot at [`HostedMachine::applied`].
    fn snapshot(&self) -> Bytes;
    /// The last applied index.
    fn applied(&self) -> Index;
    /// The machine as `Any`, for [`state_of`].
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The typed state of a hosted machine of type `S`, if it is one (the runtime reads its own
/// catalog this way).
pub fn state_of<S: StateMachine>(machine: &dyn HostedMachine) -> Option<&S> {
    machine
        .as_any()
        .downcast_ref::<Hosted<S>>()
        .map(|h| h.applier.state())
}

struct Hosted<S: StateMachine> {
    kind: String,
    applier: Applier<S>,
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

impl<S: StateMachine> HostedMachine for Hosted<S> {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn apply(&mut self, entry: &Entry) -> Result<Applied, MachineError> {
        let applier = &mut self.applier;
        catch_unwind(AssertUnwindSafe(|| applier.apply(entry))).map_err(|p| {
            MachineError::Panicked {
                kind: self.kind.clone(),
                index: entry.index,
                message: panic_message(p),
            }
        })
    }

    fn check_command(&self, data: &[u8]) -> Result<(), MachineError> {
        postcard::from_bytes::<S::Command>(data)
            .map(|_| ())
            .map_err(|e| MachineError::Malformed {
                kind: self.kind.clone(),
                what: "command".into(),
                reason: e.to_string(),
            })
    }

    fn query(&self, query: &[u8]) -> Result<Bytes, MachineError> {
        let q: S::Query = postcard::from_bytes(query).map_err(|e| MachineError::Malformed {
            kind: self.kind.clone(),
            what: "query".into(),
            reason: e.to_string(),
        })?;
        let applier = &self.applier;
        let out = catch_unwind(AssertUnwindSafe(|| applier.query(&q))).map_err(|p| {
            MachineError::Panicked {
                kind: self.kind.clone(),
                index: applier.applied(),
                message: panic_message(p),
            }
        })?;
        Ok(Bytes::from(
            postcard::to_stdvec(&out).expect("outputs encode"),
        ))
    }

    fn snapshot(&self) -> Bytes {
        self.applier.snapshot()
    }

    fn applied(&self) -> Index {
        self.applier.applied()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

type Factory =
    Box<dyn Fn(Option<&[u8]>) -> Result<Box<dyn HostedMachine>, SnapshotError> + Send + Sync>;

/// The kinds this node can host, by name.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<String, Factory>,
    sessions: SessionConfig,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry whose machines keep sessions within `sessions`.
    pub fn new(sessions: SessionConfig) -> Self {
        Registry {
            kinds: BTreeMap::new(),
            sessions,
        }
    }

    /// Registers `S` under `kind`. Registering a kind twice replaces it.
    pub fn register<S: StateMachine>(&mut self, kind: &str) {
        let name = kind.to_string();
        let sessions = self.sessions;
        self.kinds.insert(
            kind.to_string(),
            Box::new(move |snapshot| {
                let applier = match snapshot {
                    Some(bytes) => Applier::<S>::restore(bytes, sessions)?,
                    None => Applier::<S>::new(sessions),
                };
                Ok(Box::new(Hosted {
                    kind: name.clone(),
                    applier,
                }) as Box<dyn HostedMachine>)
            }),
        );
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// The registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// A new machine of `kind`, empty or restored from a snapshot. `None` if the kind is unknown.
    pub fn create(
        &self,
        kind: &str,
        snapshot: Option<&[u8]>,
    ) -> Option<Result<Box<dyn HostedMachine>, SnapshotError>> {
        self.kinds.get(kind).map(|f| f(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::kv::{KvCommand, KvOutput, KvQuery, KvStore};
    use fleet_core::{Command, Payload};
    use serde::{Deserialize, Serialize};

    struct Bomb;
    #[derive(Serialize, Deserialize)]
    struct Boom;

    impl StateMachine for Bomb {
        type Command = Boom;
        type Query = Boom;
        type Output = Boom;
        fn new() -> Self {
            Bomb
        }
        fn command(&mut self, _: Boom) -> Boom {
            panic!("boom")
        }
        fn query(&self, _: &Boom) -> Boom {
            Boom
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(_: &[u8]) -> Result<Self, SnapshotError> {
            Ok(Bomb)
        }
    }

    fn entry(data: Vec<u8>) -> Entry {
        Entry {
            term: 1,
            index: 1,
            time: 0,
            payload: Payload::Command(Command {
                session: None,
                data: Bytes::from(data),
            }),
        }
    }

    #[test]
    fn kinds_are_created_by_name_and_speak_bytes() {
        let mut r = Registry::new(SessionConfig::default());
        r.register::<KvStore>("kv");
        assert!(r.create("nope", None).is_none());
        let mut m = r.create("kv", None).unwrap().unwrap();
        let put = postcard::to_stdvec(&KvCommand::Put {
            key: "a".into(),
            value: Bytes::from_static(b"1"),
        })
        .unwrap();
        m.check_command(&put).unwrap();
        assert!(matches!(
            m.check_command(b"\xff\xff"),
            Err(MachineError::Malformed { .. })
        ));
        m.apply(&entry(put)).unwrap();
        let q = postcard::to_stdvec(&KvQuery::Get { key: "a".into() }).unwrap();
        let out: KvOutput = postcard::from_bytes(&m.query(&q).unwrap()).unwrap();
        assert_eq!(out, KvOutput::Value(Some(Bytes::from_static(b"1"))));
        let restored = r.create("kv", Some(&m.snapshot())).unwrap().unwrap();
        assert_eq!(restored.applied(), 1);
    }

    #[test]
    fn a_panicking_state_machine_is_caught_and_named() {
        let mut r = Registry::new(SessionConfig::default());
        r.register::<Bomb>("bomb");
        let mut m = r.create("bomb", None).unwrap().unwrap();
        let err = m
            .apply(&entry(postcard::to_stdvec(&Boom).unwrap()))
            .unwrap_err();
        assert!(
            err.to_string().contains("panicked applying index 1: boom"),
            "{err}"
        );
    }
}
