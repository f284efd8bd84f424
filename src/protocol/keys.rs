//! Public keys as the directory takes them: opaque strings, checked only for length and
//! alphabet, since clients of several kinds (X25519 base64url, RSA PEM) share one server; and
//! how a key's base64 is read, by the relay (one key, one user: `auth::canonical`) and by the
//! SDK alike.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is empty")]
    Empty,
    #[error("public key is longer than {0} bytes")]
    TooLong(usize),
    #[error("public key contains a character outside base64, base64url, hex and PEM: {0:?}")]
    BadChar(char),
}

/// Keys are opaque strings; only their length and alphabet are checked: base64 (`+/=`),
/// base64url (`-_`), hex, and PEM text (letters, `-`, spaces and line breaks).
pub fn validate_public_key(key: &str, max_len: usize) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong(max_len));
    }
    match key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_' | ' ' | '\n' | '\r')))
    {
        Some(c) => Err(KeyError::BadChar(c)),
        None => Ok(()),
    }
}

/// Standard base64, padding optional, bits after the last whole byte ignored.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes a public key's base64 as the most lenient client does (the web page: base64url mapped
/// to base64, then `atob`): either alphabet, even both in one string; padding optional;
/// whitespace anywhere; the unused bits of the last character ignored. Whatever a client reads
/// as some bytes reads as the same bytes here, so no stricter reading can see two keys (two
/// users) where a client sees one key, with one fingerprint.
pub fn decode_key_base64(text: &str) -> Option<Vec<u8>> {
    let standard: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    KEY_BASE64.decode(standard).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_alphabet() {
        assert!(validate_public_key("LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0=", 100).is_ok());
        assert!(validate_public_key("MIIBIjANBgkq/+ab==", 100).is_ok());
        assert!(validate_public_key("-----BEGIN PUBLIC KEY-----\nAB+/\n-----END PUBLIC KEY-----\n", 100).is_ok());
        assert!(validate_public_key("deadbeef", 100).is_ok());
        assert_eq!(validate_public_key("", 100), Err(KeyError::Empty));
        assert_eq!(validate_public_key("abc", 2), Err(KeyError::TooLong(2)));
        assert_eq!(validate_public_key("a<b", 100), Err(KeyError::BadChar('<')));
        assert_eq!(validate_public_key("a\"b", 100), Err(KeyError::BadChar('"')));
    }

    #[test]
    fn key_base64_is_read_as_leniently_as_clients_read_it() {
        let bytes = [0xFB, 0xEF, 0xFF, 0x10];
        for spelling in ["++//EA", "--__EA==", "+-/_EA", " +-/_\r\nEA= ", "--__EB", "--__EP"] {
            assert_eq!(decode_key_base64(spelling).as_deref(), Some(&bytes[..]), "{spelling}");
        }
        for broken in ["--__E", "--__EA===", "--__=EA", "--__EA.", ""] {
            assert_ne!(decode_key_base64(broken).as_deref(), Some(&bytes[..]), "{broken}");
        }
    }
}
