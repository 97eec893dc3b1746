//! Replicas sharing their measurements (with `[store] kind = "etcd"`): every
//! replica publishes, a few times a second, what its data plane counted on
//! each production and canary route, under a key bound to its lease, and reads
//! the others' into [`RemoteStats`] for the rollout controller to add to its
//! own. A replica that dies stops publishing and its key goes with its lease.
//!
//! Above the registry (it reads the published table and talks to etcd) and the
//! rollout controller (whose sink it fills); only the gateway's wiring uses it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::registry::Published;
use crate::registry::store::etcd::{EtcdClient, Keys};
use crate::rollout::remote::{Report, RouteKey};
use crate::rollout::{RemoteStats, route_key};
use crate::routing::ServedStage;
use crate::routing::stats::StatsSnapshot;

/// How often measurements are published and read.
pub const EXCHANGE_EVERY: Duration = Duration::from_millis(250);

/// What one replica needs to take part.
pub struct Exchange {
    pub client: Arc<EtcdClient>,
    pub keys: Keys,
    pub replica: String,
    pub lease: watch::Receiver<Option<i64>>,
    pub published: Arc<Published>,
    pub remote: RemoteStats,
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
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => exchange.once(&incarnation).await,
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
        match self.client.range(&start, Some(&end), 0).await {
            Ok((_, kvs)) => {
                let own = self.keys.measurements(&self.replica);
                let reports = kvs
                    .iter()
                    .filter(|kv| kv.key != own)
                    .filter_map(|kv| report(&kv.key, &kv.value, &start))
                    .collect();
                self.remote.observe(reports);
            }
            Err(error) => tracing::debug!(%error, "cannot read the other replicas' measurements"),
        }
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
