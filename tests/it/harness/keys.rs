//! Public keys no other test (or earlier run) can have produced, so every login makes a new
//! user without tests sharing a namespace.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

static KEYS: AtomicU32 = AtomicU32::new(0);

/// A unique base64-looking public key, with `/` and `+` like a raw DER key in base64.
pub fn random_key() -> String {
    let n = KEYS.fetch_add(1, Ordering::Relaxed);
    format!("MIIBIjANBgkqhkiG9w0BAQEFAAOC/{}+{}x{}==", std::process::id(), n, uuid_like())
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    format!("{:016x}", h.finish())
}
