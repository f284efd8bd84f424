//! Client SDK: end-to-end-encrypted messaging through an Enigma relay.
//!
//! ```no_run
//! # async fn demo() -> Result<(), enigma::sdk::Error> {
//! use enigma::sdk::{Client, ConnectOptions, Identity};
//!
//! let client = Client::new("http://localhost:8000", Identity::generate())?;
//! let me = client.login().await?; // idempotent: the same key always gets the same id
//! let mut connection = client.connect(&me, ConnectOptions::default()).await?;
//! connection.send("3f1c2a9e-…", "hello").await?; // returns once the server stored it
//! while let Some(item) = connection.recv().await {
//!     match item {
//!         Ok(message) => println!("{}: {}", message.from, message.text),
//!         Err(error) => eprintln!("{error}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! - [`crypto`]: HPKE sealing (RFC 9180, auth mode) and the payload format;
//! - [`keyfile`]: the private key file (mode 0600, never clobbered);
//! - [`client`]: REST calls (login, key lookup) and opening a socket;
//! - [`auth`]: proving possession of the key for a bearer token, shown on every socket;
//! - [`connection`]: the acknowledged WebSocket connection that reconnects with backoff and
//!   loses nothing (its socket task lives in `driver`; what its parts tell each other, and its
//!   options, in `channels`);
//! - [`directory`]: every key proven by the server's verifiable key directory, the newest
//!   verified root kept, the owner's own history checked on every connect;
//! - [`pins`]: contacts' keys pinned on first use, a changed key refused until trusted;
//! - [`tls`]: https/wss (rustls) and the rule that plain http goes to loopback only;
//! - [`error`]: typed errors.
//!
//! The server never sees plaintext: payloads are sealed here before they leave, and opened
//! here after they arrive.

pub mod auth;
mod channels;
pub mod client;
pub mod connection;
pub mod crypto;
pub mod directory;
pub mod error;
pub mod keyfile;
pub mod pins;
pub mod private_file;
pub mod tls;

mod driver;

pub use client::{Client, ClientOptions, SUBPROTOCOL};
pub use connection::{ConnectOptions, Connection, Message, Receipt, Sender, Status};
pub use crypto::{Content, Identity, PublicKey};
pub use directory::{AuditSummary, BadEpochRoot, DirectoryPolicy, DirectoryStatus, EpochRoot, KeyProof, SignerChange};
pub use error::{Error, OpenError};
pub use pins::{Pin, Pins, Verdict};
