//! One key, one user: every spelling of a recognised key (X25519 in base64/base64url with or
//! without padding; RSA as DER-b64, PEM, base64 of PEM) logs in as the same user, whose stored
//! `publicKey` stays the first registrant's string byte for byte. Records made before the
//! index was normalised (exact-string index entries) are found again and never merged.
//!
//! Twins (issue 23): spellings that a lenient client reads as a registered key — unused
//! trailing bits set, both base64 alphabets in one string, RSA as PKCS#1 — are that key's user
//! too; 32 bytes with the top bit set are another key (to HPKE and to every fingerprint), so
//! another user, and one nobody can claim.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use enigma::sdk::{Client, ConnectOptions, Identity};
use rsa::pkcs1::{EncodeRsaPublicKey, LineEnding};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Backend, Redis, Server, ServerConfig};

const PEM_B64: &str = include_str!("fixtures/rsa2048-pem.b64");
const DER_B64: &str = include_str!("fixtures/rsa2048-der.b64");
const RSA_PRIVATE_PEM: &str = include_str!("fixtures/rsa2048-test-private.pem");

both_engines!(
    with_cluster:
    every_spelling_of_an_x25519_key_is_one_user,
    every_encoding_of_an_rsa_key_is_one_user,
    twin_spellings_of_an_x25519_key_are_its_user,
    a_twin_registered_first_is_its_owners_user,
    an_rsa_key_in_pkcs1_is_the_same_user_and_can_be_claimed,
);

/// Every byte but letters and digits as `%XX`: the whole path segment is the key.
fn path(key: &str) -> String {
    key.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// 32 bytes whose base64 holds `+`, `/` and `=`, so the alphabets and paddings all differ.
fn x25519_spellings(seed: u8) -> [String; 4] {
    let raw: Vec<u8> = (0..32u8).map(|i| if i % 3 == 0 { 0xFB } else { 0xFF ^ i ^ seed }).collect();
    let s = [STANDARD.encode(&raw), STANDARD_NO_PAD.encode(&raw), URL_SAFE.encode(&raw), URL_SAFE_NO_PAD.encode(&raw)];
    assert!(s[0].contains('+') && s[0].contains('/') && s[0].ends_with('='), "{}", s[0]);
    s
}

/// `spelling` with the unused bits of its last character (2 of them for 32 bytes) all set:
/// what `atob` and other lenient decoders ignore.
fn with_trailing_bits(spelling: &str) -> String {
    let digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (body, last) = spelling.split_at(spelling.len() - 1);
    let value = digits.find(last).expect("unpadded 32 bytes end in a letter or digit");
    let twin = format!("{body}{}", &digits[value | 3..=value | 3]);
    assert_ne!(twin, spelling, "the bits were set already");
    twin
}

/// The standard spelling, unpadded, with every other `+`/`/` in the base64url alphabet.
fn mixed_alphabets(raw: &[u8]) -> String {
    let mut url = false;
    let mixed: String = STANDARD_NO_PAD
        .encode(raw)
        .chars()
        .map(|c| match c {
            '+' | '/' => {
                url = !url;
                match (c, url) {
                    ('+', true) => '-',
                    ('/', true) => '_',
                    _ => c,
                }
            }
            c => c,
        })
        .collect();
    assert!(mixed.contains(['-', '_']) && mixed.contains(['+', '/']), "{mixed}");
    mixed
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = s.http.post(s.url(path)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn public_key_of(s: &Server, user: &str) -> String {
    let (status, body) = s.get(&format!("/connect/{user}")).await;
    assert_eq!(status, 200, "{body}");
    body["publicKey"].as_str().unwrap().to_owned()
}

async fn every_spelling_of_an_x25519_key_is_one_user(b: Backend) {
    let s = b.server();
    let spellings = x25519_spellings(0);
    // The first registrant sends base64url without padding.
    let first = s.login(&path(&spellings[3])).await;
    for spelling in &spellings {
        assert_eq!(s.login(&path(spelling)).await, first, "{spelling} is another user");
    }
    assert_eq!(s.login(&path(&format!(" {} ", spellings[0]))).await, first, "surrounding spaces");
    assert_eq!(public_key_of(&s, &first).await, spellings[3], "not the first registrant's string");
    // Another key is another user.
    assert_ne!(s.login(&path(&x25519_spellings(1)[0])).await, first);
}

async fn every_encoding_of_an_rsa_key_is_one_user(b: Backend) {
    let s = b.server();
    let pem = String::from_utf8(STANDARD.decode(PEM_B64).unwrap()).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    // The first registrant is the web client's base64-of-PEM.
    let first = s.login(&path(PEM_B64)).await;
    assert_eq!(s.login(&path(DER_B64)).await, first, "DER-b64 is another user");
    assert_eq!(s.login(&path(&pem)).await, first, "PEM is another user");
    assert_eq!(public_key_of(&s, &first).await, PEM_B64, "not the first registrant's string");
}

/// Spellings the web page reads as the victim's key, with the victim's fingerprint, log in as
/// the victim; the key with its top bit set is another user, whom nobody can claim.
async fn twin_spellings_of_an_x25519_key_are_its_user(b: Backend) {
    let s = b.server();
    // Letters and digits only at the end, `+`, `/` and `=` elsewhere; the top bit clear.
    let mut raw: Vec<u8> = (0..32u8).map(|i| if i % 3 == 0 { 0xFB } else { 0xFF ^ i }).collect();
    raw[31] = 0x2A;
    let canonical = URL_SAFE_NO_PAD.encode(&raw);
    let victim = s.login(&path(&canonical)).await;
    let twins = [
        with_trailing_bits(&canonical),
        format!("{}=", mixed_alphabets(&raw)),
        format!(" {}\r\n", with_trailing_bits(&mixed_alphabets(&raw))),
    ];
    for twin in &twins {
        assert_eq!(s.login(&path(twin)).await, victim, "{twin:?} is a second user for the key");
    }
    assert_eq!(public_key_of(&s, &victim).await, canonical, "not the first registrant's string");

    let mut high = raw.clone();
    high[31] |= 0x80;
    let high_user = s.login(&path(&URL_SAFE_NO_PAD.encode(&high))).await;
    assert_ne!(high_user, victim, "another 32 bytes, another key: another user");
    let (status, body) = post(&s, "/auth/challenge", json!({"userId": high_user})).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("unsupported_key")), "{body}");
    let (status, body) = post(&s, "/auth/challenge", json!({"userId": victim})).await;
    assert_eq!((status, body["alg"].as_str()), (200, Some("hpke-x25519")), "{body}");
}

/// Someone who registers an SDK user's key first, under a twin spelling, only registers that
/// user: the SDK finds the same id, claims it, connects and reads its own messages.
async fn a_twin_registered_first_is_its_owners_user(b: Backend) {
    let s = b.server();
    let identity = Identity::generate();
    // Another tool's spelling (the standard alphabet), with the unused bits set.
    let raw = URL_SAFE_NO_PAD.decode(identity.public_key().to_base64url()).unwrap();
    let twin = with_trailing_bits(&STANDARD_NO_PAD.encode(raw));
    let squatted = s.login(&path(&twin)).await;

    let client = Client::new(&s.url(""), identity).unwrap();
    assert_eq!(client.login().await.unwrap(), squatted, "the owner got another user");
    assert_eq!(public_key_of(&s, &squatted).await, twin, "the first registrant's string, byte for byte");
    assert_eq!(&client.lookup_unchecked(&squatted).await.unwrap(), client.identity().public_key());
    client.authenticate(&squatted).await.unwrap().expect("the owner claims the user");
    let mut connection = client.connect(&squatted, ConnectOptions::default()).await.unwrap();
    connection.send(&squatted, "to myself").await.unwrap();
    let received = tokio::time::timeout(std::time::Duration::from_secs(10), connection.recv()).await.unwrap();
    assert_eq!(received.unwrap().unwrap().text, "to myself");
    connection.close().await;
}

/// PKCS#1 (`RSA PUBLIC KEY`) is the same key as its SubjectPublicKeyInfo: one user, and the
/// holder of the private key claims it whichever spelling came first.
async fn an_rsa_key_in_pkcs1_is_the_same_user_and_can_be_claimed(b: Backend) {
    let s = b.server();
    let private = rsa::PrivateKey::from_pkcs8_pem(RSA_PRIVATE_PEM).unwrap();
    let public = private.to_public_key();
    let pkcs1_pem = public.to_pkcs1_pem(LineEnding::LF).unwrap();
    let first = s.login(&path(&pkcs1_pem)).await;
    let spki_der = STANDARD.encode(public.to_public_key_der().unwrap());
    let spki_pem = public.to_public_key_pem(LineEnding::LF).unwrap();
    let one_line = format!("-----BEGIN PUBLIC KEY-----\n{spki_der}\n-----END PUBLIC KEY-----\n");
    for spelling in [
        STANDARD.encode(spki_pem.as_bytes()),
        spki_der.clone(),
        one_line,
        STANDARD.encode(pkcs1_pem.as_bytes()),
        STANDARD.encode(public.to_pkcs1_der().unwrap()),
    ] {
        assert_eq!(s.login(&path(&spelling)).await, first, "{spelling:?} is a second user for the key");
    }
    assert_eq!(public_key_of(&s, &first).await, pkcs1_pem, "not the first registrant's string");

    let (status, challenge) = post(&s, "/auth/challenge", json!({"userId": first})).await;
    assert_eq!((status, challenge["alg"].as_str()), (200, Some("rsa-oaep-sha256")), "{challenge}");
    let sealed = STANDARD.decode(challenge["sealed"].as_str().unwrap()).unwrap();
    let secret = private.oaep_decrypt::<rsa::sha2::Sha256>(&sealed).unwrap();
    let answer = json!({"challenge": challenge["challenge"], "secret": STANDARD.encode(&secret)});
    let (status, token) = post(&s, "/auth/token", answer).await;
    assert_eq!(status, 200, "{token}");
}

/// A user record and exact-string index entry as the server wrote them before normalisation.
fn legacy_user(redis: &Redis, prefix: &str, user: &str, key: &str) {
    let digest: String = Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    redis.cli(&["HSET", &format!("{prefix}user:{{{user}}}"), "publicKey", key, "createdAt", "1"]).unwrap();
    redis.cli(&["SET", &format!("{prefix}pk:{digest}"), user]).unwrap();
}

/// Records from before the change keep their ids: the exact spelling finds its old user (and
/// from then on every spelling does); two old records of one key stay two users.
#[tokio::test]
async fn records_from_before_normalisation_are_found_and_never_merged() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let [padded, unpadded, url, url_unpadded] = x25519_spellings(7);
    let old_a = "0a4f7a52-6d1e-4a1b-9c3d-111111111111";
    let old_b = "0b4f7a52-6d1e-4a1b-9c3d-222222222222";
    legacy_user(&redis, &config.prefix, old_a, &padded);
    legacy_user(&redis, &config.prefix, old_b, &unpadded);
    let s = Server::start(&config);

    assert_eq!(s.login(&path(&padded)).await, old_a, "the old record was not found");
    assert_eq!(s.login(&path(&url)).await, old_a, "other spellings now find the old record");
    assert_eq!(s.login(&path(&unpadded)).await, old_b, "a second old record was merged away");
    assert_eq!(s.login(&path(&url_unpadded)).await, old_a);
    assert_eq!(public_key_of(&s, old_a).await, padded);
    assert_eq!(public_key_of(&s, old_b).await, unpadded);
}

/// Twins registered before they were recognised (indexed by their exact string) keep their
/// ids and logins; nothing is merged: the key's user keeps its id too, and every other spelling
/// finds it. A twin alone with its key is found by every spelling from then on.
#[tokio::test]
async fn twins_registered_before_they_were_recognised_keep_their_ids() {
    let redis = Redis::start();
    let config = ServerConfig::redis(&redis);
    let [_, _, _, victim_key] = x25519_spellings(3);
    let [_, _, _, lone_key] = x25519_spellings(4);
    let (twin, lone_twin) = (with_trailing_bits(&victim_key), with_trailing_bits(&lone_key));
    let old_twin = "0c4f7a52-6d1e-4a1b-9c3d-333333333333";
    let old_lone = "0d4f7a52-6d1e-4a1b-9c3d-444444444444";
    legacy_user(&redis, &config.prefix, old_twin, &twin);
    legacy_user(&redis, &config.prefix, old_lone, &lone_twin);
    let s = Server::start(&config);
    let victim = s.login(&path(&victim_key)).await;
    assert_ne!(victim, old_twin);

    assert_eq!(s.login(&path(&twin)).await, old_twin, "the old twin lost its login");
    assert_eq!(s.login(&path(&victim_key)).await, victim, "the twin took the key's user");
    let standard = STANDARD_NO_PAD.encode(URL_SAFE_NO_PAD.decode(&victim_key).unwrap());
    assert_eq!(s.login(&path(&with_trailing_bits(&standard))).await, victim);
    assert_eq!(public_key_of(&s, old_twin).await, twin);

    assert_eq!(s.login(&path(&lone_twin)).await, old_lone, "the old record was not found");
    assert_eq!(s.login(&path(&lone_key)).await, old_lone, "other spellings now find the old record");
}
