//! A Redis Cluster whose nodes are hosts of a `Lan` (one namespace each), so a link between a
//! relay and ONE master can be cut while the cluster itself stays whole: the cut is an nftables
//! rule in the relay's namespace, the cluster bus between the nodes is untouched, no failover
//! happens, the master is not killed. (Cutting a master's port on loopback instead would also
//! cut the test's own view of it and any replication link.)

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::DEADLINE;
use super::netns::{Host, Lan, NsRedis};
use super::ports::free_port;
use super::tempdir::TempDir;

pub struct NsCluster {
    pub nodes: Vec<NsRedis>,
    _dirs: Vec<TempDir>,
}

impl NsCluster {
    /// `masters` masters (no replicas), each on a new host of `lan`.
    pub fn start(lan: &mut Lan, masters: usize) -> NsCluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..masters {
            let host: Host = lan.host();
            let dir = TempDir::new("ns-cluster");
            let (dir_arg, bus) = (dir.path().display().to_string(), free_port().to_string());
            let args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--cluster-port", &bus];
            let mut extra = args.to_vec();
            extra.extend(["--dir", &dir_arg]);
            nodes.push(NsRedis::start(&host, &extra));
            dirs.push(dir);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("{}:{}", node.ip, node.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create.output().expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = NsCluster { nodes, _dirs: dirs };
        let start = Instant::now();
        while !cluster.nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok")))
        {
            assert!(start.elapsed() < DEADLINE * 3, "the namespaced cluster never reached cluster_state:ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The seed nodes, as `redis.url` takes them in cluster mode.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// The address of the master that owns the slot of `key` (a user id: its `{uid}` tag).
    pub fn owner_of(&self, key: &str) -> Ipv4Addr {
        let slot: u16 = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).unwrap().trim().parse().unwrap();
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]).unwrap();
        let owns = |range: &str| match range.split_once('-') {
            Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
            None => range.parse::<u16>() == Ok(slot),
        };
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 8 && fields[2].contains("master") && fields[8..].iter().any(|r| owns(r)) {
                return fields[1].split(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no master owns slot {slot}: {nodes}");
    }
}
