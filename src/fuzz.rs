//! Fuzz targets, shared by `cargo fuzz` (`fuzz/`, nightly) and a stable unit test that replays
//! every input ever kept in `fuzz/corpus/` and `fuzz/artifacts/` (so CI checks each case found).
//! Each target feeds untrusted bytes to one parser and panics only when an invariant breaks.

use std::path::Path;

use crate::auth::sealing::ClaimKey;
use crate::auth::tokens::{Keyring, Kind};
use crate::config::Settings;
use crate::engine::redis::doorbell::Doorbell;
use crate::protocol::auth::bearer_from_protocol;
use crate::protocol::{ClientFrame, RawPayload, ServerFrame, UserId, envelope, validate_public_key};

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
/// A fuzz target: untrusted bytes in, a panic only when an invariant breaks.
pub type Target = fn(&[u8]);

pub const TARGETS: [(&str, Target); 7] = [
    ("client_frame", client_frame),
    ("envelope", build_envelope),
    ("public_key", public_key),
    ("claim_key", claim_key),
    ("token", token),
    ("doorbell", doorbell),
    ("config", config),
];

/// A client's text frame: parsed into a command or a `BadFrame`, never a panic; a parsed frame
/// written back parses to the same frame; a send becomes an envelope that reads back.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(frame) = ClientFrame::parse(text) else { return };
    let json = frame.to_json();
    let again = ClientFrame::parse(&json).expect("a written frame parses");
    assert_eq!(again.to_json(), json, "writing is stable");
    if let ClientFrame::Send(send) = frame
        && let Some(payload) = RawPayload::new(send.payload)
        && payload.stored_len() > 0
        && payload.is_decodable()
    {
        check_envelope(payload, send.payload.get());
    }
}

/// Any string as a payload: its envelope is JSON holding exactly that string.
pub fn build_envelope(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let literal = serde_json::to_string(&text).expect("a string serializes");
    let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&literal).expect("a string literal");
    let payload = RawPayload::new(&raw).expect("a string literal is a payload");
    assert_eq!(payload.stored_len(), literal.len() - 2);
    if payload.stored_len() > 0 {
        check_envelope(payload, &literal);
    }
}

fn check_envelope(payload: RawPayload<'_>, literal: &str) {
    let (from, to) = (UserId::random(), UserId::random());
    let bytes = envelope(&from, &to, payload);
    let text = std::str::from_utf8(&bytes).expect("envelopes are UTF-8");
    let value: serde_json::Value = serde_json::from_str(text).expect("an envelope is JSON");
    let expected: serde_json::Value = serde_json::from_str(literal).expect("the payload literal is JSON");
    assert_eq!(value["payload"], expected);
    assert_eq!(value["from"], from.as_str());
    assert_eq!(value["to"], to.as_str());
    assert!(matches!(ServerFrame::parse(text), Ok(ServerFrame::Delivery(_))), "a client reads it as a delivery");
}

/// A public key as the login path carries it: accepted keys use only the documented alphabet.
pub fn public_key(data: &[u8]) {
    let Ok(key) = std::str::from_utf8(data) else { return };
    if validate_public_key(key, 8192).is_ok() {
        assert!(!key.is_empty() && key.len() <= 8192);
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || "+/=-_ \n\r".contains(c)));
    }
}

/// A registered key as the authentication reads it: recognised as a kind that can be claimed
/// (X25519, RSA) or not; a recognised key can be sealed to.
pub fn claim_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(key) = ClaimKey::parse(text) {
        let alg = key.alg(None);
        assert!(key.seal(alg, "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", &[7; 32]).is_some(), "a recognised key seals");
    }
}

/// A bearer token as a client presents it (header or subprotocol entry): refused with a reason,
/// never a panic, and never accepted without this deployment's signature.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keyring = Keyring::new(&[("k1".into(), b"fuzzing key, not secret".to_vec())], "enigma").expect("a keyring");
    for candidate in [Some(text), bearer_from_protocol(text)].into_iter().flatten() {
        assert!(keyring.verify(candidate, Kind::Access).is_err(), "an unsigned token was accepted");
        assert!(keyring.verify(candidate, Kind::Challenge).is_err(), "an unsigned ticket was accepted");
    }
}

/// Whatever arrives on a user's channel: decoded or ignored, and what decodes encodes back.
pub fn doorbell(data: &[u8]) {
    if let Some(decoded) = Doorbell::decode(data.to_vec()) {
        assert_eq!(Doorbell::decode(decoded.encode()), Some(decoded));
    }
}

/// A configuration file: loaded and validated, or refused with a message; never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(settings) = Settings::from_toml(text) {
        // What validation accepted, the server can use.
        let _ = settings.listen_addr();
        let _ = crate::server::connections::ConnectionLimits::from_settings(&settings.server);
    }
}

/// Runs `target` on every file under `dir`; returns how many it ran.
pub fn replay(dir: &Path, target: Target) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut ran = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
            ran += 1;
        }
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input the fuzzers kept or crashed on, replayed on stable.
    #[test]
    fn replay_every_kept_fuzz_input() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        for (name, target) in TARGETS {
            let corpus = replay(&root.join("corpus").join(name), target);
            let crashes = replay(&root.join("artifacts").join(name), target);
            assert!(corpus > 0, "fuzz/corpus/{name} is empty: seed it");
            eprintln!("{name}: {corpus} corpus inputs, {crashes} past crashes replayed");
        }
    }
}
