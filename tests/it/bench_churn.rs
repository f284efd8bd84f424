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
    let mut args = churn_args(&url, "4s", "1s");
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

/// Redis stopped for 3 s while every socket reconnects about twice a second: the relay refuses
/// the sockets it cannot attach meanwhile (an error frame, then close 1013, nothing read from
/// them) and answers the sends it cannot store `unavailable`. The generator, like a real client,
/// opens a refused socket again: every pair keeps sending to the end (the sends written on a
/// refused socket are counted `refused`), and whatever did not arrive was answered with an
/// error — nothing went missing silently.
#[test]
fn sockets_refused_while_redis_stalls_are_opened_again_and_nothing_goes_missing() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let server = Server::start(&config);
    let url = server.url("");
    let mut args = churn_args(&url, "8s", "500ms");
    args.push("--ack");
    let run = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            redis.pause();
            std::thread::sleep(Duration::from_secs(3));
            redis.resume();
        });
        run_bench(&args, Duration::from_secs(120))
    });
    let report: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|_| panic!("a JSON report:\n{}\n{}", run.stdout, run.stderr));
    let step = &report["steps"][0];
    let n = |field: &str| step[field].as_u64().unwrap_or_else(|| panic!("`{field}` in {step:#}"));
    let kind = |kind: &str| step["errors_by_kind"][kind].as_u64().unwrap_or(0);
    assert_eq!((n("scheduled"), n("unsent")), (8000, 0), "every pair sent to the end:\n{step:#}");
    assert!(kind("reconnect_failed") == 0 && kind("closed:lost") == 0, "{step:#}");
    // Each refused socket's own error frame is an `unavailable` too (one per close 1013).
    let unavailable_sends = kind("unavailable").saturating_sub(kind("closed:1013"));
    assert!(n("lost") <= unavailable_sends, "more lost than sends answered `unavailable`:\n{step:#}");
    assert_eq!(n("duplicated"), 0, "{step:#}");
    // The stall happened while sockets reconnected.
    assert!(kind("unavailable") + kind("closed:1013") > 0, "{step:#}");
    eprintln!(
        "refused sockets {}, refused sends {}, unavailable {}, lost {}",
        kind("closed:1013"),
        n("refused"),
        kind("unavailable"),
        n("lost")
    );
}

/// enigma-bench for 10 pairs at 1,000 msgs/s over `duration`, every socket reopened about every
/// `churn`, a JSON report.
fn churn_args<'a>(url: &'a str, duration: &'a str, churn: &'a str) -> Vec<&'a str> {
    vec![
        "--url",
        url,
        "--pairs",
        "10",
        "--rate",
        "1000",
        "--duration",
        duration,
        "--warmup",
        "0s",
        "--drain",
        "20s",
        "--churn",
        churn,
        "--json",
        "--quiet",
    ]
}
