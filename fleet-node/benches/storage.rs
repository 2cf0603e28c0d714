//! Storage benchmark (issue 4): the store's shared write-ahead layout against plain redb with
//! one row per entry keyed `(group, index)`, for 128-byte entries with fsync on.
//!
//! For batches of 1, 64 and 1,024 entries spread round-robin over 1, 100 and 10,000 groups, each
//! layout commits one batch at a time (`Durability::Immediate`) for a bounded time, in rounds of
//! 200 ms that alternate between the layouts (a shared machine's load drifts), and reports
//! entries/s and commits/s (over the time spent in commits) and commit latency p50/p99. A third
//! layout, plain redb writing each batch as one record, is the floor the store builds on.
//! Before measuring, each configuration warms up (not timed) until the store's write-ahead table
//! reaches the size where checkpoints start, or for at most 5 s, and the other layouts write as
//! many batches: the 1,024-entry figures are the steady state with checkpoints included. Then it reports the store's recovery time for
//! 10,000 groups and the file size against the data size.
//!
//! Run: `cargo bench -p fleet-node --bench storage`. The last line of output is one JSON object
//! with every figure. `FLEET_BENCH_SECONDS` changes the time per configuration (default 3);
//! `FLEET_BENCH_ONLY=<batch>x<groups>` runs one configuration (for profiling).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_core::{Command, Entry, GroupId, Payload, ReplicaId};
use fleet_node::storage::{GroupWrite, Store, StoreConfig, WriteBatch};
use redb::{Durability, TableDefinition};

const ENTRY_PAYLOAD_BYTES: usize = 128;
const BATCHES: [usize; 3] = [1, 64, 1024];
const GROUPS: [u64; 3] = [1, 100, 10_000];
const COMMITS_MAX: usize = 20_000;
/// The longest warm-up of the store per configuration (the other layouts get at most three
/// times as long to write as many batches).
const WARMUP_MAX: Duration = Duration::from_secs(5);
const PLAIN: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("log");

struct Figures {
    layout: &'static str,
    batch: usize,
    groups: u64,
    commits: usize,
    entries_per_s: f64,
    commits_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    file_bytes: u64,
    data_bytes: u64,
}

/// Hands out the next entries round-robin over the groups.
struct Stream {
    groups: u64,
    next_group: u64,
    next_index: Vec<u64>,
    payload: Bytes,
    /// Where each group's run is in the batch being built (`usize::MAX`: none yet).
    run_of: Vec<usize>,
}

impl Stream {
    fn new(groups: u64) -> Self {
        let payload: Vec<u8> = (0..ENTRY_PAYLOAD_BYTES)
            .map(|i| (i * 31 + 7) as u8)
            .collect();
        Stream {
            groups,
            next_group: 0,
            next_index: vec![1; groups as usize],
            payload: Bytes::from(payload),
            run_of: vec![usize::MAX; groups as usize],
        }
    }

    /// The next batch as `(group, entries)` runs, one run per group touched.
    fn next_batch(&mut self, batch: usize) -> Vec<(GroupId, Vec<Entry>)> {
        let mut runs: Vec<(GroupId, Vec<Entry>)> = Vec::new();
        for _ in 0..batch {
            let g = self.next_group;
            self.next_group = (self.next_group + 1) % self.groups;
            let index = self.next_index[g as usize];
            self.next_index[g as usize] += 1;
            let entry = Entry {
                term: 1,
                index,
                time: 0,
                payload: Payload::Command(Command {
                    session: None,
                    data: self.payload.clone(),
                }),
            };
            match self.run_of[g as usize] {
                usize::MAX => {
                    self.run_of[g as usize] = runs.len();
                    runs.push((GroupId(g), vec![entry]));
                }
                r => runs[r].1.push(entry),
            }
        }
        for (g, _) in &runs {
            self.run_of[g.0 as usize] = usize::MAX;
        }
        runs
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn figures(
    layout: &'static str,
    batch: usize,
    groups: u64,
    mut lat: Vec<Duration>,
    elapsed: Duration,
    file_bytes: u64,
) -> Figures {
    lat.sort();
    let commits = lat.len();
    Figures {
        layout,
        batch,
        groups,
        commits,
        entries_per_s: (commits * batch) as f64 / elapsed.as_secs_f64(),
        commits_per_s: commits as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        file_bytes,
        data_bytes: (commits * batch * ENTRY_PAYLOAD_BYTES) as u64,
    }
}

fn store_config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    // No idle-time checkpoints: they would run during the other layouts' rounds, unmeasured.
    c.idle_interval = Duration::from_secs(3600);
    // `FLEET_BENCH_WAL_MIB` overrides the write-ahead bound (for experiments).
    if let Some(mib) = std::env::var("FLEET_BENCH_WAL_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        c.wal_bytes_max = mib << 20;
    }
    c
}

fn create_groups(store: &Store, groups: u64) {
    let ids: Vec<u64> = (0..groups).collect();
    for chunk in ids.chunks(4096) {
        let v = chunk
            .iter()
            .map(|&g| (GroupId(g), ReplicaId::new(1, 0), "kv".to_string()))
            .collect();
        store.create_groups(v).unwrap().wait().unwrap();
    }
}

/// One of the layouts being measured, with its database and its stream of entries.
enum Layout {
    Store(Store),
    Plain(redb::Database),
    Record(redb::Database, u64),
}

struct Runner {
    name: &'static str,
    layout: Layout,
    stream: Stream,
    lat: Vec<Duration>,
    /// Time the store's writer spent on background work (checkpoints) after the last commit of
    /// a round: counted in the busy time, so that it is not hidden in another layout's round.
    background: Duration,
    /// Entries written, warm-up included (for the file size against the data size).
    entries_written: u64,
    path: std::path::PathBuf,
}

impl Runner {
    fn new(name: &'static str, dir: &Path, groups: u64) -> Self {
        let (layout, path) = match name {
            "store" => {
                let (store, _) = Store::open(store_config(dir)).unwrap();
                create_groups(&store, groups);
                (Layout::Store(store), dir.join("fleet.redb"))
            }
            "plain redb" => {
                let path = dir.join("plain.redb");
                (Layout::Plain(redb::Database::create(&path).unwrap()), path)
            }
            _ => {
                let path = dir.join("record.redb");
                (
                    Layout::Record(redb::Database::create(&path).unwrap(), 0),
                    path,
                )
            }
        };
        Runner {
            name,
            layout,
            stream: Stream::new(groups),
            lat: Vec::new(),
            background: Duration::ZERO,
            entries_written: 0,
            path,
        }
    }

    /// Commits one batch and records its latency (batch construction is not timed).
    fn commit(&mut self, batch: usize) {
        const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
        let runs = self.stream.next_batch(batch);
        self.entries_written += batch as u64;
        match &mut self.layout {
            Layout::Store(store) => {
                let mut b = WriteBatch::new();
                for (g, entries) in runs {
                    let mut w = GroupWrite::new(g);
                    w.entries = entries;
                    b.push(w);
                }
                let t = Instant::now();
                store.write(b).unwrap();
                self.lat.push(t.elapsed());
            }
            Layout::Plain(db) => {
                let t = Instant::now();
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(Durability::Immediate).unwrap();
                {
                    let mut table = txn.open_table(PLAIN).unwrap();
                    for (g, entries) in &runs {
                        for e in entries {
                            let bytes = postcard::to_stdvec(e).unwrap();
                            table.insert((g.0, e.index), bytes.as_slice()).unwrap();
                        }
                    }
                }
                txn.commit().unwrap();
                self.lat.push(t.elapsed());
            }
            Layout::Record(db, next) => {
                let t = Instant::now();
                let bytes = postcard::to_stdvec(&runs).unwrap();
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(Durability::Immediate).unwrap();
                {
                    let mut table = txn.open_table(RECORDS).unwrap();
                    table.insert(*next, bytes.as_slice()).unwrap();
                }
                txn.commit().unwrap();
                *next += 1;
                self.lat.push(t.elapsed());
            }
        }
    }

    fn busy(&self) -> Duration {
        self.lat.iter().sum::<Duration>() + self.background
    }

    /// Waits until the store's writer is idle (an empty batch queues behind its background work).
    fn drain(&mut self) {
        if let Layout::Store(store) = &self.layout {
            let t = Instant::now();
            store.write(WriteBatch::new()).unwrap();
            self.background += t.elapsed();
        }
    }

    fn finish(self, batch: usize, groups: u64) -> Figures {
        if let Layout::Store(store) = &self.layout {
            eprintln!("    store: {:?}", store.stats());
        }
        let busy = self.busy();
        drop(self.layout);
        let file_bytes = std::fs::metadata(&self.path).unwrap().len();
        let mut f = figures(self.name, batch, groups, self.lat, busy, file_bytes);
        f.data_bytes = self.entries_written * ENTRY_PAYLOAD_BYTES as u64;
        f
    }
}

/// Measures the three layouts for one configuration in interleaved rounds, so that the load of
/// a shared machine drifting over time hits them alike. `elapsed` is the time spent in commits.
fn run_config(dir: &Path, batch: usize, groups: u64, budget: Duration) -> [Figures; 3] {
    const ROUND: Duration = Duration::from_millis(200);
    let mut runners = [
        Runner::new("store", dir, groups),
        Runner::new("plain redb", dir, groups),
        Runner::new("redb one record per commit", dir, groups),
    ];
    // Warm-up, not measured: the store runs until its write-ahead table reaches the size at
    // which checkpoints start (so that the measurement is the steady state, checkpoints
    // included) or for at most WARMUP_MAX; the other layouts then write as many batches.
    let threshold = store_config(dir).wal_bytes_max / 2;
    let started = Instant::now();
    let mut warmup_commits = 0;
    while let Layout::Store(store) = &runners[0].layout {
        if store.stats().wal_bytes >= threshold || started.elapsed() >= WARMUP_MAX {
            break;
        }
        runners[0].commit(batch);
        warmup_commits += 1;
    }
    for r in runners.iter_mut().skip(1) {
        let started = Instant::now();
        for _ in 0..warmup_commits {
            if started.elapsed() >= 3 * WARMUP_MAX {
                break;
            }
            r.commit(batch);
        }
    }
    for r in runners.iter_mut() {
        r.drain();
        r.lat.clear();
        r.background = Duration::ZERO;
    }
    while runners
        .iter()
        .any(|r| r.busy() < budget && r.lat.len() < COMMITS_MAX)
    {
        for r in runners.iter_mut() {
            let start = Instant::now();
            while start.elapsed() < ROUND && r.busy() < budget && r.lat.len() < COMMITS_MAX {
                r.commit(batch);
            }
            r.drain();
        }
    }
    runners.map(|r| r.finish(batch, groups))
}

/// Writes `entries_per_group` entries to each of 10,000 groups (leaving the write-ahead table
/// as the writes leave it), then times a reopen.
fn recovery(dir: &Path) -> (Duration, Duration, u64, u64, u64) {
    const GROUPS_RECOVERY: u64 = 10_000;
    const ENTRIES_PER_GROUP: usize = 100;
    let (store, _) = Store::open(store_config(dir)).unwrap();
    create_groups(&store, GROUPS_RECOVERY);
    let mut stream = Stream::new(GROUPS_RECOVERY);
    for _ in 0..(GROUPS_RECOVERY as usize * ENTRIES_PER_GROUP / 1024) {
        let mut b = WriteBatch::new();
        for (g, entries) in stream.next_batch(1024) {
            let mut w = GroupWrite::new(g);
            w.entries = entries;
            b.push(w);
        }
        store.write(b).unwrap();
    }
    let wal_bytes = store.stats().wal_bytes;
    drop(store);
    let t = Instant::now();
    let (store, report) = Store::open(store_config(dir)).unwrap();
    let with_checks = t.elapsed();
    assert_eq!(report.groups.len(), GROUPS_RECOVERY as usize);
    let entries: u64 = report.groups.iter().map(|g| g.last_index).sum();
    drop(store);
    let mut fast = store_config(dir);
    fast.check_integrity_on_open = false;
    fast.verify_log_on_open = false;
    let t = Instant::now();
    let (store, _) = Store::open(fast).unwrap();
    let without_checks = t.elapsed();
    drop(store);
    let file_bytes = std::fs::metadata(dir.join("fleet.redb")).unwrap().len();
    (with_checks, without_checks, wal_bytes, entries, file_bytes)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported, only this one run.
    let seconds: f64 = std::env::var("FLEET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(seconds);
    let total = Instant::now();
    println!(
        "fleet storage benchmark: {ENTRY_PAYLOAD_BYTES}-byte entries, fsync on, one commit at a time, \
         {seconds} s of commits per layout and configuration (interleaved rounds), medians over commits; machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut all = Vec::new();
    // `FLEET_BENCH_ONLY=1024x10000` runs one configuration (for profiling).
    let only = std::env::var("FLEET_BENCH_ONLY").ok();
    for &groups in &GROUPS {
        for &batch in &BATCHES {
            if only
                .as_ref()
                .is_some_and(|o| *o != format!("{batch}x{groups}"))
            {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let [store, plain, record] = run_config(dir.path(), batch, groups, budget);
            eprintln!(
                "  batch {batch:>5} groups {groups:>6}: store {:>10.0} entries/s, plain {:>10.0} entries/s, one record {:>10.0} entries/s",
                store.entries_per_s, plain.entries_per_s, record.entries_per_s
            );
            all.push((store, plain, record));
        }
    }
    println!();
    println!(
        "| batch | groups | store entries/s | store commits/s | store p50 µs | store p99 µs | plain entries/s | plain commits/s | plain p50 µs | plain p99 µs | ratio | store file/data | plain file/data | one-record entries/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, p, r) in &all {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2} | {:.2} | {:.0} |",
            s.batch,
            s.groups,
            s.entries_per_s,
            s.commits_per_s,
            s.p50_us,
            s.p99_us,
            p.entries_per_s,
            p.commits_per_s,
            p.p50_us,
            p.p99_us,
            s.entries_per_s / p.entries_per_s,
            s.file_bytes as f64 / s.data_bytes as f64,
            p.file_bytes as f64 / p.data_bytes as f64,
            r.entries_per_s,
        );
    }
    if only.is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (rec, rec_fast, wal_bytes, rec_entries, rec_file) = recovery(dir.path());
    println!();
    println!(
        "recovery of 10000 groups ({rec_entries} entries, {:.1} MiB of write-ahead records to replay, file {:.1} MiB): {:.0} ms with the open checks (redb integrity + every segment), {:.0} ms without",
        wal_bytes as f64 / (1 << 20) as f64,
        rec_file as f64 / (1 << 20) as f64,
        rec.as_secs_f64() * 1e3,
        rec_fast.as_secs_f64() * 1e3
    );
    println!("total bench time: {:.0} s", total.elapsed().as_secs_f64());
    let rows: Vec<String> = all
        .iter()
        .flat_map(|(s, p, r)| [s, p, r])
        .map(|f| {
            format!(
                "{{\"layout\":\"{}\",\"batch\":{},\"groups\":{},\"commits\":{},\"entries_per_s\":{:.0},\"commits_per_s\":{:.0},\"p50_us\":{:.0},\"p99_us\":{:.0},\"file_bytes\":{},\"data_bytes\":{}}}",
                f.layout,
                f.batch,
                f.groups,
                f.commits,
                f.entries_per_s,
                f.commits_per_s,
                f.p50_us,
                f.p99_us,
                f.file_bytes,
                f.data_bytes
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"storage\",\"cores\":{},\"entry_payload_bytes\":{ENTRY_PAYLOAD_BYTES},\"results\":[{}],\"recovery_10000_groups\":{{\"entries\":{rec_entries},\"wal_bytes\":{wal_bytes},\"file_bytes\":{rec_file},\"ms_with_checks\":{:.0},\"ms_without_checks\":{:.0}}}}}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rows.join(","),
        rec.as_secs_f64() * 1e3,
        rec_fast.as_secs_f64() * 1e3
    );
}
