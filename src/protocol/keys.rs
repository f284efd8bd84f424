//! Public keys as the directory takes them: opaque strings, checked only for length and
//! alphabet, since clients of several kinds (X25519 base64url, RSA PEM) share one server.

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
}
