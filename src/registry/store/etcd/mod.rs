//! [`EtcdStore`]: the journal and its snapshot in etcd, shared by every replica
//! of one stagegate cluster.
//!
//! Keys under the configured prefix: `journal/<revision, 20 digits>` holds one
//! record, `snapshot` the ledger the journal was last folded into. Revision N
//! is appended only if its key does not exist yet (a transaction comparing its
//! create revision with 0), so of two replicas deciding on the same state only
//! one journals; the other is told [`StoreError::Conflict`], catches up and
//! decides again. Replicas follow each other's records with a watch
//! ([`follow`]).

mod client;
pub mod election;
pub mod follow;

pub use client::{EtcdClient, EtcdError, Kv};

use std::sync::Arc;

use tokio::runtime::Handle;

use super::{CaughtUp, Loaded, Store, StoreError};
use crate::config::store::EtcdConfig;
use crate::registry::ledger::Ledger;
use crate::registry::record::Record;

/// Where one cluster's keys live.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn journal(&self, revision: u64) -> Vec<u8> {
        format!("{}/journal/{revision:020}", self.prefix).into_bytes()
    }

    /// The end of the journal's key range (exclusive).
    pub fn journal_end(&self) -> Vec<u8> {
        format!("{}/journal0", self.prefix).into_bytes()
    }

    pub fn snapshot(&self) -> Vec<u8> {
        format!("{}/snapshot", self.prefix).into_bytes()
    }

    /// Whether `key` is part of the state (a journal record or the snapshot).
    pub fn is_state(&self, key: &[u8]) -> bool {
        let journal = format!("{}/journal/", self.prefix);
        key.starts_with(journal.as_bytes()) || key == self.snapshot().as_slice()
    }

    /// Held by the replica that runs the rollout controller.
    pub fn leader(&self) -> Vec<u8> {
        format!("{}/leader", self.prefix).into_bytes()
    }

    /// Where `replica` publishes what it measured (bound to its lease).
    pub fn measurements(&self, replica: &str) -> Vec<u8> {
        format!("{}/measurements/{replica}", self.prefix).into_bytes()
    }

    /// Where a follower asks the leader to poll the external registry now.
    pub fn sync_requested(&self) -> Vec<u8> {
        format!("{}/sync-requested", self.prefix).into_bytes()
    }

    /// Where the leader publishes its rollout readings.
    pub fn readings(&self) -> Vec<u8> {
        format!("{}/readings", self.prefix).into_bytes()
    }

    /// Where a replica publishes its shadow reports' shares.
    pub fn shadow_reports(&self, replica: &str) -> Vec<u8> {
        format!("{}/shadow/{replica}", self.prefix).into_bytes()
    }

    /// Every replica's shadow reports: `[prefix/shadow/, prefix/shadow0)`.
    pub fn all_shadow_reports(&self) -> (Vec<u8>, Vec<u8>) {
        (
            format!("{}/shadow/", self.prefix).into_bytes(),
            format!("{}/shadow0", self.prefix).into_bytes(),
        )
    }

    /// Every replica's measurements: `[prefix/measurements/, prefix/measurements0)`.
    pub fn all_measurements(&self) -> (Vec<u8>, Vec<u8>) {
        (
            format!("{}/measurements/", self.prefix).into_bytes(),
            format!("{}/measurements0", self.prefix).into_bytes(),
        )
    }

    /// Every key of the cluster: `[prefix/, prefix0)`.
    pub fn range(&self) -> (Vec<u8>, Vec<u8>) {
        (
            format!("{}/", self.prefix).into_bytes(),
            format!("{}0", self.prefix).into_bytes(),
        )
    }
}

pub struct EtcdStore {
    client: Arc<EtcdClient>,
    keys: Keys,
    runtime: Handle,
    since_snapshot: usize,
    /// The snapshot key's etcd revision when last seen (0: none), so a
    /// compaction replaces only the snapshot it read.
    snapshot_revision: i64,
}

/// What [`EtcdStore::open`] read: the state, and the etcd revision it was read
/// at, from which a watch follows what comes after.
pub struct Opened {
    pub store: EtcdStore,
    pub loaded: Loaded,
    pub etcd_revision: i64,
}

impl EtcdStore {
    /// Reads the whole state (the snapshot, then the journal after it, at the
    /// same etcd revision).
    pub async fn open(config: &EtcdConfig) -> Result<Opened, StoreError> {
        let client = Arc::new(EtcdClient::new(config));
        let keys = Keys::new(&config.prefix);
        let state = read_state(&client, &keys, 0).await?;
        let mut ledger = state.snapshot.unwrap_or_default();
        let since_snapshot = state.records.len();
        for record in state.records {
            apply(&mut ledger, record)?;
        }
        let store = EtcdStore {
            client,
            keys,
            runtime: Handle::current(),
            since_snapshot,
            snapshot_revision: state.snapshot_revision,
        };
        Ok(Opened {
            store,
            loaded: Loaded {
                ledger,
                warnings: Vec::new(),
            },
            etcd_revision: state.etcd_revision,
        })
    }

    pub fn client(&self) -> Arc<EtcdClient> {
        Arc::clone(&self.client)
    }

    pub fn keys(&self) -> Keys {
        self.keys.clone()
    }

    /// Runs an etcd call from the writer's blocking thread.
    fn block_on<T>(&self, call: impl Future<Output = T>) -> T {
        self.runtime.block_on(call)
    }
}

impl Store for EtcdStore {
    fn append(&mut self, record: &Record) -> Result<(), StoreError> {
        let value =
            serde_json::to_vec(record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let key = self.keys.journal(record.revision);
        let client = Arc::clone(&self.client);
        let (created, _) = self
            .block_on(async move { client.create(&[(key, value)]).await })
            .map_err(unavailable)?;
        if !created {
            return Err(StoreError::Conflict {
                revision: record.revision,
            });
        }
        self.since_snapshot += 1;
        Ok(())
    }

    fn compact(&mut self, ledger: &Ledger) -> Result<(), StoreError> {
        let value =
            serde_json::to_vec(ledger).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (client, keys, guard) = (
            Arc::clone(&self.client),
            self.keys.clone(),
            self.snapshot_revision,
        );
        let covered_end = keys.journal(ledger.revision + 1);
        let (replaced, revision) = self
            .block_on(async move {
                let (snapshot, start) = (keys.snapshot(), keys.journal(0));
                client
                    .replace(
                        (&snapshot, guard),
                        (&snapshot, &value),
                        (&start, &covered_end),
                    )
                    .await
            })
            .map_err(unavailable)?;
        if !replaced {
            // Another replica compacted first; read its snapshot's revision for next time.
            let (client, key) = (Arc::clone(&self.client), self.keys.snapshot());
            let (_, kvs) = self
                .block_on(async move { client.range(&key, None, 0).await })
                .map_err(unavailable)?;
            self.snapshot_revision = kvs.first().map_or(0, |kv| kv.mod_revision);
            return Err(StoreError::Unavailable(
                "another replica compacted the journal first".into(),
            ));
        }
        self.snapshot_revision = revision;
        self.since_snapshot = 0;
        Ok(())
    }

    fn records_since_snapshot(&self) -> usize {
        self.since_snapshot
    }

    fn catch_up(&mut self, after: u64) -> Result<CaughtUp, StoreError> {
        let (client, keys) = (Arc::clone(&self.client), self.keys.clone());
        let state = self.block_on(async move { read_state(&client, &keys, after).await })?;
        self.snapshot_revision = state.snapshot_revision;
        // A snapshot at or below `after` adds nothing the ledger lacks.
        let snapshot = state.snapshot.filter(|s| s.revision > after);
        let floor = snapshot.as_ref().map_or(after, |s| s.revision);
        let records = state
            .records
            .into_iter()
            .filter(|r| r.revision > floor)
            .collect();
        Ok(CaughtUp { snapshot, records })
    }
}

/// Copies `ledger` (a state directory's whole state, history included) into
/// the configured prefix as its snapshot; refuses a prefix that holds anything.
pub async fn migrate(config: &EtcdConfig, ledger: &Ledger) -> Result<(), StoreError> {
    let client = EtcdClient::new(config);
    let keys = Keys::new(&config.prefix);
    let (start, end) = keys.range();
    let (_, held) = client
        .range(&start, Some(&end), 0)
        .await
        .map_err(unavailable)?;
    if !held.is_empty() {
        return Err(StoreError::NotEmpty {
            prefix: config.prefix.clone(),
            keys: held.len(),
        });
    }
    let value = serde_json::to_vec(ledger).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    // Created only if still absent (a second migration racing this one loses).
    let puts = [(keys.snapshot(), value)];
    let (created, _) = client.create(&puts).await.map_err(unavailable)?;
    if !created {
        return Err(StoreError::NotEmpty {
            prefix: config.prefix.clone(),
            keys: 1,
        });
    }
    Ok(())
}

struct State {
    snapshot: Option<Ledger>,
    snapshot_revision: i64,
    records: Vec<Record>,
    etcd_revision: i64,
}

/// The snapshot and the journal records after `after` (or after the snapshot,
/// whichever is later), read at one etcd revision.
async fn read_state(client: &EtcdClient, keys: &Keys, after: u64) -> Result<State, StoreError> {
    let (etcd_revision, snapshots) = client
        .range(&keys.snapshot(), None, 0)
        .await
        .map_err(unavailable)?;
    let (snapshot, snapshot_revision) = match snapshots.first() {
        Some(kv) => {
            let ledger: Ledger =
                serde_json::from_slice(&kv.value).map_err(|e| StoreError::CorruptRecord {
                    what: "snapshot".into(),
                    message: e.to_string(),
                })?;
            (Some(ledger), kv.mod_revision)
        }
        None => (None, 0),
    };
    let from = after.max(snapshot.as_ref().map_or(0, |s| s.revision)) + 1;
    let (_, kvs) = client
        .range(
            &keys.journal(from),
            Some(&keys.journal_end()),
            etcd_revision,
        )
        .await
        .map_err(unavailable)?;
    let mut records = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let record: Record =
            serde_json::from_slice(&kv.value).map_err(|e| StoreError::CorruptRecord {
                what: String::from_utf8_lossy(&kv.key).into_owned(),
                message: e.to_string(),
            })?;
        records.push(record);
    }
    Ok(State {
        snapshot,
        snapshot_revision,
        records,
        etcd_revision,
    })
}

fn apply(ledger: &mut Ledger, record: Record) -> Result<(), StoreError> {
    let revision = record.revision;
    ledger
        .apply(Arc::new(record))
        .map_err(|e| StoreError::CorruptRecord {
            what: format!("journal record {revision}"),
            message: e.to_string(),
        })
}

fn unavailable(error: EtcdError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}
