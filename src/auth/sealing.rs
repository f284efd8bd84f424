//! Which registered keys can prove possession, and sealing a secret to them.
//!
//! The key kind is read from the registered string alone:
//! - X25519: exactly 32 bytes once decoded from base64 or base64url (padding optional): the
//!   SDK's and CLI's keys. Sealed with HPKE base mode (the SDK's suite, its own `info`).
//! - RSA: a SubjectPublicKeyInfo as DER in base64, as PEM, or as base64 of a PEM (what the
//!   protocol's web client registers). Sealed with RSA-OAEP-SHA256. At least 2048 bits: a
//!   smaller modulus proves nothing.
//!
//! Anything else cannot be claimed: its owner stays an unprotected specification user.
//! Every primitive comes from RustCrypto crates (`hpke`, `rsa`, `spki`).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hpke::{Deserializable, Serializable};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;

use crate::protocol::auth::{ALG_HPKE_X25519, ALG_HPKE_X25519_AES256GCM, ALG_RSA_OAEP_SHA256, challenge_info};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type AesAead = hpke::aead::AesGcm256;

const X25519_LEN: usize = 32;
const MIN_RSA_BITS: usize = 2048;

const fn lenient(alphabet: &'static base64::alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new().with_encode_padding(true).with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}
/// Standard base64, padding optional.
pub const BASE64: GeneralPurpose = lenient(&base64::alphabet::STANDARD);
/// base64url, padding optional.
pub const BASE64URL: GeneralPurpose = lenient(&base64::alphabet::URL_SAFE);

/// Decodes base64 in either alphabet, padding optional, ignoring line breaks and spaces.
pub fn decode_any_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    BASE64.decode(&compact).or_else(|_| BASE64URL.decode(&compact)).ok()
}

/// A registered key that can be challenged.
pub enum ClaimKey {
    X25519(<Kem as hpke::Kem>::PublicKey),
    Rsa(Box<rsa::PublicKey>),
}

impl ClaimKey {
    /// The key behind a registered string, if it is of a kind that can be claimed.
    pub fn parse(registered: &str) -> Option<ClaimKey> {
        let text = registered.trim();
        if text.starts_with("-----BEGIN") {
            return rsa_from_pem(text);
        }
        let bytes = decode_any_base64(text)?;
        if bytes.len() == X25519_LEN {
            return <Kem as hpke::Kem>::PublicKey::from_bytes(&bytes).ok().map(ClaimKey::X25519);
        }
        if bytes.starts_with(b"-----BEGIN") {
            return rsa_from_pem(std::str::from_utf8(&bytes).ok()?);
        }
        rsa_checked(rsa::PublicKey::from_public_key_der(&bytes).ok()?)
    }

    /// The `alg` a client reads to know how to open the sealed secret, given the `alg` the
    /// client asked for (only X25519 keys have a choice: the ChaCha20-Poly1305 suite unless
    /// the client asks for AES-256-GCM).
    pub fn alg(&self, wanted: Option<&str>) -> &'static str {
        match self {
            ClaimKey::X25519(_) if wanted == Some(ALG_HPKE_X25519_AES256GCM) => ALG_HPKE_X25519_AES256GCM,
            ClaimKey::X25519(_) => ALG_HPKE_X25519,
            ClaimKey::Rsa(_) => ALG_RSA_OAEP_SHA256,
        }
    }

    /// Seals `secret` with `alg` (from [`ClaimKey::alg`]) so that only the private key's
    /// holder can read it; `user_id` is bound into HPKE's `info`. `None` only if the system's
    /// random generator fails.
    pub fn seal(&self, alg: &str, user_id: &str, secret: &[u8]) -> Option<Vec<u8>> {
        match self {
            ClaimKey::X25519(public) => {
                let info = challenge_info(user_id);
                // The crate draws its randomness from the OS generator; a failure there is
                // reported by panicking inside the call, which no input can cause.
                let (enc, ciphertext) = if alg == ALG_HPKE_X25519_AES256GCM {
                    hpke::single_shot_seal::<AesAead, Kdf, Kem>(&hpke::OpModeS::Base, public, &info, secret, &[])
                        .ok()?
                } else {
                    hpke::single_shot_seal::<Aead, Kdf, Kem>(&hpke::OpModeS::Base, public, &info, secret, &[]).ok()?
                };
                let mut sealed = enc.to_bytes().to_vec();
                sealed.extend_from_slice(&ciphertext);
                Some(sealed)
            }
            ClaimKey::Rsa(public) => public.oaep_encrypt::<Sha256>(secret).ok(),
        }
    }
}

fn rsa_from_pem(pem: &str) -> Option<ClaimKey> {
    rsa_checked(rsa::PublicKey::from_public_key_pem(pem.trim()).ok()?)
}

fn rsa_checked(key: rsa::PublicKey) -> Option<ClaimKey> {
    (key.n().bit_width() as usize >= MIN_RSA_BITS).then(|| ClaimKey::Rsa(Box::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM_B64: &str = include_str!("../../tests/it/fixtures/rsa2048-pem.b64");
    const DER_B64: &str = include_str!("../../tests/it/fixtures/rsa2048-der.b64");

    #[test]
    fn recognises_the_kinds_from_the_registered_string() {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([9u8; 32]);
        assert_eq!(ClaimKey::parse(&x).unwrap().alg(None), ALG_HPKE_X25519);
        let padded = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(ClaimKey::parse(&padded).unwrap().alg(None), ALG_HPKE_X25519);
        assert_eq!(ClaimKey::parse(PEM_B64.trim()).unwrap().alg(None), ALG_RSA_OAEP_SHA256);
        assert_eq!(ClaimKey::parse(DER_B64.trim()).unwrap().alg(None), ALG_RSA_OAEP_SHA256);
        let pem = String::from_utf8(BASE64.decode(PEM_B64.trim()).unwrap()).unwrap();
        assert_eq!(ClaimKey::parse(&pem).unwrap().alg(None), ALG_RSA_OAEP_SHA256);
        for other in ["", "abc", "not base64 at all!", &"A".repeat(44 * 3), "deadbeef", "-----BEGIN PUBLIC KEY-----"] {
            assert!(ClaimKey::parse(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn seals_differently_each_time() {
        let key = ClaimKey::parse(DER_B64.trim()).unwrap();
        let alg = key.alg(None);
        let (a, b) = (key.seal(alg, "u", b"secret").unwrap(), key.seal(alg, "u", b"secret").unwrap());
        assert_eq!(a.len(), 256);
        assert_ne!(a, b);
    }
}
