//! Promises of `docs/protocol.md` and `docs/guarantees.md` that no other file shows: acks of
//! unknown ids, the inbox's time to live and its refresh on write, what an outage answers to
//! logins and connects.

use serde_json::json;

use crate::harness::{Backend, Redis, Server, ServerConfig, random_key};

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

/// `limits.inbox_ttl_secs` is the inbox's time to live in Redis, set again by every write.
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
    assert!((990..=1000).contains(&ttl()), "TTL {} after a write", ttl());
    assert_eq!(redis.cli(&["EXPIRE", &key, "50"]).unwrap().trim(), "1");
    a.send_json(json!({"from": alice, "to": bob, "payload": "two", "ref": "2"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert!((990..=1000).contains(&ttl()), "TTL {} after the next write: not refreshed", ttl());
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
