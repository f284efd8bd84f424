//! The embedded engine keeps what it acknowledged: a server killed with SIGKILL right after its
//! receipts comes back (a new process on the same data directory) with every user, key,
//! protection, contact and receipted message, and with its limits as full as they were; what
//! was acknowledged does not come back. One data directory serves one process.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{Claimant, Server, ServerConfig, TempDir, Ws, expect_unauthorized, random_key};

/// Sends `payload`s from `from` without waiting, then reads one receipt per send (skipping
/// deliveries).
async fn send_all(ws: &mut Ws, from: &str, to: &str, payloads: &[String]) {
    for (n, payload) in payloads.iter().enumerate() {
        ws.send_json(json!({"from": from, "to": to, "payload": payload, "ref": format!("r{n}")})).await;
    }
    let mut n = 0;
    while n < payloads.len() {
        let answer = ws.recv_json().await;
        if answer.get("ref").is_some() {
            let expected = (Some(format!("r{n}")), Some("stored"));
            assert_eq!((answer["ref"].as_str().map(str::to_owned), answer["status"].as_str()), expected, "{answer}");
            n += 1;
        }
    }
}

/// Acknowledges `ids`, and returns once the server applied it (frames are handled in order:
/// the error to an empty acknowledgement comes after it).
async fn ack(ws: &mut Ws, ids: &[Value]) {
    ws.send_json(json!({ "ack": ids })).await;
    ws.send_json(json!({"ack": []})).await;
    loop {
        let frame = ws.recv_json().await;
        if frame["code"] == "invalid_frame" {
            return;
        }
    }
}

#[tokio::test]
async fn everything_receipted_survives_kill_9() {
    // A small strangers' pool: one stranger may have one message waiting, so a lost contact
    // list would refuse the 21st message below.
    let config = ServerConfig::embedded().with("ENIGMA__LIMITS__STRANGER_POOL", 8);
    let s = Server::start(&config);
    let alice = Claimant::login(&s).await;
    let token = alice.token().await; // alice is protected from now on
    let (bob_key, carol_key) = (random_key(), random_key());
    let (bob, carol) = (s.login(&bob_key).await, s.login(&carol_key).await);
    let alice_key = s.get(&format!("/connect/{}", alice.user)).await.1["publicKey"].clone();
    // Bob writes to carol: she is his contact.
    let mut b = s.connect_v1(&bob).await;
    assert_eq!(b.send_answered(&bob, &carol, "hello carol", "h").await["status"], "stored");
    b.close().await;
    let mut c = s.connect_v1(&carol).await;
    let payloads: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    send_all(&mut c, &carol, &bob, &payloads).await;
    s.kill();

    let s = Server::start(&config);
    assert_eq!(s.login(&bob_key).await, bob, "the same key, the same user");
    assert_eq!(s.login(&carol_key).await, carol);
    assert_eq!(s.get(&format!("/connect/{}", alice.user)).await.1["publicKey"], alice_key);
    // Protected: no socket without a token; the token issued before the restart still opens one.
    let mut refused = s.connect(&alice.user).await;
    expect_unauthorized(&mut refused).await;
    let headers = [("Authorization", format!("Bearer {token}")), ("Sec-WebSocket-Protocol", "enigma.v1".into())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = Ws::try_connect_with(&s.ws_url(&format!("/ws/{}", alice.user)), &headers).await.unwrap();
    assert_eq!(a.send_answered(&alice.user, &bob, "from alice", "a").await["status"], "stored");
    // Carol is still bob's contact: one more beside her twenty waiting.
    let mut c = s.connect_v1(&carol).await;
    assert_eq!(c.send_answered(&carol, &bob, "after", "x").await["status"], "stored");
    // Bob gets every receipted message once, in order, then what came after the restart.
    let mut b = s.connect_v1(&bob).await;
    let mut got = Vec::new();
    for _ in 0..22 {
        got.push(b.recv_json().await["payload"].as_str().unwrap().to_owned());
    }
    let mut expected = payloads.clone();
    expected.extend(["from alice".to_owned(), "after".to_owned()]);
    assert_eq!(got, expected);
}

#[tokio::test]
async fn acknowledged_and_delivered_messages_do_not_come_back() {
    let config = ServerConfig::embedded();
    let s = Server::start(&config);
    let (alice, bob, carol) = (s.new_user().await, s.new_user().await, s.new_user().await);
    let mut a = s.connect_v1(&alice).await;
    send_all(&mut a, &alice, &bob, &["m0".into(), "m1".into(), "m2".into()]).await;
    let mut b = s.connect_v1(&bob).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(b.recv_json().await["id"].clone());
    }
    ack(&mut b, &ids[..2]).await;
    s.kill();

    let s = Server::start(&config);
    let mut b = s.connect_v1(&bob).await;
    let first = b.recv_json().await;
    assert_eq!((first["payload"].as_str(), &first["id"]), (Some("m2"), &ids[2]), "only the unacknowledged one");
    ack(&mut b, &ids[2..]).await;
    // A specification client: what was written to its socket leaves its inbox, and a draining
    // server writes that down before it exits.
    let mut a = s.connect_v1(&alice).await;
    send_all(&mut a, &alice, &carol, &["c0".into(), "c1".into()]).await;
    let mut c = s.connect(&carol).await;
    assert_eq!(c.recv_json().await["payload"], "c0");
    assert_eq!(c.recv_json().await["payload"], "c1");
    assert!(s.terminate().success());

    let s = Server::start(&config);
    let mut a = s.connect_v1(&alice).await;
    send_all(&mut a, &alice, &bob, &["after".into()]).await;
    send_all(&mut a, &alice, &carol, &["after".into()]).await;
    assert_eq!(s.connect_v1(&bob).await.recv_json().await["payload"], "after");
    assert_eq!(s.connect(&carol).await.recv_json().await["payload"], "after");
}

#[tokio::test]
async fn limits_hold_across_a_restart() {
    let config = ServerConfig::embedded()
        .with("ENIGMA__LIMITS__INBOX_CAPACITY", 4)
        .with("ENIGMA__LIMITS__INBOX_SHARE", 3)
        .with("ENIGMA__LIMITS__MEMORY_MAX_BYTES", 256 * 1024);
    let s = Server::start(&config);
    let (alice, bob, carol) = (s.new_user().await, s.new_user().await, s.new_user().await);
    let mut daves = Vec::new();
    for _ in 0..8 {
        daves.push(s.new_user().await);
    }
    let (mut a, mut c) = (s.connect_v1(&alice).await, s.connect_v1(&carol).await);
    send_all(&mut a, &alice, &bob, &["a0".into(), "a1".into(), "a2".into()]).await;
    let over_share = a.send_answered(&alice, &bob, "a3", "x").await;
    assert!(over_share["error"].as_str().unwrap().contains("too many messages waiting"), "{over_share}");
    send_all(&mut c, &carol, &bob, &["c0".into()]).await;
    let full = c.send_answered(&carol, &bob, "c1", "x").await;
    assert!(full["error"].as_str().unwrap().contains("inbox is full"), "{full}");
    // The store's byte budget: 20 KB messages to eight recipients (room for 24 within carol's
    // shares) until it is full.
    let big = "p".repeat(20_000);
    let stored = c.fill(&carol, &daves, &big).await;
    assert!((8..13).contains(&stored), "{stored} of 20 KB in 256 KiB");
    // The one refused (it holds one or two of carol's).
    let dave = &daves[stored % daves.len()];
    assert_eq!(c.send_answered(&carol, dave, &big, "y").await["code"], "unavailable");
    s.kill();

    let s = Server::start(&config);
    let (mut a, mut c) = (s.connect_v1(&alice).await, s.connect_v1(&carol).await);
    assert_eq!(a.send_answered(&alice, &bob, "a3", "x").await["code"], "inbox_full", "still full");
    assert_eq!(c.send_answered(&carol, dave, &big, "y").await["code"], "unavailable", "the store still full");
    // Bob reads carol's message: room for one, but alice still has her share waiting.
    let mut b = s.connect_v1(&bob).await;
    let mut delivered = Vec::new();
    for _ in 0..4 {
        delivered.push(b.recv_json().await);
    }
    let carols: Vec<Value> =
        delivered.iter().filter(|d| d["from"] == carol.as_str()).map(|d| d["id"].clone()).collect();
    ack(&mut b, &carols).await;
    let over_share = a.send_answered(&alice, &bob, "a3", "x").await;
    assert!(over_share["error"].as_str().unwrap().contains("too many messages waiting"), "{over_share}");
    assert_eq!(c.send_answered(&carol, &bob, "c1", "x").await["status"], "stored");
    // Dave reads one: room for one more in the store, charged as before the restart.
    let mut d = s.connect_v1(dave).await;
    let first = d.recv_json().await["id"].clone();
    ack(&mut d, &[first]).await;
    assert_eq!(c.send_answered(&carol, dave, &big, "z").await["status"], "stored");
    assert_eq!(c.send_answered(&carol, dave, &big, "w").await["code"], "unavailable");
}

/// `enigma-server` with `env` (and no other variable), run until it exits: its exit code and
/// standard error.
fn run_with_env(env: &[(&str, &str)], dir: &std::path::Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_enigma-server"))
        .env_clear()
        .env("ENIGMA__SERVER__ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::null())
        .output()
        .expect("run enigma-server");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn one_data_directory_serves_one_process() {
    let config = ServerConfig::embedded();
    let first = Server::start(&config);
    let data_dir = config.data_dir().display().to_string();
    let elsewhere = TempDir::new("cwd");
    let (code, stderr) = run_with_env(&[("ENIGMA__DATA_DIR", &data_dir)], elsewhere.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    // The first one was not disturbed.
    let user = first.new_user().await;
    assert_eq!(first.get(&format!("/connect/{user}")).await.0, 200);
}

#[tokio::test]
async fn an_unusable_data_directory_is_a_clear_error() {
    let dir = TempDir::new("unusable");
    std::fs::write(dir.path().join("a-file"), "not a directory").unwrap();
    let (code, stderr) = run_with_env(&[("ENIGMA__DATA_DIR", "a-file/data")], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot create the data directory `a-file/data`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Starts `server`, waits for its first line (`listening on …`), and stops it.
fn listens_then_stops(server: &mut Command) {
    let mut child = server.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn enigma-server");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let listening = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening.starts_with("listening on "), "{listening:?}");
}

#[tokio::test]
async fn without_redis_the_default_keeps_its_data_in_the_working_directory() {
    let dir = TempDir::new("default");
    let mut server = Command::new(env!("CARGO_BIN_EXE_enigma-server"));
    listens_then_stops(server.env_clear().env("ENIGMA__SERVER__ADDR", "127.0.0.1:0").current_dir(dir.path()));
    assert!(dir.path().join("enigma-data/enigma.redb").is_file());
}

/// The data file holds the token signing key: under the usual umask (022) the directory is
/// still created 0700 and the file 0600.
#[cfg(unix)]
#[tokio::test]
async fn the_data_file_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("private");
    let mut server = Command::new("/bin/sh");
    server.args(["-c", "umask 022 && exec \"$0\"", env!("CARGO_BIN_EXE_enigma-server")]);
    listens_then_stops(server.env_clear().env("ENIGMA__SERVER__ADDR", "127.0.0.1:0").current_dir(dir.path()));
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let data = dir.path().join("enigma-data");
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&data.join("enigma.redb")), 0o600, "the data file");
}

#[tokio::test]
async fn a_damaged_data_file_is_a_clear_error() {
    let dir = TempDir::new("damaged");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("enigma.redb"), "not a database, but long enough to be mistaken for one".repeat(100))
        .unwrap();
    let (code, stderr) = run_with_env(&[("ENIGMA__DATA_DIR", "data")], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot open the data file `data/enigma.redb`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An answered challenge is single use across a restart: an attacker who captured Bob's answer
/// replays it to the restarted server (SIGKILL right after the answer was accepted) and gets no
/// token; the burnt challenge id lives in the data file.
#[tokio::test]
async fn an_answer_replayed_after_a_restart_is_refused() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let config = ServerConfig::embedded();
    let s = Server::start(&config);
    let bob = Claimant::login(&s).await;
    let post = |s: &Server, path: &str, body: Value| {
        let request = s.http.post(s.url(path)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, challenge) = post(&s, "/auth/challenge", json!({"userId": bob.user})).await;
    assert_eq!(code, 200, "{challenge}");
    let sealed = STANDARD.decode(challenge["sealed"].as_str().unwrap()).unwrap();
    let secret = bob.client.identity().open_challenge(&bob.user, "hpke-x25519", &sealed).unwrap();
    let answer = json!({"challenge": challenge["challenge"], "secret": STANDARD.encode(&secret)});
    let (code, token) = post(&s, "/auth/token", answer.clone()).await;
    assert_eq!(code, 200, "{token}");
    s.kill();

    let s = Server::start(&config);
    let (code, body) = post(&s, "/auth/token", answer).await;
    assert_eq!((code, body["code"].as_str()), (401, Some("unauthorized")), "the replay: {body}");
}
