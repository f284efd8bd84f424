//! What is never used is forgotten: a registration nobody used (no socket, no claim) expires
//! with its key index after `limits.unused_registration_ttl_secs`; a used one is kept for
//! `limits.inactive_user_ttl_secs`; an address prefix holds at most
//! `limits.max_unused_registrations_per_prefix` unused registrations; the memory engine counts
//! its directory in `limits.memory_max_bytes`. On Redis every record of the directory carries
//! an expiry (checked key by key, on every master of a cluster).

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::harness::{Backend, Claimant, DEADLINE, Redis, Server, ServerConfig, random_key, wait_until};

both_engines!(with_cluster:
    unused_registrations_carry_an_expiry_and_vanish_after_it,
    a_used_registration_is_kept,
    a_prefix_holds_only_so_many_unused_registrations,
);

/// The unused-registration TTL of these tests: long enough to register 400 and look at them
/// before the first expires.
const UNUSED_TTL_SECS: u64 = 4;

/// How long an expired registration may take to be gone: its TTL, the eighth its record
/// outlives its index by, and a deadline on top.
const GONE_WITHIN: Duration = Duration::from_secs(UNUSED_TTL_SECS * 2).saturating_add(DEADLINE);

/// The masters of the test's Redis (none on the memory engine).
fn masters(b: &Backend) -> Vec<&Redis> {
    match b {
        Backend::Memory | Backend::Embedded => Vec::new(),
        Backend::Redis(redis) | Backend::Sentinel(redis, _) => vec![redis],
        Backend::Cluster(cluster) => cluster.nodes.iter().filter(|n| n.is_master()).collect(),
    }
}

/// Every key under `prefix` with its PTTL (ms; -1: none), from every master.
fn keys_with_ttl(b: &Backend, prefix: &str) -> Vec<(String, i64)> {
    const LIST: &str = "local out = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                        out[#out + 1] = k; out[#out + 1] = redis.call('PTTL', k) end return out";
    let mut all = Vec::new();
    for node in masters(b) {
        let listed = node.cli(&["EVAL", LIST, "0", &format!("{prefix}*")]).expect("EVAL answers");
        let lines: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
        for pair in lines.chunks(2) {
            all.push((pair[0].to_owned(), pair[1].trim().parse().unwrap_or_else(|_| panic!("a PTTL: {pair:?}"))));
        }
    }
    all
}

/// The keys of one kind (`user:`, `pk:`, `unused:`) under `prefix`.
fn of_kind<'a>(keys: &'a [(String, i64)], prefix: &str, kind: &str) -> Vec<&'a (String, i64)> {
    keys.iter().filter(|(k, _)| k.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(kind))).collect()
}

async fn lookup_status(server: &Server, user: &str) -> u16 {
    server.get(&format!("/connect/{user}")).await.0
}

async fn login_from(server: &Server, local: &str, key: &str) -> (u16, Option<u64>, Value) {
    let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
    let response = client.get(server.url(&format!("/login/{key}"))).send().await.expect("login");
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

/// 400 registrations nobody uses: on Redis each leaves a record and an index entry with an
/// expiry no longer than the unused TTL (and the prefix's set of them one too); after it, every
/// one is gone (404), Redis holds nothing of them, and the same key gets a new id.
async fn unused_registrations_carry_an_expiry_and_vanish_after_it(b: Backend) {
    let config = b.config().with("ENIGMA__LIMITS__UNUSED_REGISTRATION_TTL_SECS", UNUSED_TTL_SECS);
    let server = Server::start(&config);
    let keys: Vec<String> = (0..400).map(|_| random_key()).collect();
    let mut users = Vec::with_capacity(keys.len());
    for batch in keys.chunks(50) {
        users.extend(join_all(batch.iter().map(|key| server.login(key))).await);
    }
    if b.is_redis() {
        let prefix = &config.prefix;
        let stored = keys_with_ttl(&b, prefix);
        let longest = (UNUSED_TTL_SECS * 1000 * 9 / 8) as i64;
        let lasting = |kind: &str| {
            let found = of_kind(&stored, prefix, kind);
            for (key, ttl) in &found {
                assert!(*ttl > 0 && *ttl <= longest, "{key} expires in {ttl} ms, not within the unused TTL");
            }
            found.len()
        };
        assert_eq!(lasting("user:"), 400, "a record per registration");
        assert_eq!(lasting("pk:"), 400, "an index entry per registration");
        assert_eq!(lasting("unused:"), 1, "one set of unused registrations, the prefix's");
        // The prefix's registrations ledger (`limits.storage.directory_per_prefix`) stays as
        // long as a used registration could: a year, with an expiry all the same.
        let ledger: Vec<_> = stored.iter().filter(|(k, _)| k.contains("held:dir:")).collect();
        assert_eq!(ledger.len(), 1, "one registrations ledger, the prefix's: {ledger:?}");
        assert!(ledger.iter().all(|(_, ttl)| *ttl > 0), "the registrations ledger expires: {ledger:?}");
        // The verifiable key directory (`kt:{kt}:…`) is append-only: a registration published
        // in it stays (docs/security.md), so its keys have no TTL, by design.
        let others: Vec<_> = stored
            .iter()
            .filter(|(k, _)| !k.ends_with("auth:token-key") && !k.contains("held:dir:") && !k.contains("kt:{kt}:"))
            .collect();
        assert_eq!(others.len(), 801, "nothing else but the deployment's token key: {others:?}");
    }
    assert_eq!(lookup_status(&server, &users[0]).await, 200);
    wait_until("every unused registration to be gone", GONE_WITHIN, || async {
        join_all(users.iter().map(|u| lookup_status(&server, u))).await.iter().all(|s| *s == 404)
    })
    .await;
    if b.is_redis() {
        wait_until("Redis to hold nothing of them", GONE_WITHIN, || async {
            keys_with_ttl(&b, &config.prefix)
                .iter()
                .all(|(k, _)| !["user:", "pk:", "unused:"].iter().any(|kind| k.contains(kind)))
        })
        .await;
    }
    let again = server.login(&keys[0]).await;
    assert_ne!(again, users[0], "the same key logging in again is a new user");
    assert_eq!(lookup_status(&server, &again).await, 200);
}

/// A registration that opened a socket, and one that claimed its id, outlive the unused TTL
/// (with the inactive-user TTL on Redis, record and index alike); one never used beside them
/// vanishes, and a send to it is refused as to any unknown user — also after it was sent
/// messages while it existed (on Redis the send script learns that a recipient is gone from its
/// message number, and leaves no record behind).
async fn a_used_registration_is_kept(b: Backend) {
    let config = b.config().with("ENIGMA__LIMITS__UNUSED_REGISTRATION_TTL_SECS", UNUSED_TTL_SECS);
    let server = Server::start(&config);
    let alice_key = random_key();
    let alice = server.login(&alice_key).await;
    let carol = Claimant::login(&server).await;
    let dave = server.new_user().await;
    let mut socket = server.connect_v1(&alice).await;
    for i in 0..2 {
        let stored = socket.send_answered(&alice, &dave, "while it lasts", &format!("d{i}")).await;
        assert_eq!(stored["status"], "stored", "{stored}");
    }
    carol.token().await;
    if b.is_redis() {
        let day = 24 * 3600 * 1000;
        let stored = keys_with_ttl(&b, &config.prefix);
        let user_records = of_kind(&stored, &config.prefix, "user:");
        let index = of_kind(&stored, &config.prefix, "pk:");
        for user in [&alice, &carol.user] {
            let (key, ttl) = user_records.iter().find(|(k, _)| k.contains(user.as_str())).expect("a record");
            assert!(*ttl > 300 * day, "{key} is kept for the inactive-user TTL, not {ttl} ms");
        }
        assert_eq!(index.iter().filter(|(_, ttl)| *ttl > 300 * day).count(), 2, "both index entries kept: {index:?}");
        assert_eq!(index.len(), 3, "{index:?}");
        let unused = of_kind(&stored, &config.prefix, "unused:");
        let members = masters(&b)
            .iter()
            .filter_map(|node| node.cli(&["ZRANGE", &unused[0].0, "0", "-1"]))
            .find(|m| !m.trim().is_empty() && !m.contains("MOVED"))
            .unwrap_or_default();
        assert_eq!(members.split_whitespace().collect::<Vec<_>>(), [dave.as_str()], "only dave is still unused");
    }
    wait_until("the unused registration to be gone", GONE_WITHIN, || async {
        lookup_status(&server, &dave).await == 404
    })
    .await;
    assert_eq!(lookup_status(&server, &alice).await, 200, "a registration that opened a socket is kept");
    assert_eq!(lookup_status(&server, &carol.user).await, 200, "a claimed registration is kept");
    assert_eq!(server.login(&alice_key).await, alice, "and its key still logs in as the same user");
    let refused = socket.send_answered(&alice, &dave, "hello", "r1").await;
    assert_eq!(refused["code"], "user_not_found", "{refused}");
    if b.is_redis() {
        let left = keys_with_ttl(&b, &config.prefix);
        let records = of_kind(&left, &config.prefix, "user:");
        assert!(!records.iter().any(|(k, _)| k.contains(dave.as_str())), "a refused send left a record: {records:?}");
    }
    let reached = socket.send_answered(&alice, &carol.user, "hello", "r2").await;
    assert!(reached.get("code").is_none(), "{reached}");
}

/// With room for 5 unused registrations per prefix, the sixth new key from 127.0.0.1 is refused
/// (429, `Retry-After` until the oldest expires), while a registered key still logs in and
/// another address still registers; once one of the five is used, there is room again.
async fn a_prefix_holds_only_so_many_unused_registrations(b: Backend) {
    let config = b.config().with("ENIGMA__LIMITS__MAX_UNUSED_REGISTRATIONS_PER_PREFIX", 5);
    let server = Server::start(&config);
    let keys: Vec<String> = (0..5).map(|_| random_key()).collect();
    let mut users = Vec::new();
    for key in &keys {
        users.push(server.login(key).await);
    }
    let (status, retry, body) = login_from(&server, "127.0.0.1", &random_key()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    let retry = retry.expect("Retry-After");
    assert!(retry > 6 * 24 * 3600 && retry <= 7 * 24 * 3600, "until the oldest expires: {retry} s");
    assert_eq!(server.login(&keys[2]).await, users[2], "a registered key is never refused");
    assert_eq!(login_from(&server, "127.0.0.2", &random_key()).await.0, 200, "another address registers");
    let socket = server.connect(&users[0]).await;
    assert_eq!(login_from(&server, "127.0.0.1", &random_key()).await.0, 200, "a used registration made room");
    assert_eq!(login_from(&server, "127.0.0.1", &random_key()).await.0, 429, "and only as much");
    socket.close().await;
}

/// The memory engine's directory counts in `limits.memory_max_bytes`: registrations that do not
/// fit are refused as a full store (503 `unavailable`) while registered keys still log in, and
/// expired registrations give their room back.
#[tokio::test]
async fn the_memory_engine_counts_its_directory() {
    let config = ServerConfig::memory()
        .with("ENIGMA__LIMITS__MEMORY_MAX_BYTES", 256 * 1024)
        .with("ENIGMA__LIMITS__UNUSED_REGISTRATION_TTL_SECS", UNUSED_TTL_SECS);
    let server = Server::start(&config);
    // 4 KB keys: about 8 KB each in the directory, so 256 KiB holds about 30.
    let key = |i: usize| format!("{}{i:08}", "A".repeat(4000));
    let mut registered = 0;
    let refused = loop {
        let (status, _, body) = login_from(&server, "127.0.0.1", &key(registered)).await;
        if status != 200 {
            break (status, body);
        }
        registered += 1;
        assert!(registered < 100, "256 KiB never filled up: the directory is not counted");
    };
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(refused.1["code"], "unavailable", "{}", refused.1);
    assert!(registered >= 20, "only {registered} registrations of 8 KB fit in 256 KiB");
    assert_eq!(login_from(&server, "127.0.0.1", &key(0)).await.0, 200, "a registered key still logs in");
    wait_until("expired registrations to give their room back", GONE_WITHIN, || async {
        login_from(&server, "127.0.0.1", &key(1000)).await.0 == 200
    })
    .await;
}
