//! The `fleet-node run` daemon: its configuration and its life (start, activate, serve, stop).
//!
//! # Configuration
//!
//! Every setting comes from, in this order of precedence: a command-line flag, then a `FLEET_*`
//! environment variable, then the TOML file named by `--config` (or `FLEET_CONFIG`), then the
//! default. The file uses the flags' names with `_` for `-`; a key it does not know is an error
//! that names the key. Durations are human strings (`"150ms"`, `"2s"`).
//!
//! | flag | environment | file key | default |
//! |---|---|---|---|
//! | `--name` | `FLEET_NAME` | `name` | required |
//! | `--data-dir` | `FLEET_DATA_DIR` | `data_dir` | required |
//! | `--listen` | `FLEET_LISTEN` | `listen` | required |
//! | `--advertise` | `FLEET_ADVERTISE` | `advertise` | the bound listen address |
//! | `--zone` | `FLEET_ZONE` | `zone` | required |
//! | `--join a,b` | `FLEET_JOIN=a,b` | `join = ["a", "b"]` | none (found a new fleet) |
//! | `--certs` | `FLEET_CERTS` | `certs` | required |
//! | `--admin` | `FLEET_ADMIN` | `admin` | `127.0.0.1:7080` |
//! | `--log-format` | `FLEET_LOG_FORMAT` | `log_format` | `text` (or `json`) |
//! | `--tick` | `FLEET_TICK` | `tick` | `10ms` |
//! | `--election-timeout` | `FLEET_ELECTION_TIMEOUT` | `election_timeout` | `1s` |
//! | `--heartbeat-interval` | `FLEET_HEARTBEAT_INTERVAL` | `heartbeat_interval` | `100ms` |
//! | `--quiesce-after` | `FLEET_QUIESCE_AFTER` | `quiesce_after` | `200ms` (`0s`: never) |
//! | `--request-timeout` | `FLEET_REQUEST_TIMEOUT` | `request_timeout` | `10s` |
//! | `--workers` | `FLEET_WORKERS` | `workers` | one per two cores, 1 to 4 |
//! | `--cache-mib` | `FLEET_CACHE_MIB` | `cache_mib` | `64` (redb's page cache, MiB) |
//! | `--wal-max-mib` | `FLEET_WAL_MAX_MIB` | `wal_max_mib` | `128` (write-ahead bound, MiB, at least 32) |
//!
//! The Raft timings are whole ticks: a duration is rounded up to the next multiple of `tick`.
//! The election timeout is the lower end of the randomized timeout (drawn in `[t, 2t)`), and must
//! exceed two heartbeat intervals. Relative paths are relative to the working directory.
//! `fleet-node run --print-config ...` prints the effective configuration as a TOML file and
//! exits.
//!
//! # Life
//!
//! `run` starts the node with the built-in `kv` state machine registered, serves the admin
//! endpoint ([`crate::admin`]; `/readyz` answers 503 until the node is active), activates the
//! node in its zone, and stops cleanly on SIGTERM or ctrl-c
//! (admin endpoint first, then the node: the write in flight finishes, storage closes) and
//! returns `Ok`. A node loop that stops on its own (a failed fsync, for one) makes `run` return
//! an error, so a supervisor restarts the process. Logs go to standard error; `RUST_LOG`
//! filters them (default `info`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fleet_core::kv::KvStore;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::admin::AdminServer;
use crate::runtime::{Fleet, FleetError, Settings};
use crate::transport::{IdentityKind, Tls};

/// The largest `--cache-mib` and `--wal-max-mib`: 1 TiB.
const MIB_MAX: u64 = 1 << 20;
/// The smallest `--wal-max-mib`: the store's bound must hold two full commits.
const WAL_MAX_MIB_MIN: u64 = (2 * crate::storage::COMMIT_BYTES_MAX_DEFAULT as u64) >> 20;

/// The admin endpoint's address when none is given: loopback only.
pub const ADMIN_ADDR_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7080);

/// How often the daemon checks that its node loop still runs.
pub const NODE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The longest configuration file read, in bytes: a config is a few hundred bytes; a larger file
/// is not one.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// How the daemon writes its logs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The flags of `fleet-node run`. Each is optional here because it may come from the
/// environment or the file instead; [`RunArgs::resolve`] merges them and says what is missing.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// The node's stable name; it must be the name in the node's certificate.
    #[arg(long, env = "FLEET_NAME")]
    pub name: Option<String>,
    /// Where the node keeps its database and snapshots (created if missing).
    #[arg(long, env = "FLEET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The UDP address to listen on for peers and clients (QUIC), e.g. 0.0.0.0:7000.
    #[arg(long, env = "FLEET_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The address peers dial to reach this node (host:port); defaults to the bound address.
    #[arg(long, env = "FLEET_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// The zone this node is in; placement spreads each group's replicas over zones.
    #[arg(long, env = "FLEET_ZONE")]
    pub zone: Option<String>,
    /// Addresses of existing nodes to join through, comma separated; none to found a new fleet.
    #[arg(
        long,
        env = "FLEET_JOIN",
        value_name = "ADDR,...",
        value_delimiter = ','
    )]
    pub join: Option<Vec<String>>,
    /// Directory with ca.crt, node.crt and node.key (see `fleet-node certs`).
    #[arg(long, env = "FLEET_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// The admin HTTP endpoint's address (/metrics, /healthz, /readyz, /status)
    /// [default: 127.0.0.1:7080].
    #[arg(long, env = "FLEET_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// A TOML file with any of these settings (flags and FLEET_* variables take precedence).
    #[arg(long, env = "FLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "FLEET_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// One tick of the Raft clock [default: 10ms].
    #[arg(long, env = "FLEET_TICK", value_name = "DURATION", value_parser = parse_duration)]
    pub tick: Option<Duration>,
    /// The election timeout, the lower end of its random range [default: 1s].
    #[arg(long, env = "FLEET_ELECTION_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub election_timeout: Option<Duration>,
    /// Time between a leader's heartbeats [default: 100ms].
    #[arg(long, env = "FLEET_HEARTBEAT_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Idle time before a group quiesces; 0s never [default: 200ms].
    #[arg(long, env = "FLEET_QUIESCE_AFTER", value_name = "DURATION", value_parser = parse_duration)]
    pub quiesce_after: Option<Duration>,
    /// How long a command or query may take, retries included [default: 10s].
    #[arg(long, env = "FLEET_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Worker tasks driving the node's groups, 1 to 64 [default: one per two cores, 1 to 4].
    #[arg(long, env = "FLEET_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// redb's page cache, MiB: most of what storage adds to the node's memory [default: 64].
    #[arg(long, env = "FLEET_CACHE_MIB", value_name = "MIB")]
    pub cache_mib: Option<u64>,
    /// The storage write-ahead bound, MiB, at least 32: bounds recovery time and the entries
    /// held in memory until a checkpoint [default: 128].
    #[arg(long, env = "FLEET_WAL_MAX_MIB", value_name = "MIB")]
    pub wal_max_mib: Option<u64>,
    /// Print the effective configuration as TOML (usable as --config) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A human duration (`"150ms"`, `"2s"`, `"1m 30s"`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?}: {e}; write durations like \"150ms\" or \"2s\"")
    })
}

/// The configuration file: every setting optional, unknown keys refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`RunArgs::name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// See [`RunArgs::data_dir`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// See [`RunArgs::listen`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// See [`RunArgs::advertise`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// See [`RunArgs::zone`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// See [`RunArgs::join`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// See [`RunArgs::certs`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<PathBuf>,
    /// See [`RunArgs::admin`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// See [`RunArgs::log_format`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// See [`RunArgs::tick`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "human_duration"
    )]
    pub tick: Option<Duration>,
    /// See [`RunArgs::election_timeout`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "human_duration"
    )]
    pub election_timeout: Option<Duration>,
    /// See [`RunArgs::heartbeat_interval`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "human_duration"
    )]
    pub heartbeat_interval: Option<Duration>,
    /// See [`RunArgs::quiesce_after`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "human_duration"
    )]
    pub quiesce_after: Option<Duration>,
    /// See [`RunArgs::request_timeout`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "human_duration"
    )]
    pub request_timeout: Option<Duration>,
    /// See [`RunArgs::workers`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// See [`RunArgs::cache_mib`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mib: Option<u64>,
    /// See [`RunArgs::wal_max_mib`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_max_mib: Option<u64>,
}

/// `Option<Duration>` as a human string in TOML.
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_error)?.len();
        if len > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!(
                    "the file is {len} bytes; a configuration file is at most {CONFIG_FILE_BYTES_MAX}"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses the text of a configuration file; the error names the offending key and line.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

/// A configuration that cannot be used. These are usage errors: `fleet-node` exits with 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was given nowhere.
    #[error("missing setting: give {flag}, or set {env}, or put `{key}` in the --config file")]
    Missing {
        /// Its flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
        /// Its key in the file.
        key: &'static str,
    },
    /// The file could not be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A value is out of its range, or values contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The daemon's configuration, every source merged.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The node's name.
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The QUIC listen address.
    pub listen: SocketAddr,
    /// The address peers dial, if not the bound one.
    pub advertise: Option<String>,
    /// The node's zone.
    pub zone: String,
    /// Nodes to join through.
    pub join: Vec<String>,
    /// The certificates directory.
    pub certs: PathBuf,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// The log format.
    pub log_format: LogFormat,
    /// The node's settings (durations converted to ticks).
    pub settings: Settings,
}

fn required<T>(
    value: Option<T>,
    flag: &'static str,
    env: &'static str,
    key: &'static str,
) -> Result<T, ConfigError> {
    value.ok_or(ConfigError::Missing { flag, env, key })
}

/// `d` in whole ticks, rounded up; `what` names the setting in errors.
fn ticks(what: &str, d: Duration, tick: Duration) -> Result<u32, ConfigError> {
    let n = d.as_nanos().div_ceil(tick.as_nanos());
    u32::try_from(n).map_err(|_| {
        ConfigError::Invalid(format!(
            "{what} {} is {n} ticks of {}; at most {} ticks",
            humantime::format_duration(d),
            humantime::format_duration(tick),
            u32::MAX
        ))
    })
}

impl RunArgs {
    /// Merges flags and environment (already merged by clap), the `--config` file and the
    /// defaults, and checks the result.
    pub fn resolve(&self) -> Result<DaemonConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let settings = self.settings(&file)?;
        let name = required(
            self.name.clone().or(file.name),
            "--name",
            "FLEET_NAME",
            "name",
        )?;
        let data_dir = required(
            self.data_dir.clone().or(file.data_dir),
            "--data-dir",
            "FLEET_DATA_DIR",
            "data_dir",
        )?;
        let listen = required(
            self.listen.or(file.listen),
            "--listen",
            "FLEET_LISTEN",
            "listen",
        )?;
        let zone = required(
            self.zone.clone().or(file.zone),
            "--zone",
            "FLEET_ZONE",
            "zone",
        )?;
        let certs = required(
            self.certs.clone().or(file.certs),
            "--certs",
            "FLEET_CERTS",
            "certs",
        )?;
        for (what, value) in [("name", &name), ("zone", &zone)] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("the node's {what} is empty")));
            }
        }
        let join: Vec<String> = self
            .join
            .clone()
            .or(file.join)
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        Ok(DaemonConfig {
            name,
            data_dir,
            listen,
            advertise: self.advertise.clone().or(file.advertise),
            zone,
            join,
            certs,
            admin: self.admin.or(file.admin).unwrap_or(ADMIN_ADDR_DEFAULT),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            settings,
        })
    }

    fn settings(&self, file: &FileConfig) -> Result<Settings, ConfigError> {
        let defaults = Settings::default();
        let tick = self.tick.or(file.tick).unwrap_or(defaults.tick);
        if tick.is_zero() {
            return Err(ConfigError::Invalid("tick must be longer than 0s".into()));
        }
        let default_of = |n: u32| defaults.tick * n;
        let election = self
            .election_timeout
            .or(file.election_timeout)
            .unwrap_or(default_of(defaults.election_timeout_ticks));
        let heartbeat = self
            .heartbeat_interval
            .or(file.heartbeat_interval)
            .unwrap_or(default_of(defaults.heartbeat_interval_ticks));
        let quiesce = self
            .quiesce_after
            .or(file.quiesce_after)
            .unwrap_or(default_of(defaults.quiesce_after_ticks));
        let request_timeout = self
            .request_timeout
            .or(file.request_timeout)
            .unwrap_or(defaults.request_timeout);
        let election_timeout_ticks = ticks("election timeout", election, tick)?;
        let heartbeat_interval_ticks = ticks("heartbeat interval", heartbeat, tick)?.max(1);
        if election_timeout_ticks <= 2 * heartbeat_interval_ticks {
            return Err(ConfigError::Invalid(format!(
                "the election timeout ({}) must exceed two heartbeat intervals ({} each); \
                 raise --election-timeout or lower --heartbeat-interval",
                humantime::format_duration(tick * election_timeout_ticks),
                humantime::format_duration(tick * heartbeat_interval_ticks),
            )));
        }
        if request_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "request timeout must be longer than 0s".into(),
            ));
        }
        let workers = self.workers.or(file.workers).unwrap_or(defaults.workers);
        if workers == 0 || workers > crate::runtime::WORKERS_MAX {
            return Err(ConfigError::Invalid(format!(
                "--workers is {workers}; give from 1 to {}",
                crate::runtime::WORKERS_MAX
            )));
        }
        let cache_mib = self
            .cache_mib
            .or(file.cache_mib)
            .unwrap_or(defaults.storage_cache_bytes as u64 >> 20);
        if cache_mib == 0 || cache_mib > MIB_MAX {
            return Err(ConfigError::Invalid(format!(
                "--cache-mib is {cache_mib}; give from 1 to {MIB_MAX}"
            )));
        }
        let wal_max_mib = self
            .wal_max_mib
            .or(file.wal_max_mib)
            .unwrap_or(defaults.storage_wal_bytes_max >> 20);
        if !(WAL_MAX_MIB_MIN..=MIB_MAX).contains(&wal_max_mib) {
            return Err(ConfigError::Invalid(format!(
                "--wal-max-mib is {wal_max_mib}; give from {WAL_MAX_MIB_MIN} (two full storage \
                 commits) to {MIB_MAX}"
            )));
        }
        Ok(Settings {
            tick,
            election_timeout_ticks,
            workers,
            storage_cache_bytes: (cache_mib << 20) as usize,
            storage_wal_bytes_max: wal_max_mib << 20,
            heartbeat_interval_ticks,
            quiesce_after_ticks: ticks("quiesce after", quiesce, tick)?,
            request_timeout,
            ..defaults
        })
    }
}

impl DaemonConfig {
    /// The configuration as a file that [`RunArgs::resolve`] reads back to the same.
    pub fn to_file(&self) -> FileConfig {
        let s = &self.settings;
        FileConfig {
            name: Some(self.name.clone()),
            data_dir: Some(self.data_dir.clone()),
            listen: Some(self.listen),
            advertise: self.advertise.clone(),
            zone: Some(self.zone.clone()),
            join: Some(self.join.clone()),
            certs: Some(self.certs.clone()),
            admin: Some(self.admin),
            log_format: Some(self.log_format),
            tick: Some(s.tick),
            election_timeout: Some(s.tick * s.election_timeout_ticks),
            heartbeat_interval: Some(s.tick * s.heartbeat_interval_ticks),
            quiesce_after: Some(s.tick * s.quiesce_after_ticks),
            request_timeout: Some(s.request_timeout),
            workers: Some(s.workers),
            cache_mib: Some(s.storage_cache_bytes as u64 >> 20),
            wal_max_mib: Some(s.storage_wal_bytes_max >> 20),
        }
    }
}

impl fmt::Display for DaemonConfig {
    /// The configuration as TOML.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = toml::to_string(&self.to_file()).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// Runs `fleet-node run`: resolves the configuration, starts and activates the node, serves the
/// admin endpoint, and returns `Ok` after a clean shutdown on SIGTERM or ctrl-c.
///
/// A [`ConfigError`] (look for it with `downcast_ref`) means the configuration is unusable: a
/// usage error.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    if args.print_config {
        print!("{config}");
        return Ok(());
    }
    init_tracing(config.log_format);
    // Before anything slow, so that a SIGTERM during start-up also stops the node cleanly.
    let mut signals = Signals::install().context("installing the SIGTERM and ctrl-c handlers")?;
    // The caller prints the error (main.rs, to standard error); logging it too would say it twice.
    run_node(&config, &mut signals).await
}

async fn run_node(config: &DaemonConfig, signals: &mut Signals) -> anyhow::Result<()> {
    let tls = load_tls(config)?;
    let mut builder = Fleet::builder()
        .name(&config.name)
        .data_dir(&config.data_dir)
        .listen(config.listen)
        .tls(tls)
        .join(config.join.iter().cloned())
        .settings(config.settings.clone())
        .register::<KvStore>("kv");
    if let Some(advertise) = &config.advertise {
        builder = builder.advertise(advertise);
    }
    info!(
        node = %config.name,
        data_dir = %config.data_dir.display(),
        listen = %config.listen,
        zone = %config.zone,
        join = ?config.join,
        "starting fleet-node {}",
        env!("CARGO_PKG_VERSION")
    );
    let fleet = builder.start().await.with_context(|| {
        format!(
            "starting node {:?} with data directory {}",
            config.name,
            config.data_dir.display()
        )
    })?;

    // The admin endpoint comes up before activation, which may take a while when joining:
    // meanwhile /healthz says the node runs and /readyz says it is not ready yet.
    let admin = match AdminServer::start(fleet.clone(), config.admin).await {
        Ok(admin) => admin,
        Err(e) => {
            let _ = fleet.shutdown().await;
            return Err(e.into());
        }
    };

    let activated = tokio::select! {
        result = fleet.activate(&config.zone) => Some(result),
        signal = signals.recv() => {
            info!(signal, "stopping before the node activated");
            None
        }
    };
    match activated {
        Some(Ok(())) => info!(node = %config.name, zone = %config.zone, "node active"),
        Some(Err(e)) => {
            let _ = admin.shutdown().await;
            let _ = fleet.shutdown().await;
            return Err(e).with_context(|| activate_context(config));
        }
        None => return stop(&fleet, Some(admin)).await,
    }

    tokio::select! {
        signal = signals.recv() => {
            info!(signal, "shutting down");
            stop(&fleet, Some(admin)).await
        }
        e = node_stopped(&fleet) => {
            let _ = admin.shutdown().await;
            Err(anyhow::anyhow!(
                "the node loop stopped on its own: {e}; see the log above for why, then restart the node"
            ))
        }
    }
}

fn activate_context(config: &DaemonConfig) -> String {
    if config.join.is_empty() {
        format!(
            "activating node {:?} in zone {:?}",
            config.name, config.zone
        )
    } else {
        format!(
            "activating node {:?} in zone {:?} through {}; check that one of them runs and \
             trusts this node's CA",
            config.name,
            config.zone,
            config.join.join(", ")
        )
    }
}

/// Stops the admin endpoint, then the node.
async fn stop(fleet: &Fleet, admin: Option<AdminServer>) -> anyhow::Result<()> {
    if let Some(admin) = admin
        && let Err(e) = admin.shutdown().await
    {
        warn!(error = %e, "the admin endpoint did not stop cleanly");
    }
    fleet
        .shutdown()
        .await
        .context("shutting the node down (storage may need recovery on the next start)")?;
    info!("stopped");
    Ok(())
}

/// Resolves when the node loop no longer answers because it stopped.
async fn node_stopped(fleet: &Fleet) -> FleetError {
    let mut interval = tokio::time::interval(NODE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // Busy or any other answer means the loop still runs.
        if let Err(e @ (FleetError::Shutdown | FleetError::Storage(_))) = fleet.status().await {
            return e;
        }
    }
}

fn load_tls(config: &DaemonConfig) -> anyhow::Result<Tls> {
    let dir = &config.certs;
    let tls = Tls::from_dir(dir).with_context(|| {
        format!(
            "loading the node's certificates from {} (ca.crt, node.crt, node.key; make them with \
             `fleet-node certs init` and `fleet-node certs node`)",
            dir.display()
        )
    })?;
    let identity = tls.identity();
    if identity.kind != IdentityKind::Node || identity.name != config.name {
        anyhow::bail!(
            "the certificate in {} is for {}, not for node {:?}; issue one with `fleet-node certs \
             node --name {}`",
            dir.display(),
            identity.uri(),
            config.name,
            config.name
        );
    }
    Ok(tls)
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`). A second call (tests that
/// run the daemon twice in one process) keeps the first subscriber.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;

    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// SIGTERM and ctrl-c (SIGINT), installed once, received as often as they come.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
