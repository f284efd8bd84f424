//! The SDK against the test vectors (`docs/vectors/`, generated independently of this code by
//! `tests/it/vectors/`): its keys read as the vectors' keys, it opens both payload versions and
//! seals them to the exact bytes when the ephemeral key is fixed, it refuses every refused
//! payload for its reason, and it opens the X25519 challenges.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::*;
use crate::auth::vectors::{FixedRng, load, text, unhex};

fn identity(vectors: &Value, name: &Value) -> Identity {
    Identity::from_secret_base64url(text(&vectors["x25519"][text(name)]["privateKey"])).unwrap()
}

fn public(vectors: &Value, name: &Value) -> PublicKey {
    PublicKey::from_base64url(text(&vectors["x25519"][text(name)]["publicKey"])).unwrap()
}

#[test]
fn keys_read_as_the_vectors_keys() {
    let vectors = load();
    for (name, key) in vectors["x25519"].as_object().unwrap() {
        let identity = Identity::from_secret_base64url(text(&key["privateKey"])).unwrap();
        assert_eq!(identity.public_key().to_base64url(), text(&key["publicKey"]), "{name}");
        assert_eq!(identity.public_key().fingerprint(), text(&key["fingerprint"]), "{name}");
        assert_eq!(identity.secret_base64url(), text(&key["privateKey"]), "{name}");
        assert_eq!(URL_SAFE_NO_PAD.decode(text(&key["publicKey"])).unwrap(), unhex(&key["publicHex"]), "{name}");
    }
}

#[test]
fn opens_and_reproduces_both_payload_versions() {
    let vectors = load();
    let payloads = vectors["payloads"].as_array().unwrap();
    let versions: Vec<u64> = payloads.iter().map(|p| p["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [2, 1]);
    for p in payloads {
        let name = text(&p["name"]);
        let (from, to) = (text(&p["from"]), text(&p["to"]));
        let recipient = identity(&vectors, &p["recipient"]);
        let opened = recipient.open(from, to, &public(&vectors, &p["sender"]), text(&p["payload"])).unwrap();
        assert_eq!(opened, text(&p["plaintext"]).as_bytes(), "{name}");
        Content::from_bytes(&opened).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info(from, to), unhex(&p["info"]), "{name}");

        let sender = identity(&vectors, &p["sender"]);
        let plaintext = text(&p["plaintext"]).as_bytes();
        let to_key = recipient.public_key();
        let ikm_e = unhex(&p["ikmE"]);
        let mut rng = FixedRng::new(&ikm_e);
        let sealed = match p["version"].as_u64() {
            Some(2) => sender.seal_with::<AesAead>(PAYLOAD_VERSION_AESGCM, from, to, to_key, plaintext, &mut rng),
            Some(1) => sender.seal_with::<Aead>(PAYLOAD_VERSION_CHACHA, from, to, to_key, plaintext, &mut rng),
            other => panic!("{name}: version {other:?}"),
        };
        rng.finish();
        assert_eq!(sealed, text(&p["payload"]), "{name}");
    }
}

#[test]
fn refuses_every_refused_payload_for_its_reason() {
    let vectors = load();
    let refused = vectors["refusedPayloads"].as_array().unwrap();
    assert!(refused.len() >= 8);
    for p in refused {
        let recipient = identity(&vectors, &p["recipient"]);
        let sender = public(&vectors, &p["sender"]);
        let error = recipient.open(text(&p["from"]), text(&p["to"]), &sender, text(&p["payload"])).unwrap_err();
        let reason = match error {
            OpenError::Authentication => "authentication",
            OpenError::UnsupportedVersion(_) => "unsupported_version",
            OpenError::Malformed(_) => "malformed",
            other => panic!("{}: {other}", p["name"]),
        };
        assert_eq!(reason, text(&p["refused"]), "{}", p["name"]);
    }
}

#[test]
fn opens_the_x25519_challenges_and_answers_them() {
    let vectors = load();
    let mut opened = 0;
    for c in vectors["challenges"].as_array().unwrap().iter().filter(|c| c["key"] != "rsa") {
        let bob = identity(&vectors, &c["key"]);
        let sealed = STANDARD.decode(text(&c["response"]["sealed"])).unwrap();
        let secret = bob.open_challenge(text(&c["userId"]), text(&c["response"]["alg"]), &sealed).unwrap();
        assert_eq!(secret, unhex(&c["secret"]), "{}", c["name"]);
        assert_eq!(STANDARD.encode(&secret), text(&c["answer"]["secret"]), "{}", c["name"]);
        opened += 1;
    }
    assert_eq!(opened, 2, "both suites");
    let other = vectors["refusedAnswers"].as_array().unwrap().iter().find(|r| r["openedAs"].is_string()).unwrap();
    let c = vectors["challenges"].as_array().unwrap().iter().find(|c| c["name"] == other["challenge"]).unwrap();
    let sealed = STANDARD.decode(text(&c["response"]["sealed"])).unwrap();
    let bob = identity(&vectors, &c["key"]);
    assert_eq!(
        bob.open_challenge(text(&other["openedAs"]), text(&c["response"]["alg"]), &sealed),
        Err(OpenError::Authentication)
    );
}
