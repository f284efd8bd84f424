//! Why an authentication step was refused, as the `reason` label of its metric.

use crate::telemetry::metric;

/// Why a token, a ticket or an answer was refused: the `reason` label of
/// `enigma_auth_refusals_total` (never a user id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, for a protected user or in `required` mode.
    Missing,
    /// Not a token of ours at all (not a JWT, wrong kind, missing claims).
    Malformed,
    /// Signed with a key this deployment does not hold (forged, other deployment, retired key).
    BadSignature,
    Expired,
    /// Issued for another deployment (`aud`).
    WrongAudience,
    /// A valid token of another user.
    WrongUser,
    /// Earned with a key that is not the user's registered key.
    WrongKey,
    /// A challenge answered with the wrong secret.
    WrongSecret,
    /// A challenge answered a second time.
    Replayed,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::WrongAudience,
        Refusal::WrongUser,
        Refusal::WrongKey,
        Refusal::WrongSecret,
        Refusal::Replayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongUser => "wrong_user",
            Refusal::WrongKey => "wrong_key",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::Replayed => "replayed",
        }
    }

    /// What the client is told (the same words for every kind of bad token but a missing one:
    /// a prober learns nothing it could not read from the token itself).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "this user is protected: authenticate (POST /auth/challenge) and show a bearer token",
            Refusal::Expired => "token expired: authenticate again",
            Refusal::WrongSecret | Refusal::Replayed => "challenge answer refused: request a new challenge",
            _ => "invalid token",
        }
    }

    /// Counts the refusal under its reason; returns it, for `map_err(Refusal::count)`.
    pub fn count(self) -> Refusal {
        metrics::counter!(metric::AUTH_REFUSALS, "reason" => self.as_str()).increment(1);
        self
    }
}
