//! Transport benchmark (issue 5), on loopback, both ends in this process:
//!
//! 1. Round-trip time of a 64-byte request/response: a one-message Raft frame echoed back over
//!    the fleet transport (and, for reference, a `Transport::request` and its answer, which ride
//!    the Raft stream as frames of their own and wake the receiver's request queue), next to plain
//!    TCP (tokio, `TCP_NODELAY`) with a 4-byte length prefix. p50 and p99.
//! 2. Raft messages per second and MB/s of 128-byte payloads in batched frames from one node to
//!    another, next to TCP + rustls (tokio-rustls, same certificates and ALPN) carrying the same
//!    length-prefixed postcard frames, decoded the same way.
//! 3. CPU time (whole process: sender, receiver and QUIC) to carry the heartbeats of 10,000
//!    groups coalesced in one frame, against one frame per group.
//!
//! Run: `cargo bench -p fleet-node --bench transport`. The last line of output is one JSON
//! object with every figure. `FLEET_BENCH_SECONDS` sets the time of each throughput run
//! (default 3); the whole run stays under a minute on a 2-core machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_node::transport::certs::{CertificateAuthority, Validity};
use fleet_node::transport::wire::{FrameEncoder, FrameLimits, LENGTH_PREFIX_BYTES, decode_frame};
use fleet_node::transport::{
    GroupId, IdentityKind, Inbound, StaticDirectory, Tls, Transport, TransportConfig,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RTT_PAYLOAD_BYTES: usize = 64;
const RTT_WARMUP: usize = 500;
const RTT_SAMPLES: usize = 5_000;
const REQUEST_SAMPLES: usize = 2_000;
const MESSAGE_PAYLOAD_BYTES: usize = 128;
const MESSAGES_PER_BATCH: usize = 1_024;
const HEARTBEAT_GROUPS: u64 = 10_000;
/// The sender waits while this many bytes are queued, so the benchmark measures throughput,
/// not drops.
const SENDER_PENDING_BYTES_MAX: u64 = 8 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    Heartbeat {
        term: u64,
        commit: u64,
    },
    Append {
        term: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

struct Pair {
    n1: Transport<Msg>,
    in1: Inbound<Msg>,
    n2: Transport<Msg>,
    in2: Inbound<Msg>,
    tls2: Tls,
    tls1: Tls,
}

/// A second single-threaded runtime on its own OS thread: the "other machine".
struct Remote {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Remote {
    fn start() -> Remote {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(runtime.handle().clone()).unwrap();
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        Remote {
            handle: handle_rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

async fn pair(remote: &Remote) -> Pair {
    let ca = CertificateAuthority::generate("bench", Validity::days_from_now(1)).unwrap();
    let tls = |name: &str| {
        ca.issue(
            IdentityKind::Node,
            name,
            &["127.0.0.1".into()],
            Validity::days_from_now(1),
        )
        .unwrap()
        .tls()
        .unwrap()
    };
    let config = TransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..TransportConfig::default()
    };
    let (d1, d2) = (
        Arc::new(StaticDirectory::new()),
        Arc::new(StaticDirectory::new()),
    );
    let (tls1, tls2) = (tls("n1"), tls("n2"));
    let (n1, in1) = Transport::bind(config.clone(), tls1.clone(), d1.clone())
        .await
        .unwrap();
    let bind2 = Transport::bind(config, tls2.clone(), d2.clone());
    let (n2, in2) = remote.handle.spawn(bind2).await.unwrap().unwrap();
    d1.insert("n2", n2.local_addr().into());
    d2.insert("n1", n1.local_addr().into());
    Pair {
        n1,
        in1,
        n2,
        in2,
        tls1,
        tls2,
    }
}

struct Percentiles {
    p50_us: f64,
    p99_us: f64,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Percentiles {
        p50_us: at(0.50).as_secs_f64() * 1e6,
        p99_us: at(0.99).as_secs_f64() * 1e6,
    }
}

async fn rtt_fleet(p: &mut Pair, remote: &Remote) -> Percentiles {
    // n2 echoes every frame back to n1.
    let n2 = p.n2.clone();
    let mut in2 = std::mem::replace(&mut p.in2.frames, tokio::sync::mpsc::channel(1).1);
    let echo = remote.handle.spawn(async move {
        while let Some(frame) = in2.recv().await {
            let _ = n2.send(&frame.from, &frame.messages);
        }
        in2
    });
    let ping = vec![(
        GroupId(1),
        Msg::Append {
            term: 1,
            data: vec![7; RTT_PAYLOAD_BYTES],
        },
    )];
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for i in 0..RTT_WARMUP + RTT_SAMPLES {
        let started = Instant::now();
        p.n1.send("n2", &ping).unwrap();
        p.in1.frames.recv().await.unwrap();
        if i >= RTT_WARMUP {
            samples.push(started.elapsed());
        }
    }
    echo.abort();
    let _ = echo.await;
    // Give n2 a fresh inbound queue is not needed: later runs use their own pairs.
    percentiles(samples)
}

async fn rtt_request(p: &mut Pair, remote: &Remote) -> Percentiles {
    let mut requests = std::mem::replace(&mut p.in2.requests, tokio::sync::mpsc::channel(1).1);
    let server = remote.handle.spawn(async move {
        while let Some(request) = requests.recv().await {
            let body = request.body.clone();
            let _ = request.responder.respond(&body).await;
        }
    });
    let body = vec![7u8; RTT_PAYLOAD_BYTES];
    let mut samples = Vec::with_capacity(REQUEST_SAMPLES);
    for i in 0..RTT_WARMUP + REQUEST_SAMPLES {
        let started = Instant::now();
        p.n1.request("n2", &body).await.unwrap();
        if i >= RTT_WARMUP {
            samples.push(started.elapsed());
        }
    }
    server.abort();
    percentiles(samples)
}

async fn rtt_tcp(remote: &Remote) -> Percentiles {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = remote.handle.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buf = [0u8; LENGTH_PREFIX_BYTES + RTT_PAYLOAD_BYTES];
        while stream.read_exact(&mut buf).await.is_ok() {
            if stream.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut message = (RTT_PAYLOAD_BYTES as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&[7; RTT_PAYLOAD_BYTES]);
    let mut buf = [0u8; LENGTH_PREFIX_BYTES + RTT_PAYLOAD_BYTES];
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for i in 0..RTT_WARMUP + RTT_SAMPLES {
        let started = Instant::now();
        stream.write_all(&message).await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        if i >= RTT_WARMUP {
            samples.push(started.elapsed());
        }
    }
    drop(stream);
    let _ = server.await;
    percentiles(samples)
}

fn append_batch() -> Vec<(GroupId, Msg)> {
    (0..MESSAGES_PER_BATCH as u64)
        .map(|g| {
            (
                GroupId(g),
                Msg::Append {
                    term: 5,
                    data: vec![g as u8; MESSAGE_PAYLOAD_BYTES],
                },
            )
        })
        .collect()
}

struct Throughput {
    messages_per_s: f64,
    payload_mb_per_s: f64,
}

impl Throughput {
    fn of(messages: u64, elapsed: Duration) -> Throughput {
        let per_s = messages as f64 / elapsed.as_secs_f64();
        Throughput {
            messages_per_s: per_s,
            payload_mb_per_s: per_s * MESSAGE_PAYLOAD_BYTES as f64 / 1e6,
        }
    }
}

async fn throughput_fleet(p: &mut Pair, remote: &Remote, seconds: f64) -> Throughput {
    let received = Arc::new(AtomicU64::new(0));
    let mut frames = std::mem::replace(&mut p.in2.frames, tokio::sync::mpsc::channel(1).1);
    let counter = received.clone();
    let receiver = remote.handle.spawn(async move {
        let mut buf = Vec::with_capacity(64);
        while frames.recv_many(&mut buf, 64).await > 0 {
            let n: usize = buf.drain(..).map(|f| f.messages.len()).sum();
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let batch = append_batch();
    // Warm up (connection, windows), then measure what arrives in the window.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (n1, batch, stop) = (p.n1.clone(), batch.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if n1.pending_bytes("n2") > SENDER_PENDING_BYTES_MAX {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                    continue;
                }
                n1.send("n2", &batch).unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (start_count, started) = (received.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (end_count, elapsed) = (received.load(Ordering::Relaxed), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    receiver.abort();
    Throughput::of(end_count - start_count, elapsed)
}

async fn throughput_tcp_tls(
    tls_server: &Tls,
    tls_client: &Tls,
    remote: &Remote,
    seconds: f64,
) -> Throughput {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_server.server_config().unwrap()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client.client_config().unwrap()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = FrameLimits {
        frame_bytes_max: TransportConfig::default().frame_bytes_max,
        frame_messages_max: TransportConfig::default().frame_messages_max,
    };
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let receiver = remote.handle.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut stream =
            tokio::io::BufReader::with_capacity(256 * 1024, acceptor.accept(tcp).await.unwrap());
        let mut body = Vec::new();
        loop {
            let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
            if stream.read_exact(&mut prefix).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes(prefix) as usize;
            assert!(len <= limits.frame_bytes_max as usize);
            body.resize(len, 0);
            stream.read_exact(&mut body).await.unwrap();
            let frame = decode_frame::<Msg>(&body, &limits).unwrap();
            counter.fetch_add(frame.messages.len() as u64, Ordering::Relaxed);
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(server_name, tcp).await.unwrap();
    let encoder = FrameEncoder::new("bench", "n1", limits);
    let batch = append_batch();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for frame in encoder.encode(&batch).unwrap().frames {
                    stream.write_all(&frame).await.unwrap();
                }
            }
            stream.shutdown().await.ok();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (start_count, started) = (received.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (end_count, elapsed) = (received.load(Ordering::Relaxed), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let _ = receiver.await;
    Throughput::of(end_count - start_count, elapsed)
}

/// CPU time of this process so far (all threads), from `/proc/self/stat` (utime + stime).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

struct HeartbeatCost {
    coalesced_us_per_round: f64,
    separate_us_per_round: f64,
}

async fn heartbeat_cpu(p: &mut Pair, remote: &Remote) -> HeartbeatCost {
    let heartbeats: Vec<(GroupId, Msg)> = (0..HEARTBEAT_GROUPS)
        .map(|g| {
            (
                GroupId(g),
                Msg::Heartbeat {
                    term: 9,
                    commit: 1_000_000 + g,
                },
            )
        })
        .collect();
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let mut frames = std::mem::replace(&mut p.in2.frames, tokio::sync::mpsc::channel(1).1);
    let receiver = {
        let (received, arrived) = (received.clone(), arrived.clone());
        remote.handle.spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            while frames.recv_many(&mut buf, 1024).await > 0 {
                let n: u64 = buf.drain(..).map(|f| f.messages.len() as u64).sum();
                if received.fetch_add(n, Ordering::Relaxed) + n >= HEARTBEAT_GROUPS {
                    arrived.notify_one();
                }
            }
        })
    };
    let n1 = &p.n1;
    // One round carries every group's heartbeat and waits until all arrived.
    let measure = async |coalesced: bool, min_cpu: Duration| {
        let (cpu_start, mut rounds) = (process_cpu(), 0u64);
        loop {
            received.store(0, Ordering::Relaxed);
            if coalesced {
                n1.send("n2", &heartbeats).unwrap();
            } else {
                for heartbeat in &heartbeats {
                    n1.send("n2", std::slice::from_ref(heartbeat)).unwrap();
                }
            }
            while received.load(Ordering::Relaxed) < HEARTBEAT_GROUPS {
                arrived.notified().await;
            }
            rounds += 1;
            let cpu = process_cpu() - cpu_start;
            if cpu >= min_cpu && rounds >= 3 {
                return cpu.as_secs_f64() * 1e6 / rounds as f64;
            }
        }
    };
    measure(true, Duration::from_millis(100)).await; // warm-up
    let coalesced_us_per_round = measure(true, Duration::from_secs(2)).await;
    let separate_us_per_round = measure(false, Duration::from_secs(3)).await;
    receiver.abort();
    HeartbeatCost {
        coalesced_us_per_round,
        separate_us_per_round,
    }
}

async fn shutdown(p: Pair, remote: &Remote) {
    p.n1.shutdown().await;
    let n2 = p.n2.clone();
    remote
        .handle
        .spawn(async move { n2.shutdown().await })
        .await
        .unwrap();
}

fn main() {
    let seconds: f64 = std::env::var("FLEET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Each end runs on its own single-threaded runtime and OS thread, as two processes would.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let remote = Remote::start();
    runtime.block_on(async {
        let started = Instant::now();
        let mut p = pair(&remote).await;
        let fleet = rtt_fleet(&mut p, &remote).await;
        let request = rtt_request(&mut p, &remote).await;
        let tcp = rtt_tcp(&remote).await;
        shutdown(p, &remote).await;

        let mut p = pair(&remote).await;
        let fleet_tp = throughput_fleet(&mut p, &remote, seconds).await;
        let tls_tp = throughput_tcp_tls(&p.tls2, &p.tls1, &remote, seconds).await;
        shutdown(p, &remote).await;

        let mut p = pair(&remote).await;
        let cost = heartbeat_cpu(&mut p, &remote).await;
        shutdown(p, &remote).await;

        let rtt_ratio = fleet.p50_us / tcp.p50_us;
        let heartbeat_ratio = cost.separate_us_per_round / cost.coalesced_us_per_round;
        println!("fleet transport benchmark — loopback, {cores} cores; each end on its own single-threaded tokio runtime and thread");
        println!();
        println!("{:<52} {:>12} {:>12}", "round trip, 64-byte request/response", "p50 (us)", "p99 (us)");
        println!("{:<52} {:>12.1} {:>12.1}", "fleet: Raft frame echoed (QUIC, mTLS)", fleet.p50_us, fleet.p99_us);
        println!("{:<52} {:>12.1} {:>12.1}", "fleet: Transport::request (frames each way)", request.p50_us, request.p99_us);
        println!("{:<52} {:>12.1} {:>12.1}", "plain TCP (tokio, nodelay)", tcp.p50_us, tcp.p99_us);
        println!("{:<52} {:>12.2}x  (target <= 2.5x)", "fleet frame p50 / TCP p50", rtt_ratio);
        println!();
        println!("{:<52} {:>12} {:>12}", "batched 128-byte messages, 1,024 per frame", "msgs/s", "MB/s");
        println!("{:<52} {:>12.0} {:>12.1}", "fleet (QUIC, mTLS)", fleet_tp.messages_per_s, fleet_tp.payload_mb_per_s);
        println!("{:<52} {:>12.0} {:>12.1}", "TCP + rustls, same frames", tls_tp.messages_per_s, tls_tp.payload_mb_per_s);
        println!("{:<52} (target >= 1,000,000 msgs/s)", "");
        println!();
        println!("{:<52} {:>12}", "CPU per round, heartbeats of 10,000 groups", "us");
        println!("{:<52} {:>12.0}", "coalesced: one frame", cost.coalesced_us_per_round);
        println!("{:<52} {:>12.0}", "separate: one frame per group", cost.separate_us_per_round);
        println!("{:<52} {:>12.1}x  (target >= 50x)", "separate / coalesced", heartbeat_ratio);
        println!();
        println!("(MB/s counts message payload only; CPU is the whole process: sender, receiver, QUIC; run took {:.1} s)", started.elapsed().as_secs_f64());
        println!(
            "{{\"cores\":{cores},\"rtt_fleet_frame_p50_us\":{:.1},\"rtt_fleet_frame_p99_us\":{:.1},\"rtt_fleet_request_p50_us\":{:.1},\"rtt_fleet_request_p99_us\":{:.1},\"rtt_tcp_p50_us\":{:.1},\"rtt_tcp_p99_us\":{:.1},\"rtt_p50_ratio\":{:.2},\"fleet_msgs_per_s\":{:.0},\"fleet_payload_mb_per_s\":{:.1},\"tcp_tls_msgs_per_s\":{:.0},\"tcp_tls_payload_mb_per_s\":{:.1},\"heartbeats_coalesced_cpu_us\":{:.0},\"heartbeats_separate_cpu_us\":{:.0},\"heartbeat_cpu_ratio\":{:.1}}}",
            fleet.p50_us, fleet.p99_us, request.p50_us, request.p99_us, tcp.p50_us, tcp.p99_us, rtt_ratio,
            fleet_tp.messages_per_s, fleet_tp.payload_mb_per_s, tls_tp.messages_per_s, tls_tp.payload_mb_per_s,
            cost.coalesced_us_per_round, cost.separate_us_per_round, heartbeat_ratio
        );
    });
}
