//! Secure by default: a contact's key swapped in the user records is refused by the CLI's pins
//! until trusted (on a relay without the key directory, where pins are the only guard; with the
//! directory the swap is refused outright: tests/it/cli.rs); the CLI reaches a relay through a TLS-terminating nginx with a private
//! CA; plain http:// leaves this machine only when asked; the CLI's files are private.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{CliUser, DEADLINE, Nginx, Redis, Server, ServerConfig, TempDir, TestCa, free_port, nginx_binary};
use enigma::sdk::PublicKey;

fn fingerprint(public_key: &str) -> String {
    PublicKey::from_base64url(public_key).unwrap().fingerprint()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Mallory, with write access to Redis, puts her key in Bob's user record. Alice's CLI, which
/// pinned Bob's key when she first wrote to him, refuses to seal to the new key and names both
/// fingerprints; nothing reaches Bob's inbox; after `enigma trust` it sends again.
#[test]
fn a_key_swapped_in_the_directory_is_refused_until_trusted() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis).with("ENIGMA__DIRECTORY__ENABLED", false);
    let server = Server::start(&config);
    let home = TempDir::new("pins");
    let url = server.url("");
    let alice = CliUser::new(home.path(), &url, "alice", &[]);
    let bob = CliUser::new(home.path(), &url, "bob", &[]);
    let mallory = CliUser::new(home.path(), &url, "mallory", &[]);
    alice.register();
    let (bob_key, bob_id) = bob.register();
    let (mallory_key, _) = mallory.register();

    alice.ok(&["send", &bob_id, "first: pins Bob's key"]);
    let lookup = alice.ok(&["lookup", &bob_id]);
    assert!(lookup.contains(&fingerprint(&bob_key)) && lookup.contains("pinned:      yes"), "{lookup}");

    let record = format!("{}user:{{{bob_id}}}", config.prefix);
    let inbox = format!("{}inbox:{{{bob_id}}}", config.prefix);
    assert_eq!(redis.cli(&["HGET", &record, "publicKey"]).unwrap().trim(), bob_key);
    redis.cli(&["HSET", &record, "publicKey", &mallory_key]).unwrap();
    let stored = redis.cli(&["XLEN", &inbox]).unwrap();

    let refused = alice.run(&["send", &bob_id, "second: for Bob's eyes only"]);
    assert_eq!(refused.code, 1, "the send is refused:\n{}", refused.stderr);
    assert!(refused.stderr.contains("CHANGED"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&fingerprint(&bob_key)), "names the pinned key: {}", refused.stderr);
    assert!(refused.stderr.contains(&fingerprint(&mallory_key)), "names the new key: {}", refused.stderr);
    assert!(refused.stderr.contains(&format!("enigma trust {bob_id}")), "{}", refused.stderr);
    assert_eq!(redis.cli(&["XLEN", &inbox]).unwrap(), stored, "nothing was sent");
    let lookup = alice.ok(&["lookup", &bob_id]);
    assert!(lookup.contains("THE KEY CHANGED"), "{lookup}");
    assert!(alice.run(&["send", &bob_id, "third"]).code == 1, "still refused: a refusal pins nothing");

    let trusted = alice.ok(&["trust", &bob_id]);
    assert!(trusted.contains(&fingerprint(&mallory_key)), "{trusted}");
    alice.ok(&["send", &bob_id, "after trust: sealed to the accepted key"]);
    assert_ne!(redis.cli(&["XLEN", &inbox]).unwrap(), stored);

    // The CLI's own files are private.
    for file in ["alice.key.state.json", "alice.key.pins.json"] {
        assert_eq!(mode(&home.path().join(file)), 0o600, "{file}");
    }
}

/// The CLI through nginx terminating TLS with a certificate of a test CA: with `--ca-file`
/// login, send and listen work over https/wss; without it the certificate is refused.
#[test]
fn the_cli_speaks_tls_through_nginx_with_a_private_ca() {
    let Some(binary) = nginx_binary() else {
        assert!(std::env::var_os("CI").is_none(), "nginx is required in CI");
        eprintln!("skipped: no nginx");
        return;
    };
    let ca = TestCa::new();
    let server = Server::start(&ServerConfig::memory());
    let nginx = Nginx::start_tls(&binary, &[server.addr], &ca.cert, &ca.key);
    let home = TempDir::new("tls");
    let url = nginx.https_url("localhost");
    let ca_file = ca.ca.display().to_string();
    let alice = CliUser::new(home.path(), &url, "alice", &["--ca-file", &ca_file]);
    let bob = CliUser::new(home.path(), &url, "bob", &["--ca-file", &ca_file]);
    alice.register();
    let (_, bob_id) = bob.register();
    alice.ok(&["send", &bob_id, "over TLS"]);
    let heard = bob.ok(&["listen", "--count", "1"]);
    assert!(heard.ends_with(": over TLS"), "{heard}");

    let untrusted = CliUser::new(home.path(), &url, "alice", &[]).run(&["whoami"]);
    assert!(untrusted.stdout.contains("protected:   unknown"), "{}", untrusted.stdout);
    let refused = CliUser::new(home.path(), &url, "alice", &[]).run(&["lookup", &bob_id]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.to_lowercase().contains("certificate"), "{}", refused.stderr);
}

/// Plain http:// to another machine is refused before any traffic, unless asked for.
#[test]
fn plain_http_leaves_this_machine_only_when_asked() {
    let home = TempDir::new("insecure");
    let far = CliUser::new(home.path(), "http://192.0.2.1:8000", "alice", &[]);
    far.ok(&["keygen"]);
    let refused = far.run(&["login"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--insecure-http"), "{}", refused.stderr);
    let asked = CliUser::new(home.path(), "http://192.0.2.1:8000", "alice", &["--insecure-http"]).run(&["whoami"]);
    // Accepted with the flag; whoami answers offline (no login there, so no request is made).
    assert!(asked.stdout.contains("server:      http://192.0.2.1:8000/"), "{}", asked.stdout);
    assert!(asked.stderr.contains("not logged in"), "{}", asked.stderr);
}

/// `server.metrics_public = false`: `/metrics` only on the metrics port, 404 on the public one.
#[tokio::test]
async fn metrics_stay_off_the_public_port_when_configured() {
    let port = free_port();
    let config = ServerConfig::memory()
        .with("ENIGMA__SERVER__METRICS_ADDR", format!("127.0.0.1:{port}"))
        .with("ENIGMA__SERVER__METRICS_PUBLIC", "false");
    let s = Server::start(&config);
    s.new_user().await;
    let (status, _) = s.get("/metrics").await;
    assert_eq!(status, 404, "not on the public port");
    let private = s.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(private.status(), 200);
    assert!(private.text().await.unwrap().contains("enigma_logins_total 1"));
}

/// A Redis password with an unencoded `/` (the URL then does not parse) never reaches stderr.
#[test]
fn a_redis_password_is_never_printed() {
    let password = format!("Pa/ss-{}-w0rd", std::process::id());
    for url in [format!("redis://:{password}@127.0.0.1:1/"), format!("rediss://enigma:{password}@127.0.0.1/0")] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_enigma-server"))
            .env_clear()
            .env("ENIGMA__SERVER__ADDR", "127.0.0.1:0")
            .env("ENIGMA__REDIS__URL", &url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the server did not refuse {url}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("redis.url"), "the error names the key: {stderr}");
        assert!(!stderr.contains("w0rd") && !stderr.contains("Pa/ss"), "the password leaked: {stderr}");
        assert!(stderr.contains("***@"), "the URL is shown redacted: {stderr}");
    }
}

/// The relay reaches Redis over TLS only (`rediss://`, its TLS port, a test CA), and messages
/// flow: logins stored, a message sent and received.
#[test]
fn the_relay_talks_to_redis_over_tls() {
    let ca = TestCa::new();
    let tls_port = free_port();
    let (cert, key, ca_file) =
        (ca.cert.display().to_string(), ca.key.display().to_string(), ca.ca.display().to_string());
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
    ]);
    let config = ServerConfig {
        redis_url: Some(format!("rediss://localhost:{tls_port}/")),
        prefix: format!("tls{}:", std::process::id()),
        ..Default::default()
    }
    .with("ENIGMA__REDIS__TLS_CA_FILE", &ca_file);
    let server = Server::start(&config);
    let home = TempDir::new("redis-tls");
    let alice = CliUser::new(home.path(), &server.url(""), "alice", &[]);
    let bob = CliUser::new(home.path(), &server.url(""), "bob", &[]);
    alice.register();
    let (_, bob_id) = bob.register();
    let record = format!("{}user:{{{bob_id}}}", config.prefix);
    assert_eq!(redis.cli(&["EXISTS", &record]).unwrap().trim(), "1", "stored in that Redis");
    alice.ok(&["send", &bob_id, "through rediss"]);
    assert!(bob.ok(&["listen", "--count", "1"]).ends_with(": through rediss"));
}
