//! The server's side of the test vectors (`docs/vectors/`, generated independently of this
//! code by `tests/it/vectors/`): every challenge is sealed to the vector's exact bytes when the
//! vector's randomness is fixed, the vector's answers verify against their tickets and a wrong
//! one is refused, the vector's token opens its user's socket in both forms a client shows it,
//! and each refused token is refused for its reason.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs8::DecodePrivateKey;
use serde_json::Value;

use super::sealing::ClaimKey;
use super::settings::parse_key_entry;
use super::tokens::{Keyring, Kind, sha256_hex};
use super::{Refusal, bearer};

/// The vectors, read as any implementation would read them.
pub(crate) fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/vectors/v1.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let vectors: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(vectors["version"], 1, "{path}: another version of the vectors");
    vectors
}

pub(crate) fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

pub(crate) fn unhex(hex: &Value) -> Vec<u8> {
    let hex = text(hex);
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// Hands a library exactly the random bytes a vector records: the generator's own one.
#[path = "../../tests/it/vectors/fixed_rng.rs"]
mod fixed_rng;
pub(crate) use fixed_rng::FixedRng;

fn keyring(vectors: &Value) -> Keyring {
    let tokens = &vectors["tokens"];
    let key = parse_key_entry(text(&tokens["tokenKey"])).unwrap();
    Keyring::new(&[key], text(&tokens["audience"])).unwrap()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no vector {name}"))
}

#[test]
fn challenges_are_sealed_to_the_vectors_bytes() {
    let vectors = load();
    let challenges = vectors["challenges"].as_array().unwrap();
    assert_eq!(challenges.len(), 3, "two X25519 suites and RSA");
    for c in challenges {
        let name = text(&c["name"]);
        let key = ClaimKey::parse(text(&c["registered"])).unwrap_or_else(|| panic!("{name}: not claimable"));
        let alg = key.alg(c["request"]["alg"].as_str());
        assert_eq!(alg, text(&c["response"]["alg"]), "{name}");
        let randomness = if key_is_rsa(&key) { unhex(&c["oaepSeed"]) } else { unhex(&c["ikmE"]) };
        let mut rng = FixedRng::new(&randomness);
        let sealed = key.seal_with_rng(alg, text(&c["userId"]), &unhex(&c["secret"]), &mut rng).unwrap();
        rng.finish();
        assert_eq!(STANDARD.encode(sealed), text(&c["response"]["sealed"]), "{name}");
    }
}

fn key_is_rsa(key: &ClaimKey) -> bool {
    matches!(key, ClaimKey::Rsa(_))
}

/// The client's half of the RSA challenge, which no client of this repository does (the SDK and
/// the page hold X25519 keys): the vector's private key opens the sealed secret.
#[test]
fn the_rsa_challenge_opens_with_the_vectors_private_key() {
    let vectors = load();
    let private = rsa::PrivateKey::from_pkcs8_pem(text(&vectors["rsa"]["privateKeyPkcs8Pem"])).unwrap();
    let c = named(&vectors["challenges"], "rsa-oaep-sha256");
    let sealed = STANDARD.decode(text(&c["response"]["sealed"])).unwrap();
    let secret = private.oaep_decrypt::<rsa::sha2::Sha256>(&sealed).unwrap();
    assert_eq!(secret, unhex(&c["secret"]));
    assert_eq!(STANDARD.encode(&secret), text(&c["answer"]["secret"]));
}

#[test]
fn answers_verify_and_a_wrong_one_is_refused() {
    let vectors = load();
    let keyring = keyring(&vectors);
    for c in vectors["challenges"].as_array().unwrap() {
        let name = text(&c["name"]);
        assert_eq!(c["answer"]["challenge"], c["response"]["challenge"], "{name}: the ticket goes back as it came");
        let ticket = keyring.verify(text(&c["answer"]["challenge"]), Kind::Challenge).unwrap();
        assert_eq!(serde_json::to_value(&ticket).unwrap(), c["ticketClaims"], "{name}");
        // The ticket is what this server signs for those claims, byte for byte.
        assert_eq!(keyring.sign(&ticket), text(&c["response"]["challenge"]), "{name}");
        assert_eq!(c["response"]["expiresAt"], ticket.exp * 1000, "{name}");
        assert_eq!(ticket.kfp, sha256_hex(text(&c["registered"]).as_bytes()), "{name}");
        assert_eq!(ticket.answered_by(text(&c["answer"]["secret"])), Ok(()), "{name}");
    }
    let refused = &vectors["refusedAnswers"];
    let wrong = named(refused, "wrong-secret");
    assert_eq!(wrong["refused"], "unauthorized");
    let ticket = keyring.verify(text(&wrong["answer"]["challenge"]), Kind::Challenge).unwrap();
    assert_eq!(ticket.answered_by(text(&wrong["answer"]["secret"])), Err(Refusal::WrongSecret));
    // Its message is the 401's (docs/protocol.md, "POST /auth/token").
    assert_eq!(Refusal::WrongSecret.message(), "challenge answer refused: request a new challenge");
}

#[test]
fn the_token_opens_its_users_socket_in_either_form() {
    let vectors = load();
    let keyring = keyring(&vectors);
    let tokens = &vectors["tokens"];
    let (user, registered, token) = (text(&tokens["userId"]), text(&tokens["registered"]), text(&tokens["token"]));
    let claims = keyring.verify(token, Kind::Access).unwrap();
    assert_eq!(serde_json::to_value(&claims).unwrap(), tokens["claims"]);
    assert_eq!(claims.admits(user, registered), Ok(()));
    assert_eq!(tokens["response"]["token"], token, "what POST /auth/token answers");
    assert_eq!(tokens["response"]["expiresAt"], claims.exp * 1000);
    for request in tokens["requests"].as_array().unwrap() {
        let mut headers = HeaderMap::new();
        for (name, value) in request["headers"].as_object().unwrap() {
            headers.insert(HeaderName::try_from(name.as_str()).unwrap(), HeaderValue::from_str(text(value)).unwrap());
        }
        assert_eq!(bearer(&headers), Ok(Some(token.to_owned())), "{}", request["name"]);
    }
}

#[test]
fn each_refused_token_is_refused_for_its_reason() {
    let vectors = load();
    let keyring = keyring(&vectors);
    let registered = text(&vectors["tokens"]["registered"]);
    let refused = vectors["tokens"]["refused"].as_array().unwrap();
    assert!(refused.len() >= 3);
    for t in refused {
        let verdict = keyring
            .verify(text(&t["token"]), Kind::Access)
            .and_then(|claims| claims.admits(text(&t["userId"]), registered));
        assert_eq!(verdict.map_err(Refusal::as_str), Err(text(&t["refused"])), "{}", t["name"]);
    }
}
