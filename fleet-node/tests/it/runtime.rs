//! The fleet runtime on one node, with real storage: groups by name, commands and queries,
//! restart, bad input, a panicking state machine.

use std::time::Duration;

use bytes::Bytes;
use fleet_core::kv::{KvCommand, KvOutput, KvQuery, KvStore};
use fleet_core::{SnapshotError, StateMachine};
use fleet_node::catalog::CatalogError;
use fleet_node::runtime::{Fleet, FleetError, Settings};
use serde::{Deserialize, Serialize};

/// A state machine that panics on a command of 13, to show poison stays in its group.
struct Unlucky(u64);

#[derive(Serialize, Deserialize)]
struct Add(u64);

impl StateMachine for Unlucky {
    type Command = Add;
    type Query = ();
    type Output = u64;
    fn new() -> Self {
        Unlucky(0)
    }
    fn command(&mut self, Add(n): Add) -> u64 {
        assert_ne!(n, 13, "unlucky number");
        self.0 += n;
        self.0
    }
    fn query(&self, _: &()) -> u64 {
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(b: &[u8]) -> Result<Self, SnapshotError> {
        Ok(Unlucky(u64::from_le_bytes(
            b.try_into()
                .map_err(|_| SnapshotError("bad length".into()))?,
        )))
    }
}

fn settings() -> Settings {
    Settings {
        // Short enough for quick tests, long enough that a loaded CI machine (the simulator
        // runs beside these tests) does not starve heartbeats into needless elections.
        tick: Duration::from_millis(5),
        election_timeout_ticks: 10,
        heartbeat_interval_ticks: 2,
        quiesce_after_ticks: 5,
        // A deadline, not a wait: generous so a loaded machine does not fail the test.
        request_timeout: Duration::from_secs(30),
        snapshot_every_entries: 50,
        // Several workers whatever the machine, so groups are spread over them.
        workers: 3,
        ..Settings::default()
    }
}

async fn start(dir: &std::path::Path) -> Fleet {
    start_with(dir, settings().workers).await
}

async fn start_with(dir: &std::path::Path, workers: usize) -> Fleet {
    Fleet::builder()
        .name("n1")
        .data_dir(dir)
        .settings(Settings {
            workers,
            ..settings()
        })
        .register::<KvStore>("kv")
        .register::<Unlucky>("unlucky")
        .start()
        .await
        .expect("node starts")
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put {
        key: key.into(),
        value: Bytes::from(value.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_by_name_serve_commands_and_queries_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(dir.path()).await;
    let before = fleet.health().await.unwrap();
    assert!(!before.has_catalog && before.state.is_none() && before.groups_hosted == 0);
    assert_eq!(fleet.local_addr(), None, "no transport configured");
    fleet.activate("zone-a").await.unwrap();
    let after = fleet.health().await.unwrap();
    assert_eq!(after.state, Some(placement::NodeState::Active));
    assert_eq!(after.meta_leader.as_deref(), Some("n1"));
    assert_eq!(
        fleet.status().await.unwrap().meta_leader.as_deref(),
        Some("n1")
    );
    for i in 0..20 {
        let entry = fleet
            .add_consensus_group(&format!("g{i}"), 3, "kv")
            .await
            .unwrap();
        assert_eq!(
            entry.initial_members.len(),
            1,
            "one node: the group uses it alone"
        );
    }
    // Enough writes to pass the snapshot threshold in some groups.
    for i in 0..20 {
        for j in 0..(if i == 0 { 120 } else { 3 }) {
            fleet
                .command::<KvStore>(
                    &format!("g{i}"),
                    put(&format!("k{j}"), &format!("v{i}.{j}")),
                )
                .await
                .unwrap();
        }
    }
    for i in 0..20 {
        let got = fleet
            .query::<KvStore>(&format!("g{i}"), KvQuery::Get { key: "k2".into() })
            .await
            .unwrap();
        assert_eq!(got, KvOutput::Value(Some(Bytes::from(format!("v{i}.2")))));
    }
    let stale = fleet
        .query_local::<KvStore>("g0", KvQuery::Get { key: "k119".into() })
        .await
        .unwrap();
    assert_eq!(stale, KvOutput::Value(Some(Bytes::from("v0.119"))));
    let status = fleet.status().await.unwrap();
    assert_eq!(status.groups.len(), 20);
    assert!(status.groups.iter().all(|g| g.available), "{status:?}");
    let names: Vec<&str> = status
        .groups
        .iter()
        .map(|g| g.entry.name.as_str())
        .collect();
    assert!(names.is_sorted(), "status lists groups by name: {names:?}");
    assert_eq!(
        fleet.health().await.unwrap().groups_hosted,
        21,
        "20 groups and the catalog"
    );
    fleet.shutdown().await.unwrap();

    // Restarted with one worker instead of three: the groups are spread over the workers anew.
    let fleet = start_with(dir.path(), 1).await;
    for i in 0..20 {
        let got = fleet
            .query::<KvStore>(&format!("g{i}"), KvQuery::Get { key: "k1".into() })
            .await
            .unwrap();
        assert_eq!(
            got,
            KvOutput::Value(Some(Bytes::from(format!("v{i}.1")))),
            "group g{i} after restart"
        );
    }
    let got = fleet
        .query::<KvStore>("g0", KvQuery::Get { key: "k119".into() })
        .await
        .unwrap();
    assert_eq!(
        got,
        KvOutput::Value(Some(Bytes::from("v0.119"))),
        "entries past the snapshot survive"
    );
    fleet
        .command::<KvStore>("g0", put("after", "restart"))
        .await
        .unwrap();
    fleet.shutdown().await.unwrap();
}

/// Right after a restart the catalog replays its log, and its last entries are known committed
/// only once the meta replica leads again: the group created last must not be denied meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_created_last_serves_right_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let fleet = start(dir.path()).await;
        if round == 0 {
            fleet.activate("zone-a").await.unwrap();
        }
        // The group created last round, at once (round 0: a name that is no group yet).
        let got = fleet
            .command::<KvStore>(&format!("last{round}"), put("k", "v"))
            .await;
        if round == 0 {
            assert_eq!(got, Err(FleetError::NoSuchGroup("last0".into())));
        } else {
            got.unwrap_or_else(|e| panic!("last{round} after restart {round}: {e}"));
        }
        fleet
            .add_consensus_group(&format!("last{}", round + 1), 1, "kv")
            .await
            .unwrap();
        fleet.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(dir.path()).await;
    let early = fleet.add_consensus_group("g", 3, "kv").await.unwrap_err();
    assert_eq!(early, FleetError::NotActive);
    fleet.activate("z").await.unwrap();
    fleet.add_consensus_group("g", 3, "kv").await.unwrap();
    let taken = fleet.add_consensus_group("g", 3, "kv").await.unwrap_err();
    assert_eq!(
        taken,
        FleetError::Catalog(CatalogError::GroupExists("g".into()))
    );
    let zero = fleet.add_consensus_group("h", 0, "kv").await.unwrap_err();
    assert!(
        matches!(
            zero,
            FleetError::Catalog(CatalogError::BadSize { size: 0, .. })
        ),
        "{zero}"
    );
    let kind = fleet.add_consensus_group("h", 3, "nope").await.unwrap_err();
    assert_eq!(kind, FleetError::UnknownKind("nope".into()));
    for workers in [0, fleet_node::runtime::WORKERS_MAX + 1] {
        let refused = Fleet::builder()
            .name("n2")
            .data_dir(tempfile::tempdir().unwrap().path())
            .settings(Settings {
                workers,
                ..settings()
            })
            .start()
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, FleetError::Config(m) if m.contains("workers")),
            "{refused}"
        );
    }
    let missing = fleet
        .command::<KvStore>("nope", put("a", "b"))
        .await
        .unwrap_err();
    assert_eq!(missing, FleetError::NoSuchGroup("nope".into()));
    assert!(missing.to_string().contains("list_groups"), "{missing}");
    let garbage = fleet
        .command_raw("g", Bytes::from_static(b"\xff\xff\xff"))
        .await
        .unwrap_err();
    assert!(matches!(garbage, FleetError::Machine(_)), "{garbage}");
    // The malformed command never reached the log: the group's log holds only what is valid.
    let before = fleet.group_status("g").await.unwrap().commit;
    fleet.command::<KvStore>("g", put("a", "b")).await.unwrap();
    let after = fleet.group_status("g").await.unwrap().commit;
    assert_eq!(after, before + 1);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_machine_stops_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(dir.path()).await;
    fleet.activate("z").await.unwrap();
    fleet
        .add_consensus_group("bad", 1, "unlucky")
        .await
        .unwrap();
    fleet.add_consensus_group("good", 1, "kv").await.unwrap();
    assert_eq!(fleet.command::<Unlucky>("bad", Add(1)).await.unwrap(), 1);
    let err = fleet.command::<Unlucky>("bad", Add(13)).await.unwrap_err();
    let FleetError::GroupStopped { group, reason } = &err else {
        panic!("{err}")
    };
    assert_eq!(group, "bad");
    assert!(reason.contains("panicked applying index"), "{reason}");
    let again = fleet.command::<Unlucky>("bad", Add(1)).await.unwrap_err();
    assert!(matches!(again, FleetError::GroupStopped { .. }));
    fleet
        .command::<KvStore>("good", put("still", "fine"))
        .await
        .unwrap();
    let status = fleet.group_status("bad").await.unwrap();
    assert!(!status.available && status.stopped.is_some());
    fleet.shutdown().await.unwrap();
}

mod cluster {
    //! Three nodes in three zones on 127.0.0.1 with real QUIC and redb.

    use super::*;
    use fleet_node::transport::certs::{CertificateAuthority, Validity};
    use fleet_node::transport::{IdentityKind, Tls};

    pub struct Node {
        pub fleet: Fleet,
        /// Kept so the data directory lives as long as the node.
        pub _dir: tempfile::TempDir,
    }

    pub fn tls_for(ca: &CertificateAuthority, name: &str) -> Tls {
        ca.issue(
            IdentityKind::Node,
            name,
            &["127.0.0.1".to_string()],
            Validity::days_from_now(1),
        )
        .expect("issue node certificate")
        .tls()
        .expect("tls")
    }

    pub async fn start_node(
        ca: &CertificateAuthority,
        name: &str,
        join: Vec<String>,
        dir: tempfile::TempDir,
    ) -> Node {
        start_node_with(ca, name, join, dir, settings().workers).await
    }

    pub async fn start_node_with(
        ca: &CertificateAuthority,
        name: &str,
        join: Vec<String>,
        dir: tempfile::TempDir,
        workers: usize,
    ) -> Node {
        let settings = Settings {
            workers,
            ..settings()
        };
        start_node_with_settings(ca, name, join, dir, settings).await
    }

    pub async fn start_node_with_settings(
        ca: &CertificateAuthority,
        name: &str,
        join: Vec<String>,
        dir: tempfile::TempDir,
        settings: Settings,
    ) -> Node {
        let fleet = Fleet::builder()
            .name(name)
            .data_dir(dir.path())
            .settings(settings)
            .listen("127.0.0.1:0".parse().unwrap())
            .tls(tls_for(ca, name))
            .join(join)
            .register::<KvStore>("kv")
            .start()
            .await
            .expect("node starts");
        Node { fleet, _dir: dir }
    }

    pub async fn three_nodes() -> (CertificateAuthority, Vec<Node>) {
        three_nodes_with(settings()).await
    }

    pub async fn three_nodes_with(settings: Settings) -> (CertificateAuthority, Vec<Node>) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ca =
            CertificateAuthority::generate("test-cluster", Validity::days_from_now(1)).expect("ca");
        let dir = || tempfile::tempdir().unwrap();
        let n1 = start_node_with_settings(&ca, "n1", vec![], dir(), settings.clone()).await;
        n1.fleet.activate("zone-a").await.expect("n1 activates");
        let addr = n1.fleet.status().await.unwrap().nodes[0]
            .entry
            .address
            .clone();
        assert_eq!(
            n1.fleet.local_addr().map(|a| a.to_string()),
            Some(addr.clone()),
            "the bound address is the one the catalog advertises"
        );
        let n2 =
            start_node_with_settings(&ca, "n2", vec![addr.clone()], dir(), settings.clone()).await;
        n2.fleet.activate("zone-b").await.expect("n2 joins");
        let n3 = start_node_with_settings(&ca, "n3", vec![addr], dir(), settings).await;
        n3.fleet.activate("zone-c").await.expect("n3 joins");
        (ca, vec![n1, n2, n3])
    }

    fn size_of(g: usize) -> usize {
        if g % 5 < 3 { 3 } else { 1 }
    }

    /// Three nodes in three zones: 100 groups created from every node; every node agrees on the
    /// catalog and placement; commands and queries work from every node, including nodes that
    /// host no member of the group (the size-1 groups).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_agree_and_serve_from_any_node() {
        let (_ca, nodes) = three_nodes().await;
        for g in 0..100 {
            let creator = &nodes[g % 3].fleet;
            let entry = creator
                .add_consensus_group(&format!("g{g}"), size_of(g), "kv")
                .await
                .unwrap();
            assert_eq!(entry.initial_members.len(), size_of(g));
        }
        for (i, node) in nodes.iter().enumerate() {
            for g in 0..100 {
                let group = format!("g{g}");
                node.fleet
                    .command::<KvStore>(&group, put(&format!("from{i}"), &format!("{g}")))
                    .await
                    .unwrap();
            }
        }
        for node in &nodes {
            for g in 0..100 {
                let got = node
                    .fleet
                    .query::<KvStore>(
                        &format!("g{g}"),
                        KvQuery::Get {
                            key: "from2".into(),
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(got, KvOutput::Value(Some(Bytes::from(format!("{g}")))));
            }
        }
        // Past the snapshot threshold on all three members of a group: each takes local
        // snapshots while it writes and applies (the store wants a snapshot first in its group's
        // writes of a batch; one ordered after that group's entries once stopped every node).
        let busy = nodes[0]
            .fleet
            .list_groups()
            .await
            .unwrap()
            .into_iter()
            .find(|g| g.size == 3)
            .expect("a size-3 group")
            .name;
        // Sixteen writers at once, so entries are in flight while others apply and snapshot.
        let mut writers = Vec::new();
        for w in 0..16usize {
            let fleet = nodes[w % 3].fleet.clone();
            let busy = busy.clone();
            writers.push(tokio::spawn(async move {
                for j in (w..160).step_by(16) {
                    fleet
                        .command::<KvStore>(&busy, put(&format!("k{j}"), &format!("{j}")))
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        for (i, node) in nodes.iter().enumerate() {
            for j in (i..160).step_by(7) {
                let got = node
                    .fleet
                    .query::<KvStore>(
                        &busy,
                        KvQuery::Get {
                            key: format!("k{j}"),
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(got, KvOutput::Value(Some(Bytes::from(format!("{j}")))));
            }
        }
        // Every node holds the same catalog (names, ids, members: the same placement).
        let catalogs = catalogs(&nodes).await;
        assert_eq!(catalogs[0], catalogs[1]);
        assert_eq!(catalogs[1], catalogs[2]);
        assert_eq!(catalogs[0].len(), 100);
        // Size-3 groups have one member per zone; the size-1 groups spread over the nodes.
        let status = nodes[0].fleet.status().await.unwrap();
        assert_eq!(status.nodes.len(), 3);
        let hosts: std::collections::BTreeSet<u64> = status
            .groups
            .iter()
            .filter(|g| g.entry.size == 1)
            .map(|g| g.entry.initial_members[0].node.0)
            .collect();
        assert!(
            hosts.len() >= 2,
            "size-1 groups spread over nodes: {hosts:?}"
        );
        // Members by name and this node's role in every group, from every node; one leader each.
        let names: std::collections::BTreeMap<u64, String> = status
            .nodes
            .iter()
            .map(|n| (n.entry.id, n.entry.name.clone()))
            .collect();
        let mut leaders = std::collections::BTreeMap::<String, usize>::new();
        for node in &nodes {
            let me = node.fleet.name().to_string();
            for g in node.fleet.status().await.unwrap().groups {
                let mut members: Vec<String> = g
                    .entry
                    .initial_members
                    .iter()
                    .map(|m| names[&m.node.0].clone())
                    .collect();
                members.sort();
                let mut got = g.members.clone();
                got.sort();
                assert_eq!(
                    got, members,
                    "members of {} as {me} sees them",
                    g.entry.name
                );
                assert!(g.learners.is_empty());
                assert_eq!(g.role.is_some(), members.contains(&me), "{g:?} on {me}");
                if g.role.as_deref() == Some("leader") {
                    *leaders.entry(g.entry.name.clone()).or_default() += 1;
                    assert_eq!(g.leader.as_deref(), Some(me.as_str()));
                }
            }
        }
        assert_eq!(leaders.len(), 100, "every group has a leader: {leaders:?}");
        assert!(leaders.values().all(|n| *n == 1), "{leaders:?}");
        for node in nodes {
            node.fleet.shutdown().await.unwrap();
        }
    }

    /// A group serves from every node as soon as `add_consensus_group` returns, even where the
    /// catalog has not heard of it yet: a node answers "no such group" only after the meta leader
    /// confirms it. A name that is no group gets that answer from every node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_group_serves_at_once_from_every_node_and_unknown_names_are_refused() {
        let (_ca, nodes) = three_nodes().await;
        for g in 0..30 {
            let name = format!("fresh{g}");
            nodes[g % 3]
                .fleet
                .add_consensus_group(&name, 1, "kv")
                .await
                .unwrap();
            // At once, from the two other nodes, together.
            let (a, b) = (&nodes[(g + 1) % 3].fleet, &nodes[(g + 2) % 3].fleet);
            let (ra, rb) = tokio::join!(
                a.command::<KvStore>(&name, put("k", "a")),
                b.query::<KvStore>(&name, KvQuery::Get { key: "k".into() }),
            );
            ra.unwrap_or_else(|e| panic!("{name} through {}: {e}", a.name()));
            rb.unwrap_or_else(|e| panic!("{name} through {}: {e}", b.name()));
        }
        for node in &nodes {
            let err = node
                .fleet
                .command::<KvStore>("no-such-group", put("k", "v"))
                .await
                .unwrap_err();
            assert_eq!(err, FleetError::NoSuchGroup("no-such-group".into()));
            let err = node
                .fleet
                .query_local::<KvStore>("no-such-group", KvQuery::Get { key: "k".into() })
                .await
                .unwrap_err();
            assert_eq!(err, FleetError::NoSuchGroup("no-such-group".into()));
        }
        for node in nodes {
            node.fleet.shutdown().await.unwrap();
        }
    }

    fn forwarded_total() -> f64 {
        let handle = fleet_node::admin::prometheus_handle().expect("recorder");
        handle
            .render()
            .lines()
            .filter(|l| l.starts_with("fleet_proposals_forwarded_total "))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn append(value: &'static str) -> KvCommand {
        KvCommand::Append {
            key: "k".into(),
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    /// Each handle registers a session with a group before its first command there (thesis
    /// §6.3). When the group forgets a session (here: evicted by another node's registration,
    /// with room for one), the command is refused with `Expired`, not applied, and the handle's
    /// next command opens a new session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forgotten_session_is_refused_clearly_and_the_next_command_opens_a_new_one() {
        let mut s = settings();
        s.sessions.sessions_max = 1;
        let (_ca, nodes) = three_nodes_with(s).await;
        let (n1, n2) = (&nodes[0].fleet, &nodes[1].fleet);
        n1.add_consensus_group("s", 3, "kv").await.unwrap();
        assert_eq!(
            n1.command::<KvStore>("s", append("a")).await.unwrap(),
            KvOutput::Length(1)
        );
        // n2's registration evicts n1's session (the table holds one).
        assert_eq!(
            n2.command::<KvStore>("s", append("b")).await.unwrap(),
            KvOutput::Length(2)
        );
        let err = n1
            .command::<KvStore>("s", append("c"))
            .await
            .expect_err("the group no longer holds n1's session");
        assert!(
            matches!(
                err,
                FleetError::Session(fleet_core::SessionError::Expired { .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("register a new session"), "{err}");
        assert_eq!(
            n1.command::<KvStore>("s", append("d")).await.unwrap(),
            KvOutput::Length(3),
            "a new session; the refused command was not applied"
        );
        let got = n2
            .query::<KvStore>("s", KvQuery::Get { key: "k".into() })
            .await
            .unwrap();
        assert_eq!(got, KvOutput::Value(Some(Bytes::from_static(b"abd"))));
        for node in nodes {
            node.fleet.shutdown().await.unwrap();
        }
    }

    /// A group expires a session idle for `session_timeout_ticks` of its log time. A handle whose
    /// session sat idle for half that opens a new one before its next command, so an idle node
    /// does not meet `Expired` while others keep the group busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_handle_opens_a_new_session_before_the_group_expires_its_old_one() {
        let mut s = settings();
        // 40 ticks of 5 ms: the group expires an idle session after 200 ms of its log time;
        // the handle renews one idle for 100 ms.
        s.sessions.session_timeout_ticks = 40;
        let (_ca, nodes) = three_nodes_with(s).await;
        let (n1, n2) = (&nodes[0].fleet, &nodes[1].fleet);
        n1.add_consensus_group("idle", 3, "kv").await.unwrap();
        n1.command::<KvStore>("idle", append("a")).await.unwrap();
        // n2 keeps the group's log time moving well past n1's session timeout.
        let busy_until = tokio::time::Instant::now() + Duration::from_millis(600);
        let mut n2_writes = 0;
        while tokio::time::Instant::now() < busy_until {
            n2.command::<KvStore>("idle", append("b")).await.unwrap();
            n2_writes += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = n1.command::<KvStore>("idle", append("c")).await;
        assert_eq!(out.unwrap(), KvOutput::Length(n2_writes + 2));
        for node in nodes {
            node.fleet.shutdown().await.unwrap();
        }
    }

    /// Commands sent through the followers of a group are handed to the leader inside the Raft
    /// traffic and answered once the follower applies them: each applies once (appends would
    /// show twice), concurrent ones included, and every node reads them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_hand_commands_to_the_leader_and_each_applies_once() {
        let (_ca, nodes) = three_nodes().await;
        nodes[0]
            .fleet
            .add_consensus_group("fwd", 3, "kv")
            .await
            .unwrap();
        let leader = nodes[0].fleet.group_status("fwd").await.unwrap().leader;
        let followers: Vec<&Fleet> = nodes
            .iter()
            .map(|n| &n.fleet)
            .filter(|f| Some(f.name()) != leader.as_deref())
            .collect();
        assert_eq!(followers.len(), 2, "leader {leader:?}");
        let before = forwarded_total();
        let mut tasks = Vec::new();
        for (i, f) in followers.iter().enumerate() {
            for w in 0..4 {
                let f = (*f).clone();
                tasks.push(tokio::spawn(async move {
                    for j in 0..10 {
                        let out = f
                            .command::<KvStore>(
                                "fwd",
                                KvCommand::Append {
                                    key: format!("f{i}w{w}"),
                                    value: Bytes::from_static(b"x"),
                                },
                            )
                            .await
                            .unwrap();
                        assert_eq!(out, KvOutput::Length(j + 1), "applied once");
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            forwarded_total() - before >= 80.0,
            "the followers forwarded their commands in Raft messages"
        );
        for node in &nodes {
            for i in 0..2 {
                for w in 0..4 {
                    let got = node
                        .fleet
                        .query::<KvStore>(
                            "fwd",
                            KvQuery::Get {
                                key: format!("f{i}w{w}"),
                            },
                        )
                        .await
                        .unwrap();
                    assert_eq!(got, KvOutput::Value(Some(Bytes::from("x".repeat(10)))));
                }
            }
        }
        for node in nodes {
            node.fleet.shutdown().await.unwrap();
        }
    }

    /// A node restarts and finds its groups intact; a node stops and its groups elect new leaders
    /// and keep serving; a command retried across the leader change is applied once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_survive_restarts_and_the_loss_of_a_node() {
        let (ca, mut nodes) = three_nodes().await;
        for g in 0..10 {
            nodes[0]
                .fleet
                .add_consensus_group(&format!("g{g}"), 3, "kv")
                .await
                .unwrap();
            nodes[0]
                .fleet
                .command::<KvStore>(&format!("g{g}"), put("k", "before"))
                .await
                .unwrap();
        }
        // Restart n2.
        let addr = nodes[0].fleet.status().await.unwrap().nodes[0]
            .entry
            .address
            .clone();
        let n2 = nodes.remove(1);
        n2.fleet.shutdown().await.unwrap();
        // With two workers instead of three: its groups are spread over them anew.
        let n2 = start_node_with(&ca, "n2", vec![addr.clone()], n2._dir, 2).await;
        n2.fleet.activate("zone-b").await.expect("n2 comes back");
        for g in 0..10 {
            let got = n2
                .fleet
                .query::<KvStore>(&format!("g{g}"), KvQuery::Get { key: "k".into() })
                .await
                .unwrap();
            assert_eq!(got, KvOutput::Value(Some(Bytes::from("before"))));
        }
        nodes.insert(1, n2);
        // Appends from n3 while n1 goes away: each element exactly once.
        let writer = nodes[2].fleet.clone();
        let appends = tokio::spawn(async move {
            for i in 0..40u32 {
                let cmd = KvCommand::Append {
                    key: "list".into(),
                    value: Bytes::from(format!("{i:03},")),
                };
                writer
                    .command::<KvStore>("g0", cmd)
                    .await
                    .expect("append survives the failover");
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n1 = nodes.remove(0);
        n1.fleet.shutdown().await.unwrap();
        appends.await.unwrap();
        for g in 0..10 {
            nodes[1]
                .fleet
                .command::<KvStore>(&format!("g{g}"), put("k", "after"))
                .await
                .expect("new leader serves");
            let got = nodes[0]
                .fleet
                .query::<KvStore>(&format!("g{g}"), KvQuery::Get { key: "k".into() })
                .await
                .unwrap();
            assert_eq!(got, KvOutput::Value(Some(Bytes::from("after"))));
        }
        let KvOutput::Value(Some(list)) = nodes[0]
            .fleet
            .query::<KvStore>("g0", KvQuery::Get { key: "list".into() })
            .await
            .unwrap()
        else {
            panic!("list missing");
        };
        let expected: String = (0..40u32).map(|i| format!("{i:03},")).collect();
        assert_eq!(
            String::from_utf8(list.to_vec()).unwrap(),
            expected,
            "every append exactly once, in order"
        );
        for node in nodes {
            node.fleet.shutdown().await.unwrap();
        }
    }

    /// A node whose listen port is taken says so, as a transport error (not a configuration one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_port_is_a_clear_error() {
        let ca =
            CertificateAuthority::generate("test-cluster", Validity::days_from_now(1)).expect("ca");
        let n1 = start_node(&ca, "n1", vec![], tempfile::tempdir().unwrap()).await;
        let taken = n1.fleet.local_addr().expect("bound");
        let err = Fleet::builder()
            .name("n2")
            .data_dir(tempfile::tempdir().unwrap().path())
            .settings(settings())
            .listen(taken)
            .tls(tls_for(&ca, "n2"))
            .register::<KvStore>("kv")
            .start()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FleetError::Transport(m) if m.contains(&format!("cannot listen on {taken}"))),
            "{err}"
        );
        n1.fleet.shutdown().await.unwrap();
    }

    /// A node holding another cluster's certificates cannot join.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_of_another_cluster_cannot_join() {
        let ca =
            CertificateAuthority::generate("test-cluster", Validity::days_from_now(1)).expect("ca");
        let n1 = start_node(&ca, "n1", vec![], tempfile::tempdir().unwrap()).await;
        n1.fleet.activate("zone-a").await.unwrap();
        let addr = n1.fleet.status().await.unwrap().nodes[0]
            .entry
            .address
            .clone();
        let other = CertificateAuthority::generate("other-cluster", Validity::days_from_now(1))
            .expect("ca");
        let mut quick = settings();
        quick.request_timeout = Duration::from_secs(2);
        let intruder = Fleet::builder()
            .name("evil")
            .data_dir(tempfile::tempdir().unwrap().path())
            .settings(quick)
            .listen("127.0.0.1:0".parse().unwrap())
            .tls(tls_for(&other, "evil"))
            .join([addr])
            .register::<KvStore>("kv")
            .start()
            .await
            .unwrap();
        let err = intruder.activate("zone-x").await.unwrap_err();
        assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
        assert_eq!(
            n1.fleet.status().await.unwrap().nodes.len(),
            1,
            "the catalog did not change"
        );
        intruder.shutdown().await.unwrap();
        n1.fleet.shutdown().await.unwrap();
    }

    async fn catalogs(nodes: &[Node]) -> Vec<Vec<(String, Vec<fleet_core::ReplicaId>)>> {
        let mut out = Vec::new();
        for n in nodes {
            let groups = n.fleet.list_groups().await.unwrap();
            out.push(
                groups
                    .into_iter()
                    .map(|g| (g.name, g.initial_members))
                    .collect(),
            );
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_node_and_nothing_more_is_acknowledged() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use fleet_node::storage::StorageFaults;

    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(StorageFaults::default());
    let fleet = Fleet::builder()
        .name("n1")
        .data_dir(dir.path())
        .settings(settings())
        .register::<KvStore>("kv")
        .storage_faults(faults.clone())
        .start()
        .await
        .unwrap();
    fleet.activate("zone-a").await.unwrap();
    // Three groups: with three workers, not all on the worker whose write fails first.
    for g in ["a", "b", "c"] {
        fleet.add_consensus_group(g, 1, "kv").await.unwrap();
        fleet.command::<KvStore>(g, put("k", "kept")).await.unwrap();
    }

    faults.fail_sync.store(true, Ordering::SeqCst);
    let err = fleet
        .command::<KvStore>("a", put("k", "lost"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FleetError::Storage(why) if why.contains("fsync")),
        "{err}"
    );
    // The whole node stopped, every worker: nothing more is acknowledged, and every call says
    // why (not "shutting down", not a timeout).
    for g in ["a", "b", "c"] {
        let err = fleet
            .command::<KvStore>(g, put("k", "after"))
            .await
            .unwrap_err();
        assert!(matches!(err, FleetError::Storage(_)), "{g}: {err}");
        let err = fleet
            .query::<KvStore>(g, KvQuery::Get { key: "k".into() })
            .await
            .unwrap_err();
        assert!(matches!(err, FleetError::Storage(_)), "{g}: {err}");
    }
    let err = fleet.health().await.unwrap_err();
    assert!(
        err.to_string().contains("storage failed") && err.to_string().contains("fsync"),
        "{err}"
    );
    // The disk is fine again (say, after the operator replaced it): the node never retried on
    // its own; a restart finds every acknowledged write.
    faults.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(
        fleet.shutdown().await,
        Err(FleetError::Storage(_))
    ));
    drop(fleet);
    let fleet = start(dir.path()).await;
    fleet.activate("zone-a").await.unwrap();
    for g in ["a", "b", "c"] {
        let got = fleet
            .query::<KvStore>(g, KvQuery::Get { key: "k".into() })
            .await
            .unwrap();
        assert!(
            got == KvOutput::Value(Some(Bytes::from("kept")))
                || (g == "a" && got == KvOutput::Value(Some(Bytes::from("lost")))),
            "{g}: {got:?}"
        );
    }
    fleet.shutdown().await.unwrap();
}
