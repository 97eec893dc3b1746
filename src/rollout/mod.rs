//! Rollouts: the controller task that moves a candidate through its canary steps
//! while the gates hold, and stops it when they don't.
//!
//! Every tick the controller reads the current routing table. For each running
//! rollout it reads the candidate's canary route, the production route and the
//! candidate's shadow report; [`window::Windows`] measures them over the
//! rollout's current window, [`step::judge`] asks the [`gates`], and decisions
//! go to the registry writer like any other change, naming the rollout and step
//! they judged and carrying the readings they rest on.
//!
//! - [`confidence`]: bounds that stay valid however often they are looked at;
//! - [`gates`]: each gate's pass, fail or wait, with its interval;
//! - [`step`]: what a look decides (advance, fail, hold);
//! - [`window`]: where each window began, with the clock passed in;
//! - [`remote`]: the other replicas' counts, added to this one's.

pub mod confidence;
pub mod gates;
pub mod remote;
#[cfg(test)]
mod samples;
pub mod step;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::Published;
use crate::registry::{Command, Decision, Registry, Rollout, failure_reason};
use crate::routing::stats::StatsSnapshot;
use crate::routing::{ModelRoutes, ServedStage};
pub use remote::RemoteStats;
pub use step::Readings;
use window::{Counters, Windows};

/// The actor the controller's decisions are journaled under.
pub const ACTOR: &str = "rollout-controller";

/// The latest readings per model, for `GET .../rollout`.
#[derive(Clone, Default)]
pub struct RolloutReadings(Arc<Mutex<HashMap<String, Readings>>>);

impl RolloutReadings {
    pub fn get(&self, model: &str) -> Option<Readings> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .cloned()
    }

    /// Every model's readings, as JSON (what the leader publishes).
    pub fn to_json(&self) -> serde_json::Value {
        let readings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        serde_json::to_value(&*readings).unwrap_or_default()
    }

    fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn set(&self, model: &str, readings: Readings) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_string(), readings);
    }
}

pub struct Controller {
    published: Arc<Published>,
    registry: Registry,
    /// Whether this replica runs the cluster's controller (always, with one replica).
    leading: tokio::sync::watch::Receiver<bool>,
    /// What the other replicas measured (nothing, with one replica).
    remote: RemoteStats,
    readings: RolloutReadings,
    windows: Windows,
    epoch: Instant,
    tick: Duration,
}

impl Controller {
    pub fn new(
        published: Arc<Published>,
        registry: Registry,
        readings: RolloutReadings,
        tick: Duration,
    ) -> Controller {
        Controller {
            published,
            registry,
            // Alone, a replica always leads.
            leading: tokio::sync::watch::channel(true).1,
            remote: RemoteStats::default(),
            readings,
            windows: Windows::default(),
            epoch: Instant::now(),
            tick,
        }
    }

    /// Decides only while `leading` says this replica leads the cluster; as a
    /// follower it measures nothing and its readings are cleared.
    pub fn leading_while(mut self, leading: tokio::sync::watch::Receiver<bool>) -> Controller {
        self.leading = leading;
        self
    }

    /// Judges on this replica's counts plus the other replicas' (`remote`).
    pub fn with_remote(mut self, remote: RemoteStats) -> Controller {
        self.remote = remote;
        self
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {
                    let leading = *self.leading.borrow();
                    self.published.telemetry().set_rollout_leader(leading);
                    if leading {
                        self.tick().await;
                    } else {
                        // A new leader starts its windows afresh.
                        self.windows = Windows::default();
                        self.readings.clear();
                    }
                }
            }
        }
    }

    async fn tick(&mut self) {
        let decisions = self.evaluate_all();
        for command in decisions {
            let model = command.model().to_string();
            match self.registry.change(command, ACTOR).await {
                Ok(record) => {
                    tracing::info!(%model, revision = record.revision, reason = %record.reason, "rollout decision applied")
                }
                // A person (or a restart) got there first; the next tick re-reads.
                Err(error) => tracing::debug!(%model, %error, "rollout decision not applied"),
            }
        }
    }

    /// The decisions of this tick; updates windows and readings.
    fn evaluate_all(&mut self) -> Vec<Command> {
        let table = self.published.load();
        let now = self.epoch.elapsed();
        let mut decisions = Vec::new();
        let mut live = Vec::new();
        for model in &table.catalog().models {
            let Some(routes) = table.model(&model.name) else {
                continue;
            };
            let Some(rollout) = model.rollout.as_ref().filter(|r| !r.phase.is_final()) else {
                // No rollout: keep production's record for the next one.
                if let Some(production) = routes.production() {
                    let route =
                        route_key(&model.name, production.version(), ServedStage::Production);
                    let remote = &self.remote;
                    let stats = || remote.merged(&route, production.stats.snapshot());
                    self.windows
                        .remember(&model.name, production.version(), now, stats);
                }
                continue;
            };
            live.push(model.name.clone());
            let (decision, readings) = self.look(&model.name, rollout, routes, now);
            if let Some(decision) = decision {
                decisions.push(Command::Rollout {
                    model: model.name.clone(),
                    id: Some(rollout.id),
                    reason: describe(&decision, rollout, &readings),
                    evidence: readings.gates.clone(),
                    decision,
                });
            }
            self.readings.set(&model.name, readings);
        }
        let models = &table.catalog().models;
        self.windows.retain(
            |model| live.iter().any(|m| m == model),
            |model| models.iter().any(|m| m.name == model),
        );
        decisions
    }

    fn look(
        &mut self,
        model: &str,
        rollout: &Rollout,
        routes: &ModelRoutes,
        now: Duration,
    ) -> (Option<Decision>, Readings) {
        // A route that does not exist (yet) has served nothing.
        let snapshot = |stage: ServedStage, version: &str| -> StatsSnapshot {
            let local = routes
                .route(version, stage)
                .map_or_else(StatsSnapshot::default, |r| r.stats.snapshot());
            self.remote.merged(&route_key(model, version, stage), local)
        };
        let candidate = snapshot(ServedStage::Canary, &rollout.candidate);
        let stable_version = routes.production().map_or("", |p| p.version());
        let stable = snapshot(ServedStage::Production, stable_version);
        let counters = Counters {
            candidate: &candidate,
            stable_version,
            stable: &stable,
            shadow: routes.shadow().report(&rollout.candidate).map(|r| {
                r.agreement_with(&self.remote.shadow_shares(model, &rollout.candidate, false))
            }),
        };
        self.windows.look(model, rollout, now, &counters)
    }
}

pub fn route_key(model: &str, version: &str, stage: ServedStage) -> remote::RouteKey {
    (
        model.to_string(),
        version.to_string(),
        stage.as_str().to_string(),
    )
}

/// The journal's reason for a controller decision.
pub fn describe(decision: &Decision, rollout: &Rollout, readings: &Readings) -> String {
    let steps = &rollout.plan.steps;
    let gates: Vec<String> = readings.gates.iter().map(|g| g.summary()).collect();
    let evidence = if gates.is_empty() {
        String::new()
    } else {
        format!(" ({})", gates.join("; "))
    };
    let at = |step: usize| {
        let weight = steps.get(step).copied().unwrap_or(0.0);
        format!("step {} at {weight}%", step + 1)
    };
    match decision {
        Decision::Advance { from_step: None } => format!(
            "shadow gate passed{evidence}; canary at {}%",
            steps.first().copied().unwrap_or(0.0)
        ),
        Decision::Advance {
            from_step: Some(step),
        } => match steps.get(step + 1) {
            Some(next) => format!(
                "{} passed its gates{evidence}; canary at {next}%",
                at(*step)
            ),
            None => format!("last {} passed its gates{evidence}; promoting", at(*step)),
        },
        Decision::Fail { failure, .. } => failure_reason(failure),
        Decision::Hold { at_step } => {
            let window = at_step.map_or_else(|| "the wait for shadow evidence".into(), at);
            format!(
                "{window} held after {:.0} s without enough evidence: waiting for {}",
                readings.elapsed_s, readings.waiting_for
            )
        }
        other => other.name().to_string(),
    }
}
