//! Why a client's message was not stored: the `reason` label of `enigma_messages_rejected_total`.

use crate::telemetry::metric;

/// The `reason` label of `enigma_messages_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Forbidden,
    TooLarge,
    UserNotFound,
    InboxFull,
    /// The sender's share of the recipient's inbox is used up (`limits.inbox_share`).
    InboxShare,
    /// The strangers' part of the recipient's inbox is full (`limits.stranger_pool`).
    Strangers,
    /// The sender's prefix or id holds its share of the store (`limits.storage`).
    Storage,
    /// The sender's send rate (`rate.send_*_per_user`).
    RateLimited,
    Unavailable,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Forbidden,
        RejectReason::TooLarge,
        RejectReason::UserNotFound,
        RejectReason::InboxFull,
        RejectReason::InboxShare,
        RejectReason::Strangers,
        RejectReason::Storage,
        RejectReason::RateLimited,
        RejectReason::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Forbidden => "forbidden",
            RejectReason::TooLarge => "too_large",
            RejectReason::UserNotFound => "user_not_found",
            RejectReason::InboxFull => "inbox_full",
            RejectReason::InboxShare => "inbox_share",
            RejectReason::Strangers => "strangers",
            RejectReason::Storage => "storage",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::Unavailable => "unavailable",
        }
    }

    pub(super) fn count(self) {
        metrics::counter!(metric::MESSAGES_REJECTED, "reason" => self.as_str()).increment(1);
    }
}
