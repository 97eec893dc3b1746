//! Following an external model registry (MLflow): its aliases, or its legacy
//! stages, drive stagegate's stages, and stagegate's own changes are written back.
//!
//! - [`mlflow`]: the REST calls;
//! - [`view`]: one registered model read whole, and the slots naming versions;
//! - [`reconcile`]: the rules, pure: what to change in stagegate;
//! - [`write_back`]: what to write to MLflow so that it says what serves;
//! - [`status`]: what the sync last did, for the admin API;
//! - [`webhook`]: signed deliveries that trigger a poll.
//!
//! One task ([`Syncer`]) polls every `poll_interval_ms`, at once when forced
//! (`ctl registry sync`, a webhook), and whenever stagegate's journal changes (so
//! a `ctl rollback` is written back promptly). Changes go through the registry
//! writer like any other, with actor `mlflow`; a failed or partial read changes
//! nothing, and the data plane never waits on MLflow.

pub mod mlflow;
pub mod reconcile;
pub mod status;
pub mod view;
pub mod webhook;
pub mod write_back;

#[cfg(test)]
mod test_world;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::registry::{MlflowModel, RegistrySource, Secret};
use crate::registry::Published;
use crate::registry::record::now;
use crate::registry::{Catalog, Command, Registry, RegistryError};
use mlflow::{MlflowClient, MlflowError};
use reconcile::Inputs;
use status::{ModelSync, SyncStatus, WriteBackStats};
use view::ModelView;
use write_back::WriteBack;

/// The journal's actor for changes the sync makes.
pub const ACTOR: &str = "mlflow";
/// How often the sync looks for changes in stagegate's own journal.
const JOURNAL_CHECK: Duration = Duration::from_millis(100);
/// The first retry after a failure; it doubles up to the poll interval.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How often a follower looks whether it has become the leader.
const FOLLOWER_CHECK: Duration = Duration::from_millis(500);
/// Changes (besides journaling what MLflow shows) one sync may make to one model
/// before it stops and says so: this many, plus two per slot MLflow shows.
const BASE_CHANGES_PER_SYNC: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Mlflow(#[from] MlflowError),
    #[error("model {0:?} is not in the config")]
    UnknownModel(String),
    #[error("could not apply a change seen in MLflow ({what}): {source}")]
    Change {
        what: String,
        #[source]
        source: RegistryError,
    },
    #[error("more than {0} changes in one sync; stopped to look again")]
    TooManyChanges(usize),
    #[error("the sync has stopped")]
    Stopped,
}

/// A handle on the running sync: its status, and a way to make it poll now.
#[derive(Clone)]
pub struct SyncHandle {
    status: Arc<ArcSwap<SyncStatus>>,
    requests: mpsc::Sender<Option<oneshot::Sender<()>>>,
    webhook_secret: Option<Secret>,
    /// Polls asked for (webhook deliveries, sync requests): a follower passes
    /// them on to the leader, which is the one that polls.
    asked: Arc<AtomicU64>,
}

impl SyncHandle {
    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.load_full()
    }

    /// Polls now and resolves once that sync is over.
    pub async fn sync_now(&self) -> Result<Arc<SyncStatus>, SyncError> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let (done, finished) = oneshot::channel();
        self.requests
            .send(Some(done))
            .await
            .map_err(|_| SyncError::Stopped)?;
        finished.await.map_err(|_| SyncError::Stopped)?;
        Ok(self.status())
    }

    /// Asks for a poll without waiting for it (a webhook delivery).
    pub fn poke(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.poke_for_another();
    }

    /// How many polls have been asked for here since the start.
    pub fn polls_asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    /// Asks for a poll on behalf of another replica (not counted as asked here).
    pub fn poke_for_another(&self) {
        // A full queue already holds a request for a poll.
        let _ = self.requests.try_send(None);
    }

    pub fn webhook_secret(&self) -> Option<&Secret> {
        self.webhook_secret.as_ref()
    }
}

/// The sync task's state.
pub struct Syncer {
    source: RegistrySource,
    client: MlflowClient,
    published: Arc<Published>,
    registry: Registry,
    status: Arc<ArcSwap<SyncStatus>>,
    /// Only the cluster's leader polls MLflow and writes back (always true alone).
    leading: tokio::sync::watch::Receiver<bool>,
}

impl Syncer {
    /// Starts the sync task; it runs until `stop`, and syncs only while
    /// `leading` says this replica leads the cluster.
    pub fn spawn(
        source: RegistrySource,
        published: Arc<Published>,
        registry: Registry,
        leading: tokio::sync::watch::Receiver<bool>,
        stop: CancellationToken,
    ) -> (SyncHandle, tokio::task::JoinHandle<()>) {
        let status = SyncStatus {
            kind: "mlflow",
            url: source.url.clone(),
            write_back: source.write_back,
            webhook: source.webhook_secret.is_some(),
            state: "starting",
            last_attempt: None,
            last_success: None,
            last_success_at: None,
            last_error: None,
            consecutive_failures: 0,
            syncs: 0,
            write_backs: WriteBackStats::default(),
            models: source.models.iter().map(ModelSync::new).collect(),
        };
        let status = Arc::new(ArcSwap::from_pointee(status));
        let (requests, inbox) = mpsc::channel(8);
        published.telemetry().registry_sync_started();
        let handle = SyncHandle {
            status: Arc::clone(&status),
            requests,
            webhook_secret: source.webhook_secret.clone(),
            asked: Arc::default(),
        };
        let syncer = Syncer {
            client: MlflowClient::new(&source),
            source,
            published,
            registry,
            status,
            leading,
        };
        (handle, tokio::spawn(syncer.run(inbox, stop)))
    }

    async fn run(
        self,
        mut inbox: mpsc::Receiver<Option<oneshot::Sender<()>>>,
        stop: CancellationToken,
    ) {
        let mut next_poll = Instant::now();
        let mut retry = FIRST_RETRY;
        let mut synced_revision = None;
        let mut journal = tokio::time::interval(JOURNAL_CHECK);
        loop {
            let mut waiters = Vec::new();
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                request = inbox.recv() => match request {
                    Some(waiter) => waiters.extend(waiter),
                    None => return,
                },
                () = tokio::time::sleep_until(next_poll) => {}
                _ = journal.tick() => {
                    if Some(self.revision()) == synced_revision {
                        continue;
                    }
                }
            }
            // Requests that came while waiting are answered by this sync too.
            while let Ok(request) = inbox.try_recv() {
                waiters.extend(request);
            }
            if !*self.leading.borrow() {
                // The leader syncs; this replica follows its records.
                self.set_following();
                for waiter in waiters {
                    let _ = waiter.send(());
                }
                next_poll = Instant::now() + self.source.poll_interval.min(FOLLOWER_CHECK);
                continue;
            }
            // A sync waiting on a slow MLflow must not hold up a shutdown.
            let ok = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                ok = self.sync() => ok,
            };
            synced_revision = Some(self.revision());
            for waiter in waiters {
                let _ = waiter.send(());
            }
            let wait = if ok {
                retry = FIRST_RETRY;
                self.source.poll_interval
            } else {
                let wait = retry.min(self.source.poll_interval);
                retry = (retry * 2).min(self.source.poll_interval);
                wait
            };
            next_poll = Instant::now() + wait;
        }
    }

    fn set_following(&self) {
        if self.status.load().state != "following" {
            let mut status = (*self.status.load_full()).clone();
            status.state = "following";
            self.status.store(Arc::new(status));
        }
    }

    fn revision(&self) -> u64 {
        self.published.load().catalog().ledger.revision
    }

    /// One sync of every followed model; true when all of it succeeded.
    async fn sync(&self) -> bool {
        let previous = self.status.load_full();
        let mut models = Vec::with_capacity(self.source.models.len());
        let mut errors = Vec::new();
        let mut writes = previous.write_backs.clone();
        for mapping in &self.source.models {
            let mut state = previous
                .model(&mapping.model)
                .cloned()
                .unwrap_or_else(|| ModelSync::new(mapping));
            match self.sync_model(mapping, &mut state, &mut writes).await {
                Ok(()) => state.error = None,
                Err(error) => {
                    let message = crate::telemetry::error_chain(&error);
                    tracing::warn!(model = %mapping.model, error = %message, "registry sync failed");
                    errors.push(format!("{}: {message}", mapping.model));
                    state.error = Some(message);
                }
            }
            models.push(state);
        }
        let ok = errors.is_empty();
        let at = SystemTime::now();
        let mut status = (*previous).clone();
        status.last_attempt = Some(now());
        status.syncs += 1;
        status.models = models;
        status.write_backs = writes;
        if ok {
            status.state = "ok";
            status.last_success = status.last_attempt.clone();
            status.last_success_at = Some(at);
            status.last_error = None;
            status.consecutive_failures = 0;
        } else {
            status.state = "error";
            status.last_error = Some(errors.join("; "));
            status.consecutive_failures += 1;
        }
        let seconds = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let result = if ok { "success" } else { "error" };
        self.published.telemetry().registry_sync(result, seconds);
        self.status.store(Arc::new(status));
        ok
    }

    async fn sync_model(
        &self,
        mapping: &MlflowModel,
        state: &mut ModelSync,
        writes: &mut WriteBackStats,
    ) -> Result<(), SyncError> {
        let view = ModelView::read(&self.client, mapping).await?;
        let limit = BASE_CHANGES_PER_SYNC + 2 * view.slots(mapping).len();
        let mut changes = 0;
        loop {
            let catalog = self.catalog();
            let inputs = inputs(&catalog, mapping, &view)?;
            state.versions = reconcile::version_states(&inputs);
            state.waiting_for = reconcile::waiting_for(&inputs);
            state.serving = inputs.model.production().map(|v| v.version.clone());
            state.registry_production = view
                .slots(mapping)
                .into_values()
                .find(|s| s.role == crate::registry::Stage::Production)
                .map(|s| s.version);
            let Some(command) = reconcile::next_change(&inputs) else {
                let planned = if self.source.write_back {
                    write_back::write_backs(&inputs)
                } else {
                    Vec::new()
                };
                return self.write_back(mapping, &view, planned, writes).await;
            };
            if !matches!(command, Command::Observe { .. }) {
                changes += 1;
                if changes > limit {
                    return Err(SyncError::TooManyChanges(limit));
                }
            }
            let what = summary(&command);
            tracing::info!(model = %mapping.model, change = %what, "following MLflow");
            // Decided on this revision: a change someone else makes meanwhile
            // sends the loop round to decide again.
            let expected = Some(catalog.ledger.revision);
            match self.registry.change_at(command, ACTOR, expected).await {
                Ok(_) | Err(RegistryError::Stale { .. }) => {}
                Err(source) => return Err(SyncError::Change { what, source }),
            }
        }
    }

    async fn write_back(
        &self,
        mapping: &MlflowModel,
        view: &ModelView,
        planned: Vec<WriteBack>,
        stats: &mut WriteBackStats,
    ) -> Result<(), SyncError> {
        let mut failure = None;
        for write in planned {
            let name = &mapping.registered_model;
            let result = match &write {
                WriteBack::Alias { alias, version } => {
                    self.client.set_alias(name, alias, version).await
                }
                WriteBack::Stage { version, stage } => {
                    self.client.transition_stage(name, version, stage).await
                }
                WriteBack::Tag {
                    version,
                    key,
                    value,
                } => self.client.set_tag(name, version, key, value).await,
            };
            let telemetry = self.published.telemetry();
            match result {
                Ok(()) => {
                    tracing::info!(model = %mapping.model, ?write, "wrote back to MLflow");
                    telemetry.registry_write_back("success");
                    stats.succeeded += 1;
                    self.journal_written(mapping, view, &write).await?;
                }
                Err(error) => {
                    tracing::warn!(model = %mapping.model, %error, "write-back to MLflow failed");
                    telemetry.registry_write_back("error");
                    stats.failed += 1;
                    stats.last_error = Some(error.to_string());
                    failure = Some(error);
                }
            }
        }
        match failure {
            // Retried, with back-off, by the next sync: writes are recomputed
            // from what MLflow then shows, so none is applied twice.
            Some(error) => Err(error.into()),
            None => {
                stats.last_error = None;
                Ok(())
            }
        }
    }

    /// Journals what a production write-back made MLflow say, so that the next
    /// read, which shows it, is not taken for a person's change.
    async fn journal_written(
        &self,
        mapping: &MlflowModel,
        view: &ModelView,
        write: &WriteBack,
    ) -> Result<(), SyncError> {
        let catalog = self.catalog();
        let inputs = inputs(&catalog, mapping, view)?;
        let Some(command) = write_back::written(&inputs, write) else {
            return Ok(());
        };
        let what = summary(&command);
        self.registry
            .change(command, ACTOR)
            .await
            .map(drop)
            .map_err(|source| SyncError::Change { what, source })
    }

    fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(self.published.load().catalog())
    }
}

/// A change in a few words, for logs and errors.
fn summary(command: &Command) -> String {
    match command {
        Command::Observe { reason, .. } => format!("journaling what MLflow shows ({reason})"),
        Command::Register { version, .. } => format!("registering version {version}"),
        Command::Transition { version, to, .. } => format!("moving version {version} to {to}"),
        Command::Rollback { to_version, .. } => {
            format!(
                "rolling back to version {}",
                to_version.as_deref().unwrap_or("?")
            )
        }
        Command::StartRollout { candidate, .. } => format!("rolling out version {candidate}"),
        Command::Rollout { decision, .. } => format!("the rollout decision {}", decision.name()),
        Command::SetShadow { .. } | Command::SetCanary { .. } => "a settings change".to_string(),
    }
}

fn inputs<'a>(
    catalog: &'a Catalog,
    mapping: &'a MlflowModel,
    view: &'a ModelView,
) -> Result<Inputs<'a>, SyncError> {
    let model = catalog
        .model(&mapping.model)
        .ok_or_else(|| SyncError::UnknownModel(mapping.model.clone()))?;
    Ok(Inputs {
        mapping,
        model,
        ledger: catalog.ledger.model(&mapping.model),
        view,
    })
}
