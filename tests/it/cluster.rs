//! Redis Cluster mode: users spread over every master, sharded pub/sub, and recovery of the
//! subscription link after every node dropped it (the resubscription redis-rs 1.8.1 gets wrong
//! when one node owns channels in several slots).

use futures_util::future::join_all;

use crate::harness::{DEADLINE, RedisCluster, Server, ServerConfig, Ws, wait_until};

/// Users until every master owns at least one of their records.
async fn users_on_every_master(s: &Server, cluster: &RedisCluster, count: usize) -> Vec<String> {
    let users = join_all((0..count).map(|_| s.new_user())).await;
    for node in &cluster.nodes {
        let keys: usize = node.cli(&["DBSIZE"]).unwrap().trim().parse().unwrap();
        assert!(keys > 0, "a master (port {}) holds none of {count} users' keys", node.port);
    }
    users
}

/// Each user sends to the next one; everyone checks what arrives.
async fn ring(users: &[String], sockets: &mut [Ws], tag: &str) {
    let n = users.len();
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send_msg(&users[i], &users[(i + 1) % n], &format!("{tag} {i}")).await;
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        let got = ws.recv_json().await;
        assert_eq!(got["payload"], format!("{tag} {}", (i + n - 1) % n), "user {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_cluster_act_as_one_server_for_users_on_every_master() {
    let cluster = RedisCluster::start(3, 0);
    let config = ServerConfig::cluster(&cluster);
    let (s0, s1) = (Server::start(&config), Server::start(&config));
    let users = users_on_every_master(&s0, &cluster, 30).await;
    // Offline first: everyone's first message waits in their inbox on its own shard.
    let mut sockets = Vec::new();
    for (i, user) in users.iter().enumerate() {
        // Acknowledging connections, so what they are given meanwhile (and never acknowledge)
        // stays stored for the second phase.
        let mut ws = [&s0, &s1][i % 2].connect_v1(user).await;
        let next = &users[(i + 1) % users.len()];
        ws.send_msg(user, next, &format!("offline {i}")).await;
        ws.close().await;
    }
    for (i, user) in users.iter().enumerate() {
        // Connect to the other replica than the one used to send.
        let mut ws = [&s1, &s0][i % 2].connect(user).await;
        let got = ws.recv_json().await;
        assert_eq!(got["payload"], format!("offline {}", (i + users.len() - 1) % users.len()));
        sockets.push(ws);
    }
    // Live, across replicas (neighbours are on different replicas).
    ring(&users, &mut sockets, "live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscriptions_come_back_after_every_node_drops_them() {
    let cluster = RedisCluster::start(3, 0);
    let s = Server::start(&ServerConfig::cluster(&cluster).with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200));
    // Many users per node, over many slots: the case redis-rs's own resubscription breaks.
    let users = users_on_every_master(&s, &cluster, 60).await;
    let mut sockets = join_all(users.iter().map(|u| s.connect(u))).await;
    ring(&users, &mut sockets, "before").await;

    let resubscribed = s.metric("enigma_redis_resubscriptions_total").await;
    for node in &cluster.nodes {
        node.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).expect("client kill");
    }
    wait_until("the subscription link to be rebuilt", DEADLINE, || async {
        s.metric("enigma_redis_resubscriptions_total").await > resubscribed
    })
    .await;
    wait_until("readiness", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;
    // Every user, on every shard, gets live messages again.
    ring(&users, &mut sockets, "after").await;
}

/// The port of the replica of the master that owns `slot`, read from `CLUSTER NODES`.
fn replica_of_slot_owner(cluster: &RedisCluster, slot: u16) -> u16 {
    let nodes = cluster.nodes[0].cli(&["CLUSTER", "NODES"]).unwrap();
    let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split_whitespace().collect()).collect();
    let owns = |fields: &Vec<&str>| {
        fields[8..].iter().any(|range| match range.split_once('-') {
            Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
            None => range.parse::<u16>() == Ok(slot),
        })
    };
    let master = lines.iter().find(|f| f[2].contains("master") && owns(f)).expect("a master owns the slot")[0];
    let replica = lines.iter().find(|f| f[3] == master).expect("the master has a replica");
    replica[1].split(['@', ':']).nth(1).unwrap().parse().unwrap()
}

/// A master fails over to its replica while acknowledging clients exchange messages: every
/// receipted message arrives, and on the receiver's one connection nothing is skipped (the
/// subscription moves to the new master late; the message numbers reveal the gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_no_receipted_message_and_delivery_resumes() {
    use crate::faults::{assert_all_delivered, exchange};

    const COUNT: usize = 300;
    let cluster = RedisCluster::start(3, 1);
    let s = Server::start(
        &ServerConfig::cluster(&cluster)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 1000),
    );
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let slot: u16 =
        cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", &format!("x{{{bob}}}")]).unwrap().trim().parse().unwrap();
    let replica = replica_of_slot_owner(&cluster, slot);

    let (tally, sender, receiver) = exchange(&s, alice, bob.clone(), COUNT);
    tally.wait_receipted(COUNT / 3).await;
    // Bob's master hands over to its replica while traffic flows.
    let node = cluster.nodes.iter().find(|n| n.port == replica).unwrap();
    assert_eq!(node.cli(&["CLUSTER", "FAILOVER"]).unwrap().trim(), "OK");
    wait_until("the replica to become master", DEADLINE, || async {
        node.cli(&["ROLE"]).is_some_and(|role| role.starts_with("master"))
    })
    .await;
    sender.await.unwrap();
    receiver.await.unwrap();
    assert_all_delivered(&tally, &[bob], COUNT);
}
