//! A state machine of your own on a three-node fleet, all in one process.
//!
//! The state machine is a counter, like raft_fleet's `JustAnInt`: `Add(n)` and `Set(n)` change it,
//! `Get` reads it. The example makes a CA and a certificate per node in a temporary directory,
//! starts three nodes on 127.0.0.1 (each in its own zone; the second and third join through the
//! first), creates a group of three replicas, runs a command from every node, reads the result
//! from every node, and shuts the fleet down.
//!
//! ```text
//! cargo run -p fleet-node --example counter
//! ```

use std::time::Duration;

use anyhow::Context;
use fleet_core::{SnapshotError, StateMachine};
use fleet_node::runtime::{Fleet, Settings};
use fleet_node::transport::IdentityKind;
use fleet_node::transport::certs::{CertificateAuthority, Validity};
use serde::{Deserialize, Serialize};

/// The replicated state: one integer.
struct Counter(i64);

/// What changes the counter.
#[derive(Debug, Serialize, Deserialize)]
enum CounterCommand {
    /// Adds `n` (wrapping on overflow, so every replica computes the same) and returns the new value.
    Add(i64),
    /// Sets the value to `n` and returns the previous value.
    Set(i64),
}

/// What reads it.
#[derive(Debug, Serialize, Deserialize)]
enum CounterQuery {
    /// The current value.
    Get,
}

impl StateMachine for Counter {
    type Command = CounterCommand;
    type Query = CounterQuery;
    type Output = i64;

    fn new() -> Self {
        Counter(0)
    }

    // Deterministic: no clock, no randomness, no I/O.
    fn command(&mut self, cmd: CounterCommand) -> i64 {
        match cmd {
            CounterCommand::Add(n) => {
                self.0 = self.0.wrapping_add(n);
                self.0
            }
            CounterCommand::Set(n) => std::mem::replace(&mut self.0, n),
        }
    }

    fn query(&self, q: &CounterQuery) -> i64 {
        match q {
            CounterQuery::Get => self.0,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(snapshot: &[u8]) -> Result<Self, SnapshotError> {
        let bytes = snapshot.try_into().map_err(|_| {
            SnapshotError(format!(
                "a counter snapshot is 8 bytes, not {}",
                snapshot.len()
            ))
        })?;
        Ok(Counter(i64::from_le_bytes(bytes)))
    }
}

/// The kind name nodes register the counter under.
const KIND: &str = "counter";
/// The group the example creates.
const GROUP: &str = "visits";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let validity = Validity::days_from_now(1);
    let ca = CertificateAuthority::generate("counter-example", validity)?;
    // Faster timings than the defaults, so the example finishes quickly on loopback.
    let settings = Settings {
        tick: Duration::from_millis(5),
        election_timeout_ticks: 40,
        heartbeat_interval_ticks: 4,
        ..Settings::default()
    };

    let mut fleet: Vec<Fleet> = Vec::new();
    let mut first_address: Option<String> = None;
    for (i, zone) in ["zone-a", "zone-b", "zone-c"].into_iter().enumerate() {
        let name = format!("n{}", i + 1);
        let tls = ca
            .issue(
                IdentityKind::Node,
                &name,
                &["127.0.0.1".to_owned()],
                validity,
            )?
            .tls()?;
        let mut builder = Fleet::builder()
            .name(&name)
            .data_dir(dir.path().join(&name))
            .listen("127.0.0.1:0".parse()?)
            .tls(tls)
            .settings(settings.clone())
            .register::<Counter>(KIND);
        if let Some(first) = &first_address {
            builder = builder.join([first.clone()]);
        }
        let node = builder
            .start()
            .await
            .with_context(|| format!("starting {name}"))?;
        node.activate(zone)
            .await
            .with_context(|| format!("activating {name} in {zone}"))?;
        if first_address.is_none() {
            first_address = Some(address_of(&node)?);
        }
        println!("{name} active in {zone}");
        fleet.push(node);
    }

    let group = fleet[0].add_consensus_group(GROUP, 3, KIND).await?;
    println!("created group {GROUP:?}: {group:?}");

    // A command from every node: the runtime routes each to the group's leader.
    let mut expected = 0;
    for (i, node) in fleet.iter().enumerate() {
        let n = i64::try_from(i)? + 1;
        let value = node
            .command::<Counter>(GROUP, CounterCommand::Add(n))
            .await
            .with_context(|| format!("Add({n}) from {}", node.name()))?;
        expected += n;
        println!("{}: Add({n}) -> {value}", node.name());
    }
    let previous = fleet[2]
        .command::<Counter>(GROUP, CounterCommand::Set(100))
        .await?;
    println!("{}: Set(100) -> previous {previous}", fleet[2].name());
    anyhow::ensure!(
        previous == expected,
        "Set saw {previous}, expected {expected}"
    );

    // Linearizable reads from every node see the last write.
    for node in &fleet {
        let value = node.query::<Counter>(GROUP, CounterQuery::Get).await?;
        println!("{}: Get -> {value}", node.name());
        anyhow::ensure!(value == 100, "{} read {value}, expected 100", node.name());
    }

    for node in fleet.iter().rev() {
        node.shutdown().await?;
    }
    println!("fleet stopped");
    Ok(())
}

/// The address the others join through: the bound address, since no `advertise` was given.
fn address_of(node: &Fleet) -> anyhow::Result<String> {
    node.local_addr()
        .map(|a| a.to_string())
        .with_context(|| format!("{} has no transport", node.name()))
}
