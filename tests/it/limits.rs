//! Nobody drowns anybody: a flooder is refused its share of a recipient's inbox while the
//! recipient's other contacts get through; budgets (logins per address, sends per user)
//! hold across reconnects and replicas; refusals are clear (429 + `Retry-After`, or a
//! `rate_limited` frame with `retry_after_ms` and the `ref`) and store nothing; connection caps
//! refuse the extra connections, not the existing users. At the shipped defaults what people
//! do passes (a 500-message backlog, a school of 300 behind one address) and floods do not;
//! behind the local cluster's nginx the address limited is the one nginx forwards, and a
//! forged one (through nginx or straight to a replica) buys nothing.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::{
    Backend, Claimant, DEADLINE, Nginx, Redis, Server, ServerConfig, Ws, expect_unauthorized, nginx_binary, random_key,
    test_token_keys,
};

both_engines!(
    a_flood_refuses_the_flooder_not_the_friend,
    a_login_flood_is_throttled_per_address,
    the_send_budget_survives_reconnects_and_replicas,
    socket_opens_are_limited_per_user,
    a_byte_flood_to_throwaway_recipients_is_refused_early,
    at_the_defaults_a_phone_flushes_a_backlog_of_500_in_one_burst,
    at_the_defaults_a_school_behind_one_address_registers_connects_and_chats,
    at_the_defaults_a_login_flood_of_thousands_is_throttled,
    sockets_refused_for_a_missing_token_do_not_lock_the_owner_out,
    fresh_ids_cannot_crowd_out_a_contact,
);

// Storage charged to its source: the memory engine at 32 MiB, a Redis at `maxmemory 48mb`.
mod store {
    #[tokio::test]
    async fn memory_one_address_cannot_fill_the_store() {
        super::one_address_cannot_fill_the_store(super::Backend::memory()).await
    }
    #[tokio::test]
    async fn redis_one_address_cannot_fill_the_store() {
        super::one_address_cannot_fill_the_store(super::Backend::redis()).await
    }
    #[tokio::test]
    async fn cluster_one_address_cannot_fill_the_store() {
        super::one_address_cannot_fill_the_store(super::Backend::cluster()).await
    }
    #[tokio::test]
    async fn embedded_one_address_cannot_fill_the_store() {
        super::one_address_cannot_fill_the_store(super::Backend::embedded()).await
    }
    #[tokio::test]
    async fn memory_one_address_cannot_fill_the_directory() {
        super::one_address_cannot_fill_the_directory(super::Backend::memory()).await
    }
    #[tokio::test]
    async fn embedded_one_address_cannot_fill_the_directory() {
        super::one_address_cannot_fill_the_directory(super::Backend::embedded()).await
    }
    #[tokio::test]
    async fn redis_one_address_cannot_fill_the_directory() {
        super::one_address_cannot_fill_the_directory(super::Backend::redis()).await
    }
    // Contacts and strangers on the other topologies (both engines run it in the list above).
    #[tokio::test]
    async fn cluster_fresh_ids_cannot_crowd_out_a_contact() {
        super::fresh_ids_cannot_crowd_out_a_contact(super::Backend::cluster()).await
    }
    #[tokio::test]
    async fn sentinel_fresh_ids_cannot_crowd_out_a_contact() {
        super::fresh_ids_cannot_crowd_out_a_contact(super::Backend::sentinel()).await
    }
}

/// Two replicas on a Redis (one server on the memory engine, which has no second replica).
fn replicas(b: &Backend, config: ServerConfig) -> (Server, Option<Server>) {
    let first = Server::start(&config);
    let second = b.is_redis().then(|| Server::start(&config));
    (first, second)
}

fn config(b: &Backend, env: &[(&str, &str)]) -> ServerConfig {
    env.iter().fold(b.config(), |c, (k, v)| c.with(k, v))
}

async fn a_flood_refuses_the_flooder_not_the_friend(b: Backend) {
    const SHARE: usize = 100;
    let share = SHARE.to_string();
    let c = config(&b, &[("ENIGMA__LIMITS__INBOX_SHARE", &share), ("ENIGMA__LIMITS__INBOX_CAPACITY", "300")]);
    let (a, other) = replicas(&b, c);
    let bside = other.as_ref().unwrap_or(&a);
    let (attacker, friend, victim) = (a.new_user().await, bside.new_user().await, bside.new_user().await);
    // The attacker on replica A floods the offline victim, pipelining every send.
    let mut flood = a.connect_v1(&attacker).await;
    let total = SHARE + 150;
    for i in 0..total {
        flood
            .send_json(json!({"from": attacker, "to": victim, "payload": format!("junk{i}"), "ref": i.to_string()}))
            .await;
    }
    let (mut stored, mut refused) = (0, 0);
    while stored + refused < total {
        let frame = flood.recv_json().await;
        match (frame["status"].as_str(), frame["code"].as_str()) {
            (Some("stored"), _) => stored += 1,
            (_, Some("inbox_full")) => refused += 1,
            other => panic!("unexpected answer {other:?}: {frame}"),
        }
    }
    assert_eq!((stored, refused), (SHARE, total - SHARE), "the attacker holds exactly its share");
    // The friend, on replica B, still gets through: every message.
    let mut f = bside.connect_v1(&friend).await;
    for i in 0..20 {
        let answer = f.send_answered(&friend, &victim, &format!("hi{i}"), &format!("f{i}")).await;
        assert_eq!(answer["status"], "stored", "friend's message {i}: {answer}");
    }
    // The victim connects (a spec client: delivered means removed) and gets the share and the friend's.
    let mut v = bside.connect(&victim).await;
    let (mut junk, mut from_friend) = (0, 0);
    while junk + from_friend < SHARE + 20 {
        let m = v.recv_json().await;
        if m["from"] == friend.as_str() { from_friend += 1 } else { junk += 1 }
    }
    assert_eq!((junk, from_friend), (SHARE, 20));
    // Delivered messages give the share back: the attacker may send again (the removal is
    // asynchronous for spec clients, hence the wait).
    let started = std::time::Instant::now();
    for n in 0.. {
        let answer = flood.send_answered(&attacker, &victim, "again", &format!("again{n}")).await;
        if answer["status"] == "stored" {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the attacker's share was never given back: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn login_status(server: &Server, local: &str) -> (u16, Option<String>, Value) {
    let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
    let response = client.get(server.url(&format!("/login/{}", random_key()))).send().await.expect("login");
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

async fn a_login_flood_is_throttled_per_address(b: Backend) {
    let c = config(
        &b,
        &[("ENIGMA__RATE__LOGIN_PER_ADDRESS__BURST", "20"), ("ENIGMA__RATE__LOGIN_PER_ADDRESS__PER_SECOND", "0.2")],
    );
    let (a, other) = replicas(&b, c);
    for i in 0..20 {
        assert_eq!(login_status(&a, "127.0.0.1").await.0, 200, "login {i} is within the burst");
    }
    let (status, retry, body) = login_status(&a, "127.0.0.1").await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=6).contains(&retry), "Retry-After {retry}");
    // The other replica knows the same budget.
    if let Some(other) = &other {
        assert_eq!(login_status(other, "127.0.0.1").await.0, 429, "switching replica resets nothing");
    }
    // Another address is another budget.
    assert_eq!(login_status(other.as_ref().unwrap_or(&a), "127.0.0.2").await.0, 200);
    // A forged X-Forwarded-For from an untrusted peer is ignored.
    let forged = a.http.get(a.url(&format!("/login/{}", random_key()))).header("x-forwarded-for", "203.0.113.7");
    assert_eq!(forged.send().await.unwrap().status().as_u16(), 429);
}

async fn the_send_budget_survives_reconnects_and_replicas(b: Backend) {
    let c = config(
        &b,
        &[
            ("ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST", "30"),
            ("ENIGMA__RATE__SEND_MESSAGES_PER_USER__PER_SECOND", "0.1"),
        ],
    );
    let (a, other) = replicas(&b, c);
    let (sender, buddy) = (a.new_user().await, a.new_user().await);
    let mut ws = a.connect_v1(&sender).await;
    for i in 0..30 {
        assert_eq!(ws.send_answered(&sender, &buddy, "m", &i.to_string()).await["status"], "stored", "send {i}");
    }
    let refused = ws.send_answered(&sender, &buddy, "over", "over").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some_and(|ms| ms > 1000), "{refused}");
    // The socket stays usable (a malformed frame is still answered).
    ws.send_text("{}").await;
    assert_eq!(ws.recv_json().await["code"], "invalid_frame");
    ws.close().await;
    // Reconnecting, on the other replica if there is one, gives no fresh budget.
    let second = other.as_ref().unwrap_or(&a);
    let mut ws = second.connect_v1(&sender).await;
    assert_eq!(ws.send_answered(&sender, &buddy, "again", "again").await["code"], "rate_limited");
    // Nothing was stored for the refused sends: the buddy has exactly the 30.
    let mut inbox = second.connect(&buddy).await;
    for i in 0..30 {
        assert_eq!(inbox.recv_json().await["payload"], "m", "message {i}");
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), inbox.inner.next()).await;
    assert!(extra.is_err(), "a refused send was stored: {extra:?}");
}

async fn socket_opens_are_limited_per_user(b: Backend) {
    let c = config(
        &b,
        &[("ENIGMA__RATE__SOCKET_PER_USER__BURST", "3"), ("ENIGMA__RATE__SOCKET_PER_USER__PER_SECOND", "0.1")],
    );
    let (a, other) = replicas(&b, c);
    let user = a.new_user().await;
    for _ in 0..3 {
        a.connect(&user).await.close().await;
    }
    let second = other.as_ref().unwrap_or(&a);
    match Ws::try_connect(&second.ws_url(&format!("/ws/{user}")), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            assert!(response.headers().get("retry-after").is_some());
        }
        other => panic!("a fourth socket open should be refused with 429, got {:?}", other.map(|_| ())),
    }
    // Another user is not affected.
    let someone = a.new_user().await;
    second.connect(&someone).await.close().await;
}

async fn a_byte_flood_to_throwaway_recipients_is_refused_early(b: Backend) {
    // The defaults (the harness turns limits off unless told): 64 KiB payloads to four
    // recipients, as fast as the server takes them.
    let defaults = [
        ("ENIGMA__LIMITS__INBOX_SHARE", "1000"),
        ("ENIGMA__LIMITS__INBOX_SHARE_BYTES", "8388608"),
        ("ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST", "1000"),
        ("ENIGMA__RATE__SEND_MESSAGES_PER_USER__PER_SECOND", "20"),
        ("ENIGMA__RATE__SEND_BYTES_PER_USER__BURST", "16777216"),
        ("ENIGMA__RATE__SEND_BYTES_PER_USER__PER_SECOND", "262144"),
    ];
    let s = Server::start(&config(&b, &defaults));
    let sender = s.new_user().await;
    let mut recipients = Vec::new();
    for _ in 0..4 {
        recipients.push(s.new_user().await);
    }
    let payload = "p".repeat(64 * 1024 - 16);
    let mut ws = s.connect_v1(&sender).await;
    let started = std::time::Instant::now();
    let total = 4 * 200;
    for i in 0..total {
        let to = &recipients[i % 4];
        ws.send_json(json!({"from": sender, "to": to, "payload": payload, "ref": i.to_string()})).await;
    }
    let (mut stored, mut refused) = (0usize, 0usize);
    while stored + refused < total {
        let frame = ws.recv_json().await;
        match (frame["status"].as_str(), frame["code"].as_str()) {
            (Some("stored"), _) => stored += 1,
            (_, Some("rate_limited" | "inbox_full")) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // The send budget: a 16 MiB burst and 256 KiB/s, about 256 envelopes of 64 KiB plus four
    // a second, out of 800 tried (51 MB).
    let allowed = 16 * 1024 * 1024 + (started.elapsed().as_secs_f64().ceil() as usize + 1) * 256 * 1024;
    let stored_bytes = stored * 64 * 1024;
    assert!(stored_bytes <= allowed, "{stored} envelopes of 64 KiB stored ({allowed} bytes allowed)");
    assert!(refused >= total / 2, "{refused} refused");
}

#[tokio::test]
async fn a_full_redis_answers_unavailable_and_loses_nothing() {
    let redis = Redis::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let server = Server::start(&ServerConfig::redis(&redis));
    let (sender, receiver) = (server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    let payload = "q".repeat(60 * 1024);
    let mut stored = 0;
    let mut answer = Value::Null;
    for i in 0..400 {
        answer = ws.send_answered(&sender, &receiver, &payload, &i.to_string()).await;
        if answer["status"] != "stored" {
            break;
        }
        stored += 1;
    }
    assert_eq!(answer["code"], "unavailable", "a full Redis refuses: {answer}");
    assert!(stored > 10, "only {stored} stored before Redis was full");
    // Everything stored is still there, and the receiver can still connect and take it (the
    // scripts a reader runs may run on a full Redis; removing frees memory).
    let mut r = server.connect(&receiver).await;
    for i in 0..stored {
        assert_eq!(r.recv_json().await["payload"].as_str().map(str::len), Some(payload.len()), "message {i}");
    }
}

/// A memory-engine relay taking 4 connections per address (the HTTP client's pooled connection
/// counts), and six users of it.
async fn capped_at_four() -> (Server, Vec<String>) {
    let server = Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS", 4));
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(server.new_user().await);
    }
    (server, users)
}

/// Whether `ws` was refused: an `unavailable` error frame, then close 1013 (both asserted);
/// false if it stays quiet for 500 ms (admitted). Anything else fails the test.
async fn refused_with_1013(ws: &mut Ws) -> bool {
    match tokio::time::timeout(Duration::from_millis(500), ws.inner.next()).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
            assert!(text.contains("unavailable"), "{text}");
            assert_eq!(ws.expect_close().await.0, 1013, "a socket over the cap is closed with 1013");
            true
        }
        Ok(Some(Err(e))) => panic!("the socket was reset instead of closed: {e}"),
        Ok(other) => panic!("unexpected: {other:?}"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_while_existing_users_keep_working() {
    let (server, users) = capped_at_four().await;
    let mut a = server.connect(&users[0]).await;
    let mut b = server.connect(&users[1]).await;
    // More sockets from the same address until the cap refuses one: closed with 1013, try
    // again later. A live one stays quiet.
    let mut held = Vec::new();
    let mut refused = false;
    for user in &users[2..] {
        let mut ws = server.connect(user).await;
        if refused_with_1013(&mut ws).await {
            refused = true;
            break;
        }
        held.push(ws);
    }
    assert!(refused, "no socket was refused at the cap");
    assert_eq!(server.raw_get_status("/healthz").await, 503, "HTTP over the cap gets 503");
    // The users already connected keep talking.
    a.send_msg(&users[0], &users[1], "still here").await;
    assert_eq!(b.recv_json().await["payload"], "still here");
}

/// An `enigma.v1` client over the cap is refused like any other, with 1013: the refusal's
/// upgrade names the subprotocol the client asked for (without it, the client's handshake
/// failed — "no subprotocol" — and it never read the refusal).
#[tokio::test]
async fn an_acknowledging_client_over_the_cap_is_refused_with_1013_not_a_failed_handshake() {
    let (server, users) = capped_at_four().await;
    let mut held = Vec::new();
    for user in &users {
        let mut ws = match Ws::try_connect(&server.ws_url(&format!("/ws/{user}")), Some("enigma.v1")).await {
            Ok(ws) => ws,
            Err(e) => panic!("the handshake failed instead of a refusal: {e}"),
        };
        if refused_with_1013(&mut ws).await {
            return;
        }
        held.push(ws);
    }
    panic!("no socket was refused at the cap");
}

/// A client that writes before it reads still gets the refusal: the relay reads (and drops)
/// what a refused socket sent until the client's close, instead of closing the connection with
/// unread data, which resets it: the client's writes then failed with a reset or a broken pipe
/// before it could read the error and the 1013 close.
#[tokio::test]
async fn a_refused_socket_gets_its_error_and_close_even_when_the_client_wrote_first() {
    let (server, users) = capped_at_four().await;
    let mut held = Vec::new();
    for user in &users[1..] {
        let mut ws = server.connect(user).await;
        // A client that keeps writing for a while before it reads: the relay has long answered.
        // (An admitted socket stores the sends and has nothing to answer.)
        let writing = tokio::time::Instant::now();
        for i in 0.. {
            ws.send_msg(user, &users[0], &format!("m{i}")).await;
            if writing.elapsed() > Duration::from_millis(100) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if refused_with_1013(&mut ws).await {
            return;
        }
        held.push(ws);
    }
    panic!("no socket was refused at the cap");
}

// The shipped defaults (`ServerConfig::with_shipped_limits`: nothing turned off, nothing
// raised): what people really do passes, floods do not.

async fn at_the_defaults_a_phone_flushes_a_backlog_of_500_in_one_burst(b: Backend) {
    let s = Server::start(&b.config().with_shipped_limits());
    let (phone, friend) = (s.new_user().await, s.new_user().await);
    // A phone back online sends the 500 messages it queued offline, pipelined, 1 KiB each,
    // to a friend who is offline: every one is stored.
    let mut ws = s.connect_v1(&phone).await;
    let payload = "b".repeat(1024);
    const BACKLOG: usize = 500;
    for i in 0..BACKLOG {
        ws.send_json(json!({"from": phone, "to": friend, "payload": payload, "ref": i.to_string()})).await;
    }
    for i in 0..BACKLOG {
        let answer = ws.recv_json().await;
        assert_eq!(answer["status"], "stored", "message {i} of the backlog: {answer}");
    }
    // And the friend, connecting, gets the whole backlog.
    let mut inbox = s.connect(&friend).await;
    for i in 0..BACKLOG {
        assert_eq!(inbox.recv_json().await["payload"].as_str().map(str::len), Some(1024), "message {i}");
    }
}

/// Three classmates each pupil writes to (never itself; each pupil is written to by three).
fn classmates(pupil: usize, pupils: usize) -> [usize; 3] {
    [1, 7, 100].map(|step| (pupil + step) % pupils)
}

/// One pupil's phone: an `enigma.v1` socket, the receipts it got and what it read.
struct Phone {
    ws: Ws,
    receipts: usize,
    read: Vec<String>,
}

impl Phone {
    async fn open(server: &Server, user: &str, from: std::net::IpAddr) -> Phone {
        let url = server.ws_url(&format!("/ws/{user}"));
        let ws = Ws::try_connect_from(&url, from, &[("Sec-WebSocket-Protocol", "enigma.v1")])
            .await
            .unwrap_or_else(|e| panic!("{user}'s socket from {from} refused: {e}"));
        Phone { ws, receipts: 0, read: Vec::new() }
    }

    /// Writes to each classmate, pipelined: `<from>><to>`, which is also its `ref`.
    async fn write(&mut self, users: &[String], pupil: usize) {
        for to in classmates(pupil, users.len()) {
            let text = format!("{pupil}>{to}");
            self.ws.send_json(json!({"from": users[pupil], "to": users[to], "payload": text, "ref": text})).await;
        }
    }

    /// Reads (and acknowledges) until it has `receipts` receipts and `read` messages; anything
    /// but a receipt or a message (an error frame, a close) fails the test.
    async fn read_until(&mut self, receipts: usize, read: usize) {
        while self.receipts < receipts || self.read.len() < read {
            let frame = self.ws.recv_json().await;
            if frame.get("ref").is_some() {
                assert_eq!(frame["status"], "stored", "a refused message: {frame}");
                self.receipts += 1;
            } else if let (Some(text), Some(id)) = (frame["payload"].as_str(), frame["id"].as_str()) {
                self.read.push(text.to_owned());
                let ack = json!({"ack": id});
                self.ws.send_json(ack).await;
            } else {
                panic!("neither a receipt nor a message: {frame}");
            }
        }
    }
}

/// A school behind one NAT address (127.0.0.5), at the shipped defaults: 300 pupils register at
/// once; three quarters go online at once and each writes to three classmates, some of whom are
/// offline; those come online later, read what waited for them and write too. Not one refusal
/// of any kind (429, `inbox_full`, `rate_limited`, 1013…), and every message arrives.
async fn at_the_defaults_a_school_behind_one_address_registers_connects_and_chats(b: Backend) {
    let s = Server::start(&b.config().with_shipped_limits());
    const PUPILS: usize = 300;
    let school: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    // 300 registrations at once, a connection each, as 300 phones would.
    let paths: Vec<String> = (0..PUPILS).map(|_| format!("/login/{}", random_key())).collect();
    let logins = paths.iter().map(|path| s.request_from(school, "GET", path, None));
    let users: Vec<String> = futures_util::future::join_all(logins)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, (status, body))| {
            assert_eq!(status, 200, "registration {i} of {PUPILS} from one address: {body}");
            body["userId"].as_str().unwrap().to_owned()
        })
        .collect();
    let offline = |pupil: usize| pupil % 4 == 3;
    let (late, early): (Vec<usize>, Vec<usize>) = (0..PUPILS).partition(|&p| offline(p));
    // What each pupil reads from pupils of one group: those of its writers in the group.
    let from_group = |pupil: usize, group: &dyn Fn(usize) -> bool| {
        (0..PUPILS).filter(|&w| group(w) && classmates(w, PUPILS).contains(&pupil)).count()
    };
    // The early ones connect at once and write, to offline classmates too; each gets its three
    // receipts and reads what the other early ones wrote to it.
    let opens = early.iter().map(|&p| Phone::open(&s, &users[p], school));
    let mut phones: Vec<Option<Phone>> = (0..PUPILS).map(|_| None).collect();
    for (&p, phone) in early.iter().zip(futures_util::future::join_all(opens).await) {
        phones[p] = Some(phone);
    }
    for &p in &early {
        phones[p].as_mut().unwrap().write(&users, p).await;
    }
    for &p in &early {
        phones[p].as_mut().unwrap().read_until(3, from_group(p, &|w| !offline(w))).await;
    }
    // The late ones come online at once, read what waited for them, and write.
    let opens = late.iter().map(|&p| Phone::open(&s, &users[p], school));
    for (&p, phone) in late.iter().zip(futures_util::future::join_all(opens).await) {
        phones[p] = Some(phone);
    }
    for &p in &late {
        phones[p].as_mut().unwrap().read_until(0, from_group(p, &|w| !offline(w))).await;
        phones[p].as_mut().unwrap().write(&users, p).await;
    }
    // Everyone has every message written to them, once: three each.
    for (p, phone) in phones.iter_mut().enumerate() {
        let phone = phone.as_mut().unwrap();
        phone.read_until(3, 3).await;
        phone.read.sort();
        let mut expected: Vec<String> =
            (0..PUPILS).filter(|&w| classmates(w, PUPILS).contains(&p)).map(|w| format!("{w}>{p}")).collect();
        expected.sort();
        assert_eq!(phone.read, expected, "what pupil {p} read");
    }
    assert_eq!(s.metric("enigma_rate_limited_total").await, 0.0, "nothing was rate limited");
    assert_eq!(s.metric("enigma_connections_refused_total").await, 0.0, "no connection was refused");
    assert_eq!(s.metric("enigma_messages_rejected_total").await, 0.0, "no message was refused");
}

async fn at_the_defaults_a_login_flood_of_thousands_is_throttled(b: Backend) {
    let s = Server::start(&b.config().with_shipped_limits());
    const FLOOD: usize = 3_000;
    let started = std::time::Instant::now();
    let mut statuses = futures_util::stream::iter(0..FLOOD)
        .map(|_| {
            let (http, url) = (s.http.clone(), s.url(&format!("/login/{}", random_key())));
            async move { http.get(url).send().await.expect("login").status().as_u16() }
        })
        .buffer_unordered(16);
    let (mut accepted, mut throttled) = (0usize, 0usize);
    while let Some(status) = statuses.next().await {
        match status {
            200 => accepted += 1,
            429 => throttled += 1,
            other => panic!("login answered {other}"),
        }
    }
    // The default budget: a burst of 400, then 5 a second.
    let allowed = 400 + (started.elapsed().as_secs_f64().ceil() as usize + 1) * 5;
    assert!((300..=allowed).contains(&accepted), "{accepted} of {FLOOD} logins accepted ({allowed} allowed)");
    assert_eq!(throttled, FLOOD - accepted, "the rest were throttled");
    assert!(s.metric("enigma_rate_limited_total").await >= throttled as f64);
}

/// The status of a login at `base` from the local address `local`, with extra headers.
async fn login_from(base: &str, local: &str, headers: &[(&str, &str)]) -> u16 {
    let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
    let request = headers
        .iter()
        .fold(client.get(format!("{base}/login/{}", random_key())), |r, (name, value)| r.header(*name, *value));
    request.send().await.expect("login").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_forwarded_address_is_limited_and_a_forged_one_is_not() {
    let Some(binary) = nginx_binary() else {
        assert!(std::env::var_os("CI").is_none(), "nginx is required under CI (apt-get install nginx-light)");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\n*** SKIPPED: no nginx binary ***\n");
        return;
    };
    const BURST: usize = 10;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis)
        .with("ENIGMA__SERVER__TRUSTED_PROXIES", "127.0.0.1")
        .with("ENIGMA__RATE__LOGIN_PER_ADDRESS__BURST", BURST)
        .with("ENIGMA__RATE__LOGIN_PER_ADDRESS__PER_SECOND", "0.05");
    let (a, b) = (Server::start(&config), Server::start(&config));
    // nginx (the local cluster's template) connects to the replicas from 127.0.0.1.
    let nginx = Nginx::start(&binary, &[a.addr, b.addr]);
    let lb = nginx.url("");
    // A client at 127.0.0.2 floods through nginx, claiming to be 198.18.0.7: round-robin over
    // both replicas, one budget, that of 127.0.0.2 (nginx replaces the forged header).
    let forged = [("x-forwarded-for", "198.18.0.7"), ("x-real-ip", "198.18.0.7")];
    for i in 0..BURST {
        assert_eq!(login_from(&lb, "127.0.0.2", &forged).await, 200, "login {i} is within the burst");
    }
    assert_eq!(login_from(&lb, "127.0.0.2", &forged).await, 429, "the flood is throttled");
    // A fresh forged address through nginx gives no fresh budget.
    let other_forgery = [("x-forwarded-for", "198.18.0.8")];
    assert_eq!(login_from(&lb, "127.0.0.2", &other_forgery).await, 429, "a forged header passed through nginx");
    // Another client behind the same nginx is another address: the replicas did not limit
    // nginx's own address (127.0.0.1), they limited the one it forwarded.
    for i in 0..3 {
        assert_eq!(login_from(&lb, "127.0.0.3", &forged).await, 200, "another client's login {i}");
    }
    // Straight to a replica from a peer it does not trust (127.0.0.4), a forwarded header is
    // ignored: a new forged address per request still spends 127.0.0.4's one budget.
    let base = a.url("");
    for i in 0..BURST {
        let xff = format!("198.18.1.{i}");
        assert_eq!(login_from(&base, "127.0.0.4", &[("x-forwarded-for", &xff)]).await, 200, "direct login {i}");
    }
    let refused = login_from(&base, "127.0.0.4", &[("x-forwarded-for", "198.18.1.200"), ("x-real-ip", "198.18.1.201")]);
    assert_eq!(refused.await, 429, "a forged X-Forwarded-For from an untrusted peer bought a fresh budget");
    assert_eq!(login_from(&b.url(""), "127.0.0.4", &[]).await, 429, "and the other replica agrees");
}

/// Mallory knows only Bob's id. From another address she opens more token-less sockets as Bob
/// than Bob's socket budget holds (shipped defaults: a burst of 60, then 1 a second), then keeps
/// opening 2 a second, on every replica. Each is refused (`unauthorized`, 4401), and each of
/// Bob's own reconnects with his token is admitted: a refusal costs the refused client's
/// address, never the user it tried to be.
async fn sockets_refused_for_a_missing_token_do_not_lock_the_owner_out(b: Backend) {
    let config = b.config().with_shipped_limits().with("ENIGMA__AUTH__TOKEN_KEYS", test_token_keys());
    let first = Server::start(&config);
    let second = b.is_redis().then(|| Server::start(&config));
    let replicas: Vec<&Server> = std::iter::once(&first).chain(second.as_ref()).collect();
    let bob = Claimant::login(&first).await;
    let token = bob.token().await;
    let mallory: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let attempt = |n: usize| {
        let url = replicas[n % replicas.len()].ws_url(&format!("/ws/{}", bob.user));
        async move {
            match Ws::try_connect_from(&url, mallory, &[]).await {
                Ok(mut ws) => expect_unauthorized(&mut ws).await,
                // Refused before the upgrade: fine for the test, it is Mallory who is refused.
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {}
                Err(e) => panic!("Mallory's socket: {e}"),
            }
        }
    };
    for n in 0..70 {
        attempt(n).await;
    }
    for round in 0..13 {
        attempt(2 * round).await;
        attempt(2 * round + 1).await;
        let server = replicas[round % replicas.len()];
        let url = server.ws_url(&format!("/ws/{}", bob.user));
        match Ws::try_connect_with(&url, &[("Authorization", &format!("Bearer {token}"))]).await {
            Ok(ws) => ws.close().await,
            Err(e) => panic!("Bob's reconnect {round} with his token was refused: {e}"),
        }
    }
}

/// A fresh user registered from the local address `local`.
async fn user_from(server: &Server, local: &str) -> String {
    try_user_from(server, local).await.unwrap_or_else(|status| panic!("login from {local}: {status}"))
}

/// A fresh user registered from `local`, or the status it was refused with.
async fn try_user_from(server: &Server, local: &str) -> Result<String, u16> {
    let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
    let response = client.get(server.url(&format!("/login/{}", random_key()))).send().await.expect("login");
    match response.status().as_u16() {
        200 => Ok(response.json::<Value>().await.unwrap()["userId"].as_str().unwrap().to_owned()),
        status => Err(status),
    }
}

/// Each of `ids` fresh users made from 127.0.0.2 sends near-maximal payloads to the offline
/// `victim` until refused; returns how many were stored.
async fn strangers_flood(server: &Server, victim: &str, ids: usize) -> usize {
    let mallory: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let payload = "x".repeat(60_000);
    let mut stored = 0;
    for _ in 0..ids {
        let id = user_from(server, "127.0.0.2").await;
        let url = server.ws_url(&format!("/ws/{id}"));
        let mut ws = Ws::try_connect_from(&url, mallory, &[("Sec-WebSocket-Protocol", "enigma.v1")]).await.unwrap();
        for n in 0.. {
            let answer = ws.send_answered(&id, victim, &payload, &format!("m{n}")).await;
            match (answer["status"].as_str(), answer["code"].as_str()) {
                (Some("stored"), _) => stored += 1,
                (_, Some("inbox_full")) => break,
                other => panic!("unexpected answer {other:?}: {answer}"),
            }
        }
        ws.close().await;
    }
    stored
}

/// At the shipped defaults, one address makes 10 and then 100 fresh ids, and each fills what
/// it can of an offline victim's inbox. The victim's contact (someone the victim wrote to before
/// going offline, on another address) still gets every message (as large as theirs) in: strangers only crowd
/// strangers. With the strangers' pool switched off, ten ids are enough to refuse the contact.
async fn fresh_ids_cannot_crowd_out_a_contact(b: Backend) {
    for pool in ["on", "off"] {
        if pool == "off" && b.is_redis() {
            continue; // the same rule in `send.lua`; once is enough to show the test can fail
        }
        let mut config = b.config().with_shipped_limits();
        if pool == "off" {
            // The storage shares off too: they alone would stop one address short of 64 MiB.
            config = config
                .with("ENIGMA__LIMITS__STRANGER_POOL", 0)
                .with("ENIGMA__LIMITS__STORAGE__PER_PREFIX", 0)
                .with("ENIGMA__LIMITS__STORAGE__PER_SENDER", 0);
        }
        let server = Server::start(&config);
        let (victim, contact) = (user_from(&server, "127.0.0.1").await, user_from(&server, "127.0.0.3").await);
        let mut v = server.connect_v1(&victim).await;
        assert_eq!(v.send_answered(&victim, &contact, "see you", "hello").await["status"], "stored");
        v.close().await;
        let url = server.ws_url(&format!("/ws/{contact}"));
        let local = "127.0.0.3".parse().unwrap();
        let mut c = Ws::try_connect_from(&url, local, &[("Sec-WebSocket-Protocol", "enigma.v1")]).await.unwrap();
        let (mut refused, mut stored) = (0, 0);
        let photo = "p".repeat(60_000);
        for (round, ids) in [10, 90].into_iter().enumerate() {
            stored += strangers_flood(&server, &victim, ids).await;
            for i in 0..3 {
                let answer = c.send_answered(&contact, &victim, &photo, &format!("c{round}-{i}")).await;
                if answer["status"] != "stored" {
                    assert_eq!(answer["code"], "inbox_full", "{answer}");
                    refused += 1;
                }
            }
            if pool == "off" {
                break;
            }
        }
        if pool == "on" {
            assert_eq!(refused, 0, "the contact was refused; strangers stored {stored}");
            // Strangers together hold at most the pool (24 MiB of 60 KB payloads).
            assert!(stored <= 24 * 1024 * 1024 / 60_000, "strangers stored {stored}");
        } else {
            assert_eq!(refused, 3, "without the pool ten ids fill the inbox (strangers stored {stored})");
        }
    }
}

/// Each of `ids` fresh users registered from `local` sends 60 KB payloads, round robin to
/// `sinks` (inboxes nobody reads), until it is refused; returns how many were stored.
async fn fill_from(server: &Server, local: &str, ids: usize, sinks: &[String]) -> usize {
    let address: std::net::IpAddr = local.parse().unwrap();
    let payload = "s".repeat(60_000);
    let mut stored = 0;
    for _ in 0..ids {
        // A full store refuses new registrations too (503): that address is done.
        let Ok(id) = try_user_from(server, local).await else { break };
        let url = server.ws_url(&format!("/ws/{id}"));
        let mut ws = Ws::try_connect_from(&url, address, &[("Sec-WebSocket-Protocol", "enigma.v1")]).await.unwrap();
        stored += ws.fill(&id, sinks, &payload).await;
        ws.close().await;
    }
    stored
}

/// The store scaled down to 32 MiB (memory engine) or 48 MB (a Redis's `maxmemory`), the other
/// limits as shipped. Eleven addresses, each making
/// ids that fill sink inboxes as far as they are let: each address holds at most its share of the
/// store, and as the store fills the shares shrink, so together they stop well short of full.
/// An innocent pair on another address then exchanges ten 60 KB messages with no refusal. With
/// the shares switched off (each a whole store), the same attack fills the store and the
/// innocent sender is refused.
async fn one_address_cannot_fill_the_store(b: Backend) {
    let cluster = matches!(b, Backend::Cluster(_));
    if let Backend::Cluster(c) = &b {
        // Three primaries of 16 MB: the pressure is the fullest one's.
        for node in &c.nodes {
            node.cli(&["CONFIG", "SET", "maxmemory", "16mb"]).expect("CONFIG SET answers");
            node.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]).expect("CONFIG SET answers");
        }
    }
    for shares in ["on", "off"] {
        if shares == "off" && cluster {
            continue; // shown on one Redis; the cluster shows the ledger across slots
        }
        // A Redis of its own per variant: `maxmemory 48mb`, `noeviction` (a full Redis refuses writes).
        let single = matches!(b, Backend::Redis(_));
        let full = single.then(|| Redis::start_with(&["--maxmemory", "48mb", "--maxmemory-policy", "noeviction"]));
        let base = full.as_ref().map_or_else(|| b.config(), ServerConfig::redis);
        let mut config = base.with_shipped_limits().with("ENIGMA__LIMITS__MEMORY_MAX_BYTES", 32 << 20);
        if shares == "off" {
            config =
                config.with("ENIGMA__LIMITS__STORAGE__PER_PREFIX", 0).with("ENIGMA__LIMITS__STORAGE__PER_SENDER", 0);
        }
        let server = Server::start(&config);
        // Registered before the attack: a full store refuses new registrations, not old users.
        let (alice, bob) = (user_from(&server, "127.0.0.1").await, user_from(&server, "127.0.0.1").await);
        let mut stored = 0;
        for host in 2..13 {
            let local = format!("127.0.0.{host}");
            let (Ok(one), Ok(two)) = (try_user_from(&server, &local).await, try_user_from(&server, &local).await)
            else {
                continue; // a full store refuses new registrations
            };
            stored += fill_from(&server, &local, 8, &[one, two]).await;
        }
        let mut a = server.connect_v1(&alice).await;
        let photo = "p".repeat(60_000);
        let mut refused = Vec::new();
        for i in 0..10 {
            let answer = a.send_answered(&alice, &bob, &photo, &format!("a{i}")).await;
            if answer["status"] != "stored" {
                refused.push(answer);
            }
        }
        if shares == "on" {
            assert!(refused.is_empty(), "the innocent sender was refused: {refused:?} (attackers stored {stored})");
            // Eleven prefixes of a tenth each would be more than the store: pressure stopped them
            // short of 90 % of it.
            let capacity = if b.is_redis() { 48 << 20 } else { 32 << 20 };
            assert!(stored * 60_000 < capacity * 9 / 10, "attackers stored {stored} messages");
            let mut bws = server.connect_v1(&bob).await;
            for i in 0..10 {
                let m = bws.recv_json().await;
                assert_eq!(m["from"], alice.as_str(), "message {i}");
            }
        } else {
            assert!(!refused.is_empty(), "without the shares the attack should fill the store (stored {stored})");
            // A full store still lets a reader in and take (and acknowledge) what is waiting.
            let mut bws = server.connect_v1(&bob).await;
            let waiting = 10 - refused.len();
            let mut ids = Vec::new();
            while ids.len() < waiting {
                let m = bws.recv_json().await;
                ids.push(m["id"].clone());
            }
            bws.send_json(serde_json::json!({"ack": ids, "ref": "ack"})).await;
        }
    }
}

/// `count` users registered from `local` each open a socket and send one small message to the
/// next: how many were stored.
async fn a_crowd_sends_once(server: &Server, local: &str, count: usize) -> usize {
    let address: std::net::IpAddr = local.parse().unwrap();
    let mut users = Vec::new();
    for _ in 0..count {
        users.push(user_from(server, local).await);
    }
    let mut stored = 0;
    let mut sockets = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let url = server.ws_url(&format!("/ws/{user}"));
        let mut ws = Ws::try_connect_from(&url, address, &[("Sec-WebSocket-Protocol", "enigma.v1")]).await.unwrap();
        let next = &users[(i + 1) % users.len()];
        let answer = ws.send_answered(user, next, "see you at school", "hi").await;
        if answer["status"] == "stored" {
            stored += 1;
        }
        sockets.push(ws); // all connected at once, as a school is
    }
    stored
}

/// On a Redis with `maxmemory` (64 MB, nearly empty), 300 users behind one address each send a
/// message while all connected: every one is stored (a session's first storage lease is a few
/// KiB, not a busy sender's 256 KiB: 300 of those would be more than the address's share).
#[tokio::test]
async fn a_crowd_behind_one_address_sends_on_a_bounded_redis() {
    let redis = Redis::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
    let server = Server::start(&ServerConfig::redis(&redis).with_shipped_limits());
    // The pressure sampler has read maxmemory (it counts from the first second).
    let deadline = std::time::Instant::now() + DEADLINE;
    while server.metric("enigma_store_pressure").await == 0.0 {
        assert!(std::time::Instant::now() < deadline, "the store's pressure was never sampled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a_crowd_sends_once(&server, "127.0.0.6", 300).await, 300);
}

/// A Redis whose `INFO` is denied (a least-privilege ACL): the shares keep the configured or
/// assumed capacity, so senders are not held to the floor; the relay says why in its log.
#[tokio::test]
async fn without_info_the_storage_shares_keep_their_capacity() {
    let redis = Redis::start();
    redis.cli(&["ACL", "SETUSER", "default", "-info"]).expect("ACL answers");
    let dir = crate::harness::TempDir::new("no-info");
    let log = dir.path().join("relay.log");
    let server = Server::start_logging_to(&ServerConfig::redis(&redis).with_shipped_limits(), &log);
    assert_eq!(a_crowd_sends_once(&server, "127.0.0.7", 30).await, 30);
    let deadline = std::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("cannot read Redis's memory") {
        assert!(std::time::Instant::now() < deadline, "no warning about INFO in the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A registration of an 8 KiB key (the longest accepted), from `local`, made used at once by
/// opening its socket (a used user is kept a year): the status of the login.
async fn register_and_use(server: &Server, local: &str, n: usize) -> u16 {
    let key = format!("{n:08}{}", random_key().replace(['/', '+', '='], "")).repeat(200);
    let key = &key[..8 * 1024];
    let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
    let response = client.get(server.url(&format!("/login/{key}"))).send().await.expect("login");
    let status = response.status().as_u16();
    if status == 200 {
        let user = response.json::<Value>().await.unwrap()["userId"].as_str().unwrap().to_owned();
        let url = server.ws_url(&format!("/ws/{user}"));
        Ws::try_connect_from(&url, local.parse().unwrap(), &[]).await.unwrap().close().await;
    }
    status
}

/// The directory one address can grow: registrations of the longest keys, each used at once
/// (so the cap on unused registrations does not count them), with the login and socket rates
/// raised so only the directory's budget can stop it. The address is refused (429) after its
/// share of the store (`limits.storage.directory_per_prefix`), and an innocent on another address
/// still registers and sends. With the budget off, the memory engine's directory fills the store
/// and the innocent's registration is refused.
async fn one_address_cannot_fill_the_directory(b: Backend) {
    for budget in ["on", "off"] {
        if budget == "off" && b.is_redis() {
            continue; // the same rule on one engine is enough to show the test can fail
        }
        let full =
            b.is_redis().then(|| Redis::start_with(&["--maxmemory", "48mb", "--maxmemory-policy", "noeviction"]));
        let mut config = full
            .as_ref()
            .map_or_else(|| b.config(), ServerConfig::redis)
            .with_shipped_limits()
            .with("ENIGMA__LIMITS__MEMORY_MAX_BYTES", 24 << 20);
        for rate in ["LOGIN_PER_ADDRESS", "SOCKET_PER_ADDRESS"] {
            config = config
                .with(&format!("ENIGMA__RATE__{rate}__BURST"), 1_000_000)
                .with(&format!("ENIGMA__RATE__{rate}__PER_SECOND"), 1_000_000);
        }
        if budget == "off" {
            config = config.with("ENIGMA__LIMITS__STORAGE__DIRECTORY_PER_PREFIX", 0);
        }
        let server = Server::start(&config);
        let (alice, bob) = (user_from(&server, "127.0.0.3").await, user_from(&server, "127.0.0.3").await);
        let mut registered = 0;
        let last = loop {
            let status = register_and_use(&server, "127.0.0.9", registered).await;
            if status != 200 || registered == 3_000 {
                break status;
            }
            registered += 1;
        };
        let mut a = server.connect_v1(&alice).await;
        let photo = "p".repeat(60_000);
        let answer = a.send_answered(&alice, &bob, &photo, "photo").await;
        if budget == "on" {
            assert_eq!(last, 429, "the address was stopped by its directory share ({registered} registered)");
            // A hundredth of the store in registrations of 16.7 KB.
            assert!(registered < 100, "{registered} registered");
            assert_eq!(answer["status"], "stored", "{answer}");
            try_user_from(&server, "127.0.0.3").await.expect("an innocent still registers");
        } else {
            assert_eq!(
                answer["code"], "unavailable",
                "without the budget the directory fills the store ({registered} registered)"
            );
        }
    }
}
