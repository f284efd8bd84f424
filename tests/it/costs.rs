//! What a message costs Redis: the commands a send and a removal run (counted by Redis itself
//! in `INFO commandstats`, not timed), and that the cheaper TTL refresh still keeps every
//! inbox at least `limits.inbox_ttl_secs` after its last write.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Redis, Server, ServerConfig, Ws};

/// Calls of each command since the last `CONFIG RESETSTAT` (scripts' inner calls included).
fn calls(redis: &Redis, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]).expect("INFO answers");
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().and_then(|n| n.parse().ok()).expect("a call count"))
}

#[tokio::test]
async fn a_send_refreshes_the_ttls_seldom_and_counts_the_share_in_one_write() {
    let redis = Redis::start();
    // Without the key directory: its publisher's commands (a lease renewed every epoch, the
    // epochs themselves) are not a message's cost, and would land in the counts below.
    let server = Server::start(&ServerConfig::redis(&redis).with("ENIGMA__DIRECTORY__ENABLED", "false"));
    let (sender, receiver) = (server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    assert_eq!(ws.send_answered(&sender, &receiver, "first", "0").await["status"], "stored");
    redis.cli(&["CONFIG", "RESETSTAT"]).expect("CONFIG answers");
    const SENDS: u64 = 50;
    for i in 1..=SENDS {
        assert_eq!(ws.send_answered(&sender, &receiver, "m", &i.to_string()).await["status"], "stored");
    }
    assert_eq!(calls(&redis, "xadd"), SENDS);
    // Seven commands a send (HMGET, XLEN, SISMEMBER, HINCRBY, XADD, HSET, PUBLISH): the message
    // number is the only HINCRBY, the share one HSET, no PEXPIRE while the last refresh is
    // recent (it was, a moment ago), inbox empty or not, and no EXISTS: the message number
    // answers 1 only for a recipient's first message or a record that is not there.
    assert_eq!(calls(&redis, "exists") + calls(&redis, "hexists"), 0, "the recipient is looked up on every send");
    assert_eq!(calls(&redis, "hincrby"), SENDS, "the share is counted with one HSET, not three HINCRBYs");
    assert_eq!(calls(&redis, "hset"), SENDS);
    assert_eq!(calls(&redis, "pexpire"), 0, "TTLs refreshed on every send");
    // The receiver takes all 51; they leave the inbox with one XDEL each and one share update
    // per removal script call, however many ids it carries; the relay names each message's
    // sender and size (it just wrote the envelope), so nothing is read back.
    redis.cli(&["CONFIG", "RESETSTAT"]).expect("CONFIG answers");
    let mut r = server.connect(&receiver).await;
    let mut got = 0;
    while got <= SENDS {
        if r.recv_json().await.get("payload").is_some() {
            got += 1;
        }
    }
    let deadline = Instant::now() + crate::harness::DEADLINE;
    while redis
        .cli(&["--scan", "--pattern", "*inbox*"])
        .is_some_and(|keys| keys.lines().any(|k| redis.cli(&["XLEN", k]).is_some_and(|n| n.trim() != "0")))
    {
        assert!(Instant::now() < deadline, "delivered messages were not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scripts = calls(&redis, "evalsha") + calls(&redis, "eval");
    assert!(scripts >= 1);
    // XRANGE only for the session's backlog reads (51 messages: a page or two), never per id.
    assert!(calls(&redis, "xrange") <= 3, "removed entries are read back: {} XRANGEs", calls(&redis, "xrange"));
    assert_eq!(calls(&redis, "xdel"), SENDS + 1, "one XDEL per message");
    assert!(calls(&redis, "hset") <= scripts, "shares given back with one write per call, not per id");
    assert!(calls(&redis, "hdel") <= scripts, "shares given back with one write per call, not per id");
    assert_eq!(calls(&redis, "hincrby"), 0, "shares given back with one write, not per id");
}

#[tokio::test]
async fn an_inbox_outlives_its_ttl_after_every_write() {
    const TTL_MS: i64 = 64_000;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis).with("ENIGMA__LIMITS__INBOX_TTL_SECS", TTL_MS / 1000);
    let server = Server::start(&config);
    let (sender, receiver) = (server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    assert_eq!(ws.send_answered(&sender, &receiver, "first", "1").await["status"], "stored");
    // Time passes between writes (less than 1/64 of the TTL: no refresh is due): the later
    // write must still leave both keys the whole TTL.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ws.send_answered(&sender, &receiver, "second", "2").await["status"], "stored");
    let written = Instant::now();
    for pattern in ["*inbox*", "*shares*"] {
        let key = redis.cli(&["--scan", "--pattern", pattern]).expect("SCAN answers");
        let key = key.lines().next().unwrap_or_else(|| panic!("no key {pattern}"));
        let pttl: i64 = redis.cli(&["PTTL", key]).expect("PTTL answers").trim().parse().expect("a number");
        let since = written.elapsed().as_millis() as i64;
        assert!(pttl >= TTL_MS - since, "{key} expires in {pttl} ms, {since} ms after the last write");
        assert!(pttl <= TTL_MS + TTL_MS / 64, "{key} kept {pttl} ms, more than TTL + TTL/64");
    }
}

/// The key of the (one) share record in Redis.
fn share_record(redis: &Redis) -> String {
    let keys = redis.cli(&["--scan", "--pattern", "*shares*"]).expect("SCAN answers");
    keys.lines().next().expect("a share record").to_owned()
}

/// The share record holds no counts once nothing waits (only `x`, the last TTL refresh).
fn shares_left(redis: &Redis) -> Vec<String> {
    let key = share_record(redis);
    let fields = redis.cli(&["HKEYS", &key]).expect("HKEYS answers");
    fields.lines().filter(|f| *f != "x").map(str::to_owned).collect()
}

/// Removals name each message's sender and size when the relay wrote it (a specification
/// client), and read it back in Redis when only its id is known (an acknowledgement): both give
/// the sender's share back exactly.
#[tokio::test]
async fn written_and_acknowledged_messages_give_their_shares_back() {
    const SHARE: u64 = 3;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis).with("ENIGMA__LIMITS__INBOX_SHARE", SHARE);
    let server = Server::start(&config);
    let (sender, receiver) = (server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    for acknowledging in [false, true] {
        for i in 0..SHARE {
            assert_eq!(
                ws.send_answered(&sender, &receiver, "m", &format!("{acknowledging}{i}")).await["status"],
                "stored"
            );
        }
        let over = ws.send_answered(&sender, &receiver, "m", &format!("{acknowledging}over")).await;
        assert_eq!(over["code"], "inbox_full", "the share is used up: {over}");
        assert!(!shares_left(&redis).is_empty());
        let mut r = if acknowledging { server.connect_v1(&receiver).await } else { server.connect(&receiver).await };
        let mut ids = Vec::new();
        while (ids.len() as u64) < SHARE {
            let m = r.recv_json().await;
            if m.get("payload").is_some() {
                ids.push(m["id"].clone());
            }
        }
        if acknowledging {
            r.send_json(json!({"ack": ids})).await;
        }
        let deadline = Instant::now() + crate::harness::DEADLINE;
        while !shares_left(&redis).is_empty() {
            assert!(Instant::now() < deadline, "shares not given back: {:?}", shares_left(&redis));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            ws.send_answered(&sender, &receiver, "m", &format!("{acknowledging}again")).await["status"],
            "stored"
        );
        // Take that one too, so the next round starts from an empty inbox.
        loop {
            let m = r.recv_json().await;
            if m.get("payload").is_some() {
                if acknowledging {
                    r.send_json(json!({"ack": m["id"]})).await;
                }
                break;
            }
        }
        drop(r);
        while !shares_left(&redis).is_empty() {
            assert!(Instant::now() < deadline, "shares not given back: {:?}", shares_left(&redis));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A share record damaged from outside (a count or the refresh time that is not a number) holds
/// nothing up: the send reads every stored number before it writes anything, and a refresh time
/// that is not a number counts as "not refreshed" and is written again; the removal reads the
/// counts as 0 when they are not numbers and writes them again, so the shares are given back and
/// the other users of the call removed (before, the send stored the message and then failed,
/// so the client's retry stored it twice; the removal failed as a whole, every time).
#[tokio::test]
async fn a_damaged_share_record_is_written_again_not_a_send_or_removal_held_up() {
    let redis = Redis::start();
    let server = Server::start(&ServerConfig::redis(&redis));
    let (sender, receiver) = (server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    assert_eq!(ws.send_answered(&sender, &receiver, "one", "1").await["status"], "stored");
    let key = share_record(&redis);
    redis.cli(&["HSET", &key, "x", "not a time"]).expect("HSET answers");
    let two = ws.send_answered(&sender, &receiver, "two", "2").await;
    assert_eq!(two["status"], "stored", "a damaged refresh time is written again: {two}");
    let x = redis.cli(&["HGET", &key, "x"]).expect("HGET answers");
    assert!(x.trim().parse::<u64>().is_ok(), "the refresh time written again: {x:?}");
    redis.cli(&["HSET", &key, "bytes", "not a count", "sb", "nor this"]).expect("HSET answers");
    let mut r = server.connect(&receiver).await;
    assert_eq!(next_payload(&mut r).await, "one");
    assert_eq!(next_payload(&mut r).await, "two");
    let deadline = Instant::now() + crate::harness::DEADLINE;
    while !shares_left(&redis).is_empty() {
        assert!(Instant::now() < deadline, "shares not given back: {:?}", shares_left(&redis));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.cli(&["XLEN", &key.replace("shares", "inbox")]).expect("XLEN answers").trim(), "0");
    assert_eq!(ws.send_answered(&sender, &receiver, "three", "3").await["status"], "stored");
    assert_eq!(next_payload(&mut r).await, "three", "delivered once each, in order");
}

/// The next delivery's payload (other frames skipped).
async fn next_payload(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.recv_json().await;
        if frame.get("payload").is_some() {
            return frame["payload"].clone();
        }
    }
}

/// A recipient connected to the sender's replica gets its messages from that replica directly:
/// nothing is published (no doorbell for Redis to write and the replica to read back). One on
/// another replica, or one that moved there, is rung as before.
#[tokio::test]
async fn a_recipient_on_the_same_replica_needs_no_doorbell() {
    const SENDS: u64 = 20;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let (a, b) = (Server::start(&config), Server::start(&config));
    let (sender, receiver) = (a.new_user().await, a.new_user().await);
    let mut ws = a.connect_v1(&sender).await;
    let mut here = a.connect(&receiver).await;
    // The receiver's attach announced its generation once; what follows is the sends'.
    redis.cli(&["CONFIG", "RESETSTAT"]).expect("CONFIG answers");
    for i in 0..SENDS {
        assert_eq!(
            ws.send_answered(&sender, &receiver, &format!("here{i}"), &format!("h{i}")).await["status"],
            "stored"
        );
        assert_eq!(next_payload(&mut here).await, format!("here{i}"));
    }
    assert_eq!(calls(&redis, "publish"), 0, "a doorbell was published for a local recipient");
    // The receiver moves to replica B: A's session is replaced, and the next messages are rung.
    // (What A wrote in the last moments may come again from the inbox: A's removals are
    // batched, the spec client's duplicate window, see docs/guarantees.md.)
    let mut there = b.connect(&receiver).await;
    redis.cli(&["CONFIG", "RESETSTAT"]).expect("CONFIG answers");
    for i in 0..SENDS {
        assert_eq!(
            ws.send_answered(&sender, &receiver, &format!("there{i}"), &format!("t{i}")).await["status"],
            "stored"
        );
        let mut payload = next_payload(&mut there).await;
        while payload.as_str().is_some_and(|p| p.starts_with("here")) {
            payload = next_payload(&mut there).await;
        }
        assert_eq!(payload, format!("there{i}"));
    }
    assert_eq!(calls(&redis, "publish"), SENDS, "one doorbell a message for a recipient elsewhere");
    drop(here);
}

/// What a holder's ledger hash (`held:…`) sums to, on whichever node holds it.
fn ledger_sum(read: &dyn Fn(&[&str]) -> Option<String>, key: &str) -> i64 {
    let fields = read(&["HGETALL", key]).expect("HGETALL answers");
    fields.lines().collect::<Vec<_>>().chunks(2).filter_map(|pair| pair.get(1)?.trim().parse::<i64>().ok()).sum()
}

/// The storage ledger (`limits.storage`, as shipped) gives back exactly what it charged: a sender
/// writes to a specification client (removed when written) and to an acknowledging client
/// (removed when acknowledged), then disconnects (its lease is given back); its id's and its
/// prefix's ledgers come back to 0. On one Redis and on a cluster, where each ledger is in a slot
/// of its own.
async fn the_storage_ledger_gives_back_what_it_charged(cluster: bool) {
    let (single, three) =
        if cluster { (None, Some(crate::harness::RedisCluster::start(3, 0))) } else { (Some(Redis::start()), None) };
    let config = match (&single, &three) {
        (Some(redis), _) => ServerConfig::redis(redis),
        (_, Some(c)) => ServerConfig::cluster(c),
        _ => unreachable!(),
    };
    let read = |args: &[&str]| -> Option<String> {
        match (&single, &three) {
            (Some(redis), _) => redis.cli(args),
            (_, Some(c)) => c.nodes[c.owner_of(c.slot_of(args[1]))].cli(args),
            _ => None,
        }
    };
    let config =
        config.with("ENIGMA__LIMITS__STORAGE__PER_PREFIX", 0.1).with("ENIGMA__LIMITS__STORAGE__PER_SENDER", 0.025);
    let server = Server::start(&config);
    let (alice, bob, carol) = (server.new_user().await, server.new_user().await, server.new_user().await);
    let mut a = server.connect_v1(&alice).await;
    for i in 0..5 {
        assert_eq!(a.send_answered(&alice, &bob, "for a spec client", &format!("b{i}")).await["status"], "stored");
        assert_eq!(a.send_answered(&alice, &carol, "for an acker", &format!("c{i}")).await["status"], "stored");
    }
    let by_sender = format!("{}held:{{{alice}}}", config.prefix);
    let by_prefix = format!("{}held:net:127.0.0.1/32", config.prefix);
    assert!(ledger_sum(&read, &by_sender) > 0, "a send charges the sender's ledger");
    assert!(ledger_sum(&read, &by_prefix) > 0, "a send charges the prefix's ledger");
    a.close().await;
    let mut b = server.connect(&bob).await;
    let mut c = server.connect_v1(&carol).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        assert_eq!(b.recv_json().await["payload"], "for a spec client");
        ids.push(c.recv_json().await["id"].clone());
    }
    c.send_json(json!({"ack": ids})).await;
    let deadline = Instant::now() + crate::harness::DEADLINE;
    while ledger_sum(&read, &by_sender) != 0 || ledger_sum(&read, &by_prefix) != 0 {
        assert!(
            Instant::now() < deadline,
            "the ledger still holds {} (sender) and {} (prefix)",
            ledger_sum(&read, &by_sender),
            ledger_sum(&read, &by_prefix)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_storage_ledger_gives_back_what_it_charged_on_redis() {
    the_storage_ledger_gives_back_what_it_charged(false).await
}

#[tokio::test]
async fn the_storage_ledger_gives_back_what_it_charged_on_a_cluster() {
    the_storage_ledger_gives_back_what_it_charged(true).await
}
