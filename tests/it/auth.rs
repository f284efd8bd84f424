//! Only the key's owner: a user who proved possession of their registered key is protected,
//! and nobody who merely knows the user id (ids are public) can open their socket, take their
//! messages or send as them. Real servers, real Redis; tokens forged with the test's own key
//! differ from real ones in exactly one way each.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::harness::{
    Backend, Claimant, DEADLINE, Redis, Server, ServerConfig, TEST_KID, TEST_SECRET, TempDir, Ws, access_claims,
    expect_unauthorized, forge, random_key, test_token_keys, wait_until, ws_with_token,
};

const AUDIENCE: &str = "enigma-relay";
const RSA_PRIVATE_PEM: &str = include_str!("fixtures/rsa2048-test-private.pem");

both_engines!(with_cluster: hijack_of_a_protected_user_is_refused);

async fn post(server: &Server, path: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = server.http.post(server.url(path)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.json().await.unwrap_or(Value::Null))
}

async fn status_with(server: &Server, user: &str, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = server.http.get(server.url(&format!("/auth/status/{user}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.json().await.unwrap_or(Value::Null))
}

async fn registered_key(server: &Server, user: &str) -> String {
    server.get(&format!("/connect/{user}")).await.1["publicKey"].as_str().unwrap().to_owned()
}

/// Mallory knows Bob's id and tries every way in, on both socket paths; each is refused with
/// `unauthorized` + 4401, Bob's live socket is not displaced, and the friend's message reaches
/// Bob only.
async fn hijack_of_a_protected_user_is_refused(b: Backend) {
    let server = Server::start(&b.config().with("ENIGMA__AUTH__TOKEN_KEYS", test_token_keys()));
    let bob = Claimant::login(&server).await;
    let friend = Claimant::login(&server).await;
    let (bob_token, friend_token) = (bob.token().await, friend.token().await);
    let mut bob_ws = ws_with_token(&server, &format!("/ws/{}", bob.user), &bob_token).await;
    let mut friend_ws = ws_with_token(&server, &format!("/connect/{}", friend.user), &friend_token).await;

    let key = registered_key(&server, &bob.user).await;
    let mut expired = access_claims(&bob.user, &key, AUDIENCE);
    expired["exp"] = json!(expired["iat"].as_u64().unwrap() - 600);
    let bad_tokens = [
        ("not a token", "garbage".to_owned()),
        ("expired", forge(TEST_KID, &TEST_SECRET, &expired)),
        ("forged (another key)", forge(TEST_KID, &[9; 32], &access_claims(&bob.user, &key, AUDIENCE))),
        ("another user's", friend_token.clone()),
        ("another deployment's", forge(TEST_KID, &TEST_SECRET, &access_claims(&bob.user, &key, "elsewhere"))),
        ("earned with another key", forge(TEST_KID, &TEST_SECRET, &access_claims(&bob.user, "AAAA", AUDIENCE))),
    ];
    let refusals_before = server.metric("enigma_auth_refusals_total").await;
    let mut attempts = 0.0;
    for path in ["/connect/", "/ws/"] {
        let url = server.ws_url(&format!("{path}{}", bob.user));
        let mut mallory = Ws::connect(&url, None).await;
        expect_unauthorized(&mut mallory).await;
        let mut mallory = Ws::connect(&url, Some("enigma.v1")).await;
        expect_unauthorized(&mut mallory).await;
        for (what, token) in &bad_tokens {
            let mut mallory = ws_with_token(&server, &format!("{path}{}", bob.user), token).await;
            let frame = mallory.recv_json().await;
            assert_eq!(frame["code"], "unauthorized", "{what}: {frame}");
            assert_eq!(mallory.expect_close().await.0, 4401, "{what}");
        }
        let entry = format!("enigma.v1, enigma.bearer.{}", bad_tokens[2].1);
        let mut mallory = Ws::try_connect_with(&url, &[("Sec-WebSocket-Protocol", &entry)]).await.unwrap();
        expect_unauthorized(&mut mallory).await;
        let mut mallory = Ws::try_connect_with(&url, &[("Authorization", "Basic Ym9iOmJvYg==")]).await.unwrap();
        expect_unauthorized(&mut mallory).await;
        attempts += 4.0 + bad_tokens.len() as f64;
    }
    assert_eq!(server.metric("enigma_auth_refusals_total").await - refusals_before, attempts);

    // Bob's socket was never displaced: the friend's message reaches Bob, and Bob still sends.
    friend_ws.send_msg(&friend.user, &bob.user, "for bob only").await;
    let got = bob_ws.recv_json().await;
    assert_eq!((got["from"].as_str(), got["payload"].as_str()), (Some(friend.user.as_str()), Some("for bob only")));
    bob_ws.send_msg(&bob.user, &friend.user, "still me").await;
    assert_eq!(friend_ws.recv_json().await["payload"], "still me");

    // REST: the status is public; a bad token is a 401 with a Bearer challenge (RFC 6750).
    let (code, _, body) = status_with(&server, &bob.user, None).await;
    assert_eq!((code, &body["protected"], &body["authenticated"]), (200, &json!(true), &json!(false)));
    let (code, _, body) = status_with(&server, &bob.user, Some(&bob_token)).await;
    assert_eq!((code, &body["authenticated"]), (200, &json!(true)));
    for (what, token) in &bad_tokens {
        let (code, challenge, body) = status_with(&server, &bob.user, Some(token)).await;
        assert_eq!((code, body["code"].as_str()), (401, Some("unauthorized")), "{what}");
        assert_eq!(challenge.as_deref(), Some(r#"Bearer error="invalid_token""#), "{what}");
    }

    // A browser shows the token as a subprotocol entry next to `enigma.v1`; only `enigma.v1`
    // comes back. Bob's new socket replaces his old one, as any newer connection of his does.
    let entry = format!("enigma.v1, enigma.bearer.{bob_token}");
    let url = server.ws_url(&format!("/ws/{}", bob.user));
    let browser = Ws::try_connect_with(&url, &[("Sec-WebSocket-Protocol", &entry)]).await.unwrap();
    assert_eq!(browser.protocol.as_deref(), Some("enigma.v1"));
    assert_eq!(bob_ws.expect_close().await.0, 4409);
}

/// A challenge fetched on replica A is answered on B, a token issued on B opens a socket on A,
/// with no configured key (the deployment's generated one), and a replayed answer is refused.
async fn replicas_share_challenges_and_tokens(b: Backend) {
    let config = b.config();
    let (a, bb) = (Server::start(&config), Server::start(&config));
    let bob = Claimant::login(&a).await;
    let friend = Claimant::login(&bb).await;

    let (code, _, challenge) = post(&a, "/auth/challenge", json!({"userId": bob.user})).await;
    assert_eq!(code, 200, "{challenge}");
    assert_eq!(challenge["alg"], "hpke-x25519");
    let sealed = STANDARD.decode(challenge["sealed"].as_str().unwrap()).unwrap();
    let secret = bob.client.identity().open_challenge(&bob.user, "hpke-x25519", &sealed).unwrap();
    let answer = json!({"challenge": challenge["challenge"], "secret": STANDARD.encode(&secret)});
    let wrong = json!({"challenge": challenge["challenge"], "secret": STANDARD.encode([0u8; 32])});
    let (code, challenge_header, _) = post(&bb, "/auth/token", wrong).await;
    assert_eq!((code, challenge_header.is_some()), (401, true), "a wrong secret");
    let (code, _, token) = post(&bb, "/auth/token", answer.clone()).await;
    assert_eq!(code, 200, "{token}");
    let (code, header, body) = post(&a, "/auth/token", answer).await;
    assert_eq!((code, body["code"].as_str(), header.is_some()), (401, Some("unauthorized"), true), "a replay");
    let token = token["token"].as_str().unwrap();

    let mut bob_ws = ws_with_token(&a, &format!("/ws/{}", bob.user), token).await;
    let mut friend_ws = bb.connect(&friend.user).await;
    let mut mallory = bb.connect(&bob.user).await;
    expect_unauthorized(&mut mallory).await;
    let mut mallory = ws_with_token(&bb, &format!("/connect/{}", bob.user), "garbage").await;
    expect_unauthorized(&mut mallory).await;
    friend_ws.send_msg(&friend.user, &bob.user, "across replicas").await;
    assert_eq!(bob_ws.recv_json().await["payload"], "across replicas");
    // Both replicas know Bob is protected.
    for server in [&a, &bb] {
        assert_eq!(status_with(server, &bob.user, None).await.2["protected"], true);
    }
}

#[tokio::test]
async fn redis_replicas_share_challenges_and_tokens() {
    replicas_share_challenges_and_tokens(Backend::redis()).await;
}

#[tokio::test]
async fn cluster_replicas_share_challenges_and_tokens() {
    replicas_share_challenges_and_tokens(Backend::cluster()).await;
}

#[tokio::test]
async fn sentinel_replicas_share_challenges_and_tokens() {
    replicas_share_challenges_and_tokens(Backend::sentinel()).await;
}

/// The claim is stored with the user: after Redis restarts (from its saved data) the user is
/// still protected, and a token issued before still opens the socket.
#[tokio::test]
async fn claim_survives_a_redis_restart() {
    let mut redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let server = Server::start(&config);
    let bob = Claimant::login(&server).await;
    let token = bob.token().await;
    server.kill();
    redis.cli(&["SAVE"]).unwrap();
    redis.crash();
    redis.restart();
    let server = Server::start(&config);
    assert_eq!(status_with(&server, &bob.user, None).await.2["protected"], true);
    let mut mallory = server.connect(&bob.user).await;
    expect_unauthorized(&mut mallory).await;
    let mut bob_ws = ws_with_token(&server, &format!("/connect/{}", bob.user), &token).await;
    let friend = server.new_user().await;
    let mut friend_ws = server.connect(&friend).await;
    friend_ws.send_msg(&friend, &bob.user, "after the restart").await;
    assert_eq!(bob_ws.recv_json().await["payload"], "after the restart");
}

/// `required`: no socket without a token, claimed or not; a token opens it.
#[tokio::test]
async fn required_mode_refuses_every_unauthenticated_socket() {
    let server = Server::start(&ServerConfig::memory().with("ENIGMA__AUTH__MODE", "required"));
    let spec_user = server.login(&random_key()).await;
    for path in ["/connect/", "/ws/"] {
        let mut ws = Ws::connect(&server.ws_url(&format!("{path}{spec_user}")), None).await;
        expect_unauthorized(&mut ws).await;
    }
    // A spec client's key cannot be claimed: said so, not a server error.
    let (code, _, body) = post(&server, "/auth/challenge", json!({"userId": spec_user})).await;
    assert_eq!((code, body["code"].as_str()), (422, Some("unsupported_key")), "{body}");
    let (code, _, _) = post(&server, "/auth/challenge", json!({"userId": "nobody"})).await;
    assert_eq!(code, 404);
    let (code, _, _) = post(&server, "/auth/challenge", json!({"user": 1})).await;
    assert_eq!(code, 400);

    let bob = Claimant::login(&server).await;
    let mut ws = Ws::connect(&server.ws_url(&format!("/ws/{}", bob.user)), Some("enigma.v1")).await;
    expect_unauthorized(&mut ws).await;
    let token = bob.token().await;
    let mut bob_ws = ws_with_token(&server, &format!("/ws/{}", bob.user), &token).await;
    bob_ws.send_msg(&bob.user, &bob.user, "to myself").await;
    assert_eq!(bob_ws.recv_json().await["payload"], "to myself");
    assert_eq!(status_with(&server, &bob.user, None).await.2["mode"], "required");
}

/// The protocol's web client registers base64 of an RSA PEM; whoever holds the private key
/// opens the RSA-OAEP-sealed challenge and is protected from then on.
#[tokio::test]
async fn an_rsa_key_in_the_web_clients_encoding_can_be_claimed() {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::PrivateKey::from_pkcs8_pem(RSA_PRIVATE_PEM).unwrap();
    let pem = private.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
    let registered = STANDARD.encode(pem.as_bytes());
    let server = Server::start(&ServerConfig::memory());
    let user = server.login(&registered).await;

    let (code, _, challenge) = post(&server, "/auth/challenge", json!({"userId": user})).await;
    assert_eq!((code, challenge["alg"].as_str()), (200, Some("rsa-oaep-sha256")), "{challenge}");
    let sealed = STANDARD.decode(challenge["sealed"].as_str().unwrap()).unwrap();
    let secret = private.oaep_decrypt::<rsa::sha2::Sha256>(&sealed).unwrap();
    let answer = json!({"challenge": challenge["challenge"], "secret": STANDARD.encode(&secret)});
    let (code, _, token) = post(&server, "/auth/token", answer).await;
    assert_eq!(code, 200, "{token}");

    let mut mallory = server.connect(&user).await;
    expect_unauthorized(&mut mallory).await;
    let mut ws = ws_with_token(&server, &format!("/ws/{user}"), token["token"].as_str().unwrap()).await;
    ws.send_msg(&user, &user, "rsa").await;
    assert_eq!(ws.recv_json().await["payload"], "rsa");
}

/// A process killed when dropped, its stdout lines readable with a deadline.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(command: &mut Command) -> Proc {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc { child, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(DEADLINE).expect("a line from the CLI")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newcomer's scenario with the project's CLI: Bob registers and listens, Mallory (who
/// knows only Bob's id) is refused, Bob keeps receiving, `whoami` says Bob is protected.
#[tokio::test]
async fn newcomer_scenario_with_the_cli() {
    let dir = TempDir::new("auth-cli");
    let server = Server::start(&ServerConfig::memory());
    let cli = |key: &str, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_enigma"));
        command
            .env_clear()
            .env("HOME", dir.path())
            .args(["--server", &server.url(""), "--key"])
            .arg(dir.path().join(key))
            .args(args);
        command
    };
    let run = |key: &str, args: &[&str]| {
        let output = cli(key, args).output().unwrap();
        assert!(output.status.success(), "enigma {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    run("bob.key", &["keygen"]);
    let bob = run("bob.key", &["login"]);
    run("alice.key", &["keygen"]);
    run("alice.key", &["login"]);
    assert!(run("bob.key", &["whoami"]).contains("protected:   no"));

    let listen = Proc::spawn(&mut cli("bob.key", &["listen", "--json"]));
    let protected = || async { status_with(&server, &bob, None).await.2["protected"] == true };
    wait_until("bob's listen to claim his id", DEADLINE, protected).await;

    let mut mallory = server.connect(&bob).await;
    expect_unauthorized(&mut mallory).await;
    let mut mallory = Ws::connect(&server.ws_url(&format!("/ws/{bob}")), Some("enigma.v1")).await;
    expect_unauthorized(&mut mallory).await;

    run("alice.key", &["send", &bob, "hi bob, it's alice"]);
    let line: Value = serde_json::from_str(&listen.line()).unwrap();
    assert_eq!(line["text"], "hi bob, it's alice");
    assert!(run("bob.key", &["whoami"]).contains("protected:   yes"));
}
