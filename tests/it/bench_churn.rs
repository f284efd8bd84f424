//! `enigma-bench --ack --churn`, what `make soak` runs for 30 minutes, here for a few seconds
//! against a real relay and a real redis-server: acknowledging recipients and every socket
//! closed and opened again about every second while the traffic keeps its schedule.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Redis, Server, ServerConfig, run_bench};

#[test]
fn acknowledging_clients_under_reconnect_churn_lose_nothing_and_leave_nothing_stored() {
    churn_run(true);
}

/// Specification clients get the stored backlog on each new socket: nothing lost either.
#[test]
fn specification_clients_under_reconnect_churn_lose_nothing() {
    churn_run(false);
}

fn churn_run(acknowledging: bool) {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let server = Server::start(&config);
    let url = server.url("");
    let mut args = vec![
        "--url",
        &url,
        "--pairs",
        "10",
        "--rate",
        "1000",
        "--duration",
        "4s",
        "--warmup",
        "0s",
        "--drain",
        "20s",
        "--churn",
        "1s",
        "--json",
        "--quiet",
    ];
    if acknowledging {
        args.push("--ack");
    }
    let run = run_bench(&args, Duration::from_secs(90));
    assert_eq!(run.code, 0, "enigma-bench failed:\n{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    assert_eq!(report["acknowledging"], acknowledging);
    let step = &report["steps"][0];
    let n = |field: &str| step[field].as_u64().unwrap_or_else(|| panic!("`{field}` in {step:#}"));
    assert_eq!(n("scheduled"), 4000, "{step:#}");
    // Nothing scheduled went unsent, nothing sent went missing, nothing came twice beyond
    // what enigma.v1 allows (re-deliveries of unacknowledged messages are counted apart).
    assert_eq!((n("unsent"), n("sent")), (0, 4000), "{step:#}");
    assert_eq!((n("lost"), n("delivered")), (0, 4000), "{step:#}");
    assert_eq!(n("duplicated"), 0, "{step:#}");
    assert_eq!(n("errors"), 0, "{step:#}");
    // The churn happened: 20 sockets, each about once a second for 4 s and the drain.
    assert!(n("reconnects") >= 20, "{step:#}");
    // Every delivery was acknowledged, re-deliveries included (a specification client's
    // leave the store when written): no inbox holds anything.
    let inboxes = redis.cli(&["--scan", "--pattern", &format!("{}inbox:*", config.prefix)]).expect("redis-cli");
    for inbox in inboxes.lines().filter(|l| !l.is_empty()) {
        let len = redis.cli(&["XLEN", inbox]).expect("redis-cli");
        assert_eq!(len.trim(), "0", "{inbox} still holds messages after the run:\n{step:#}");
    }
    if acknowledging {
        // The last batch may go out after the step's figures were taken (the empty inboxes
        // above are the proof that everything was acknowledged).
        assert!(n("acknowledged") > 3000, "{step:#}");
    } else {
        assert_eq!((n("acknowledged"), n("redelivered")), (0, 0), "{step:#}");
    }
}
