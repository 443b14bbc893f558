//! The three-node NATS JetStream cluster harness (`common::nats`) on its own:
//! it forms, keeps a meta leader when a node dies, and takes the node back. Without
//! `nats-server` the tests install the pinned one first, and fail if they cannot: none
//! passes without running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::{Duration, Instant};

use common::nats::{require_nats, NatsCluster};

const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn cluster_forms_with_jetstream_on_every_node() {
    let bin = require_nats();
    let cluster = NatsCluster::start(&bin);

    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    for (i, url) in urls.iter().enumerate() {
        assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
        assert_eq!(*url, cluster.url(i));
    }

    let mut leaders = Vec::new();
    for i in 0..3 {
        let (status, body) = cluster.monitor(i, "/varz").unwrap();
        assert_eq!(status, 200, "{body}");
        let varz: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(varz["server_name"], cluster.name(i));
        assert_eq!(varz["cluster"]["name"], "bc-test", "{varz:#}");

        let jsz = cluster.jsz(i).unwrap();
        let config = &jsz["config"];
        assert_eq!(
            config["sync_always"], true,
            "sync_interval: always not in effect: {jsz:#}"
        );
        let store = config["store_dir"].as_str().unwrap();
        assert!(store.starts_with(cluster.dir().to_str().unwrap()), "{store}");

        let meta = cluster.meta(i).unwrap();
        assert_eq!(meta.cluster_size, 3, "{meta:?}");
        // `replicas` lists the peers other than the node itself.
        let mut peers: Vec<&str> = meta.replicas.iter().map(|(n, _)| n.as_str()).collect();
        peers.push(cluster.name(i));
        peers.sort_unstable();
        assert_eq!(peers, ["n1", "n2", "n3"], "{meta:?}");
        leaders.push(meta.leader.unwrap());
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "nodes disagree on the leader: {leaders:?}"
    );
    let leader = cluster.meta_leader(&[0, 1, 2]).unwrap();
    assert_eq!(leader, leaders[0]);
}

#[test]
fn cluster_survives_a_killed_node_and_takes_it_back() {
    let bin = require_nats();
    let mut cluster = NatsCluster::start(&bin);
    let store_n2 = cluster.dir().join("n2-store");
    assert!(store_n2.join("jetstream").is_dir());

    // n2 dies; n1 and n3 keep (or elect) a leader between them.
    cluster.kill(1);
    assert!(!cluster.is_running(1));
    assert!(cluster.monitor(1, "/healthz").is_none(), "a killed node answered");
    let began = Instant::now();
    let leader = cluster.wait_meta_leader(&[0, 2], ELECTION_TIMEOUT);
    eprintln!(
        "n2 killed: n1 and n3 agree on leader {leader} after {:.1?}",
        began.elapsed()
    );
    assert!(leader == "n1" || leader == "n3", "{leader}");

    // n2 comes back on the same ports and store and catches up.
    cluster.restart(1);
    assert!(cluster.is_running(1));
    cluster.wait_meta_leader(&[0, 1, 2], ELECTION_TIMEOUT);

    // The leader itself dies: the other two elect a new one.
    let leader = cluster.meta_leader(&[0, 1, 2]).unwrap();
    let dead = (0..3).find(|&i| cluster.name(i) == leader).unwrap();
    let live: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    cluster.kill(dead);
    let began = Instant::now();
    let new_leader = cluster.wait_meta_leader(&live, ELECTION_TIMEOUT);
    eprintln!(
        "leader {leader} killed: new leader {new_leader} after {:.1?}",
        began.elapsed()
    );
    assert_ne!(new_leader, leader);

    cluster.restart(dead);
    cluster.wait_meta_leader(&[0, 1, 2], ELECTION_TIMEOUT);
}

/// A NATS test that cannot have its `nats-server` fails, and says how to fix it: it never
/// passes without running. Played by running one of this file's tests again, as a child
/// process, with `NATS_SERVER` naming a binary that does not exist.
#[test]
fn a_nats_test_without_nats_server_fails_and_says_how_to_fix_it() {
    let missing = tempfile::tempdir().unwrap().path().join("no-nats-server");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cluster_forms_with_jetstream_on_every_node", "--nocapture"])
        .env("NATS_SERVER", &missing)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it passed without running:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 failed"), "{stdout}");
    assert!(
        stderr.contains("not a file") && stderr.contains("install-nats.sh"),
        "{stderr}"
    );
}
