//! `fleet-node demo`: a three-node fleet in one process, with nothing to set up.
//!
//! [`run`] makes a cluster CA and a certificate per node in memory, starts nodes `n1`, `n2` and
//! `n3` on 127.0.0.1 (zones `zone-a`, `zone-b`, `zone-c`, data in a fresh temporary directory,
//! the built-in `kv` state machine registered), `n1` founds the fleet and the others join through
//! it. It then creates `--groups` groups of three replicas (`demo-0`, `demo-1`, ...), writes and
//! reads keys through different nodes (a put through `n1`, a linearizable get through `n3`, a
//! follower of that group, and a compare-and-set that succeeds and one that is refused), writes
//! one key into every group through one node and reads it back through another, and prints a
//! table of the groups. Unless told to keep running, it shuts the nodes down, removes the
//! directory, and returns what it saw as a [`DemoReport`]; with `--keep-running` it serves until
//! SIGTERM or ctrl-c first.
//!
//! # Decisions
//!
//! - The data directory is `<temp dir>/fleet-demo-<pid>-<nanos>-<n>`, created new (never reused)
//!   and removed when the demo ends, also after an error.
//! - The nodes run with the daemon's default [`Settings`], so what the demo shows (group creation
//!   time, terms) is what a real fleet on loopback does.
//! - A group's leader in the table is the node whose own replica says it leads (the highest term
//!   if two do, briefly, during an election); term and commit are that node's. The members are
//!   the catalog's initial members (`Status` does not carry the current configuration).
//! - Every claim the demo prints is checked: a value that does not read back, or a
//!   compare-and-set with another outcome than the one shown, makes [`run`] fail.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use fleet_core::kv::{KvCommand, KvOutput, KvQuery, KvStore};
use fleet_core::{Index, Term};
use tokio::task::JoinSet;

use crate::admin::AdminServer;
use crate::runtime::{Fleet, Settings, Status};
use crate::transport::IdentityKind;
use crate::transport::certs::{CertificateAuthority, Validity};

/// The groups created when `--groups` is not given.
pub const DEMO_GROUPS_DEFAULT: u32 = 10;

/// The most groups the demo creates.
pub const DEMO_GROUPS_MAX: u32 = 10_000;

/// The highest `--base-port`: the nodes listen on it and the next two ports.
const BASE_PORT_MAX: i64 = u16::MAX as i64 - 2;

/// Groups the table lists in full; beyond it, it lists the first half of this and counts the
/// rest.
const TABLE_ROWS_MAX: usize = 20;

/// Groups created at once (each waits until its group serves).
const CREATE_CONCURRENCY: usize = 64;

/// How long to wait for every group to report a leader before printing the table anyway.
const LEADERS_WAIT_MAX: Duration = Duration::from_secs(10);

/// The nodes: name and zone.
const NODES: [(&str, &str); 3] = [("n1", "zone-a"), ("n2", "zone-b"), ("n3", "zone-c")];

/// The state machine kind, as the daemon registers it.
const KIND: &str = "kv";

/// The key the walk-through on one group uses.
const KEY: &str = "greeting";

/// The flags of `fleet-node demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// How many groups of three replicas to create (demo-0, demo-1, ...).
    #[arg(long, default_value_t = DEMO_GROUPS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(DEMO_GROUPS_MAX)))]
    pub groups: u32,
    /// Listen on this UDP port and the next two (n1, n2, n3) instead of free ports.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=BASE_PORT_MAX))]
    pub base_port: Option<u16>,
    /// Serve n1's admin endpoint (/status, /metrics, /healthz, /readyz) on ADDR
    /// [default: 127.0.0.1 with a free port].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    pub admin: Option<SocketAddr>,
    /// Keep the fleet running after the demo, until SIGTERM or ctrl-c.
    #[arg(long)]
    pub keep_running: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            groups: DEMO_GROUPS_DEFAULT,
            base_port: None,
            admin: None,
            keep_running: false,
        }
    }
}

/// What the demo did and saw.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The data directory it used (removed when the demo ended).
    pub data_dir: PathBuf,
    /// The nodes, in start order.
    pub nodes: Vec<NodeRow>,
    /// The groups, in name order, as the table printed them.
    pub groups: Vec<GroupRow>,
    /// The walk-through on one group.
    pub walk: Walkthrough,
    /// One key per group, written through one node and read back through another.
    pub round_trips: Vec<RoundTrip>,
    /// The admin endpoint's URL, if one was served.
    pub admin_url: Option<String>,
}

/// A node of the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// The address peers dial.
    pub address: String,
}

/// A line of the groups table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRow {
    /// The group's name.
    pub name: String,
    /// The nodes of its initial members, sorted.
    pub members: Vec<String>,
    /// The node that leads it, if one says so.
    pub leader: Option<String>,
    /// The leader's term (or the highest term seen, without a leader).
    pub term: Term,
    /// The leader's commit index (or the highest seen, without a leader).
    pub commit: Index,
}

/// Puts, gets and compare-and-sets on one group, through different nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walkthrough {
    /// The group.
    pub group: String,
    /// Its leader when the walk-through started.
    pub leader: String,
    /// The node the first put went through.
    pub put_via: String,
    /// The value it put.
    pub put_value: Bytes,
    /// The node the linearizable get went through (not the leader).
    pub get_via: String,
    /// What that get read.
    pub got: Option<Bytes>,
    /// Whether the compare-and-set from the value read to a new one succeeded.
    pub cas_succeeded: bool,
    /// Whether a second compare-and-set that still expects the old value succeeded.
    pub stale_cas_succeeded: bool,
    /// The value the refused compare-and-set found.
    pub stale_cas_found: Option<Bytes>,
    /// The value read at the end, through the node the walk-through started on.
    pub last: Option<Bytes>,
}

/// One key written through one node and read back through another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundTrip {
    /// The group.
    pub group: String,
    /// The node the put went through.
    pub written_via: String,
    /// The node the linearizable get went through.
    pub read_via: String,
    /// The value written.
    pub written: Bytes,
    /// The value read.
    pub read: Option<Bytes>,
}

/// Runs the demo (see the module documentation): prints as it goes, and returns what it saw.
/// The nodes are shut down and the data directory removed before it returns, also on error.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    if let Some(base) = args.base_port {
        ensure!(
            base != 0 && base <= u16::MAX - 2,
            "--base-port {base}: the demo listens on it and the next two ports, so give a port \
             from 1 to {}",
            u16::MAX - 2
        );
    }
    let dir = DataDir::create()?;
    let mut demo = Demo {
        nodes: Vec::new(),
        admin: None,
    };
    let result = demo.drive(&args, dir.path()).await;
    let stopped = demo.stop().await;
    let removed = dir.remove();
    let report = result?;
    stopped?;
    match removed {
        Ok(()) => println!("stopped; removed {}", report.data_dir.display()),
        Err(e) => println!(
            "stopped; could not remove {}: {e}",
            report.data_dir.display()
        ),
    }
    Ok(report)
}

/// The running parts, stopped by [`Demo::stop`] whatever happened.
struct Demo {
    nodes: Vec<Fleet>,
    admin: Option<AdminServer>,
}

impl Demo {
    async fn drive(&mut self, args: &DemoArgs, dir: &Path) -> anyhow::Result<DemoReport> {
        println!(
            "fleet demo: 3 nodes in this process on 127.0.0.1 (QUIC with mutual TLS, redb), data in {}",
            dir.display()
        );
        let nodes = self.start_nodes(args, dir).await?;
        for (i, node) in nodes.iter().enumerate() {
            let how = if i == 0 {
                "founded the fleet".to_owned()
            } else {
                format!("joined through {}", nodes[0].name)
            };
            println!(
                "  {}  {}  {:<21}  {how}",
                node.name, node.zone, node.address
            );
        }
        let admin_url = match args.admin {
            Some(addr) => {
                let admin = AdminServer::start(self.nodes[0].clone(), addr)
                    .await
                    .with_context(|| format!("starting n1's admin endpoint on {addr}"))?;
                let url = format!("http://{}", admin.local_addr());
                println!("  admin endpoint of n1: {url}/status  (also /metrics /healthz /readyz)");
                self.admin = Some(admin);
                Some(url)
            }
            None => None,
        };

        let names = self.create_groups(args.groups).await?;
        let leaders = self.wait_for_leaders(&names).await?;
        let walk = self.walkthrough(&names, &leaders).await?;
        let round_trips = self.round_trips(&names).await?;
        let groups = self.table(&names).await?;
        print_table(&groups);

        if args.keep_running {
            println!();
            println!("the fleet keeps running:");
            for node in &nodes {
                println!("  {}  {}  {}", node.name, node.zone, node.address);
            }
            if let Some(url) = &admin_url {
                println!("  try: curl {url}/status");
            }
            println!("press ctrl-c (or send SIGTERM) to stop it");
            let signal = wait_for_signal()
                .await
                .context("waiting for SIGTERM or ctrl-c")?;
            println!("{signal}: stopping");
        }
        Ok(DemoReport {
            data_dir: dir.to_owned(),
            nodes,
            groups,
            walk,
            round_trips,
            admin_url,
        })
    }

    /// Makes the CA and the certificates, starts and activates the three nodes.
    async fn start_nodes(&mut self, args: &DemoArgs, dir: &Path) -> anyhow::Result<Vec<NodeRow>> {
        let validity = Validity::days_from_now(1);
        let ca = CertificateAuthority::generate("fleet-demo", validity)
            .context("generating the demo's cluster CA")?;
        let mut rows: Vec<NodeRow> = Vec::new();
        for (i, (name, zone)) in NODES.into_iter().enumerate() {
            let tls = ca
                .issue(
                    IdentityKind::Node,
                    name,
                    &["127.0.0.1".to_owned()],
                    validity,
                )
                .and_then(|issued| issued.tls())
                .with_context(|| format!("issuing the certificate of {name}"))?;
            let port = args.base_port.map_or(0, |base| base + i as u16);
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let join: Vec<String> = rows
                .first()
                .map(|n1| n1.address.clone())
                .into_iter()
                .collect();
            let node = Fleet::builder()
                .name(name)
                .data_dir(dir.join(name))
                .listen(listen)
                .tls(tls)
                .join(join.clone())
                .settings(Settings::default())
                .register::<KvStore>(KIND)
                .start()
                .await
                .with_context(|| format!("starting {name} on {listen}"))?;
            self.nodes.push(node.clone());
            let how = if join.is_empty() {
                "founding the fleet".to_owned()
            } else {
                format!("joining through {}", join.join(", "))
            };
            node.activate(zone)
                .await
                .with_context(|| format!("activating {name} in {zone} ({how})"))?;
            // With no `advertise` given, the bound address is the one peers join through.
            let address = node
                .local_addr()
                .with_context(|| format!("{name} has no transport"))?
                .to_string();
            rows.push(NodeRow {
                name: name.to_owned(),
                zone: zone.to_owned(),
                address,
            });
        }
        Ok(rows)
    }

    /// Creates `demo-0` .. `demo-{n-1}`, through the nodes in turn, several at once.
    async fn create_groups(&self, n: u32) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        let names: Vec<String> = (0..n).map(|i| format!("demo-{i}")).collect();
        let mut tasks = JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            if tasks.len() >= CREATE_CONCURRENCY {
                join_next(&mut tasks).await?;
            }
            let node = self.nodes[i % self.nodes.len()].clone();
            let name = name.clone();
            tasks.spawn(async move {
                node.add_consensus_group(&name, 3, KIND)
                    .await
                    .map(|_| ())
                    .with_context(|| format!("creating group {name} through {}", node.name()))
            });
        }
        while !tasks.is_empty() {
            join_next(&mut tasks).await?;
        }
        let range = if n == 1 {
            names[0].clone()
        } else {
            format!("{} .. {}", names[0], names[names.len() - 1])
        };
        println!(
            "created {n} group{} of 3 replicas ({range}) in {:.2} s",
            if n == 1 { "" } else { "s" },
            started.elapsed().as_secs_f64()
        );
        Ok(names)
    }

    /// Every node's status, by node name.
    async fn statuses(&self) -> anyhow::Result<BTreeMap<String, Status>> {
        let mut all = BTreeMap::new();
        for node in &self.nodes {
            let status = node
                .status()
                .await
                .with_context(|| format!("asking {} for its status", node.name()))?;
            all.insert(node.name().to_owned(), status);
        }
        Ok(all)
    }

    /// The leader of every group (see [`leader_of`]), waiting up to [`LEADERS_WAIT_MAX`] for each
    /// to have one.
    async fn wait_for_leaders(&self, names: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + LEADERS_WAIT_MAX;
        loop {
            let statuses = self.statuses().await?;
            let leaders: BTreeMap<String, String> = names
                .iter()
                .filter_map(|g| Some((g.clone(), leader_of(&statuses, g)?.0)))
                .collect();
            if leaders.len() == names.len() || Instant::now() >= deadline {
                return Ok(leaders);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn node(&self, name: &str) -> &Fleet {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .expect("the demo's nodes are n1, n2 and n3")
    }

    /// Put through n1, linearizable get through n3 (a follower), a compare-and-set through n2
    /// that succeeds and one through n3 that is refused, on a group that n3 does not lead (led by
    /// n2 if one is, so that n1's put is forwarded too). When n3 leads every group (placement
    /// makes that happen now and then with few groups), the roles turn: put through n2, reads
    /// and the refused compare-and-set through n1, the compare-and-set that succeeds through n3.
    async fn walkthrough(
        &self,
        names: &[String],
        leaders: &BTreeMap<String, String>,
    ) -> anyhow::Result<Walkthrough> {
        let led_by = |pred: &dyn Fn(&str) -> bool| {
            names
                .iter()
                .find(|g| leaders.get(*g).is_some_and(|l| pred(l)))
        };
        let Some(group) = led_by(&|l| l == "n2")
            .or_else(|| led_by(&|l| l != "n3"))
            .or_else(|| led_by(&|_| true))
        else {
            bail!(
                "no group has a leader after {:?}; see the table of `fleet-node demo --groups 3`",
                LEADERS_WAIT_MAX
            );
        };
        let leader = leaders[group].clone();
        let (writer, reader, setter) = if leader == "n3" {
            ("n2", "n1", "n3")
        } else {
            ("n1", "n3", "n2")
        };
        let (w, r, c) = (self.node(writer), self.node(reader), self.node(setter));
        let role = |node: &str| {
            if node == leader {
                "the leader"
            } else {
                "a follower"
            }
        };
        println!();
        println!("kv on {group} (leader {leader}):");

        let put_value = Bytes::from_static(b"hello, fleet");
        let previous = put(w, group, KEY, put_value.clone()).await?;
        ensure!(
            previous.is_none(),
            "{group} already had {KEY} = {} before the demo wrote it",
            show(previous.as_ref())
        );
        step(
            writer,
            &format!("put {KEY} = {}", show(Some(&put_value))),
            &format!("previous: none  ({writer} is {})", role(writer)),
        );

        let got = get(r, group, KEY).await?;
        step(
            reader,
            &format!("get {KEY}"),
            &format!(
                "{}  (linearizable read; {reader} is {})",
                show(got.as_ref()),
                role(reader)
            ),
        );
        ensure!(
            got.as_ref() == Some(&put_value),
            "{reader} read {KEY} = {} from {group}, but {writer} wrote {}",
            show(got.as_ref()),
            show(Some(&put_value))
        );

        let new_value = Bytes::from_static(b"hello again");
        let (cas_succeeded, found) =
            cas(c, group, KEY, put_value.clone(), new_value.clone()).await?;
        step(
            setter,
            &format!(
                "cas {KEY} {} -> {}",
                show(Some(&put_value)),
                show(Some(&new_value))
            ),
            if cas_succeeded { "ok" } else { "refused" },
        );
        ensure!(
            cas_succeeded,
            "the compare-and-set of {KEY} on {group} from {} was refused; it found {}",
            show(Some(&put_value)),
            show(found.as_ref())
        );

        let late = Bytes::from_static(b"too late");
        let (stale_cas_succeeded, stale_cas_found) =
            cas(r, group, KEY, put_value.clone(), late.clone()).await?;
        step(
            reader,
            &format!(
                "cas {KEY} {} -> {}",
                show(Some(&put_value)),
                show(Some(&late))
            ),
            &if stale_cas_succeeded {
                "ok".to_owned()
            } else {
                format!("refused: the value is {}", show(stale_cas_found.as_ref()))
            },
        );
        ensure!(
            !stale_cas_succeeded && stale_cas_found.as_ref() == Some(&new_value),
            "a compare-and-set of {KEY} on {group} still expecting {} should be refused and find \
             {}; it {} and found {}",
            show(Some(&put_value)),
            show(Some(&new_value)),
            if stale_cas_succeeded {
                "succeeded"
            } else {
                "was refused"
            },
            show(stale_cas_found.as_ref())
        );

        let last = get(w, group, KEY).await?;
        step(writer, &format!("get {KEY}"), &show(last.as_ref()));
        ensure!(
            last.as_ref() == Some(&new_value),
            "{writer} read {KEY} = {} from {group} after the compare-and-set, expected {}",
            show(last.as_ref()),
            show(Some(&new_value))
        );
        Ok(Walkthrough {
            group: group.clone(),
            leader,
            put_via: writer.into(),
            put_value,
            get_via: reader.into(),
            got,
            cas_succeeded,
            stale_cas_succeeded,
            stale_cas_found,
            last,
        })
    }

    /// One key per group: written through node `i % 3`, read back through the next node.
    async fn round_trips(&self, names: &[String]) -> anyhow::Result<Vec<RoundTrip>> {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for (i, group) in names.iter().enumerate() {
            if tasks.len() >= CREATE_CONCURRENCY {
                join_next(&mut tasks).await?;
            }
            let writer = self.nodes[i % self.nodes.len()].clone();
            let reader = self.nodes[(i + 1) % self.nodes.len()].clone();
            let group = group.clone();
            tasks.spawn(async move {
                let written = Bytes::from(format!("written through {}", writer.name()));
                put(&writer, &group, "origin", written.clone()).await?;
                let read = get(&reader, &group, "origin").await?;
                Ok(RoundTrip {
                    group,
                    written_via: writer.name().to_owned(),
                    read_via: reader.name().to_owned(),
                    written,
                    read,
                })
            });
        }
        let mut trips = Vec::with_capacity(names.len());
        while let Some(trip) = join_next(&mut tasks).await? {
            trips.push(trip);
        }
        trips.sort_by_key(|t| group_number(&t.group));
        let matched = trips
            .iter()
            .filter(|t| t.read.as_ref() == Some(&t.written))
            .count();
        println!(
            "  every group: put through n1, n2, n3 in turn, get through the next node: \
             {matched}/{} read back ({:.2} s)",
            trips.len(),
            started.elapsed().as_secs_f64()
        );
        if let Some(t) = trips.iter().find(|t| t.read.as_ref() != Some(&t.written)) {
            bail!(
                "{}: wrote {} through {}, but {} read {}",
                t.group,
                show(Some(&t.written)),
                t.written_via,
                t.read_via,
                show(t.read.as_ref())
            );
        }
        Ok(trips)
    }

    /// The groups table: members, leader, and the leader's term and commit index.
    async fn table(&self, names: &[String]) -> anyhow::Result<Vec<GroupRow>> {
        let statuses = self.statuses().await?;
        let node_names: BTreeMap<u64, String> = statuses
            .values()
            .flat_map(|s| s.nodes.iter())
            .map(|n| (n.entry.id, n.entry.name.clone()))
            .collect();
        let mut rows = Vec::with_capacity(names.len());
        for name in names {
            let views: Vec<_> = statuses
                .values()
                .filter_map(|s| s.groups.iter().find(|g| &g.entry.name == name))
                .collect();
            let Some(entry) = views.first().map(|g| &g.entry) else {
                bail!("group {name} is in no node's status");
            };
            let mut members: Vec<String> = entry
                .initial_members
                .iter()
                .map(|m| {
                    node_names
                        .get(&m.node.0)
                        .cloned()
                        .unwrap_or_else(|| m.node.to_string())
                })
                .collect();
            members.sort();
            let row = match leader_of(&statuses, name) {
                Some((leader, term, commit)) => GroupRow {
                    name: name.clone(),
                    members,
                    leader: Some(leader),
                    term,
                    commit,
                },
                None => GroupRow {
                    name: name.clone(),
                    members,
                    leader: None,
                    term: views.iter().map(|g| g.term).max().unwrap_or(0),
                    commit: views.iter().map(|g| g.commit).max().unwrap_or(0),
                },
            };
            rows.push(row);
        }
        Ok(rows)
    }

    /// Stops the admin endpoint, then the nodes.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        if let Some(admin) = self.admin.take()
            && let Err(e) = admin.shutdown().await
        {
            first_error.get_or_insert(anyhow::Error::new(e).context("stopping the admin endpoint"));
        }
        // All at once: a node stopped before its peers would have them retrying to reach it.
        let mut tasks = JoinSet::new();
        for node in self.nodes.drain(..) {
            tasks.spawn(async move {
                node.shutdown()
                    .await
                    .with_context(|| format!("shutting {} down", node.name()))
            });
        }
        while !tasks.is_empty() {
            if let Err(e) = join_next(&mut tasks).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The node that leads `group` by its own replica's account, with its term and commit index;
/// the highest term wins if two say so.
fn leader_of(statuses: &BTreeMap<String, Status>, group: &str) -> Option<(String, Term, Index)> {
    statuses
        .iter()
        .filter_map(|(node, s)| {
            let g = s.groups.iter().find(|g| g.entry.name == group)?;
            (g.leader.as_deref() == Some(node.as_str()) && g.stopped.is_none())
                .then(|| (node.clone(), g.term, g.commit))
        })
        .max_by_key(|(_, term, _)| *term)
}

fn print_table(rows: &[GroupRow]) {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    let members = |r: &GroupRow| r.members.join(" ");
    let members_width = rows
        .iter()
        .map(|r| members(r).len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<name_width$}  {:<members_width$}  {:<6}  {:>4}  {:>6}",
        "group", "members", "leader", "term", "commit"
    );
    let shown = if rows.len() > TABLE_ROWS_MAX {
        TABLE_ROWS_MAX / 2
    } else {
        rows.len()
    };
    for r in &rows[..shown] {
        let _ = writeln!(
            out,
            "{:<name_width$}  {:<members_width$}  {:<6}  {:>4}  {:>6}",
            r.name,
            members(r),
            r.leader.as_deref().unwrap_or("-"),
            r.term,
            r.commit
        );
    }
    if shown < rows.len() {
        let _ = writeln!(out, "… and {} more groups", rows.len() - shown);
    }
    let mut leaders: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        *leaders
            .entry(r.leader.as_deref().unwrap_or("none"))
            .or_default() += 1;
    }
    let leaders: Vec<String> = leaders.iter().map(|(n, c)| format!("{n} {c}")).collect();
    let _ = writeln!(out, "groups led: {}", leaders.join(", "));
    print!("{out}");
}

/// One line of the walk-through: the node asked, what it was asked, and the answer.
fn step(via: &str, what: &str, answer: &str) {
    println!("  {via}  {what:<44}  -> {answer}");
}

/// `demo-12` sorts after `demo-9`.
fn group_number(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// A value as the demo prints it: quoted text, or `none`.
fn show(value: Option<&Bytes>) -> String {
    match value {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "none".to_owned(),
    }
}

async fn put(node: &Fleet, group: &str, key: &str, value: Bytes) -> anyhow::Result<Option<Bytes>> {
    let cmd = KvCommand::Put {
        key: key.to_owned(),
        value,
    };
    match node
        .command::<KvStore>(group, cmd)
        .await
        .with_context(|| format!("put {key} on {group} through {}", node.name()))?
    {
        KvOutput::Value(previous) => Ok(previous),
        other => bail!("put {key} on {group} answered {other:?}, not the previous value"),
    }
}

async fn get(node: &Fleet, group: &str, key: &str) -> anyhow::Result<Option<Bytes>> {
    let q = KvQuery::Get {
        key: key.to_owned(),
    };
    match node
        .query::<KvStore>(group, q)
        .await
        .with_context(|| format!("get {key} on {group} through {}", node.name()))?
    {
        KvOutput::Value(value) => Ok(value),
        other => bail!("get {key} on {group} answered {other:?}, not a value"),
    }
}

/// Compare-and-set: whether it succeeded, and the value it found.
async fn cas(
    node: &Fleet,
    group: &str,
    key: &str,
    expected: Bytes,
    new: Bytes,
) -> anyhow::Result<(bool, Option<Bytes>)> {
    let cmd = KvCommand::CompareAndSet {
        key: key.to_owned(),
        expected: Some(expected),
        new: Some(new),
    };
    match node
        .command::<KvStore>(group, cmd)
        .await
        .with_context(|| format!("compare-and-set {key} on {group} through {}", node.name()))?
    {
        KvOutput::CompareAndSet {
            succeeded,
            previous,
        } => Ok((succeeded, previous)),
        other => bail!("compare-and-set {key} on {group} answered {other:?}"),
    }
}

/// The next finished task's value (`None` when none is left); a task's error or panic is an
/// error.
async fn join_next<T: 'static>(
    tasks: &mut JoinSet<anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    match tasks.join_next().await {
        None => Ok(None),
        Some(Ok(result)) => result.map(Some),
        Some(Err(e)) => Err(anyhow::Error::new(e).context("a demo task failed")),
    }
}

/// SIGTERM or ctrl-c, whichever comes first: its name.
async fn wait_for_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        })
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("ctrl-c")
    }
}

/// The demo's data directory: new, and removed when dropped (if [`DataDir::remove`] was not
/// called), so an error or a panic leaves nothing behind.
struct DataDir {
    path: PathBuf,
    removed: bool,
}

impl DataDir {
    fn create() -> anyhow::Result<DataDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "fleet-demo-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating the demo's data directory {}", path.display()))?;
        Ok(DataDir {
            path,
            removed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(mut self) -> std::io::Result<()> {
        self.removed = true;
        std::fs::remove_dir_all(&self.path)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
