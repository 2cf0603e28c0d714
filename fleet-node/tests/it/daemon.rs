//! The daemon: configuration precedence and errors, the admin endpoint of a single node, and
//! `fleet-node run` as a child process that stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use fleet_core::kv::KvStore;
use fleet_node::admin::AdminServer;
use fleet_node::daemon::{ConfigError, FileConfig, LogFormat, RunArgs};
use fleet_node::runtime::{Fleet, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-node");

/// How long any one wait in these tests may take.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// `fleet-node` with no FLEET_* variable inherited from the test's environment.
fn fleet_node() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("running fleet-node")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `run --print-config` with these extra arguments and environment: the effective configuration.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> FileConfig {
    let out = output(
        fleet_node()
            .args(["run", "--print-config"])
            .args(args)
            .envs(env.iter().copied()),
    );
    assert!(out.status.success(), "fleet-node failed: {}", stderr(&out));
    let text = String::from_utf8(out.stdout).expect("UTF-8 config");
    FileConfig::parse(&text)
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{text}"))
}

#[test]
fn config_precedence_is_flags_then_env_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        r#"
name = "n-file"
data_dir = "/var/lib/fleet-file"
listen = "127.0.0.1:7100"
zone = "zone-file"
certs = "/etc/fleet-file"
admin = "127.0.0.1:9103"
tick = "5ms"
election_timeout = "900ms"
heartbeat_interval = "70ms"
log_format = "json"
workers = 3
cache_mib = 32
wal_max_mib = 64
"#,
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let got = print_config(
        &[
            "--config",
            config,
            "--zone",
            "zone-flag",
            "--heartbeat-interval",
            "50ms",
            "--certs",
            "/etc/fleet-flag",
        ],
        &[
            ("FLEET_ZONE", "zone-env"),
            ("FLEET_ADMIN", "127.0.0.1:9102"),
            ("FLEET_LISTEN", "127.0.0.1:7200"),
            ("FLEET_HEARTBEAT_INTERVAL", "60ms"),
            ("FLEET_ELECTION_TIMEOUT", "700ms"),
            ("FLEET_JOIN", "10.0.0.1:7000,10.0.0.2:7000"),
            ("FLEET_CACHE_MIB", "40"),
        ],
    );
    let ms = Duration::from_millis;
    // Flag over env over file.
    assert_eq!(got.zone.as_deref(), Some("zone-flag"));
    assert_eq!(got.heartbeat_interval, Some(ms(50)));
    assert_eq!(got.certs.as_deref(), Some(Path::new("/etc/fleet-flag")));
    // Env over file.
    assert_eq!(got.admin, Some("127.0.0.1:9102".parse().unwrap()));
    assert_eq!(got.listen, Some("127.0.0.1:7200".parse().unwrap()));
    assert_eq!(got.election_timeout, Some(ms(700)));
    assert_eq!(
        got.join,
        Some(vec!["10.0.0.1:7000".to_owned(), "10.0.0.2:7000".to_owned()])
    );
    // File over default.
    assert_eq!(got.name.as_deref(), Some("n-file"));
    assert_eq!(
        got.data_dir.as_deref(),
        Some(Path::new("/var/lib/fleet-file"))
    );
    assert_eq!(got.tick, Some(ms(5)));
    assert_eq!(got.log_format, Some(LogFormat::Json));
    assert_eq!(got.workers, Some(3));
    assert_eq!(got.wal_max_mib, Some(64));
    // Env over file.
    assert_eq!(got.cache_mib, Some(40));
    // Defaults.
    assert_eq!(got.request_timeout, Some(Duration::from_secs(10)));
    assert_eq!(got.quiesce_after, Some(ms(200)));
    assert_eq!(got.advertise, None);

    // The printed configuration is a config file that reads back to itself.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, toml::to_string(&got).unwrap()).unwrap();
    assert_eq!(
        print_config(&["--config", printed.to_str().unwrap()], &[]),
        got
    );
}

/// Parses `fleet-node run` flags in process (no environment involved unless FLEET_* is set).
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

#[test]
fn settings_convert_to_whole_ticks_rounding_up_and_default_sanely() {
    let args = |extra: &[&str]| {
        let base = [
            "fleet-node",
            "--name",
            "n1",
            "--data-dir",
            "d",
            "--listen",
            "127.0.0.1:0",
            "--zone",
            "z",
            "--certs",
            "c",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
            .expect("valid flags")
            .run
    };
    let config = args(&[
        "--tick",
        "4ms",
        "--election-timeout",
        "1s",
        "--heartbeat-interval",
        "30ms",
    ])
    .resolve()
    .unwrap();
    assert_eq!(config.settings.tick, Duration::from_millis(4));
    assert_eq!(config.settings.election_timeout_ticks, 250);
    assert_eq!(
        config.settings.heartbeat_interval_ticks, 8,
        "30ms in 4ms ticks rounds up"
    );
    assert_eq!(
        config.admin,
        "127.0.0.1:7080".parse::<SocketAddr>().unwrap(),
        "loopback by default"
    );

    let defaults = args(&[]).resolve().unwrap();
    let d = Settings::default();
    assert_eq!(
        (
            defaults.settings.tick,
            defaults.settings.election_timeout_ticks,
            defaults.settings.heartbeat_interval_ticks
        ),
        (d.tick, d.election_timeout_ticks, d.heartbeat_interval_ticks)
    );
    assert_eq!(defaults.settings.quiesce_after_ticks, d.quiesce_after_ticks);
    assert_eq!(defaults.settings.workers, d.workers);
    assert_eq!(defaults.log_format, LogFormat::Text);
    assert_eq!(
        args(&["--workers", "2"])
            .resolve()
            .unwrap()
            .settings
            .workers,
        2
    );
    let none = args(&["--workers", "0"]).resolve().unwrap_err().to_string();
    assert!(none.contains("--workers is 0"), "{none}");

    // Storage memory: the defaults are the store's own, the flags reach the settings, and
    // values the store cannot work with are refused by flag name.
    let store = fleet_node::storage::StoreConfig::new("unused");
    assert_eq!(
        defaults.settings.storage_cache_bytes,
        store.redb_cache_bytes
    );
    assert_eq!(defaults.settings.storage_wal_bytes_max, store.wal_bytes_max);
    let sized = args(&["--cache-mib", "16", "--wal-max-mib", "256"])
        .resolve()
        .unwrap()
        .settings;
    assert_eq!(
        (sized.storage_cache_bytes, sized.storage_wal_bytes_max),
        (16 << 20, 256 << 20)
    );
    let small = args(&["--wal-max-mib", "16"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(small.contains("--wal-max-mib is 16"), "{small}");
    let zero = args(&["--cache-mib", "0"])
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(zero.contains("--cache-mib is 0"), "{zero}");

    let err = args(&[
        "--election-timeout",
        "100ms",
        "--heartbeat-interval",
        "50ms",
    ])
    .resolve()
    .unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("--heartbeat-interval"), "{err}");
}

/// Runs `fleet-node run --print-config` expecting a usage error; returns its message.
fn usage_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = output(
        fleet_node()
            .args(["run", "--print-config"])
            .args(args)
            .envs(env.iter().copied()),
    );
    let message = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a usage error, got {:?}: {message}",
        out.status
    );
    message
}

#[test]
fn bad_configuration_is_a_usage_error_that_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let complete = [
        "--name",
        "n1",
        "--data-dir",
        "d",
        "--listen",
        "127.0.0.1:0",
        "--zone",
        "z",
        "--certs",
        "c",
    ];

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "tick = \"10ms\"\nelection_timout = \"1s\"\n").unwrap();
    let message = usage_error(&["--config", unknown.to_str().unwrap()], &[]);
    assert!(
        message.contains("election_timout") && message.contains("unknown field"),
        "{message}"
    );
    assert!(
        message.contains("unknown.toml"),
        "names the file: {message}"
    );

    let bad_duration = dir.path().join("bad.toml");
    std::fs::write(&bad_duration, "tick = \"fast\"\n").unwrap();
    let message = usage_error(&["--config", bad_duration.to_str().unwrap()], &[]);
    assert!(
        message.contains("tick") && message.contains("\"fast\"") && message.contains("150ms"),
        "{message}"
    );

    let message = usage_error(&complete, &[("FLEET_ELECTION_TIMEOUT", "soon")]);
    assert!(
        message.contains("soon") && message.contains("election"),
        "{message}"
    );

    let mut flags = complete.to_vec();
    flags.extend(["--heartbeat-interval", "1 parsec"]);
    let message = usage_error(&flags, &[]);
    assert!(
        message.contains("--heartbeat-interval") && message.contains("1 parsec"),
        "{message}"
    );

    let message = usage_error(
        &[
            "--name",
            "n1",
            "--data-dir",
            "d",
            "--listen",
            "127.0.0.1:0",
            "--certs",
            "c",
        ],
        &[],
    );
    assert!(
        message.contains("--zone") && message.contains("FLEET_ZONE") && message.contains("`zone`"),
        "{message}"
    );

    let missing = dir.path().join("missing.toml");
    let message = usage_error(&["--config", missing.to_str().unwrap()], &[]);
    assert!(message.contains("missing.toml"), "{message}");
}

/// One HTTP/1.0 GET: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(WAIT_MAX, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} took longer than {WAIT_MAX:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head:?}"));
    (code, body.to_owned())
}

/// Polls `path` until it answers `code`, for at most [`WAIT_MAX`].
async fn wait_for(addr: SocketAddr, path: &str, code: u16) -> String {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (got, body) = get(addr, path).await;
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} ({body:?}) after {WAIT_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `f`, failing the test if it takes longer than [`WAIT_MAX`].
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_MAX, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT_MAX:?}"))
}

#[tokio::test]
async fn admin_endpoint_reports_health_readiness_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let start = Fleet::builder()
        .name("n1")
        .data_dir(dir.path())
        .register::<KvStore>("kv")
        .start();
    let fleet = bounded("start", start).await.unwrap();
    let admin = AdminServer::start(fleet.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = admin.local_addr();
    assert_ne!(addr.port(), 0);

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "not ready before activation: {body}");
    assert!(body.contains("not ready"), "{body}");

    bounded("activate", fleet.activate("zone-a")).await.unwrap();
    wait_for(addr, "/readyz", 200).await;

    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    assert_eq!(status["node"], "n1");
    let nodes = status["nodes"].as_array().expect("a list of nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n["entry"]["name"] == "n1" && n["entry"]["zone"] == "zone-a"),
        "{body}"
    );

    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# TYPE fleet_build_info gauge"), "{body}");
    // Activation wrote the meta group's first entries: storage published its write-ahead size.
    assert!(
        body.lines().any(|l| l
            .strip_prefix("fleet_storage_wal_bytes ")
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)),
        "{body}"
    );
    assert!(
        body.contains("fleet_admin_requests_total{path=\"/healthz\"}"),
        "{body}"
    );
    assert!(
        body.lines()
            .filter(|l| !l.is_empty())
            .all(|l| l.starts_with('#') || l.starts_with("fleet_")),
        "{body}"
    );
    assert_eq!(get(addr, "/nope").await.0, 404);

    // A stopped node loop is unhealthy.
    bounded("shutdown", fleet.shutdown()).await.unwrap();
    let (code, body) = get(addr, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(get(addr, "/readyz").await.0, 503);
    // No check that the port is closed afterwards: another test may bind it at once, and a
    // connect to a free loopback port can even connect to itself.
    bounded("admin shutdown", admin.shutdown()).await.unwrap();
}

/// Kills the child if the test fails before it exits.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn certs(dir: &Path, node: &str) {
    let ca = dir.join("ca");
    let node_dir = dir.join(node);
    let out = output(
        fleet_node()
            .args(["certs", "init", "--cluster", "test", "--out"])
            .arg(&ca),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = output(
        fleet_node()
            .args([
                "certs",
                "node",
                "--name",
                node,
                "--addr",
                "127.0.0.1",
                "--ca",
            ])
            .arg(&ca)
            .arg("--out")
            .arg(&node_dir),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn daemon_serves_admin_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "n1");
    let child = fleet_node()
        .args([
            "run",
            "--name",
            "n1",
            "--listen",
            "127.0.0.1:0",
            "--zone",
            "zone-a",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--certs")
        .arg(dir.path().join("n1"))
        .env("FLEET_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting fleet-node run");
    let mut child = ChildGuard(child);

    // The bound admin address, from the JSON log line that announces it.
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT_MAX;
    let mut seen = Vec::new();
    let admin: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no admin address logged within {WAIT_MAX:?}: {seen:#?}"));
        let log: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if let Some(addr) = log["fields"]["admin"].as_str() {
            break addr.parse().unwrap();
        }
        seen.push(line);
    };

    assert_eq!(wait_for(admin, "/healthz", 200).await, "ok\n");
    wait_for(admin, "/readyz", 200).await;

    let pid = child.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("running kill");
    assert!(kill.success());
    let deadline = Instant::now() + WAIT_MAX;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "fleet-node did not exit within {WAIT_MAX:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log: {rest:#?}"
    );
}
