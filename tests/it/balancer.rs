//! Three replicas behind a real nginx, configured from `deploy/local/nginx.conf.template` (the
//! local cluster's own configuration): users connected through the balancer land on different
//! replicas and still talk to each other; a replica stopped with SIGTERM closes its sockets
//! with 1001, its users reconnect through the balancer (which skips the dead replica) and get
//! the messages sent to them meanwhile.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::harness::{DEADLINE, Nginx, Redis, Server, ServerConfig, Ws, nginx_binary, random_key, wait_until};

const USERS: usize = 12;
const PENDING: usize = 3;

/// Open connections of each replica (`None`: stopped), read from its own `/metrics`.
async fn open_connections(replicas: &[Option<Server>]) -> Vec<usize> {
    let mut counts = Vec::new();
    for replica in replicas {
        counts.push(match replica {
            Some(server) => server.metric("enigma_connections_open").await as usize,
            None => 0,
        });
    }
    counts
}

/// Sends `payload` from `from` to `to` and waits for its receipt.
async fn send_receipted(ws: &mut Ws, from: &str, to: &str, payload: &str) {
    ws.send_json(json!({"from": from, "to": to, "payload": payload, "ref": payload})).await;
    let receipt = ws.recv_json().await;
    assert_eq!((receipt["status"].as_str(), receipt["ref"].as_str()), (Some("stored"), Some(payload)), "{receipt}");
}

/// The next delivery, acknowledged.
async fn receive_acked(ws: &mut Ws) -> Value {
    let frame = ws.recv_json().await;
    assert!(frame["id"].is_string(), "expected a delivery, got {frame}");
    ws.send_json(json!({"ack": frame["id"]})).await;
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_behind_nginx_spread_talk_and_survive_a_stopped_replica() {
    let Some(binary) = nginx_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is required under CI (apt-get install nginx-light; or set NGINX=/path/to/nginx)"
        );
        // Straight to stderr, past the test harness's capture: a skip must not read as a pass.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"\n*** SKIPPED balancer test: no nginx binary (apt-get install nginx-light, or set NGINX) ***\n",
        );
        return;
    };
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let mut replicas: Vec<Option<Server>> = (0..3).map(|_| Some(Server::start(&config))).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().flatten().map(|s| s.addr).collect();
    let lb = Nginx::start(&binary, &addrs);
    let http = reqwest::Client::new();

    // Logins and lookups through the balancer.
    let mut users = Vec::new();
    for _ in 0..USERS {
        let key = random_key();
        let response = http.get(lb.url(&format!("/login/{key}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        users.push(body["userId"].as_str().unwrap().to_owned());
    }
    let lookup: Value = http.get(lb.url(&format!("/connect/{}", users[0]))).send().await.unwrap().json().await.unwrap();
    assert_eq!(lookup["userId"], users[0].as_str());

    // Each user connects through the balancer; the replica whose open count grows holds it.
    let mut sockets = Vec::new();
    let mut home = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let ws = Ws::connect(&lb.ws_url(&format!("/ws/{user}")), Some("enigma.v1")).await;
        assert_eq!(ws.protocol.as_deref(), Some("enigma.v1"), "the subprotocol passes through nginx");
        sockets.push(ws);
        let r = &replicas;
        wait_until("the new socket to be counted", DEADLINE, || async move {
            open_connections(r).await.iter().sum::<usize>() == i + 1
        })
        .await;
        let counts = open_connections(&replicas).await;
        let previous: Vec<usize> = (0..replicas.len()).map(|r| home.iter().filter(|&&h| h == r).count()).collect();
        home.push((0..replicas.len()).find(|&r| counts[r] > previous[r]).expect("one replica gained a socket"));
    }
    let spread: BTreeSet<usize> = home.iter().copied().collect();
    assert!(spread.len() >= 2, "all {USERS} sockets landed on one replica: {home:?}");
    println!("sockets per replica through nginx: {:?}", open_connections(&replicas).await);

    // Each user writes to the next user held by another replica.
    for i in 0..USERS {
        let j = (1..USERS).map(|k| (i + k) % USERS).find(|&j| home[j] != home[i]).unwrap();
        let payload = format!("{i} to {j} across replicas");
        send_receipted(&mut sockets[i], &users[i], &users[j], &payload).await;
        let delivery = receive_acked(&mut sockets[j]).await;
        assert_eq!(
            (delivery["from"].as_str(), delivery["payload"].as_str()),
            (Some(users[i].as_str()), Some(&*payload))
        );
    }

    // The busiest replica stops (SIGTERM): its users see 1001.
    let stopped = (0..replicas.len()).max_by_key(|&r| (home.iter().filter(|&&h| h == r).count(), r)).unwrap();
    let victims: Vec<usize> = (0..USERS).filter(|&i| home[i] == stopped).collect();
    let survivor = (0..USERS).find(|&i| home[i] != stopped).unwrap();
    let server = replicas[stopped].take().unwrap();
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "the replica exits cleanly after SIGTERM: {status:?}");
    for &v in &victims {
        assert_eq!(sockets[v].expect_close().await.0, 1001, "user {v} is told to reconnect");
    }

    // While they are away, a user on a surviving replica writes to each of them.
    for &v in &victims {
        for n in 0..PENDING {
            let (from, to) = (users[survivor].clone(), users[v].clone());
            send_receipted(&mut sockets[survivor], &from, &to, &format!("pending {n} for {v}")).await;
        }
    }

    // They reconnect through the balancer, which skips the stopped replica, and get it all.
    for &v in &victims {
        sockets[v] = Ws::connect(&lb.ws_url(&format!("/ws/{}", users[v])), Some("enigma.v1")).await;
        for n in 0..PENDING {
            let delivery = receive_acked(&mut sockets[v]).await;
            assert_eq!(delivery["payload"], format!("pending {n} for {v}"));
            assert_eq!(delivery["from"], users[survivor].as_str());
        }
    }
    let r = &replicas;
    wait_until("every user to be connected to a surviving replica", DEADLINE, || async move {
        open_connections(r).await.iter().sum::<usize>() == USERS
    })
    .await;
    println!(
        "replica {stopped} stopped; {} users reconnected and got {} pending messages each; sockets per replica: {:?}",
        victims.len(),
        PENDING,
        open_connections(&replicas).await
    );
}
