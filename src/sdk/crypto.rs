//! End-to-end encryption of payloads: HPKE (RFC 9180) in auth mode.
//!
//! Suites: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, and ChaCha20-Poly1305 (format version 1)
//! or AES-256-GCM (version 2, what a browser's WebCrypto can do). We seal version 2, so that
//! every client, the web page included, can open what we send, and open both. Every message gets a
//! fresh encapsulated key (the "fresh symmetric key per message" of the protocol's hybrid
//! encryption), and auth mode mixes the sender's static key into the key schedule, so a
//! recipient who opens a payload with the sender's directory key knows who sealed it.
//!
//! The wire form (documented in `docs/protocol.md`, "Payload format (HPKE)"):
//!
//! ```text
//! payload = base64url-nopad( version || enc (32 bytes) || ciphertext (plaintext + 16-byte tag) )
//! info    = "enigma-hpke-v1" || 0x00 || from || 0x00 || to          (user ids, ASCII)
//! plaintext = JSON {"id": "<uuid v4 chosen by the sender>", "ts": <ms since epoch>, "text": "…"}
//! ```
//!
//! Binding both user ids into `info` means a payload replayed to another recipient, or
//! re-sent under another sender's name, fails authentication. The sender's message id inside
//! the ciphertext lets the recipient drop duplicates of a send that was retried.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use getrandom::SysRng;
use hpke::rand_core::{CryptoRng, UnwrapErr};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Error, OpenError};
use crate::protocol::keys::decode_key_base64;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;
type AesAead = hpke::aead::AesGcm256;

/// First byte of a payload sealed with ChaCha20-Poly1305 (opened, no longer sealed).
pub const PAYLOAD_VERSION_CHACHA: u8 = 1;
/// First byte of a payload sealed with AES-256-GCM: what we seal.
pub const PAYLOAD_VERSION_AESGCM: u8 = 2;
/// The version [`Identity::seal`] writes; a future format gets another number.
pub const PAYLOAD_VERSION: u8 = PAYLOAD_VERSION_AESGCM;
/// Domain separation label at the start of the HPKE `info`.
const INFO_LABEL: &[u8] = b"enigma-hpke-v1";
/// Bytes of an X25519 public key, private key and encapsulated key.
const KEY_LEN: usize = 32;
/// Bytes of the ChaCha20-Poly1305 tag.
const TAG_LEN: usize = 16;

/// Private keys in a key file may carry `=` padding if another tool produced them; we always
/// write them without.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A user's X25519 public key, as registered with `GET /login/{publicKey}`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(<Kem as hpke::Kem>::PublicKey);

impl PublicKey {
    /// Parses a directory key: 32 bytes in base64, read as the relay reads it
    /// ([`decode_key_base64`]: base64url or base64, padding optional), so that every spelling the
    /// directory takes for this key (one key, one user) is this key here too.
    pub fn from_base64url(encoded: &str) -> Result<PublicKey, Error> {
        let bytes = decode_key_base64(encoded).ok_or_else(|| {
            Error::InvalidKey("not base64url (an Enigma public key is 43 base64url characters)".into())
        })?;
        if bytes.len() != KEY_LEN {
            return Err(Error::InvalidKey(format!("{} bytes, an X25519 public key has {KEY_LEN}", bytes.len())));
        }
        <Kem as hpke::Kem>::PublicKey::from_bytes(&bytes).map(PublicKey).map_err(|e| Error::InvalidKey(e.to_string()))
    }

    /// The form registered in the directory: base64url without padding.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.to_bytes())
    }

    /// A short, human-comparable digest of the key (SHA-256, first 16 bytes, hex in groups),
    /// for checking a peer's key out of band.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.to_bytes());
        digest[..16].chunks(2).map(|pair| format!("{:02x}{:02x}", pair[0], pair[1])).collect::<Vec<_>>().join(" ")
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64url())
    }
}

/// A user's key pair. The private half never leaves this process except through
/// [`Identity::secret_base64url`] (for the key file); `Debug` does not print it.
#[derive(Clone)]
pub struct Identity {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: PublicKey,
}

impl Identity {
    /// A new random key pair from the operating system's generator.
    pub fn generate() -> Identity {
        let (secret, public) = Kem::gen_keypair();
        Identity { secret, public: PublicKey(public) }
    }

    /// Restores a key pair from the private key's base64url form.
    pub fn from_secret_base64url(encoded: &str) -> Result<Identity, Error> {
        let bytes =
            KEY_BASE64.decode(encoded.trim()).map_err(|_| Error::InvalidKey("private key is not base64url".into()))?;
        if bytes.len() != KEY_LEN {
            return Err(Error::InvalidKey(format!("private key has {} bytes, expected {KEY_LEN}", bytes.len())));
        }
        let secret =
            <Kem as hpke::Kem>::PrivateKey::from_bytes(&bytes).map_err(|e| Error::InvalidKey(e.to_string()))?;
        let public = PublicKey(Kem::sk_to_pk(&secret));
        Ok(Identity { secret, public })
    }

    pub fn secret_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.to_bytes())
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Seals `plaintext` from user `from` (whose key this is) to user `to`, format version 2
    /// (AES-256-GCM), which every client of this format opens, the web page included.
    pub fn seal(&self, from: &str, to: &str, recipient: &PublicKey, plaintext: &[u8]) -> String {
        // A failure of the operating system's generator panics inside the call (`UnwrapErr`):
        // nothing secure can go on without it.
        self.seal_with::<AesAead>(PAYLOAD_VERSION_AESGCM, from, to, recipient, plaintext, &mut UnwrapErr(SysRng))
    }

    /// Sealing with the ephemeral key drawn from `rng`: the operating system's generator for
    /// every message, a fixed one only for the test vectors (`docs/vectors/`), whose exact bytes
    /// this must reproduce.
    fn seal_with<A: hpke::aead::Aead>(
        &self,
        version: u8,
        from: &str,
        to: &str,
        recipient: &PublicKey,
        plaintext: &[u8],
        rng: &mut impl CryptoRng,
    ) -> String {
        let mode = OpModeS::Auth((self.secret.clone(), self.public.0.clone()));
        // The generator's failure panics inside the call (see `seal`); no error value is left
        // to handle.
        let (enc, ciphertext) =
            hpke::single_shot_seal_with_rng::<A, Kdf, Kem>(&mode, &recipient.0, &info(from, to), plaintext, &[], rng)
                .expect("HPKE seal with a valid X25519 key");
        let mut wire = Vec::with_capacity(1 + KEY_LEN + ciphertext.len());
        wire.push(version);
        wire.extend_from_slice(&enc.to_bytes());
        wire.extend_from_slice(&ciphertext);
        URL_SAFE_NO_PAD.encode(wire)
    }

    /// Opens a payload that user `from` (whose directory key is `sender`) sealed for user
    /// `to` (whose key this is), in either format version.
    pub fn open(&self, from: &str, to: &str, sender: &PublicKey, payload: &str) -> Result<Vec<u8>, OpenError> {
        let wire = URL_SAFE_NO_PAD.decode(payload).map_err(|_| OpenError::Malformed("not base64url"))?;
        let (&version, rest) = wire.split_first().ok_or(OpenError::Malformed("empty"))?;
        if version != PAYLOAD_VERSION_CHACHA && version != PAYLOAD_VERSION_AESGCM {
            return Err(OpenError::UnsupportedVersion(version));
        }
        if rest.len() < KEY_LEN + TAG_LEN {
            return Err(OpenError::Malformed("too short"));
        }
        let (enc, ciphertext) = rest.split_at(KEY_LEN);
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| OpenError::Malformed("bad key"))?;
        let mode = OpModeR::Auth(sender.0.clone());
        let info = info(from, to);
        let opened = if version == PAYLOAD_VERSION_AESGCM {
            hpke::single_shot_open::<AesAead, Kdf, Kem>(&mode, &self.secret, &enc, &info, ciphertext, &[])
        } else {
            hpke::single_shot_open::<Aead, Kdf, Kem>(&mode, &self.secret, &enc, &info, ciphertext, &[])
        };
        opened.map_err(|_| OpenError::Authentication)
    }

    /// Opens a challenge the server sealed to this key for `user_id` (`docs/protocol.md`,
    /// "Authentication"): HPKE base mode, `enc (32) || ciphertext`, the AEAD named by `alg`.
    pub fn open_challenge(&self, user_id: &str, alg: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < KEY_LEN + TAG_LEN {
            return Err(OpenError::Malformed("challenge too short"));
        }
        let (enc, ciphertext) = sealed.split_at(KEY_LEN);
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| OpenError::Malformed("bad key"))?;
        let info = crate::protocol::auth::challenge_info(user_id);
        let opened = if alg == crate::protocol::auth::ALG_HPKE_X25519_AES256GCM {
            hpke::single_shot_open::<AesAead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, &info, ciphertext, &[])
        } else {
            hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, &info, ciphertext, &[])
        };
        opened.map_err(|_| OpenError::Authentication)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The HPKE `info`: a version label and both user ids, so a payload is only valid from this
/// sender to this recipient.
fn info(from: &str, to: &str) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_LABEL.len() + 2 + from.len() + to.len());
    info.extend_from_slice(INFO_LABEL);
    info.push(0);
    info.extend_from_slice(from.as_bytes());
    info.push(0);
    info.extend_from_slice(to.as_bytes());
    info
}

/// What a sealed payload contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Chosen by the sender (a random UUID); the same for every retry of one send.
    pub id: String,
    /// When the sender sealed it, in milliseconds since the Unix epoch (the sender's clock).
    pub ts: u64,
    pub text: String,
}

impl Content {
    /// A new message with a fresh id and the current time.
    pub fn new(text: impl Into<String>) -> Content {
        Content { id: uuid::Uuid::new_v4().to_string(), ts: crate::clock::unix_ms(), text: text.into() }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Content, OpenError> {
        serde_json::from_slice(bytes).map_err(|e| OpenError::InvalidContent(e.to_string()))
    }
}

#[cfg(test)]
mod vectors;

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "0a7c9a52-7a3b-4f0e-9d67-1d1b4c0c1a11";
    const BOB: &str = "1b8d0b63-8b4c-4f1f-8e78-2e2c5d1d2b22";
    const CAROL: &str = "2c9e1c74-9c5d-4a2a-9f89-3f3d6e2e3c33";

    #[test]
    fn bob_opens_what_alice_sealed_for_him() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let content = Content::new("meet at noon");
        let payload = alice.seal(ALICE, BOB, bob.public_key(), &content.to_bytes());
        assert!(!payload.contains("noon"));
        let opened = bob.open(ALICE, BOB, alice.public_key(), &payload).unwrap();
        assert_eq!(Content::from_bytes(&opened).unwrap(), content);
    }

    #[test]
    fn seals_aes_gcm_and_still_opens_chacha() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let payload = alice.seal(ALICE, BOB, bob.public_key(), b"v2");
        assert_eq!(URL_SAFE_NO_PAD.decode(&payload).unwrap()[0], PAYLOAD_VERSION_AESGCM);
        assert_eq!(bob.open(ALICE, BOB, alice.public_key(), &payload).unwrap(), b"v2");
        let old = alice.seal_with::<Aead>(
            PAYLOAD_VERSION_CHACHA,
            ALICE,
            BOB,
            bob.public_key(),
            b"v1",
            &mut UnwrapErr(SysRng),
        );
        assert_eq!(bob.open(ALICE, BOB, alice.public_key(), &old).unwrap(), b"v1");
        // The version byte names the AEAD: a v1 body under a v2 byte does not open.
        let mut relabelled = URL_SAFE_NO_PAD.decode(&old).unwrap();
        relabelled[0] = PAYLOAD_VERSION_AESGCM;
        let relabelled = URL_SAFE_NO_PAD.encode(relabelled);
        assert_eq!(bob.open(ALICE, BOB, alice.public_key(), &relabelled), Err(OpenError::Authentication));
    }

    #[test]
    fn every_seal_is_fresh() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let a = alice.seal(ALICE, BOB, bob.public_key(), b"same");
        let b = alice.seal(ALICE, BOB, bob.public_key(), b"same");
        assert_ne!(a, b, "a fresh encapsulated key per message");
    }

    #[test]
    fn carol_cannot_open_a_message_sealed_for_bob() {
        let (alice, bob, carol) = (Identity::generate(), Identity::generate(), Identity::generate());
        let payload = alice.seal(ALICE, BOB, bob.public_key(), b"for bob only");
        // Neither with her own id nor pretending to be Bob.
        assert_eq!(carol.open(ALICE, CAROL, alice.public_key(), &payload), Err(OpenError::Authentication));
        assert_eq!(carol.open(ALICE, BOB, alice.public_key(), &payload), Err(OpenError::Authentication));
    }

    #[test]
    fn a_payload_is_bound_to_its_sender_and_recipient() {
        let (alice, bob, carol) = (Identity::generate(), Identity::generate(), Identity::generate());
        let payload = alice.seal(ALICE, BOB, bob.public_key(), b"hi");
        // Re-attributed to Carol (with Carol's key): refused.
        assert_eq!(bob.open(CAROL, BOB, carol.public_key(), &payload), Err(OpenError::Authentication));
        // Alice's key but another sender id in the envelope: refused.
        assert_eq!(bob.open(CAROL, BOB, alice.public_key(), &payload), Err(OpenError::Authentication));
        // Replayed to another recipient id: refused.
        assert_eq!(bob.open(ALICE, CAROL, alice.public_key(), &payload), Err(OpenError::Authentication));
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let payload = alice.seal(ALICE, BOB, bob.public_key(), b"pay 10 euros");
        let mut wire = URL_SAFE_NO_PAD.decode(&payload).unwrap();
        for position in [1, 1 + KEY_LEN, wire.len() - 1] {
            wire[position] ^= 0x01;
            let tampered = URL_SAFE_NO_PAD.encode(&wire);
            assert_eq!(bob.open(ALICE, BOB, alice.public_key(), &tampered), Err(OpenError::Authentication));
            wire[position] ^= 0x01;
        }
    }

    #[test]
    fn malformed_payloads_are_named() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let open = |p: &str| bob.open(ALICE, BOB, alice.public_key(), p);
        assert_eq!(open("hello world"), Err(OpenError::Malformed("not base64url")));
        assert_eq!(open(""), Err(OpenError::Malformed("empty")));
        assert_eq!(open(&URL_SAFE_NO_PAD.encode([1u8; 20])), Err(OpenError::Malformed("too short")));
        assert_eq!(open(&URL_SAFE_NO_PAD.encode([3u8; 60])), Err(OpenError::UnsupportedVersion(3)));
    }

    #[test]
    fn keys_round_trip_through_base64url() {
        let id = Identity::generate();
        let restored = Identity::from_secret_base64url(&id.secret_base64url()).unwrap();
        assert_eq!(restored.public_key(), id.public_key());
        let encoded = id.public_key().to_base64url();
        assert_eq!(encoded.len(), 43);
        assert!(encoded.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(&PublicKey::from_base64url(&encoded).unwrap(), id.public_key());
        assert_eq!(&PublicKey::from_base64url(&format!("{encoded}=")).unwrap(), id.public_key());
        // Every spelling the directory takes for this key (docs/security.md, "One key, one user").
        let standard = base64::engine::general_purpose::STANDARD.encode(id.public_key().0.to_bytes());
        assert_eq!(&PublicKey::from_base64url(&standard).unwrap(), id.public_key());
        assert!(PublicKey::from_base64url("LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K").is_err());
        assert!(PublicKey::from_base64url("MIIB/+==").is_err());
        assert!(!format!("{id:?}").contains(&id.secret_base64url()));
        assert_eq!(id.public_key().fingerprint().len(), 39);
    }
}
