//! What the data file holds, as plain values: the rows of each table (`Snapshot`, read at
//! startup) and the changes the in-process state makes to them (`Record`, written by the
//! journal). Times are wall-clock milliseconds since the Unix epoch, so a deadline means the
//! same after a restart.

use bytes::Bytes;
use ipnet::IpNet;

use crate::engine::tree::batch::{TreeBatch, TreeSnapshot};
use crate::protocol::{MsgId, UserId};

/// A user's directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The key as first registered, byte for byte.
    pub public_key: String,
    /// Its index material (`auth::canonical`): every spelling of the key finds the user.
    pub material: Vec<u8>,
    pub protected: bool,
    pub expires_ms: u64,
    /// The address prefix it was registered from, until it is used.
    pub unused_from: Option<IpNet>,
}

/// An inbox's counters (its messages are rows of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRow {
    /// The id of the last message stored.
    pub last: MsgId,
    /// Messages ever sent to the user (the last one's number).
    pub count: u64,
    /// When it was last written to (it expires `limits.inbox_ttl_secs` after).
    pub written_ms: u64,
}

/// A stored envelope with what the limits need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub seq: u64,
    pub from: UserId,
    /// The sender's address prefix, charged for it (`limits::storage`).
    pub prefix: IpNet,
    /// It was counted in the recipient's strangers' pool when it was sent.
    pub stranger: bool,
    pub envelope: Bytes,
}

/// A user's contacts and when the list was last added to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactsRow {
    pub at_ms: u64,
    pub people: Vec<UserId>,
}

/// One change, applied in order. Each puts or deletes a whole row, so applying one twice
/// (a retried commit) leaves the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    User(UserId, UserRow),
    ForgetUser(UserId),
    Inbox(UserId, InboxRow),
    Message(UserId, MsgId, MessageRow),
    Remove(UserId, MsgId),
    Contacts(UserId, ContactsRow),
    ForgetContacts(UserId),
    /// An answered challenge id, single use until the deadline.
    Burn(String, u64),
    Unburn(String),
    /// What an address prefix registered, by day (`limits.storage.directory_per_prefix`).
    Registered(IpNet, Vec<(u64, u64)>),
    ForgetRegistered(IpNet),
    /// The generated token signing key (`auth.token_keys` empty).
    TokenKey(String),
    /// A registration waiting to be published in the key directory (with its key).
    Pending(UserId, String),
    /// Registrations published: no longer waiting.
    Published(Vec<UserId>),
    /// Records of the key directory's tree, all in one transaction.
    Tree(TreeBatch),
    /// An epoch's root hash.
    Root(u64, [u8; 32]),
    /// A secret of the key directory generated for the deployment, by name.
    Secret(String, String),
}

impl Record {
    /// About what it takes in the queue, for its byte bound.
    pub fn size(&self) -> usize {
        const FIXED: usize = 96;
        FIXED
            + match self {
                Record::User(_, row) => row.public_key.len() + row.material.len(),
                Record::Message(_, _, row) => row.envelope.len(),
                Record::Contacts(_, row) => row.people.len() * 40,
                Record::Burn(jti, _) | Record::Unburn(jti) => jti.len(),
                Record::Registered(_, days) => days.len() * 16,
                Record::TokenKey(key) => key.len(),
                Record::Pending(_, key) => key.len(),
                Record::Published(users) => users.len() * 40,
                Record::Tree(batch) => batch.size(),
                Record::Secret(name, value) => name.len() + value.len(),
                _ => 0,
            }
    }
}

/// Everything the file holds, read at startup to rebuild the in-process state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub users: Vec<(UserId, UserRow)>,
    pub inboxes: Vec<(UserId, InboxRow)>,
    /// In inbox order: by user, then id.
    pub messages: Vec<(UserId, MsgId, MessageRow)>,
    pub contacts: Vec<(UserId, ContactsRow)>,
    pub burnt: Vec<(String, u64)>,
    pub registered: Vec<(IpNet, Vec<(u64, u64)>)>,
    pub token_key: Option<String>,
    pub tree: TreeSnapshot,
}
