//! Why an engine call that can be refused was: a send (the recipient, the inbox, the sender's
//! shares) or a login (the address prefix's registrations), besides the store's being
//! unavailable.

use std::time::Duration;

use super::unavailable::Unavailable;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("user not found")]
    UserNotFound,
    #[error("recipient's inbox is full")]
    InboxFull,
    /// The sender already has its share (`limits.inbox_share`, `inbox_share_bytes`) of the
    /// recipient's inbox waiting; other senders still get through.
    #[error("sender's share of the recipient's inbox is used up")]
    OverShare,
    /// The sender is a stranger to the recipient (never written to by them), and the part of
    /// the inbox all strangers share (`limits.stranger_pool`) is full; contacts still get
    /// through.
    #[error("the recipient's inbox has no room left for strangers")]
    StrangersFull,
    /// The sender's address prefix, or the sender, already holds its share of the store
    /// (`limits.storage`), as far as the store's pressure allows now.
    #[error("the sender's share of the store is used up")]
    OverStorage,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why a login gave no user id.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// A key never seen, from an address prefix that already holds
    /// `limits.max_unused_registrations_per_prefix` registrations nobody used: one of them
    /// expires after `retry_after` (one used before then makes room sooner).
    #[error("too many unused registrations from this address prefix")]
    TooManyUnused { retry_after: Duration },
    /// A key never seen, from an address prefix whose registrations of the last
    /// `limits.inactive_user_ttl_secs` take its share of the store
    /// (`limits.storage.directory_per_prefix`).
    #[error("this address prefix registered its share of the directory")]
    DirectoryShare,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}
