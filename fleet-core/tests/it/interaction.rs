//! Scripted interaction tests in the etcd-raft style: `fleet-core/testdata/*.txt`.
//!
//! Each file tells a story: a comment saying what the case is for, commands, `----`, and the exact
//! output. Regenerate expected output with `REWRITE=1 cargo test -p fleet-core --test it
//! interaction`, and commit it only once the change is understood.
//!
//! Commands (arguments are `key=value`):
//! - `cluster voters=N [learners=M] [pre-vote=bool] [check-quorum=bool] [quiesce=TICKS]
//!   [lease=bool] [append-max=N] [append-bytes=BYTES] [uncommitted-bytes=BYTES] [chunk=BYTES]`:
//!   replicas 1..N+M, the first N voters.
//! - `campaign id=I`, `tick id=I [n=N]`, `tick-election id=I`, `tick-heartbeat id=I`,
//!   `suspect id=I`: time and elections.
//! - `propose id=I key=K value=V [op=append] [client=C seq=S first=F] [forward=true]`: a `kv`
//!   put (or append, which is not idempotent), optionally in a session; `forward=true` has a
//!   follower hand it to its leader (`Replica::forward_proposal`).
//! - `register id=I`: a client registration (thesis §6.3); the session's client id is the index
//!   it prints.
//! - `read-index id=I ctx=C`, `transfer-leader id=I to=T`, `add-learner id=I node=N [inc=X]`,
//!   `promote id=I node=N`, `remove id=I node=N [inc=X]`, `compact id=I [index=X]`. Replica ids
//!   are `node.incarnation` (incarnation 0 prints as the bare node). `add-learner ... inc=X` with
//!   a new incarnation replaces the harness's replica on that node by a fresh, empty one; `inc=`
//!   elsewhere names an incarnation other than the node's current one.
//! - `process-ready id=I [persist=false]`: one Ready; `persist=false` leaves its write in flight:
//!   nothing reaches the disk, after-persist messages are held back and `persisted` is not
//!   called, as with a slow disk. A later `process-ready` with the default `persist=true`
//!   completes the earlier writes first, in order.
//! - `persist id=I`: the writes in flight complete: the disk is updated, `persisted` is called and
//!   the held messages are queued.
//! - `deliver [drop=true]`: delivers (or drops) the queued messages once. A message addressed to
//!   an incarnation the node no longer runs is dropped.
//! - `stabilize`: Readys and deliveries until nothing is left.
//! - `isolate id=I`, `recover`: drop every message to and from I, or stop doing so.
//! - `crash id=I`, `restart id=I`: lose what was not persisted (writes in flight and queued
//!   messages to and from I), then come back from disk.
//! - `status id=I`, `log id=I`, `state id=I`: inspect.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use datadriven::TestCase;
use fleet_core::kv::{KvCommand, KvOutput, KvQuery, KvStore};
use fleet_core::{
    Applied, Applier, Body, Command, Config, Configuration, Entry, HardState, MembershipChange,
    Message, Payload, Replica, ReplicaId, Restored, SessionConfig, SessionRef, Snapshot,
};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

#[derive(Default, Clone)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

struct Node {
    replica: Replica,
    applier: Applier<KvStore>,
    disk: Disk,
    /// Writes in flight: Readys processed with `persist=false`, oldest first.
    held: Vec<Held>,
}

/// A Ready whose write is in flight: what it would store, and the messages that wait for it.
struct Held {
    number: u64,
    must_persist: bool,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    messages: Vec<Message>,
}

impl Node {
    /// Completes a write: stores it, reports it durable, and returns the messages it released.
    fn complete(&mut self, h: Held) -> Vec<Message> {
        if let Some(s) = &h.snapshot {
            self.disk.entries.clear();
            self.disk.snapshot = Some(s.clone());
        }
        if let Some(first) = h.entries.first() {
            self.disk.entries.retain(|e| e.index < first.index);
            self.disk.entries.extend(h.entries.iter().cloned());
        }
        if let Some(hs) = h.hard_state {
            self.disk.hard_state = hs;
        }
        if h.must_persist {
            self.replica.persisted(h.number);
        }
        // As the runtime does: a promise that no longer holds is dropped.
        h.messages
            .into_iter()
            .filter(|m| self.replica.keeps_promise(m))
            .collect()
    }

    /// Completes every write in flight, in order.
    fn complete_held(&mut self) -> Vec<Message> {
        let held: Vec<Held> = self.held.drain(..).collect();
        held.into_iter().flat_map(|h| self.complete(h)).collect()
    }
}

struct Env {
    nodes: BTreeMap<u64, Node>,
    queue: VecDeque<Message>,
    isolated: BTreeSet<u64>,
    template: Config,
    seed: u64,
    /// The incarnation each node runs, when not 0.
    incarnations: BTreeMap<u64, u32>,
}

fn id(n: u64) -> ReplicaId {
    ReplicaId::new(n, 0)
}

fn arg<T: std::str::FromStr>(tc: &TestCase, key: &str) -> Option<T> {
    tc.args
        .get(key)
        .and_then(|v| v.first())
        .and_then(|s| s.parse().ok())
}

fn need<T: std::str::FromStr>(tc: &TestCase, key: &str) -> T {
    arg(tc, key).unwrap_or_else(|| panic!("{}: missing or bad argument {key}", tc.directive))
}

fn fmt_entry(e: &Entry) -> String {
    let what = match &e.payload {
        Payload::Noop => "noop".to_string(),
        Payload::Register => "register".to_string(),
        Payload::Bootstrap(c) => format!("bootstrap {c}"),
        Payload::Membership(m) => format!("conf {}", fmt_change(m)),
        Payload::Command(c) => fmt_command(c),
    };
    format!("{}/{} {what}", e.index, e.term)
}

fn fmt_command(c: &Command) -> String {
    let cmd: KvCommand = postcard::from_bytes(&c.data).expect("harness commands decode");
    let body = match cmd {
        KvCommand::Put { key, value } => {
            format!("put {key}={}", String::from_utf8_lossy(&value))
        }
        KvCommand::Append { key, value } => {
            format!("append {key}+={}", String::from_utf8_lossy(&value))
        }
        other => format!("{other:?}"),
    };
    match c.session {
        Some(s) => format!("{body} (client {} seq {})", s.client_id, s.seq),
        None => body,
    }
}

fn fmt_change(m: &MembershipChange) -> String {
    match m {
        MembershipChange::AddLearner(r) => format!("add-learner {r}"),
        MembershipChange::Promote(r) => format!("promote {r}"),
        MembershipChange::Remove(r) => format!("remove {r}"),
    }
}

fn fmt_msg(m: &Message) -> String {
    let body = match &m.body {
        Body::Vote {
            pre_vote,
            transfer,
            last_index,
            last_term,
        } => format!(
            "{} last={last_index}/{last_term}{}",
            if *pre_vote { "PreVote" } else { "Vote" },
            if *transfer { " transfer" } else { "" }
        ),
        Body::VoteResponse { pre_vote, granted } => format!(
            "{} {}",
            if *pre_vote { "PreVoteResp" } else { "VoteResp" },
            if *granted { "granted" } else { "rejected" }
        ),
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let es: Vec<String> = entries.iter().map(fmt_entry).collect();
            format!(
                "App prev={prev_index}/{prev_term} commit={commit} [{}]",
                es.join(", ")
            )
        }
        Body::AppendResponse {
            index,
            reject,
            hint_index,
            hint_term,
        } => {
            if *reject {
                format!("AppResp reject index={index} hint={hint_index}/{hint_term}")
            } else {
                format!("AppResp index={index}")
            }
        }
        Body::Heartbeat {
            commit,
            read_round,
            quiesce,
        } => format!(
            "Heartbeat commit={commit} round={read_round}{}",
            if *quiesce { " quiesce" } else { "" }
        ),
        Body::HeartbeatResponse { read_round } => format!("HeartbeatResp round={read_round}"),
        Body::Snapshot {
            meta,
            offset,
            total_bytes,
            data,
        } => format!(
            "Snapshot index={}/{} offset={offset} len={} total={total_bytes}",
            meta.index,
            meta.term,
            data.len()
        ),
        Body::SnapshotResponse {
            index,
            next_offset,
            reject,
        } => format!(
            "SnapResp index={index} next={next_offset}{}",
            if *reject { " reject" } else { "" }
        ),
        Body::TimeoutNow => "TimeoutNow".to_string(),
        Body::Propose { commands } => {
            let cs: Vec<String> = commands.iter().map(fmt_command).collect();
            format!("Propose [{}]", cs.join(", "))
        }
        Body::ProposeRefused { sessions, busy } => {
            let cs: Vec<String> = sessions
                .iter()
                .map(|(c, s)| format!("client {c} seq {s}"))
                .collect();
            format!(
                "ProposeRefused{} [{}]",
                if *busy { " busy" } else { "" },
                cs.join(", ")
            )
        }
    };
    format!("{}->{} t{} {body}", m.from, m.to, m.term)
}

impl Env {
    fn new() -> Self {
        Env {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            template: Config::new(id(0)),
            seed: 1,
            incarnations: BTreeMap::new(),
        }
    }

    /// The id of the replica node `n` runs.
    fn rid(&self, n: u64) -> ReplicaId {
        ReplicaId::new(n, self.incarnations.get(&n).copied().unwrap_or(0))
    }

    /// The replica named by `key=N [inc=X]`.
    fn target(&self, tc: &TestCase, key: &str) -> ReplicaId {
        let n: u64 = need(tc, key);
        match arg::<u32>(tc, "inc") {
            Some(inc) => ReplicaId::new(n, inc),
            None => self.rid(n),
        }
    }

    fn config(&self, n: u64) -> Config {
        let mut cfg = self.template.clone();
        cfg.id = self.rid(n);
        cfg
    }

    fn node(&mut self, n: u64) -> &mut Node {
        self.nodes
            .get_mut(&n)
            .unwrap_or_else(|| panic!("no replica {n}"))
    }

    fn new_replica(&mut self, n: u64, restored: Restored) -> Replica {
        self.seed += 1;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        Replica::new(self.config(n), &mut rng, restored).expect("valid config")
    }

    fn cluster(&mut self, tc: &TestCase) -> String {
        let voters: u64 = need(tc, "voters");
        let learners: u64 = arg(tc, "learners").unwrap_or(0);
        self.nodes.clear();
        self.queue.clear();
        self.isolated.clear();
        self.incarnations.clear();
        let mut cfg = Config::new(id(0));
        cfg.election_timeout_ticks = 10;
        cfg.heartbeat_interval_ticks = 2;
        cfg.quiesce_after_ticks = arg(tc, "quiesce").unwrap_or(0);
        cfg.pre_vote = arg(tc, "pre-vote").unwrap_or(true);
        cfg.check_quorum = arg(tc, "check-quorum").unwrap_or(true);
        cfg.lease_reads = arg(tc, "lease").unwrap_or(false);
        cfg.append_entries_max = arg(tc, "append-max").unwrap_or(8);
        cfg.snapshot_chunk_bytes_max = arg(tc, "chunk").unwrap_or(1 << 20);
        if let Some(bytes) = arg(tc, "append-bytes") {
            cfg.append_bytes_max = bytes;
        }
        if let Some(bytes) = arg(tc, "uncommitted-bytes") {
            cfg.uncommitted_bytes_max = bytes;
        }
        cfg.transfer_timeout_ticks = 10;
        cfg.learner_catchup_lag_max = 2;
        self.template = cfg;
        let conf = Configuration {
            voters: (1..=voters).map(id).collect(),
            learners: (voters + 1..=voters + learners).map(id).collect(),
        };
        for n in 1..=voters + learners {
            let restored = Restored::bootstrap(conf.clone());
            let disk = Disk {
                hard_state: restored.hard_state,
                snapshot: None,
                entries: restored.entries.clone(),
            };
            let replica = self.new_replica(n, restored);
            self.nodes.insert(
                n,
                Node {
                    replica,
                    applier: Applier::new(SessionConfig::default()),
                    disk,
                    held: Vec::new(),
                },
            );
        }
        format!("{conf}\n")
    }

    /// Takes and handles one Ready of `n`, printing it.
    fn process_ready(&mut self, n: u64, persist: bool, out: &mut String) {
        let node = self.node(n);
        if !node.replica.has_ready() {
            return;
        }
        let rd = node.replica.take_ready();
        let _ = writeln!(out, "> {n} handling Ready");
        if let Some(ss) = rd.soft_state {
            let leader = ss.leader.map_or("none".into(), |l| l.to_string());
            let _ = writeln!(out, "  role={:?} term={} leader={leader}", ss.role, ss.term);
        }
        if let Some(hs) = rd.hard_state {
            let vote = hs.vote.map_or("none".into(), |v| v.to_string());
            let _ = writeln!(
                out,
                "  hard state: term={} vote={vote} commit={}",
                hs.term, hs.commit
            );
        }
        if let Some(s) = &rd.snapshot {
            let _ = writeln!(
                out,
                "  snapshot: index={}/{} {}",
                s.meta.index, s.meta.term, s.meta.config
            );
        }
        for e in &rd.entries {
            let _ = writeln!(out, "  persist: {}", fmt_entry(e));
        }
        for m in &rd.messages {
            let _ = writeln!(out, "  send: {}", fmt_msg(m));
        }
        for m in &rd.messages_after_persist {
            let _ = writeln!(out, "  send after persist: {}", fmt_msg(m));
        }
        let mut messages: Vec<Message> = rd.messages.clone();
        let held = Held {
            number: rd.number,
            must_persist: rd.must_persist(),
            snapshot: rd.snapshot.clone(),
            entries: rd.entries.clone(),
            hard_state: rd.hard_state,
            messages: rd.messages_after_persist.clone(),
        };
        let node = self.node(n);
        if persist {
            messages.extend(node.complete_held());
            messages.extend(node.complete(held));
        } else {
            if held.must_persist || !held.messages.is_empty() {
                let _ = writeln!(
                    out,
                    "  (write in flight: not durable, after-persist messages held back)"
                );
            }
            node.held.push(held);
        }
        if let Some(s) = &rd.snapshot {
            node.applier =
                Applier::restore(&s.data, SessionConfig::default()).expect("snapshot restores");
            node.replica.snapshot_installed(s.meta.index);
        }
        for e in &rd.committed_entries {
            let applied = node.applier.apply(e);
            let outcome = match applied {
                Applied::NotACommand => String::new(),
                Applied::Registered { client_id } => format!(" -> session {client_id}"),
                Applied::Command { result, duplicate } => {
                    let r = match result {
                        Ok(bytes) => {
                            let out: KvOutput =
                                postcard::from_bytes(&bytes).expect("output decodes");
                            format!("{out:?}")
                        }
                        Err(e) => format!("error: {e}"),
                    };
                    if duplicate {
                        format!(" -> {r} (duplicate: answered from the session, not applied)")
                    } else {
                        format!(" -> {r}")
                    }
                }
            };
            let _ = writeln!(out, "  apply: {}{outcome}", fmt_entry(e));
        }
        if let Some(last) = rd.committed_entries.last() {
            node.replica.applied(last.index);
        }
        for r in &rd.read_states {
            let _ = writeln!(out, "  read ready: ctx={} index={}", r.ctx, r.index);
        }
        for r in &rd.refused_forwards {
            let _ = writeln!(
                out,
                "  refused forward: client {} seq {}{}",
                r.client_id,
                r.seq,
                if r.busy { " (busy)" } else { "" }
            );
        }
        self.queue.extend(messages);
    }

    fn deliver(&mut self, drop: bool, out: &mut String) -> bool {
        let msgs: Vec<Message> = self.queue.drain(..).collect();
        let any = !msgs.is_empty();
        for m in msgs {
            let (from, to) = (m.from.node.0, m.to.node.0);
            if drop || self.isolated.contains(&from) || self.isolated.contains(&to) {
                let _ = writeln!(out, "  dropped: {}", fmt_msg(&m));
                continue;
            }
            let Some(node) = self.nodes.get_mut(&to) else {
                let _ = writeln!(out, "  dropped (no such replica): {}", fmt_msg(&m));
                continue;
            };
            if node.replica.id() != m.to {
                let _ = writeln!(out, "  dropped (stale incarnation): {}", fmt_msg(&m));
                continue;
            }
            let _ = writeln!(out, "{}", fmt_msg(&m));
            node.replica.step(m);
        }
        any
    }

    fn stabilize(&mut self, out: &mut String) {
        const ROUNDS_MAX: usize = 100;
        for _ in 0..ROUNDS_MAX {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let mut any = false;
            for n in ids {
                if self.nodes[&n].replica.has_ready() {
                    any = true;
                    self.process_ready(n, true, out);
                }
            }
            any |= self.deliver(false, out);
            if !any {
                return;
            }
        }
        panic!("stabilize did not settle in {ROUNDS_MAX} rounds");
    }

    fn status(&self, n: u64) -> String {
        let r = &self.nodes[&n].replica;
        let leader = r.leader().map_or("none".into(), |l| l.to_string());
        format!(
            "{n}: {:?} term={} leader={leader} commit={} applied={} last={} first={} quiesced={} {}\n",
            r.role(),
            r.term(),
            r.committed(),
            r.applied_index(),
            r.last_index(),
            r.first_index(),
            r.is_quiesced(),
            r.config()
        )
    }

    fn run(&mut self, tc: &TestCase) -> String {
        let mut out = String::new();
        let n: u64 = arg(tc, "id").unwrap_or(0);
        match tc.directive.as_str() {
            "cluster" => return self.cluster(tc),
            "campaign" => self.node(n).replica.campaign(),
            "tick" => {
                for _ in 0..arg(tc, "n").unwrap_or(1) {
                    self.node(n).replica.tick();
                }
            }
            "tick-election" => {
                for _ in 0..2 * self.template.election_timeout_ticks {
                    self.node(n).replica.tick();
                }
            }
            "tick-heartbeat" => {
                for _ in 0..self.template.heartbeat_interval_ticks {
                    self.node(n).replica.tick();
                }
            }
            "suspect" => match arg::<u32>(tc, "ticks") {
                Some(ticks) => self.node(n).replica.suspect_leader_in(ticks),
                None => self.node(n).replica.suspect_leader(),
            },
            "propose" => {
                let key: String = need(tc, "key");
                let value: String = need(tc, "value");
                let value = Bytes::from(value.into_bytes());
                let cmd = match arg::<String>(tc, "op").as_deref() {
                    None | Some("put") => KvCommand::Put { key, value },
                    Some("append") => KvCommand::Append { key, value },
                    Some(other) => panic!("propose: unknown op {other}"),
                };
                let data = postcard::to_stdvec(&cmd).expect("encode");
                let session = arg::<u64>(tc, "client").map(|client_id| SessionRef {
                    client_id,
                    seq: need(tc, "seq"),
                    first_unacked: need(tc, "first"),
                });
                let command = Command {
                    session,
                    data: Bytes::from(data),
                };
                if arg::<bool>(tc, "forward") == Some(true) {
                    return match self.node(n).replica.forward_proposal(command) {
                        Ok(to) => format!("forwarded to {to}\n"),
                        Err(e) => format!("error: {e}\n"),
                    };
                }
                let r = self.node(n).replica.propose(command);
                match r {
                    Ok(index) => return format!("index {index}\n"),
                    Err(e) => return format!("error: {e}\n"),
                }
            }
            "register" => {
                return match self.node(n).replica.register_client() {
                    Ok(index) => format!("index {index}\n"),
                    Err(e) => format!("error: {e}\n"),
                };
            }
            "read-index" => {
                if let Err(e) = self.node(n).replica.read_index(need(tc, "ctx")) {
                    return format!("error: {e}\n");
                }
            }
            "transfer-leader" => {
                let to = self.target(tc, "to");
                if let Err(e) = self.node(n).replica.transfer_leader(to) {
                    return format!("error: {e}\n");
                }
            }
            "add-learner" | "promote" | "remove" => {
                let target = self.target(tc, "node");
                let change = match tc.directive.as_str() {
                    "add-learner" => MembershipChange::AddLearner(target),
                    "promote" => MembershipChange::Promote(target),
                    _ => MembershipChange::Remove(target),
                };
                let result = self.node(n).replica.change_membership(change);
                let fresh = self
                    .nodes
                    .get(&target.node.0)
                    .is_none_or(|m| m.replica.id() != target);
                // The new member starts empty once the change is appended (its messages are
                // only queued until the next Ready).
                if tc.directive == "add-learner" && fresh && result.is_ok() {
                    self.incarnations.insert(target.node.0, target.incarnation);
                    let replica = self.new_replica(target.node.0, Restored::empty());
                    self.nodes.insert(
                        target.node.0,
                        Node {
                            replica,
                            applier: Applier::new(SessionConfig::default()),
                            disk: Disk::default(),
                            held: Vec::new(),
                        },
                    );
                }
                match result {
                    Ok(index) => return format!("index {index}\n"),
                    Err(e) => return format!("error: {e}\n"),
                }
            }
            "compact" => {
                let node = self.node(n);
                let index = arg(tc, "index").unwrap_or(node.replica.applied_index());
                assert_eq!(
                    index,
                    node.applier.applied(),
                    "the harness snapshots at the applied index"
                );
                let data = node.applier.snapshot();
                match node.replica.compact(index, data.clone()) {
                    Ok(meta) => {
                        node.disk.entries.retain(|e| e.index > meta.index);
                        node.disk.snapshot = Some(Snapshot {
                            meta: meta.clone(),
                            data,
                        });
                        return format!(
                            "snapshot at {}/{} {}\n",
                            meta.index, meta.term, meta.config
                        );
                    }
                    Err(e) => return format!("error: {e}\n"),
                }
            }
            "process-ready" => {
                let persist = arg(tc, "persist").unwrap_or(true);
                self.process_ready(n, persist, &mut out);
            }
            "deliver" => {
                let drop = arg(tc, "drop").unwrap_or(false);
                self.deliver(drop, &mut out);
            }
            "persist" => {
                let released = self.node(n).complete_held();
                self.queue.extend(released);
            }
            "stabilize" => self.stabilize(&mut out),
            "isolate" => {
                self.isolated.insert(n);
            }
            "recover" => self.isolated.clear(),
            "crash" => {
                let node = self.node(n);
                node.held.clear();
                self.queue
                    .retain(|m| m.from.node.0 != n && m.to.node.0 != n);
            }
            "restart" => {
                let disk = self.nodes[&n].disk.clone();
                let restored = Restored {
                    hard_state: disk.hard_state,
                    snapshot: disk
                        .snapshot
                        .as_ref()
                        .map(|s| s.meta.clone())
                        .unwrap_or_default(),
                    snapshot_data: disk.snapshot.as_ref().map(|s| s.data.clone()),
                    entries: disk.entries.clone(),
                };
                let replica = self.new_replica(n, restored);
                let applier = match &disk.snapshot {
                    Some(s) => {
                        Applier::restore(&s.data, SessionConfig::default()).expect("restores")
                    }
                    None => Applier::new(SessionConfig::default()),
                };
                let node = self.node(n);
                node.replica = replica;
                node.applier = applier;
                node.held.clear();
            }
            "status" => {
                let ids: Vec<u64> = if n == 0 {
                    self.nodes.keys().copied().collect()
                } else {
                    vec![n]
                };
                for i in ids {
                    out.push_str(&self.status(i));
                }
            }
            "log" => {
                let r = &self.nodes[&n].replica;
                for i in r.first_index()..=r.last_index() {
                    let _ = writeln!(out, "{}", fmt_entry(r.entry(i).expect("in log")));
                }
            }
            "state" => {
                let node = &self.nodes[&n];
                let KvOutput::Entries(kvs) = node.applier.query(&KvQuery::Scan {
                    prefix: String::new(),
                    limit: 100,
                }) else {
                    unreachable!()
                };
                for (k, v) in kvs {
                    let _ = writeln!(out, "{k}={}", String::from_utf8_lossy(&v));
                }
                let _ = writeln!(out, "sessions: {}", node.applier.sessions().len());
            }
            other => panic!("unknown command {other}"),
        }
        if out.is_empty() {
            out.push_str("ok\n");
        }
        out
    }
}

#[test]
fn interaction() {
    datadriven::walk(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata"), |f| {
        let mut env = Env::new();
        f.run(|tc| env.run(tc));
    });
}
