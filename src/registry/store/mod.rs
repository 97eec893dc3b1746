//! Durable control-plane state behind the [`Store`] trait: the journal of records
//! and the snapshot it is compacted into. [`FileStore`] keeps them in a state
//! directory for one process; [`EtcdStore`] in etcd, shared by every replica.

pub mod etcd;
mod file;

pub use etcd::EtcdStore;
pub use file::FileStore;

use std::path::PathBuf;

use super::ledger::Ledger;
use super::record::Record;

/// Journal records before the journal is folded into a new snapshot.
pub const COMPACT_AFTER_RECORDS: usize = 10_000;

/// Durable storage of the ledger. Every method blocks until its effect is durable.
pub trait Store: Send {
    /// Appends one record; returns once it is on stable storage.
    fn append(&mut self, record: &Record) -> Result<(), StoreError>;

    /// Writes `ledger` as the new snapshot and drops the journal records it covers.
    fn compact(&mut self, ledger: &Ledger) -> Result<(), StoreError>;

    /// Records appended since the last snapshot.
    fn records_since_snapshot(&self) -> usize;

    /// What others wrote after journal revision `after` (a shared store; a
    /// store with one writer has nothing). Called after an append was refused
    /// with [`StoreError::Conflict`], to catch up before deciding again.
    fn catch_up(&mut self, _after: u64) -> Result<CaughtUp, StoreError> {
        Ok(CaughtUp::default())
    }
}

/// What a shared store holds beyond a replica's ledger.
#[derive(Debug, Default)]
pub struct CaughtUp {
    /// A snapshot newer than the ledger (the records it covers are gone):
    /// replaces the ledger before `records` are applied.
    pub snapshot: Option<Ledger>,
    pub records: Vec<Record>,
}

/// What was on disk at start-up.
#[derive(Debug)]
pub struct Loaded {
    pub ledger: Ledger,
    /// Things recovered from (a torn journal tail), for the log.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {dir} is in use by another stagegate process{}; stop it or use another server.state_dir", holder.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        dir: PathBuf,
        holder: Option<String>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} line {line} is corrupt ({message}); it is followed by valid records, so it is not a torn write. Restore the state directory from a backup or move the file aside"
    )]
    CorruptJournal {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} is corrupt: {message}. Restore it from a backup or move it aside")]
    CorruptSnapshot { path: PathBuf, message: String },
    #[error(
        "the journal could not be written and its end could not be repaired ({0}); restart stagegate to recover"
    )]
    Poisoned(String),
    #[error("another replica journaled revision {revision} first")]
    Conflict { revision: u64 },
    #[error("{0}; the change was not made")]
    Unavailable(String),
    #[error(
        "etcd prefix {prefix} already holds {keys} key(s); migrate only into an empty prefix (or pick another store.prefix)"
    )]
    NotEmpty { prefix: String, keys: usize },
    #[error("etcd holds an unreadable {what}: {message}")]
    CorruptRecord { what: String, message: String },
}
