//! The key directory as a client sees it: the JSON bodies of `GET /directory/*`
//! ([`wire`]) and, built on them, the checks every client runs (the SDK and CLI natively, the web
//! page through WebAssembly). The relay uses the same types to answer, so the two sides cannot
//! drift apart.
//!
//! The directory is an Auditable Key Directory (`akd`, WhatsApp's, in its `WhatsAppV1`
//! configuration): the label of an entry is the user id's UTF-8 bytes, its value the public key's
//! UTF-8 bytes exactly as `GET /connect/{userId}` returns it.

pub mod proof;
pub mod wire;

/// The one AKD configuration the relay publishes with and every client verifies with.
pub type Config = akd_core::WhatsAppV1Configuration;
