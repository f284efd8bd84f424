//! `/metrics` after real traffic: the series move, and no label carries a user id or a key.

use serde_json::json;

use crate::harness::{Backend, Server, ServerConfig, free_port, random_key};

both_engines!(metrics_move_with_real_traffic);

async fn metrics_move_with_real_traffic(b: Backend) {
    let redis = b.is_redis();
    let s = b.server();
    let key = random_key();
    let alice = s.login(&key).await;
    let bob = s.new_user().await;
    assert_eq!(s.get(&format!("/connect/{bob}")).await.0, 200);
    assert_eq!(s.get("/connect/00000000-0000-4000-8000-000000000000").await.0, 404);

    // Two messages wait for Bob; one more arrives live; one send is refused.
    let mut a = s.connect(&alice).await;
    a.send_msg(&alice, &bob, "stored 1").await;
    a.send_msg(&alice, &bob, "stored 2").await;
    a.send_msg(&alice, "nobody", "refused").await;
    assert_eq!(a.recv_json().await["code"], "user_not_found");
    let mut bws = s.connect_v1(&bob).await;
    let first = bws.recv_json().await;
    let second = bws.recv_json().await;
    a.send_msg(&alice, &bob, "live").await;
    let third = bws.recv_json().await;
    assert_eq!(third["payload"], "live");
    bws.send_json(json!({"ack": [first["id"], second["id"], third["id"]]})).await;
    bws.send_json(json!({"ack": []})).await; // sync: answered after the ack was applied
    assert_eq!(bws.recv_json().await["code"], "invalid_frame");
    let mut displacing = s.connect_v1(&bob).await;
    assert_eq!(bws.expect_close().await.0, 4409);
    displacing.send_text("sync").await; // answered once the new session runs
    assert_eq!(displacing.recv_json().await["code"], "invalid_json");

    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let labelled = |series: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(value("enigma_logins_total") >= 2.0);
    assert_eq!(labelled("enigma_lookups_total", "result=\"found\""), 1.0);
    assert_eq!(labelled("enigma_lookups_total", "result=\"not_found\""), 1.0);
    assert_eq!(value("enigma_messages_accepted_total"), 3.0);
    assert_eq!(labelled("enigma_messages_rejected_total", "reason=\"user_not_found\""), 1.0);
    assert_eq!(labelled("enigma_messages_delivered_total", "path=\"backlog\""), 2.0);
    assert_eq!(labelled("enigma_messages_delivered_total", "path=\"live\""), 1.0);
    assert_eq!(value("enigma_acks_total"), 3.0);
    assert_eq!(value("enigma_delivery_latency_seconds_count"), 3.0);
    assert!(value("enigma_backlog_on_connect_messages_count") >= 2.0);
    assert!(
        labelled("enigma_backlog_on_connect_messages_bucket", "le=\"1\"")
            < value("enigma_backlog_on_connect_messages_count"),
        "a connection saw a backlog of 2"
    );
    assert!(value("enigma_connections_opened_total") >= 3.0);
    assert_eq!(value("enigma_connections_open"), 2.0, "Alice and Bob's newest socket");
    assert_eq!(value("enigma_connections_displaced_total"), 1.0);
    assert_eq!(labelled("enigma_connections_closed_total", "reason=\"replaced\""), 1.0);
    assert!(labelled("enigma_http_requests_total", "route=\"/login/{*public_key}\"") >= 2.0);
    assert!(labelled("enigma_http_requests_total", "route=\"/connect/{user_id}\"") >= 2.0);
    assert!(value("enigma_http_request_duration_seconds_count") >= 4.0);
    assert_eq!(value("enigma_draining"), 0.0);
    if redis {
        assert_eq!(value("enigma_redis_link_up"), 1.0);
        // Three sends, but sends queued while a call is in flight share the next one (and
        // loading the script at start counts as one): the count depends on timing, not only
        // on the traffic.
        let sends = labelled("enigma_redis_command_duration_seconds_count", "command=\"send\"");
        assert!((2.0..=4.0).contains(&sends), "{sends} timed send calls");
        assert!(value("enigma_redis_resubscriptions_total") >= 1.0, "the initial subscription counts");
    }
    // Labels are route templates and outcomes: never a user id, never a key.
    for secret in [alice.as_str(), bob.as_str(), &key[..20]] {
        assert!(!text.contains(secret), "/metrics leaks {secret}");
    }
}

/// `server.metrics_addr`: `/metrics` on a listener of its own (and nothing else there).
#[tokio::test]
async fn metrics_on_a_separate_port() {
    let port = free_port();
    let s = Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__METRICS_ADDR", format!("127.0.0.1:{port}")));
    s.new_user().await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let metrics = s.http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("enigma_logins_total 1"));
    assert_eq!(s.http.get(url("/login/abc")).send().await.unwrap().status(), 404, "only /metrics there");
    assert_eq!(s.get("/metrics").await.0, 200, "still on the main port");
}
