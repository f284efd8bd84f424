//! The key directory as a client sees it: the JSON bodies of `GET /directory/*` ([`wire`]) and,
//! built on them, the checks every client runs (the SDK and CLI natively, the web page through
//! WebAssembly). The relay uses the same types to answer, so the two sides cannot drift apart.
//!
//! The directory is an Auditable Key Directory (`akd`, WhatsApp's, in its `WhatsAppV1`
//! configuration): the label of an entry is the user id's UTF-8 bytes, its value the public key's
//! UTF-8 bytes exactly as `GET /connect/{userId}` returns it.
//!
//! The checks, in the order a client runs them (docs/protocol.md, "Verifying the directory"):
//! - [`root`]: a root's Ed25519 signature, by a trusted key;
//! - [`keeper`]: the newest verified root, moved forward only through append-only proofs
//!   ([`audit`]); an older epoch is a rollback, another hash for the same epoch a fork;
//! - [`lookup`]: a user's key proven against the kept root;
//! - [`history`]: every version of a user's key (what an owner checks about themself).
//!
//! None of them panics on any input: every refusal is a [`VerifyError`].

pub mod audit;
pub mod error;
pub mod history;
pub mod keeper;
pub mod lookup;
pub mod proof;
pub mod root;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "wasm")]
pub mod wasm;

pub use error::{SeenIn, VerifyError};
pub use root::{Signers, VerifiedRoot, verify_root};

/// The one AKD configuration the relay publishes with and every client verifies with.
pub type Config = akd_core::WhatsAppV1Configuration;
