//! Network faults between hosts, not processes: Redis and each relay replica run in network
//! namespaces of their own (`harness::Lan`), the test's clients on the bridge. Links are cut or
//! degraded with nftables rules inside a namespace (and delayed by a proxy) while acknowledging
//! clients keep sending; nothing receipted may be lost. Each test prints its figures.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::harness::{
    CONVERGE, DEADLINE, DelayProxy, Flow, FlowTally, Host, Lan, NsRedis, Server, ServerConfig, wait_until,
};

/// Short timeouts so a cut is noticed in about a second (the defaults are for production).
/// Replicas of one Redis share its keys (each test has a Redis of its own).
fn replica(redis_url: String, host: &Host) -> Server {
    let config =
        ServerConfig { redis_url: Some(redis_url), prefix: "enigma-netns:".to_owned(), ..ServerConfig::default() }
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
            .in_host(host);
    Server::start(&config)
}

fn ws(server: &Server) -> String {
    format!("ws://{}", server.addr)
}

async fn ready(server: &Server) -> Option<u16> {
    let request = server.http.get(server.url("/readyz")).timeout(Duration::from_secs(2)).send();
    request.await.ok().map(|r| r.status().as_u16())
}

/// A flow between two fresh users, sending through `senders` and receiving through `receivers`.
async fn flow(via: &Server, senders: &[&Server], receivers: &[&Server]) -> Flow {
    let (from, to) = (via.new_user().await, via.new_user().await);
    let urls = |s: &[&Server]| s.iter().map(|s| ws(s)).collect();
    Flow::start(urls(senders), urls(receivers), from, to, Duration::from_millis(20))
}

fn report(name: &str, tally: &FlowTally) {
    println!(
        "{name}: {} receipted, lost {:?}, {} duplicates, errors {:?}, connections sender {} receiver {}, \
         latency p50 {:?} p99 {:?} max {:?}",
        tally.receipted(),
        tally.lost(),
        tally.duplicates(),
        tally.errors.lock().unwrap(),
        tally.sender_connections.load(Ordering::Relaxed),
        tally.receiver_connections.load(Ordering::Relaxed),
        tally.latency(0.5),
        tally.latency(0.99),
        tally.latency(1.0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_refuses_sends_recovers_and_the_other_never_notices() {
    let Some(mut lan) = Lan::new_or_skip("a_replica_cut_off_from_redis") else { return };
    let (redis_host, cut_host, other_host) = (lan.host(), lan.host(), lan.host());
    let redis = NsRedis::start(&redis_host, &[]);
    let cut = replica(redis.url(), &cut_host);
    let other = replica(redis.url(), &other_host);
    let on_cut = flow(&cut, &[&cut], &[&cut]).await;
    let on_other = flow(&other, &[&other], &[&other]).await;
    on_cut.wait_receipted(20).await;
    on_other.wait_receipted(20).await;

    cut_host.cut(redis.ip, None);
    let partition = Instant::now();
    let before = on_cut.tally.receipted();
    wait_until("the cut replica to fail readiness", DEADLINE, || async { ready(&cut).await == Some(503) }).await;
    let unready_after = partition.elapsed();
    wait_until("a send refused during the cut", DEADLINE, || async { on_cut.tally.errors() > 0 }).await;
    // The whole 10 s: the other replica stays ready and its users keep getting receipts.
    let other_before = on_other.tally.receipted();
    while partition.elapsed() < Duration::from_secs(10) {
        assert_eq!(ready(&other).await, Some(200), "the other replica lost readiness");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(on_other.tally.receipted() > other_before + 50, "the other replica's traffic stalled");
    // A few receipts may come from sends that were answered before the cut took hold.
    let during = on_cut.tally.receipted() - before;
    assert!(during <= 2, "{during} receipts from a replica cut off from Redis");

    cut_host.heal();
    let healed = Instant::now();
    wait_until("readiness to come back by itself", CONVERGE, || async { ready(&cut).await == Some(200) }).await;
    let ready_after = healed.elapsed();
    let resumed = on_cut.tally.receipted();
    on_cut.wait_receipted(resumed + 20).await;
    let sending_after = healed.elapsed();

    let (cut_tally, other_tally) = (on_cut.finish().await, on_other.finish().await);
    report("cut replica", &cut_tally);
    report("other replica", &other_tally);
    println!(
        "partition replica-redis 10 s: unready after {unready_after:?}; ready again {ready_after:?} and sending \
         {sending_after:?} after the heal"
    );
    assert_eq!(cut_tally.lost(), Vec::<usize>::new(), "receipted messages lost");
    let codes: Vec<String> = cut_tally.errors.lock().unwrap().keys().cloned().collect();
    assert_eq!(codes, ["unavailable"], "sends during the cut are refused as unavailable");
    assert_eq!(other_tally.lost(), Vec::<usize>::new());
    assert_eq!(other_tally.errors(), 0, "the other replica's senders got errors");
    assert_eq!(other_tally.duplicates(), 0);
    assert_eq!(other_tally.receiver_connections.load(Ordering::Relaxed), 1, "the other replica's receiver reconnected");
    assert_eq!(other_tally.sender_connections.load(Ordering::Relaxed), 1, "the other replica's sender reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_loss_between_replicas_and_redis_lose_nothing() {
    let Some(mut lan) = Lan::new_or_skip("delay_and_loss_between_replicas_and_redis") else { return };
    let (redis_host, a_host, b_host) = (lan.host(), lan.host(), lan.host());
    let redis = NsRedis::start(&redis_host, &[]);
    // Both replicas reach Redis through the delaying proxy on the bridge (the test's address).
    let proxy =
        DelayProxy::start(lan.gateway.into(), SocketAddr::new(redis.ip.into(), redis.port), Duration::ZERO).await;
    let url = format!("redis://{}/", proxy.addr);
    // Production timeouts: a 400 ms round trip must not be taken for an outage.
    // One key prefix for both replicas: they share the users.
    let prefix = format!("d{}x{}:", std::process::id(), lan.gateway);
    let start = |host: &Host| {
        Server::start(
            &ServerConfig { redis_url: Some(url.clone()), prefix: prefix.clone(), ..ServerConfig::default() }
                .in_host(host),
        )
    };
    let (a, b) = (start(&a_host), start(&b_host));
    // Two flows within a replica, two across.
    let flows = [
        flow(&a, &[&a], &[&a]).await,
        flow(&b, &[&b], &[&b]).await,
        flow(&a, &[&a], &[&b]).await,
        flow(&b, &[&b], &[&a]).await,
    ];
    for f in &flows {
        f.wait_receipted(10).await;
    }

    proxy.set_delay(Duration::from_millis(200));
    for host in [&a_host, &b_host] {
        host.drop_share(lan.gateway, Some(proxy.addr.port()), 5);
    }
    let degraded = Instant::now();
    let before: Vec<usize> = flows.iter().map(|f| f.tally.receipted()).collect();
    while degraded.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during: Vec<usize> = flows.iter().zip(&before).map(|(f, b)| f.tally.receipted() - b).collect();
    for host in [&a_host, &b_host] {
        host.heal();
    }
    proxy.set_delay(Duration::ZERO);

    let mut all = Vec::new();
    for (i, f) in flows.into_iter().enumerate() {
        let tally = f.finish().await;
        report(&format!("degraded flow {i}"), &tally);
        all.push(tally);
    }
    println!("200 ms + 5 % loss for 30 s: receipted during the degradation per flow {during:?}");
    for tally in &all {
        assert_eq!(tally.lost(), Vec::<usize>::new(), "receipted messages lost");
        // Bounded: three 400 ms round trips plus retransmissions, far below a timeout.
        assert!(tally.latency(0.99) < Duration::from_secs(10), "p99 {:?}", tally.latency(0.99));
    }
    assert!(during.iter().all(|&n| n > 0), "traffic stopped under degradation: {during:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_clients_they_reconnect_elsewhere_and_get_everything() {
    let Some(mut lan) = Lan::new_or_skip("a_replica_cut_off_from_its_clients") else { return };
    let (redis_host, cut_host, other_host) = (lan.host(), lan.host(), lan.host());
    let redis = NsRedis::start(&redis_host, &[]);
    let cut = replica(redis.url(), &cut_host);
    let other = replica(redis.url(), &other_host);
    // Everyone starts on the replica that will be cut off (it is first in their lists).
    let flows =
        [flow(&cut, &[&cut, &other], &[&cut, &other]).await, flow(&cut, &[&cut, &other], &[&cut, &other]).await];
    for f in &flows {
        f.wait_receipted(20).await;
    }
    // The clients' side of the bridge is the gateway: cut it, keep Redis.
    cut_host.cut(lan.gateway, None);
    let partition = Instant::now();
    let before: Vec<usize> = flows.iter().map(|f| f.tally.receipted()).collect();
    for (f, b) in flows.iter().zip(&before) {
        f.wait_receipted(b + 20).await;
    }
    let back_after = partition.elapsed();
    let mut all = Vec::new();
    for (i, f) in flows.into_iter().enumerate() {
        let tally = f.finish().await;
        report(&format!("clients cut off, flow {i}"), &tally);
        all.push(tally);
    }
    println!("relay cut off from its clients: traffic back on the other replica after {back_after:?}");
    for tally in &all {
        assert_eq!(tally.lost(), Vec::<usize>::new(), "receipted messages lost");
        assert!(tally.receiver_connections.load(Ordering::Relaxed) >= 2, "the receiver never moved");
    }
    cut_host.heal();
}
