//! Which registered keys can prove possession, and sealing a secret to them.
//!
//! A registered string is first *read* ([`KeyReading`]), the way the most lenient client of
//! this relay reads it, so that every spelling a client takes for one key reads as that key here
//! too (`super::canonical` indexes by the reading: one key, one user):
//! - 32 bytes once decoded from base64 ([`decode_key_base64`]: either alphabet, even mixed;
//!   padding optional; whitespace anywhere; unused trailing bits ignored — what the web page's
//!   `atob` accepts): an X25519 key, the SDK's and CLI's. Sealed with HPKE base mode (the SDK's
//!   suite, its own `info`).
//! - An RSA public key, as SubjectPublicKeyInfo or PKCS#1 (`RSA PUBLIC KEY`, what OpenSSL's
//!   `-RSAPublicKey_out` and node-forge's `publicKeyToRSAPublicKeyPem` write), each as DER in
//!   base64, as PEM (any line width and line ending), or as base64 of a PEM (what the protocol's
//!   web client registers). Sealed with RSA-OAEP-SHA256.
//!
//! Only some of those can be *claimed* ([`ClaimKey`]): an X25519 key in its canonical encoding
//! (RFC 7748: the u-coordinate below 2^255 − 19, so the top bit clear — every library's public
//! keys), not of small order; an RSA key of at least 2048 bits (a smaller modulus proves
//! nothing). Anything else cannot be claimed: its owner stays an unprotected specification user.
//! Every primitive comes from RustCrypto crates (`hpke`, `rsa`, `spki`).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use getrandom::SysRng;
use hpke::rand_core::{CryptoRng, UnwrapErr};
use hpke::{Deserializable, Serializable};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;

use crate::protocol::auth::{ALG_HPKE_X25519, ALG_HPKE_X25519_AES256GCM, ALG_RSA_OAEP_SHA256, challenge_info};
use crate::protocol::keys::decode_key_base64;

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

/// What a registered string reads as, when it reads as a key of a recognised kind.
pub enum KeyReading {
    /// 32 bytes: an X25519 public key (claimable only in its canonical encoding).
    X25519([u8; X25519_LEN]),
    /// An RSA public key, of any size the `rsa` crate reads.
    Rsa(Box<rsa::PublicKey>),
}

impl KeyReading {
    /// The key behind a registered string, if it is of a recognised kind.
    pub fn read(registered: &str) -> Option<KeyReading> {
        let text = registered.trim();
        if let Some(key) = rsa_from_pem(text) {
            return Some(key);
        }
        let bytes = decode_key_base64(text)?;
        if let Ok(raw) = <[u8; X25519_LEN]>::try_from(bytes.as_slice()) {
            return Some(KeyReading::X25519(raw));
        }
        if bytes.starts_with(b"-----BEGIN") {
            return rsa_from_pem(std::str::from_utf8(&bytes).ok()?);
        }
        rsa_from_der(&bytes)
    }
}

/// `-----BEGIN <label>-----`, base64 (read by [`decode_key_base64`], so any line width and
/// line ending), `-----END <label>-----`: the label and the body's bytes.
fn read_pem(text: &str) -> Option<(&str, Vec<u8>)> {
    let rest = text.trim().strip_prefix("-----BEGIN ")?;
    let (label, rest) = rest.split_once("-----")?;
    let (body, end) = rest.rsplit_once("-----END ")?;
    let closed = end.trim_end().strip_prefix(label)? == "-----";
    closed.then(|| decode_key_base64(body).map(|der| (label, der)))?
}

/// An RSA key in PEM: `PUBLIC KEY` or `RSA PUBLIC KEY`, whichever structure the body holds
/// (as node-forge reads it).
fn rsa_from_pem(text: &str) -> Option<KeyReading> {
    let (label, der) = read_pem(text)?;
    matches!(label, "PUBLIC KEY" | "RSA PUBLIC KEY").then(|| rsa_from_der(&der))?
}

/// An RSA key as DER: a SubjectPublicKeyInfo, or a bare PKCS#1 `RSAPublicKey`.
fn rsa_from_der(der: &[u8]) -> Option<KeyReading> {
    let key = rsa::PublicKey::from_public_key_der(der).or_else(|_| rsa::PublicKey::from_pkcs1_der(der)).ok()?;
    Some(KeyReading::Rsa(Box::new(key)))
}

/// Whether 32 bytes are an X25519 public key as every library writes one (RFC 7748 §5): the
/// u-coordinate reduced modulo p = 2^255 − 19, so also the top bit clear. X25519 masks that bit
/// and reduces modulo p, so any other 32 bytes name the point of a canonical key — but HPKE
/// binds the exact bytes into every seal (RFC 9180 §4.1, §7.1.1), so nothing sealed to them
/// opens with that key's owner's client, and clients fingerprint the exact bytes: another key.
pub fn is_canonical_x25519(u: &[u8; X25519_LEN]) -> bool {
    // p little-endian: 0xED, thirty 0xFF, 0x7F. Compare from the most significant byte.
    let p = |i: usize| match i {
        0 => 0xED,
        31 => 0x7F,
        _ => 0xFF,
    };
    (0..X25519_LEN).rev().find(|&i| u[i] != p(i)).is_some_and(|i| u[i] < p(i))
}

/// The canonical u-coordinates of the points of small order (libsodium's list, less p and
/// p + 1, which [`is_canonical_x25519`] already refuses): a seal to one of them has an all-zero
/// shared secret, which HPKE refuses, so such a key could never answer a challenge.
const SMALL_ORDER: [[u8; X25519_LEN]; 5] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09,
        0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44,
        0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
    ],
    {
        // p − 1
        let mut minus_one = [0xFF; 32];
        minus_one[0] = 0xEC;
        minus_one[31] = 0x7F;
        minus_one
    },
];

/// A registered key that can be challenged.
pub enum ClaimKey {
    X25519(<Kem as hpke::Kem>::PublicKey),
    Rsa(Box<rsa::PublicKey>),
}

impl ClaimKey {
    /// The key behind a registered string, if it is of a kind that can be claimed.
    pub fn parse(registered: &str) -> Option<ClaimKey> {
        match KeyReading::read(registered)? {
            KeyReading::X25519(u) if is_canonical_x25519(&u) && !SMALL_ORDER.contains(&u) => {
                <Kem as hpke::Kem>::PublicKey::from_bytes(&u).ok().map(ClaimKey::X25519)
            }
            KeyReading::X25519(_) => None,
            KeyReading::Rsa(key) => (key.n().bit_width() as usize >= MIN_RSA_BITS).then_some(ClaimKey::Rsa(key)),
        }
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
    /// holder can read it; `user_id` is bound into HPKE's `info`. `None` only if sealing fails,
    /// which no valid key allows.
    pub fn seal(&self, alg: &str, user_id: &str, secret: &[u8]) -> Option<Vec<u8>> {
        // A failure of the operating system's generator panics inside the call (`UnwrapErr`),
        // which no input can cause.
        self.seal_with_rng(alg, user_id, secret, &mut UnwrapErr(SysRng))
    }

    /// [`ClaimKey::seal`] with HPKE's ephemeral key or RSA-OAEP's seed drawn from `rng`: the
    /// operating system's generator for every challenge, a fixed one only for the test vectors
    /// (`docs/vectors/`), whose exact bytes this must reproduce.
    pub(super) fn seal_with_rng(
        &self,
        alg: &str,
        user_id: &str,
        secret: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Option<Vec<u8>> {
        match self {
            ClaimKey::X25519(public) => {
                let info = challenge_info(user_id);
                let base = hpke::OpModeS::Base;
                let (enc, ciphertext) = if alg == ALG_HPKE_X25519_AES256GCM {
                    hpke::single_shot_seal_with_rng::<AesAead, Kdf, Kem>(&base, public, &info, secret, &[], rng).ok()?
                } else {
                    hpke::single_shot_seal_with_rng::<Aead, Kdf, Kem>(&base, public, &info, secret, &[], rng).ok()?
                };
                let mut sealed = enc.to_bytes().to_vec();
                sealed.extend_from_slice(&ciphertext);
                Some(sealed)
            }
            ClaimKey::Rsa(public) => public.oaep_encrypt_with_rng::<Sha256, _>(rng, secret).ok(),
        }
    }
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
    fn an_rsa_key_in_pkcs1_is_the_same_key() {
        use rsa::pkcs1::{EncodeRsaPublicKey, LineEnding};
        let Some(KeyReading::Rsa(spki)) = KeyReading::read(DER_B64) else { panic!("the fixture is an RSA key") };
        let der = BASE64.encode(spki.to_pkcs1_der().unwrap().as_bytes());
        let pem = spki.to_pkcs1_pem(LineEnding::CRLF).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"), "{pem}");
        for spelling in [der, pem.clone(), BASE64URL.encode(&pem)] {
            let Some(KeyReading::Rsa(key)) = KeyReading::read(&spelling) else { panic!("{spelling}") };
            assert!(key == spki, "{spelling}");
            assert_eq!(ClaimKey::parse(&spelling).unwrap().alg(None), ALG_RSA_OAEP_SHA256);
        }
        // Either label, whichever structure the body holds (node-forge reads both).
        let swapped = pem.replace("RSA PUBLIC KEY", "PUBLIC KEY");
        assert!(matches!(KeyReading::read(&swapped), Some(KeyReading::Rsa(key)) if key == spki));
        for broken in [pem.replace("END RSA", "END"), pem.replace("RSA PUBLIC KEY", "CERTIFICATE")] {
            assert!(KeyReading::read(&broken).is_none(), "{broken}");
        }
    }

    /// Little-endian 32 bytes of `top` (the most significant byte), `middle` and `low`.
    fn u(low: u8, middle: u8, top: u8) -> [u8; 32] {
        let mut u = [middle; 32];
        (u[0], u[31]) = (low, top);
        u
    }

    #[test]
    fn only_canonical_x25519_encodings_can_be_claimed() {
        let spell = |u: [u8; 32]| BASE64URL.encode(u);
        // p = 2^255 - 19 and above (the top bit set included) name the point of u - p, or of u
        // with that bit masked: not an encoding any library writes.
        for high in [u(0xED, 0xFF, 0x7F), u(0xEE, 0xFF, 0x7F), u(0xFF, 0xFF, 0x7F), u(9, 9, 0x89), [0xFF; 32]] {
            assert!(!is_canonical_x25519(&high), "{high:02x?}");
            assert!(matches!(KeyReading::read(&spell(high)), Some(KeyReading::X25519(read)) if read == high));
            assert!(ClaimKey::parse(&spell(high)).is_none(), "{high:02x?}");
        }
        for canonical in [u(0xEB, 0xFF, 0x7F), u(9, 9, 0x09), u(0xFF, 0xFF, 0x7E), u(2, 0, 0)] {
            assert!(is_canonical_x25519(&canonical), "{canonical:02x?}");
            let key = ClaimKey::parse(&spell(canonical)).unwrap();
            assert!(key.seal(ALG_HPKE_X25519, "u", b"secret").is_some(), "{canonical:02x?}");
        }
        // The points of small order are canonical, but no seal to them exists.
        for small in SMALL_ORDER {
            assert!(is_canonical_x25519(&small));
            assert!(ClaimKey::parse(&spell(small)).is_none(), "{small:02x?}");
            let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&small).unwrap();
            let seal = hpke::single_shot_seal::<Aead, Kdf, Kem>(&hpke::OpModeS::Base, &public, b"", b"s", b"");
            assert!(seal.is_err(), "HPKE seals to {small:02x?}");
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
