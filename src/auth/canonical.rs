//! One key, one user: what a public key is indexed by.
//!
//! A key of a recognised kind ([`ClaimKey`]: X25519, RSA) has many spellings (base64 with or
//! without padding, base64url, DER-b64, PEM, base64 of PEM, surrounding spaces); the index
//! uses its canonical bytes instead (the 32 raw X25519 bytes; the RSA key re-encoded as SPKI
//! DER), so every spelling finds the same user. Any other key is indexed by its exact string,
//! as before. The stored `publicKey` is never rewritten: the first registrant's string is
//! what everybody gets back.

use rsa::pkcs8::EncodePublicKey;

use super::sealing::ClaimKey;

/// Starts every canonical material: 0xFF never occurs in UTF-8, so no exact string (the
/// material of unrecognised keys, and of every key indexed before normalisation) can equal
/// a canonical one.
const CANONICAL: u8 = 0xFF;

/// The bytes a key is indexed by.
pub struct IndexMaterial {
    /// Canonical bytes for a recognised kind, else the exact string.
    pub primary: Vec<u8>,
    /// For a recognised kind: the exact string, under which a record made before
    /// normalisation may be indexed (docs/security.md "One key, one user").
    pub legacy: Option<Vec<u8>>,
}

/// What `public_key` is indexed by.
pub fn index_material(public_key: &str) -> IndexMaterial {
    match canonical_bytes(public_key) {
        Some(canonical) => IndexMaterial { primary: canonical, legacy: Some(public_key.as_bytes().to_vec()) },
        None => IndexMaterial { primary: public_key.as_bytes().to_vec(), legacy: None },
    }
}

/// The canonical bytes of a key of a recognised kind (tagged with its kind).
fn canonical_bytes(public_key: &str) -> Option<Vec<u8>> {
    let (kind, bytes) = match ClaimKey::parse(public_key)? {
        ClaimKey::X25519(key) => (b'x', hpke::Serializable::to_bytes(&key).to_vec()),
        ClaimKey::Rsa(key) => (b'r', key.to_public_key_der().ok()?.into_vec()),
    };
    let mut material = vec![CANONICAL, kind];
    material.extend_from_slice(&bytes);
    Some(material)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    use super::*;

    #[test]
    fn every_spelling_of_an_x25519_key_is_one_material() {
        let raw: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(0xF8)).collect();
        let spellings =
            [STANDARD.encode(&raw), STANDARD_NO_PAD.encode(&raw), URL_SAFE.encode(&raw), URL_SAFE_NO_PAD.encode(&raw)];
        assert_ne!(spellings[0], spellings[2], "the key must differ between alphabets to prove anything");
        let first = index_material(&spellings[0]);
        assert_eq!(first.primary[..2], [CANONICAL, b'x']);
        for s in &spellings {
            let m = index_material(s);
            assert_eq!(m.primary, first.primary, "{s}");
            assert_eq!(m.legacy.as_deref(), Some(s.as_bytes()));
        }
        assert_eq!(index_material(&format!(" {} ", spellings[1])).primary, first.primary);
    }

    #[test]
    fn unrecognised_keys_are_indexed_exactly() {
        for key in ["pk-alice", "", "bm90IGEga2V5", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"] {
            let m = index_material(key);
            assert_eq!(m.primary, key.as_bytes());
            assert!(m.legacy.is_none());
        }
    }
}
