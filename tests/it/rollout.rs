//! A rolling restart, as a Deployment rollout does it: the three replicas of the local cluster
//! layout (Redis, replicas, nginx from `deploy/local/nginx.conf.template`) are stopped with
//! SIGTERM one by one, each replaced (on the same address, so nginx needs no reload) and in
//! use by nginx before the next goes, while acknowledging clients send and receive through nginx. Nothing receipted
//! is lost and every client is back within 5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Flow, Nginx, Redis, Server, ServerConfig, nginx_binary, wait_until};

const FLOWS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_replica_under_load_loses_nothing() {
    let Some(binary) = nginx_binary() else {
        assert!(std::env::var_os("CI").is_none(), "nginx is required under CI (apt-get install nginx-light)");
        println!("SKIPPED rolling restart test: no nginx binary (apt-get install nginx-light, or set NGINX)");
        return;
    };
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let mut replicas: Vec<Server> = (0..3).map(|_| Server::start(&config)).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|s| s.addr).collect();
    let lb = Nginx::start(&binary, &addrs);
    let url = vec![format!("ws://127.0.0.1:{}", lb.port)];
    let mut flows = Vec::new();
    for _ in 0..FLOWS {
        let (from, to) = (replicas[0].new_user().await, replicas[0].new_user().await);
        flows.push(Flow::start(url.clone(), url.clone(), from, to, Duration::from_millis(20)));
    }
    for f in &flows {
        f.wait_receipted(10).await;
    }

    let rollout = Instant::now();
    for (i, addr) in addrs.iter().enumerate() {
        let old = replicas.remove(i);
        let step = Instant::now();
        let status = tokio::task::spawn_blocking(move || old.terminate()).await.unwrap();
        let stopped_in = step.elapsed();
        assert!(status.success(), "replica {i} exits cleanly after SIGTERM: {status:?}");
        // The replacement takes the old one's address (the pod's Service endpoint, in effect).
        let new = Server::start(&config.clone().with("ENIGMA__SERVER__ADDR", addr));
        wait_until("the replacement to be ready", DEADLINE, || async { new.get("/readyz").await.0 == 200 }).await;
        // Like a Deployment waiting for the new pod to be an endpoint: nginx marks a replica
        // that refused it failed for `fail_timeout` (10 s), and stopping the next replica
        // before nginx uses the replacement leaves it nowhere to go (seen: 10-40 s outages).
        wait_until("nginx to route to the replacement", Duration::from_secs(30), || async {
            let _ = reqwest::get(lb.url("/healthz")).await;
            routed_healthz(&new).await
        })
        .await;
        replicas.insert(i, new);
        // Traffic flows again before the next replica goes.
        let counts: Vec<usize> = flows.iter().map(|f| f.tally.receipted()).collect();
        for (f, n) in flows.iter().zip(counts) {
            f.wait_receipted(n + 5).await;
        }
        let gaps: Vec<Duration> = flows.iter().map(|f| *f.tally.longest_gap.lock().unwrap()).collect();
        println!("replica {i}: stopped in {stopped_in:?}, step {:?}, longest gaps so far {gaps:?}", step.elapsed());
    }
    let took = rollout.elapsed();

    let mut gaps = Vec::new();
    let (mut receipted, mut duplicates) = (0, 0);
    for f in flows {
        let tally = f.finish().await;
        assert_eq!(tally.lost(), Vec::<usize>::new(), "receipted messages lost in the rollout");
        receipted += tally.receipted();
        duplicates += tally.duplicates();
        gaps.push(*tally.longest_gap.lock().unwrap());
    }
    let worst = gaps.iter().max().copied().unwrap_or_default();
    println!(
        "rolling restart of 3 replicas in {took:?}: {receipted} receipted, 0 lost, {duplicates} duplicates; \
         longest time a sender went without a receipt: {worst:?} (per flow {gaps:?})"
    );
    assert!(worst < Duration::from_secs(5), "a client was away for {worst:?}");
}

/// Whether `server` has answered a `/healthz` (requests that came through nginx).
async fn routed_healthz(server: &Server) -> bool {
    let Ok(response) = server.http.get(server.url("/metrics")).send().await else { return false };
    let text = response.text().await.unwrap_or_default();
    text.lines().any(|l| l.starts_with("enigma_http_requests_total{") && l.contains("route=\"/healthz\""))
}
