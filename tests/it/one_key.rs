//! One key, one user: every spelling of a recognised key (X25519 in base64/base64url with or
//! without padding; RSA as DER-b64, PEM, base64 of PEM) logs in as the same user, whose stored
//! `publicKey` stays the first registrant's string byte for byte. Records made before the
//! index was normalised (exact-string index entries) are found again and never merged.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::harness::{Backend, Redis, Server, ServerConfig};

const PEM_B64: &str = include_str!("fixtures/rsa2048-pem.b64");
const DER_B64: &str = include_str!("fixtures/rsa2048-der.b64");

both_engines!(
    with_cluster:
    every_spelling_of_an_x25519_key_is_one_user,
    every_encoding_of_an_rsa_key_is_one_user,
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
