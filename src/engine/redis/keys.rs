//! The key schema: every Redis key and channel name the engine uses, in one place.
//!
//! Every per-user name carries the user id as a `{hash tag}`, so one user's record, inbox,
//! channel and connection counter live in one Redis Cluster slot (the table is in `mod.rs`).

use sha2::{Digest, Sha256};

use crate::limits::bucket::Subject;
use crate::limits::storage::Holder;
use crate::protocol::UserId;

/// The hash tag of every key of the verifiable key directory (`Keys::tree`): they share a
/// Redis Cluster slot.
pub(super) const TREE_TAG: &str = "kt";

/// The keys of the verifiable key directory (`Keys::tree`).
#[derive(Clone, Copy)]
pub(super) enum TreePart<'a> {
    /// akd's azks and tree nodes (HASH key → record).
    Nodes,
    /// akd's value states (HASH label → the label's states, each length-prefixed).
    States,
    /// The epoch the nodes are at (STRING).
    Epoch,
    /// Every epoch's root hash (LIST, epoch 1 first).
    Roots,
    /// Registrations not yet published (HASH user → `<ms> <public key>`).
    Pending,
    /// The publisher's lease (STRING, its holder, with a TTL).
    Lease,
    /// A generated secret (STRING).
    Secret(&'a str),
}

#[derive(Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn user(&self, user: &UserId) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }
    pub(super) fn inbox(&self, user: &UserId) -> String {
        format!("{}inbox:{{{user}}}", self.prefix)
    }
    /// What each sender has waiting in the user's inbox (see `scripts::SEND`).
    pub(super) fn shares(&self, user: &UserId) -> String {
        format!("{}shares:{{{user}}}", self.prefix)
    }
    /// Whom the user wrote to (a SET): their messages to the user are a contact's, not a
    /// stranger's (see `scripts::SEND`).
    pub(super) fn contacts(&self, user: &UserId) -> String {
        format!("{}contacts:{{{user}}}", self.prefix)
    }
    /// What every storage ledger key starts with: the removal script builds the holders' keys
    /// from it on a single Redis (`held_by_prefix`, `held_by_sender`; see `scripts::REMOVE`).
    pub(super) fn ledger_root(&self) -> String {
        format!("{}held:", self.prefix)
    }
    /// What an address prefix holds (no hash tag: its own slot).
    pub(super) fn held_by_prefix(&self, prefix: &str) -> String {
        format!("{}held:net:{prefix}", self.prefix)
    }
    /// What an address prefix registered (no hash tag: its own slot).
    pub(super) fn registered_by_prefix(&self, prefix: &str) -> String {
        format!("{}held:dir:{prefix}", self.prefix)
    }
    /// What a sender holds (the sender's slot).
    pub(super) fn held_by_sender(&self, sender: &str) -> String {
        format!("{}held:{{{sender}}}", self.prefix)
    }
    /// The storage ledger of `holder` (`ledger`).
    pub(super) fn ledger(&self, holder: &Holder<'_>) -> String {
        match holder {
            Holder::Prefix(prefix) => self.held_by_prefix(&prefix.to_string()),
            Holder::Sender(user) => self.held_by_sender(user.as_str()),
            Holder::Registrations(prefix) => self.registered_by_prefix(&prefix.to_string()),
        }
    }
    /// A rate-limit bucket: a user's in the user's slot (`{uid}`, its hash tag), an address
    /// prefix's in its own.
    pub(super) fn rate(&self, kind: &str, subject: Subject<'_>) -> String {
        match subject {
            Subject::User(user) => format!("{}rate:{kind}:{{{user}}}", self.prefix),
            Subject::Address(net) => format!("{}rate:{kind}:{net}", self.prefix),
        }
    }
    pub(super) fn generation(&self, user: &UserId) -> String {
        format!("{}conn:{{{user}}}", self.prefix)
    }
    pub(super) fn channel(&self, user: &UserId) -> String {
        format!("{}deliver:{{{user}}}", self.prefix)
    }
    /// A link probe of this replica; on a cluster `tag` places it in a slot of one shard.
    pub(super) fn probe(&self, replica: &str, tag: Option<&str>) -> String {
        match tag {
            Some(tag) => format!("{}probe:{{{tag}}}:{replica}", self.prefix),
            None => format!("{}probe:{replica}", self.prefix),
        }
    }
    /// The index entry of a key's index material (`auth::canonical`).
    pub(super) fn key_index(&self, material: &[u8]) -> String {
        let digest = Sha256::digest(material);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}pk:{hex}", self.prefix)
    }
    /// The registrations from one address prefix nobody used yet (a ZSET: uid by expiry, ms).
    pub(super) fn unused(&self, prefix: &ipnet::IpNet) -> String {
        format!("{}unused:{prefix}", self.prefix)
    }
    /// A challenge id, once answered (single use across replicas).
    pub(super) fn burnt_challenge(&self, jti: &str) -> String {
        format!("{}auth:jti:{jti}", self.prefix)
    }
    /// The token signing key generated once for the deployment when none is configured.
    pub(super) fn token_key(&self) -> String {
        format!("{}auth:token-key", self.prefix)
    }
    /// A key of the verifiable key directory: all under one hash tag (`{kt}`), so an epoch is
    /// written in one script on a cluster too (`tree.rs`).
    pub(super) fn tree(&self, part: TreePart<'_>) -> String {
        let part = match part {
            TreePart::Nodes => "nodes".into(),
            TreePart::States => "states".into(),
            TreePart::Epoch => "epoch".into(),
            TreePart::Roots => "roots".into(),
            TreePart::Pending => "pending".into(),
            TreePart::Lease => "lease".into(),
            TreePart::Secret(name) => format!("secret:{name}"),
        };
        format!("{}kt:{{{TREE_TAG}}}:{part}", self.prefix)
    }
    /// The user of a doorbell channel name, if it is one of ours.
    pub(super) fn channel_user(&self, channel: &[u8]) -> Option<UserId> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?.strip_prefix(b"deliver:{")?;
        let uid = rest.strip_suffix(b"}")?;
        UserId::parse(std::str::from_utf8(uid).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_user_as_hash_tag() {
        let keys = Keys { prefix: "t:".into() };
        let user = UserId::random();
        assert_eq!(keys.inbox(&user), format!("t:inbox:{{{user}}}"));
        assert_eq!(keys.channel_user(keys.channel(&user).as_bytes()), Some(user.clone()));
        assert_eq!(keys.channel_user(b"other:deliver:{x}"), None);
        assert!(keys.key_index(b"abc").starts_with("t:pk:"));
        assert_eq!(keys.key_index(b"abc").len(), "t:pk:".len() + 64);
        assert_eq!(keys.unused(&"2001:db8::/64".parse().unwrap()), "t:unused:2001:db8::/64");
        assert_eq!(keys.rate("send", Subject::User(&user)), format!("t:rate:send:{{{user}}}"));
        // The removal script builds the ledger's keys from the root as these do.
        assert_eq!(keys.held_by_prefix("192.0.2.7/32"), format!("{}net:192.0.2.7/32", keys.ledger_root()));
        assert_eq!(keys.held_by_sender(user.as_str()), format!("{}{{{user}}}", keys.ledger_root()));
        assert_eq!(keys.rate("login", Subject::Address("192.0.2.7/32".parse().unwrap())), "t:rate:login:192.0.2.7/32");
    }
}
