//! Failures on purpose: a replica killed with SIGKILL, Redis crashed and restarted, Redis
//! frozen, a client that stops reading, a connection dropped mid-stream. Acknowledging
//! (`enigma.v1`) clients must lose nothing that was receipted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::harness::{
    Backend, Blackhole, CONVERGE, DEADLINE, Redis, Server, ServerConfig, Tally, Ws, all_delivered_on_one_connection,
    assert_all_delivered, duplicates, exchange, next_json, random_key, receive_all, send_until_receipted, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_with_sigkill_loses_no_receipted_message() {
    const PAIRS: usize = 10;
    const EACH: usize = 200;
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let doomed = Server::start(&config);
    let survivor = Server::start(&config);
    let urls = |first: &Server, second: &Server| vec![format!("ws://{}", first.addr), format!("ws://{}", second.addr)];
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    let mut recipients = Vec::new();
    for i in 0..PAIRS {
        let (sender, recipient) = (survivor.new_user().await, survivor.new_user().await);
        // Half the senders and half the recipients start on the replica that will die.
        let (s_urls, r_urls) = if i % 2 == 0 {
            (urls(&doomed, &survivor), urls(&survivor, &doomed))
        } else {
            (urls(&survivor, &doomed), urls(&doomed, &survivor))
        };
        recipients.push(recipient.clone());
        tasks.push(tokio::spawn(receive_all(r_urls, recipient.clone(), EACH, tally.clone())));
        tasks.push(tokio::spawn(send_until_receipted(s_urls, sender, recipient, EACH, tally.clone())));
    }
    tally.wait_receipted(PAIRS * EACH / 3).await;
    doomed.kill();
    for task in join_all(tasks).await {
        task.expect("client task");
    }
    assert_all_delivered(&tally, &recipients, EACH);
    println!(
        "kill -9: {} messages receipted, all delivered; {} duplicates, {} send errors retried",
        tally.receipted.load(Ordering::Relaxed),
        duplicates(&tally),
        tally.send_errors.load(Ordering::Relaxed)
    );
}

/// A crash (SIGKILL) with messages receipted but unread, and traffic going on. A SIGKILL of
/// the process leaves what it wrote in the kernel's page cache, so this shows the append-only
/// file is written before the receipt and replayed on restart, not what `fsync` adds against
/// a power cut (out of reach of a test on one machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_and_restart_loses_no_receipted_message() {
    const UNREAD: usize = 200;
    const LIVE: usize = 300;
    // `appendfsync always`: a receipt means the message is in the append-only file.
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let s = Server::start(&ServerConfig::redis(&redis).with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500));
    let (alice, bob, carol, dave) = (s.new_user().await, s.new_user().await, s.new_user().await, s.new_user().await);
    // Bob is offline: his inbox holds UNREAD receipted messages when Redis dies.
    let mut a = s.connect_v1(&alice).await;
    for i in 0..UNREAD {
        a.send_json(json!({"from": alice, "to": bob, "payload": i.to_string(), "ref": i.to_string()})).await;
        let receipt = a.recv_json().await;
        assert_eq!(
            (receipt["ref"].as_str(), receipt["status"].as_str()),
            (Some(i.to_string().as_str()), Some("stored"))
        );
    }
    // Carol writes to Dave across the crash; Dave keeps his one connection.
    let (tally, sender, receiver) = exchange(&s, carol, dave.clone(), LIVE);
    tally.wait_receipted(LIVE / 3).await;
    redis.crash();
    // Sends during the outage are answered with errors, not lost silently.
    let t = tally.clone();
    wait_until("a send error during the outage", CONVERGE, || {
        let n = t.send_errors.load(Ordering::Relaxed);
        async move { n > 0 }
    })
    .await;
    assert_eq!(s.get("/readyz").await.0, 503, "not ready without Redis");
    assert_eq!(s.get("/healthz").await.0, 200, "alive without Redis");
    redis.restart();
    // Traffic resumes by itself, live, on the connection Dave kept.
    all_delivered_on_one_connection(&tally, sender, receiver, &dave, LIVE).await;
    // Every message receipted before the crash is there, in order.
    let mut b = s.connect_v1(&bob).await;
    for i in 0..UNREAD {
        assert_eq!(b.recv_json().await["payload"], i.to_string(), "receipted message {i} after the restart");
    }
    wait_until("ready again", CONVERGE, || async { s.get("/readyz").await.0 == 200 }).await;
    println!(
        "redis restart: {UNREAD} unread receipted messages kept; {LIVE} live ones delivered; {} send errors during the outage; {} duplicates",
        tally.send_errors.load(Ordering::Relaxed),
        duplicates(&tally)
    );
}

/// A frozen Redis (SIGSTOP): connections stay open, nothing answers. The script cache is warm
/// first, as in production: a command written to the frozen Redis is then a plain `EVALSHA`
/// that still runs when it thaws. So `unavailable` promises what `docs/protocol.md` says (not
/// confirmed: retry), not that the message was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_server_stays_up_answers_errors_and_recovers() {
    let redis = Redis::start();
    let s = Server::start(
        &ServerConfig::redis(&redis)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200),
    );
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    let mut b = s.connect_v1(&bob).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "warm", "ref": "w"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert_eq!(b.recv_json().await["payload"], "warm");
    redis.pause();
    let frozen = Instant::now();
    a.send_json(json!({"from": alice, "to": bob, "payload": "during", "ref": "f1"})).await;
    let reply = a.recv_json().await;
    assert_eq!((reply["code"].as_str(), reply["ref"].as_str()), (Some("unavailable"), Some("f1")), "{reply}");
    assert_eq!(s.get("/healthz").await.0, 200);
    wait_until("readiness to fail", DEADLINE, || async { s.get("/readyz").await.0 == 503 }).await;
    // The fault lasts a few seconds in all (its length, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(frozen.elapsed())).await;
    redis.resume();
    wait_until("readiness to return", CONVERGE, || async { s.get("/readyz").await.0 == 200 }).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "after", "ref": "f2"})).await;
    let receipt = a.recv_json().await;
    assert_eq!((receipt["ref"].as_str(), receipt["status"].as_str()), (Some("f2"), Some("stored")), "{receipt}");
    // "during" may have run when Redis thawed (then it comes first, in order); "after" comes.
    let mut next = b.recv_json().await;
    if next["payload"] == "during" {
        println!("frozen redis: the send answered `unavailable` ran when Redis thawed (allowed: retry may duplicate)");
        next = b.recv_json().await;
    }
    assert_eq!(next["payload"], "after", "{next}");
}

/// Redis restarted with a dataset that takes a while to load: it answers `LOADING` meanwhile,
/// which means "not yet". The replica stays up, unready, answering `unavailable` (503), and
/// serves again by itself once the load ends (its scripts, lost with the restart, loaded again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_into_a_long_load_leaves_the_replica_unready_then_serving() {
    let mut redis = Redis::start();
    let s = Server::start(&ServerConfig::redis(&redis).with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500));
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    let mut b = s.connect_v1(&bob).await;
    let receipt = a.send_answered(&alice, &bob, "before", "1").await;
    assert_eq!(receipt["status"], "stored", "{receipt}");
    assert_eq!(b.recv_json().await["payload"], "before");
    redis.fill_and_save(5000);
    redis.restart_loading();
    wait_until("readiness to fail while Redis loads", DEADLINE, || async { s.get("/readyz").await.0 == 503 }).await;
    assert_eq!(s.get(&format!("/login/{}", random_key())).await.0, 503, "a login while Redis loads");
    assert_eq!(s.get("/healthz").await.0, 200);
    assert!(redis.loading(), "the load (100 s at most) ended before the checks");
    redis.finish_loading();
    wait_until("readiness after the load", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;
    // The sockets may have been closed meanwhile (an inbox read refused): connect anew.
    drop((a, b));
    let mut a = s.connect_v1(&alice).await;
    let mut b = s.connect_v1(&bob).await;
    let receipt = a.send_answered(&alice, &bob, "after", "2").await;
    assert_eq!(receipt["status"], "stored", "{receipt}");
    // "before" was never acknowledged: it may come again first.
    let mut next = b.recv_json().await;
    if next["payload"] == "before" {
        next = b.recv_json().await;
    }
    assert_eq!(next["payload"], "after", "{next}");
}

/// The Centrifugo failure: the links to Redis hang (half-open after a network fault) while
/// Redis itself is fine. Nothing errors on its own; the probe must notice (three probes missed
/// in a row), readiness must fail meanwhile, and after the rebuild each session must catch up
/// on its inbox: a message stored by another replica during the outage (its announcement lost
/// on the dead link) reaches the recipient on the socket it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quietly_dead_links_are_noticed_and_replaced() {
    const PROBE_MS: u64 = 500;
    let redis = Redis::start();
    let proxy = Blackhole::start(redis.port).await;
    let mut config = ServerConfig::redis(&redis)
        .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500)
        .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", PROBE_MS);
    let other = Server::start(&config); // straight to Redis
    config.redis_url = Some(proxy.url());
    let s = Server::start(&config); // through the proxy
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = other.connect_v1(&alice).await;
    let mut b = s.connect_v1(&bob).await;
    assert_eq!(s.metric("enigma_redis_dead_links_total").await, 0.0);

    proxy.go_down();
    let down = Instant::now();
    // Stored during the outage by the other replica; its announcement dies on the dead link.
    a.send_json(json!({"from": alice, "to": bob, "payload": "during", "ref": "d"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    wait_until("the dead link to be detected", DEADLINE, || async {
        s.metric("enigma_redis_dead_links_total").await >= 1.0
    })
    .await;
    // Three probes missed in a row: the fault may come just after a probe came back, so up to
    // four intervals; one more for the metric's poll and a loaded machine.
    let noticed = down.elapsed();
    assert!(noticed < Duration::from_millis(5 * PROBE_MS), "noticed after {noticed:?} (probe every {PROBE_MS} ms)");
    wait_until("readiness to fail while the links are down", DEADLINE, || async { s.get("/readyz").await.0 == 503 })
        .await;
    proxy.heal();
    // Rebuilt on fresh connections: ready again, and Bob (still connected) gets the message
    // stored meanwhile (the catch-up), then live ones.
    wait_until("readiness to return", CONVERGE, || async { s.get("/readyz").await.0 == 200 }).await;
    assert_eq!(b.recv_json().await["payload"], "during", "the catch-up after the rebuild");
    let mut a = s.connect_v1(&alice).await;
    let start = Instant::now();
    loop {
        a.send_json(json!({"from": alice, "to": bob, "payload": "through", "ref": "q"})).await;
        let reply = a.recv_json().await;
        if reply["status"] == "stored" {
            break;
        }
        assert!(start.elapsed() < CONVERGE, "sends never recovered: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.recv_json().await["payload"], "through");
}

both_engines!(
    multi_thread:
    slow_reader_is_cut_off_others_unaffected_and_it_gets_everything_later,
    dropped_connection_mid_stream_union_has_every_message_in_order,
);

async fn slow_reader_is_cut_off_others_unaffected_and_it_gets_everything_later(b: Backend) {
    const COUNT: usize = 1500;
    let config = b
        .config()
        .with("ENIGMA__LIMITS__OUTBOUND_QUEUE_FRAMES", 32)
        .with("ENIGMA__LIMITS__OUTBOUND_QUEUE_BYTES", 512 * 1024)
        .with("ENIGMA__LIMITS__SEND_TIMEOUT_MS", 300);
    let s = Server::start(&config);
    let (alice, bob, carol, dave) = (s.new_user().await, s.new_user().await, s.new_user().await, s.new_user().await);
    let mut slow = s.connect_v1(&bob).await; // never reads until it is cut off
    // Bob starts reading the moment the server cuts him off (the close frame waits behind what
    // fitted in his socket for one second at most), so the close code can be checked.
    let metrics = s.metrics();
    let cut_off = tokio::spawn(async move {
        wait_until("the slow reader to be cut off", CONVERGE, || async {
            metrics.get("enigma_slow_consumer_disconnects_total").await >= 1.0
        })
        .await;
        slow.expect_close().await
    });
    let mut c = s.connect(&carol).await;
    let mut d = s.connect(&dave).await;
    let mut a = s.connect(&alice).await;
    let payload = "p".repeat(16 * 1024);
    for i in 0..COUNT {
        a.send_msg(&alice, &bob, &format!("{i}:{payload}")).await;
        if i % 100 == 0 {
            // Others keep talking while Bob's socket backs up.
            c.send_msg(&carol, &dave, &format!("hello {i}")).await;
            assert_eq!(d.recv_json().await["payload"], format!("hello {i}"));
        }
    }
    assert_no_error(&mut a, &alice).await;
    wait_until("the slow reader to be cut off", CONVERGE, || async {
        s.metric("enigma_slow_consumer_disconnects_total").await >= 1.0
    })
    .await;
    let (code, reason) = cut_off.await.unwrap();
    assert_eq!(code, 4429, "cut off as a slow consumer: {reason}");
    // Whatever reached Bob's old socket, unacknowledged, is not lost: all of it comes again.
    let mut bws = s.connect_v1(&bob).await;
    let mut ids = Vec::new();
    for i in 0..COUNT {
        let frame = bws.recv_json().await;
        let text = frame["payload"].as_str().unwrap();
        assert!(text.starts_with(&format!("{i}:")), "message {i} missing or out of order");
        ids.push(frame["id"].as_str().unwrap().to_owned());
        if i % 100 == 99 {
            bws.send_json(json!({ "ack": ids.split_off(0) })).await;
        }
    }
}

/// Every send so far was accepted: a message to oneself arrives as the next frame.
async fn assert_no_error(ws: &mut Ws, me: &str) {
    ws.send_msg(me, me, "marker").await;
    let frame = ws.recv_json().await;
    assert_eq!(frame["payload"], "marker", "unexpected frame: {frame}");
}

async fn dropped_connection_mid_stream_union_has_every_message_in_order(b: Backend) {
    const COUNT: usize = 1000;
    let s = b.server();
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let url = vec![format!("ws://{}", s.addr)];
    let tally = Arc::new(Tally::default());
    let sender = tokio::spawn(send_until_receipted(url, alice, bob.clone(), COUNT, tally.clone()));
    let mut connections: Vec<Vec<(String, usize)>> = Vec::new();
    let mut seen = BTreeSet::new();
    let start = Instant::now();
    while seen.len() < COUNT {
        assert!(start.elapsed() < CONVERGE, "got {} of {COUNT}", seen.len());
        let mut ws = s.connect_v1(&bob).await;
        let mut this = Vec::new();
        let mut unacked = Vec::new();
        // Each connection takes a few hundred messages, acknowledges only some, then dies
        // without a close frame (the TCP connection is simply dropped).
        let cut = 300;
        while let Some(frame) = next_json(&mut ws).await {
            let id = frame["id"].as_str().unwrap().to_owned();
            let seq: usize = frame["payload"].as_str().unwrap().parse().unwrap();
            seen.insert(seq);
            this.push((id.clone(), seq));
            unacked.push(id);
            if unacked.len() == 50 {
                ws.send_json(json!({ "ack": unacked.split_off(0) })).await;
            }
            if this.len() >= cut || seen.len() == COUNT {
                break;
            }
        }
        drop(ws); // abrupt: no close handshake
        connections.push(this);
    }
    sender.await.unwrap();
    // Per connection, ids strictly increase and messages come in send order.
    for conn in &connections {
        let ids: Vec<(u64, u64)> = conn
            .iter()
            .map(|(id, _)| {
                let (ms, seq) = id.split_once('-').unwrap();
                (ms.parse().unwrap(), seq.parse().unwrap())
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order within a connection");
        assert!(conn.windows(2).all(|w| w[0].1 < w[1].1), "payloads out of order within a connection");
    }
    assert!(connections.len() >= 3, "the stream was cut {} times", connections.len() - 1);
    assert_eq!(seen.len(), COUNT, "the union holds every message");
}

/// Sends written back to back are stored as pipelined batches. A Redis that lost its script
/// cache (restarted, failed over) answers a batch with NOSCRIPT: it is loaded and the batch
/// retried, exactly once, in order.
#[tokio::test]
async fn batched_sends_survive_a_flushed_script_cache() {
    let redis = Redis::start();
    let s = Server::start(&ServerConfig::redis(&redis));
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    let mut b = s.connect_v1(&bob).await;
    a.send_json(json!({"from": alice, "to": bob, "payload": "warm", "ref": "w"})).await;
    assert_eq!(a.recv_json().await["status"], "stored");
    assert_eq!(b.recv_json().await["payload"], "warm");
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).unwrap().trim(), "OK");
    // Written without waiting for receipts: the server takes them in batches.
    for i in 0..300 {
        a.send_json(json!({"from": alice, "to": bob, "payload": i.to_string(), "ref": i.to_string()})).await;
    }
    for i in 0..300 {
        let receipt = a.recv_json().await;
        assert_eq!(
            (receipt["ref"].as_str(), receipt["status"].as_str()),
            (Some(i.to_string().as_str()), Some("stored"))
        );
    }
    for i in 0..300 {
        assert_eq!(b.recv_json().await["payload"], i.to_string(), "message {i}");
    }
    assert!(
        redis.cli(&["INFO", "errorstats"]).unwrap().contains("errorstat_NOSCRIPT"),
        "the flushed script cache was hit (and recovered from)"
    );
}

/// Messages written to a specification client leave its inbox through the remover's pipelined
/// calls. A Redis that lost its script cache answers them NOSCRIPT: the remover loads the script
/// and removes them all the same (stored before the flush, so only the remover meets it).
#[tokio::test]
async fn removals_survive_a_flushed_script_cache() {
    let redis = Redis::start();
    let s = Server::start(&ServerConfig::redis(&redis));
    let (alice, bob) = (s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    for i in 0..20 {
        a.send_json(json!({"from": alice, "to": bob, "payload": i.to_string(), "ref": i.to_string()})).await;
        assert_eq!(a.recv_json().await["status"], "stored");
    }
    let inbox = redis.cli(&["--scan", "--pattern", &format!("*inbox:{{{bob}}}")]).expect("SCAN answers");
    let inbox = inbox.lines().next().expect("the inbox").to_owned();
    let stored = || redis.cli(&["XLEN", &inbox]).expect("XLEN answers").trim().to_owned();
    assert_eq!(stored(), "20");
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).unwrap().trim(), "OK");
    let mut b = s.connect(&bob).await;
    for i in 0..20 {
        assert_eq!(b.recv_json().await["payload"], i.to_string(), "message {i}");
    }
    wait_until("the written messages to leave the inbox", DEADLINE, || std::future::ready(stored() == "0")).await;
    assert!(
        redis.cli(&["INFO", "errorstats"]).unwrap().contains("errorstat_NOSCRIPT"),
        "the flushed script cache was hit (and recovered from)"
    );
}

/// A recipient on the sending replica gets its messages handed over there, not published: when
/// the answer to a send is lost (Redis frozen past the command timeout; the send is answered
/// `unavailable`, and the script runs when Redis thaws), the stored message must still reach
/// the connected recipient without waiting for another message to reveal it.
#[tokio::test]
async fn a_local_recipient_gets_a_message_whose_send_timed_out() {
    let redis = Redis::start();
    // Probes far apart: the link recovery (after which every session catches up) stays out of this.
    let config = ServerConfig::redis(&redis)
        .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 300)
        .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 60_000);
    let server = Server::start(&config);
    let (sender, receiver) = (server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    let mut r = server.connect(&receiver).await;
    redis.pause();
    ws.send_json(json!({"from": sender, "to": receiver, "payload": "frozen", "ref": "1"})).await;
    let answer = next_json(&mut ws).await.expect("an answer to the send");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    redis.resume();
    // Nothing else would bring the message: without the catch-up this waits in vain.
    let delivered = tokio::time::timeout(DEADLINE, next_json(&mut r)).await;
    let delivered = delivered.expect("the stored message never reached the connected recipient");
    let delivered = delivered.expect("a delivery, not a closed socket");
    assert_eq!(delivered["payload"], "frozen");
}

/// Sends stored in one script call fail one by one: a recipient whose inbox Redis cannot
/// append to (here the key was replaced by a string) gets its sender `unavailable`, and the
/// messages around it in the same call are stored and receipted.
#[tokio::test]
async fn a_message_that_fails_in_redis_does_not_fail_the_others_of_its_call() {
    let redis = Redis::start();
    let server = Server::start(&ServerConfig::redis(&redis));
    let (sender, broken, fine) = (server.new_user().await, server.new_user().await, server.new_user().await);
    let mut ws = server.connect_v1(&sender).await;
    ws.send_json(json!({"from": sender, "to": broken, "payload": "first", "ref": "0"})).await;
    assert_eq!(next_json(&mut ws).await.expect("a receipt")["status"], "stored");
    let inbox = redis.cli(&["--scan", "--pattern", &format!("*inbox:{{{broken}}}")]).expect("SCAN answers");
    let inbox = inbox.lines().next().expect("the inbox").to_owned();
    redis.cli(&["DEL", &inbox]).expect("DEL answers");
    redis.cli(&["SET", &inbox, "not a stream"]).expect("SET answers");
    // Written back to back: the relay reads them as one batch, stored by one script call.
    for (i, to) in [&fine, &broken, &fine].into_iter().enumerate() {
        ws.send_json(json!({"from": sender, "to": to, "payload": format!("m{i}"), "ref": i.to_string()})).await;
    }
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let answer = next_json(&mut ws).await.expect("an answer");
        answers.insert(answer["ref"].as_str().expect("a ref").to_owned(), answer);
    }
    assert_eq!(answers["0"]["status"], "stored", "{answers:?}");
    assert_eq!(answers["1"]["code"], "unavailable", "{answers:?}");
    assert_eq!(answers["2"]["status"], "stored", "{answers:?}");
}
