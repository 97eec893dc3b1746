//! [`FileStore`]: the journal, snapshot and lock file in a state directory.
//!
//! - `journal.jsonl`: one JSON record per line, appended and `fdatasync`ed before a
//!   change is acknowledged. A crash mid-append leaves a torn last line: it is
//!   detected at start-up (no newline, or not a record, with nothing valid after
//!   it), logged, and cut off. A bad line *followed by* valid ones is corruption,
//!   and start-up stops with the line number rather than guess.
//! - `snapshot.json`: the ledger at some revision, written to a temp file in the
//!   same directory, fsynced, renamed over the old one, then the directory fsynced.
//!   Journal records at or below its revision are skipped on replay, so a crash
//!   between writing the snapshot and emptying the journal loses nothing.
//! - `lock`: held with an exclusive advisory lock while the process runs, so a
//!   second process on the same directory is refused; it holds the owner's pid.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Loaded, Store, StoreError};
use crate::registry::ledger::Ledger;
use crate::registry::record::Record;

const JOURNAL: &str = "journal.jsonl";
const SNAPSHOT: &str = "snapshot.json";
const LOCK: &str = "lock";
const SNAPSHOT_FORMAT: u32 = 1;

pub struct FileStore {
    dir: PathBuf,
    journal_path: PathBuf,
    journal: File,
    /// Length of the journal up to its last complete record.
    journal_len: u64,
    since_snapshot: usize,
    poisoned: Option<String>,
    _lock: File,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    format: u32,
    ledger: Ledger,
}

impl FileStore {
    /// Locks `dir` (creating it if needed), loads the snapshot, replays the journal
    /// and repairs a torn tail.
    pub fn open(dir: &Path) -> Result<(FileStore, Loaded), StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let lock = lock(dir)?;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT))?;
        let journal_path = dir.join(JOURNAL);
        let created = !journal_path.exists();
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&journal_path)
            .map_err(io(&journal_path))?;
        if created {
            sync_dir(dir)?;
        }
        let replay = replay(&journal_path, &mut journal, snapshot)?;
        let mut warnings = Vec::new();
        if let Some(torn) = replay.torn {
            warnings.push(format!(
                "{}: ignored a torn last record ({torn}; {} bytes); the change it held was never acknowledged",
                journal_path.display(),
                replay.file_len - replay.valid_len,
            ));
            journal
                .set_len(replay.valid_len)
                .map_err(io(&journal_path))?;
            journal.sync_all().map_err(io(&journal_path))?;
        }
        let store = FileStore {
            dir: dir.to_path_buf(),
            journal_path,
            journal,
            journal_len: replay.valid_len,
            since_snapshot: replay.records,
            poisoned: None,
            _lock: lock,
        };
        Ok((
            store,
            Loaded {
                ledger: replay.ledger,
                warnings,
            },
        ))
    }

    fn write_snapshot(&self, ledger: &Ledger) -> Result<(), StoreError> {
        let path = self.dir.join(SNAPSHOT);
        let temp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let bytes = serde_json::to_vec(&SnapshotFile {
            format: SNAPSHOT_FORMAT,
            ledger: ledger.clone(),
        })
        .map_err(|e| StoreError::Io {
            path: temp.clone(),
            source: e.into(),
        })?;
        let mut file = File::create(&temp).map_err(io(&temp))?;
        file.write_all(&bytes).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        fs::rename(&temp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }
}

impl Store for FileStore {
    fn append(&mut self, record: &Record) -> Result<(), StoreError> {
        if let Some(reason) = &self.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        let mut line = serde_json::to_vec(record).map_err(|e| StoreError::Io {
            path: self.journal_path.clone(),
            source: e.into(),
        })?;
        line.push(b'\n');
        let written = self
            .journal
            .write_all(&line)
            .and_then(|()| self.journal.sync_data());
        if let Err(error) = written {
            // Cut off whatever part of the line reached the file, then refuse further
            // writes: after a failed fsync the page cache may hold data the disk
            // never got, and reusing this revision could let the unacknowledged
            // record survive a crash in place of an acknowledged one.
            let repair = self
                .journal
                .set_len(self.journal_len)
                .and_then(|()| self.journal.sync_all());
            self.poisoned = Some(match repair {
                Ok(()) => format!("a journal write failed: {error}"),
                Err(repair) => {
                    format!("a journal write failed: {error}; truncating back failed: {repair}")
                }
            });
            return Err(StoreError::Io {
                path: self.journal_path.clone(),
                source: error,
            });
        }
        self.journal_len += line.len() as u64;
        self.since_snapshot += 1;
        Ok(())
    }

    fn compact(&mut self, ledger: &Ledger) -> Result<(), StoreError> {
        if let Some(reason) = &self.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        self.write_snapshot(ledger)?;
        // The snapshot covers the journal now; emptying it may fail halfway, and
        // then the journal's length is unknown: refuse writes until a restart.
        if let Err(error) = self
            .journal
            .set_len(0)
            .and_then(|()| self.journal.sync_all())
        {
            self.poisoned = Some(format!(
                "emptying the journal after a snapshot failed: {error}"
            ));
            return Err(StoreError::Io {
                path: self.journal_path.clone(),
                source: error,
            });
        }
        self.journal_len = 0;
        self.since_snapshot = 0;
        Ok(())
    }

    fn records_since_snapshot(&self) -> usize {
        self.since_snapshot
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = Some(holder.trim().to_string()).filter(|h| !h.is_empty());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
    }
    file.set_len(0).map_err(io(&path))?;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(io(&path))?;
    Ok(file)
}

fn read_snapshot(path: &Path) -> Result<Ledger, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |message: String| StoreError::CorruptSnapshot {
        path: path.to_path_buf(),
        message,
    };
    let snapshot: SnapshotFile =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if snapshot.format != SNAPSHOT_FORMAT {
        return Err(corrupt(format!(
            "unknown snapshot format {}",
            snapshot.format
        )));
    }
    Ok(snapshot.ledger)
}

struct Replay {
    ledger: Ledger,
    valid_len: u64,
    file_len: u64,
    records: usize,
    /// Why the tail was cut off, if it was.
    torn: Option<String>,
}

/// Replays the journal over the snapshot's ledger. Records the snapshot already
/// covers are skipped; every other one must follow its predecessor exactly.
fn replay(path: &Path, journal: &mut File, mut ledger: Ledger) -> Result<Replay, StoreError> {
    let snapshot_revision = ledger.revision;
    let mut bytes = Vec::new();
    journal.read_to_end(&mut bytes).map_err(io(path))?;
    let (mut valid_len, mut records) = (0usize, 0usize);
    let mut bad: Option<(usize, String)> = None;
    let mut offset = 0;
    for (index, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        offset += line.len();
        let Some(content) = line.strip_suffix(b"\n") else {
            bad.get_or_insert((index + 1, "no line end".to_string()));
            break;
        };
        let parsed = serde_json::from_slice::<Record>(content);
        let record = match (parsed, &bad) {
            (Ok(_), Some((line, message))) => {
                return Err(StoreError::CorruptJournal {
                    path: path.to_path_buf(),
                    line: *line,
                    message: message.clone(),
                });
            }
            (Ok(record), None) => record,
            (Err(error), _) => {
                bad.get_or_insert((index + 1, error.to_string()));
                continue;
            }
        };
        if record.revision > snapshot_revision {
            ledger
                .apply(Arc::new(record))
                .map_err(|e| StoreError::CorruptJournal {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: e.to_string(),
                })?;
            records += 1;
        }
        valid_len = offset;
    }
    Ok(Replay {
        ledger,
        valid_len: valid_len as u64,
        file_len: bytes.len() as u64,
        records,
        torn: bad.map(|(line, message)| format!("line {line}: {message}")),
    })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
