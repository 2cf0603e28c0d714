//! The fleet on three nodes in one process (127.0.0.1, real QUIC with mutual TLS, real redb with
//! fsync): group creation rate, write throughput and latency by number of concurrent clients, the
//! CPU an idle fleet costs, and failover time after a node stops.
//!
//! Run: `cargo bench -p fleet-node --bench fleet` (about a minute). Prints a table, then one JSON
//! line. Set `FLEET_BENCH_GROUPS` to change the number of groups (default 1,000) and
//! `FLEET_BENCH_CLIENTS` (say `64` or `1,256`) to choose the write rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_core::kv::{KvCommand, KvStore};
use fleet_node::runtime::{Fleet, Settings};
use fleet_node::transport::IdentityKind;
use fleet_node::transport::certs::{CertificateAuthority, Validity};
use hdrhistogram::Histogram;

const CREATE_CONCURRENCY: usize = 64;
const WRITE_GROUPS: usize = 100;
const WRITE_SECONDS: f64 = 3.0;
/// The idle measurement, seconds (`FLEET_BENCH_IDLE_SECONDS` to change it, say to profile it).
fn idle_seconds() -> f64 {
    std::env::var("FLEET_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}
const VALUE_BYTES: usize = 100;

/// Workers per node: `FLEET_BENCH_WORKERS`, else the default (one per core, at most 4).
fn workers() -> usize {
    std::env::var("FLEET_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fleet_node::runtime::default_workers)
}

struct Node {
    fleet: Fleet,
    _dir: tempfile::TempDir,
}

async fn start(ca: &CertificateAuthority, name: &str, join: Vec<String>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = ca
        .issue(
            IdentityKind::Node,
            name,
            &["127.0.0.1".to_string()],
            Validity::days_from_now(1),
        )
        .expect("certificate")
        .tls()
        .expect("tls");
    let fleet = Fleet::builder()
        .name(name)
        .data_dir(dir.path())
        .settings(Settings {
            workers: workers(),
            ..Settings::default()
        })
        .listen("127.0.0.1:0".parse().expect("addr"))
        .tls(tls)
        .join(join)
        .register::<KvStore>("kv")
        .start()
        .await
        .expect("node starts");
    Node { fleet, _dir: dir }
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command: state is 0, utime 11, stime 12 (clock ticks, 100 per second).
    (ticks(11) + ticks(12)) / 100.0
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The sum of every series of a counter in the process' Prometheus text (all nodes together).
fn counter(name: &str) -> f64 {
    let Some(handle) = fleet_node::admin::prometheus_handle() else {
        return 0.0;
    };
    handle
        .render()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Per write, over all three nodes: storage commits (one fsync each) and frames sent.
struct Costs {
    commits: f64,
    frames: f64,
}

/// Writes over the first `min(WRITE_GROUPS, groups)` groups.
async fn writes(nodes: &[Node], clients: usize, groups: usize) -> (f64, f64, f64, Costs) {
    let write_groups = WRITE_GROUPS.min(groups).max(1);
    let commits0 = counter("fleet_storage_commits_total");
    let frames0 = counter("fleet_transport_frames_sent_total");
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new(3).expect("histogram"),
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(WRITE_SECONDS);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let fleet = nodes[c % nodes.len()].fleet.clone();
        let hist = hist.clone();
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
            let mut ops = 0u64;
            let mut i = c;
            while Instant::now() < deadline {
                let group = format!("g{}", i % write_groups);
                i += clients;
                let started = Instant::now();
                let cmd = KvCommand::Put {
                    key: format!("k{c}"),
                    value: value.clone(),
                };
                fleet.command::<KvStore>(&group, cmd).await.expect("write");
                let us = started.elapsed().as_micros() as u64;
                hist.lock()
                    .expect("hist")
                    .record(us.max(1))
                    .expect("record");
                ops += 1;
            }
            ops
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client");
    }
    let h = hist.lock().expect("hist");
    let per_write = |now: f64, before: f64| (now - before) / (total.max(1) as f64);
    (
        total as f64 / WRITE_SECONDS,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        Costs {
            commits: per_write(counter("fleet_storage_commits_total"), commits0),
            frames: per_write(counter("fleet_transport_frames_sent_total"), frames0),
        },
    )
}

/// The client counts of the write phase: `FLEET_BENCH_CLIENTS` (comma-separated), or 1,16,64,256.
fn client_counts() -> Vec<usize> {
    std::env::var("FLEET_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64, 256])
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let groups: usize = std::env::var("FLEET_BENCH_GROUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Errors (a node that stops, say) go to stderr; RUST_LOG for more.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing_subscriber::filter::LevelFilter::ERROR.into())
                .from_env_lossy(),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // The process' metrics recorder, for the costs per write.
    let _ = fleet_node::admin::prometheus_handle();
    rt.block_on(async move {
        let ca = CertificateAuthority::generate("bench", Validity::days_from_now(1)).expect("ca");
        let n1 = start(&ca, "n1", vec![]).await;
        n1.fleet.activate("zone-a").await.expect("activate");
        let addr = n1.fleet.local_addr().expect("bound").to_string();
        let n2 = start(&ca, "n2", vec![addr.clone()]).await;
        n2.fleet.activate("zone-b").await.expect("activate");
        let n3 = start(&ca, "n3", vec![addr]).await;
        n3.fleet.activate("zone-c").await.expect("activate");
        let nodes = vec![n1, n2, n3];

        // Group creation, durable, from every node, CREATE_CONCURRENCY at a time.
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..CREATE_CONCURRENCY {
            let fleet = nodes[w % 3].fleet.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if g >= groups {
                        return;
                    }
                    fleet.add_consensus_group(&format!("g{g}"), 3, "kv").await.expect("create");
                }
            }));
        }
        for t in tasks {
            t.await.expect("creator");
        }
        let create_s = started.elapsed().as_secs_f64();
        let create_rate = groups as f64 / create_s;

        let mut write_rows = Vec::new();
        for clients in client_counts() {
            write_rows.push((clients, writes(&nodes, clients, groups).await));
        }

        // Idle: every group quiesces and the storage writers finish moving the write phase's
        // log into segments (background checkpoints); then measure the process's CPU (three
        // nodes share it).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu0 = cpu_seconds();
        let idle = idle_seconds();
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
        let idle_cpu_per_node = (cpu_seconds() - cpu0) / idle / 3.0 * 100.0;
        let rss_per_node = resident_mib() / 3.0;

        // Failover: stop the node that leads the most groups; time until every group that had
        // its leader there accepts a write again.
        let status = nodes[0].fleet.status().await.expect("status");
        let mut by_leader = std::collections::BTreeMap::<String, Vec<String>>::new();
        for g in &status.groups {
            if let Some(l) = &g.leader {
                by_leader.entry(l.clone()).or_default().push(g.entry.name.clone());
            }
        }
        let (victim, led) = by_leader.into_iter().max_by_key(|(_, v)| v.len()).expect("leaders");
        let survivors: Vec<&Node> = nodes.iter().filter(|n| n.fleet.name() != victim).collect();
        let victim_node = nodes.iter().find(|n| n.fleet.name() == victim).expect("victim");
        let stopped = Instant::now();
        victim_node.fleet.shutdown().await.expect("shutdown");
        let mut failover = Histogram::<u64>::new(3).expect("histogram");
        let mut tasks = Vec::new();
        for (i, group) in led.iter().enumerate() {
            let fleet = survivors[i % survivors.len()].fleet.clone();
            let group = group.clone();
            tasks.push(tokio::spawn(async move {
                let cmd = KvCommand::Put { key: "failover".into(), value: Bytes::from_static(b"1") };
                fleet.command::<KvStore>(&group, cmd).await.expect("write after failover");
                stopped.elapsed()
            }));
        }
        for t in tasks {
            let d = t.await.expect("failover write");
            failover.record(d.as_millis().max(1) as u64).expect("record");
        }

        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("fleet benchmark: 3 nodes in one process, 127.0.0.1, QUIC + mTLS, redb with fsync; {cores} cores");
        println!("{:<52}{:>14}", "groups of 3 replicas", groups);
        println!("{:<52}{:>14.0}", "group creation, durable, groups/s", create_rate);
        println!(
            "{:<16}{:>12}{:>12}{:>12}{:>16}{:>16}",
            "clients", "writes/s", "p50 ms", "p99 ms", "fsyncs/write", "frames/write"
        );
        for (c, (ops, p50, p99, costs)) in &write_rows {
            println!(
                "{c:<16}{ops:>12.0}{p50:>12.2}{p99:>12.2}{:>16.2}{:>16.2}",
                costs.commits, costs.frames
            );
        }
        println!("{:<52}{:>14.1}", "idle CPU per node, % of one core", idle_cpu_per_node);
        println!("{:<52}{:>14.0}", "resident memory per node, MiB (process / 3)", rss_per_node);
        println!(
            "{:<52}{:>14}",
            format!("failover: groups led by the stopped node"),
            led.len()
        );
        println!(
            "{:<52}{:>14}",
            "failover p50 / p99 / max, ms",
            format!("{}/{}/{}", failover.value_at_quantile(0.5), failover.value_at_quantile(0.99), failover.max())
        );
        let writes_json: Vec<String> = write_rows
            .iter()
            .map(|(c, (ops, p50, p99, costs))| format!("{{\"clients\":{c},\"ops_per_s\":{ops:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"fsyncs_per_write\":{:.3},\"frames_per_write\":{:.3}}}", costs.commits, costs.frames))
            .collect();
        println!(
            "{{\"bench\":\"fleet\",\"cores\":{cores},\"groups\":{groups},\"create_groups_per_s\":{create_rate:.0},\"writes\":[{}],\"idle_cpu_pct_per_node\":{idle_cpu_per_node:.2},\"rss_mib_per_node\":{rss_per_node:.0},\"failover_groups\":{},\"failover_ms\":{{\"p50\":{},\"p99\":{},\"max\":{}}}}}",
            writes_json.join(","),
            led.len(),
            failover.value_at_quantile(0.5),
            failover.value_at_quantile(0.99),
            failover.max()
        );
        for n in survivors {
            let _ = n.fleet.shutdown().await;
        }
    });
}
