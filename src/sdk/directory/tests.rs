//! The client's directory checks against a server that answers from akd's in-memory directory
//! (`enigma_verify::testing`), honest or not: `GET /connect` and `GET /directory/*` only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use enigma_verify::testing::TestDirectory;
use enigma_verify::wire::SignedRoot;
use tokio::sync::Mutex;

use super::*;
use crate::sdk::{ClientOptions, Identity, Pins};

/// What the fake relay holds and how it misbehaves.
struct Relay {
    directory: TestDirectory,
    /// What `GET /connect` answers (may differ from the directory: a lying relay).
    keys: HashMap<String, String>,
    /// Answer `/directory/*` at all (a specification-only server does not).
    has_directory: bool,
    /// The most epochs one audit answer covers.
    audit_step: u64,
    /// Publishes `(user, key)` when `user` is looked up for the `n`-th time.
    publish_on_lookup: Option<(String, String, u32)>,
    lookups: u32,
    audits: Vec<(u64, u64)>,
    /// Flips a byte of every audit proof.
    tamper_audits: bool,
    /// Serves the latest root re-signed under this VRF key (the same tree hash).
    root_vrf: Option<[u8; 32]>,
}

type Shared = Arc<Mutex<Relay>>;

fn found<T: serde::Serialize>(body: &T) -> Response {
    axum::Json(serde_json::to_value(body).expect("plain struct")).into_response()
}

fn missing() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": "not found", "code": "not_found"}))).into_response()
}

async fn connect(State(relay): State<Shared>, Path(user): Path<String>) -> Response {
    match relay.lock().await.keys.get(&user) {
        Some(key) => found(&serde_json::json!({"userId": user, "user": user, "publicKey": key})),
        None => missing(),
    }
}

async fn root(State(relay): State<Shared>) -> Response {
    let relay = relay.lock().await;
    if !relay.has_directory {
        return missing();
    }
    let latest = relay.directory.latest();
    match relay.root_vrf {
        Some(vrf) => {
            let hash: [u8; 32] = hex::decode(&latest.root_hash).unwrap().try_into().unwrap();
            let signing = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
            found(&enigma_verify::testing::sign_root(&signing, "split", latest.epoch, &hash, &vrf))
        }
        None => found(&latest),
    }
}

async fn lookup(State(relay): State<Shared>, Path(user): Path<String>) -> Response {
    let mut relay = relay.lock().await;
    if !relay.has_directory {
        return missing();
    }
    relay.lookups += 1;
    if let Some((who, key, n)) = relay.publish_on_lookup.clone()
        && who == user
        && relay.lookups == n
    {
        relay.directory.publish(&[(&who, &key)]).await;
    }
    match relay.directory.lookup(&user).await {
        Some(answer) => found(&answer),
        None => missing(),
    }
}

async fn history(State(relay): State<Shared>, Path(user): Path<String>) -> Response {
    let relay = relay.lock().await;
    match relay.directory.history(&user).await {
        Some(answer) if relay.has_directory => found(&answer),
        _ => missing(),
    }
}

async fn audit(State(relay): State<Shared>, Path((from, to)): Path<(u64, u64)>) -> Response {
    let mut relay = relay.lock().await;
    relay.audits.push((from, to));
    let to = to.min(from + relay.audit_step);
    let mut answer = relay.directory.audit(from, to).await;
    if relay.tamper_audits {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut bytes = engine.decode(&answer.proof).expect("own encoding");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        answer.proof = engine.encode(bytes);
    }
    found(&answer)
}

/// A fake relay on a free port; the task ends with the test's runtime.
async fn serve(relay: Relay) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(relay));
    let app = Router::new()
        .route("/connect/{user}", get(connect))
        .route("/directory/root", get(root))
        .route("/directory/lookup/{user}", get(lookup))
        .route("/directory/history/{user}", get(history))
        .route("/directory/audit/{from}/{to}", get(audit))
        .fallback(|| async { missing() })
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

fn relay(directory: TestDirectory, keys: &[(&str, &str)]) -> Relay {
    Relay {
        directory,
        keys: keys.iter().map(|(u, k)| (u.to_string(), k.to_string())).collect(),
        has_directory: true,
        audit_step: 1000,
        publish_on_lookup: None,
        lookups: 0,
        audits: Vec::new(),
        tamper_audits: false,
        root_vrf: None,
    }
}

/// A private directory for one test's pin file.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("enigma-directory-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    fn pins(&self) -> Arc<Pins> {
        Arc::new(Pins::open(&self.0.join("id.key.pins.json")).expect("a fresh pin file"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client(url: &str, identity: Identity, pins: Option<Arc<Pins>>, directory: DirectoryPolicy) -> Client {
    let options =
        ClientOptions { pins, directory, publish_wait: Some(Duration::from_millis(600)), ..ClientOptions::default() };
    Client::with_options(url, identity, options).expect("a loopback URL")
}

fn key() -> String {
    Identity::generate().public_key().to_base64url()
}

#[tokio::test]
async fn a_contact_key_is_proven_and_the_root_is_kept_across_runs() {
    let (bob, carol) = (key(), key());
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("bob", &bob)]).await;
    directory.publish(&[("carol", &carol)]).await;
    let (url, relay) = serve(relay(directory, &[("bob", &bob), ("carol", &carol)])).await;
    let scratch = Scratch::new("kept");

    let first = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify);
    assert_eq!(first.lookup("bob").await.unwrap().to_base64url(), bob);
    assert_eq!(first.directory_status().await, DirectoryStatus::Verified { epoch: 2, signer_changed: None });
    assert_eq!(scratch.pins().root(first.server().as_str()).unwrap().map(|r| r.epoch), Some(2));
    assert!(relay.lock().await.audits.is_empty(), "the first root is taken on its signature");

    // The directory moves on; the next run starts from the kept root and audits its way.
    for epoch in 3..=5 {
        relay.lock().await.directory.publish(&[(&format!("user-{epoch}"), &key())]).await;
    }
    let second = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify);
    match second.prove_key("carol", &carol).await.unwrap() {
        KeyProof::Proven(proven) => assert_eq!((proven.version, proven.epoch), (1, 5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.lock().await.audits, [(2, 5)]);
    assert_eq!(scratch.pins().root(second.server().as_str()).unwrap().map(|r| r.epoch), Some(5));
}

/// The relay rotated its signing key (every root re-signed by the new one): a client that kept a
/// root signed by the old key follows along the chain — in a lookup and in an audit — and its
/// status says the signer changed; the pins file keeps the root under the new signer.
#[tokio::test]
async fn after_a_signing_key_rotation_the_client_follows_the_chain_and_says_so() {
    let bob = key();
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("bob", &bob)]).await;
    let old = directory.signing_key();
    let (url, relay) = serve(relay(directory, &[("bob", &bob)])).await;
    let (looks, audits) = (Scratch::new("rotated-lookup"), Scratch::new("rotated-audit"));
    for scratch in [&looks, &audits] {
        let client = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify);
        client.lookup("bob").await.unwrap();
    }
    {
        let mut relay = relay.lock().await;
        relay.directory.publish(&[("carol", &key())]).await;
        relay.directory.rotate(ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]), "k2");
    }
    let new = relay.lock().await.directory.signing_key();
    let changed = |status: DirectoryStatus| match status {
        DirectoryStatus::Verified { signer_changed: Some(change), .. } => (change.from.key, change.to.key),
        other => panic!("{other:?}"),
    };

    let looking = client(&url, Identity::generate(), Some(looks.pins()), DirectoryPolicy::Verify);
    looking.lookup("bob").await.unwrap();
    assert_eq!(changed(looking.directory_status().await), (old, new));
    assert_eq!(relay.lock().await.audits, [(1, 2)], "taken through the append-only proof");
    assert_eq!(looks.pins().root(looking.server().as_str()).unwrap().unwrap().key_id, "k2");

    let auditing = client(&url, Identity::generate(), Some(audits.pins()), DirectoryPolicy::Verify);
    auditing.audit_directory(&[], |_, _| {}).await.unwrap();
    assert_eq!(changed(auditing.directory_status().await), (old, new));
    assert_eq!(audits.pins().root(auditing.server().as_str()).unwrap().unwrap().key_id, "k2");
    // Rotated back, with no new epoch: the kept root re-signed is kept under its new signer, so
    // the next run has nothing to say.
    relay.lock().await.directory.rotate(ed25519_dalek::SigningKey::from_bytes(&[0x5e; 32]), "test-1");
    let back = client(&url, Identity::generate(), Some(looks.pins()), DirectoryPolicy::Verify);
    back.lookup("bob").await.unwrap();
    assert_eq!(changed(back.directory_status().await), (new, old));
    assert_eq!(looks.pins().root(back.server().as_str()).unwrap().unwrap().key_id, "test-1");
    let next = client(&url, Identity::generate(), Some(looks.pins()), DirectoryPolicy::Verify);
    next.lookup("bob").await.unwrap();
    assert_eq!(next.directory_status().await, DirectoryStatus::Verified { epoch: 2, signer_changed: None });
}

#[tokio::test]
async fn a_key_the_directory_does_not_prove_is_refused() {
    let (bob, mallory) = (key(), key());
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("bob", &bob)]).await;
    // `/connect` hands out Mallory's key for Bob; the directory proves Bob's.
    let (url, _relay) = serve(relay(directory, &[("bob", &mallory)])).await;
    let client = client(&url, Identity::generate(), None, DirectoryPolicy::Verify);
    let error = client.lookup("bob").await.unwrap_err();
    assert!(matches!(error, Error::Directory(VerifyError::KeyDiffers { .. })), "{error}");
    let error = client.seal("me", "bob", &crate::sdk::Content::new("hi")).await.unwrap_err();
    assert!(error.to_string().contains("nothing is sealed to a key the directory does not prove"), "{error}");
    // A message from Bob is refused unopened (not retried forever as if the key were unreachable).
    let refused = client.open("bob", "me", "irrelevant").await.unwrap().unwrap_err();
    assert!(matches!(refused, crate::sdk::OpenError::SenderKeyUnproven(_)), "{refused}");
}

#[tokio::test]
async fn a_user_not_yet_published_is_waited_for_within_a_bound() {
    let (alice, bob) = (key(), key());
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("alice", &alice)]).await;
    let mut fake = relay(directory, &[("alice", &alice), ("bob", &bob)]);
    // Bob is published while the client waits (at its second lookup).
    fake.publish_on_lookup = Some(("bob".into(), bob.clone(), 2));
    let (url, relay) = serve(fake).await;
    let client = client(&url, Identity::generate(), None, DirectoryPolicy::Verify);
    assert_eq!(client.lookup("bob").await.unwrap().to_base64url(), bob);
    assert_eq!(relay.lock().await.lookups, 2);

    // Carol never is: refused once the wait is over.
    let carol = key();
    relay.lock().await.keys.insert("carol".into(), carol);
    let started = std::time::Instant::now();
    let error = client.lookup("carol").await.unwrap_err();
    assert!(matches!(error, Error::NotPublished { .. }), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_rolled_back_or_forked_directory_is_refused() {
    let bob = key();
    let mut honest = TestDirectory::new().await;
    for epoch in 1..=3 {
        honest.publish(&[(&format!("user-{epoch}"), &key())]).await;
    }
    honest.publish(&[("bob", &bob)]).await;
    let (url, relay) = serve(relay(honest, &[("bob", &bob)])).await;
    let scratch = Scratch::new("rollback");
    client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify).lookup("bob").await.unwrap();

    // The relay now serves an older state (epoch 2, Bob not yet in it... and an epoch-2 Bob).
    let mut older = TestDirectory::new().await;
    older.publish(&[("user-1", &key())]).await;
    older.publish(&[("bob", &bob)]).await;
    relay.lock().await.directory = older;
    let error = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify)
        .lookup("bob")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Directory(VerifyError::Rollback { seen: 4, presented: 2, .. })), "{error}");

    // Or another history with as many epochs: a fork.
    let mut forked = TestDirectory::new().await;
    for epoch in 1..=3 {
        forked.publish(&[(&format!("other-{epoch}"), &key())]).await;
    }
    forked.publish(&[("bob", &bob)]).await;
    relay.lock().await.directory = forked;
    let error = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify)
        .lookup("bob")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Directory(VerifyError::Fork { epoch: 4, .. })), "{error}");
    assert_eq!(scratch.pins().root(&format!("{url}/")).unwrap().map(|r| r.epoch), Some(4), "the kept root stays");
}

#[tokio::test]
async fn a_server_without_a_directory_falls_back_to_pins_unless_one_is_required() {
    let bob = key();
    let mut fake = relay(TestDirectory::new().await, &[("bob", &bob)]);
    fake.has_directory = false;
    let (url, _relay) = serve(fake).await;
    let scratch = Scratch::new("absent");
    let client_ = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify);
    assert_eq!(client_.directory_status().await, DirectoryStatus::Unknown);
    assert_eq!(client_.lookup("bob").await.unwrap().to_base64url(), bob);
    assert_eq!(client_.directory_status().await, DirectoryStatus::Absent);
    assert!(client_.pin("bob").unwrap().is_some(), "pinned as before");

    let strict = client(&url, Identity::generate(), None, DirectoryPolicy::Require);
    let error = strict.lookup("bob").await.unwrap_err();
    assert!(matches!(error, Error::NoDirectory { .. }), "{error}");
}

#[tokio::test]
async fn the_owner_is_told_when_the_directory_shows_another_key_for_them() {
    let me = Identity::generate();
    let mine = me.public_key().to_base64url();
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("me", &mine)]).await;
    let (url, relay) = serve(relay(directory, &[("me", &mine)])).await;
    let client = client(&url, me, None, DirectoryPolicy::Verify);
    let versions = client.check_own_history("me").await.unwrap().unwrap();
    assert_eq!(versions.len(), 1);

    let impostor = Identity::generate().public_key().clone();
    relay.lock().await.directory.publish(&[("me", &impostor.to_base64url())]).await;
    let error = client.check_own_history("me").await.unwrap_err();
    let Error::AnotherKeyForYou { keys, .. } = &error else { panic!("{error}") };
    assert_eq!(keys.len(), 1);
    assert!(keys[0].contains(&impostor.fingerprint()), "{error}");
    assert!(error.to_string().contains("the directory shows another key for you"), "{error}");
}

#[tokio::test]
async fn the_whole_history_is_audited_in_the_ranges_the_relay_answers() {
    let mut directory = TestDirectory::new().await;
    for epoch in 1..=6 {
        directory.publish(&[(&format!("user-{epoch}"), &key())]).await;
    }
    let mut fake = relay(directory, &[]);
    fake.audit_step = 2;
    let (url, relay) = serve(fake).await;
    let scratch = Scratch::new("audit");
    let client_ = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify);
    let mut seen = Vec::new();
    let summary = client_.audit_directory(&[], |epoch, of| seen.push((epoch, of))).await.unwrap();
    // One user a step: five leaves added after epoch 1.
    assert_eq!((summary.epochs, summary.answers, summary.leaves), (6, 3, 5));
    assert_eq!(seen, [(3, 6), (5, 6), (6, 6)]);
    assert_eq!(relay.lock().await.audits, [(1, 6), (3, 6), (5, 6)]);
    assert_eq!(scratch.pins().root(client_.server().as_str()).unwrap().map(|r| r.epoch), Some(6));

    relay.lock().await.tamper_audits = true;
    let error = client_.audit_directory(&[], |_, _| {}).await.unwrap_err();
    assert!(matches!(error, Error::Directory(_)), "{error}");
}

/// Two clients compare what they were shown: the root one audit printed (`EPOCH:HASH:VRF`), given to
/// another client's audit, is on that client's audited chain; a root of a diverging directory at
/// the same epoch is a fork named with both hashes, a root beyond the newest epoch a rollback, and
/// a refused audit keeps nothing.
#[tokio::test]
async fn roots_given_to_compare_with_must_be_on_the_audited_chain() {
    let mut directory = TestDirectory::new().await;
    let mut diverging = TestDirectory::new().await;
    for epoch in 1..=5 {
        directory.publish(&[(&format!("user-{epoch}"), &key())]).await;
        diverging.publish(&[(&format!("other-{epoch}"), &key())]).await;
    }
    let mut fake = relay(directory, &[]);
    fake.audit_step = 2;
    let (url, relay) = serve(fake).await;
    let (alice, carol) = (Scratch::new("given-alice"), Scratch::new("given-carol"));
    let alices = client(&url, Identity::generate(), Some(alice.pins()), DirectoryPolicy::Verify);
    let printed = alices.audit_directory(&[], |_, _| {}).await.unwrap().kept;
    assert_eq!(printed.to_string().parse::<EpochRoot>().unwrap(), printed, "printed as it is read back");

    // Carol, a client of her own, compares Alice's root and an earlier one of the same chain.
    let carols = client(&url, Identity::generate(), Some(carol.pins()), DirectoryPolicy::Verify);
    let first = carols.audit_directory(&[], |_, _| {}).await.unwrap();
    let third: EpochRoot = format!("3:{}:{}", relay_hash(&relay, 3).await, printed.vrf_hex()).parse().unwrap();
    let summary = carols.audit_directory(&[printed, third, printed], |_, _| {}).await.unwrap();
    assert_eq!(summary.compared, [third, printed]);
    assert_eq!(summary.kept, first.kept);

    // A root of another directory at epoch 3 (and at the newest epoch) is a fork, for a client that
    // keeps no root too; nothing is kept.
    let fresh = Scratch::new("given-fresh");
    let freshs = client(&url, Identity::generate(), Some(fresh.pins()), DirectoryPolicy::Verify);
    for epoch in [3, 5] {
        let other: EpochRoot =
            format!("{epoch}:{}:{}", diverging.root(epoch).root_hash, hex::encode(diverging.vrf_public_key()))
                .parse()
                .unwrap();
        let error = freshs.audit_directory(&[printed, other], |_, _| {}).await.unwrap_err();
        let Error::Directory(VerifyError::Fork { epoch: forked, seen, presented, seen_in }) = &error else {
            panic!("{error}")
        };
        assert_eq!((*forked, seen_in), (epoch, &SeenIn::GivenRoot), "{error}");
        assert_eq!((seen, presented), (&other.hash_hex(), &relay_hash(&relay, epoch).await), "{error}");
        assert!(error.to_string().contains(&format!("for epoch {epoch}")), "{error}");
    }
    // Beyond the newest epoch: rolled back, or another server's root.
    let ahead: EpochRoot = format!("9:{}:{}", printed.hash_hex(), printed.vrf_hex()).parse().unwrap();
    let error = freshs.audit_directory(&[ahead], |_, _| {}).await.unwrap_err();
    assert!(
        matches!(error, Error::Directory(VerifyError::Rollback { seen: 9, presented: 5, seen_in: SeenIn::GivenRoot })),
        "{error}"
    );
    // The same epoch and hash under another VRF key: the same tree read with other labels, so
    // another view of who has which key — refused too.
    let other_vrf = EpochRoot::new(printed.epoch(), *printed.hash(), [7; 32]).unwrap();
    let error = freshs.audit_directory(&[other_vrf], |_, _| {}).await.unwrap_err();
    assert!(
        matches!(error, Error::Directory(VerifyError::VrfKeyChanged { epoch }) if epoch == printed.epoch()),
        "{error}"
    );
    assert_eq!(fresh.pins().root(freshs.server().as_str()).unwrap(), None, "a refused audit keeps nothing");
}

/// A relay that serves a client's kept root's tree under another VRF key: the root hash does not
/// cover the VRF key, so without a check an audit from epoch 1 would take the other key's view
/// and keep it (its lookups then find other labels in the same tree).
#[tokio::test]
async fn an_audit_refuses_the_kept_roots_tree_under_another_vrf_key() {
    let mut directory = TestDirectory::new().await;
    for epoch in 1..=3 {
        directory.publish(&[(&format!("user-{epoch}"), &key())]).await;
    }
    let (url, relay) = serve(relay(directory, &[])).await;
    let scratch = Scratch::new("vrf-split");
    let alices = client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify);
    let kept = alices.audit_directory(&[], |_, _| {}).await.unwrap().kept;
    relay.lock().await.root_vrf = Some([7; 32]);
    let error = alices.audit_directory(&[], |_, _| {}).await.unwrap_err();
    assert!(matches!(error, Error::Directory(VerifyError::VrfKeyChanged { .. })), "{error}");
    let still = scratch.pins().root(alices.server().as_str()).unwrap().expect("the kept root");
    assert_eq!(EpochRoot::from(&verify_root(&still, &Signers::FirstSeen).unwrap()), kept, "the kept root stays");
}

async fn relay_hash(relay: &Shared, epoch: u64) -> String {
    relay.lock().await.directory.root(epoch).root_hash
}

#[test]
fn an_epoch_root_is_read_as_enigma_audit_prints_it() {
    let hash = "9F2C".repeat(16);
    let vrf = "41D0".repeat(16);
    let root: EpochRoot = format!(" 12:{hash}:{vrf} ").parse().unwrap();
    assert_eq!((root.epoch(), root.to_string()), (12, format!("12:{}:{}", hash.to_lowercase(), vrf.to_lowercase())));
    for bad in [
        "",
        "12",
        &hash,
        &format!("12:{hash}"),
        &format!("0:{hash}:{vrf}"),
        &format!("x:{hash}:{vrf}"),
        &format!("12:9f2c:{vrf}"),
        &format!("12:{hash}:41d0"),
        &format!("12:{hash}00:{vrf}"),
        &format!("-1:{hash}:{vrf}"),
        &format!("12:{hash}:{vrf}:{vrf}"),
    ] {
        let error = bad.parse::<EpochRoot>().unwrap_err();
        assert!(error.to_string().contains("expected EPOCH:HASH"), "{bad:?}: {error}");
    }
}

#[tokio::test]
async fn a_kept_root_that_does_not_verify_is_an_error_not_a_fresh_start() {
    let bob = key();
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("bob", &bob)]).await;
    let (url, relay) = serve(relay(directory, &[("bob", &bob)])).await;
    let scratch = Scratch::new("damaged");
    let pins = scratch.pins();
    let mut root: SignedRoot = relay.lock().await.directory.latest();
    root.epoch = 1000; // the signature no longer covers it
    pins.keep_root(&format!("{url}/"), &root).unwrap();
    let error =
        client(&url, Identity::generate(), Some(pins), DirectoryPolicy::Verify).lookup("bob").await.unwrap_err();
    assert!(matches!(error, Error::PinFile { .. }), "{error}");
}

#[tokio::test]
async fn a_server_that_had_a_directory_cannot_withdraw_it_silently() {
    let (me, bob, carol) = (Identity::generate(), key(), key());
    let mine = me.public_key().to_base64url();
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("me", &mine), ("bob", &bob)]).await;
    let (url, relay) = serve(relay(directory, &[("me", &mine), ("bob", &bob), ("carol", &carol)])).await;
    let scratch = Scratch::new("withdrawn");
    client(&url, Identity::generate(), Some(scratch.pins()), DirectoryPolicy::Verify).lookup("bob").await.unwrap();

    // The server now answers a plain 404 at /directory/root, as if it never had a directory.
    relay.lock().await.has_directory = false;
    let next = client(&url, me, Some(scratch.pins()), DirectoryPolicy::Verify);
    let error = next.prove_key("carol", &carol).await.unwrap_err();
    assert!(matches!(error, Error::DirectoryWithdrawn { epoch: 1, .. }), "{error}");
    assert!(error.to_string().contains("had a key directory (epoch 1) and now says it has none"), "{error}");
    let error = next.check_own_history("me").await.unwrap_err();
    assert!(matches!(error, Error::DirectoryWithdrawn { .. }), "{error}");
    assert!(next.pin("carol").unwrap().is_none(), "Carol's unproven key is not pinned");
    assert_ne!(next.directory_status().await, DirectoryStatus::Absent);
    assert_eq!(scratch.pins().root(&format!("{url}/")).unwrap().map(|r| r.epoch), Some(1), "the kept root stays");

    // Within one run too: a client that verified the directory does not fall back either.
    let same = client(&url, Identity::generate(), None, DirectoryPolicy::Verify);
    relay.lock().await.has_directory = true;
    same.lookup("bob").await.unwrap();
    relay.lock().await.has_directory = false;
    let error = same.lookup("carol").await.unwrap_err();
    assert!(!matches!(error, Error::NoDirectory { .. }) && error.to_string().contains("nothing"), "{error}");
}

#[tokio::test]
async fn a_lookup_does_not_wait_behind_another_users_publish_wait() {
    let (bob, carol) = (key(), key());
    let mut directory = TestDirectory::new().await;
    directory.publish(&[("bob", &bob)]).await;
    let (url, _relay) = serve(relay(directory, &[("bob", &bob)])).await;
    let client = client(&url, Identity::generate(), None, DirectoryPolicy::Verify);
    // Carol is never published: her lookup waits the whole 600 ms. Polled first, it takes the
    // directory first; Bob's, asked meanwhile, must not queue behind her wait.
    let finished = |proof: Result<KeyProof, Error>| (proof, std::time::Instant::now());
    let ((carol_proof, carol_done), (bob_proof, bob_done)) =
        tokio::join!(async { finished(client.prove_key("carol", &carol).await) }, async {
            finished(client.prove_key("bob", &bob).await)
        },);
    assert!(matches!(carol_proof, Err(Error::NotPublished { .. })), "{carol_proof:?}");
    assert!(matches!(bob_proof, Ok(KeyProof::Proven(_))), "{bob_proof:?}");
    assert!(bob_done < carol_done, "Bob's lookup waited for Carol's to give up");
}
