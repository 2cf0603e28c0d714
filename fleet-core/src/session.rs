//! Exactly-once commands (thesis §6.3): client sessions kept in the replicated state, and the
//! [`Applier`] that runs a [`StateMachine`] behind them.
//!
//! A client first registers ([`Payload::Register`](crate::Payload::Register)): the
//! registration's log index is its client id. Every command may then carry `(client_id, seq,
//! first_unacked)`. The group keeps, per client, the responses of every applied command at or
//! above `first_unacked`; a retry of one of them gets the recorded response and is not applied
//! again. Responses below `first_unacked` are forgotten, since the client said it has them.
//! Sessions expire by log time (the leader-stamped time in entries), so every replica expires the
//! same sessions at the same entry; a command whose session the group does not hold is refused
//! with [`SessionError::Expired`], never applied, because an earlier copy of it may have been
//! applied before the session was forgotten.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state_machine::{SnapshotError, StateMachine};
use crate::types::{Entry, FORMAT_VERSION, Index, LogTime, Payload, SessionRef};

/// Bounds of the session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Responses kept per client (commands in flight at once, from `first_unacked` on).
    pub responses_per_client_max: usize,
    /// Clients with a session. Beyond it the least recently active session is dropped.
    pub sessions_max: usize,
    /// A session idle for this much log time (ticks) expires.
    pub session_timeout_ticks: LogTime,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            responses_per_client_max: 128,
            sessions_max: 8192,
            // 30 minutes at the default 10 ms tick.
            session_timeout_ticks: 180_000,
        }
    }
}

/// Why a command was answered with an error instead of being applied. Deterministic: every replica
/// gives the same answer for the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The client already acknowledged this sequence number, so its response is gone.
    #[error(
        "command {seq} of client {client_id} is below its first unacknowledged seq {first_unacked}; it was already answered"
    )]
    AlreadyAcknowledged {
        /// The client.
        client_id: u64,
        /// The command's sequence number.
        seq: u64,
        /// The client's first unacknowledged sequence number as the group knows it.
        first_unacked: u64,
    },
    /// The client has more commands in flight than the group keeps responses for.
    #[error(
        "client {client_id} has more than {limit} commands in flight; wait for responses before sending more"
    )]
    TooManyInFlight {
        /// The client.
        client_id: u64,
        /// `SessionConfig::responses_per_client_max`.
        limit: usize,
    },
    /// The group holds no session for this client id: it expired, was evicted (more clients than
    /// `SessionConfig::sessions_max`), or was never registered. The command was not applied now;
    /// whether an earlier copy of it applied is unknown. Register a new session for later commands.
    #[error(
        "the group holds no session {client_id} (expired, evicted, or never registered): this command was not applied, and whether an earlier copy of it was is unknown; register a new session"
    )]
    Expired {
        /// The client.
        client_id: u64,
    },
    /// The command's bytes do not decode as the state machine's command type.
    #[error("command does not decode as this group's command type: {0}")]
    Malformed(String),
}

/// One client's session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientSession {
    first_unacked: u64,
    responses: BTreeMap<u64, Bytes>,
    last_active: LogTime,
}

/// The session table, part of the replicated state and of every snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    clients: BTreeMap<u64, ClientSession>,
    /// `(last_active, client_id)` of every session, oldest first, so that expiring and evicting
    /// cost what they remove, not a pass over the table per applied entry. Derived from
    /// `clients`: not in snapshots, rebuilt on restore.
    #[serde(skip)]
    by_activity: std::collections::BTreeSet<(LogTime, u64)>,
}

/// What the session table says about a command.
enum Check {
    Apply,
    Answer(Result<Bytes, SessionError>),
}

impl Sessions {
    fn expire(&mut self, now: LogTime, cfg: &SessionConfig) {
        while let Some(&(last_active, id)) = self.by_activity.first()
            && now.saturating_sub(last_active) >= cfg.session_timeout_ticks
        {
            self.by_activity.pop_first();
            self.clients.remove(&id);
        }
    }

    /// Rebuilds the activity index after the table was decoded from a snapshot.
    fn rebuild_index(&mut self) {
        self.by_activity = self
            .clients
            .iter()
            .map(|(id, s)| (s.last_active, *id))
            .collect();
    }

    /// Opens the session `client_id` (the index of its registration entry), evicting the least
    /// recently active session when the table is full.
    fn register(&mut self, client_id: u64, now: LogTime, cfg: &SessionConfig) {
        if self.clients.len() >= cfg.sessions_max {
            self.evict_least_recent();
        }
        self.clients.insert(
            client_id,
            ClientSession {
                first_unacked: 1,
                responses: BTreeMap::new(),
                last_active: now,
            },
        );
        self.by_activity.insert((now, client_id));
    }

    fn check(&mut self, r: SessionRef, now: LogTime, cfg: &SessionConfig) -> Check {
        // Only a registration opens a session: a client id the table does not hold expired, was
        // evicted, or never existed, and its commands may have been applied before it was
        // forgotten, so applying one now could apply it twice.
        let Some(session) = self.clients.get_mut(&r.client_id) else {
            return Check::Answer(Err(SessionError::Expired {
                client_id: r.client_id,
            }));
        };
        if session.last_active != now {
            self.by_activity.remove(&(session.last_active, r.client_id));
            self.by_activity.insert((now, r.client_id));
            session.last_active = now;
        }
        if r.first_unacked > session.first_unacked {
            session.first_unacked = r.first_unacked;
            session.responses = session.responses.split_off(&r.first_unacked);
        }
        if r.seq < session.first_unacked {
            return Check::Answer(Err(SessionError::AlreadyAcknowledged {
                client_id: r.client_id,
                seq: r.seq,
                first_unacked: session.first_unacked,
            }));
        }
        if let Some(response) = session.responses.get(&r.seq) {
            return Check::Answer(Ok(response.clone()));
        }
        if session.responses.len() >= cfg.responses_per_client_max {
            return Check::Answer(Err(SessionError::TooManyInFlight {
                client_id: r.client_id,
                limit: cfg.responses_per_client_max,
            }));
        }
        Check::Apply
    }

    fn record(&mut self, r: SessionRef, response: Bytes) {
        let session = self
            .clients
            .get_mut(&r.client_id)
            .expect("checked session exists");
        session.responses.insert(r.seq, response);
    }

    fn evict_least_recent(&mut self) {
        // Deterministic: the oldest activity, then the smallest client id.
        if let Some((_, id)) = self.by_activity.pop_first() {
            self.clients.remove(&id);
        }
    }

    /// The number of clients with a session.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client has a session.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The result of applying one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The entry was not a command (no-op, membership, bootstrap).
    NotACommand,
    /// The entry registered a client session; its id is the entry's index.
    Registered {
        /// The new session's client id.
        client_id: u64,
    },
    /// A command's encoded output, or why it was not applied. `duplicate` says the response came
    /// from the session table rather than from applying the command now.
    Command {
        /// The encoded `StateMachine::Output`, or the session's verdict.
        result: Result<Bytes, SessionError>,
        /// The response was recorded earlier; the command was not applied again.
        duplicate: bool,
    },
}

/// The versioned snapshot layout of an [`Applier`].
#[derive(Serialize, Deserialize)]
struct AppliedSnapshot {
    version: u16,
    applied: Index,
    sessions: Sessions,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// A state machine behind the session table: applies committed entries exactly once.
pub struct Applier<S: StateMachine> {
    state: S,
    sessions: Sessions,
    applied: Index,
    cfg: SessionConfig,
}

impl<S: StateMachine> Applier<S> {
    /// An empty state.
    pub fn new(cfg: SessionConfig) -> Self {
        Applier {
            state: S::new(),
            sessions: Sessions::default(),
            applied: 0,
            cfg,
        }
    }

    /// The index of the last applied entry.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// The user's state machine.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The session table.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Applies the next committed entry.
    pub fn apply(&mut self, entry: &Entry) -> Applied {
        assert_eq!(
            entry.index,
            self.applied + 1,
            "entries must be applied in order (applied {}, got {})",
            self.applied,
            entry.index
        );
        self.applied = entry.index;
        self.sessions.expire(entry.time, &self.cfg);
        let command = match &entry.payload {
            Payload::Command(command) => command,
            Payload::Register => {
                self.sessions.register(entry.index, entry.time, &self.cfg);
                return Applied::Registered {
                    client_id: entry.index,
                };
            }
            Payload::Noop | Payload::Membership(_) | Payload::Bootstrap(_) => {
                return Applied::NotACommand;
            }
        };
        if let Some(r) = command.session
            && let Check::Answer(result) = self.sessions.check(r, entry.time, &self.cfg)
        {
            return Applied::Command {
                result,
                duplicate: true,
            };
        }
        let result = match postcard::from_bytes::<S::Command>(&command.data) {
            Ok(cmd) => {
                let output = self.state.command(cmd);
                Ok(Bytes::from(
                    postcard::to_stdvec(&output).expect("outputs encode"),
                ))
            }
            Err(e) => Err(SessionError::Malformed(e.to_string())),
        };
        if let (Some(r), Ok(bytes)) = (command.session, &result) {
            self.sessions.record(r, bytes.clone());
        }
        Applied::Command {
            result,
            duplicate: false,
        }
    }

    /// Answers a query against the applied state.
    pub fn query(&self, q: &S::Query) -> S::Output {
        self.state.query(q)
    }

    /// The whole replicated state, sessions included, for a snapshot at [`Applier::applied`].
    pub fn snapshot(&self) -> Bytes {
        let snap = AppliedSnapshot {
            version: FORMAT_VERSION,
            applied: self.applied,
            sessions: self.sessions.clone(),
            state: self.state.snapshot(),
        };
        Bytes::from(postcard::to_stdvec(&snap).expect("snapshots encode"))
    }

    /// Rebuilds the state from [`Applier::snapshot`]'s bytes.
    pub fn restore(bytes: &[u8], cfg: SessionConfig) -> Result<Self, SnapshotError> {
        let snap: AppliedSnapshot = postcard::from_bytes(bytes)
            .map_err(|e| SnapshotError(format!("undecodable snapshot: {e}")))?;
        if snap.version != FORMAT_VERSION {
            return Err(SnapshotError(format!(
                "snapshot format version {} is not {FORMAT_VERSION}; upgrade this node",
                snap.version
            )));
        }
        let mut sessions = snap.sessions;
        sessions.rebuild_index();
        Ok(Applier {
            state: S::restore(&snap.state)?,
            sessions,
            applied: snap.applied,
            cfg,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Thesis §6.3: sessions make commands exactly-once; these check the table's rules and bounds.
    use super::*;
    use crate::kv::{KvCommand, KvOutput, KvQuery, KvStore};
    use crate::types::Command;

    fn entry(index: Index, time: LogTime, client: u64, seq: u64, first: u64, value: &str) -> Entry {
        let data = postcard::to_stdvec(&KvCommand::Append {
            key: "k".into(),
            value: Bytes::from(value.to_string()),
        })
        .unwrap();
        Entry {
            term: 1,
            index,
            time,
            payload: Payload::Command(Command {
                session: Some(SessionRef {
                    client_id: client,
                    seq,
                    first_unacked: first,
                }),
                data: Bytes::from(data),
            }),
        }
    }

    fn register(index: Index, time: LogTime) -> Entry {
        Entry {
            term: 1,
            index,
            time,
            payload: Payload::Register,
        }
    }

    fn value(a: &Applier<KvStore>) -> String {
        match a.query(&KvQuery::Get { key: "k".into() }) {
            KvOutput::Value(v) => String::from_utf8(v.unwrap_or_default().to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn is_expired(applied: &Applied, client: u64) -> bool {
        matches!(
            applied,
            Applied::Command {
                result: Err(SessionError::Expired { client_id }),
                duplicate: true,
            } if *client_id == client
        )
    }

    #[test]
    fn a_registration_opens_a_session_named_by_its_index() {
        let mut a: Applier<KvStore> = Applier::new(SessionConfig::default());
        assert_eq!(
            a.apply(&register(1, 0)),
            Applied::Registered { client_id: 1 }
        );
        assert_eq!(
            a.apply(&register(2, 0)),
            Applied::Registered { client_id: 2 }
        );
        assert_eq!(a.sessions().len(), 2);
        assert!(matches!(
            a.apply(&entry(3, 0, 2, 1, 1, "x")),
            Applied::Command {
                result: Ok(_),
                duplicate: false
            }
        ));
    }

    #[test]
    fn a_command_of_a_session_never_registered_is_refused_not_applied() {
        let mut a: Applier<KvStore> = Applier::new(SessionConfig::default());
        let r = a.apply(&entry(1, 0, 7, 1, 1, "x"));
        assert!(is_expired(&r, 7), "{r:?}");
        assert_eq!(value(&a), "");
        assert!(a.sessions().is_empty(), "a command opens no session");
    }

    #[test]
    fn a_retry_is_answered_from_the_session_and_not_applied_again() {
        let mut a: Applier<KvStore> = Applier::new(SessionConfig::default());
        a.apply(&register(1, 0));
        let first = a.apply(&entry(2, 0, 1, 1, 1, "x"));
        let retry = a.apply(&entry(3, 0, 1, 1, 1, "x"));
        let Applied::Command {
            result: Ok(r1),
            duplicate: false,
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!(
            retry,
            Applied::Command {
                result: Ok(r1),
                duplicate: true
            }
        );
        assert_eq!(value(&a), "x");
    }

    #[test]
    fn acknowledged_responses_are_forgotten_and_late_retries_refused() {
        let mut a: Applier<KvStore> = Applier::new(SessionConfig::default());
        a.apply(&register(1, 0));
        a.apply(&entry(2, 0, 1, 1, 1, "a"));
        a.apply(&entry(3, 0, 1, 2, 1, "b"));
        // The client has both answers: it moves first_unacked to 3.
        a.apply(&entry(4, 0, 1, 3, 3, "c"));
        let late = a.apply(&entry(5, 0, 1, 1, 1, "a"));
        assert!(matches!(
            late,
            Applied::Command {
                result: Err(SessionError::AlreadyAcknowledged {
                    seq: 1,
                    first_unacked: 3,
                    ..
                }),
                ..
            }
        ));
        assert_eq!(value(&a), "abc");
    }

    #[test]
    fn responses_per_client_are_bounded() {
        let cfg = SessionConfig {
            responses_per_client_max: 2,
            ..SessionConfig::default()
        };
        let mut a: Applier<KvStore> = Applier::new(cfg);
        a.apply(&register(1, 0));
        a.apply(&entry(2, 0, 1, 1, 1, "a"));
        a.apply(&entry(3, 0, 1, 2, 1, "b"));
        let third = a.apply(&entry(4, 0, 1, 3, 1, "c"));
        assert!(matches!(
            third,
            Applied::Command {
                result: Err(SessionError::TooManyInFlight { limit: 2, .. }),
                ..
            }
        ));
        assert_eq!(value(&a), "ab", "the refused command was not applied");
    }

    #[test]
    fn sessions_expire_by_log_time_not_by_a_clock() {
        let cfg = SessionConfig {
            session_timeout_ticks: 100,
            ..SessionConfig::default()
        };
        let mut a: Applier<KvStore> = Applier::new(cfg);
        a.apply(&register(1, 10));
        a.apply(&register(2, 10));
        a.apply(&entry(3, 10, 1, 1, 1, "a"));
        a.apply(&entry(4, 90, 2, 1, 1, "b"));
        // Client 2's entry at log time 180 expires client 1's session on every replica.
        a.apply(&entry(5, 180, 2, 2, 2, "c"));
        assert_eq!(a.sessions().len(), 1);
        // Client 1 continues at seq 2: its session is gone, so the group cannot tell whether
        // seq 1 was applied; it says so instead of guessing.
        let cont = a.apply(&entry(6, 181, 1, 2, 2, "d"));
        assert!(is_expired(&cont, 1), "{cont:?}");
        assert_eq!(value(&a), "abc");
    }

    #[test]
    fn a_first_command_retried_after_its_session_expired_is_not_applied_twice() {
        // The hole a session opened by its first command would leave: the command applies, the
        // session expires before the client hears back, and the retry (still first_unacked 1)
        // would open a fresh session and apply the command again.
        let cfg = SessionConfig {
            session_timeout_ticks: 100,
            ..SessionConfig::default()
        };
        let mut a: Applier<KvStore> = Applier::new(cfg);
        a.apply(&register(1, 0));
        a.apply(&register(2, 0));
        a.apply(&entry(3, 0, 1, 1, 1, "a"));
        a.apply(&entry(4, 99, 2, 1, 1, "b"));
        a.apply(&entry(5, 150, 2, 2, 1, "c"));
        let retry = a.apply(&entry(6, 151, 1, 1, 1, "a"));
        assert!(is_expired(&retry, 1), "{retry:?}");
        assert_eq!(value(&a), "abc", "the first command applied once");
    }

    #[test]
    fn the_session_count_is_bounded_by_evicting_the_least_recent() {
        let cfg = SessionConfig {
            sessions_max: 2,
            ..SessionConfig::default()
        };
        let mut a: Applier<KvStore> = Applier::new(cfg);
        a.apply(&register(1, 1));
        a.apply(&register(2, 2));
        a.apply(&entry(3, 3, 1, 1, 1, "a"));
        a.apply(&entry(4, 4, 2, 1, 1, "b"));
        // A third registration evicts the least recently active session: client 1's.
        assert_eq!(
            a.apply(&register(5, 5)),
            Applied::Registered { client_id: 5 }
        );
        assert_eq!(a.sessions().len(), 2);
        // Its retry of seq 1 (still unacknowledged) is refused, not applied again.
        let evicted = a.apply(&entry(6, 6, 1, 1, 1, "a"));
        assert!(is_expired(&evicted, 1), "{evicted:?}");
        assert_eq!(value(&a), "ab");
    }

    #[test]
    fn snapshots_carry_sessions_so_retries_stay_exactly_once_after_restore() {
        let mut a: Applier<KvStore> = Applier::new(SessionConfig::default());
        a.apply(&register(1, 0));
        a.apply(&entry(2, 0, 1, 1, 1, "a"));
        let snap = a.snapshot();
        let mut b: Applier<KvStore> = Applier::restore(&snap, SessionConfig::default()).unwrap();
        assert_eq!(b.applied(), 2);
        let retry = b.apply(&entry(3, 0, 1, 1, 1, "a"));
        assert!(matches!(
            retry,
            Applied::Command {
                duplicate: true,
                ..
            }
        ));
        assert_eq!(value(&b), "a");
    }

    #[test]
    fn a_restored_table_expires_and_evicts_like_the_original() {
        let cfg = SessionConfig {
            session_timeout_ticks: 10,
            sessions_max: 2,
            ..SessionConfig::default()
        };
        let mut a: Applier<KvStore> = Applier::new(cfg);
        a.apply(&register(1, 1));
        a.apply(&register(2, 5));
        let mut b: Applier<KvStore> = Applier::restore(&a.snapshot(), cfg).unwrap();
        // Log time 12: session 1 (last active at 1) expires, session 2 (at 5) stays.
        for x in [&mut a, &mut b] {
            x.apply(&entry(3, 12, 2, 1, 1, "a"));
            assert_eq!(x.sessions().len(), 1);
            assert!(is_expired(&x.apply(&entry(4, 12, 1, 1, 1, "b")), 1));
        }
        let mut c: Applier<KvStore> = Applier::restore(&b.snapshot(), cfg).unwrap();
        // A full table evicts the least recently active session: 2 (at 12) before 5 (at 13).
        for x in [&mut b, &mut c] {
            x.apply(&register(5, 13));
            x.apply(&register(6, 13));
            assert_eq!(x.sessions().len(), 2);
            assert!(is_expired(&x.apply(&entry(7, 13, 2, 2, 2, "c")), 2));
        }
        assert_eq!(b.sessions(), c.sessions());
    }

    #[test]
    fn a_snapshot_of_another_format_version_is_a_clear_error() {
        let bytes = postcard::to_stdvec(&AppliedSnapshot {
            version: FORMAT_VERSION + 1,
            applied: 0,
            sessions: Sessions::default(),
            state: Vec::new(),
        })
        .unwrap();
        let err = Applier::<KvStore>::restore(&bytes, SessionConfig::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("format version"), "{err}");
        assert!(Applier::<KvStore>::restore(b"\xff\xff", SessionConfig::default()).is_err());
    }

    #[test]
    fn a_command_that_does_not_decode_is_answered_with_an_error_on_every_replica() {
        let mut a: Applier<KvStore> = Applier::new(SessionConfig::default());
        let bad = Entry {
            term: 1,
            index: 1,
            time: 0,
            payload: Payload::Command(Command {
                session: None,
                data: Bytes::from_static(b"\xff\xff\xff"),
            }),
        };
        assert!(matches!(
            a.apply(&bad),
            Applied::Command {
                result: Err(SessionError::Malformed(_)),
                ..
            }
        ));
        assert_eq!(a.applied(), 1);
    }
}
