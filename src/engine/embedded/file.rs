//! The data file: one redb database, a table per kind of row (`records`). `commit` applies a
//! batch of records in one write transaction with `Durability::Immediate` (redb's default:
//! when `commit` returns, the data and the root that names it are fsynced); `load` reads every
//! table at startup.
//!
//! The file holds the token signing key and every stored envelope, so only its owner may read
//! it: the directory is mode 0700 and the file 0600 from their creation (whatever the umask),
//! and an existing one open to others is restricted at startup, or refused if it cannot be.
//!
//! After a failed write or fsync redb fails every later transaction of that `Database`
//! (`PreviousIo`), so a failed commit closes it and the next attempt opens the file again.

use std::fs::File;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use redb::backends::FileBackend;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};

use super::journal::Store;
use super::records::{ContactsRow, InboxRow, MessageRow, Record, Snapshot, UserRow};
use crate::engine::unavailable::Unavailable;
use crate::protocol::{MsgId, UserId};

/// The file's name inside `data_dir`.
pub const FILE_NAME: &str = "enigma.redb";

/// The layout below; a file of another layout is refused rather than misread.
const FORMAT: &str = "1";

/// A user row: (public key, index material, protected, expires ms, unused from prefix).
type UserValue<'a> = (&'a str, &'a [u8], bool, u64, Option<&'a str>);
/// A message row: (seq, sender, sender prefix, stranger, envelope).
type MessageValue<'a> = (u64, &'a str, &'a str, bool, &'a [u8]);

/// user → `UserValue`
const USERS: TableDefinition<&str, UserValue> = TableDefinition::new("users");
/// user → (last id ms, last id seq, count, written ms)
const INBOXES: TableDefinition<&str, (u64, u64, u64, u64)> = TableDefinition::new("inboxes");
/// (user, id ms, id seq) → `MessageValue`
const MESSAGES: TableDefinition<(&str, u64, u64), MessageValue> = TableDefinition::new("messages");
/// user → (added to ms, people)
const CONTACTS: TableDefinition<&str, (u64, Vec<&str>)> = TableDefinition::new("contacts");
/// challenge id → single use until ms
const BURNT: TableDefinition<&str, u64> = TableDefinition::new("burnt");
/// address prefix → [(day, bytes registered)]
const REGISTERED: TableDefinition<&str, Vec<(u64, u64)>> = TableDefinition::new("registered");
/// "format", "token_key", "secret:<name>" (the key directory's generated secrets)
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The key directory: akd's azks and tree nodes, key → value
const TREE_NODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tree_nodes");
/// The key directory: akd's value states, (label, epoch) → value
const TREE_STATES: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("tree_states");
/// The key directory: epoch → root hash
const TREE_ROOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("tree_roots");
/// The key directory: user → public key, registrations waiting to be published
const TREE_PENDING: TableDefinition<&str, &str> = TableDefinition::new("tree_pending");

/// The META key of a generated secret of the key directory.
fn secret_key(name: &str) -> String {
    format!("secret:{name}")
}

/// The redb database in `data_dir`, over the storage `backend` makes of the file (the file
/// itself; a test wraps it to fail on demand).
pub struct DataFile<B: StorageBackend = FileBackend> {
    /// `None` from a failed commit until the next attempt opens the file again.
    db: Option<Database>,
    path: PathBuf,
    backend: Box<dyn Fn(File) -> B + Send>,
}

impl<B: StorageBackend> DataFile<B> {
    /// Opens (creating them if needed) `dir` and the data file in it, the database over
    /// `backend(file)` (`FileBackend::new`: the file itself). Another process holding the file,
    /// a directory that cannot be made, a file of another format, a directory or file open to
    /// other users that cannot be restricted: a clear error.
    pub fn open_on(dir: &Path, backend: impl Fn(File) -> B + Send + 'static) -> Result<Self, Unavailable> {
        private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let mut file = DataFile { db: None, path, backend: Box::new(backend) };
        let db = file.connect()?;
        prepare(&db).map_err(|e| Unavailable::said(format!("cannot use the data file `{}`: {e}", file.shown())))?;
        file.db = Some(db);
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// Opens the file (created mode 0600) as a database.
    fn connect(&self) -> Result<Database, Unavailable> {
        let file = private_file(&self.path)?;
        redb::Builder::new().create_with_backend((self.backend)(file)).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => Unavailable::said(format!(
                "the data file `{}` is in use by another process (one server per data_dir; \
                 stop the other, or give this one its own data_dir)",
                self.shown()
            )),
            other => Unavailable::said(format!("cannot open the data file `{}`: {other}", self.shown())),
        })
    }

    /// Everything in the file. Rows that do not parse (never written by this server) are
    /// skipped with a warning.
    pub fn load(&self) -> Result<Snapshot, Unavailable> {
        let Some(db) = &self.db else {
            return Err(Unavailable::said(format!("the data file `{}` is not open", self.shown())));
        };
        read(db).map_err(|e| Unavailable::said(format!("cannot read the data file `{}`: {e}", self.shown())))
    }
}

impl<B: StorageBackend> Store for DataFile<B> {
    /// Applies `batch`, opening the file first if the last commit failed. A failed commit
    /// closes the database: redb refuses every later transaction on it (`PreviousIo`), and
    /// the records are whole-row puts and deletes, so the journal's retry of the same batch on
    /// the reopened file is safe.
    fn commit(&mut self, batch: &[Record]) -> Result<(), String> {
        let db = match self.db.take() {
            Some(db) => db,
            None => self.connect().map_err(text)?,
        };
        apply(&db, batch).map_err(text)?;
        self.db = Some(db);
        Ok(())
    }
}

/// Creates `dir` (and missing parents) mode 0700, or restricts an existing one to its owner.
fn private_dir(dir: &Path) -> Result<(), Unavailable> {
    let made =
        |e: std::io::Error| Unavailable::said(format!("cannot create the data directory `{}`: {e}", dir.display()));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(made)?;
    let metadata = std::fs::metadata(dir).map_err(made)?;
    owner_only(dir, "data directory", &metadata, |permissions| std::fs::set_permissions(dir, permissions))
}

/// Opens `path` for reading and writing, created mode 0600, restricted to its owner if it
/// existed open to others.
fn private_file(path: &Path) -> Result<File, Unavailable> {
    let opened = |e: std::io::Error| Unavailable::said(format!("cannot open the data file `{}`: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(opened)?;
    let metadata = file.metadata().map_err(opened)?;
    owner_only(path, "data file", &metadata, |permissions| file.set_permissions(permissions))?;
    Ok(file)
}

/// Takes the group's and others' permissions off `path` (`what`, for the messages); only its
/// owner (or root) may, so anyone else is told to.
#[cfg(unix)]
fn owner_only(
    path: &Path,
    what: &str,
    metadata: &std::fs::Metadata,
    set: impl FnOnce(std::fs::Permissions) -> std::io::Result<()>,
) -> Result<(), Unavailable> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let restricted = mode & !0o077;
    set(std::fs::Permissions::from_mode(restricted)).map_err(|e| {
        Unavailable::said(format!(
            "the {what} `{}` has permissions {mode:04o}: other users could read the token signing key and \
             the stored messages, and it cannot be restricted ({e}); run `chmod go= {}` as its owner",
            path.display(),
            path.display()
        ))
    })?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{mode:04o}"),
        now = format!("{restricted:04o}"),
        "the {what} was open to other users; restricted to its owner"
    );
    Ok(())
}

#[cfg(not(unix))]
fn owner_only(
    _: &Path,
    _: &str,
    _: &std::fs::Metadata,
    _: impl FnOnce(std::fs::Permissions) -> std::io::Result<()>,
) -> Result<(), Unavailable> {
    Ok(())
}

/// Creates every table and checks (or writes) the format.
fn prepare(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(text)?;
    {
        txn.open_table(USERS).map_err(text)?;
        txn.open_table(INBOXES).map_err(text)?;
        txn.open_table(MESSAGES).map_err(text)?;
        txn.open_table(CONTACTS).map_err(text)?;
        txn.open_table(BURNT).map_err(text)?;
        txn.open_table(REGISTERED).map_err(text)?;
        txn.open_table(TREE_NODES).map_err(text)?;
        txn.open_table(TREE_STATES).map_err(text)?;
        txn.open_table(TREE_ROOTS).map_err(text)?;
        txn.open_table(TREE_PENDING).map_err(text)?;
        let mut meta = txn.open_table(META).map_err(text)?;
        let format = meta.get("format").map_err(text)?.map(|v| v.value().to_owned());
        match format.as_deref() {
            None => {
                meta.insert("format", FORMAT).map_err(text)?;
            }
            Some(FORMAT) => {}
            Some(other) => return Err(format!("format {other}, this server reads format {FORMAT}")),
        }
    }
    txn.commit().map_err(text)
}

fn read(db: &Database) -> Result<Snapshot, redb::Error> {
    let txn = db.begin_read()?;
    let mut snapshot = Snapshot::default();
    for row in txn.open_table(USERS)?.iter()? {
        let (user, row) = row?;
        let (public_key, material, protected, expires_ms, unused_from) = row.value();
        let unused_from = match unused_from.map(|text| (text, text.parse::<IpNet>())) {
            Some((_, Ok(prefix))) => Some(prefix),
            Some((text, Err(_))) => {
                tracing::warn!(
                    user = user.value(),
                    prefix = text,
                    "data file: a user whose prefix does not parse, skipped"
                );
                continue;
            }
            None => None,
        };
        let Some(user) = parsed_user(user.value()) else { continue };
        let row = UserRow {
            public_key: public_key.to_owned(),
            material: material.to_vec(),
            protected,
            expires_ms,
            unused_from,
        };
        snapshot.users.push((user, row));
    }
    for row in txn.open_table(INBOXES)?.iter()? {
        let (user, row) = row?;
        let (ms, seq, count, written_ms) = row.value();
        let Some(user) = parsed_user(user.value()) else { continue };
        snapshot.inboxes.push((user, InboxRow { last: MsgId { ms, seq }, count, written_ms }));
    }
    for row in txn.open_table(MESSAGES)?.iter()? {
        let (key, row) = row?;
        let (user, ms, seq) = key.value();
        let (number, from, prefix, stranger, envelope) = row.value();
        let (Some(user), Some(from), Ok(prefix)) = (parsed_user(user), parsed_user(from), prefix.parse()) else {
            continue;
        };
        let row = MessageRow { seq: number, from, prefix, stranger, envelope: envelope.to_vec().into() };
        snapshot.messages.push((user, MsgId { ms, seq }, row));
    }
    for row in txn.open_table(CONTACTS)?.iter()? {
        let (user, row) = row?;
        let (at_ms, people) = row.value();
        let Some(user) = parsed_user(user.value()) else { continue };
        let people = people.into_iter().filter_map(parsed_user).collect();
        snapshot.contacts.push((user, ContactsRow { at_ms, people }));
    }
    for row in txn.open_table(BURNT)?.iter()? {
        let (jti, until) = row?;
        snapshot.burnt.push((jti.value().to_owned(), until.value()));
    }
    for row in txn.open_table(REGISTERED)?.iter()? {
        let (prefix, days) = row?;
        match prefix.value().parse() {
            Ok(prefix) => snapshot.registered.push((prefix, days.value())),
            Err(_) => tracing::warn!(prefix = prefix.value(), "data file: a prefix that does not parse, skipped"),
        }
    }
    let meta = txn.open_table(META)?;
    snapshot.token_key = meta.get("token_key")?.map(|v| v.value().to_owned());
    for row in meta.iter()? {
        let (name, value) = row?;
        if let Some(name) = name.value().strip_prefix("secret:") {
            snapshot.tree.secrets.push((name.to_owned(), value.value().to_owned()));
        }
    }
    for row in txn.open_table(TREE_NODES)?.iter()? {
        let (key, value) = row?;
        snapshot.tree.nodes.push((key.value().to_vec(), value.value().to_vec()));
    }
    for row in txn.open_table(TREE_STATES)?.iter()? {
        let (key, value) = row?;
        let (label, epoch) = key.value();
        snapshot.tree.states.push((label.to_vec(), epoch, value.value().to_vec()));
    }
    for row in txn.open_table(TREE_ROOTS)?.iter()? {
        let (epoch, hash) = row?;
        snapshot.tree.roots.push((epoch.value(), hash.value().to_vec()));
    }
    for row in txn.open_table(TREE_PENDING)?.iter()? {
        let (user, key) = row?;
        let Some(user) = parsed_user(user.value()) else { continue };
        snapshot.tree.pending.push((user, key.value().to_owned()));
    }
    Ok(snapshot)
}

fn apply(db: &Database, batch: &[Record]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut users = txn.open_table(USERS)?;
        let mut inboxes = txn.open_table(INBOXES)?;
        let mut messages = txn.open_table(MESSAGES)?;
        let mut contacts = txn.open_table(CONTACTS)?;
        let mut burnt = txn.open_table(BURNT)?;
        let mut registered = txn.open_table(REGISTERED)?;
        let mut meta = txn.open_table(META)?;
        let mut tree_nodes = txn.open_table(TREE_NODES)?;
        let mut tree_states = txn.open_table(TREE_STATES)?;
        let mut tree_roots = txn.open_table(TREE_ROOTS)?;
        let mut tree_pending = txn.open_table(TREE_PENDING)?;
        for record in batch {
            match record {
                Record::User(user, row) => {
                    let unused = row.unused_from.map(|prefix| prefix.to_string());
                    let value = (
                        row.public_key.as_str(),
                        row.material.as_slice(),
                        row.protected,
                        row.expires_ms,
                        unused.as_deref(),
                    );
                    users.insert(user.as_str(), value)?;
                }
                Record::ForgetUser(user) => {
                    users.remove(user.as_str())?;
                }
                Record::Inbox(user, row) => {
                    inboxes.insert(user.as_str(), (row.last.ms, row.last.seq, row.count, row.written_ms))?;
                }
                Record::Message(user, id, row) => {
                    let prefix = row.prefix.to_string();
                    let value = (row.seq, row.from.as_str(), prefix.as_str(), row.stranger, &row.envelope[..]);
                    messages.insert((user.as_str(), id.ms, id.seq), value)?;
                }
                Record::Remove(user, id) => {
                    messages.remove((user.as_str(), id.ms, id.seq))?;
                }
                Record::Contacts(user, row) => {
                    let people: Vec<&str> = row.people.iter().map(UserId::as_str).collect();
                    contacts.insert(user.as_str(), (row.at_ms, people))?;
                }
                Record::ForgetContacts(user) => {
                    contacts.remove(user.as_str())?;
                }
                Record::Burn(jti, until) => {
                    burnt.insert(jti.as_str(), *until)?;
                }
                Record::Unburn(jti) => {
                    burnt.remove(jti.as_str())?;
                }
                Record::Registered(prefix, days) => {
                    registered.insert(prefix.to_string().as_str(), days)?;
                }
                Record::ForgetRegistered(prefix) => {
                    registered.remove(prefix.to_string().as_str())?;
                }
                Record::TokenKey(key) => {
                    meta.insert("token_key", key.as_str())?;
                }
                Record::Pending(user, key) => {
                    tree_pending.insert(user.as_str(), key.as_str())?;
                }
                Record::Published(users) => {
                    for user in users {
                        tree_pending.remove(user.as_str())?;
                    }
                }
                Record::Tree(batch) => {
                    for (key, value) in &batch.nodes {
                        tree_nodes.insert(key.as_slice(), value.as_slice())?;
                    }
                    for (label, epoch, value) in &batch.states {
                        tree_states.insert((label.as_slice(), *epoch), value.as_slice())?;
                    }
                }
                Record::Root(epoch, hash) => {
                    tree_roots.insert(*epoch, hash.as_slice())?;
                }
                Record::Secret(name, value) => {
                    meta.insert(secret_key(name).as_str(), value.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn parsed_user(text: &str) -> Option<UserId> {
    let user = UserId::parse(text);
    if user.is_none() {
        tracing::warn!(user = text, "data file: a user id that does not parse, skipped");
    }
    user
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
