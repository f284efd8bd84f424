//! The protocol, point by point. Every test runs against every engine (`memory::…`,
//! `embedded::…` and `redis::…`), also on a Redis Cluster (`cluster::…`) and on a Redis named by
//! a Sentinel (`sentinel::…`): they must behave the same.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Backend, DEADLINE, Server, Ws, fill_backlog, wait_until};

const PEM_B64: &str = include_str!("fixtures/rsa2048-pem.b64");
const DER_B64: &str = include_str!("fixtures/rsa2048-der.b64");

both_engines!(
    with_cluster:
    login_accepts_every_key_encoding_and_is_idempotent,
    login_rejects_bad_keys_with_4xx,
    lookup_returns_the_key_byte_for_byte,
    websocket_of_unknown_user_gets_error_then_close,
    chat_both_ways_on_both_paths,
    offline_messages_arrive_in_order_on_connect,
    send_to_unknown_user_is_an_error,
    every_bad_frame_gets_an_error_and_the_socket_stays_usable,
    spoofed_from_is_rejected_and_not_delivered,
    oversized_payload_is_rejected,
    newest_connection_wins_on_one_replica,
    full_inbox_refuses_sends,
    acknowledging_clients_get_ids_receipts_and_redelivery,
    cors_and_health_endpoints_answer,
    sigterm_closes_sockets_with_1001_and_exits,
    silent_peers_are_dropped_and_live_ones_kept,
    a_send_followed_at_once_by_a_close_is_stored,
    a_slow_but_reading_client_gets_every_message_once_in_order,
);

async fn login_accepts_every_key_encoding_and_is_idempotent(b: Backend) {
    let s = b.server();
    // The reference web client: base64 of a PEM, raw in the path, with `=` padding.
    let (status, body) = s.get(&format!("/login/{PEM_B64}")).await;
    assert_eq!(status, 200, "{body}");
    let pem_user = body["userId"].as_str().unwrap().to_owned();
    assert_eq!(body["user"], body["userId"], "the web client reads `user`");
    assert_eq!(pem_user.len(), 36, "user ids are UUIDs");
    assert_eq!(s.login(PEM_B64).await, pem_user, "same key, same user");

    // Base64 of DER, raw: contains `/` and `+`; the percent-encoded form names the same key.
    assert!(DER_B64.contains('/') && DER_B64.contains('+'));
    let der_user = s.login(DER_B64).await;
    let encoded = DER_B64.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
    assert_eq!(s.login(&encoded).await, der_user);
    // The same RSA key as the PEM above: one key, one user (tests/it/one_key.rs).
    assert_eq!(der_user, pem_user);
    let (_, body) = s.get(&format!("/connect/{der_user}")).await;
    assert_eq!(body["publicKey"], PEM_B64, "the first registrant's string, byte for byte");

    // base64url, hex and PEM text are keys too.
    for key in ["AAEC_-ZZ", "deadbeef0123", "-----BEGIN%20PUBLIC%20KEY-----%0AMIIB%0A-----END%20PUBLIC%20KEY-----%0A"] {
        let (status, body) = s.get(&format!("/login/{key}")).await;
        assert_eq!(status, 200, "{key}: {body}");
    }
}

async fn login_rejects_bad_keys_with_4xx(b: Backend) {
    let s = b.server();
    for (path, status) in [
        ("/login/abc%3Cscript%3E".to_owned(), 400),
        ("/login/abc%22def".to_owned(), 400),
        ("/login/".to_owned(), 400),
        ("/login".to_owned(), 400),
        (format!("/login/{}", "A".repeat(8 * 1024 + 1)), 400),
    ] {
        let (got, body) = s.get(&path).await;
        assert_eq!(got, status, "{}: {body}", &path[..path.len().min(40)]);
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "error message: {body}");
    }
    // A key of exactly the limit is fine.
    let (status, _) = s.get(&format!("/login/{}", "B".repeat(8 * 1024))).await;
    assert_eq!(status, 200);
    // A URL far over any limit is refused with a 4xx, never a 5xx.
    for len in [20_000, 70_000, 300_000] {
        let status = s.raw_get_status(&format!("/login/{}", "C".repeat(len))).await;
        assert!((400..500).contains(&status), "{len}-byte key: got {status}");
    }
    // Nothing was registered by the refused attempts.
    let (status, _) = s.get("/login/abc%3Cscript%3E").await;
    assert_eq!(status, 400);
}

async fn lookup_returns_the_key_byte_for_byte(b: Backend) {
    let s = b.server();
    let user = s.login(PEM_B64).await;
    let (status, body) = s.get(&format!("/connect/{user}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"userId": user, "user": user, "publicKey": PEM_B64}));

    for missing in ["00000000-0000-4000-8000-000000000000", "not-a-user", &user.to_uppercase()] {
        let (status, body) = s.get(&format!("/connect/{missing}")).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(body["error"], "user not found");
    }
}

async fn websocket_of_unknown_user_gets_error_then_close(b: Backend) {
    let s = b.server();
    for path in
        ["/connect/00000000-0000-4000-8000-000000000000", "/ws/00000000-0000-4000-8000-000000000000", "/ws/garbage"]
    {
        let mut ws = Ws::connect(&s.ws_url(path), None).await;
        let frame = ws.recv_json().await;
        assert_eq!(frame["error"], "user not found", "{path}");
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 4404, "{path}");
        assert!(!reason.is_empty());
    }
}

async fn chat_both_ways_on_both_paths(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await; // spec 0.3.0 path
    let mut bws = Ws::connect(&s.ws_url(&format!("/ws/{bob}")), None).await; // 0.3.1 path
    assert_eq!(bws.protocol, None, "no subprotocol unless asked");

    a.send_msg(&alice, &bob, "c2VhbGVkIGZvciBib2I=").await;
    let got = bws.recv_json().await;
    assert_eq!(got, json!({"from": alice, "to": bob, "payload": "c2VhbGVkIGZvciBib2I="}), "exactly the spec's fields");

    bws.send_msg(&bob, &alice, "cmVwbHk=").await;
    assert_eq!(a.recv_json().await, json!({"from": bob, "to": alice, "payload": "cmVwbHk="}));

    // A message to oneself works too, and payloads are opaque: JSON escapes survive.
    a.send_msg(&alice, &alice, "quote\" backslash\\ é").await;
    assert_eq!(a.recv_json().await["payload"], "quote\" backslash\\ é");
}

async fn offline_messages_arrive_in_order_on_connect(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    for i in 0..5 {
        a.send_msg(&alice, &bob, &format!("m{i}")).await;
    }
    // The sends are accepted (no error frame); a ping round-trips after them.
    assert_no_error_pending(&mut a, &alice).await;

    let mut bws = s.connect(&bob).await;
    for i in 0..5 {
        assert_eq!(bws.recv_json().await["payload"], format!("m{i}"));
    }
    // The writer removes each written batch before it writes the next one: once a later
    // frame (a marker to himself) arrives, m0..m4 are gone from the inbox.
    bws.send_msg(&bob, &bob, "marker").await;
    assert_eq!(bws.recv_json().await["payload"], "marker");
    bws.close().await;

    // Delivered messages left the inbox: a new connection gets only what comes next (the
    // marker's own removal may still be under way, so it alone may come again).
    let mut bws = s.connect(&bob).await;
    a.send_msg(&alice, &bob, "after").await;
    let mut next = bws.recv_json().await;
    if next["payload"] == "marker" {
        next = bws.recv_json().await;
    }
    assert_eq!(next["payload"], "after");
}

/// Proves everything sent so far was handled without an error frame: a message to oneself
/// comes back, and it is the first frame to arrive.
async fn assert_no_error_pending(ws: &mut Ws, me: &str) {
    ws.send_msg(me, me, "marker").await;
    let frame = ws.recv_json().await;
    assert_eq!(frame["payload"], "marker", "unexpected frame: {frame}");
}

async fn send_to_unknown_user_is_an_error(b: Backend) {
    let s = b.server();
    let alice = s.new_user().await;
    let mut a = s.connect(&alice).await;
    for to in ["00000000-0000-4000-8000-000000000000", "nobody"] {
        a.send_msg(&alice, to, "x").await;
        let err = a.recv_json().await;
        assert_eq!(err["error"], "user not found", "{to}");
        assert_eq!(err["code"], "user_not_found");
    }
    assert_no_error_pending(&mut a, &alice).await;
}

async fn every_bad_frame_gets_an_error_and_the_socket_stays_usable(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    let mut bws = s.connect(&bob).await;
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "invalid_json", "invalid JSON"),
        ("".into(), "invalid_json", "invalid JSON"),
        ("[1,2,3]".into(), "invalid_frame", "JSON object"),
        ("\"hello\"".into(), "invalid_frame", "JSON object"),
        (json!({"from": alice, "to": bob}).to_string(), "invalid_frame", "`payload`"),
        (json!({"payload": "x"}).to_string(), "invalid_frame", "`from`"),
        (json!({"from": alice, "to": bob, "payload": 42}).to_string(), "invalid_frame", "`payload` must be a string"),
        (json!({"from": alice, "to": ["x"], "payload": "p"}).to_string(), "invalid_frame", "`to` must be a string"),
        (json!({"from": alice, "to": bob, "payload": ""}).to_string(), "invalid_frame", "empty"),
        (json!({"ack": "1-0"}).to_string(), "invalid_frame", "enigma.v1"),
    ];
    for (frame, code, needle) in &cases {
        a.send_text(frame).await;
        let err = a.recv_json().await;
        assert_eq!(err["code"], *code, "{frame} -> {err}");
        assert!(err["error"].as_str().unwrap().contains(needle), "{frame} -> {err}");
    }
    a.send_binary(b"\x00\x01binary").await;
    assert_eq!(a.recv_json().await["code"], "binary_not_supported");

    // Still usable, and none of the above reached Bob: his first frame is this one.
    a.send_msg(&alice, &bob, "fine").await;
    assert_eq!(bws.recv_json().await["payload"], "fine");
}

async fn spoofed_from_is_rejected_and_not_delivered(b: Backend) {
    let s = b.server();
    let (alice, bob, mallory) = (s.new_user().await, s.new_user().await, s.new_user().await);
    let mut m = s.connect(&mallory).await;
    let mut bws = s.connect(&bob).await;
    m.send_msg(&alice, &bob, "I am alice").await;
    let err = m.recv_json().await;
    assert_eq!(err["code"], "forbidden");
    assert!(err["error"].as_str().unwrap().contains("from"));
    m.send_msg(&mallory, &bob, "honest").await;
    let got = bws.recv_json().await;
    assert_eq!(got["from"], mallory.as_str());
    assert_eq!(got["payload"], "honest");
}

async fn oversized_payload_is_rejected(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    let mut bws = s.connect(&bob).await;
    a.send_msg(&alice, &bob, &"x".repeat(64 * 1024 + 1)).await;
    let err = a.recv_json().await;
    assert_eq!(err["code"], "payload_too_large");
    let exact = "y".repeat(64 * 1024);
    a.send_msg(&alice, &bob, &exact).await;
    assert_eq!(bws.recv_json().await["payload"].as_str().unwrap().len(), exact.len());
    // A frame far beyond any limit ends that socket (1009), not the server.
    // The server may close (and reset) before the client has written it all: the write's
    // own result is not the point, the close and the server's health are.
    let big = tokio_tungstenite::tungstenite::Message::Text("z".repeat(1024 * 1024).into());
    let _ = futures_util::SinkExt::send(&mut a.inner, big).await;
    let (code, _) = a.expect_close().await;
    assert!(code == 1009 || code == 1006, "closed with {code}");
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
}

async fn newest_connection_wins_on_one_replica(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut old = s.connect(&bob).await;
    let mut new = s.connect(&bob).await;
    let (code, reason) = old.expect_close().await;
    assert_eq!(code, 4409);
    assert!(reason.contains("newer"), "{reason}");
    let mut a = s.connect(&alice).await;
    a.send_msg(&alice, &bob, "to the new one").await;
    assert_eq!(new.recv_json().await["payload"], "to the new one");
}

async fn full_inbox_refuses_sends(b: Backend) {
    let config = b.config().with("ENIGMA__LIMITS__INBOX_CAPACITY", 3);
    let s = Server::start(&config);
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    for i in 0..3 {
        a.send_msg(&alice, &bob, &format!("m{i}")).await;
    }
    a.send_msg(&alice, &bob, "one too many").await;
    let err = a.recv_json().await;
    assert_eq!(err["code"], "inbox_full", "{err}");
    // The stored three are intact; once delivered there is room again.
    let mut bws = s.connect(&bob).await;
    for i in 0..3 {
        assert_eq!(bws.recv_json().await["payload"], format!("m{i}"));
    }
    // Deletion after delivery is asynchronous: retry the send until it is accepted.
    let start = std::time::Instant::now();
    loop {
        a.send_msg(&alice, &bob, "fits").await;
        let frame = tokio::select! {
            f = bws.recv_json() => Some(f),
            e = a.recv_json() => { assert_eq!(e["code"], "inbox_full"); None }
        };
        if let Some(f) = frame {
            assert_eq!(f["payload"], "fits");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "inbox never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn acknowledging_clients_get_ids_receipts_and_redelivery(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    assert_eq!(a.protocol.as_deref(), Some("enigma.v1"));
    for i in 0..3 {
        a.send_json(json!({"from": alice, "to": bob, "payload": format!("m{i}"), "ref": format!("r{i}")})).await;
        let receipt = a.recv_json().await;
        assert_eq!(receipt["ref"], format!("r{i}"));
        assert_eq!(receipt["status"], "stored");
        assert!(receipt["id"].as_str().unwrap().contains('-'));
    }
    // An error carries the ref of the send it answers.
    a.send_json(json!({"from": alice, "to": "nobody", "payload": "x", "ref": "bad"})).await;
    let err = a.recv_json().await;
    assert_eq!((err["ref"].as_str(), err["code"].as_str()), (Some("bad"), Some("user_not_found")));

    let mut bws = s.connect_v1(&bob).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let d = bws.recv_json().await;
        assert_eq!(d["payload"], format!("m{i}"));
        assert!(d["ts"].as_u64().unwrap() > 1_600_000_000_000);
        ids.push(d["id"].as_str().unwrap().to_owned());
    }
    // Acknowledge only the first; reconnecting redelivers the other two, in order.
    bws.send_json(json!({"ack": ids[0]})).await;
    bws.send_json(json!({"ack": "garbage"})).await;
    assert_eq!(bws.recv_json().await["code"], "invalid_frame");
    bws.close().await;
    let mut bws = s.connect_v1(&bob).await;
    let again: Vec<Value> = vec![bws.recv_json().await, bws.recv_json().await];
    assert_eq!(again[0]["id"], ids[1]);
    assert_eq!(again[1]["id"], ids[2]);
    bws.send_json(json!({"ack": [ids[1], ids[2]]})).await;
    // Frames are handled in order: once this error arrives, the acknowledgement was applied.
    bws.send_json(json!({"ack": []})).await;
    assert_eq!(bws.recv_json().await["code"], "invalid_frame");
    // Nothing unacknowledged is left: the next connection starts with the next message.
    bws.close().await;
    let mut bws = s.connect_v1(&bob).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "fresh"})).await;
    assert_eq!(bws.recv_json().await["payload"], "fresh");
}

async fn cors_and_health_endpoints_answer(b: Backend) {
    let s = b.server();
    let response = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/login/abc"))
        .header("Origin", "http://localhost:5173")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let response = s.http.get(s.url("/healthz")).header("Origin", "http://x.example").send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    let (status, body) = s.get("/nope").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

async fn sigterm_closes_sockets_with_1001_and_exits(b: Backend) {
    const GRACE_MS: u64 = 500;
    let mut s = Server::start(&b.config().with("ENIGMA__SERVER__SHUTDOWN_GRACE_MS", GRACE_MS));
    let (alice, bob, carol) = (s.new_user().await, s.new_user().await, s.new_user().await);
    let mut a = s.connect(&alice).await;
    // Bob's session is stuck writing a backlog he does not read, with his sends waiting: it
    // would take 2 s to end (1 s for its answers, 1 s for its close frame), so it holds the
    // drain open past the grace period.
    fill_backlog(&s, &bob).await;
    let mut stuck = s.connect_v1(&bob).await;
    for i in 0..5 {
        stuck.send_json(json!({"from": bob, "to": carol, "payload": "x", "ref": i.to_string()})).await;
    }
    let terminated = Instant::now();
    s.sigterm();
    let (code, _) = a.expect_close().await;
    assert_eq!(code, 1001, "open sockets are closed with 1001");
    // Draining now: not ready, and no new socket is accepted.
    // A refused connection (the listener is closed) is not ready either.
    if let Ok(response) = s.http.get(s.url("/readyz")).send().await {
        assert_eq!(response.status().as_u16(), 503, "ready while draining");
    }
    let refused = Ws::try_connect(&s.ws_url(&format!("/connect/{carol}")), None).await;
    assert!(refused.is_err(), "a new socket was accepted during the drain");
    assert!(s.running(), "the checks above ran during the drain, not after the exit");
    // Exits within the grace period, cutting Bob's session short (1 s of margin for the exit
    // itself, still under the 2 s Bob's session would take).
    let status = s.wait_exit(DEADLINE).expect("exits after SIGTERM");
    let took = terminated.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_millis(GRACE_MS + 1000), "exited {took:?} after SIGTERM (grace {GRACE_MS} ms)");
    drop(stuck);
}

async fn silent_peers_are_dropped_and_live_ones_kept(b: Backend) {
    // Wide enough that a live client answering pings on a loaded machine is never late.
    let config = b.config().with("ENIGMA__SERVER__PING_INTERVAL_MS", 250).with("ENIGMA__SERVER__IDLE_TIMEOUT_MS", 1000);
    let s = Server::start(&config);
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    // Bob's client reads (and so answers the server's pings); Alice's never reads, as a dead
    // peer behind a load balancer would.
    let mut live = s.connect(&bob).await;
    let mut dead = s.connect(&alice).await;
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        // Pings are answered by the client library while it reads; nothing else arrives.
        let frame = tokio::time::timeout(Duration::from_millis(3500), live.next()).await;
        (frame.is_err(), live)
    });
    let (quiet, mut live) = reader.await.unwrap();
    assert!(quiet, "the live socket got no data frame and was not closed for 3.5 s (over 3 idle timeouts)");
    // The server gave up on the silent one (4408). Its client, reading only now, may see the
    // reset of the closed connection before the close frame: the server's count is the proof.
    wait_until("the silent socket to be dropped as idle", DEADLINE, || async {
        s.metric("enigma_connections_closed_total{reason=\"idle\"}").await == 1.0
    })
    .await;
    let (code, reason) = dead.expect_close().await;
    assert!(code == 4408 || code == 1006, "closed with {code} {reason}");
    assert!(started.elapsed() < DEADLINE);
    // The live socket still works.
    let mut a = s.connect(&alice).await;
    a.send_msg(&alice, &bob, "still here").await;
    assert_eq!(live.recv_json().await["payload"], "still here");
}

async fn a_send_followed_at_once_by_a_close_is_stored(b: Backend) {
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut bws = s.connect(&bob).await;
    for i in 0..5 {
        let mut a = s.connect(&alice).await;
        a.send_msg(&alice, &bob, &format!("last words {i}")).await;
        a.close().await; // the Close frame right behind the send
        assert_eq!(bws.recv_json().await["payload"], format!("last words {i}"));
    }
}

async fn a_slow_but_reading_client_gets_every_message_once_in_order(b: Backend) {
    // A tiny live queue: most doorbells are missed and turned into catch-ups on the inbox, while
    // newer deliveries keep arriving; none may overtake a missed one.
    let config = b
        .config()
        .with("ENIGMA__LIMITS__OUTBOUND_QUEUE_FRAMES", 4)
        .with("ENIGMA__LIMITS__OUTBOUND_QUEUE_BYTES", 128 * 1024);
    let s = Server::start(&config);
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut bws = s.connect(&bob).await;
    let mut a = s.connect(&alice).await;
    let payload = "q".repeat(60 * 1024);
    let (alice2, bob2) = (alice.clone(), bob.clone());
    let sender = tokio::spawn(async move {
        for i in 0..400 {
            a.send_msg(&alice2, &bob2, &format!("{i}:{payload}")).await;
        }
        a
    });
    for i in 0..400 {
        let frame = bws.recv_json().await;
        let text = frame["payload"].as_str().unwrap();
        assert!(text.starts_with(&format!("{i}:")), "expected message {i}, got {}", &text[..text.len().min(8)]);
        if i % 50 == 0 {
            // A reader that falls behind far enough for the socket's buffers to fill, so the
            // server blocks writing while newer deliveries are queued and older ones missed.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _a = sender.await.unwrap();
}
