//! The data file gives back what the journal wrote, whatever the batches were; the journal
//! retries a failed commit and refuses growth meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use proptest::prelude::*;

use super::journal::Store;
use super::records::{ContactsRow, InboxRow, MessageRow, UserRow};
use super::*;
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
        user.prop_map(Record::ForgetContacts),
        ("[a-c]", any::<u64>()).prop_map(|(jti, until)| Record::Burn(jti, until)),
        "[a-c]".prop_map(Record::Unburn),
        (prefix.clone(), proptest::collection::vec((any::<u64>(), any::<u64>()), 0..3))
            .prop_map(|(prefix, days)| Record::Registered(prefix, days)),
        prefix.prop_map(Record::ForgetRegistered),
        "[a-z]{1,8}".prop_map(Record::TokenKey),
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
struct Flaky {
    failures: usize,
    committed: Arc<Mutex<Vec<Vec<Record>>>>,
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
