//! Promises of `docs/protocol.md` and `docs/guarantees.md` that no other file shows: acks of
//! unknown ids, the inbox's time to live and its refresh on write, what an outage answers to
//! logins and connects; a specification client across a replica crash; simultaneous connects
//! of one user; the CORS allow-list; JSON logs.

use std::process::Command;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Backend, DEADLINE, Redis, Server, ServerConfig, TempDir, Ws, random_key, wait_until};

both_engines!(acking_an_unknown_or_already_acknowledged_id_is_not_an_error);

async fn acking_an_unknown_or_already_acknowledged_id_is_not_an_error(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    a.send_msg(&alice, &bob, "one").await;
    a.send_msg(&alice, &bob, "two").await;
    let mut bws = s.connect_v1(&bob).await;
    let one = bws.recv_json().await;
    assert_eq!(one["payload"], "one");
    assert_eq!(bws.recv_json().await["payload"], "two");
    bws.send_json(json!({"ack": one["id"], "ref": "first"})).await;
    bws.send_json(json!({"ack": one["id"], "ref": "again"})).await;
    bws.send_json(json!({"ack": ["1-0", "99999999999999-7"], "ref": "unknown"})).await;
    // No error came back: the next frame is the receipt of a later send.
    bws.send_json(json!({"from": bob, "to": alice, "payload": "marker", "ref": "m"})).await;
    let next = bws.recv_json().await;
    assert_eq!((next["ref"].as_str(), next["status"].as_str()), (Some("m"), Some("stored")), "{next}");
    // The acknowledged one is gone, the other comes again.
    drop(bws);
    let mut bws = s.connect_v1(&bob).await;
    assert_eq!(bws.recv_json().await["payload"], "two");
}

/// `limits.inbox_ttl_secs` is the inbox's time to live in Redis: at least that long after a
/// write (the send script sets `ttl + ttl/64` and refreshes it every 1/64 of the TTL;
/// `costs::an_inbox_outlives_its_ttl_after_every_write` shows a later write keeps it alive).
#[tokio::test]
async fn the_inbox_expires_after_its_ttl_refreshed_on_every_write() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis).with("ENIGMA__LIMITS__INBOX_TTL_SECS", 1000);
    let s = Server::start(&config);
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let key = format!("{}inbox:{{{bob}}}", config.prefix);
    let ttl = || redis.cli(&["TTL", &key]).unwrap().trim().parse::<i64>().unwrap();
    let mut a = s.connect_v1(&alice).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "one", "ref": "1"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert!((990..=1016).contains(&ttl()), "TTL {} after a write", ttl());
    a.send_json(json!({"from": alice, "to": bob, "payload": "two", "ref": "2"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert!((990..=1016).contains(&ttl()), "TTL {} after the next write", ttl());
}

/// While Redis is down: `/login` answers 503, a connecting socket gets `unavailable` and a
/// close with 1013 (try again later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_logins_with_503_and_sockets_with_1013() {
    let mut redis = Redis::start();
    let s = Server::start(&ServerConfig::redis(&redis).with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500));
    let bob = s.new_user().await;
    redis.crash();
    let (status, body) = s.get(&format!("/login/{}", random_key())).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    let mut ws = s.connect_v1(&bob).await;
    let frame = ws.recv_json().await;
    assert_eq!(frame["code"], "unavailable", "{frame}");
    assert_eq!(ws.expect_close().await.0, 1013);
}

/// A URL longer than the request head may be (`server.max_request_head_bytes`) is refused with
/// 431, as `docs/protocol.md` says (it said 414, which hyper never reaches behind this limit);
/// the server stays up.
#[tokio::test]
async fn a_url_past_the_head_limit_is_refused_with_431() {
    let s = Server::start(&ServerConfig::memory());
    let status = s.raw_get_status(&format!("/login/{}", "A".repeat(70 * 1024))).await;
    assert_eq!(status, 431);
    assert_eq!(s.get("/healthz").await.0, 200);
}

/// A specification client (no subprotocol) on a replica killed with SIGKILL: what was stored
/// for it and not yet written is delivered on its next connection, to the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_client_gets_what_a_killed_replica_had_not_written_on_the_other_one() {
    const N: usize = 20;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let doomed = Server::start(&config);
    let survivor = Server::start(&config);
    let (alice, bob) = (survivor.new_user().await, survivor.new_user().await);
    let inbox = format!("{}inbox:{{{bob}}}", config.prefix);
    let mut b = doomed.connect(&bob).await;
    let mut a = survivor.connect_v1(&alice).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "live", "ref": "live"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert_eq!(b.recv_json().await["payload"], "live");
    // Written, hence removed: the inbox is empty before the replica stops.
    wait_until("the written message to leave the inbox", DEADLINE, || async {
        redis.cli(&["XLEN", &inbox]).is_some_and(|n| n.trim() == "0")
    })
    .await;
    // Frozen, the replica holding Bob's socket can neither write nor remove anything: what
    // is stored from now on is stored and not yet written when it is killed.
    let stopped = Command::new("kill").args(["-STOP", &doomed.pid().to_string()]).status();
    assert!(stopped.is_ok_and(|s| s.success()), "kill -STOP failed");
    for i in 0..N {
        a.send_json(json!({"from": alice, "to": bob, "payload": format!("m{i}"), "ref": i.to_string()})).await;
        let receipt = a.recv_json().await;
        assert_eq!(receipt["status"], "stored", "{receipt}");
    }
    doomed.kill();
    drop(b);
    let mut b = survivor.connect(&bob).await;
    for i in 0..N {
        assert_eq!(b.recv_json().await["payload"], format!("m{i}"), "message {i} after the crash");
    }
    // Written on this connection, so gone from the inbox: nothing is delivered twice.
    wait_until("the delivered messages to leave the inbox", DEADLINE, || async {
        redis.cli(&["XLEN", &inbox]).is_some_and(|n| n.trim() == "0")
    })
    .await;
}

/// One user connecting to two replicas at the same moment, many times: each time exactly one
/// socket is closed with 4409 and the other stays live (never both, never none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connects_of_one_user_on_two_replicas_leave_exactly_one() {
    const ROUNDS: usize = 30;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let s = [Server::start(&config), Server::start(&config)];
    let alice = s[0].new_user().await;
    let mut a = s[0].connect_v1(&alice).await;
    let mut winners = [0; 2];
    for round in 0..ROUNDS {
        let bob = s[round % 2].new_user().await;
        let (mut x, mut y) = tokio::join!(s[0].connect(&bob), s[1].connect(&bob));
        let first_close = tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                close = x.expect_close() => (0, close),
                close = y.expect_close() => (1, close),
            }
        })
        .await;
        let (loser, (code, reason)) =
            first_close.unwrap_or_else(|_| panic!("round {round}: both sockets stayed open ({DEADLINE:?})"));
        assert_eq!(code, 4409, "round {round}: {reason}");
        let mut winner = if loser == 0 { y } else { x };
        winners[1 - loser] += 1;
        let payload = format!("round {round}");
        a.send_json(json!({"from": alice, "to": bob, "payload": payload, "ref": round.to_string()})).await;
        assert_eq!(a.recv_json().await["status"], "stored");
        match winner.next().await {
            Some(Message::Text(t)) => {
                let got: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(got["payload"], payload.as_str(), "round {round}");
            }
            other => panic!("round {round}: the other socket is not live either: {other:?}"),
        }
        winner.close().await;
    }
    println!("simultaneous connects: replica 0 won {} times, replica 1 {} times", winners[0], winners[1]);
}

/// `server.cors_origins` as a list: an allowed Origin is named in
/// `Access-Control-Allow-Origin` (also on a preflight), any other gets no such header.
#[tokio::test]
async fn a_cors_allow_list_admits_its_origins_only() {
    let s = Server::start(
        &ServerConfig::memory().with("ENIGMA__SERVER__CORS_ORIGINS", "https://chat.example,https://other.example"),
    );
    let path = format!("/login/{}", random_key());
    let allowed = |origin: &'static str| {
        let request = s.http.get(s.url(&path)).header("Origin", origin);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(allowed("https://chat.example").await.as_deref(), Some("https://chat.example"));
    assert_eq!(allowed("https://other.example").await.as_deref(), Some("https://other.example"));
    assert_eq!(allowed("https://evil.example").await, None, "an origin off the list is admitted");
    let preflight = |origin: &'static str| {
        let request = s
            .http
            .request(reqwest::Method::OPTIONS, s.url(&path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization");
        async move {
            let response = request.send().await.unwrap();
            response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(preflight("https://chat.example").await.as_deref(), Some("https://chat.example"));
    assert_eq!(preflight("https://evil.example").await, None);
}

/// `log.format = json`: every line the server writes to stderr is one JSON object with a
/// level and a message, from start to exit (a request, a socket, a bad frame, the drain).
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_level_and_message() {
    let dir = TempDir::new("json-log");
    let log = dir.path().join("server.log");
    let config = ServerConfig::memory().with("ENIGMA__LOG__FORMAT", "json").with("ENIGMA__LOG__LEVEL", "debug");
    let s = Server::start_logging_to(&config, &log);
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a: Ws = s.connect_v1(&alice).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "x", "ref": "1"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    a.send_text("not json").await;
    assert_eq!(a.recv_json().await["code"], "invalid_json");
    assert!(s.terminate().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "too few log lines to show anything:\n{text}");
    for line in lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string(), "no level: {line}");
        assert!(entry["fields"]["message"].is_string(), "no message: {line}");
    }
}
