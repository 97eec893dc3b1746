//! The single writer of control-plane state, and [`Registry`], the handle that
//! sends it work.
//!
//! Every change goes through one task, one at a time: validate (the transition
//! rules), journal (append + fsync), apply to the ledger, build a new routing table,
//! swap. A caller's future resolves only after all of that, so a 2xx from the admin
//! API means the change is durable and live.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Published;
use super::command::Command;
use super::error::RegistryError;
use super::ledger::Ledger;
use super::merge::merge;
use super::probe::probe;
use super::record::{Action, Record, now};
use super::rollout::Phase;
use super::rollout_rules::Decision;
use super::rules::plan;
#[cfg(doc)]
use super::store::COMPACT_AFTER_RECORDS;
use super::store::{Store, StoreError};
use super::{Catalog, ModelSpec};
use crate::config::Config;

/// Called with a freshly validated config during a reload, before anything is
/// applied; an error refuses the whole reload.
pub type ReloadHook = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Queued requests before callers wait for a place.
const QUEUE: usize = 64;

/// A handle to the registry writer. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    requests: mpsc::Sender<Request>,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub routing_revision: u64,
    pub warnings: Vec<String>,
}

enum Work {
    Change {
        command: Box<Command>,
        actor: String,
        /// Refuse unless the journal is still at this revision.
        expected: Option<u64>,
    },
    Reload,
    Seed,
    /// Another replica wrote to the shared store: read and apply it.
    CatchUp,
}

enum Done {
    Changed(Arc<Record>),
    Reloaded(Reloaded),
    Seeded(usize),
    CaughtUp(usize),
}

/// Appends refused because another replica journaled first, before a change
/// gives up (each is followed by a catch-up and a fresh decision).
const CONFLICT_RETRIES: usize = 8;

struct Request {
    work: Work,
    reply: oneshot::Sender<Result<Done, RegistryError>>,
}

/// Everything the writer owns.
pub struct Writer {
    pub config: Config,
    pub ledger: Arc<Ledger>,
    pub store: Box<dyn Store>,
    pub published: Arc<Published>,
    pub probe_timeout: Duration,
    pub reload_hook: Option<ReloadHook>,
    /// Journal records after which the journal is folded into a snapshot
    /// (normally [`COMPACT_AFTER_RECORDS`]).
    pub compact_after: usize,
}

/// Stops the writer: the change in progress finishes, queued ones are refused
/// ([`RegistryError::Closed`]), and the store (with its lock) is released.
pub struct WriterStop {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl WriterStop {
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "registry writer task failed");
        }
    }
}

impl Registry {
    /// Starts the writer task.
    pub fn spawn(writer: Writer) -> (Registry, WriterStop) {
        let (requests, inbox) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(Task::new(writer).run(inbox, stop.clone()));
        (Registry { requests }, WriterStop { stop, task })
    }

    /// Makes a change; resolves once it is journaled and live.
    pub async fn change(
        &self,
        command: Command,
        actor: &str,
    ) -> Result<Arc<Record>, RegistryError> {
        self.change_at(command, actor, None).await
    }

    /// Makes a change decided on the state at journal revision `expected`: refused
    /// with [`RegistryError::Stale`] if another change came first, so a decision
    /// is never applied on top of a state it did not see.
    pub async fn change_at(
        &self,
        command: Command,
        actor: &str,
        expected: Option<u64>,
    ) -> Result<Arc<Record>, RegistryError> {
        let work = Work::Change {
            command: Box::new(command),
            actor: actor.to_string(),
            expected,
        };
        match self.send(work).await? {
            Done::Changed(record) => Ok(record),
            _ => Err(RegistryError::Closed),
        }
    }

    /// Journals the config's versions the journal has never seen (once, at
    /// start-up); returns how many.
    pub async fn seed(&self) -> Result<usize, RegistryError> {
        match self.send(Work::Seed).await? {
            Done::Seeded(count) => Ok(count),
            _ => Err(RegistryError::Closed),
        }
    }

    /// Applies what other replicas wrote to the shared store since this one's
    /// revision; returns how many records.
    pub async fn catch_up(&self) -> Result<usize, RegistryError> {
        match self.send(Work::CatchUp).await? {
            Done::CaughtUp(count) => Ok(count),
            _ => Err(RegistryError::Closed),
        }
    }

    /// Re-reads the config file; on any error the running state is unchanged.
    pub async fn reload(&self) -> Result<Reloaded, RegistryError> {
        match self.send(Work::Reload).await? {
            Done::Reloaded(reloaded) => Ok(reloaded),
            _ => Err(RegistryError::Closed),
        }
    }

    async fn send(&self, work: Work) -> Result<Done, RegistryError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { work, reply })
            .await
            .map_err(|_| RegistryError::Closed)?;
        answer.await.map_err(|_| RegistryError::Closed)?
    }
}

struct Task {
    config: Config,
    ledger: Arc<Ledger>,
    /// The served models: the config merged with the ledger.
    models: Vec<ModelSpec>,
    store: Arc<Mutex<Box<dyn Store>>>,
    published: Arc<Published>,
    probe_timeout: Duration,
    reload_hook: Option<ReloadHook>,
    compact_after: usize,
}

impl Task {
    fn new(writer: Writer) -> Task {
        let models = merge(&writer.config.models, &writer.ledger).models;
        let phases = Phase::ALL.map(Phase::as_str);
        for model in &models {
            if let Some(rollout) = &model.rollout {
                let telemetry = writer.published.telemetry();
                telemetry.rollout_phase(&model.name, rollout.phase.as_str(), &phases);
            }
        }
        Task {
            config: writer.config,
            ledger: writer.ledger,
            models,
            store: Arc::new(Mutex::new(writer.store)),
            published: writer.published,
            probe_timeout: writer.probe_timeout,
            reload_hook: writer.reload_hook,
            compact_after: writer.compact_after,
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Request>, stop: CancellationToken) {
        loop {
            let request = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                request = inbox.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            let result = match request.work {
                Work::Change {
                    command,
                    actor,
                    expected,
                } => self
                    .change(&command, &actor, expected)
                    .await
                    .map(Done::Changed),
                Work::Reload => self.reload().await.map(Done::Reloaded),
                Work::Seed => {
                    let models = self.models.clone();
                    self.seed(&models).await.map(Done::Seeded)
                }
                Work::CatchUp => self.catch_up().await.map(Done::CaughtUp),
            };
            // The caller may have gone; the change stands either way.
            let _ = request.reply.send(result);
        }
    }

    /// Validates `command` against the newest state, journals and applies it.
    /// When another replica journaled first, catches up and decides again (a
    /// change decided at `expected` is refused instead: its basis is gone).
    async fn change(
        &mut self,
        command: &Command,
        actor: &str,
        expected: Option<u64>,
    ) -> Result<Arc<Record>, RegistryError> {
        for _ in 0..CONFLICT_RETRIES {
            if let Some(expected) = expected.filter(|e| *e != self.ledger.revision) {
                return Err(RegistryError::Stale {
                    expected,
                    current: self.ledger.revision,
                });
            }
            let record = Arc::new(plan(&self.models, &self.ledger, command, actor)?);
            if let Command::Rollback { force: false, .. } = command {
                self.check_health(&record).await?;
            }
            match self.append(&record).await {
                Err(RegistryError::Store(StoreError::Conflict { revision })) => {
                    tracing::info!(
                        revision,
                        "another replica journaled first; deciding again on its state"
                    );
                    self.catch_up().await?;
                }
                appended => {
                    appended?;
                    self.applied(&record, command)?;
                    self.compact_if_due().await;
                    return Ok(record);
                }
            }
        }
        Err(RegistryError::Store(StoreError::Conflict {
            revision: self.ledger.revision + 1,
        }))
    }

    async fn append(&self, record: &Arc<Record>) -> Result<(), RegistryError> {
        self.with_store(|store, record| store.append(record), Arc::clone(record))
            .await
    }

    /// Applies a journaled record and makes it live.
    fn applied(&mut self, record: &Arc<Record>, command: &Command) -> Result<(), RegistryError> {
        Arc::make_mut(&mut self.ledger)
            .apply(Arc::clone(record))
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.models = merge(&self.config.models, &self.ledger).models;
        self.publish();
        self.count(record, command);
        Ok(())
    }

    /// Reads what other replicas journaled after this one's revision and makes
    /// it live; returns how many records were applied.
    async fn catch_up(&mut self) -> Result<usize, RegistryError> {
        let after = Arc::new(self.ledger.revision);
        let caught = self
            .with_store(|store, after| store.catch_up(*after), after)
            .await?;
        let mut ledger = match caught.snapshot {
            Some(snapshot) => snapshot,
            None => (*self.ledger).clone(),
        };
        let count = caught.records.len();
        for record in caught.records {
            ledger
                .apply(Arc::new(record))
                .map_err(|e| RegistryError::Internal(format!("catching up: {e}")))?;
        }
        if ledger.revision != self.ledger.revision {
            self.ledger = Arc::new(ledger);
            self.models = merge(&self.config.models, &self.ledger).models;
            self.publish();
        }
        Ok(count)
    }

    async fn check_health(&self, record: &Record) -> Result<(), RegistryError> {
        let Some(model) = self.models.iter().find(|m| m.name == record.model) else {
            return Ok(());
        };
        let Some(target) = model.versions.iter().find(|v| v.version == record.version) else {
            return Ok(());
        };
        let report = probe(&target.endpoints, &model.health_path, self.probe_timeout).await;
        if report.any_healthy() {
            return Ok(());
        }
        Err(RegistryError::Unhealthy {
            model: record.model.clone(),
            version: record.version.clone(),
            details: report.failures(),
        })
    }

    async fn reload(&mut self) -> Result<Reloaded, RegistryError> {
        let result = self.try_reload().await;
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.published.telemetry().config_reload(outcome);
        match &result {
            Ok(reloaded) => tracing::info!(revision = reloaded.routing_revision, "config reloaded"),
            Err(error) => tracing::error!(%error, "config reload refused"),
        }
        result
    }

    async fn try_reload(&mut self) -> Result<Reloaded, RegistryError> {
        let path: PathBuf = self
            .config
            .source
            .clone()
            .ok_or(RegistryError::NoConfigFile)?;
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let next = loaded.map_err(RegistryError::Reload)?;
        let fixed = self.config.unreloadable_changes(&next);
        if !fixed.is_empty() {
            return Err(RegistryError::NotReloadable(fixed));
        }
        if let Some(hook) = &self.reload_hook {
            hook(&next).map_err(|message| RegistryError::Invalid {
                field: "admin",
                message,
            })?;
        }
        let merged = merge(&next.models, &self.ledger);
        for warning in &merged.warnings {
            tracing::warn!("{warning}");
        }
        self.seed(&merged.models).await?;
        self.config = next;
        self.models = merged.models;
        let table = self.publish();
        Ok(Reloaded {
            routing_revision: table,
            warnings: merged.warnings,
        })
    }

    /// Journals every version of `models` the journal has not seen, in the stage it
    /// is served in, so that from then on the journal owns every stage and no
    /// config edit can change one without a record.
    async fn seed(&mut self, models: &[ModelSpec]) -> Result<usize, RegistryError> {
        let mut seeded = 0;
        let mut conflicts = 0;
        for model in models {
            for version in &model.versions {
                // Another replica may seed the same version at the same time:
                // whoever journals second catches up and finds it seeded.
                while self.ledger.stage(&model.name, &version.version).is_none() {
                    let record = Arc::new(Record {
                        revision: self.ledger.revision + 1,
                        time: now(),
                        actor: "config".to_string(),
                        action: Action::Seed,
                        model: model.name.clone(),
                        version: version.version.clone(),
                        from: None,
                        to: Some(version.stage),
                        reason: "first seen in the config".to_string(),
                        endpoints: Vec::new(),
                        grpc_endpoints: Vec::new(),
                        upstream_model: None,
                        also: Vec::new(),
                        shadow: None,
                        canary: None,
                        rollout: None,
                        observed: None,
                    });
                    match self.append(&record).await {
                        Err(RegistryError::Store(StoreError::Conflict { .. }))
                            if conflicts < CONFLICT_RETRIES =>
                        {
                            conflicts += 1;
                            self.catch_up().await?;
                            continue;
                        }
                        appended => appended?,
                    }
                    Arc::make_mut(&mut self.ledger)
                        .apply(record)
                        .map_err(|e| RegistryError::Internal(e.to_string()))?;
                    seeded += 1;
                }
            }
        }
        if seeded > 0 {
            self.publish();
        }
        Ok(seeded)
    }

    /// Builds and swaps in a routing table for the current state; returns its revision.
    fn publish(&self) -> u64 {
        let catalog = Catalog {
            models: self.models.clone(),
            ledger: Arc::clone(&self.ledger),
        };
        self.published.publish(Arc::new(catalog)).revision()
    }

    fn count(&self, record: &Record, command: &Command) {
        let telemetry = self.published.telemetry();
        for (_, stage) in record.moves() {
            telemetry.transition(&record.model, stage);
        }
        if record.action == Action::Rollback {
            telemetry.rollback(&record.model);
        }
        if let Some(rollout) = &record.rollout {
            let phases = Phase::ALL.map(Phase::as_str);
            telemetry.rollout_phase(&record.model, rollout.phase.as_str(), &phases);
            let step_began = matches!(
                command,
                Command::Rollout {
                    decision: Decision::Advance { .. },
                    ..
                }
            ) || matches!(command, Command::StartRollout { .. })
                && rollout.phase == Phase::Progressing;
            if step_began && rollout.phase == Phase::Progressing {
                telemetry.rollout_step(&record.model);
            }
        }
        if let Command::Rollout {
            decision: Decision::Fail { failure, .. },
            ..
        } = command
        {
            telemetry.rollout_gate_failure(&record.model, &failure.gate);
        }
    }

    async fn compact_if_due(&self) {
        let due = self
            .store
            .lock()
            .map(|store| store.records_since_snapshot() >= self.compact_after)
            .unwrap_or(false);
        if !due {
            return;
        }
        let ledger = Arc::clone(&self.ledger);
        match self
            .with_store(|store, ledger| store.compact(ledger), ledger)
            .await
        {
            Ok(()) => tracing::info!(
                revision = self.ledger.revision,
                "journal compacted into a snapshot"
            ),
            // The journal is intact; compaction is retried after the next change.
            Err(error) => tracing::warn!(%error, "journal compaction failed"),
        }
    }

    /// Runs blocking store I/O off the async workers.
    async fn with_store<T, R>(
        &self,
        operation: impl FnOnce(&mut dyn Store, &T) -> Result<R, super::store::StoreError>
        + Send
        + 'static,
        input: Arc<T>,
    ) -> Result<R, RegistryError>
    where
        T: Send + Sync + 'static,
        R: Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let done = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            operation(store.as_mut(), &input)
        })
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
        Ok(done?)
    }
}
