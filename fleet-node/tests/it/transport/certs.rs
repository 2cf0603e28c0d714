//! `fleet-node certs init|node|client` and `Tls::from_dir`: files, modes, no silent overwrite,
//! and certificates that actually connect.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use fleet_node::transport::{
    GroupId, IdentityKind, StaticDirectory, Tls, Transport, TransportError,
};

use super::support::{Msg, config};

fn fleet_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-node"))
        .args(args)
        .output()
        .expect("fleet-node runs")
}

fn ok(args: &[&str]) -> String {
    let out = fleet_node(args);
    assert!(
        out.status.success(),
        "fleet-node {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_commands_write_the_files_and_never_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    let out = ok(&["certs", "init", "--cluster", "prod", "--out", ca_s]);
    assert!(out.contains("ca.crt") && out.contains("ca.key"), "{out}");
    assert_eq!(mode(&ca.join("ca.key")), 0o600);

    let again = fleet_node(&["certs", "init", "--cluster", "prod", "--out", ca_s]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    let before = std::fs::read(ca.join("ca.key")).unwrap();
    assert_eq!(
        before,
        std::fs::read(ca.join("ca.key")).unwrap(),
        "untouched"
    );

    let n1 = dir.path().join("n1");
    ok(&[
        "certs",
        "node",
        "--name",
        "n1",
        "--addr",
        "127.0.0.1,localhost",
        "--ca",
        ca_s,
        "--out",
        n1.to_str().unwrap(),
    ]);
    assert_eq!(mode(&n1.join("node.key")), 0o600);
    assert!(n1.join("ca.crt").exists() && n1.join("node.crt").exists());
    let again = fleet_node(&[
        "certs",
        "node",
        "--name",
        "n1",
        "--addr",
        "127.0.0.1",
        "--ca",
        ca_s,
        "--out",
        n1.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    ok(&[
        "certs",
        "node",
        "--name",
        "n1",
        "--addr",
        "127.0.0.1",
        "--ca",
        ca_s,
        "--out",
        n1.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(mode(&n1.join("node.key")), 0o600);

    let cli = dir.path().join("cli");
    ok(&[
        "certs",
        "client",
        "--name",
        "ops",
        "--ca",
        ca_s,
        "--out",
        cli.to_str().unwrap(),
    ]);
    let tls = Tls::from_dir(&cli).unwrap();
    assert_eq!(tls.identity().kind, IdentityKind::Client);
    assert_eq!(tls.identity().uri(), "fleet://prod/client/ops");

    // Usage errors exit 2; bad names exit 1 with a reason.
    assert_eq!(
        fleet_node(&["certs", "node", "--name", "n2"]).status.code(),
        Some(2)
    );
    let bad = fleet_node(&[
        "certs",
        "client",
        "--name",
        "a/b",
        "--ca",
        ca_s,
        "--out",
        cli.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must be 1 to 64 ASCII letters"));

    // A node directory without certificates says what to do.
    let error = Tls::from_dir(dir.path()).unwrap_err();
    assert!(matches!(error, TransportError::Certificate(_)), "{error}");
    assert!(
        error.to_string().contains("fleet-node certs node"),
        "{error}"
    );
}

#[tokio::test]
async fn certificates_made_by_the_cli_connect_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    ok(&["certs", "init", "--cluster", "prod", "--out", ca_s]);
    for name in ["n1", "n2"] {
        let out = dir.path().join(name);
        ok(&[
            "certs",
            "node",
            "--name",
            name,
            "--addr",
            "127.0.0.1",
            "--ca",
            ca_s,
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    let start = |name: &str| {
        let tls = Tls::from_dir(dir.path().join(name)).unwrap();
        assert_eq!(tls.identity().uri(), format!("fleet://prod/node/{name}"));
        async move {
            let directory = Arc::new(StaticDirectory::new());
            let (t, inbound) = Transport::<Msg>::bind(config(), tls, directory.clone())
                .await
                .unwrap();
            (t, inbound, directory)
        }
    };
    let (t1, _in1, d1) = start("n1").await;
    let (t2, mut in2, d2) = start("n2").await;
    d1.insert("n2", t2.local_addr().into());
    d2.insert("n1", t1.local_addr().into());
    let hb = vec![(GroupId(3), Msg::Heartbeat { term: 1, commit: 2 })];
    t1.send("n2", &hb).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), in2.frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.messages, hb);
}
