//! A Redis Cluster of the test's own, and the slot bookkeeping the cluster tests need: which
//! master owns a slot, which node replicates it, and a live slot migration.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use super::DEADLINE;
use super::ports::free_port;
use super::redis::Redis;

/// A Redis Cluster of this test's own: `masters` masters (and `replicas` replicas for each),
/// `redis-server --cluster-enabled yes` processes on free ports, joined with
/// `redis-cli --cluster create`. Stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        while nodes.len() < count {
            // The cluster bus listens on port + 10000: both must be free.
            let port = free_port();
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let dir_tag = format!("nodes-{port}.conf");
            let node = Redis::start_on(
                port,
                &["--cluster-enabled", "yes", "--cluster-config-file", &dir_tag, "--cluster-node-timeout", "2000"],
            );
            if let Some(node) = node {
                nodes.push(node);
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        let start = Instant::now();
        // Ready: every node sees the cluster ok and knows every replica.
        let ready = |n: &Redis| {
            n.cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
                && n.cli(&["CLUSTER", "NODES"])
                    .is_some_and(|all| all.lines().filter(|l| l.contains("slave")).count() == masters * replicas)
        };
        while !cluster.nodes.iter().all(ready) {
            assert!(start.elapsed() < DEADLINE * 3, "cluster never reached cluster_state:ok with its replicas");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The slot of a key (or of anything carrying the same `{hash tag}`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).unwrap().trim().parse().unwrap()
    }

    /// `CLUSTER NODES` as seen by the first node, a line of fields per node.
    fn topology(&self) -> Vec<Vec<String>> {
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]).unwrap();
        nodes.lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
    }

    /// The index in `nodes` of the master that owns `slot`.
    pub fn owner_of(&self, slot: u16) -> usize {
        let owns = |fields: &Vec<String>| {
            fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>() == Ok(slot),
            })
        };
        let topology = self.topology();
        self.index_of(topology.iter().find(|f| f[2].contains("master") && owns(f)).expect("a master owns the slot"))
    }

    /// The index in `nodes` of a replica of the master `nodes[master]`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.nodes[master].cli(&["CLUSTER", "MYID"]).unwrap().trim().to_owned();
        let topology = self.topology();
        self.index_of(topology.iter().find(|f| f[3] == id).expect("the master has a replica"))
    }

    /// The index in `nodes` of the node a `CLUSTER NODES` line describes (`ip:port@bus`).
    fn index_of(&self, fields: &[String]) -> usize {
        let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        self.nodes.iter().position(|n| n.port == port).expect("the node is one of ours")
    }

    /// Moves `slot` to `nodes[to]` the way `redis-cli --cluster reshard` does: both ends marked
    /// (IMPORTING / MIGRATING), the keys moved with MIGRATE, then the slot assigned on every
    /// master. `pause` is held in each intermediate state, so traffic meets all of them.
    pub fn migrate_slot(&self, slot: u16, to: usize, pause: Duration) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let id = |i: usize| self.nodes[i].cli(&["CLUSTER", "MYID"]).unwrap().trim().to_owned();
        let (source, target, slot_arg) = (&self.nodes[from], &self.nodes[to], slot.to_string());
        let ok = |node: &Redis, args: &[&str]| {
            let out = node.cli(args).unwrap_or_default();
            assert_eq!(out.trim(), "OK", "{args:?} on port {}", node.port);
        };
        ok(target, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &id(from)]);
        ok(source, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &id(to)]);
        std::thread::sleep(pause);
        loop {
            let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]).unwrap();
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = target.port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            ok(source, &migrate);
        }
        std::thread::sleep(pause);
        let target_id = id(to);
        ok(target, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        ok(source, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        for (i, node) in self.nodes.iter().enumerate() {
            if i != from && i != to && node.is_master() {
                ok(node, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
            }
        }
        assert_eq!(self.owner_of(slot), to, "slot {slot} moved");
    }

    /// The seed nodes, as `redis.url` takes them in cluster mode.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}/", n.port)).collect::<Vec<_>>().join(",")
    }
}
