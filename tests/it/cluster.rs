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
