//! The group commit: every change the in-process state makes is appended here, under the lock
//! that guarded the change, and one writer thread applies whatever has gathered in one
//! transaction and commits it. Callers wait for the committed sequence number to reach their
//! change (`Journal::durable`), so nothing is acknowledged before it is in the file, and many
//! callers share one fsync.
//!
//! The queue is bounded: a change that grows the store (a send, a registration, a contact
//! list, a burnt challenge) is refused while `MAX_PENDING_RECORDS` records or
//! `MAX_PENDING_BYTES` bytes wait, or while the file cannot be written; the client gets
//! `unavailable` and retries. A change that shrinks the store or updates a record in place
//! (a removal, an expiry, a renewal) is always taken: it is bounded by what is stored.
//!
//! A failed commit is retried, with a pause doubling up to a second, with the same records
//! and what came since (the store reopens its file first: see `file`). A panic in the writer
//! (a redb bug, a damaged file) stops it for good: the journal is marked broken, every waiter
//! is answered `unavailable` at once, growth is refused and the server is no longer ready.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::records::Record;
use crate::engine::unavailable::Unavailable;

/// Records waiting for the writer before changes that grow the store are refused.
pub const MAX_PENDING_RECORDS: usize = 100_000;

/// Bytes (mostly envelopes) waiting for the writer before changes that grow the store are
/// refused.
pub const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

/// How long a caller waits for its commit before it is answered `unavailable` (the file is not
/// being written: a full or failing disk). A second in unit tests, which wait for it.
const COMMIT_WAIT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// The first pause after a failed commit; it doubles up to a second while the failure lasts.
const RETRY_FIRST: Duration = Duration::from_millis(10);

/// Applies a batch of records in one transaction and commits it.
pub trait Store: Send + 'static {
    fn commit(&mut self, batch: &[Record]) -> Result<(), String>;
}

/// A handle on the queue and its writer thread; clones share them. The last one dropped
/// commits what is queued and closes the file.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    _writer: Arc<Writer>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    committed: watch::Sender<u64>,
    /// The last commit failed (cleared by the next that succeeds).
    failing: AtomicBool,
    /// The writer panicked: nothing will be written any more.
    broken: AtomicBool,
}

#[derive(Default)]
struct Queue {
    records: Vec<Record>,
    bytes: usize,
    /// The sequence number of the last record appended (1 for the first).
    appended: u64,
    closed: bool,
}

/// Stops and joins the writer thread when the last `Journal` goes.
struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Starts the writer thread over `store`.
    pub fn start(store: impl Store) -> std::io::Result<Journal> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            committed: watch::Sender::new(0),
            failing: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("enigma-journal".into()).spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| write_loop(&shared, store)));
                if let Err(panic) = outcome {
                    shared.break_down(&panic_text(&*panic));
                }
            })?
        };
        let writer = Arc::new(Writer { shared: shared.clone(), thread: Mutex::new(Some(thread)) });
        Ok(Journal { shared, _writer: writer })
    }

    /// Appends `record` to the next batch. Callers hold the lock under which they changed the
    /// state the record describes, so records about one thing are in the order of its changes.
    pub fn append(&self, record: Record) {
        if self.shared.broken.load(Ordering::Acquire) {
            return; // nothing will write it; waiters are answered `unavailable`
        }
        let mut queue = self.shared.queue();
        queue.bytes += record.size();
        queue.records.push(record);
        queue.appended += 1;
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Appends `records` together: the writer takes all of them into one batch (one
    /// transaction), never some without the others.
    pub fn append_all(&self, records: Vec<Record>) {
        if self.shared.broken.load(Ordering::Acquire) {
            return;
        }
        let mut queue = self.shared.queue();
        for record in records {
            queue.bytes += record.size();
            queue.records.push(record);
            queue.appended += 1;
        }
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Whether a change that grows the store may be appended now (see the module doc).
    pub fn has_room(&self) -> bool {
        if !self.healthy() {
            return false;
        }
        let queue = self.shared.queue();
        queue.records.len() < MAX_PENDING_RECORDS && queue.bytes < MAX_PENDING_BYTES
    }

    /// Waits until everything appended so far (by anyone) is committed to the file.
    pub async fn durable(&self) -> Result<(), Unavailable> {
        let mark = self.shared.queue().appended;
        let mut committed = self.shared.committed.subscribe();
        let broken = || self.shared.broken.load(Ordering::Acquire);
        if *committed.borrow_and_update() >= mark {
            return Ok(());
        }
        // `break_down` wakes every waiter: the predicate reads `broken` as well.
        match tokio::time::timeout(COMMIT_WAIT, committed.wait_for(|done| *done >= mark || broken())).await {
            Ok(Ok(done)) if *done >= mark => Ok(()),
            Ok(Ok(_)) => Err(Unavailable::said("the data file is no longer written (see the server's log)")),
            Ok(Err(_)) => Err(Unavailable::said("the data file is closed")),
            Err(_) => Err(Unavailable::said("the data file is not being written (see the server's log)")),
        }
    }

    /// Whether the file is being written (the last commit succeeded, the writer is running).
    pub fn healthy(&self) -> bool {
        !self.shared.failing.load(Ordering::Acquire) && !self.shared.broken.load(Ordering::Acquire)
    }

    /// Changes appended and not yet committed.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> u64 {
        let appended = self.shared.queue().appended;
        appended.saturating_sub(*self.shared.committed.borrow())
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer panicked: marks the journal broken, drops what waits (nothing will write it)
    /// and wakes every waiter to answer `unavailable`.
    fn break_down(&self, panic: &str) {
        self.broken.store(true, Ordering::Release);
        let dropped = {
            let mut queue = self.queue();
            queue.bytes = 0;
            std::mem::take(&mut queue.records).len()
        };
        tracing::error!(
            panic,
            dropped,
            "the data file's writer panicked: nothing more is written, changes are refused; restart the server"
        );
        self.committed.send_modify(|_| {});
    }
}

/// The message of a caught panic.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Takes what gathered, commits it, announces it; until closed and empty. A failed commit is
/// retried with the same records (each is a put or a delete of a whole record, so applying one
/// twice is harmless) plus whatever came since; the store reopens its file before the retry.
fn write_loop(shared: &Shared, mut store: impl Store) {
    let mut batch = Vec::new();
    let mut upto = 0;
    let mut pause = RETRY_FIRST;
    loop {
        {
            let mut queue = shared.queue();
            while queue.records.is_empty() && batch.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.records.is_empty() && batch.is_empty() {
                return; // closed, and everything committed
            }
            batch.append(&mut queue.records);
            queue.bytes = 0;
            upto = queue.appended.max(upto);
        }
        match store.commit(&batch) {
            Ok(()) => {
                batch.clear();
                pause = RETRY_FIRST;
                if shared.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the data file is written again");
                }
                shared.committed.send_replace(upto);
            }
            Err(e) => {
                if !shared.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, records = batch.len(), "cannot commit to the data file; retrying");
                }
                if shared.queue().closed && pause >= Duration::from_secs(1) {
                    tracing::error!(records = batch.len(), "closing with changes that could not be written");
                    return;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
