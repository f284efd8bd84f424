//! Two (or more) replicas sharing one Redis behave as one server.

use futures_util::future::join_all;

use crate::harness::{Redis, Server, ServerConfig, random_key};

/// One Redis and `n` replicas on it (same key prefix: one deployment).
fn cluster(n: usize) -> (Redis, Vec<Server>) {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let servers = (0..n).map(|_| Server::start(&config)).collect();
    (redis, servers)
}

#[tokio::test]
async fn live_delivery_both_ways_across_replicas() {
    let (_redis, s) = cluster(2);
    let alice = s[0].new_user().await;
    let bob = s[1].new_user().await;
    let mut a = s[0].connect(&alice).await;
    let mut b = s[1].connect(&bob).await;
    a.send_msg(&alice, &bob, "over there").await;
    assert_eq!(b.recv_json().await["payload"], "over there");
    b.send_msg(&bob, &alice, "and back").await;
    let got = a.recv_json().await;
    assert_eq!((got["from"].as_str(), got["payload"].as_str()), (Some(bob.as_str()), Some("and back")));
}

#[tokio::test]
async fn offline_on_one_replica_delivered_on_the_other() {
    let (_redis, s) = cluster(2);
    let (alice, bob) = (s[0].new_user().await, s[0].new_user().await);
    let mut a = s[0].connect(&alice).await;
    for i in 0..20 {
        a.send_msg(&alice, &bob, &format!("m{i}")).await;
    }
    // Bob was never on replica 0; he connects to replica 1 and gets all of it, in order.
    a.send_msg(&alice, &alice, "marker").await;
    assert_eq!(a.recv_json().await["payload"], "marker");
    let mut b = s[1].connect(&bob).await;
    for i in 0..20 {
        assert_eq!(b.recv_json().await["payload"], format!("m{i}"));
    }
}

#[tokio::test]
async fn login_on_one_replica_lookup_on_the_other() {
    let (_redis, s) = cluster(2);
    let key = random_key();
    let user = s[0].login(&key).await;
    let (status, body) = s[1].get(&format!("/connect/{user}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["publicKey"], key.as_str());
    assert_eq!(s[1].login(&key).await, user, "the same key is the same user everywhere");
}

#[tokio::test]
async fn racing_logins_of_one_key_on_two_replicas_give_one_user() {
    let (_redis, s) = cluster(2);
    for _ in 0..50 {
        let key = random_key();
        // Four logins of the same new key, at the same moment, on both replicas.
        let ids = join_all((0..4).map(|i| s[i % 2].login(&key))).await;
        assert!(ids.iter().all(|id| id == &ids[0]), "one key, several users: {ids:?}");
    }
}

#[tokio::test]
async fn newest_connection_wins_across_replicas() {
    let (_redis, s) = cluster(2);
    let (alice, bob) = (s[0].new_user().await, s[0].new_user().await);
    let mut old = s[0].connect(&bob).await;
    let mut new = s[1].connect(&bob).await;
    let (code, reason) = old.expect_close().await;
    assert_eq!(code, 4409, "{reason}");
    let mut a = s[0].connect(&alice).await;
    a.send_msg(&alice, &bob, "to the newest").await;
    assert_eq!(new.recv_json().await["payload"], "to the newest");
    // And back again: the replica-1 socket gives way to a new one on replica 0.
    let mut newest = s[0].connect(&bob).await;
    assert_eq!(new.expect_close().await.0, 4409);
    a.send_msg(&alice, &bob, "again").await;
    assert_eq!(newest.recv_json().await["payload"], "again");
}

#[tokio::test]
async fn three_replicas_every_pair_talks() {
    let (_redis, s) = cluster(3);
    let mut users = Vec::new();
    for server in &s {
        let id = server.new_user().await;
        users.push((id.clone(), server.connect(&id).await));
    }
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let (from, to) = (users[i].0.clone(), users[j].0.clone());
                users[i].1.send_msg(&from, &to, &format!("{i}->{j}")).await;
                let got = users[j].1.recv_json().await;
                assert_eq!(got["payload"], format!("{i}->{j}"));
            }
        }
    }
}
