//! The verifiable key directory, checked as a client checks it: a registration becomes provable
//! at the next epoch (its lookup proof verifies against a root whose Ed25519 signature
//! verifies), every epoch is an append-only step from the one before (akd's auditor), and
//! neither a publisher's death (two replicas on one Redis), a SIGKILL of the embedded engine nor
//! a Redis failover to a replica that lagged changes a published root. Checks are akd's own
//! verifiers and ed25519-dalek, nothing re-implemented.

use std::time::Duration;

use akd_core::AkdLabel;
use akd_core::verify::history::HistoryParams;
use akd_core::verify::{HistoryVerificationParams, key_history_verify, lookup_verify};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use enigma_verify::Config;
use enigma_verify::proof::{decode_audit, decode_history, decode_lookup};
use enigma_verify::wire::{AuditAnswer, HistoryAnswer, LookupAnswer, SignedRoot, root_message};
use futures_util::{StreamExt, stream};

use crate::harness::{Backend, Blackhole, DEADLINE, Redis, Sentinel, Server, ServerConfig, random_key, wait_until};

/// Epochs every 100 ms, so a test waits for a few of them at most.
fn fast(config: ServerConfig) -> ServerConfig {
    config.with("ENIGMA__DIRECTORY__EPOCH_INTERVAL_MS", 100).with("ENIGMA__DIRECTORY__LEASE_MS", 1000)
}

fn bytes<const N: usize>(text: &str) -> [u8; N] {
    let decoded = STANDARD.decode(text).expect("base64");
    decoded.try_into().expect("length")
}

fn hash(root: &SignedRoot) -> [u8; 32] {
    hex::decode(&root.root_hash).expect("hex").try_into().expect("32 bytes")
}

/// The root's signature verifies with the key it names.
fn verify_root(root: &SignedRoot) {
    let key = VerifyingKey::from_bytes(&bytes::<32>(&root.signing_key)).expect("an Ed25519 key");
    let message = root_message(root.epoch, &hash(root), &bytes::<32>(&root.vrf_public_key));
    let signature = Signature::from_bytes(&bytes::<64>(&root.signature));
    key.verify(&message, &signature).unwrap_or_else(|e| panic!("root of epoch {} badly signed: {e}", root.epoch));
}

async fn get_json<T: serde::de::DeserializeOwned>(s: &Server, path: &str) -> (u16, Option<T>, serde_json::Value) {
    let (status, body) = s.get(path).await;
    let parsed = if status == 200 { serde_json::from_value(body.clone()).ok() } else { None };
    (status, parsed, body)
}

async fn root(s: &Server) -> SignedRoot {
    let (status, root, body) = get_json::<SignedRoot>(s, "/directory/root").await;
    assert_eq!(status, 200, "{body}");
    let root = root.expect("a SignedRoot");
    verify_root(&root);
    root
}

/// Polls `check` until it gives a value; fails the test after `timeout`.
async fn first_some<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `user` is in the directory, then checks the lookup answer as a client does.
async fn provable(s: &Server, user: &str, key: &str) -> LookupAnswer {
    let path = format!("/directory/lookup/{user}");
    let answer = first_some("the registration to be published", DEADLINE, || async {
        let (status, parsed, body) = get_json::<LookupAnswer>(s, &path).await;
        // 503: the directory is starting (the server answers before it); asked again.
        assert!(status == 200 || status == 404 || status == 503, "{status} {body}");
        parsed
    })
    .await;
    verify_lookup(&answer, user, key);
    answer
}

fn verify_lookup(answer: &LookupAnswer, user: &str, key: &str) {
    verify_root(&answer.root);
    assert_eq!((answer.user_id.as_str(), answer.public_key.as_str()), (user, key));
    let proof = decode_lookup(&answer.proof).expect("a lookup proof");
    let vrf = bytes::<32>(&answer.root.vrf_public_key);
    let label = AkdLabel(user.as_bytes().to_vec());
    let result = lookup_verify::<Config>(&vrf, hash(&answer.root), answer.root.epoch, label, proof)
        .unwrap_or_else(|e| panic!("the lookup proof of {user} does not verify: {e:?}"));
    assert_eq!(result.value.0, key.as_bytes(), "the proven key is the registered one");
    assert_eq!(result.version, answer.version);
}

async fn verify_history(s: &Server, user: &str, key: &str) {
    let (status, answer, body) = get_json::<HistoryAnswer>(s, &format!("/directory/history/{user}")).await;
    assert_eq!(status, 200, "{body}");
    let answer = answer.unwrap();
    verify_root(&answer.root);
    let proof = decode_history(&answer.proof).expect("a history proof");
    let vrf = bytes::<32>(&answer.root.vrf_public_key);
    let params = HistoryVerificationParams::Default { history_params: HistoryParams::Complete };
    let label = AkdLabel(user.as_bytes().to_vec());
    let results = key_history_verify::<Config>(&vrf, hash(&answer.root), answer.root.epoch, label, proof, params)
        .unwrap_or_else(|e| panic!("the history proof of {user} does not verify: {e:?}"));
    assert_eq!(results.len(), 1, "one registration, one version");
    assert_eq!(results[0].value.0, key.as_bytes());
}

/// Every root from epoch 1 to `to`, each step proven append-only by akd's auditor, asked for
/// in as many requests as the server's bound on a range takes.
async fn audit(s: &Server, to: u64) -> Vec<SignedRoot> {
    let mut roots: Vec<SignedRoot> = Vec::new();
    let mut from = 1;
    while from < to {
        let (status, answer, body) = get_json::<AuditAnswer>(s, &format!("/directory/audit/{from}/{to}")).await;
        assert_eq!(status, 200, "{body}");
        let answer = answer.unwrap();
        assert_eq!(answer.from, from);
        assert!(answer.to > from && answer.to <= to, "{} to {}", answer.from, answer.to);
        assert_eq!(answer.roots.len() as u64, answer.to - from + 1);
        for (epoch, root) in (from..).zip(&answer.roots) {
            assert_eq!(root.epoch, epoch);
            verify_root(root);
        }
        if let Some(last) = roots.last() {
            assert_eq!(last, &answer.roots[0], "consecutive answers share their boundary epoch");
        }
        let hashes = answer.roots.iter().map(hash).collect();
        let proof = decode_audit(&answer.proof).expect("an append-only proof");
        akd::auditor::audit_verify::<Config>(hashes, proof)
            .await
            .unwrap_or_else(|e| panic!("epochs {from} to {} are not append-only: {e:?}", answer.to));
        let skip = usize::from(!roots.is_empty());
        roots.extend(answer.roots.into_iter().skip(skip));
        from = answer.to;
    }
    roots
}

async fn register(s: &Server, n: usize) -> Vec<(String, String)> {
    let keys: Vec<String> = (0..n).map(|_| random_key()).collect();
    stream::iter(keys).map(|key| async move { (s.login(&key).await, key) }).buffer_unordered(32).collect().await
}

/// Waits until nothing waits to be published and returns the latest root.
async fn settled(s: &Server) -> SignedRoot {
    wait_until("every registration to be published", DEADLINE * 3, || async {
        s.metric("enigma_directory_pending").await == 0.0 && s.get("/directory/root").await.0 == 200
    })
    .await;
    root(s).await
}

async fn registration_becomes_provable(b: Backend) {
    let s = Server::start(&fast(b.config()));
    let (status, body) = first_some("the directory to start", DEADLINE, || async {
        let (status, body) = s.get("/directory/root").await;
        (status != 503).then_some((status, body))
    })
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "no epoch yet: {body}");
    let users = register(&s, 5).await;
    for (user, key) in &users {
        let answer = provable(&s, user, key).await;
        assert_eq!(answer.version, 1);
        verify_history(&s, user, key).await;
    }
    // The same key again is the same user and no new version.
    let (user, key) = &users[0];
    assert_eq!(&s.login(key).await, user);
    let later = register(&s, 1).await;
    provable(&s, &later[0].0, &later[0].1).await;
    assert_eq!(provable(&s, user, key).await.version, 1, "re-registering made no new version");
    let latest = settled(&s).await;
    if latest.epoch > 1 {
        let roots = audit(&s, latest.epoch).await;
        assert_eq!(roots.last(), Some(&latest));
    }
}

async fn bad_input_changes_nothing(b: Backend) {
    let s = Server::start(&fast(b.config()));
    let (user, key) = register(&s, 1).await.remove(0);
    provable(&s, &user, &key).await;
    let before = settled(&s).await;
    let unknown = "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    let refused = [
        ("/directory/lookup/not-a-user".to_owned(), 400),
        (format!("/directory/lookup/{}", user.to_uppercase()), 400),
        (format!("/directory/lookup/{unknown}"), 404),
        ("/directory/history/%00".to_owned(), 400),
        (format!("/directory/history/{unknown}"), 404),
        ("/directory/audit/x/2".to_owned(), 400),
        ("/directory/audit/1/-2".to_owned(), 400),
        ("/directory/audit/0/1".to_owned(), 400),
        ("/directory/audit/1/1".to_owned(), 400),
        ("/directory/audit/2/1".to_owned(), 400),
        (format!("/directory/audit/1/{}", before.epoch + 1), 400),
        ("/directory/audit/1/99999999999999999999999".to_owned(), 400),
    ];
    for (path, expected) in refused {
        let (status, body) = s.get(&path).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: a clear error, got {body}");
    }
    assert_eq!(root(&s).await, before, "nothing changed");
    provable(&s, &user, &key).await;
}

both_engines!(with_cluster: registration_becomes_provable, bad_input_changes_nothing);

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_registrations_then_a_full_audit() {
    let redis = Redis::start();
    let s = Server::start(&fast(ServerConfig::redis(&redis)));
    let users = register(&s, 2_000).await;
    let latest = settled(&s).await;
    let roots = audit(&s, latest.epoch).await;
    assert_eq!(roots.len() as u64, latest.epoch);
    for (user, key) in users.iter().step_by(97) {
        provable(&s, user, key).await;
    }
}

/// An audit answer is bounded by the entries its epochs published, not by epochs alone: over a
/// large directory a range of epochs outlasted the request's timeout and nobody could audit.
/// Here epochs of at most 50 entries and answers of at most 100: a range asked whole is cut
/// short after the epoch that reaches 100, and the rest is audited answer by answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_audit_answer_stops_at_its_entry_budget() {
    let redis = Redis::start();
    let config = fast(ServerConfig::redis(&redis))
        .with("ENIGMA__DIRECTORY__MAX_EPOCH_ENTRIES", 50)
        .with("ENIGMA__DIRECTORY__MAX_AUDIT_ENTRIES", 100);
    let s = Server::start(&config);
    register(&s, 400).await;
    let latest = settled(&s).await;
    assert!(latest.epoch >= 8, "400 registrations in epochs of at most 50: epoch {}", latest.epoch);
    let (status, answer, body) = get_json::<AuditAnswer>(&s, &format!("/directory/audit/1/{}", latest.epoch)).await;
    assert_eq!(status, 200, "{body}");
    let answer = answer.expect("an AuditAnswer");
    let proof = decode_audit(&answer.proof).expect("an append-only proof");
    let entries: usize = proof.proofs.iter().map(|step| step.inserted.len()).sum();
    assert!(answer.to > 1 && answer.to < latest.epoch, "answered epochs 1 to {} of {}", answer.to, latest.epoch);
    assert!((100..150).contains(&entries), "{entries} entries in epochs 1 to {}", answer.to);
    let roots = audit(&s, latest.epoch).await;
    assert_eq!(roots.len() as u64, latest.epoch);
}

/// A backlog larger than one epoch is published epoch after epoch at once, not one epoch per
/// interval: at 2,000 entries an epoch and one epoch a second, a directory took 50 s to publish
/// 100,000 users and fell behind any sustained 2,000 registrations a second. Here 250 users
/// at 50 an epoch, one epoch every 5 s: one interval (plus the work), where one epoch per
/// interval needs five.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_published_without_waiting_an_interval_per_epoch() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis)
        .with("ENIGMA__DIRECTORY__EPOCH_INTERVAL_MS", 5000)
        .with("ENIGMA__DIRECTORY__LEASE_MS", 10_000)
        .with("ENIGMA__DIRECTORY__MAX_EPOCH_ENTRIES", 50);
    let s = Server::start(&config);
    register(&s, 250).await;
    let registered = std::time::Instant::now();
    wait_until("the 250 users published", Duration::from_secs(15), || async {
        s.metric("enigma_directory_pending").await == 0.0 && s.get("/directory/root").await.0 == 200
    })
    .await;
    let latest = root(&s).await;
    assert!(latest.epoch >= 5, "250 users at most 50 an epoch: epoch {}", latest.epoch);
    println!("250 users in {} epochs published {:?} after the last registration", latest.epoch, registered.elapsed());
}

/// Two replicas on one Redis: the publisher is SIGKILLed; the other takes the lease within a
/// few seconds and the epochs go on from where they were, every earlier root unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn the_other_replica_publishes_after_the_publisher_dies() {
    let redis = Redis::start();
    let config = fast(ServerConfig::redis(&redis));
    let replicas = [Server::start(&config), Server::start(&config)];
    let publisher = first_some("one replica to hold the lease", DEADLINE, || async {
        let held = [
            replicas[0].metric("enigma_directory_publisher").await,
            replicas[1].metric("enigma_directory_publisher").await,
        ];
        (held.iter().sum::<f64>() == 1.0).then(|| held.iter().position(|h| *h == 1.0)).flatten()
    })
    .await;
    let [first, second] = replicas;
    let (publisher, survivor) = if publisher == 0 { (first, second) } else { (second, first) };
    for _ in 0..3 {
        let (user, key) = register(&survivor, 1).await.remove(0);
        provable(&survivor, &user, &key).await;
    }
    let before = settled(&survivor).await;
    let roots_before = audit(&survivor, before.epoch).await;
    publisher.kill();
    let (user, key) = register(&survivor, 1).await.remove(0);
    let started = std::time::Instant::now();
    let answer = provable(&survivor, &user, &key).await;
    assert!(started.elapsed() < Duration::from_secs(5), "published {:?} after the publisher died", started.elapsed());
    assert_eq!(survivor.metric("enigma_directory_publisher").await, 1.0);
    assert_eq!(answer.root.epoch, before.epoch + 1, "the next epoch, no gap");
    let roots_after = audit(&survivor, answer.root.epoch).await;
    assert_eq!(roots_after[..roots_before.len()], roots_before[..], "every earlier root unchanged");
}

/// The embedded engine killed with SIGKILL comes back with every root, and the next epoch
/// follows the last.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_directory_survives_kill_9() {
    let config = fast(ServerConfig::embedded());
    let s = Server::start(&config);
    let mut users = Vec::new();
    for _ in 0..3 {
        let (user, key) = register(&s, 2).await.remove(0);
        provable(&s, &user, &key).await;
        users.push((user, key));
    }
    let before = settled(&s).await;
    let roots_before = audit(&s, before.epoch).await;
    s.kill();
    let s = Server::start(&config);
    assert_eq!(root(&s).await, before, "the same latest root, signed by the same key");
    for (user, key) in &users {
        provable(&s, user, key).await;
    }
    let (user, key) = register(&s, 1).await.remove(0);
    let answer = provable(&s, &user, &key).await;
    assert_eq!(answer.root.epoch, before.epoch + 1);
    let roots_after = audit(&s, answer.root.epoch).await;
    assert_eq!(roots_after[..roots_before.len()], roots_before[..], "every earlier root unchanged");
}

/// Clients tell the three apart at `/directory/root`: a directory with no epoch yet (404 with
/// `Retry-After`: ask again), and a server with the directory off, which answers every
/// `/directory/*` like a server that only speaks the specification (404, no `Retry-After`: use
/// the pins alone).
#[tokio::test(flavor = "multi_thread")]
async fn no_epoch_yet_and_no_directory_are_told_apart() {
    let retry_after = |r: &reqwest::Response| r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let slow = Server::start(
        &ServerConfig::memory()
            .with("ENIGMA__DIRECTORY__EPOCH_INTERVAL_MS", 600_000)
            .with("ENIGMA__DIRECTORY__LEASE_MS", 1_200_000),
    );
    let first = slow.http.get(slow.url("/directory/root")).send().await.unwrap();
    assert_eq!((first.status().as_u16(), retry_after(&first).as_deref()), (404, Some("1")));

    let off = Server::start(&ServerConfig::memory().with("ENIGMA__DIRECTORY__ENABLED", false));
    register(&off, 1).await;
    for path in ["/directory/root", "/directory/audit/1/2", "/directory/lookup/3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6"] {
        let answer = off.http.get(off.url(path)).send().await.unwrap();
        assert_eq!((answer.status().as_u16(), retry_after(&answer)), (404, None), "{path}");
    }
}

/// A publisher round that lands between a registration's `pending` entry and its user record
/// (Redis writes the entry first) waits for the record instead of dropping the entry: the user
/// is published once the record and its key index are there.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_caught_halfway_is_still_published() {
    let redis = Redis::start();
    let config = fast(ServerConfig::redis(&redis));
    // The record and the index, written by a registration without the directory; the record
    // is moved aside so that the entry is seen without it.
    let off = Server::start(&config.clone().with("ENIGMA__DIRECTORY__ENABLED", false));
    let (user, key) = register(&off, 1).await.remove(0);
    drop(off);
    let record = format!("{}user:{{{user}}}", config.prefix);
    let aside = format!("{record}:aside");
    redis.cli(&["RENAME", &record, &aside]).expect("the record moved aside");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let pending = format!("{}kt:{{kt}}:pending", config.prefix);
    redis.cli(&["HSET", &pending, &user, &format!("{now} {key}")]).expect("the entry written");
    let s = Server::start(&config);
    // Several epochs pass with the entry there and the record not.
    for _ in 0..3 {
        let (other, other_key) = register(&s, 1).await.remove(0);
        provable(&s, &other, &other_key).await;
    }
    redis.cli(&["RENAME", &aside, &record]).expect("the record back");
    provable(&s, &user, &key).await;
}

/// Users registered while the directory was off are published once it is on: the relay
/// restarted on the same data finds them and queues them.
async fn users_from_before_the_directory_are_published(config: ServerConfig) {
    let off = Server::start(&config.clone().with("ENIGMA__DIRECTORY__ENABLED", false));
    let users = register(&off, 5).await;
    drop(off);
    let s = Server::start(&config);
    for (user, key) in &users {
        assert_eq!(provable(&s, user, key).await.version, 1);
    }
    let (user, key) = register(&s, 1).await.remove(0);
    provable(&s, &user, &key).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_from_before_the_directory_are_published_redis() {
    let redis = Redis::start();
    users_from_before_the_directory_are_published(fast(ServerConfig::redis(&redis))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_from_before_the_directory_are_published_embedded() {
    users_from_before_the_directory_are_published(fast(ServerConfig::embedded())).await;
}

/// A key index holding something that is not a user id makes its entry wait, then go (it can
/// never be published), and every other registration is published meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_garbled_key_index_holds_up_no_one_else() {
    let redis = Redis::start();
    let config = fast(ServerConfig::redis(&redis));
    let off = Server::start(&config.clone().with("ENIGMA__DIRECTORY__ENABLED", false));
    let (user, key) = register(&off, 1).await.remove(0);
    drop(off);
    let indexes = redis.cli(&["KEYS", &format!("{}pk:*", config.prefix)]).expect("KEYS");
    let index = indexes.lines().map(str::trim).find(|l| !l.is_empty()).expect("the user's key index");
    redis.cli(&["SET", index, "not-a-user-id"]).expect("the index garbled");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let pending = format!("{}kt:{{kt}}:pending", config.prefix);
    redis.cli(&["HSET", &pending, &user, &format!("{now} {key}")]).expect("the entry written");
    let s = Server::start(&config);
    let others = register(&s, 3).await;
    for (other, other_key) in &others {
        provable(&s, other, other_key).await;
    }
    let unknown = s.get(&format!("/directory/lookup/{user}")).await.0;
    assert_eq!(unknown, 404, "the garbled user is not published");
}

/// On a cluster each master is scanned: users spread over three shards are all found.
#[tokio::test(flavor = "multi_thread")]
async fn users_from_before_the_directory_are_published_cluster() {
    let cluster = crate::harness::RedisCluster::start(3, 0);
    users_from_before_the_directory_are_published(fast(ServerConfig::cluster(&cluster))).await;
}

/// A master and a replica of its own, the replica online.
async fn replicated() -> (Redis, Redis) {
    let master = Redis::start();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    online(&master, &replica).await;
    (master, replica)
}

/// Waits until `master` has `replica` online (`ROLE` lists only those: after the first sync).
async fn online(master: &Redis, replica: &Redis) {
    let port = replica.port.to_string();
    wait_until("the replica to be online", DEADLINE, || async {
        master.cli(&["ROLE"]).is_some_and(|role| role.lines().any(|line| line.trim() == port))
    })
    .await;
}

/// The epoch the directory's records are at in Redis (written, its root recorded or not).
fn written_epoch(redis: &Redis, config: &ServerConfig) -> u64 {
    let epoch = redis.cli(&["GET", &format!("{}kt:{{kt}}:epoch", config.prefix)]).expect("GET epoch");
    epoch.trim().parse().unwrap_or(0)
}

/// Replication is asynchronous: a root served before the replica had its epoch would be lost
/// by the replica's promotion. While the replica does not acknowledge (its process frozen),
/// registrations are answered but no new epoch is published, and the directory goes on
/// answering at the last root; once the replica acknowledges, the registrations are.
#[tokio::test(flavor = "multi_thread")]
async fn no_root_is_served_before_the_replica_has_its_epoch() {
    let (master, replica) = replicated().await;
    replica_lag_holds_publication_back(ServerConfig::redis(&master), &master, &replica).await;
}

/// On a cluster, the replica of the directory's shard is the one waited for.
#[tokio::test(flavor = "multi_thread")]
async fn no_root_is_served_before_the_replica_has_its_epoch_cluster() {
    let cluster = crate::harness::RedisCluster::start(3, 1);
    let master = cluster.owner_of(cluster.slot_of("{kt}"));
    let replica = cluster.replica_of(master);
    let (master, replica) = (&cluster.nodes[master], &cluster.nodes[replica]);
    online(master, replica).await;
    replica_lag_holds_publication_back(ServerConfig::cluster(&cluster), master, replica).await;
}

/// `master` holds the directory's keys, `replica` is its replica.
async fn replica_lag_holds_publication_back(config: ServerConfig, master: &Redis, replica: &Redis) {
    let config = fast(config).with("ENIGMA__DIRECTORY__REPLICA_WAIT_MS", 200);
    let s = Server::start(&config);
    let (user, key) = register(&s, 1).await.remove(0);
    provable(&s, &user, &key).await;
    let before = settled(&s).await;
    assert_eq!(
        s.metric("enigma_directory_unreplicated_total").await,
        0.0,
        "a replica that keeps up holds nothing back"
    );

    replica.pause();
    let (late, late_key) = register(&s, 1).await.remove(0);
    // Rounds that wait for the replica in vain, or (what must not be) a new root.
    wait_until("the publisher to try a few rounds", DEADLINE, || async {
        s.metric("enigma_directory_unreplicated_total").await >= 3.0 || root(&s).await != before
    })
    .await;
    assert_eq!(root(&s).await, before, "no root served while the replica lags");
    assert_eq!(written_epoch(master, &config), before.epoch, "nor an epoch written");
    let (status, body) = s.get(&format!("/directory/lookup/{late}")).await;
    assert_eq!(status, 404, "not published yet: {body}");
    assert_eq!(provable(&s, &user, &key).await.root, before, "the others are answered at the last root");

    replica.resume();
    let answer = provable(&s, &late, &late_key).await;
    assert_eq!(answer.root.epoch, before.epoch + 1, "published once the replica acknowledged");
    provable(&s, &user, &key).await;
}

/// An epoch written whose root is not recorded (its publisher died in between: here the root is
/// taken off the list) gets its root only once the replica acknowledges; meanwhile the root
/// before it is served and lookups are told to retry. The root recorded then is the one it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_written_epoch_is_rooted_only_once_the_replica_acknowledges() {
    let (master, replica) = replicated().await;
    let config = fast(ServerConfig::redis(&master)).with("ENIGMA__DIRECTORY__REPLICA_WAIT_MS", 200);
    let s = Server::start(&config);
    let (user, key) = register(&s, 1).await.remove(0);
    provable(&s, &user, &key).await;
    let (other, other_key) = register(&s, 1).await.remove(0);
    provable(&s, &other, &other_key).await;
    let last = settled(&s).await;
    let earlier = audit(&s, last.epoch).await;

    replica.pause();
    let roots = format!("{}kt:{{kt}}:roots", config.prefix);
    assert!(master.cli(&["RPOP", &roots]).is_some_and(|r| !r.trim().is_empty()), "the last root taken off");
    let held = s.metric("enigma_directory_unreplicated_total").await;
    // Rounds that wait for the replica in vain, or (what must not be) the root recorded again.
    wait_until("the publisher to try a few rounds", DEADLINE, || async {
        s.metric("enigma_directory_unreplicated_total").await >= held + 3.0 || root(&s).await.epoch == last.epoch
    })
    .await;
    assert_eq!(root(&s).await.epoch, last.epoch - 1, "the root before it is served");
    assert_eq!(written_epoch(&master, &config), last.epoch);
    let (status, body) = s.get(&format!("/directory/lookup/{user}")).await;
    assert_eq!(status, 503, "a lookup at an unrooted epoch is asked again: {body}");

    replica.resume();
    wait_until("the root to be recorded again", DEADLINE, || async { root(&s).await.epoch == last.epoch }).await;
    assert_eq!(audit(&s, last.epoch).await, earlier, "the same roots");
    provable(&s, &other, &other_key).await;
}

/// The master dies with an epoch its replica never got, and the Sentinel promotes the replica:
/// a client that kept the newest root served before the failover finds it unchanged after it
/// (the epoch the replica lacked was never served), and the next epoch follows from it, no
/// fork. The replica reads the master through a proxy that stops carrying bytes (a frozen
/// replica would still find them in its socket when it thaws). The registration the master
/// took meanwhile is lost with it: replication is asynchronous; this test asserts only what
/// clients were shown.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_loses_no_root_a_client_kept() {
    let mut master = Redis::start();
    let link = Blackhole::start(master.port).await;
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &link.port.to_string()]);
    online(&master, &replica).await;
    let sentinel = Sentinel::start(&master);
    let port = replica.port.to_string();
    wait_until("the Sentinel to know the replica", DEADLINE, || async {
        sentinel.cli(&["SENTINEL", "REPLICAS", "mymaster"]).is_some_and(|r| r.contains(&port))
    })
    .await;
    let config = fast(ServerConfig::sentinel(&sentinel))
        .with("ENIGMA__DIRECTORY__REPLICA_WAIT_MS", 200)
        .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 200)
        .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 500);
    let s = Server::start(&config);
    let (user, key) = register(&s, 1).await.remove(0);
    provable(&s, &user, &key).await;
    let before = settled(&s).await;
    wait_until("the replica to catch up", DEADLINE, || async { master.copied_to(&replica) }).await;

    link.swallow_open_connections();
    register(&s, 1).await;
    // Rounds that wait for the replica in vain, or (what must not be) a new root.
    wait_until("the publisher to try a few rounds", DEADLINE, || async {
        s.metric("enigma_directory_unreplicated_total").await >= 3.0 || root(&s).await != before
    })
    .await;
    let kept = root(&s).await;
    master.crash();
    wait_until("the Sentinel to promote the replica", DEADLINE * 3, || async {
        sentinel.master_port() == Some(replica.port)
    })
    .await;
    wait_until("readiness", DEADLINE, || async { s.get("/readyz").await.0 == 200 }).await;

    let (after, after_key) = register(&s, 1).await.remove(0);
    let answer = provable(&s, &after, &after_key).await;
    let roots = audit(&s, answer.root.epoch).await;
    assert_eq!(
        roots.get(kept.epoch as usize - 1),
        Some(&kept),
        "the root a client kept is the same after the failover"
    );
    assert_eq!(answer.root.epoch, kept.epoch + 1, "the next epoch follows the kept one");
    provable(&s, &user, &key).await;
}
