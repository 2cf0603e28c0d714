//! `fleet-node`: the fleet daemon.
//!
//! This file only parses the command line and dispatches to the library (`run` to
//! `fleet_node::daemon`, `demo` to `fleet_node::demo`); exit code 0 on success, 1 on error, 2 on
//! a usage error (clap's, or an unusable configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fleet_node::daemon::{self, ConfigError, RunArgs};
use fleet_node::demo::{self, DemoArgs};
use fleet_node::transport::IdentityKind;
use fleet_node::transport::certs::{
    CA_VALIDITY_DAYS_DEFAULT, CertificateAuthority, LEAF_VALIDITY_DAYS_DEFAULT, Validity,
};

/// The daemon's allocator: jemalloc (as TiKV), not glibc's malloc. The storage writer thread frees
/// what the node's workers allocated and the other way round; with glibc's malloc that cost about
/// 9% of all CPU at 64 clients in the fleet benchmark. Interleaved runs (docs/runtime.md): CPU per
/// write 164-167 us against 180-184 at 64 clients; group creation and memory within the noise.
/// mimalloc was measured too and cost group creation a third.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The fleet daemon: many named Raft groups per node.
#[derive(Debug, Parser)]
#[command(name = "fleet-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: start it, activate it in its zone, serve until SIGTERM or ctrl-c.
    ///
    /// Every flag may also be set by its FLEET_* environment variable or in the --config file
    /// (flags win over the environment, which wins over the file).
    Run(Box<RunArgs>),
    /// Create the cluster CA and issue node and client certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run a three-node fleet in this process, with nothing to set up: create groups, write and
    /// read keys through different nodes, print the groups, stop.
    ///
    /// Certificates are made in memory and data goes to a new temporary directory, removed at
    /// the end. Logs (warnings only, by default) go to standard error; RUST_LOG filters them.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA (Ed25519): writes ca.crt and ca.key (mode 0600) into --out.
    Init {
        /// The cluster's name; every certificate the CA issues names it.
        #[arg(long)]
        cluster: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = CA_VALIDITY_DAYS_DEFAULT)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate: writes ca.crt, node.crt and node.key into --out.
    Node {
        /// The node's name (its identity is fleet://<cluster>/node/<name>).
        #[arg(long)]
        name: String,
        /// Host names or IP addresses peers dial this node by, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<String>,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Issue a client certificate: writes ca.crt, client.crt and client.key into --out.
    Client {
        /// The client's name (its identity is fleet://<cluster>/client/<name>).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// Directory holding the CA (ca.crt and ca.key).
    #[arg(long)]
    ca: PathBuf,
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = LEAF_VALIDITY_DAYS_DEFAULT)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Certs(command) => certs(command),
        Command::Demo(args) => run_demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(daemon::run(args))
}

fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    init_demo_tracing();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(demo::run(args)).map(|_report| ())
}

/// Logs to standard error, filtered by `RUST_LOG` (default: warnings), so the demo's own output
/// stays readable.
fn init_demo_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;

    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    let written = match command {
        CertsCommand::Init {
            cluster,
            out,
            days,
            force,
        } => CertificateAuthority::generate(&cluster, Validity::days_from_now(days))
            .context("creating the CA")?
            .write(&out, force)?,
        CertsCommand::Node { name, addr, issue } => {
            issue_certificate(IdentityKind::Node, &name, &addr, issue)?
        }
        CertsCommand::Client { name, issue } => {
            issue_certificate(IdentityKind::Client, &name, &[], issue)?
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn issue_certificate(
    kind: IdentityKind,
    name: &str,
    hosts: &[String],
    args: IssueArgs,
) -> anyhow::Result<Vec<PathBuf>> {
    let ca = CertificateAuthority::load(&args.ca)
        .with_context(|| format!("loading the CA from {}", args.ca.display()))?;
    let issued = ca
        .issue(kind, name, hosts, Validity::days_from_now(args.days))
        .with_context(|| format!("issuing a {} certificate for {name:?}", kind.as_str()))?;
    Ok(issued.write(&args.out, args.force)?)
}
