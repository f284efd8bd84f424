//! The authentication exchange's agreed names: how a challenge is sealed, for the server that
//! seals it and the clients that open it (see `docs/protocol.md`, "Authentication").

/// `alg` of a challenge sealed to an X25519 key: HPKE (RFC 9180) base mode,
/// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305; `sealed` = enc (32) || ct.
pub const ALG_HPKE_X25519: &str = "hpke-x25519";
/// `alg` of a challenge sealed to an X25519 key with HPKE's AES-256-GCM suite
/// (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), same `info` and layout; sealed
/// only when the client asks for it (`alg` in the request): the web page's WebCrypto has no
/// ChaCha20-Poly1305.
pub const ALG_HPKE_X25519_AES256GCM: &str = "hpke-x25519-aes256gcm";
/// `alg` of a challenge sealed to an RSA key: RSA-OAEP with SHA-256 (and MGF1-SHA-256), no label.
pub const ALG_RSA_OAEP_SHA256: &str = "rsa-oaep-sha256";
/// Domain separation label at the start of a challenge's HPKE `info` (distinct from the
/// payloads' `enigma-hpke-v1`, so a sealed challenge is never a valid payload or the reverse).
const CHALLENGE_INFO_LABEL: &[u8] = b"enigma-challenge-v1";

/// The HPKE `info` of a challenge for `user_id`: `"enigma-challenge-v1" || 0x00 || userId`.
pub fn challenge_info(user_id: &str) -> Vec<u8> {
    let mut info = Vec::with_capacity(CHALLENGE_INFO_LABEL.len() + 1 + user_id.len());
    info.extend_from_slice(CHALLENGE_INFO_LABEL);
    info.push(0);
    info.extend_from_slice(user_id.as_bytes());
    info
}

/// The bearer token in a `Sec-WebSocket-Protocol` entry, if this entry is one.
pub fn bearer_from_protocol(entry: &str) -> Option<&str> {
    entry.trim().strip_prefix(super::BEARER_PROTOCOL_PREFIX).filter(|t| !t.is_empty())
}
