//! Starting the binary: configuration from file and environment, validated up front.

use std::process::Command;

use crate::harness::{Server, ServerConfig, TempDir};

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
#[cfg(all(target_os = "linux", target_env = "gnu"))]
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
