//! `fleet-node`: the fleet daemon.

fn main() -> anyhow::Result<()> {
    Ok(())
}
