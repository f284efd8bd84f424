//! The data file gives back what the journal wrote, whatever the batches were; the journal
//! retries a failed commit and refuses growth meanwhile.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use proptest::prelude::*;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use super::journal::Store;
use super::records::{ContactsRow, InboxRow, MessageRow, UserRow};
use super::*;
use crate::engine::tree::batch::{TreeBatch, TreeSnapshot};
use crate::protocol::{MsgId, UserId};

/// A directory of the test's own, removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "enigma-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn users() -> Vec<UserId> {
    (0..3).map(|i| UserId::parse(&format!("00000000-0000-4000-8000-00000000000{i}")).unwrap()).collect()
}

fn prefixes() -> Vec<IpNet> {
    ["192.0.2.7/32", "2001:db8::/64", "10.0.0.0/8"].iter().map(|p| p.parse().unwrap()).collect()
}

fn record() -> impl Strategy<Value = Record> {
    let user = (0..3usize).prop_map(|i| users()[i].clone());
    let prefix = (0..3usize).prop_map(|i| prefixes()[i]);
    let id = (0..4u64, 0..3u64).prop_map(|(ms, seq)| MsgId { ms, seq });
    prop_oneof![
        (user.clone(), "[a-z]{1,12}", any::<bool>(), any::<u64>(), proptest::option::of(prefix.clone())).prop_map(
            |(user, key, protected, expires_ms, unused_from)| {
                let material = key.as_bytes().to_vec();
                Record::User(user, UserRow { public_key: key, material, protected, expires_ms, unused_from })
            }
        ),
        user.clone().prop_map(Record::ForgetUser),
        (user.clone(), id.clone(), any::<u64>(), any::<u64>())
            .prop_map(|(user, last, count, written_ms)| Record::Inbox(user, InboxRow { last, count, written_ms })),
        (user.clone(), id.clone(), any::<u64>(), user.clone(), prefix.clone(), any::<bool>(), ".{0,40}").prop_map(
            |(user, id, seq, from, prefix, stranger, text)| {
                Record::Message(
                    user,
                    id,
                    MessageRow { seq, from, prefix, stranger, envelope: text.into_bytes().into() },
                )
            }
        ),
        (user.clone(), id).prop_map(|(user, id)| Record::Remove(user, id)),
        (user.clone(), any::<u64>(), proptest::collection::vec(user.clone(), 0..4))
            .prop_map(|(user, at_ms, people)| Record::Contacts(user, ContactsRow { at_ms, people })),
        user.clone().prop_map(Record::ForgetContacts),
        ("[a-c]", any::<u64>()).prop_map(|(jti, until)| Record::Burn(jti, until)),
        "[a-c]".prop_map(Record::Unburn),
        (prefix.clone(), proptest::collection::vec((any::<u64>(), any::<u64>()), 0..3))
            .prop_map(|(prefix, days)| Record::Registered(prefix, days)),
        prefix.prop_map(Record::ForgetRegistered),
        "[a-z]{1,8}".prop_map(Record::TokenKey),
        (user.clone(), "[a-z]{1,8}").prop_map(|(user, key)| Record::Pending(user, key)),
        proptest::collection::vec(user.clone(), 0..3).prop_map(Record::Published),
        (
            proptest::collection::vec(("[a-c]", "[a-z]{0,4}"), 0..3),
            proptest::collection::vec(("[a-c]", 0..3u64, "[a-z]{0,4}"), 0..3)
        )
            .prop_map(|(nodes, states)| Record::Tree(TreeBatch {
                nodes: nodes.into_iter().map(|(k, v)| (k.into_bytes(), v.into_bytes())).collect(),
                states: states.into_iter().map(|(l, e, v)| (l.into_bytes(), e, v.into_bytes())).collect(),
            })),
        (1..4u64, any::<[u8; 32]>()).prop_map(|(epoch, hash)| Record::Root(epoch, hash)),
        ("vrf|signing", "[a-z]{1,8}").prop_map(|(name, value)| Record::Secret(name, value)),
    ]
}

/// What the file must hold after `records`, applied one by one to maps in the file's order.
fn expected(records: &[Record]) -> Snapshot {
    let mut users = BTreeMap::new();
    let mut inboxes = BTreeMap::new();
    let mut messages = BTreeMap::new();
    let mut contacts = BTreeMap::new();
    let mut burnt = BTreeMap::new();
    let mut registered = BTreeMap::new();
    let mut token_key = None;
    let mut nodes = BTreeMap::new();
    let mut states = BTreeMap::new();
    let mut roots = BTreeMap::new();
    let mut pending = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for record in records.iter().cloned() {
        match record {
            Record::User(user, row) => drop(users.insert(user, row)),
            Record::ForgetUser(user) => drop(users.remove(&user)),
            Record::Inbox(user, row) => drop(inboxes.insert(user, row)),
            Record::Message(user, id, row) => drop(messages.insert((user, id), row)),
            Record::Remove(user, id) => drop(messages.remove(&(user, id))),
            Record::Contacts(user, row) => drop(contacts.insert(user, row)),
            Record::ForgetContacts(user) => drop(contacts.remove(&user)),
            Record::Burn(jti, until) => drop(burnt.insert(jti, until)),
            Record::Unburn(jti) => drop(burnt.remove(&jti)),
            // The file orders prefixes by their text.
            Record::Registered(prefix, days) => drop(registered.insert(prefix.to_string(), (prefix, days))),
            Record::ForgetRegistered(prefix) => drop(registered.remove(&prefix.to_string())),
            Record::TokenKey(key) => token_key = Some(key),
            Record::Pending(user, key) => drop(pending.insert(user, key)),
            Record::Published(users) => users.iter().for_each(|user| drop(pending.remove(user))),
            Record::Tree(batch) => {
                nodes.extend(batch.nodes);
                states.extend(batch.states.into_iter().map(|(label, epoch, value)| ((label, epoch), value)));
            }
            Record::Root(epoch, hash) => drop(roots.insert(epoch, hash.to_vec())),
            Record::Secret(name, value) => drop(secrets.insert(name, value)),
        }
    }
    Snapshot {
        users: users.into_iter().collect(),
        inboxes: inboxes.into_iter().collect(),
        messages: messages.into_iter().map(|((user, id), row)| (user, id, row)).collect(),
        contacts: contacts.into_iter().collect(),
        burnt: burnt.into_iter().collect(),
        registered: registered.into_values().collect(),
        token_key,
        tree: TreeSnapshot {
            nodes: nodes.into_iter().collect(),
            states: states.into_iter().map(|((label, epoch), value)| (label, epoch, value)).collect(),
            roots: roots.into_iter().collect(),
            pending: pending.into_iter().collect(),
            secrets: secrets.into_iter().collect(),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the batches (a commit awaited after some records, not others), the reopened
    /// file holds what applying every record in order gives.
    #[test]
    fn the_file_holds_what_the_records_say(records in proptest::collection::vec((record(), any::<bool>()), 0..40)) {
        let scratch = Scratch::new();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        {
            let (journal, snapshot, _) = open(scratch.path()).unwrap();
            prop_assert_eq!(snapshot, Snapshot::default());
            runtime.block_on(async {
                for (record, wait) in &records {
                    journal.append(record.clone());
                    if *wait {
                        journal.durable().await.unwrap();
                    }
                }
            });
            // Dropped without waiting: closing commits what is queued.
        }
        let (_journal, snapshot, _) = open(scratch.path()).unwrap();
        let records: Vec<Record> = records.into_iter().map(|(record, _)| record).collect();
        prop_assert_eq!(snapshot, expected(&records));
    }
}

/// A store whose first `failures` commits fail; what it committed, batch by batch.
pub(crate) struct Flaky {
    pub(crate) failures: usize,
    pub(crate) committed: Arc<Mutex<Vec<Vec<Record>>>>,
}

impl Store for Flaky {
    fn commit(&mut self, batch: &[Record]) -> Result<(), String> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err("disk full".into());
        }
        self.committed.lock().unwrap().push(batch.to_vec());
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_commit_is_retried_and_growth_refused_meanwhile() {
    let committed = Arc::new(Mutex::new(Vec::new()));
    let journal = Journal::start(Flaky { failures: 3, committed: committed.clone() }).unwrap();
    assert!(journal.has_room() && journal.healthy());
    journal.append(Record::TokenKey("a".into()));
    // The writer fails three times (10 + 20 + 40 ms of pauses), then commits.
    let mut refused = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !journal.healthy() || committed.lock().unwrap().is_empty() {
        refused |= !journal.has_room();
        assert!(std::time::Instant::now() < deadline, "never committed");
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(refused, "growth was refused while the commits failed");
    journal.durable().await.unwrap();
    journal.append(Record::TokenKey("b".into()));
    journal.durable().await.unwrap();
    assert!(journal.has_room());
    let batches = committed.lock().unwrap().clone();
    let all: Vec<Record> = batches.into_iter().flatten().collect();
    assert_eq!(all, [Record::TokenKey("a".into()), Record::TokenKey("b".into())], "each once, in order");
}

#[test]
fn a_second_opener_and_an_unusable_directory_are_clear_errors() {
    let scratch = Scratch::new();
    let first = open(scratch.path()).unwrap();
    let second = open(scratch.path()).err().expect("the file is held");
    assert!(second.to_string().contains("in use by another process"), "{second}");
    drop(first);
    open(scratch.path()).expect("free again once the first is closed");
    // A regular file where the directory should be.
    let file = scratch.path().join("enigma.redb");
    let e = open(&file).err().expect("not a directory");
    assert!(e.to_string().contains("cannot create the data directory"), "{e}");
}

/// The data file, whose writes, resizes and fsyncs fail while `full` is set, as on a full disk.
#[derive(Debug)]
struct FullDisk {
    file: FileBackend,
    full: Arc<AtomicBool>,
}

impl FullDisk {
    fn check(&self) -> Result<(), BackendError> {
        match self.full.load(Ordering::Acquire) {
            true => Err(BackendError::Io(std::io::Error::from_raw_os_error(28))), // ENOSPC
            false => Ok(()),
        }
    }
}

impl StorageBackend for FullDisk {
    fn len(&self) -> Result<u64, BackendError> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), BackendError> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), BackendError> {
        self.file.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Polls `condition` (the writer is a thread of its own) for up to 5 s.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// redb fails every transaction after a failed write until the database is reopened: the
/// journal's retry must reopen it, so the server carries on once the disk has room again.
#[tokio::test]
async fn after_a_full_disk_the_file_is_written_again() {
    let scratch = Scratch::new();
    let full = Arc::new(AtomicBool::new(false));
    let file = {
        let full = full.clone();
        DataFile::open_on(scratch.path(), move |file| FullDisk { file: FileBackend::new(file), full: full.clone() })
            .unwrap()
    };
    let journal = Journal::start(file).unwrap();
    journal.append(Record::Burn("before".into(), 1));
    journal.durable().await.unwrap();
    full.store(true, Ordering::Release);
    journal.append(Record::Burn("during".into(), 2));
    eventually("the failed commit is noticed", || !journal.healthy());
    assert!(journal.durable().await.is_err(), "not committed while the disk is full");
    full.store(false, Ordering::Release);
    eventually("commits succeed again", || journal.healthy());
    journal.append(Record::Burn("after".into(), 3));
    journal.durable().await.expect("written again");
    assert!(journal.has_room());
    drop(journal);
    let (_journal, snapshot, _) = open(scratch.path()).unwrap();
    let burnt = [("after".into(), 3), ("before".into(), 1), ("during".into(), 2)];
    assert_eq!(snapshot.burnt, burnt, "the batch kept through the failure was written");
}

/// The file holds the token signing key: only its owner may read it, whatever the umask, and
/// one left open to others is restricted when the server starts.
#[cfg(unix)]
#[test]
fn the_data_file_and_its_directory_are_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let scratch = Scratch::new();
    let file = scratch.path().join(file::FILE_NAME);
    drop(open(scratch.path()).unwrap());
    assert_eq!((mode(scratch.path()), mode(&file)), (0o700, 0o600));
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(open(scratch.path()).unwrap());
    assert_eq!((mode(scratch.path()), mode(&file)), (0o700, 0o600), "restricted at the next start");
}

/// A store that panics, as redb may on a damaged file.
struct Panicking;

impl Store for Panicking {
    fn commit(&mut self, _: &[Record]) -> Result<(), String> {
        panic!("a damaged page");
    }
}

#[tokio::test]
async fn a_panicking_writer_fails_everyone_at_once_and_for_good() {
    let journal = Journal::start(Panicking).unwrap();
    journal.append(Record::TokenKey("a".into()));
    let started = Instant::now();
    let e = journal.durable().await.expect_err("never committed");
    assert!(started.elapsed() < Duration::from_millis(900), "answered at once, not after the wait");
    assert!(e.to_string().contains("no longer written"), "{e}");
    assert!(!journal.healthy() && !journal.has_room());
    journal.append(Record::TokenKey("b".into()));
    assert!(journal.durable().await.is_err(), "and everything after");
    assert_eq!(journal.waiting(), 1, "what came after is not queued: nothing would write it");
}

/// redb may panic or fail on a damaged file: either way a clear error naming the file.
#[test]
fn a_damaged_file_is_a_clear_error() {
    let scratch = Scratch::new();
    let path = scratch.path().join(file::FILE_NAME);
    {
        let (journal, _, _) = open(scratch.path()).unwrap();
        for n in 0..200 {
            journal.append(Record::Burn(format!("challenge {n}"), n));
        }
    }
    let whole = std::fs::read(&path).unwrap();
    let mut random = vec![0u8; whole.len()];
    getrandom::fill(&mut random).unwrap();
    let damaged: [(&str, Vec<u8>); 4] = [
        ("random bytes", random),
        ("truncated", whole[..whole.len() / 3].to_vec()),
        ("its header zeroed", [vec![0; 4096], whole[4096..].to_vec()].concat()),
        ("its middle zeroed", [&whole[..4096], &vec![0; whole.len() - 8192], &whole[whole.len() - 4096..]].concat()),
    ];
    for (how, bytes) in damaged {
        std::fs::write(&path, bytes).unwrap();
        let e = open(scratch.path()).err().unwrap_or_else(|| panic!("{how}: opened"));
        assert!(e.to_string().contains(&path.display().to_string()), "{how}: {e}");
    }
}

/// A file whose reads panic, as redb may on a damaged page.
#[derive(Debug)]
struct PanicsOnRead(FileBackend);

impl StorageBackend for PanicsOnRead {
    fn len(&self) -> Result<u64, BackendError> {
        self.0.len()
    }
    fn read(&self, _: u64, _: &mut [u8]) -> Result<(), BackendError> {
        panic!("a damaged page");
    }
    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), BackendError> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.write(offset, data)
    }
}

#[test]
fn a_panic_reading_the_file_is_a_clear_error() {
    let scratch = Scratch::new();
    drop(open(scratch.path()).unwrap());
    let e = super::open_on(scratch.path(), |file| PanicsOnRead(FileBackend::new(file))).err().expect("refused");
    let path = scratch.path().join(file::FILE_NAME).display().to_string();
    assert!(
        e.to_string().contains(&format!("cannot read the data file `{path}`, it is damaged (a damaged page)")),
        "{e}"
    );
}

/// A store whose commits say they started, then wait until told to go on.
struct Stalled {
    started: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

impl Store for Stalled {
    fn commit(&mut self, _: &[Record]) -> Result<(), String> {
        let _ = self.started.send(());
        let _ = self.go.recv();
        Ok(())
    }
}

/// A queue full while a slow commit runs refuses growth (and the server is not ready) as a
/// failing commit does.
#[test]
fn a_full_queue_refuses_growth_though_commits_succeed() {
    let (started, started_rx) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let journal = Journal::start(Stalled { started, go: go_rx }).unwrap();
    journal.append(Record::TokenKey("taken by the writer".into()));
    started_rx.recv().unwrap();
    for _ in 0..journal::MAX_PENDING_RECORDS {
        journal.append(Record::Unburn(String::new()));
    }
    assert!(journal.healthy() && !journal.has_room(), "full, not failing");
    drop(go);
}
