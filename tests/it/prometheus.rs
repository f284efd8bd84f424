//! A real Prometheus scraping two replicas (what `make cluster` runs, and what the Helm chart's
//! ServiceMonitor asks of an operator's Prometheus): every target is up, the shipped alert
//! rules load, and PromQL over the scraped counters counts exactly the messages delivered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{DEADLINE, Prometheus, Redis, Server, ServerConfig, wait_until};

/// Messages sent after the baseline, half to a user on each replica.
const N: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_replica_and_promql_counts_the_delivered_messages() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let (s0, s1) = (Server::start(&config), Server::start(&config));
    let Some(prometheus) = Prometheus::start_or_skip("prometheus_scrapes_every_replica", &[s0.addr, s1.addr]) else {
        return;
    };
    wait_until("every target up", DEADLINE, || async {
        let health = prometheus.target_health().await;
        health.len() == 2 && health.iter().all(|h| h == "up")
    })
    .await;
    let shipped = include_str!("../../deploy/prometheus/alerts.yml").matches("- alert:").count();
    let loaded = prometheus.alert_rules().await;
    assert_eq!(loaded.len(), shipped, "alert rules loaded: {loaded:?}");

    // Alice on s0 writes to Bob (on s1, across replicas) and Carol (on s0).
    let (alice, bob, carol) = (s0.new_user().await, s0.new_user().await, s0.new_user().await);
    let mut a = s0.connect(&alice).await;
    let mut b = s1.connect(&bob).await;
    let mut c = s0.connect(&carol).await;
    let mut exchange = async |tag: &str, count: usize| {
        for i in 0..count {
            a.send_msg(&alice, [&bob, &carol][i % 2], &format!("{tag} {i}")).await;
        }
        for i in 0..count {
            let got = [&mut b, &mut c][i % 2].recv_json().await;
            assert_eq!(got["payload"], format!("{tag} {i}"));
        }
    };
    // A first delivery on each replica; once Prometheus has scraped both, that is the
    // baseline (proof that the scrapes carry what the replicas count).
    exchange("warm-up", 2).await;
    let delivered = "sum(enigma_messages_delivered_total)";
    wait_until("the warm-up deliveries scraped", DEADLINE, || async {
        prometheus.scalar(delivered).await == Some(2.0)
    })
    .await;
    let baseline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(10)).await; // the sends come strictly after it

    exchange("counted", N).await;
    // What Prometheus says was delivered since the baseline, from the samples it scraped:
    // the counter now minus the counter at the baseline, over every replica.
    let since = format!("{delivered} - sum(enigma_messages_delivered_total @ {baseline:.3})");
    let mut seen = None;
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < deadline {
        seen = prometheus.scalar(&since).await;
        if seen == Some(N as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, Some(N as f64), "PromQL `{since}` against {N} messages sent and received");
    // And the rate over the last minute agrees: N messages (none before the baseline but the
    // warm-up) is a positive rate on both replicas.
    let per_replica =
        prometheus.scalar("count(sum by (instance) (rate(enigma_messages_delivered_total[1m])) > 0)").await;
    assert_eq!(per_replica, Some(2.0), "both replicas delivered");
}
