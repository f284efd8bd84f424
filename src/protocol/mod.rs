//! The wire: what clients send, what the server answers, and the error and close codes.
//!
//! One definition for every side: the server, the SDK, the CLI and the load generator all
//! write and read frames through these types, so no code, name or field is spelt twice.
//!
//! - [`ids`]: user ids and inbox message ids;
//! - [`codes`]: the subprotocol name, error codes and close codes;
//! - [`frames`]: WebSocket frames, client and server, each serialized and parsed here;
//! - [`rest`]: the HTTP API's JSON bodies;
//! - [`keys`]: which public keys the directory accepts;
//! - [`auth`]: how challenges are sealed and tokens carried.

pub mod auth;
pub mod codes;
pub mod frames;
pub mod ids;
pub mod keys;
pub mod rest;

pub use codes::{AnyErrorCode, BEARER_PROTOCOL_PREFIX, CloseCode, ErrorCode, SUBPROTOCOL_V1};
pub use frames::{
    AckFrame, AckIds, BadFrame, ClientFrame, Delivery, DeliveryFrame, ErrorFrame, RawPayload, ReceiptFrame, SendFrame,
    ServerFrame, envelope, envelope_sender, error_frame, rate_limited_frame, receipt_frame,
};
pub use ids::{MsgId, UserId};
pub use keys::{KeyError, validate_public_key};
pub use rest::{
    AuthStatus, ChallengeRequest, ChallengeResponse, ErrorBody, Health, LoginResponse, LookupResponse, Readiness,
    TokenRequest, TokenResponse,
};
