//! The floors `make bench` measures the relay against (`enigma-floor`), run for a moment so
//! they cannot rot: the bare forwarder carries a bounded `enigma-bench` run whole, and the
//! Redis floor runs its commands, hears its doorbells and leaves nothing behind.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Forwarder, Redis, run_bench, run_floor};

#[test]
fn the_bare_forwarder_delivers_every_message_of_a_bench_run() {
    let forwarder = Forwarder::start();
    let (url, pid) = (forwarder.url(), forwarder.pid().to_string());
    let args = [
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--pairs",
        "5",
        "--rate",
        "500",
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--drain",
        "5s",
        "--json",
        "--quiet",
    ];
    let run = run_bench(&args, Duration::from_secs(60));
    assert_eq!(run.code, 0, "enigma-bench failed:\n{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    let step = &report["steps"][0];
    let n = |field: &str| step[field].as_u64().unwrap_or_else(|| panic!("`{field}` in {step:#}"));
    assert_eq!((n("sent"), n("delivered")), (1000, 1000), "{step:#}");
    assert_eq!((n("lost"), n("duplicated"), n("reordered"), n("errors")), (0, 0, 0, 0), "{step:#}");
    let relay = step["cpu"].as_array().expect("cpu").iter().find(|c| c["role"] == "relay").expect("the forwarder");
    assert!(relay["us_per_msg"].as_f64().is_some(), "the forwarder's CPU per message: {step:#}");
}

#[test]
fn the_redis_floor_runs_its_commands_and_leaves_nothing_behind() {
    let redis = Redis::start();
    let info = redis.cli(&["INFO", "server"]).expect("INFO answers");
    let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).expect("process_id").trim().to_owned();
    redis.cli(&["CONFIG", "RESETSTAT"]).expect("CONFIG answers");
    let url = redis.url();
    let args = ["redis", "--url", &url, "--redis-pid", &pid, "--messages", "2000", "--rate", "4000", "--json"];
    let run = run_floor(&args, Duration::from_secs(30));
    assert_eq!(run.code, 0, "enigma-floor failed:\n{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    assert_eq!(report["messages"], 2000, "{report:#}");
    assert_eq!(report["rings_heard"], 2000, "every doorbell reached its subscriber: {report:#}");
    assert!(report["redis_us_per_msg"].as_f64().is_some(), "{report:#}");
    // Each message's three commands, nothing else per message.
    let stats = redis.cli(&["INFO", "commandstats"]).expect("INFO answers");
    let calls = |command: &str| {
        let prefix = format!("cmdstat_{command}:calls=");
        stats.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|r| r.split(',').next()?.parse::<u64>().ok())
    };
    assert_eq!((calls("xadd"), calls("publish"), calls("xdel")), (Some(2000), Some(2000), Some(2000)), "{stats}");
    assert_eq!(redis.cli(&["DBSIZE"]).expect("DBSIZE answers").trim(), "0", "the floor left keys behind");
}
