//! Redis Sentinel mode: the relay talks to the master the Sentinels name and follows it
//! across a failover.

use crate::harness::{
    DEADLINE, Redis, Sentinel, Server, ServerConfig, all_delivered_on_one_connection, exchange, wait_until,
};

/// A master, its replica and a Sentinel watching them; the replica is known to the Sentinel.
async fn replicated() -> (Redis, Redis, Sentinel) {
    let master = Redis::start();
    let port = master.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_until("the replica to sync", DEADLINE, || async {
        replica.replication("master_link_status").as_deref() == Some("up")
    })
    .await;
    let sentinel = Sentinel::start(&master);
    wait_until("the Sentinel to know the replica", DEADLINE, || async {
        sentinel.cli(&["SENTINEL", "REPLICAS", "mymaster"]).is_some_and(|r| r.contains(&replica.port.to_string()))
    })
    .await;
    (master, replica, sentinel)
}

/// A planned failover while acknowledging clients exchange messages: the master stops taking
/// writes (sends are answered `unavailable` and retried), its replica catches up, the Sentinel
/// promotes it; the relay notices the new master by itself, moves its links there, and every
/// receipted message arrives on the receiver's one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_receipted_message_and_delivery_resumes() {
    const COUNT: usize = 2000;
    let (master, replica, sentinel) = replicated().await;
    let s = Server::start(
        &ServerConfig::sentinel(&sentinel)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 1000),
    );
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let (tally, sender, receiver) = exchange(&s, alice, bob.clone(), COUNT);
    tally.wait_receipted(100).await;

    // No more writes on the old master (replication is asynchronous: what it took after the
    // replica's last read would be lost by the promotion, receipted or not).
    assert_eq!(master.cli(&["CONFIG", "SET", "min-replicas-to-write", "5"]).unwrap().trim(), "OK");
    wait_until("the replica to catch up", DEADLINE, || async { master.copied_to(&replica) }).await;
    assert_eq!(sentinel.cli(&["SENTINEL", "FAILOVER", "mymaster"]).unwrap().trim(), "OK");
    wait_until("the Sentinel to name the replica", DEADLINE, || async { sentinel.master_port() == Some(replica.port) })
        .await;
    all_delivered_on_one_connection(&tally, sender, receiver, &bob, COUNT).await;
    wait_until("readiness", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;
    // The relay writes to the new master now.
    let before: usize = replica.cli(&["DBSIZE"]).unwrap().trim().parse().unwrap();
    s.new_user().await;
    let after: usize = replica.cli(&["DBSIZE"]).unwrap().trim().parse().unwrap();
    assert!(after > before, "a login after the failover did not reach the new master");
}

/// The master dies (SIGKILL): while the Sentinel has not promoted the replica, sends are
/// answered `unavailable` and readiness fails; then the relay follows the promotion by itself
/// and a recipient who stayed connected throughout gets new messages live on the same socket.
/// (What the master had taken but not yet copied to its replica is lost with it: replication
/// is asynchronous, so this test asserts nothing about messages sent before the kill.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_the_promotion_when_the_master_dies() {
    let (mut master, replica, sentinel) = replicated().await;
    let s = Server::start(
        &ServerConfig::sentinel(&sentinel)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500),
    );
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    let mut b = s.connect(&bob).await;
    a.send_json(serde_json::json!({"from": alice, "to": bob, "payload": "before", "ref": "before"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert_eq!(b.recv_json().await["payload"], "before");
    // The user records must be on the replica before the master goes.
    wait_until("the replica to catch up", DEADLINE, || async { master.copied_to(&replica) }).await;

    master.crash();
    // No promotion can come before the Sentinel's `down-after-milliseconds` (1 s): a send now
    // meets a dead master and is answered `unavailable`, with its ref.
    a.send_json(serde_json::json!({"from": alice, "to": bob, "payload": "dead", "ref": "dead"})).await;
    let reply = a.recv_json().await;
    assert_eq!((reply["code"].as_str(), reply["ref"].as_str()), (Some("unavailable"), Some("dead")), "{reply}");
    wait_until("readiness to fail", DEADLINE, || async { s.get("/readyz").await.0 == 503 }).await;
    wait_until("the Sentinel to promote the replica", DEADLINE * 3, || async {
        sentinel.master_port() == Some(replica.port)
    })
    .await;
    wait_until("readiness", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;
    for i in 0..20 {
        // Each send until receipted: the first may still meet the old link.
        let payload = format!("after {i}");
        let start = std::time::Instant::now();
        loop {
            a.send_json(serde_json::json!({"from": alice, "to": bob, "payload": payload, "ref": payload})).await;
            let reply = a.recv_json().await;
            if reply["status"] == "stored" {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "sends still refused after the promotion: {reply}");
        }
        assert_eq!(b.recv_json().await["payload"], payload, "live on the socket that stayed open");
    }
}
