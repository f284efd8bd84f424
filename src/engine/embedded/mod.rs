//! The embedded engine's durability: the memory engine's state and rules, with every change
//! also written to a local file, and the state rebuilt from that file at startup. Limits,
//! expiry and ordering are the memory engine's own code, so the two cannot drift apart; this
//! module only keeps the file.
//!
//! - `records`: what the file holds (rows) and the changes made to it (records).
//! - `journal`: the group commit. Changes are appended under the lock that made them; one
//!   writer thread commits whatever gathered in one transaction; a send is receipted, a login
//!   answered, a claim confirmed only once its batch is committed.
//! - `file`: the redb tables.
//!
//! The store is redb: pure Rust with no dependencies of its own (a lean build), ACID
//! transactions over a copy-on-write B-tree, crash-safe without a log to replay, a stable file
//! format, and a lock that keeps a second process off the file. Every commit here is
//! `Durability::Immediate` (fsynced before `commit` returns); redb's `Durability::None` commits
//! would be lost on a crash until a later durable one, so they are not used. fjall (an LSM tree)
//! writes faster under heavy load but brings more crates and compaction to tune; one node's
//! relay traffic fits a B-tree with batched commits.

pub mod file;
pub mod journal;
pub mod records;

use std::path::{Path, PathBuf};

pub use self::file::DataFile;
pub use self::journal::Journal;
pub use self::records::{Record, Snapshot};
use crate::engine::unavailable::Unavailable;

/// Opens the data file in `dir`, reads it, and starts the journal that writes to it; also
/// returns the file's absolute path. redb may panic on a damaged file: that is a clear error
/// naming the file, not a crash.
pub fn open(dir: &Path) -> Result<(Journal, Snapshot, PathBuf), Unavailable> {
    open_on(dir, redb::backends::FileBackend::new)
}

/// `open`, with the database over `backend(file)`.
fn open_on<B: redb::StorageBackend>(
    dir: &Path,
    backend: impl Fn(std::fs::File) -> B + Send + 'static,
) -> Result<(Journal, Snapshot, PathBuf), Unavailable> {
    // Nothing outlives a panic here but its message: the half-opened file is dropped.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let file = DataFile::open_on(dir, backend)?;
        let snapshot = file.load()?;
        Ok((file, snapshot))
    }));
    let (file, snapshot) = read.unwrap_or_else(|panic| {
        Err(Unavailable::said(format!(
            "cannot read the data file `{}`, it is damaged ({}): restore it from a backup, or move it away \
             to start with an empty one",
            dir.join(file::FILE_NAME).display(),
            journal::panic_text(&*panic)
        )))
    })?;
    let path = std::fs::canonicalize(file.path()).unwrap_or_else(|_| file.path().to_owned());
    let journal =
        Journal::start(file).map_err(|e| Unavailable::said(format!("cannot start the journal's writer: {e}")))?;
    Ok((journal, snapshot, path))
}

#[cfg(test)]
pub(crate) mod tests;
