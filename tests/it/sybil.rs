//! Identities are free, addresses are not: whoever holds an IPv6 /64 holds 2^64 addresses, and
//! is still one client to every per-address budget, as one IPv4 address is. Each test runs in
//! a network namespace of its own with a /48 routed to loopback (`harness::Ipv6Namespace`), the
//! relay (and Redis) inside, so the attacker binds a fresh source address of one /64 for every
//! request; a user on another /64 stands for everyone else. At the shipped defaults,
//! registrations, socket opens and challenges from 2,000 addresses of one /64 get one burst
//! (400) between them while a neighbour's pass, and ids registered from a whole /64 cannot make
//! a victim's contact get `inbox_full`. Each test also runs with its mechanism switched off
//! (`rate.address_prefix.ipv6 = 128`; the strangers' pool off) and checks that its assertion
//! would then fail.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Backend, Ipv6Net, Server, Subnet, Ws, random_key};

/// Runs each `async fn name(b: Backend, net: Ipv6Net)` as the tests `memory::name` and
/// `redis::name`, each in a network namespace of its own with a /48 routed to loopback: the
/// test runs its hidden twin `<engine>::inside::name` (`#[ignore]`d, so a plain `cargo test`
/// lists but skips it) under `ip netns exec`, and the twin does the work inside.
macro_rules! in_ipv6_namespace {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        in_ipv6_namespace!(@engine memory; $($(#[$meta])* $name),*);
        in_ipv6_namespace!(@engine redis; $($(#[$meta])* $name),*);
    };
    (@engine $engine:ident; $($(#[$meta:meta])* $name:ident),*) => {
        mod $engine {
            $(
                #[test]
                $(#[$meta])*
                fn $name() {
                    crate::harness::Ipv6Namespace::run_twin(module_path!(), stringify!($name))
                }
            )*
            mod inside {
                $(
                    #[tokio::test]
                    #[ignore = "the body of the test one module up, which runs it in a network namespace"]
                    async fn $name() {
                        if let Some(net) = crate::harness::Ipv6Net::inside() {
                            super::super::$name(crate::harness::Backend::$engine(), net).await
                        }
                    }
                )*
            }
        }
    };
}

in_ipv6_namespace!(
    registrations_from_one_64_count_as_one_client,
    socket_opens_and_challenges_from_one_64_count_as_one_client,
    ids_from_a_whole_64_cannot_crowd_out_a_contact,
    connections_from_one_64_share_one_cap,
    one_64_cannot_fill_the_store,
);
in_ipv6_namespace!(@engine embedded; one_64_cannot_fill_the_store);

/// Requests of one kind the attacker makes, each from an address of its own.
const ADDRESSES: u64 = 2_000;
/// The shipped per-address budgets (`rate.login_per_address`, `challenge_per_address`,
/// `socket_per_address`): a burst of 400, then 5 a second.
const BURST: usize = 400;
const PER_SECOND: f64 = 5.0;
/// A well-formed user id nobody has.
const NOBODY: &str = "00000000-0000-4000-8000-000000000000";

/// Whether the per-address budgets count per /64 (as shipped) or per address (the mechanism
/// off: `rate.address_prefix.ipv6 = 128`).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Counted {
    PerPrefix,
    PerAddress,
}

/// The variants a test runs: both on the memory engine; on Redis only the shipped one (the
/// prefix is chosen before the engine is asked, so once is enough to show the test can fail).
fn variants(b: &Backend) -> &'static [Counted] {
    if b.is_redis() { &[Counted::PerPrefix] } else { &[Counted::PerPrefix, Counted::PerAddress] }
}

/// A relay inside the namespace at the shipped limits, listening on `[::1]`.
fn relay(b: &Backend, counted: Counted) -> Server {
    let mut config = b.config().with_shipped_limits().with("ENIGMA__SERVER__ADDR", Ipv6Net::LISTEN);
    if counted == Counted::PerAddress {
        config = config.with("ENIGMA__RATE__ADDRESS_PREFIX__IPV6", 128);
    }
    Server::start(&config)
}

/// The most one holder can have had from a shipped per-address budget over `elapsed`.
fn budget(elapsed: Duration) -> usize {
    BURST + ((elapsed.as_secs_f64() + 1.0) * PER_SECOND).ceil() as usize
}

/// Makes `ADDRESSES` attempts, the n-th from `attacker.address(n)`, 32 at a time; returns how
/// many got through and how long it took.
async fn flood<F, Fut>(attacker: Subnet, attempt: F) -> (usize, Duration)
where
    F: Fn(IpAddr) -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let passed = futures_util::stream::iter(0..ADDRESSES)
        .map(|n| attempt(attacker.address(n)))
        .buffer_unordered(32)
        .filter(|passed| std::future::ready(*passed))
        .count()
        .await;
    (passed, started.elapsed())
}

/// Checks a flood's outcome: as one client (shipped), at most one budget passed; with a budget
/// per address, every attempt did — more than one budget, so the first check would fail.
fn assert_one_client(what: &str, counted: Counted, (passed, elapsed): (usize, Duration)) {
    match counted {
        Counted::PerPrefix => assert!(
            (BURST..=budget(elapsed)).contains(&passed),
            "{passed} {what} of {ADDRESSES} from one /64 passed in {elapsed:?} (one client's budget: {})",
            budget(elapsed)
        ),
        Counted::PerAddress => assert!(
            passed as u64 == ADDRESSES && passed > budget(elapsed),
            "with a budget per address all {ADDRESSES} {what} should pass, {passed} did"
        ),
    }
}

/// A registration from `from`: the new user id, or `None` when refused with 429.
async fn register(s: &Server, from: IpAddr) -> Option<String> {
    let (status, body) = s.request_from(from, "GET", &format!("/login/{}", random_key()), None).await;
    match status {
        200 => Some(body["userId"].as_str().expect("userId").to_owned()),
        429 => {
            assert_eq!(body["code"], "rate_limited", "{body}");
            None
        }
        other => panic!("registration from {from}: {other} {body}"),
    }
}

/// 2,000 registrations, each from another address of one /64: one burst passes between them;
/// a neighbour on another /64 registers at once afterwards.
async fn registrations_from_one_64_count_as_one_client(b: Backend, net: Ipv6Net) {
    let attacker = net.subnet(0);
    for &counted in variants(&b) {
        let s = relay(&b, counted);
        let outcome = flood(attacker, |from| {
            let s = &s;
            async move { register(s, from).await.is_some() }
        })
        .await;
        eprintln!("{counted:?}: {} of {ADDRESSES} registrations passed in {:?}", outcome.0, outcome.1);
        assert_one_client("registrations", counted, outcome);
        if counted == Counted::PerPrefix {
            assert!(s.metric("enigma_rate_limited_total").await >= (ADDRESSES as usize - budget(outcome.1)) as f64);
            let neighbour = net.subnet(1).address(0);
            assert!(register(&s, neighbour).await.is_some(), "a neighbour on another /64 was refused");
        }
    }
}

/// A socket open from `from` (to a user nobody has: the open is counted before the user is
/// looked up): whether it was upgraded rather than refused with 429.
async fn open_socket(s: &Server, from: IpAddr) -> bool {
    match Ws::try_connect_from(&s.ws_url(&format!("/ws/{NOBODY}")), from, &[]).await {
        Ok(_) => true, // then closed with `user_not_found`
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 429 => false,
        Err(e) => panic!("socket from {from}: {e}"),
    }
}

/// A challenge request from `from` (for a user nobody has): whether it got past the budget.
async fn ask_challenge(s: &Server, from: IpAddr) -> bool {
    let (status, body) = s.request_from(from, "POST", "/auth/challenge", Some(&json!({"userId": NOBODY}))).await;
    match status {
        404 => true,
        429 => false,
        other => panic!("challenge from {from}: {other} {body}"),
    }
}

/// The same for socket opens and for challenges: 2,000 of each from 2,000 addresses of one /64
/// get one burst; a neighbour's pass.
async fn socket_opens_and_challenges_from_one_64_count_as_one_client(b: Backend, net: Ipv6Net) {
    let (attacker, neighbour) = (net.subnet(0), net.subnet(1).address(0));
    for &counted in variants(&b) {
        let s = relay(&b, counted);
        let sockets = flood(attacker, |from| open_socket(&s, from)).await;
        eprintln!("{counted:?}: {} of {ADDRESSES} socket opens passed in {:?}", sockets.0, sockets.1);
        assert_one_client("socket opens", counted, sockets);
        let challenges = flood(attacker, |from| ask_challenge(&s, from)).await;
        eprintln!("{counted:?}: {} of {ADDRESSES} challenges passed in {:?}", challenges.0, challenges.1);
        assert_one_client("challenges", counted, challenges);
        if counted == Counted::PerPrefix {
            assert!(open_socket(&s, neighbour).await, "a neighbour's socket was refused");
            assert!(ask_challenge(&s, neighbour).await, "a neighbour's challenge was refused");
        }
    }
}

/// A fresh id registered from `from`, its `enigma.v1` socket opened from there too.
async fn id_at(s: &Server, from: IpAddr) -> (String, Ws) {
    let id = register(s, from).await.unwrap_or_else(|| panic!("registration from {from} refused"));
    let url = s.ws_url(&format!("/ws/{id}"));
    let ws = Ws::try_connect_from(&url, from, &[("Sec-WebSocket-Protocol", "enigma.v1")])
        .await
        .unwrap_or_else(|e| panic!("socket of {id} from {from}: {e}"));
    (id, ws)
}

/// At the shipped defaults, an attacker makes 10 and then 90 more fresh ids, each registered
/// and connected from another address of one /64, and each fills what it can of an offline
/// victim's inbox with 60 KB messages. The victim's contact (someone the victim wrote to before
/// going offline, on another /64) gets every message in, as large as theirs. With the
/// strangers' pool off, ten ids are enough to refuse the contact.
async fn ids_from_a_whole_64_cannot_crowd_out_a_contact(b: Backend, net: Ipv6Net) {
    let attacker = net.subnet(0);
    let (home, elsewhere) = (net.subnet(1).address(0), net.subnet(2).address(0));
    let pools: &[bool] = if b.is_redis() { &[true] } else { &[true, false] };
    for &pool in pools {
        let mut config = b.config().with_shipped_limits().with("ENIGMA__SERVER__ADDR", Ipv6Net::LISTEN);
        if !pool {
            // The storage shares off too: they alone would stop one /64 short of 64 MiB.
            config = config
                .with("ENIGMA__LIMITS__STRANGER_POOL", 0)
                .with("ENIGMA__LIMITS__STORAGE__PER_PREFIX", 1)
                .with("ENIGMA__LIMITS__STORAGE__PER_SENDER", 1);
        }
        let s = Server::start(&config);
        let (victim, mut v) = id_at(&s, home).await;
        let (contact, mut c) = id_at(&s, elsewhere).await;
        assert_eq!(v.send_answered(&victim, &contact, "see you", "hello").await["status"], "stored");
        v.close().await;
        let payload = "x".repeat(60_000);
        let (mut ids, mut stored, mut refused) = (0, 0, 0);
        for (round, more) in [10, 90].into_iter().enumerate() {
            for _ in 0..more {
                let (id, mut ws) = id_at(&s, attacker.address(ids)).await;
                ids += 1;
                for n in 0.. {
                    let answer = ws.send_answered(&id, &victim, &payload, &format!("m{n}")).await;
                    match (answer["status"].as_str(), answer["code"].as_str()) {
                        (Some("stored"), _) => stored += 1,
                        // Refused: its share of the inbox, or of the store (`rate_limited`).
                        (_, Some("inbox_full" | "rate_limited")) => break,
                        other => panic!("unexpected answer {other:?}: {answer}"),
                    }
                }
                ws.close().await;
            }
            for i in 0..3 {
                let answer = c.send_answered(&contact, &victim, &payload, &format!("c{round}-{i}")).await;
                if answer["status"] != "stored" {
                    assert_eq!(answer["code"], "inbox_full", "{answer}");
                    refused += 1;
                }
            }
            eprintln!("pool {pool}: {ids} ids from one /64 stored {stored}; the contact was refused {refused} of 3");
            if !pool {
                break;
            }
        }
        if pool {
            assert_eq!(refused, 0, "the contact was refused; {ids} ids from one /64 stored {stored}");
            // Strangers together hold at most the pool (24 MiB of 60 KB payloads).
            assert!(stored <= 24 * 1024 * 1024 / 60_000, "strangers stored {stored}");
        } else {
            assert_eq!(refused, 3, "without the pool ten ids fill the inbox (strangers stored {stored})");
        }
    }
}

/// The connection cap (`server.max_connections_per_address`: 500 as shipped, 4 here so that
/// the test holds few) counts per /64 as the budgets do: sockets held from four addresses of
/// one /64 fill it, a fifth address of it is refused (1013), a neighbour on another /64 is not.
async fn connections_from_one_64_share_one_cap(b: Backend, net: Ipv6Net) {
    let s = Server::start(
        &b.config()
            .with_shipped_limits()
            .with("ENIGMA__SERVER__ADDR", Ipv6Net::LISTEN)
            .with("ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS", 4),
    );
    let attacker = net.subnet(0);
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(s.new_user().await); // from [::1], a /64 of its own
    }
    let open = |user: &str, from: IpAddr| {
        let url = s.ws_url(&format!("/ws/{user}"));
        async move {
            Ws::try_connect_from(&url, from, &[("Sec-WebSocket-Protocol", "enigma.v1")])
                .await
                .unwrap_or_else(|e| panic!("socket from {from}: {e}"))
        }
    };
    let mut held = Vec::new();
    for (n, user) in users[..4].iter().enumerate() {
        let mut ws = open(user, attacker.address(n as u64)).await;
        // Admitted: it stores a message (a socket over the cap would be closed with 1013).
        assert_eq!(ws.send_answered(user, &users[5], "hi", "held").await["status"], "stored");
        held.push(ws);
    }
    let mut fifth = open(&users[4], attacker.address(4)).await;
    fifth.send_json(json!({"from": users[4], "to": users[5], "payload": "hi", "ref": "fifth"})).await;
    loop {
        match fifth.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1013, "{frame:?}");
                break;
            }
            Some(Message::Text(text)) if text.contains("stored") => {
                panic!("a fifth address of the /64 got past the cap: {text}")
            }
            Some(Message::Text(_)) => continue, // the error frame before the close
            other => panic!("neither admitted nor refused with 1013: {other:?}"),
        }
    }
    let mut neighbour = open(&users[4], net.subnet(1).address(0)).await;
    assert_eq!(neighbour.send_answered(&users[4], &users[5], "hi", "n").await["status"], "stored");
}

/// The store scaled down (the memory engine to 32 MiB, the Redis to `maxmemory 48mb`), the
/// other limits as shipped. Ids registered and connected each from another address of one /64
/// fill sink inboxes as far as they are let: together they hold at most their prefix's share of
/// the store (a tenth, and a lease), and an innocent pair on another /64 exchanges ten 60 KB
/// messages with no refusal.
async fn one_64_cannot_fill_the_store(b: Backend, net: Ipv6Net) {
    let capacity: usize = if let Backend::Redis(redis) = &b {
        redis.cli(&["CONFIG", "SET", "maxmemory", "48mb"]).expect("CONFIG SET answers");
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]).expect("CONFIG SET answers");
        48 << 20
    } else {
        32 << 20
    };
    let config = b
        .config()
        .with_shipped_limits()
        .with("ENIGMA__SERVER__ADDR", Ipv6Net::LISTEN)
        .with("ENIGMA__LIMITS__MEMORY_MAX_BYTES", 32 << 20);
    let s = Server::start(&config);
    let (home, elsewhere) = (net.subnet(1).address(0), net.subnet(1).address(1));
    let (alice, mut a) = id_at(&s, home).await;
    let (bob, b_ws) = id_at(&s, elsewhere).await;
    b_ws.close().await;
    let attacker = net.subnet(0);
    let payload = "s".repeat(60_000);
    let (mut stored, mut next) = (0usize, 0u64);
    let mut sinks = Vec::new();
    for _ in 0..4 {
        let (sink, ws) = id_at(&s, attacker.address(next)).await;
        next += 1;
        ws.close().await;
        sinks.push(sink);
    }
    for _ in 0..40 {
        let Some(id) = register(&s, attacker.address(next)).await else { break };
        let url = s.ws_url(&format!("/ws/{id}"));
        let mut ws = Ws::try_connect_from(&url, attacker.address(next), &[("Sec-WebSocket-Protocol", "enigma.v1")])
            .await
            .expect("the attacker's socket");
        next += 1;
        stored += ws.fill(&id, &sinks, &payload).await;
        ws.close().await;
    }
    eprintln!("{next} addresses of one /64 stored {stored} messages of 60 KB");
    // A tenth of the store, and what the leases hold ahead (at most 256 KiB a session).
    assert!(stored * 60_000 <= capacity / 10 + (1 << 20), "one /64 stored {stored} messages of 60 KB");
    for i in 0..10 {
        let answer = a.send_answered(&alice, &bob, &payload, &format!("a{i}")).await;
        assert_eq!(answer["status"], "stored", "the innocent's message {i}: {answer}");
    }
}
