//! [`Replica`]: the Raft state machine of one member of one group.
//!
//! Inputs are `tick`, `step`, `propose`, `read_index`, `transfer_leader`, `change_membership`,
//! `persisted`, `applied`, `compact`, `snapshot_installed`, `suspect_leader`; the output is
//! [`Ready`]. Dispatch by role follows etcd-raft (`step_leader`, `step_candidate`,
//! `step_follower`).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand_core::Rng;
use tracing::{debug, info, trace};

use crate::Error;
use crate::config::Config;
use crate::log::RaftLog;
use crate::message::{Body, Message};
use crate::progress::{Progress, ProgressMap, ProgressState};
use crate::ready::{ReadState, Ready, RefusedForward, Role, SoftState};
use crate::types::{
    Command, Configuration, Entry, HardState, Index, LogTime, MembershipChange, Payload, ReplicaId,
    Snapshot, SnapshotMeta, Term,
};

/// What a forwarded command counts for, beyond its data, against `append_bytes_max`: its
/// session (three varints) and its framing, about what a log entry's overhead is.
const FORWARDED_COMMAND_OVERHEAD_BYTES: usize = 48;

/// Read rounds whose start tick is remembered for the lease; older confirmations extend nothing.
const ROUNDS_REMEMBERED: usize = 4;

/// The durable state a replica is rebuilt from after a restart (or created with).
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The metadata of the last persisted snapshot (index 0 if none).
    pub snapshot: SnapshotMeta,
    /// The snapshot's data, needed to send it to followers that fall behind. `None` if there is
    /// no snapshot or the caller will provide it later with [`Replica::compact`].
    pub snapshot_data: Option<Bytes>,
    /// The persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl Restored {
    /// The starting state of an initial member of a new group: the configuration as entry 1,
    /// committed in term 1 by every initial member alike.
    pub fn bootstrap(initial: Configuration) -> Self {
        Restored {
            hard_state: HardState {
                term: 1,
                vote: None,
                commit: 1,
            },
            snapshot: SnapshotMeta::default(),
            snapshot_data: None,
            entries: vec![Entry {
                term: 1,
                index: 1,
                time: 0,
                payload: Payload::Bootstrap(initial),
            }],
        }
    }

    /// The starting state of a member added to an existing group: an empty log that the leader
    /// fills.
    pub fn empty() -> Self {
        Restored::default()
    }
}

/// A snapshot being received in chunks.
#[derive(Debug)]
struct IncomingSnapshot {
    meta: SnapshotMeta,
    total_bytes: u64,
    data: Vec<u8>,
}

/// A read waiting for a quorum to confirm leadership (thesis §6.4).
#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    /// The heartbeat round that confirms it; 0 until a round is started for it.
    round: u64,
    /// The commit index when its round started.
    index: Index,
}

/// What one Ready that must be persisted covered, so `persisted(number)` knows what became durable.
#[derive(Debug)]
struct Unpersisted {
    number: u64,
    last: Option<(Index, Term)>,
    hard_state: HardState,
}

/// A small deterministic generator (SplitMix64) for election timeouts, seeded once from the
/// injected RNG, so a replica costs 8 bytes of randomness state instead of a boxed generator.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        assert!(n > 0);
        (self.next() % u64::from(n)) as u32
    }
}

/// One member of one consensus group, sans I/O.
#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    id: ReplicaId,
    rng: SplitMix64,

    term: Term,
    vote: Option<ReplicaId>,
    leader: Option<ReplicaId>,
    role: Role,
    log: RaftLog,
    /// The configuration in force: the latest in the log (thesis §4.1).
    conf: Configuration,
    /// The index of the entry that set `conf`.
    conf_index: Index,

    // Leader state.
    progress: ProgressMap,
    /// The index of this leader's no-op; reads and membership changes wait until it commits.
    term_start_index: Index,
    /// The index of the latest membership change this leader appended.
    pending_conf_index: Index,
    uncommitted_bytes: usize,
    lead_transferee: Option<ReplicaId>,
    transfer_elapsed: u32,
    log_time: LogTime,
    /// Proposals appended since the last broadcast; sent in one append per follower.
    needs_broadcast: bool,
    /// The commit index advanced since the last broadcast.
    commit_advanced: bool,

    // Reads.
    read_round: u64,
    read_round_in_flight: bool,
    /// Ticks at which recent rounds were started, for the lease.
    /// The tick at which each of the last rounds started, indexed by round modulo the length.
    round_started_tick: [(u64, u64); ROUNDS_REMEMBERED],
    lease_until_tick: u64,
    pending_reads: VecDeque<PendingRead>,
    read_states: Vec<ReadState>,
    /// Forwarded commands the leader refused, for the next Ready.
    refused_forwards: Vec<RefusedForward>,

    // Elections.
    votes: BTreeMap<ReplicaId, bool>,
    self_vote_pending: bool,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    ticks: u64,

    // Quiescence.
    quiesced: bool,
    idle_ticks: u32,

    // Snapshots.
    snapshot_data: Option<Bytes>,
    incoming_snapshot: Option<IncomingSnapshot>,
    pending_snapshot: Option<Snapshot>,

    // Ready.
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    ready_number: u64,
    unpersisted: VecDeque<Unpersisted>,
    durable_hard_state: HardState,
}

impl Replica {
    /// Creates a replica from its durable state. `rng` seeds the election timeouts; give each
    /// replica its own seeded generator so a simulation replays exactly.
    pub fn new(cfg: Config, rng: &mut impl Rng, restored: Restored) -> Result<Self, Error> {
        cfg.validate()?;
        let Restored {
            hard_state,
            snapshot,
            snapshot_data,
            entries,
        } = restored;
        let last = snapshot.index + entries.len() as u64;
        let commit = hard_state.commit.clamp(snapshot.index, last);
        let log = RaftLog::new(snapshot, entries, commit);
        let (conf, conf_index) = log.config_at(log.last_index());
        let soft = SoftState {
            leader: None,
            role: Role::Follower,
            term: hard_state.term,
        };
        let mut replica = Replica {
            id: cfg.id,
            rng: SplitMix64(rng.next_u64()),
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log,
            conf,
            conf_index,
            progress: ProgressMap::default(),
            term_start_index: 0,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            lead_transferee: None,
            transfer_elapsed: 0,
            log_time: 0,
            needs_broadcast: false,
            commit_advanced: false,
            read_round: 0,
            read_round_in_flight: false,
            round_started_tick: [(0, 0); ROUNDS_REMEMBERED],
            lease_until_tick: 0,
            pending_reads: VecDeque::new(),
            read_states: Vec::new(),
            refused_forwards: Vec::new(),
            votes: BTreeMap::new(),
            self_vote_pending: false,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            ticks: 0,
            quiesced: false,
            idle_ticks: 0,
            snapshot_data,
            incoming_snapshot: None,
            pending_snapshot: None,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            prev_hard_state: HardState {
                term: hard_state.term,
                vote: hard_state.vote,
                commit,
            },
            prev_soft_state: soft,
            ready_number: 0,
            unpersisted: VecDeque::new(),
            durable_hard_state: hard_state,
            cfg,
        };
        replica.reset_election_timer();
        Ok(replica)
    }

    // ---------------------------------------------------------------------------------------
    // Getters.

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }
    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// The vote cast in the current term.
    pub fn vote(&self) -> Option<ReplicaId> {
        self.vote
    }
    /// This replica's role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.leader
    }
    /// The commit index.
    pub fn committed(&self) -> Index {
        self.log.committed
    }
    /// The index the driver reported applied.
    pub fn applied_index(&self) -> Index {
        self.log.applied
    }
    /// The last index of the log.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// The term of the last entry.
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    /// The first index still in the log (after the snapshot).
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    /// The term of the entry at `index`, if the log holds it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// The metadata of the last snapshot.
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.log.snapshot
    }
    /// The configuration in force.
    pub fn config(&self) -> &Configuration {
        &self.conf
    }
    /// The settings.
    pub fn settings(&self) -> &Config {
        &self.cfg
    }
    /// The hard state as of the last Ready (what must be durable before anyone relies on it).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }
    /// Whether the group is quiet on this replica: it needs no ticks until woken.
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }
    /// The leader's view of a member's log, if this replica leads.
    pub fn progress(&self, id: ReplicaId) -> Option<&Progress> {
        self.progress.get(&id)
    }
    /// The member this leader is handing leadership to.
    pub fn lead_transferee(&self) -> Option<ReplicaId> {
        self.lead_transferee
    }
    /// Whether this replica can become leader (it is a voter).
    pub fn is_promotable(&self) -> bool {
        self.conf.voters.contains(&self.id)
    }

    // ---------------------------------------------------------------------------------------
    // Inputs.

    /// Advances time by one tick. Quiesced replicas ignore ticks.
    pub fn tick(&mut self) {
        if self.quiesced {
            return;
        }
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.is_promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        self.log_time += 1;
        if self.lead_transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.transfer_timeout_ticks {
                info!(term = self.term, to = %self.lead_transferee.unwrap(), "leadership transfer timed out; abandoning it");
                self.lead_transferee = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                if !self.quorum_recently_active() {
                    info!(
                        term = self.term,
                        "leader heard from no quorum for an election timeout; stepping down (check-quorum)"
                    );
                    self.become_follower(self.term, None);
                    return;
                }
                let id = self.id;
                for (peer, pr) in self.progress.iter_mut() {
                    pr.recent_active = *peer == id;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(false);
        }
        self.resend_stalled_snapshots();
        self.idle_ticks = self.idle_ticks.saturating_add(1);
        if self.cfg.quiesce_after_ticks > 0
            && self.idle_ticks >= self.cfg.quiesce_after_ticks
            && self.can_quiesce()
        {
            debug!(term = self.term, "group idle and caught up; quiescing");
            self.broadcast_heartbeat(true);
            self.quiesced = true;
            // A quiesced replica is not ticked, so its ticks no longer measure time: a lease
            // counted in them would outlive any follower's patience. Neither the current lease
            // nor a late answer to a round started before now (this quiescing heartbeat's
            // included) may give one; the first read after waking confirms leadership with a
            // new round, which starts a new lease.
            self.lease_until_tick = 0;
            self.round_started_tick = [(0, 0); ROUNDS_REMEMBERED];
            self.release_buffers();
        }
    }

    /// An idle group gives back the memory its queues grew to while busy.
    fn release_buffers(&mut self) {
        self.pending_reads.shrink_to_fit();
        self.unpersisted.shrink_to_fit();
        self.log.entries.shrink_to_fit();
    }

    /// Starts an election now, if this replica may (etcd's `Campaign`).
    pub fn campaign(&mut self) {
        self.wake();
        self.hup(false);
    }

    /// Tells the replica that the node of its leader is suspected dead (from the runtime's
    /// node liveness). A quiesced follower wakes and, like any follower, forgets its leader so
    /// it can grant pre-votes, then campaigns after a short random delay.
    pub fn suspect_leader(&mut self) {
        let half = (self.cfg.election_timeout_ticks / 2).max(1);
        let ticks = 1 + self.rng.below(half);
        self.suspect_leader_in(ticks);
    }

    /// Like [`Replica::suspect_leader`], but campaigns after exactly `ticks` ticks (at least one)
    /// unless a leader is heard of first. The runtime staggers a group's members by placement
    /// rank, so that after a node dies one member of each of its groups campaigns first and the
    /// votes do not split.
    pub fn suspect_leader_in(&mut self, ticks: u32) {
        if self.role == Role::Leader {
            return;
        }
        self.quiesced = false;
        self.leader = None;
        self.election_elapsed = 0;
        self.randomized_election_timeout = ticks.max(1);
    }

    /// Wakes a quiesced replica. Proposals and reads wake the group by themselves.
    pub fn wake(&mut self) {
        self.idle_ticks = 0;
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        if self.role == Role::Leader {
            // Start check-quorum afresh; the lease is not valid until a new round confirms it.
            self.election_elapsed = 0;
            self.lease_until_tick = 0;
            for pr in self.progress.values_mut() {
                pr.recent_active = true;
            }
            self.broadcast_heartbeat(false);
        }
    }

    /// Proposes a command. Returns the index the entry will have; the proposal succeeded if the
    /// entry applied at that index has the current term.
    pub fn propose(&mut self, command: Command) -> Result<Index, Error> {
        self.check_can_propose()?;
        let size_bytes = command.data.len();
        if size_bytes > self.cfg.entry_bytes_max {
            return Err(Error::EntryTooLarge {
                size_bytes,
                limit_bytes: self.cfg.entry_bytes_max,
            });
        }
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size_bytes > self.cfg.uncommitted_bytes_max
        {
            return Err(Error::Busy {
                uncommitted_bytes: self.uncommitted_bytes,
                limit_bytes: self.cfg.uncommitted_bytes_max,
            });
        }
        self.wake();
        Ok(self.append_entry(Payload::Command(command)))
    }

    /// Proposes a client registration (thesis §6.3 RegisterClient): when the entry applies, its
    /// index is the new session's client id ([`crate::Applied::Registered`]). Only the leader
    /// takes registrations; a registration is never forwarded, since a lost one costs a retry and
    /// a duplicate only an unused session that expires.
    pub fn register_client(&mut self) -> Result<Index, Error> {
        self.check_can_propose()?;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes >= self.cfg.uncommitted_bytes_max {
            return Err(Error::Busy {
                uncommitted_bytes: self.uncommitted_bytes,
                limit_bytes: self.cfg.uncommitted_bytes_max,
            });
        }
        self.wake();
        Ok(self.append_entry(Payload::Register))
    }

    /// Hands a command to the leader this follower knows (etcd-raft's `MsgProp`), in the next
    /// Ready's messages; commands forwarded to the same leader before the Ready is taken share
    /// one message. Returns the leader. Nothing tells the caller whether the leader appended it:
    /// the caller watches the applied log for the command's session and, if it does not appear in
    /// time, proposes again with the same session (applied once, thesis §6.3).
    ///
    /// Fails with `NotLeader` when this replica leads (use [`Replica::propose`]) or knows no
    /// leader, and with `EntryTooLarge` for a command the leader would refuse.
    pub fn forward_proposal(&mut self, command: Command) -> Result<ReplicaId, Error> {
        let leader = match (self.role, self.leader) {
            (Role::Follower, Some(l)) if l != self.id => l,
            _ => return Err(Error::NotLeader { hint: self.leader }),
        };
        let size_bytes = command.data.len();
        if size_bytes > self.cfg.entry_bytes_max {
            return Err(Error::EntryTooLarge {
                size_bytes,
                limit_bytes: self.cfg.entry_bytes_max,
            });
        }
        // One message holds at most `append_bytes_max` of commands (or one larger command), as
        // an Append does, so that no message outgrows what the transport carries. Each command
        // counts with the overhead of its session and framing, as a log entry does, so that many
        // tiny commands (and the refusal that may name them all) stay within the bound too.
        let counted = |c: &Command| c.data.len() + FORWARDED_COMMAND_OVERHEAD_BYTES;
        if let Some(Message {
            to,
            term,
            body: Body::Propose { commands },
            ..
        }) = self.msgs.last_mut()
            && *to == leader
            && *term == self.term
            && commands.iter().map(counted).sum::<usize>() + counted(&command)
                <= self.cfg.append_bytes_max
        {
            commands.push(command);
        } else {
            self.send(
                leader,
                Body::Propose {
                    commands: vec![command],
                },
            );
        }
        Ok(leader)
    }

    /// A follower's forwarded commands: appended like the leader's own proposals, each checked
    /// against the same limits; what cannot be appended is refused (`ProposeRefused`, naming the
    /// commands that carry a session), so the proposer can tell its callers at once.
    fn handle_forwarded(&mut self, from: ReplicaId, commands: Vec<Command>) {
        let (mut not_leading, mut busy) = (Vec::new(), Vec::new());
        let mut dropped = 0;
        for command in commands {
            let size_bytes = command.data.len();
            let fits = size_bytes <= self.cfg.entry_bytes_max
                && (self.uncommitted_bytes == 0
                    || self.uncommitted_bytes + size_bytes <= self.cfg.uncommitted_bytes_max);
            let refused = match (self.check_can_propose(), fits) {
                (Ok(()), true) => {
                    self.wake();
                    self.append_entry(Payload::Command(command));
                    continue;
                }
                (Err(_), _) => &mut not_leading,
                (Ok(()), false) => &mut busy,
            };
            dropped += 1;
            if let Some(s) = command.session {
                refused.push((s.client_id, s.seq));
            }
        }
        if dropped > 0 {
            debug!(term = self.term, from = %from, dropped, "refusing forwarded proposals");
        }
        for (sessions, busy) in [(not_leading, false), (busy, true)] {
            if !sessions.is_empty() {
                self.send(from, Body::ProposeRefused { sessions, busy });
            }
        }
    }

    fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { hint: self.leader });
        }
        if let Some(to) = self.lead_transferee {
            return Err(Error::TransferInProgress { to });
        }
        Ok(())
    }

    fn append_entry(&mut self, payload: Payload) -> Index {
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            time: self.log_time,
            payload,
        };
        let index = entry.index;
        self.uncommitted_bytes += entry.size_bytes();
        self.log.append(entry);
        self.needs_broadcast = true;
        // A single voter commits as soon as its own write is durable (see `persisted`).
        index
    }

    /// Asks for a linearizable read (thesis §6.4). When a quorum has confirmed this replica still
    /// leads, a [`ReadState`] with `ctx` appears in a Ready.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { hint: self.leader });
        }
        if self.pending_reads.len() >= self.cfg.pending_reads_max {
            return Err(Error::TooManyReads {
                limit: self.cfg.pending_reads_max,
            });
        }
        self.wake();
        let ready = self.log.committed >= self.term_start_index;
        if ready && self.conf.voters.len() == 1 && self.conf.voters.contains(&self.id) {
            self.read_states.push(ReadState {
                ctx,
                index: self.log.committed,
            });
            return Ok(());
        }
        if ready && self.cfg.lease_reads && self.ticks < self.lease_until_tick {
            self.read_states.push(ReadState {
                ctx,
                index: self.log.committed,
            });
            return Ok(());
        }
        self.pending_reads.push_back(PendingRead {
            ctx,
            round: 0,
            index: 0,
        });
        if ready && !self.read_round_in_flight {
            self.broadcast_heartbeat(false);
        }
        Ok(())
    }

    /// Hands leadership to `to` (thesis §3.10): catch it up, then send `TimeoutNow`. Proposals
    /// are refused until it completes or `transfer_timeout_ticks` pass.
    pub fn transfer_leader(&mut self, to: ReplicaId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { hint: self.leader });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.voters.contains(&to) {
            return Err(Error::BadTransferTarget(to));
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.wake();
        info!(term = self.term, %to, "transferring leadership");
        self.lead_transferee = Some(to);
        self.transfer_elapsed = 0;
        let last = self.log.last_index();
        if self.progress[&to].match_index == last {
            self.send(to, Body::TimeoutNow);
        } else {
            // An empty append if nothing new is due: the target answers at once, and a rejection
            // starts the repair without waiting for a heartbeat.
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Proposes a single-server membership change (thesis §4.1). Returns its index.
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<Index, Error> {
        self.check_can_propose()?;
        if self.log.committed < self.term_start_index {
            return Err(Error::LeaderNotReady);
        }
        #[cfg(feature = "broken-variants")]
        let concurrent = self.cfg.broken.concurrent_membership;
        #[cfg(not(feature = "broken-variants"))]
        let concurrent = false;
        if self.pending_conf_index > self.log.committed && !concurrent {
            return Err(Error::ChangeInProgress {
                index: self.pending_conf_index,
            });
        }
        let mut next = self.conf.clone();
        next.apply(change)?;
        if let MembershipChange::Promote(id) = change {
            let matched = self.progress.get(&id).map_or(0, |p| p.match_index);
            let last = self.log.last_index();
            if matched + self.cfg.learner_catchup_lag_max < last {
                return Err(Error::LearnerBehind { id, matched, last });
            }
        }
        self.wake();
        let index = self.append_entry(Payload::Membership(change));
        self.pending_conf_index = index;
        info!(
            term = self.term,
            ?change,
            index,
            "membership change appended"
        );
        self.set_conf(next, index);
        Ok(index)
    }

    /// Delivers a message from another replica of the group.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id {
            debug!(to = %m.to, me = %self.id, "dropping message addressed to another replica");
            return;
        }
        trace!(from = %m.from, term = m.term, kind = m.body.kind(), "step");
        if m.term > self.term {
            if !self.step_higher_term(&m) {
                return;
            }
        } else if m.term < self.term {
            self.step_lower_term(&m);
            return;
        }
        if let Body::Vote { .. } = m.body {
            self.handle_vote(m);
            return;
        }
        match m.body {
            Body::ProposeRefused { sessions, busy } => {
                self.refused_forwards
                    .extend(sessions.into_iter().map(|(client_id, seq)| RefusedForward {
                        client_id,
                        seq,
                        busy,
                    }));
                return;
            }
            Body::Propose { commands } if self.role != Role::Leader => {
                // Not (or no longer) the leader of this term: say so rather than let the
                // proposer's callers wait out their timeout.
                let sessions: Vec<(u64, u64)> = commands
                    .iter()
                    .filter_map(|c| c.session.map(|s| (s.client_id, s.seq)))
                    .collect();
                if !sessions.is_empty() {
                    self.send(
                        m.from,
                        Body::ProposeRefused {
                            sessions,
                            busy: false,
                        },
                    );
                }
                return;
            }
            _ => {}
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    /// Handles a message of a higher term. Returns whether to go on processing it.
    fn step_higher_term(&mut self, m: &Message) -> bool {
        match m.body {
            Body::Vote {
                pre_vote, transfer, ..
            } => {
                // A vote request from the leader this replica follows says that leader gave up
                // (it stepped down and campaigns again): its lease protects nothing any more. A
                // quiesced follower, whose lease never runs out by itself, would otherwise ignore
                // every candidate for good, its own former leader included.
                let from_our_leader = self.leader == Some(m.from);
                if !transfer && !from_our_leader && self.in_lease() {
                    // §4.2.3: a replica that hears from a live leader ignores vote requests, so a
                    // removed or partitioned member cannot disrupt the group.
                    debug!(term = self.term, from = %m.from, "ignoring vote request while in lease of {:?}", self.leader);
                    if self.quiesced && self.role == Role::Leader {
                        self.wake();
                    }
                    return false;
                }
                if !pre_vote {
                    self.become_follower(m.term, None);
                }
                true
            }
            Body::VoteResponse {
                pre_vote: true,
                granted: true,
            } => true,
            Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => {
                self.become_follower(m.term, Some(m.from));
                true
            }
            _ => {
                self.become_follower(m.term, None);
                true
            }
        }
    }

    fn step_lower_term(&mut self, m: &Message) {
        match m.body {
            Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. }
                if self.cfg.check_quorum || self.cfg.pre_vote =>
            {
                // A stale leader (maybe cut off and unable to learn the new term through votes,
                // which pre-vote and the lease suppress) learns of our term and steps down.
                self.send(
                    m.from,
                    Body::AppendResponse {
                        index: self.log.last_index(),
                        reject: true,
                        hint_index: 0,
                        hint_term: 0,
                    },
                );
            }
            Body::Vote { pre_vote: true, .. } => {
                self.send(
                    m.from,
                    Body::VoteResponse {
                        pre_vote: true,
                        granted: false,
                    },
                );
            }
            _ => trace!(from = %m.from, term = m.term, "ignoring message from an older term"),
        }
    }

    /// Whether this replica believes a leader is alive, so vote requests should be ignored.
    fn in_lease(&self) -> bool {
        #[cfg(feature = "broken-variants")]
        if self.cfg.broken.skip_log_check {
            return false;
        }
        if !self.cfg.check_quorum {
            return false;
        }
        match self.leader {
            None => false,
            Some(_) if self.quiesced => true,
            Some(_) => self.election_elapsed < self.cfg.election_timeout_ticks,
        }
    }

    fn handle_vote(&mut self, m: Message) {
        let Body::Vote {
            pre_vote,
            last_index,
            last_term,
            ..
        } = m.body
        else {
            unreachable!()
        };
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && m.term > self.term);
        #[cfg(feature = "broken-variants")]
        let up_to_date =
            self.cfg.broken.skip_log_check || self.log.is_up_to_date(last_index, last_term);
        #[cfg(not(feature = "broken-variants"))]
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        let granted = can_vote && up_to_date;
        debug!(term = self.term, from = %m.from, pre_vote, granted, "vote request");
        // Answer with the message's term when granting, so the candidate counts it (a pre-vote's
        // term is one ahead of ours); with our own when refusing.
        let term = if granted { m.term } else { self.term };
        if granted && !pre_vote {
            self.vote = Some(m.from);
            self.election_elapsed = 0;
        }
        let msg = Message {
            from: self.id,
            to: m.from,
            term,
            body: Body::VoteResponse { pre_vote, granted },
        };
        self.emit(msg);
    }

    fn step_leader(&mut self, m: Message) {
        if !self.progress.contains_key(&m.from) {
            debug!(from = %m.from, "leader ignoring message from a non-member");
            return;
        }
        match m.body {
            Body::AppendResponse {
                index,
                reject,
                hint_index,
                hint_term,
            } => self.handle_append_response(m.from, index, reject, hint_index, hint_term),
            Body::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(m.from, read_round)
            }
            Body::SnapshotResponse {
                index,
                next_offset,
                reject,
            } => self.handle_snapshot_response(m.from, index, next_offset, reject),
            Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => {
                // Two leaders in one term would break election safety; the simulator's checker
                // reports it with context. Ignore rather than act on it.
                debug!(term = self.term, from = %m.from, "leader got a leader message of its own term");
            }
            Body::Propose { commands } => self.handle_forwarded(m.from, commands),
            // Handled in `step` whatever the role.
            Body::ProposeRefused { .. } => {}
            Body::VoteResponse { .. } | Body::TimeoutNow | Body::Vote { .. } => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            Body::VoteResponse { pre_vote, granted } => {
                if pre_vote != (self.role == Role::PreCandidate) {
                    return;
                }
                self.votes.insert(m.from, granted);
                self.tally_votes();
            }
            Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => {
                self.become_follower(self.term, Some(m.from));
                self.step_follower(m);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.heard_from_leader(m.from);
                self.handle_append(m.from, prev_index, prev_term, entries, commit);
            }
            Body::Heartbeat {
                commit,
                read_round,
                quiesce,
            } => {
                self.heard_from_leader(m.from);
                self.handle_heartbeat(m.from, commit, read_round, quiesce);
            }
            Body::Snapshot {
                meta,
                offset,
                total_bytes,
                data,
            } => {
                self.heard_from_leader(m.from);
                self.handle_snapshot(m.from, meta, offset, total_bytes, data);
            }
            Body::TimeoutNow if self.is_promotable() => {
                info!(term = self.term, from = %m.from, "leadership transferred to us; campaigning now");
                self.quiesced = false;
                self.become_candidate(true);
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, from: ReplicaId) {
        self.election_elapsed = 0;
        self.leader = Some(from);
    }

    // ---------------------------------------------------------------------------------------
    // Elections.

    fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.is_promotable() {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        debug!(term = self.term, "starting pre-vote");
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for to in self.other_voters() {
            let msg = Message {
                from: self.id,
                to,
                term: self.term + 1,
                body: Body::Vote {
                    pre_vote: true,
                    transfer: false,
                    last_index,
                    last_term,
                },
            };
            self.emit(msg);
        }
        self.tally_votes();
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.reset(self.term + 1);
        self.role = Role::Candidate;
        self.vote = Some(self.id);
        // Our own vote counts only once it is durable (see `persisted`): a candidate whose term
        // and vote are lost in a crash could otherwise lead the same term twice.
        self.self_vote_pending = true;
        info!(term = self.term, transfer, "campaigning");
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for to in self.other_voters() {
            self.send(
                to,
                Body::Vote {
                    pre_vote: false,
                    transfer,
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn tally_votes(&mut self) {
        let quorum = self.conf.quorum();
        let granted = self
            .votes
            .iter()
            .filter(|(id, g)| **g && self.conf.voters.contains(id))
            .count();
        let rejected = self
            .votes
            .iter()
            .filter(|(id, g)| !**g && self.conf.voters.contains(id))
            .count();
        if granted >= quorum {
            match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if rejected >= quorum {
            debug!(term = self.term, "election lost");
            self.become_follower(self.term, None);
        }
    }

    fn other_voters(&self) -> Vec<ReplicaId> {
        self.conf
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .collect()
    }

    fn reset(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_election_timer();
        self.lead_transferee = None;
        self.votes.clear();
        self.self_vote_pending = false;
        self.progress.clear();
        self.pending_reads.clear();
        self.read_round_in_flight = false;
        self.lease_until_tick = 0;
        self.uncommitted_bytes = 0;
        self.needs_broadcast = false;
        self.commit_advanced = false;
        self.quiesced = false;
        self.idle_ticks = 0;
    }

    fn reset_election_timer(&mut self) {
        self.randomized_election_timeout =
            self.cfg.election_timeout_ticks + self.rng.below(self.cfg.election_timeout_ticks);
    }

    fn become_follower(&mut self, term: Term, leader: Option<ReplicaId>) {
        if self.role != Role::Follower || term != self.term {
            debug!(term, leader = ?leader, "becoming follower");
        }
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        info!(term = self.term, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        let last = self.log.last_index();
        let id = self.id;
        self.progress = self
            .conf
            .members()
            .filter(|m| *m != id)
            .map(|m| {
                let mut pr = Progress::new(last + 1);
                pr.recent_active = true;
                (m, pr)
            })
            .collect();
        self.pending_conf_index = last;
        self.uncommitted_bytes = 0;
        self.log_time = self
            .log
            .entries
            .back()
            .map_or(self.log.snapshot.time, |e| e.time)
            .max(self.log_time);
        self.term_start_index = self.append_entry(Payload::Noop);
        self.broadcast_append();
    }

    // ---------------------------------------------------------------------------------------
    // Replication.

    fn broadcast_append(&mut self) {
        self.needs_broadcast = false;
        let commit_advanced = std::mem::take(&mut self.commit_advanced);
        let peers: Vec<ReplicaId> = self.progress.keys().copied().collect();
        let committed = self.log.committed;
        for peer in peers {
            let allow_empty = commit_advanced && self.progress[&peer].commit_sent < committed;
            self.send_append(peer, allow_empty);
        }
    }

    /// Sends what `to` needs, within its window. An empty append only if `allow_empty`.
    fn send_append(&mut self, to: ReplicaId, mut allow_empty: bool) {
        loop {
            let pr = &self.progress[&to];
            if !pr.can_send(self.cfg.inflight_messages_max, self.cfg.inflight_bytes_max) {
                return;
            }
            let next = pr.next_index;
            if next <= self.log.snapshot.index {
                self.start_snapshot(to);
                return;
            }
            let prev_index = next - 1;
            let prev_term = self.log.term(prev_index).expect("prev entry is in the log");
            let last = self.log.last_index();
            let entries = if next <= last {
                self.log.slice(
                    next,
                    last,
                    self.cfg.append_entries_max,
                    self.cfg.append_bytes_max,
                )
            } else {
                Vec::new()
            };
            if entries.is_empty() && !allow_empty {
                return;
            }
            allow_empty = false;
            let count = entries.len();
            let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
            let sent_last = prev_index + count as u64;
            let commit = self.log.committed;
            let ticks = self.ticks;
            let pr = self.progress.get_mut(&to).expect("member");
            if pr.inflight_count() == 0 {
                pr.progress_tick = ticks;
            }
            pr.sent(sent_last, bytes, count);
            pr.commit_sent = pr.commit_sent.max(commit.min(sent_last));
            self.send(
                to,
                Body::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                },
            );
            if count == 0 {
                return;
            }
        }
    }

    fn handle_append(
        &mut self,
        from: ReplicaId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        self.quiesced = false;
        if prev_index < self.log.committed {
            // Everything up to our commit index matches any leader's log (§3.6.3).
            let index = self.log.committed;
            self.send_ack(from, index);
            return;
        }
        if self.log.term(prev_index) == Some(prev_term) {
            let conf_changes = entries
                .iter()
                .any(|e| matches!(e.payload, Payload::Membership(_) | Payload::Bootstrap(_)));
            let conf_index_before = self.conf_index;
            let conf_term_before = self.log.term(conf_index_before);
            let last_new = self.log.maybe_append(prev_index, entries);
            if conf_changes || self.log.term(conf_index_before) != conf_term_before {
                let (conf, conf_index) = self.log.config_at(self.log.last_index());
                self.set_conf(conf, conf_index);
            }
            self.log.commit_to(commit.min(last_new));
            self.send_ack(from, last_new);
        } else {
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            debug!(
                term = self.term,
                prev_index, prev_term, hint_index, hint_term, "rejecting append"
            );
            self.send(
                from,
                Body::AppendResponse {
                    index: prev_index,
                    reject: true,
                    hint_index,
                    hint_term,
                },
            );
        }
    }

    fn handle_append_response(
        &mut self,
        from: ReplicaId,
        index: Index,
        reject: bool,
        hint_index: Index,
        hint_term: Term,
    ) {
        let pr = self.progress.get_mut(&from).expect("member");
        pr.recent_active = true;
        if reject {
            let stale = match pr.state {
                ProgressState::Replicate => index <= pr.match_index,
                ProgressState::Probe => index + 1 != pr.next_index,
                ProgressState::Snapshot { .. } => true,
            };
            if stale {
                return;
            }
            let next = if hint_term > 0 {
                self.log.find_conflict_by_term(hint_index, hint_term).0 + 1
            } else {
                hint_index + 1
            };
            debug!(term = self.term, %from, rejected = index, next, "append rejected; backing off");
            let pr = self.progress.get_mut(&from).expect("member");
            pr.back_off(next.min(index));
            self.send_append(from, true);
            return;
        }
        let moved = pr.acked(index);
        if moved {
            pr.progress_tick = self.ticks;
        }
        let become_replicate = match pr.state {
            ProgressState::Probe => true,
            ProgressState::Snapshot { index: snap, .. } => pr.match_index >= snap,
            ProgressState::Replicate => false,
        };
        if become_replicate {
            pr.become_replicate();
        }
        if moved {
            self.maybe_commit();
            if self.lead_transferee == Some(from)
                && self.progress[&from].match_index == self.log.last_index()
            {
                info!(term = self.term, to = %from, "transfer target caught up; sending TimeoutNow");
                self.send(from, Body::TimeoutNow);
            }
        }
        if self.role == Role::Leader && self.progress.contains_key(&from) {
            self.send_append(from, false);
        }
    }

    fn handle_heartbeat(&mut self, from: ReplicaId, commit: Index, read_round: u64, quiesce: bool) {
        // The leader caps `commit` at what it knows we hold, so it is safe to commit to.
        self.log.commit_to(commit.min(self.log.last_index()));
        self.quiesced = quiesce && self.log.committed == self.log.last_index();
        if self.quiesced {
            self.release_buffers();
        }
        self.send(from, Body::HeartbeatResponse { read_round });
    }

    fn handle_heartbeat_response(&mut self, from: ReplicaId, read_round: u64) {
        let last = self.log.last_index();
        let pr = self.progress.get_mut(&from).expect("member");
        pr.recent_active = true;
        pr.read_round_acked = pr.read_round_acked.max(read_round);
        pr.probe_sent = false;
        let stalled_ticks = 2 * u64::from(self.cfg.heartbeat_interval_ticks);
        if pr.state == ProgressState::Replicate
            && pr.match_index < last
            && pr.inflight_count() > 0
            && self.ticks >= pr.progress_tick + stalled_ticks
        {
            // Appends have been in flight for two heartbeat intervals without any being
            // acknowledged, while the follower answers heartbeats: they were lost. Probe from
            // what it holds. (Heartbeat answers overtake append acknowledgements, which wait for
            // the follower's fsync, so one silent answer alone proves nothing.)
            pr.become_probe();
            pr.next_index = pr.match_index + 1;
        }
        if pr.match_index < last {
            self.send_append(from, false);
        }
        self.check_read_quorum();
    }

    fn maybe_commit(&mut self) {
        let mut matched: Vec<Index> = self
            .conf
            .voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.log.persisted
                } else {
                    self.progress.get(v).map_or(0, |p| p.match_index)
                }
            })
            .collect();
        if matched.is_empty() {
            return;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let index = matched[self.conf.quorum() - 1];
        if index <= self.log.committed {
            return;
        }
        // §3.6.2 / Figure 3.7: only entries of the current term are committed by counting.
        #[cfg(feature = "broken-variants")]
        let any_term = self.cfg.broken.commit_previous_term;
        #[cfg(not(feature = "broken-variants"))]
        let any_term = false;
        if self.log.term(index) != Some(self.term) && !any_term {
            return;
        }
        let old = self.log.committed;
        self.log.commit_to(index);
        self.commit_advanced = true;
        self.needs_broadcast = true;
        for i in old + 1..=index {
            if let Some(e) = self.log.entry(i) {
                self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(e.size_bytes());
            }
        }
        if old < self.term_start_index && index >= self.term_start_index {
            // The no-op of our term is committed: reads waiting for it can start a round.
            if self.pending_reads.iter().any(|r| r.round == 0) && !self.read_round_in_flight {
                self.broadcast_heartbeat(false);
            }
        }
        if !self.conf.contains(self.id) && index >= self.conf_index {
            // §4.2.2: a leader removed from the configuration steps down once the change commits.
            info!(term = self.term, "removed from the group; stepping down");
            // Hand over at once to the most caught-up voter, instead of leaving the group to wait
            // out the followers' leases (§3.10 used for §4.2.2).
            let successor = self
                .conf
                .voters
                .iter()
                .filter_map(|v| self.progress.get(v).map(|p| (p.match_index, *v)))
                .max();
            if let Some((_, to)) = successor {
                self.send(to, Body::TimeoutNow);
            }
            self.become_follower(self.term, None);
        }
    }

    fn broadcast_heartbeat(&mut self, quiesce: bool) {
        // Every heartbeat is a read round: it confirms leadership for the reads waiting, and
        // refreshes the lease.
        let ready = self.log.committed >= self.term_start_index;
        self.read_round += 1;
        let round = self.read_round;
        if ready {
            for r in self.pending_reads.iter_mut().filter(|r| r.round == 0) {
                r.round = round;
                r.index = self.log.committed;
            }
        }
        self.read_round_in_flight = self.pending_reads.iter().any(|r| r.round == round);
        self.round_started_tick[round as usize % ROUNDS_REMEMBERED] = (round, self.ticks);
        let peers: Vec<ReplicaId> = self.progress.keys().copied().collect();
        for peer in peers {
            let pr = &self.progress[&peer];
            let commit = self.log.committed.min(pr.match_index);
            self.progress.get_mut(&peer).expect("member").commit_sent =
                commit.max(self.progress[&peer].commit_sent);
            self.send(
                peer,
                Body::Heartbeat {
                    commit,
                    read_round: round,
                    quiesce,
                },
            );
        }
        self.check_read_quorum();
    }

    /// Confirms the reads of every round a quorum of voters acknowledged.
    fn check_read_quorum(&mut self) {
        let mut acked: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.read_round
                } else {
                    self.progress.get(v).map_or(0, |p| p.read_round_acked)
                }
            })
            .collect();
        if acked.is_empty() {
            return;
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = acked[self.conf.quorum() - 1];
        let (round, tick) = self.round_started_tick[confirmed as usize % ROUNDS_REMEMBERED];
        if round == confirmed && confirmed > 0 {
            // A follower ignores votes until its election timeout's worth of ticks passed since
            // it heard this round, which can be as little as `election_timeout_ticks - 1` tick
            // periods (its next tick may come right after the message). The round started at
            // our tick `tick`, before the follower heard it. A fifth off that keeps the lease
            // safe while tick rates differ by up to 25% (`Config::lease_reads`).
            let lease_ticks = u64::from(self.cfg.election_timeout_ticks.saturating_sub(1)) * 4 / 5;
            self.lease_until_tick = self.lease_until_tick.max(tick + lease_ticks);
        }
        while let Some(r) = self.pending_reads.front() {
            if r.round == 0 || r.round > confirmed {
                break;
            }
            let r = self.pending_reads.pop_front().expect("front exists");
            self.read_states.push(ReadState {
                ctx: r.ctx,
                index: r.index,
            });
        }
        if self.read_round_in_flight
            && !self
                .pending_reads
                .iter()
                .any(|r| r.round == self.read_round)
        {
            self.read_round_in_flight = false;
            if self.pending_reads.iter().any(|r| r.round == 0) {
                self.broadcast_heartbeat(false);
            }
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let active = self
            .conf
            .voters
            .iter()
            .filter(|v| **v == self.id || self.progress.get(v).is_some_and(|p| p.recent_active))
            .count();
        active >= self.conf.quorum()
    }

    fn can_quiesce(&self) -> bool {
        let last = self.log.last_index();
        self.log.committed == last
            && self.log.persisted == last
            && self.lead_transferee.is_none()
            && self.pending_reads.is_empty()
            && self.pending_conf_index <= self.log.committed
            && self
                .progress
                .values()
                .all(|p| p.match_index == last && p.state == ProgressState::Replicate)
    }

    // ---------------------------------------------------------------------------------------
    // Snapshots.

    /// Records a snapshot of the state machine taken at `index` (at most the applied index) and
    /// compacts the log up to it. Returns the snapshot's metadata, which the caller stores.
    pub fn compact(&mut self, index: Index, data: Bytes) -> Result<SnapshotMeta, Error> {
        if index > self.log.applied {
            return Err(Error::BadSnapshot {
                index,
                reason: "beyond the applied index",
            });
        }
        if index <= self.log.snapshot.index {
            return Err(Error::BadSnapshot {
                index,
                reason: "not after the current snapshot",
            });
        }
        let entry = self.log.entry(index).expect("applied entry is in the log");
        let time = entry.time;
        let term = entry.term;
        let (config, _) = self.log.config_at(index);
        let meta = SnapshotMeta {
            index,
            term,
            config,
            time,
        };
        self.log.compact(meta.clone());
        self.snapshot_data = Some(data);
        // Followers in the middle of an older snapshot start over with the new one.
        let peers: Vec<ReplicaId> = self
            .progress
            .iter()
            .filter(|(_, p)| matches!(p.state, ProgressState::Snapshot { .. }))
            .map(|(id, _)| *id)
            .collect();
        for peer in peers {
            self.start_snapshot(peer);
        }
        Ok(meta)
    }

    fn start_snapshot(&mut self, to: ReplicaId) {
        if self.snapshot_data.is_none() {
            debug!(%to, "follower needs a snapshot but none is loaded; waiting for compact()");
            return;
        }
        let index = self.log.snapshot.index;
        info!(term = self.term, %to, index, "follower is behind the compacted log; sending snapshot");
        self.progress
            .get_mut(&to)
            .expect("member")
            .become_snapshot(index);
        self.send_snapshot_chunk(to);
    }

    fn send_snapshot_chunk(&mut self, to: ReplicaId) {
        let ProgressState::Snapshot { index, offset } = self.progress[&to].state else {
            return;
        };
        let data = self.snapshot_data.as_ref().expect("snapshot data loaded");
        debug_assert_eq!(index, self.log.snapshot.index);
        let total_bytes = data.len() as u64;
        let start = offset.min(total_bytes) as usize;
        let end = (start + self.cfg.snapshot_chunk_bytes_max).min(data.len());
        let chunk = data.slice(start..end);
        self.progress
            .get_mut(&to)
            .expect("member")
            .snapshot_idle_ticks = 0;
        self.send(
            to,
            Body::Snapshot {
                meta: self.log.snapshot.clone(),
                offset,
                total_bytes,
                data: chunk,
            },
        );
    }

    fn resend_stalled_snapshots(&mut self) {
        let stall_ticks = 2 * self.cfg.heartbeat_interval_ticks;
        let stalled: Vec<ReplicaId> = self
            .progress
            .iter_mut()
            .filter(|(_, p)| matches!(p.state, ProgressState::Snapshot { .. }))
            .filter_map(|(id, p)| {
                p.snapshot_idle_ticks += 1;
                (p.snapshot_idle_ticks >= stall_ticks).then_some(*id)
            })
            .collect();
        for peer in stalled {
            self.send_snapshot_chunk(peer);
        }
    }

    fn handle_snapshot_response(
        &mut self,
        from: ReplicaId,
        index: Index,
        next_offset: u64,
        reject: bool,
    ) {
        let pr = self.progress.get_mut(&from).expect("member");
        pr.recent_active = true;
        let ProgressState::Snapshot { index: sending, .. } = pr.state else {
            return;
        };
        if sending != index {
            return;
        }
        let offset = if reject { 0 } else { next_offset };
        pr.state = ProgressState::Snapshot { index, offset };
        self.send_snapshot_chunk(from);
    }

    fn handle_snapshot(
        &mut self,
        from: ReplicaId,
        meta: SnapshotMeta,
        offset: u64,
        total_bytes: u64,
        data: Bytes,
    ) {
        self.quiesced = false;
        if meta.index <= self.log.committed {
            let index = self.log.committed;
            self.send_ack(from, index);
            return;
        }
        if total_bytes > self.cfg.snapshot_bytes_max {
            tracing::error!(
                index = meta.index,
                total_bytes,
                limit = self.cfg.snapshot_bytes_max,
                "snapshot exceeds snapshot_bytes_max; refusing it (raise the limit on this node)"
            );
            return;
        }
        let same =
            |inc: &IncomingSnapshot| inc.meta.index == meta.index && inc.meta.term == meta.term;
        if offset == 0 {
            let capacity_max = 1 << 20;
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta: meta.clone(),
                total_bytes,
                data: Vec::with_capacity((total_bytes as usize).min(capacity_max)),
            });
        }
        let accepted = match self.incoming_snapshot.as_mut() {
            Some(inc) if same(inc) && inc.data.len() as u64 == offset => {
                let room = inc.total_bytes - inc.data.len() as u64;
                let take = (data.len() as u64).min(room) as usize;
                inc.data.extend_from_slice(&data[..take]);
                true
            }
            _ => false,
        };
        let Some(inc) = self.incoming_snapshot.as_ref() else {
            self.send(
                from,
                Body::SnapshotResponse {
                    index: meta.index,
                    next_offset: 0,
                    reject: true,
                },
            );
            return;
        };
        let received = inc.data.len() as u64;
        if !accepted || received < inc.total_bytes {
            self.send(
                from,
                Body::SnapshotResponse {
                    index: meta.index,
                    next_offset: received,
                    reject: !same(inc),
                },
            );
            return;
        }
        let inc = self.incoming_snapshot.take().expect("complete snapshot");
        let index = inc.meta.index;
        if self.log.term(index) == Some(inc.meta.term) {
            // We already hold the entry; the snapshot adds nothing but a commit index.
            self.log.commit_to(index);
        } else {
            info!(term = self.term, index, "installing snapshot from leader");
            self.log.restore(inc.meta.clone());
            self.set_conf(inc.meta.config.clone(), index);
            let data = Bytes::from(inc.data);
            // Keep the data: as a leader later, this replica sends it to followers behind it.
            self.snapshot_data = Some(data.clone());
            self.pending_snapshot = Some(Snapshot {
                meta: inc.meta,
                data,
            });
        }
        self.send_ack(from, index);
    }

    /// The driver restored the state machine from the snapshot at `index` handed out in a Ready.
    pub fn snapshot_installed(&mut self, index: Index) {
        assert_eq!(
            index, self.log.snapshot.index,
            "installed snapshot {index} is not the replica's snapshot {}",
            self.log.snapshot.index
        );
        self.log.applied = self.log.applied.max(index);
        self.log.handed_out = self.log.handed_out.max(index);
    }

    fn set_conf(&mut self, conf: Configuration, index: Index) {
        if self.role == Role::Leader {
            let last = self.log.last_index();
            let id = self.id;
            self.progress.retain(|m, _| conf.contains(*m));
            for m in conf.members().filter(|m| *m != id) {
                self.progress.insert_with(m, || {
                    let mut pr = Progress::new(last);
                    pr.recent_active = true;
                    pr
                });
            }
            if let Some(t) = self.lead_transferee
                && !conf.voters.contains(&t)
            {
                self.lead_transferee = None;
            }
        }
        self.conf = conf;
        self.conf_index = index;
    }

    // ---------------------------------------------------------------------------------------
    // Persistence and application.

    /// Whether an after-persist message whose write just became durable may still be sent. A
    /// promise of an older term than the replica's may no longer hold: a later Ready of a newer
    /// term (perhaps written in the same commit) may have replaced the entries it acknowledges,
    /// and a leader of that older term would count it. Dropping it is always allowed.
    pub fn keeps_promise(&self, m: &Message) -> bool {
        m.term >= self.term
    }

    /// Everything handed out in Readys up to `number` is durable.
    pub fn persisted(&mut self, number: u64) {
        while let Some(front) = self.unpersisted.front() {
            if front.number > number {
                break;
            }
            let u = self.unpersisted.pop_front().expect("front exists");
            if let Some((index, term)) = u.last
                && self.log.term(index) == Some(term)
            {
                self.log.persisted = self.log.persisted.max(index);
            }
            self.durable_hard_state = u.hard_state;
        }
        if self.self_vote_pending
            && self.role == Role::Candidate
            && self.durable_hard_state.term == self.term
            && self.durable_hard_state.vote == Some(self.id)
        {
            self.self_vote_pending = false;
            self.votes.insert(self.id, true);
            self.tally_votes();
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// The driver applied every entry up to `index`.
    pub fn applied(&mut self, index: Index) {
        assert!(
            index <= self.log.handed_out,
            "applied {index} beyond the entries handed out ({})",
            self.log.handed_out
        );
        self.log.applied = self.log.applied.max(index);
    }

    // ---------------------------------------------------------------------------------------
    // Output.

    /// Acknowledges that our log matches the leader's up to `index` (sent after persist).
    fn send_ack(&mut self, to: ReplicaId, index: Index) {
        self.send(
            to,
            Body::AppendResponse {
                index,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    fn send(&mut self, to: ReplicaId, body: Body) {
        let msg = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.emit(msg);
    }

    /// Queues a message, in `messages` or `messages_after_persist` by what it promises.
    fn emit(&mut self, msg: Message) {
        let after_persist = match msg.body {
            // A grant promises a durable vote; an acknowledgement promises durable entries; a
            // candidate's request reflects a term and self-vote that must not be forgotten.
            Body::VoteResponse {
                pre_vote: false,
                granted: true,
            } => {
                #[cfg(feature = "broken-variants")]
                {
                    !self.cfg.broken.vote_before_persist
                }
                #[cfg(not(feature = "broken-variants"))]
                {
                    true
                }
            }
            Body::AppendResponse { .. } | Body::SnapshotResponse { .. } => true,
            Body::Vote {
                pre_vote: false, ..
            } => true,
            _ => false,
        };
        if after_persist {
            self.msgs_after_persist.push(msg);
        } else {
            self.msgs.push(msg);
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
            term: self.term,
        }
    }

    /// Whether [`Replica::take_ready`] has anything.
    pub fn has_ready(&self) -> bool {
        self.needs_broadcast
            || self.commit_advanced
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.log.unsent_from <= self.log.last_index()
            || self.log.handed_out < self.log.committed
            || self.pending_snapshot.is_some()
            || !self.read_states.is_empty()
            || !self.refused_forwards.is_empty()
            || self.durable_fields_changed()
            || self.soft_state() != self.prev_soft_state
    }

    /// Whether term or vote changed since the last Ready: they must be durable before anything
    /// that depends on them is said. A commit index alone need not be: it is volatile state
    /// (thesis Figure 3.1), learned again from the leader after a restart, so it rides along with
    /// the next write that happens anyway rather than costing a write of its own.
    fn durable_fields_changed(&self) -> bool {
        self.term != self.prev_hard_state.term || self.vote != self.prev_hard_state.vote
    }

    /// Takes the work to do. See [`Ready`] for the driver's duties.
    pub fn take_ready(&mut self) -> Ready {
        if self.role == Role::Leader && (self.needs_broadcast || self.commit_advanced) {
            self.broadcast_append();
        }
        let mut rd = Ready::default();
        let ss = self.soft_state();
        if ss != self.prev_soft_state {
            rd.soft_state = Some(ss);
            self.prev_soft_state = ss;
        }
        rd.snapshot = self.pending_snapshot.take();
        let last = self.log.last_index();
        if self.log.unsent_from <= last {
            let from = self.log.unsent_from.max(self.log.first_index());
            rd.entries = self
                .log
                .entries
                .iter()
                .skip((from - self.log.first_index()) as usize)
                .cloned()
                .collect();
            self.log.unsent_from = last + 1;
        }
        let hs = self.hard_state();
        let writes = !rd.entries.is_empty() || rd.snapshot.is_some();
        if self.durable_fields_changed() || (writes && hs != self.prev_hard_state) {
            rd.hard_state = Some(hs);
            self.prev_hard_state = hs;
        }
        rd.messages = std::mem::take(&mut self.msgs);
        rd.messages_after_persist = std::mem::take(&mut self.msgs_after_persist);
        let mut bytes = 0;
        while self.log.handed_out < self.log.committed {
            let index = self.log.handed_out + 1;
            let entry = self
                .log
                .entry(index)
                .expect("committed entry is in the log");
            bytes += entry.size_bytes();
            if !rd.committed_entries.is_empty() && bytes > self.cfg.apply_batch_bytes_max {
                break;
            }
            rd.committed_entries.push(entry.clone());
            self.log.handed_out = index;
        }
        rd.read_states = std::mem::take(&mut self.read_states);
        rd.refused_forwards = std::mem::take(&mut self.refused_forwards);
        if !rd.must_persist() {
            // Messages that promise durable state may refer to an earlier Ready still being
            // written: they wait for it.
            if !rd.messages_after_persist.is_empty() {
                rd.number = self.unpersisted.back().map_or(0, |u| u.number);
            }
        } else {
            self.ready_number += 1;
            rd.number = self.ready_number;
            let last = match (rd.entries.last(), &rd.snapshot) {
                (Some(e), _) => Some((e.index, e.term)),
                (None, Some(s)) => Some((s.meta.index, s.meta.term)),
                (None, None) => None,
            };
            self.unpersisted.push_back(Unpersisted {
                number: rd.number,
                last,
                hard_state: hs,
            });
        }
        rd
    }

    /// Log time as this replica knows it (the leader's clock, or the time of the last entry).
    pub fn log_time(&self) -> LogTime {
        if self.role == Role::Leader {
            self.log_time
        } else {
            self.log
                .entries
                .back()
                .map_or(self.log.snapshot.time, |e| e.time)
        }
    }
}
