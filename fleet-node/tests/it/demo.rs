//! `fleet-node demo`'s library entry point: three nodes, three groups, and every claim it prints.

use std::time::{Duration, Instant};

use fleet_node::demo::{self, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_three_nodes_and_checks_what_it_prints() {
    let started = Instant::now();
    let report = demo::run(DemoArgs {
        groups: 3,
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..DemoArgs::default()
    })
    .await
    .expect("the demo runs");

    let names: Vec<&str> = report.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let zones: Vec<&str> = report.nodes.iter().map(|n| n.zone.as_str()).collect();
    assert_eq!(zones, ["zone-a", "zone-b", "zone-c"]);
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.address.starts_with("127.0.0.1:")),
        "{:?}",
        report.nodes
    );

    // Every group has a leader, among its three members.
    let groups: Vec<&str> = report.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(groups, ["demo-0", "demo-1", "demo-2"]);
    for g in &report.groups {
        assert_eq!(g.members, ["n1", "n2", "n3"], "{g:?}");
        let leader = g
            .leader
            .as_deref()
            .unwrap_or_else(|| panic!("no leader: {g:?}"));
        assert!(g.members.iter().any(|m| m == leader), "{g:?}");
        assert!(g.term >= 1 && g.commit >= 1, "{g:?}");
    }

    // The value written through n1 reads back through n3, a follower (through n2 and n1 when n3
    // leads every group); the compare-and-set succeeds, and the one still expecting the old value
    // is refused and finds the new one.
    let walk = &report.walk;
    let expected = if walk.leader == "n3" {
        ("n2", "n1")
    } else {
        ("n1", "n3")
    };
    assert_eq!((walk.put_via.as_str(), walk.get_via.as_str()), expected);
    assert_ne!(
        walk.leader, walk.get_via,
        "the read must go through a follower"
    );
    assert_eq!(walk.got.as_ref(), Some(&walk.put_value));
    assert!(walk.cas_succeeded);
    assert!(!walk.stale_cas_succeeded);
    assert_eq!(walk.stale_cas_found.as_deref(), Some(&b"hello again"[..]));
    assert_eq!(walk.last.as_deref(), Some(&b"hello again"[..]));

    // One key per group, read back through another node than the one that wrote it.
    assert_eq!(report.round_trips.len(), 3);
    for t in &report.round_trips {
        assert_ne!(t.written_via, t.read_via, "{t:?}");
        assert_eq!(t.read.as_ref(), Some(&t.written), "{t:?}");
    }

    let admin = report.admin_url.as_deref().expect("--admin was given");
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    assert!(
        !report.data_dir.exists(),
        "{} is left behind",
        report.data_dir.display()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the demo took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_base_port_without_room_for_three_nodes_is_refused() {
    let err = demo::run(DemoArgs {
        base_port: Some(u16::MAX - 1),
        ..DemoArgs::default()
    })
    .await
    .expect_err("65534 leaves room for two nodes only");
    assert!(err.to_string().contains("--base-port"), "{err:#}");
}
