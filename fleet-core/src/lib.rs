//! fleet-core: a sans-IO Raft replica for one consensus group.
//!
//! A [`Replica`] is one member of one group. It never does I/O, never reads a clock and never
//! draws unseeded randomness: time is [`Replica::tick`], randomness comes from a seeded generator
//! given at creation, and storage and network belong to the caller (the *driver*). The fleet
//! runtime drives tens of thousands of replicas from a few worker tasks; the simulator
//! ([`sim`], feature `sim`) drives whole clusters on one thread.
//!
//! # Creating a replica
//!
//! Every initial member of a new group starts from the same configuration, committed as entry 1
//! ([`Restored::bootstrap`]). A member added later starts empty ([`Restored::empty`]) and learns
//! the log from the leader. After a restart, a replica is rebuilt from what was persisted.
//!
//! ```
//! use fleet_core::{Config, Configuration, Replica, ReplicaId, Restored};
//! use rand_chacha::ChaCha8Rng;
//! use rand_core::SeedableRng;
//!
//! let members = [ReplicaId::new(1, 0), ReplicaId::new(2, 0), ReplicaId::new(3, 0)];
//! let mut rng = ChaCha8Rng::seed_from_u64(7);
//! let replica = Replica::new(
//!     Config::new(members[0]),
//!     &mut rng,
//!     Restored::bootstrap(Configuration::new(members)),
//! )?;
//! assert_eq!(replica.committed(), 1);
//! # Ok::<(), fleet_core::Error>(())
//! ```
//!
//! # The driver's duties
//!
//! 1. Call [`Replica::tick`] every tick (10 ms by default). A quiesced replica
//!    ([`Replica::is_quiesced`]) needs no ticks until something wakes it.
//! 2. Hand it what arrives: [`Replica::step`] for messages, and the requests of clients:
//!    [`Replica::propose`], [`Replica::read_index`], [`Replica::transfer_leader`],
//!    [`Replica::change_membership`].
//! 3. When [`Replica::has_ready`], take the [`Ready`] and, in this order:
//!    send `messages` at once; persist `snapshot`, `entries` and `hard_state`; once they are
//!    durable, send `messages_after_persist` and call [`Replica::persisted`] with `number`; restore
//!    the state machine from `snapshot` if any and call [`Replica::snapshot_installed`]; apply
//!    `committed_entries` and call [`Replica::applied`]; answer `read_states` once the applied index
//!    reaches theirs. **No vote and no acknowledgement leaves before the state it promises is
//!    durable** — that is what `messages_after_persist` is for.
//! 4. From time to time, snapshot the state machine at the applied index and call
//!    [`Replica::compact`], so the in-memory log stays short.
//!
//! ```
//! use fleet_core::{Command, Config, Configuration, Replica, ReplicaId, Restored};
//! use rand_chacha::ChaCha8Rng;
//! use rand_core::SeedableRng;
//!
//! // A single-member group elects itself and commits a command.
//! let me = ReplicaId::new(1, 0);
//! let mut rng = ChaCha8Rng::seed_from_u64(1);
//! let mut r = Replica::new(Config::new(me), &mut rng, Restored::bootstrap(Configuration::new([me])))?;
//! r.campaign();
//! let mut applied = Vec::new();
//! for _ in 0..10 {
//!     if r.role() == fleet_core::Role::Leader && applied.is_empty() {
//!         r.propose(Command { session: None, data: "hello".into() })?;
//!     }
//!     while r.has_ready() {
//!         let rd = r.take_ready();
//!         // ... persist rd.entries and rd.hard_state here, then:
//!         if rd.must_persist() {
//!             r.persisted(rd.number);
//!         }
//!         for e in &rd.committed_entries {
//!             if let fleet_core::Payload::Command(c) = &e.payload {
//!                 applied.push(c.data.clone());
//!             }
//!         }
//!         if let Some(last) = rd.committed_entries.last() {
//!             r.applied(last.index);
//!         }
//!     }
//! }
//! assert_eq!(applied, vec![bytes::Bytes::from("hello")]);
//! # Ok::<(), fleet_core::Error>(())
//! ```
//!
//! # What it implements
//!
//! Elections with randomized timeouts, pre-vote and check-quorum (thesis §3.4, §9.6, §6.2);
//! pipelined replication with a bounded window and fast back-off (§3.5, §10.2); the current-term
//! commit rule (§3.6.2); persist before speak (§3.8), with the leader's own write in parallel
//! (§10.2.1); snapshots sent in chunks (§5); learners and single-server membership changes, one at
//! a time and only after the leader's first commit (§4.1–4.2); leadership transfer (§3.10);
//! ReadIndex and lease reads (§6.4); quiescence of idle groups; exactly-once commands through
//! client sessions kept in the replicated state ([`session`], §6.3).
//!
//! Errors are for callers ([`Error`]); a broken invariant is an `assert!` with context.
#![deny(missing_docs)]

mod config;
mod error;
pub mod kv;
mod log;
pub mod message;
mod progress;
pub mod ready;
mod replica;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
mod state_machine;
pub mod types;

#[cfg(feature = "broken-variants")]
#[doc(hidden)]
pub use config::Broken;
pub use config::Config;
pub use error::Error;
pub use message::{Body, Message};
pub use progress::{Progress, ProgressState};
pub use ready::{ReadState, Ready, RefusedForward, Role, SoftState};
pub use replica::{Replica, Restored};
pub use session::{Applied, Applier, SessionConfig, SessionError};
pub use state_machine::{SnapshotError, StateMachine};
pub use types::*;
