//! Starting the binary: configuration from file and environment, validated up front.

use std::process::Command;

use crate::harness::{DEADLINE, Redis, Server, ServerConfig, TempDir, random_key, test_token_keys, wait_until};

fn run_with_env(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_enigma-server"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run enigma-server");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bad_value_fails_startup_naming_its_key() {
    for (key, value, named) in [
        ("ENIGMA__SERVER__ADDR", "not-an-address", "server.addr"),
        ("ENIGMA__LIMITS__MAX_PAYLOAD_BYTES", "0", "limits.max_payload_bytes"),
        ("ENIGMA__REDIS__URL", "http://wrong-scheme", "redis.url"),
        ("ENIGMA__LOG__FORMAT", "xml", "format"),
        ("ENIGMA__SERVER__IDLE_TIMEOUT_MS", "10", "server.idle_timeout_ms"),
        ("ENIGMA__SERVER__METRICS_ADDR", "nowhere", "server.metrics_addr"),
    ] {
        let (code, stderr) = run_with_env(&[(key, value)], &[]);
        assert_eq!(code, 2, "{key}={value}: {stderr}");
        assert!(stderr.contains(named), "{key}={value} should name {named}: {stderr}");
    }
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused() {
    let dir = TempDir::new("cfg");
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[server]\nadress = \"127.0.0.1:0\"\n").unwrap();
    let (code, stderr) = run_with_env(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("adress"), "{stderr}");
    let (code, stderr) = run_with_env(&[], &["--config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn file_settings_apply_and_environment_overrides_them() {
    let dir = TempDir::new("cfg");
    let file = dir.path().join("enigma.toml");
    std::fs::write(&file, "[limits]\nmax_public_key_bytes = 10\ninbox_capacity = 5\n").unwrap();
    let config =
        ServerConfig::memory().with("ENIGMA_CONFIG", file.display()).with("ENIGMA__LIMITS__MAX_PUBLIC_KEY_BYTES", 12);
    let s = Server::start(&config);
    assert_eq!(s.get("/login/AAAAAAAAAAAA").await.0, 200, "12 bytes allowed by the environment");
    assert_eq!(s.get("/login/AAAAAAAAAAAAA").await.0, 400, "13 bytes refused");
    // The file's own setting applies: an inbox holds 5 messages, not the default 10,000.
    let (alice, bob) = (s.login("AAAAAAAAAAAA").await, s.login("BBBBBBBBBBBB").await);
    let mut a = s.connect_v1(&alice).await;
    for i in 0..6 {
        a.send_json(serde_json::json!({"from": alice, "to": bob, "payload": "x", "ref": i.to_string()})).await;
        let reply = a.recv_json().await;
        let expected = if i < 5 { (None, Some("stored")) } else { (Some("inbox_full"), None) };
        assert_eq!((reply["code"].as_str(), reply["status"].as_str()), expected, "send {i}: {reply}");
    }
}

/// The relay's allocator is jemalloc with its background purging thread (the settings built in
/// by .cargo/config.toml): what gives a burst's memory back to the system (docs/operations.md,
/// "Relay memory"). With the system allocator, or without the settings, there is no such thread.
#[cfg(all(target_os = "linux", target_env = "gnu", feature = "jemalloc"))]
#[tokio::test]
async fn the_relay_allocator_gives_memory_back_with_a_background_thread() {
    let s = Server::start(&ServerConfig::memory());
    let threads = format!("/proc/{}/task", s.pid());
    let names = || {
        std::fs::read_dir(&threads)
            .map(|tasks| {
                tasks
                    .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                    .map(|name| name.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    crate::harness::wait_until("a jemalloc background thread in the relay", crate::harness::DEADLINE, || {
        let found = names().iter().any(|name| name == "jemalloc_bg_thd");
        async move { found }
    })
    .await;
}

/// Redis answering `LOADING` (restarted with a large dataset) means "not yet": a replica started
/// meanwhile waits, as long as the load takes, and serves once it ends. Without a configured
/// token key its startup reads the shared one from Redis, so it waits before listening (as for
/// a Redis not reachable yet); with one (as the Helm chart configures) nothing at startup needs
/// the data: it listens at once, unready, and answers 503 until Redis has loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_loads_its_dataset_waits_and_becomes_ready() {
    let mut redis = Redis::start();
    redis.fill_and_save(5000);
    redis.restart_loading();
    let dir = TempDir::new("loading");
    let log = dir.path().join("replica.log");
    let config = ServerConfig::redis(&redis);
    let starting = std::thread::spawn({
        let (config, log) = (config.clone(), log.clone());
        move || Server::start_logging_to(&config, &log)
    });
    let configured = Server::start(&config.clone().with("ENIGMA__AUTH__TOKEN_KEYS", test_token_keys()));
    wait_until("the replica to say it waits for Redis's load", DEADLINE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!starting.is_finished(), "the replica started while Redis loads exited; its log:\n{text}");
        async move { text.contains("Redis is loading its dataset; waiting for it") }
    })
    .await;
    assert_eq!(configured.get("/readyz").await.0, 503, "ready while Redis loads");
    assert_eq!(configured.get(&format!("/login/{}", random_key())).await.0, 503, "a login while Redis loads");
    assert!(redis.loading(), "the load (100 s at most) ended before the checks");
    assert!(!starting.is_finished(), "the replica started while Redis loads stopped waiting");

    redis.finish_loading();
    let waited = tokio::task::spawn_blocking(move || starting.join()).await.unwrap().expect("the replica exited");
    for s in [&waited, &configured] {
        wait_until("readiness after the load", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;
    }
    let (alice, bob) = (waited.new_user().await, configured.new_user().await);
    let mut b = configured.connect_v1(&bob).await;
    let mut a = waited.connect_v1(&alice).await;
    let receipt = a.send_answered(&alice, &bob, "after the load", "1").await;
    assert_eq!(receipt["status"], "stored", "{receipt}");
    let delivery = b.recv_json().await;
    assert_eq!(
        (delivery["from"].as_str(), delivery["payload"].as_str()),
        (Some(alice.as_str()), Some("after the load"))
    );
}

/// A replica whose Redis is not there yet says where it is trying (the address, never a
/// password), and its log written to a file (not a terminal) is plain text, without colour codes.
#[tokio::test]
async fn waiting_for_redis_names_the_address_in_a_plain_log() {
    let dir = TempDir::new("no-redis");
    let log = dir.path().join("relay.log");
    let port = crate::harness::free_port(); // nothing listens there
    let mut child = Command::new(env!("CARGO_BIN_EXE_enigma-server"))
        .env("ENIGMA__SERVER__ADDR", "127.0.0.1:0")
        .env("ENIGMA__REDIS__URL", format!("redis://:hunter2@127.0.0.1:{port}/"))
        .env("ENIGMA__LOG__FORMAT", "pretty")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn enigma-server");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the relay to say Redis is not reachable yet", DEADLINE, || async {
        read().contains("Redis not reachable yet")
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "the address is not named: {text}");
    assert!(!text.contains("hunter2"), "the password is shown: {text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file: {text:?}");
}
