//! Redis Cluster mode: users spread over every master, sharded pub/sub, and recovery of the
//! subscription link after every node dropped it (the resubscription redis-rs 1.8.1 gets wrong
//! when one node owns channels in several slots).

use std::time::Duration;

use futures_util::future::join_all;

use crate::harness::{
    Blackhole, DEADLINE, RedisCluster, Server, ServerConfig, Ws, all_delivered_on_one_connection, exchange, wait_until,
};

/// Users until every master owns at least one of their records.
async fn users_on_every_master(s: &Server, cluster: &RedisCluster, count: usize) -> Vec<String> {
    let users = join_all((0..count).map(|_| s.new_user())).await;
    for node in cluster.nodes.iter().filter(|n| n.is_master()) {
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
    // Every node reported its own drop; the kills are three processes, so under load they
    // may come apart: at most one recovery per dropped link, never a storm.
    let recoveries = s.metric("enigma_redis_resubscriptions_total").await - resubscribed;
    assert!((1.0..=3.0).contains(&recoveries), "{recoveries} recoveries for 3 dropped links");
}

/// A master fails over to its replica while acknowledging clients exchange messages: every
/// receipted message arrives, and on the receiver's one connection nothing is skipped (the
/// subscription moves to the new master late; the message numbers reveal the gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_no_receipted_message_and_delivery_resumes() {
    // Enough traffic to outlast the failover (checked below): 300 could all be done first.
    const COUNT: usize = 3000;
    let cluster = RedisCluster::start(3, 1);
    let s = Server::start(
        &ServerConfig::cluster(&cluster)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 1000),
    );
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let replica = cluster.replica_of(cluster.owner_of(cluster.slot_of(&format!("{{{bob}}}"))));

    let (tally, sender, receiver) = exchange(&s, alice, bob.clone(), COUNT);
    tally.wait_receipted(COUNT / 3).await;
    // Bob's master hands over to its replica while traffic flows.
    let node = &cluster.nodes[replica];
    // A manual failover gives up when the master and replica do not agree within 5 s (a
    // loaded machine running many clusters at once): ask again then, within an overall deadline.
    let started = std::time::Instant::now();
    while !node.is_master() {
        assert!(started.elapsed() < DEADLINE * 4, "the replica never became master");
        assert_eq!(node.cli(&["CLUSTER", "FAILOVER"]).unwrap().trim(), "OK");
        let asked = std::time::Instant::now();
        while !node.is_master() && asked.elapsed() < DEADLINE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let at_promotion = tally.receipted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(at_promotion < COUNT, "the traffic was over before the failover");
    all_delivered_on_one_connection(&tally, sender, receiver, &bob, COUNT).await;
    println!("cluster failover: {at_promotion} of {COUNT} receipted at the promotion; all delivered on one connection");
}

/// Another master than the one owning `user`'s slot.
fn other_master(cluster: &RedisCluster, user: &str) -> (u16, usize) {
    let slot = cluster.slot_of(&format!("{{{user}}}"));
    (slot, (cluster.owner_of(slot) + 1) % cluster.nodes.len())
}

/// A recipient's slot moves to another master (keys migrated with MIGRATE, every step held
/// for a while) while acknowledging clients exchange messages: every receipted message
/// arrives, and on the receiver's one connection (no reconnect needed): the node that gave the
/// slot away ended the subscription, the replica subscribed again on the new owner and had
/// the session catch up on what was announced meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrating_under_traffic_loses_nothing_and_live_delivery_follows_it() {
    const COUNT: usize = 3000;
    let cluster = RedisCluster::start(3, 0);
    let s = Server::start(&ServerConfig::cluster(&cluster).with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200));
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let (slot, to) = other_master(&cluster, &bob);

    let (tally, sender, receiver) = exchange(&s, alice, bob.clone(), COUNT);
    tally.wait_receipted(100).await;
    tokio::task::block_in_place(|| cluster.migrate_slot(slot, to, Duration::from_millis(300)));
    all_delivered_on_one_connection(&tally, sender, receiver, &bob, COUNT).await;
    assert!(s.metric("enigma_redis_moved_subscriptions_total").await >= 1.0);
}

/// Many users' slots move to other masters while they are connected and idle: each still
/// gets live messages on the socket it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_whose_slots_moved_get_live_messages_on_the_same_socket() {
    let cluster = RedisCluster::start(3, 0);
    let s = Server::start(&ServerConfig::cluster(&cluster));
    let users = users_on_every_master(&s, &cluster, 24).await;
    let mut sockets = join_all(users.iter().map(|u| s.connect(u))).await;
    ring(&users, &mut sockets, "before").await;
    // Every other user's slot moves (two users may share a slot: move each slot once).
    let mut moved = std::collections::HashSet::new();
    for user in users.iter().step_by(2) {
        let (slot, to) = other_master(&cluster, user);
        if moved.insert(slot) {
            tokio::task::block_in_place(|| cluster.migrate_slot(slot, to, Duration::ZERO));
        }
    }
    wait_until("every moved subscription taken up again", DEADLINE, || async {
        s.metric("enigma_redis_moved_subscriptions_total").await >= moved.len() as f64
    })
    .await;
    ring(&users, &mut sockets, "after").await;
}

/// Users connect while other users' slots move between masters (their nodes send unasked
/// `sunsubscribe`s on the very connections new subscriptions are made on): afterwards every
/// user, old or new, gets live messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_connecting_while_slots_move_all_get_live_messages() {
    let cluster = std::sync::Arc::new(RedisCluster::start(3, 0));
    let s = Server::start(&ServerConfig::cluster(&cluster));
    let settled = users_on_every_master(&s, &cluster, 30).await;
    let mut sockets = join_all(settled.iter().map(|u| s.connect(u))).await;
    let newcomers = join_all((0..60).map(|_| s.new_user())).await;
    let mover = {
        let (cluster, settled) = (cluster.clone(), settled.clone());
        tokio::task::spawn_blocking(move || {
            let mut moved = std::collections::HashSet::new();
            for user in &settled {
                let (slot, to) = other_master(&cluster, user);
                if moved.insert(slot) {
                    cluster.migrate_slot(slot, to, Duration::ZERO);
                }
            }
        })
    };
    let mut arrivals = Vec::new();
    for batch in newcomers.chunks(10) {
        arrivals.extend(join_all(batch.iter().map(|u| s.connect(u))).await);
    }
    mover.await.unwrap();
    let users: Vec<String> = settled.iter().chain(&newcomers).cloned().collect();
    sockets.extend(arrivals);
    ring(&users, &mut sockets, "after").await;
}

/// One shard's connections go quiet (a proxy in front of that master swallows whatever they
/// carry while the master itself is fine): the probe that every shard gets finds it, the links
/// are rebuilt, and users on that shard get live messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quietly_dead_link_to_one_shard_is_found_and_rebuilt() {
    let cluster = RedisCluster::start(3, 0);
    // Clients reach the last master only through the proxy: it announces the proxy's port.
    let quiet = cluster.nodes.len() - 1;
    let proxy = Blackhole::start(cluster.nodes[quiet].port).await;
    let node = &cluster.nodes[quiet];
    let bus = (node.port + 10_000).to_string();
    for (key, value) in [("cluster-announce-bus-port", bus), ("cluster-announce-port", proxy.port.to_string())] {
        assert_eq!(node.cli(&["CONFIG", "SET", key, &value]).unwrap().trim(), "OK");
    }
    let proxied = format!("127.0.0.1:{}", proxy.port);
    wait_until("every node to know the proxied address", DEADLINE, || async {
        cluster.nodes.iter().all(|n| n.cli(&["CLUSTER", "NODES"]).is_some_and(|all| all.contains(&proxied)))
    })
    .await;
    let s = Server::start(&ServerConfig::cluster(&cluster).with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200));
    let users = users_on_every_master(&s, &cluster, 30).await;
    let mut sockets = join_all(users.iter().map(|u| s.connect(u))).await;
    ring(&users, &mut sockets, "before").await;

    let dead = s.metric("enigma_redis_dead_links_total").await;
    proxy.swallow_open_connections();
    wait_until("the silent shard link to be found", DEADLINE, || async {
        s.metric("enigma_redis_dead_links_total").await > dead
    })
    .await;
    wait_until("readiness", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;
    ring(&users, &mut sockets, "after").await;
}

/// A master dies (SIGKILL) with users on every shard connected: the relay recovers its link,
/// and once the replica took over (`cluster-node-timeout`, 2 s here) it is ready and every
/// user, on every shard, gets live messages on the socket they kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_dies_and_its_replica_takes_over_everyone_gets_live_messages() {
    let mut cluster = RedisCluster::start(3, 1);
    let s = Server::start(
        &ServerConfig::cluster(&cluster)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500),
    );
    let users = users_on_every_master(&s, &cluster, 30).await;
    let mut sockets = join_all(users.iter().map(|u| s.connect(u))).await;
    ring(&users, &mut sockets, "before").await;

    let victim = cluster.owner_of(cluster.slot_of(&format!("{{{}}}", users[0])));
    let replica = cluster.replica_of(victim);
    // Users' records must be on the replica before its master goes (replication is asynchronous).
    wait_until("the replica to catch up", DEADLINE, || async {
        cluster.nodes[victim].copied_to(&cluster.nodes[replica])
    })
    .await;
    let recoveries = s.metric("enigma_redis_resubscriptions_total").await;
    cluster.nodes[victim].crash();
    // (Readiness may or may not fail meanwhile: the cluster client can reach the shard's
    // channels through the surviving replica, which serves sharded pub/sub too.)
    wait_until("the relay to notice", DEADLINE, || async {
        s.metric("enigma_redis_resubscriptions_total").await > recoveries
    })
    .await;
    let promoted = &cluster.nodes[replica];
    wait_until("the replica to take over", DEADLINE * 2, || async { promoted.is_master() }).await;
    wait_until("readiness", DEADLINE * 2, || async { s.get("/readyz").await.0 == 200 }).await;
    ring(&users, &mut sockets, "after").await;
}
