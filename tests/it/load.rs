//! Correctness under load: many users at once, long runs from one sender. Not timings (those
//! live in `make bench`), but every message exactly once and in order.

use std::collections::HashSet;

use futures_util::future::join_all;

use crate::harness::{Backend, Server, Ws};

both_engines!(multi_thread: ring_of_1000_users_each_message_exactly_once, thousand_messages_from_one_sender_arrive_in_order);

const RING: usize = 1000;

async fn ring_of_1000_users_each_message_exactly_once(b: Backend) {
    let s = b.server();
    ring(&[&s], &[&s]).await;
}

/// Users log in and connect round-robin over `servers`; user i sends one message to user i+1.
async fn ring(login_on: &[&Server], connect_to: &[&Server]) {
    let users: Vec<String> = join_all((0..RING).map(|i| login_on[i % login_on.len()].new_user())).await;
    let sockets: Vec<Ws> =
        join_all(users.iter().enumerate().map(|(i, u)| connect_to[i % connect_to.len()].connect(u))).await;
    let tasks = sockets.into_iter().enumerate().map(|(i, mut ws)| {
        let me = users[i].clone();
        let next = users[(i + 1) % RING].clone();
        let prev = users[(i + RING - 1) % RING].clone();
        tokio::spawn(async move {
            ws.send_msg(&me, &next, &format!("from {i}")).await;
            let got = ws.recv_json().await;
            assert_eq!(got["from"], prev.as_str());
            assert_eq!(got["to"], me.as_str());
            assert_eq!(got["payload"], format!("from {}", (i + RING - 1) % RING));
            // Exactly once: the next frame is our own marker, not a duplicate.
            ws.send_msg(&me, &me, "marker").await;
            assert_eq!(ws.recv_json().await["payload"], "marker");
            i
        })
    });
    let done: HashSet<usize> = join_all(tasks).await.into_iter().map(|r| r.expect("ring member")).collect();
    assert_eq!(done.len(), RING);
}

async fn thousand_messages_from_one_sender_arrive_in_order(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    let mut bws = s.connect(&bob).await;
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            a.send_msg(&alice, &bob, &format!("{i}")).await;
        }
        a
    });
    for i in 0..1000 {
        let got = bws.recv_json().await;
        assert_eq!(got["payload"], format!("{i}"), "message {i} out of order or missing");
    }
    let _a = sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_1000_users_across_two_replicas() {
    across_two_replicas(Backend::redis()).await;
}

/// The same on a Redis Cluster: 1,000 users' slots on all three masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_1000_users_across_two_replicas_on_a_cluster() {
    across_two_replicas(Backend::cluster()).await;
}

async fn across_two_replicas(b: Backend) {
    let config = b.config();
    let (s0, s1) = (Server::start(&config), Server::start(&config));
    // Log in on one replica, connect alternately: every neighbour pair crosses replicas.
    ring(&[&s0], &[&s0, &s1]).await;
}
