//! Replicas sharing their measurements (with `[store] kind = "etcd"`): every
//! replica publishes, a few times a second, what its data plane counted on
//! each production and canary route, under a key bound to its lease, and reads
//! the others' into [`RemoteStats`] for the rollout controller to add to its
//! own. A replica that dies stops publishing and its key goes with its lease.
//!
//! Once a second each replica also publishes its shadow reports' shares (under
//! a key of their own, bound to the same lease, and only when they changed), so
//! the shadow report read from any replica, and the shadow gate, cover the
//! mirrors of every replica. The leader publishes its rollout readings the same
//! way, so `GET .../rollout` on a follower shows what the controller measured.
//! And a poll of the external registry asked of a follower (an MLflow webhook
//! delivery, `POST .../registry/sync`) is passed on to the leader through a key
//! it watches on every exchange.
//!
//! Above the registry (it reads the published table and talks to etcd), the
//! rollout controller (whose sink it fills) and the MLflow sync (which it pokes);
//! only the gateway's wiring uses it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::registry::Published;
use crate::registry::store::etcd::{EtcdClient, EtcdError, Keys, Kv};
use crate::rollout::remote::{Report, RouteKey, ShadowKey};
use crate::rollout::{RemoteStats, RolloutReadings, route_key};
use crate::routing::ServedStage;
use crate::routing::stats::StatsSnapshot;
use crate::shadow::report::ReportShare;
use crate::sync::SyncHandle;

/// How often measurements are published and read.
pub const EXCHANGE_EVERY: Duration = Duration::from_millis(250);
/// Shadow report shares are published and read every this many exchanges.
const SHADOW_EVERY: u32 = 4;

/// What one replica needs to take part.
pub struct Exchange {
    pub client: Arc<EtcdClient>,
    pub keys: Keys,
    pub replica: String,
    pub lease: watch::Receiver<Option<i64>>,
    pub published: Arc<Published>,
    pub remote: RemoteStats,
    pub leading: watch::Receiver<bool>,
    /// The local controller's readings (published while this replica leads).
    pub readings: RolloutReadings,
    /// The external registry's sync, when one is configured.
    pub sync: Option<SyncHandle>,
}

/// Publishes and reads until `stop`.
pub fn spawn(exchange: Exchange, stop: CancellationToken) -> JoinHandle<()> {
    // A new value per start, so the others know its counts began again.
    let incarnation = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EXCHANGE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut shadow, mut readings) = (LastPut::default(), LastPut::default());
        let mut polls = PollsPassedOn::default();
        for tick in 0u32.. {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => exchange.once(&incarnation).await,
            }
            if let Some(sync) = &exchange.sync {
                exchange.pass_on_polls(sync, &mut polls).await;
            }
            if tick % SHADOW_EVERY == 0 {
                exchange.shadow_once(&mut shadow).await;
                exchange.readings_once(&mut readings).await;
            }
        }
    })
}

impl Exchange {
    async fn once(&self, incarnation: &str) {
        let lease = *self.lease.borrow();
        if let Some(lease) = lease {
            let report = json!({
                "incarnation": incarnation,
                "routes": self.local_routes(),
            });
            let key = self.keys.measurements(&self.replica);
            if let Err(error) = self
                .client
                .put_leased(&key, report.to_string().as_bytes(), lease)
                .await
            {
                tracing::debug!(%error, "cannot publish this replica's measurements");
            }
        }
        let (start, end) = self.keys.all_measurements();
        let own = self.keys.measurements(&self.replica);
        match self.others(&start, &end, &own).await {
            Ok(kvs) => {
                let reports = kvs
                    .iter()
                    .filter_map(|kv| report(&kv.key, &kv.value, &start))
                    .collect();
                self.remote.observe(reports);
            }
            Err(error) => tracing::debug!(%error, "cannot read the other replicas' measurements"),
        }
    }

    /// Publishes this replica's shadow shares if they changed (or its lease did),
    /// and reads the others'.
    async fn shadow_once(&self, published: &mut LastPut) {
        let text = Value::Array(self.local_shadow()).to_string();
        let key = self.keys.shadow_reports(&self.replica);
        if let Err(error) = self.put_if_changed(&key, text, published).await {
            tracing::debug!(%error, "cannot publish this replica's shadow reports");
        }
        let (start, end) = self.keys.all_shadow_reports();
        let own = self.keys.shadow_reports(&self.replica);
        match self.others(&start, &end, &own).await {
            Ok(kvs) => {
                let shares = kvs.iter().flat_map(|kv| shadow_shares(&kv.value)).collect();
                self.remote.observe_shadow(shares);
            }
            Err(error) => {
                // Shown as this replica's alone rather than merged with frozen ones.
                self.remote.observe_shadow(Vec::new());
                tracing::debug!(%error, "cannot read the other replicas' shadow reports")
            }
        }
    }

    /// The keys in `[start, end)` other than this replica's `own`.
    async fn others(&self, start: &[u8], end: &[u8], own: &[u8]) -> Result<Vec<Kv>, EtcdError> {
        let (_, mut kvs) = self.client.range(start, Some(end), 0).await?;
        kvs.retain(|kv| kv.key != own);
        Ok(kvs)
    }

    /// A follower writes the polls asked of it to the request key; the leader
    /// polls when that key changes.
    async fn pass_on_polls(&self, sync: &SyncHandle, polls: &mut PollsPassedOn) {
        let key = self.keys.sync_requested();
        if !*self.leading.borrow() {
            let asked = sync.polls_asked();
            if asked != polls.asked {
                match self.client.put(&key, self.replica.as_bytes()).await {
                    Ok(()) => polls.asked = asked,
                    Err(error) => tracing::debug!(%error, "cannot pass a poll on to the leader"),
                }
            }
            return;
        }
        match self.client.range(&key, None, 0).await {
            Ok((_, kvs)) => {
                let requested = kvs.first().map_or(0, |kv| kv.mod_revision);
                // The first reading is where counting starts: the leader polls
                // when it takes over anyway.
                if polls.seen.is_some_and(|seen| requested > seen) {
                    sync.poke_for_another();
                }
                polls.seen = Some(requested);
            }
            Err(error) => tracing::debug!(%error, "cannot read the polls asked of followers"),
        }
    }

    /// Publishes the controller's readings while leading (when they changed);
    /// reads the leader's otherwise.
    async fn readings_once(&self, published: &mut LastPut) {
        if *self.leading.borrow() {
            self.remote.observe_leader_readings(serde_json::Map::new());
            let text = self.readings.to_json().to_string();
            if let Err(error) = self
                .put_if_changed(&self.keys.readings(), text, published)
                .await
            {
                tracing::debug!(%error, "cannot publish the rollout readings");
            }
            return;
        }
        // Another leader may write the key meanwhile: leading again, put anew.
        *published = LastPut::default();
        match self.client.range(&self.keys.readings(), None, 0).await {
            Ok((_, kvs)) => {
                let readings = kvs
                    .first()
                    .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                    .unwrap_or_default();
                self.remote.observe_leader_readings(readings);
            }
            Err(error) => {
                self.remote.observe_leader_readings(serde_json::Map::new());
                tracing::debug!(%error, "cannot read the leader's rollout readings")
            }
        }
    }

    /// Puts `text` under `key`, bound to this replica's lease, unless it is what
    /// was last put there under the same lease (nothing is put without a lease).
    async fn put_if_changed(
        &self,
        key: &[u8],
        text: String,
        last: &mut LastPut,
    ) -> Result<(), EtcdError> {
        let Some(lease) = *self.lease.borrow() else {
            return Ok(());
        };
        if last.lease == Some(lease) && last.text == text {
            return Ok(());
        }
        self.client.put_leased(key, text.as_bytes(), lease).await?;
        *last = LastPut {
            lease: Some(lease),
            text,
        };
        Ok(())
    }

    /// The share of every shadow report of this replica's table.
    fn local_shadow(&self) -> Vec<Value> {
        let table = self.published.load();
        let mut shares = Vec::new();
        for model in &table.catalog().models {
            let Some(served) = table.model(&model.name) else {
                continue;
            };
            let shadow = served.shadow();
            let reports = shadow.versions().iter().map(|v| (v, false));
            for (version, replay) in reports.chain(shadow.replay().map(|v| (v, true))) {
                shares.push(json!({
                    "model": model.name,
                    "version": version.version,
                    "replay": replay,
                    "share": version.report.share(),
                }));
            }
        }
        shares
    }

    /// Each model's production route, and its canary route while a rollout runs.
    fn local_routes(&self) -> Vec<Value> {
        let table = self.published.load();
        let mut routes = Vec::new();
        for model in &table.catalog().models {
            let Some(served) = table.model(&model.name) else {
                continue;
            };
            if let Some(production) = served.production() {
                let key = route_key(&model.name, production.version(), ServedStage::Production);
                routes.push(route_json(&key, &production.stats.snapshot()));
            }
            let candidate = model.rollout.as_ref().filter(|r| !r.phase.is_final());
            if let Some(rollout) = candidate
                && let Some(canary) = served.route(&rollout.candidate, ServedStage::Canary)
            {
                let key = route_key(&model.name, &rollout.candidate, ServedStage::Canary);
                routes.push(route_json(&key, &canary.stats.snapshot()));
            }
        }
        routes
    }
}

fn route_json((model, version, stage): &RouteKey, stats: &StatsSnapshot) -> Value {
    json!({ "model": model, "version": version, "stage": stage, "stats": stats.to_json() })
}

/// Polls passed on: as a follower, how many asked of it were passed on; as the
/// leader, the request key's revision last seen.
#[derive(Default)]
struct PollsPassedOn {
    asked: u64,
    seen: Option<i64>,
}

/// What this replica last put under a leased key, and under which lease.
#[derive(Default)]
struct LastPut {
    lease: Option<i64>,
    text: String,
}

/// Another replica's shadow shares; unreadable ones are skipped.
fn shadow_shares(value: &[u8]) -> Vec<(ShadowKey, ReportShare)> {
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(value) else {
        return Vec::new();
    };
    let share = |entry: &Value| {
        let key = (
            entry["model"].as_str()?.to_string(),
            entry["version"].as_str()?.to_string(),
            entry["replay"].as_bool()?,
        );
        let share = serde_json::from_value(entry["share"].clone()).ok()?;
        Some((key, share))
    };
    entries.iter().filter_map(share).collect()
}

/// Another replica's report, or `None` if it is unreadable (skipped).
fn report(key: &[u8], value: &[u8], prefix: &[u8]) -> Option<Report> {
    let replica = String::from_utf8_lossy(key.strip_prefix(prefix)?).into_owned();
    let value: Value = serde_json::from_slice(value).ok()?;
    let routes = value["routes"]
        .as_array()?
        .iter()
        .filter_map(|route| {
            let text = |field: &str| route[field].as_str().map(str::to_string);
            let key = (text("model")?, text("version")?, text("stage")?);
            Some((key, StatsSnapshot::from_json(&route["stats"])?))
        })
        .collect();
    Some(Report {
        replica,
        incarnation: value["incarnation"].as_str()?.to_string(),
        routes,
    })
}
