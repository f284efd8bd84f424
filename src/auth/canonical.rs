//! One key, one user: what a public key is indexed by.
//!
//! A key of a recognised kind ([`KeyReading`]: 32 bytes from base64, i.e. X25519; RSA) has many
//! spellings, and the index uses what they read as instead (the 32 bytes; the RSA key re-encoded
//! as SubjectPublicKeyInfo DER), so every spelling finds the same user. The reading is as lenient
//! as the most lenient client's (base64 in either alphabet or both, padding optional, whitespace
//! anywhere, the unused trailing bits ignored, as the web page's `atob` reads it; RSA as
//! SubjectPublicKeyInfo or PKCS#1, DER-b64, PEM or base64 of PEM): two strings that any client
//! here reads as one key, and so shows with one fingerprint, are one user. 32 bytes are indexed
//! as they are, every bit: an X25519 key with its top bit set (or u ≥ 2^255 − 19) is another key
//! to HPKE and to every client's fingerprint, so it is another user — one that can never be
//! claimed ([`super::sealing::is_canonical_x25519`]). Any other key is indexed by its exact
//! string, as before. The stored `publicKey` is never rewritten: the first registrant's string is
//! what everybody gets back.

use rsa::pkcs8::EncodePublicKey;

use super::sealing::KeyReading;

/// Starts every canonical material: 0xFF never occurs in UTF-8, so no exact string (the
/// material of unrecognised keys, and of every key indexed before normalisation) can equal
/// a canonical one.
const CANONICAL: u8 = 0xFF;

/// The bytes a key is indexed by.
pub struct IndexMaterial {
    /// Canonical bytes for a recognised kind, else the exact string.
    pub primary: Vec<u8>,
    /// For a recognised kind: the exact string, under which a record made before
    /// normalisation (or before this reading recognised its spelling) may be indexed
    /// (docs/security.md "One key, one user").
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
    let (kind, bytes) = match KeyReading::read(public_key)? {
        KeyReading::X25519(raw) => (b'x', raw.to_vec()),
        KeyReading::Rsa(key) => (b'r', key.to_public_key_der().ok()?.into_vec()),
    };
    let mut material = vec![CANONICAL, kind];
    material.extend_from_slice(&bytes);
    Some(material)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use proptest::prelude::*;
    use rsa::pkcs1::{EncodeRsaPublicKey, LineEnding};
    use rsa::pkcs8::DecodePublicKey;

    use super::super::sealing::{ClaimKey, is_canonical_x25519};
    use super::*;

    const DER_B64: &str = include_str!("../../tests/it/fixtures/rsa2048-der.b64");

    fn x25519_material(raw: &[u8]) -> Vec<u8> {
        [&[CANONICAL, b'x'][..], raw].concat()
    }

    /// The web page's reading of a directory key, modelled on web/payload.js `parsePublicKey`:
    /// `b64Decode` (trim; base64url characters mapped to base64; `=` appended by the length,
    /// whitespace counted) then `atob`, the WHATWG forgiving-base64 decode (ASCII whitespace
    /// removed; one or two final `=` dropped when the length is a multiple of 4; a length of
    /// 4n + 1 or any other character refused; leftover bits discarded), then 32 bytes or nothing.
    fn page_reads(text: &str) -> Option<Vec<u8>> {
        let std: String = text
            .trim()
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let padded = format!("{std}{}", &"==="[(std.chars().count() + 3) % 4..]);
        let mut data: Vec<char> = padded.chars().filter(|c| !matches!(c, '\t' | '\n' | '\x0C' | '\r' | ' ')).collect();
        if data.len().is_multiple_of(4) {
            let drop = data.iter().rev().take(2).take_while(|&&c| c == '=').count();
            data.truncate(data.len() - drop);
        }
        if data.len() % 4 == 1 {
            return None;
        }
        let (mut bytes, mut buffer, mut bits) = (Vec::new(), 0u32, 0);
        for c in data {
            let value = match c {
                'A'..='Z' => c as u32 - 'A' as u32,
                'a'..='z' => c as u32 - 'a' as u32 + 26,
                '0'..='9' => c as u32 - '0' as u32 + 52,
                '+' => 62,
                '/' => 63,
                _ => return None,
            };
            (buffer, bits) = ((buffer << 6) | value, bits + 6);
            if bits >= 8 {
                bits -= 8;
                bytes.push((buffer >> bits) as u8);
                buffer &= (1 << bits) - 1;
            }
        }
        (bytes.len() == 32).then_some(bytes)
    }

    /// The SDK's and CLI's reading (`PublicKey::from_base64url`).
    fn sdk_reads(text: &str) -> Option<Vec<u8>> {
        #[cfg(feature = "client")]
        return crate::sdk::PublicKey::from_base64url(text)
            .ok()
            .map(|k| URL_SAFE_NO_PAD.decode(k.to_base64url()).unwrap());
        #[cfg(not(feature = "client"))]
        return {
            let _ = text;
            None
        };
    }

    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// `bytes` in base64 as clients write it or as an attacker may: the unused bits of the last
    /// character set as `trailing` says; each character in either alphabet as `url` says (the
    /// rest standard); padded or not.
    fn respell(bytes: &[u8], trailing: u8, url: &[bool], pad: bool) -> String {
        let mut digits = STANDARD_NO_PAD.encode(bytes).into_bytes();
        let unused = digits.len() * 6 % 8;
        if let Some(last) = digits.last_mut() {
            let value = DIGITS.iter().position(|d| d == last).unwrap();
            *last = DIGITS[value | (usize::from(trailing) & ((1 << unused) - 1))];
        }
        let mut text: String = digits
            .into_iter()
            .zip(url.iter().chain(std::iter::repeat(&false)))
            .map(|(d, &url)| match (d, url) {
                (b'+', true) => '-',
                (b'/', true) => '_',
                (d, _) => d as char,
            })
            .collect();
        if pad {
            text.push_str(&"=="[..(4 - text.len() % 4) % 4]);
        }
        text
    }

    /// [`respell`], with whitespace put in at the given places.
    fn spelling(raw: &[u8; 32], trailing: u8, url: &[bool], pad: bool, spaces: &[(usize, char)]) -> String {
        let mut chars: Vec<char> = respell(raw, trailing, url, pad).chars().collect();
        for &(at, space) in spaces {
            chars.insert(at % (chars.len() + 1), space);
        }
        chars.into_iter().collect()
    }

    /// A PEM as tools write it, or not quite: any line width, either line ending, with or
    /// without the last one.
    fn pem(label: &str, body: &str, width: usize, crlf: bool, final_eol: bool) -> String {
        let eol = if crlf { "\r\n" } else { "\n" };
        let lines: Vec<&str> = body.as_bytes().chunks(width).map(|l| std::str::from_utf8(l).unwrap()).collect();
        let end = if final_eol { eol } else { "" };
        format!("-----BEGIN {label}-----{eol}{}{eol}-----END {label}-----{end}", lines.join(eol))
    }

    fn spki_der() -> Vec<u8> {
        STANDARD.decode(DER_B64.trim()).unwrap()
    }

    fn rsa_material() -> Vec<u8> {
        [&[CANONICAL, b'r'][..], &spki_der()].concat()
    }

    #[test]
    fn every_spelling_of_an_x25519_key_is_one_material() {
        let raw: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(0xF8)).collect();
        let spellings =
            [STANDARD.encode(&raw), STANDARD_NO_PAD.encode(&raw), URL_SAFE.encode(&raw), URL_SAFE_NO_PAD.encode(&raw)];
        assert_ne!(spellings[0], spellings[2], "the key must differ between alphabets to prove anything");
        let first = index_material(&spellings[0]);
        assert_eq!(first.primary, x25519_material(&raw));
        for s in &spellings {
            let m = index_material(s);
            assert_eq!(m.primary, first.primary, "{s}");
            assert_eq!(m.legacy.as_deref(), Some(s.as_bytes()));
        }
        assert_eq!(index_material(&format!(" {} ", spellings[1])).primary, first.primary);
    }

    /// Spellings that must not log in as second users of one key: the web page reads the first
    /// two as the key itself, with its fingerprint; node-forge and OpenSSL read PKCS#1 as the
    /// same RSA key. The third is another key to every client.
    #[test]
    fn spellings_clients_read_as_one_key_are_one_user() {
        let raw: [u8; 32] = std::array::from_fn(|i| if i % 3 == 0 { 0xFB } else { 0xFF ^ i as u8 });
        let raw = {
            let mut raw = raw;
            raw[31] &= 0x7F;
            raw
        };
        let canonical = URL_SAFE_NO_PAD.encode(raw);
        let key = index_material(&canonical).primary;
        let trailing = respell(&raw, 3, &[true; 43], false);
        let mixed = respell(&raw, 0, &[true, false].repeat(22), true);
        assert!(mixed.contains(['-', '_']) && mixed.contains(['+', '/']), "{mixed}");
        for twin in [&trailing, &mixed] {
            assert_ne!(twin, &canonical);
            assert_eq!(page_reads(twin).as_deref(), Some(&raw[..]), "the page reads {twin} as the key");
            assert_eq!(index_material(twin).primary, key, "{twin} is another user");
            assert!(ClaimKey::parse(twin).is_some(), "{twin}");
        }

        let mut high = raw;
        high[31] |= 0x80;
        let high = URL_SAFE_NO_PAD.encode(high);
        assert_ne!(page_reads(&high).as_deref(), Some(&raw[..]), "the page fingerprints every bit");
        assert_ne!(index_material(&high).primary, key, "another key, another user");
        assert!(ClaimKey::parse(&high).is_none(), "no library writes it, nobody can claim it");

        let spki = rsa::PublicKey::from_public_key_der(&spki_der()).unwrap();
        let pkcs1 = spki.to_pkcs1_pem(LineEnding::LF).unwrap();
        for twin in
            [pkcs1.to_string(), STANDARD.encode(pkcs1.as_bytes()), STANDARD.encode(spki.to_pkcs1_der().unwrap())]
        {
            assert_eq!(index_material(&twin).primary, rsa_material(), "{twin} is another user");
        }
    }

    #[test]
    fn unrecognised_keys_are_indexed_exactly() {
        for key in ["pk-alice", "", "bm90IGEga2V5", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"] {
            let m = index_material(key);
            assert_eq!(m.primary, key.as_bytes());
            assert!(m.legacy.is_none());
        }
    }

    fn spaces() -> impl Strategy<Value = Vec<(usize, char)>> {
        proptest::collection::vec((any::<usize>(), prop::sample::select(vec![' ', '\n', '\r'])), 0..4)
    }

    proptest! {
        /// Every spelling of 32 bytes is one user, whatever its alphabets, padding, unused bits
        /// and whitespace; a client that reads it at all reads those 32 bytes; it can be claimed
        /// exactly when it is an X25519 key as libraries write them. The same bytes with the top
        /// bit flipped are another user, and at most one of the two can be claimed.
        #[test]
        fn every_spelling_of_32_bytes_is_one_material(
            raw in any::<[u8; 32]>(),
            trailing in 0u8..4,
            url in proptest::collection::vec(any::<bool>(), 43),
            pad in any::<bool>(),
            spaces in spaces(),
        ) {
            let s = spelling(&raw, trailing, &url, pad, &spaces);
            let m = index_material(&s);
            prop_assert_eq!(&m.primary, &x25519_material(&raw));
            prop_assert_eq!(m.legacy.as_deref(), Some(s.as_bytes()));
            if spaces.is_empty() {
                let read = page_reads(&s);
                prop_assert_eq!(read.as_deref(), Some(&raw[..]), "the page reads {} as another key", s);
            }
            for read in [page_reads(&s), sdk_reads(&s)].into_iter().flatten() {
                prop_assert_eq!(&read[..], &raw[..]);
            }
            prop_assert_eq!(ClaimKey::parse(&s).is_some(), is_canonical_x25519(&raw));

            let mut flipped = raw;
            flipped[31] ^= 0x80;
            let other = spelling(&flipped, trailing, &url, pad, &spaces);
            prop_assert_ne!(index_material(&other).primary, m.primary);
            prop_assert!(ClaimKey::parse(&other).is_none() || ClaimKey::parse(&s).is_none());
        }

        /// Whatever a client reads as a key, however mangled the spelling (padding anywhere,
        /// characters added, dropped or doubled, whitespace), is indexed by exactly the bytes
        /// that client reads: two ids never show one fingerprint.
        #[test]
        fn what_a_client_reads_as_a_key_is_indexed_by_that_key(
            raw in any::<[u8; 32]>(),
            url in proptest::collection::vec(any::<bool>(), 43),
            edits in proptest::collection::vec((any::<usize>(), 0u8..5, prop::sample::select(b"Aa0+/-_= \n".to_vec())), 1..4),
        ) {
            let mut chars: Vec<char> = respell(&raw, 0, &url, false).chars().collect();
            for (at, edit, c) in edits {
                let at = at % (chars.len() + 1);
                match edit {
                    0 | 1 => chars.insert(at, c as char),
                    2 if at < chars.len() => drop(chars.remove(at)),
                    3 if at < chars.len() => chars.insert(at, chars[at]),
                    _ => chars.push('='),
                }
            }
            let s: String = chars.into_iter().collect();
            for read in [page_reads(&s), sdk_reads(&s)].into_iter().flatten() {
                prop_assert_eq!(&index_material(&s).primary, &x25519_material(&read), "{}", s);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every spelling of one RSA key is one user: SubjectPublicKeyInfo or PKCS#1; DER in
        /// base64, PEM (any line width and ending, under either label) or base64 of a PEM; each
        /// base64 in either alphabet or both, padded or not, unused bits set or not.
        #[test]
        fn every_spelling_of_an_rsa_key_is_one_material(
            pkcs1 in any::<bool>(),
            form in 0u8..3,
            width in 1usize..100,
            crlf in any::<bool>(),
            final_eol in any::<bool>(),
            trailing in 0u8..16,
            url in proptest::collection::vec(any::<bool>(), 0..600),
            pad in any::<bool>(),
        ) {
            let spki = rsa::PublicKey::from_public_key_der(&spki_der()).unwrap();
            let (der, label) = if pkcs1 {
                (spki.to_pkcs1_der().unwrap().into_vec(), "RSA PUBLIC KEY")
            } else {
                (spki_der(), "PUBLIC KEY")
            };
            let s = match form {
                0 => respell(&der, trailing, &url, pad),
                1 => pem(label, &respell(&der, trailing, &url, pad), width, crlf, final_eol),
                _ => respell(pem(label, &STANDARD.encode(&der), width, crlf, final_eol).as_bytes(), trailing, &url, pad),
            };
            prop_assert_eq!(index_material(&s).primary, rsa_material(), "{}", s);
            prop_assert!(ClaimKey::parse(&s).is_some());
        }
    }
}
