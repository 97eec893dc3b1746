//! Rollouts: the controller task that moves a candidate through its canary steps
//! while the gates hold, and stops it when they don't.
//!
//! Every tick the controller looks at the current routing table. For each running
//! rollout it measures the candidate (its canary route) against stable (the
//! production route) since the step began, and the candidate's shadow report;
//! [`gates::evaluate`] says what to do; decisions go to the registry writer like
//! any other change, naming the rollout and step they judged. The step clock
//! lives here, in memory: after a restart a step's time counts from the restart,
//! and the step itself is the journal's.

pub mod gates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::{Command, Phase, Registry, Rollout};
use crate::routing::stats::StatsSnapshot;
use crate::routing::{ModelRoutes, Router, ServedStage};
pub use gates::Readings;

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

    fn set(&self, model: &str, readings: Readings) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_string(), readings);
    }
}

/// Where a step began: when, and the counters then.
struct StepClock {
    key: (u64, usize, Phase),
    started: Instant,
    candidate: StatsSnapshot,
    stable: StatsSnapshot,
    /// The latest stable p99 this rollout measured, carried across its steps.
    stable_p99: Option<Duration>,
}

pub struct Controller {
    router: Arc<Router>,
    registry: Registry,
    readings: RolloutReadings,
    clocks: HashMap<String, StepClock>,
    tick: Duration,
}

impl Controller {
    pub fn new(
        router: Arc<Router>,
        registry: Registry,
        readings: RolloutReadings,
        tick: Duration,
    ) -> Controller {
        Controller {
            router,
            registry,
            readings,
            clocks: HashMap::new(),
            tick,
        }
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.tick().await,
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

    /// The decisions of this tick; updates clocks and readings.
    fn evaluate_all(&mut self) -> Vec<Command> {
        let table = self.router.load();
        let mut decisions = Vec::new();
        let mut live = Vec::new();
        for model in &table.catalog().models {
            let Some(rollout) = model.rollout.as_ref().filter(|r| !r.phase.is_final()) else {
                continue;
            };
            let Some(routes) = table.model(&model.name) else {
                continue;
            };
            live.push(model.name.clone());
            let (decision, readings) = self.evaluate(&model.name, rollout, routes);
            self.readings.set(&model.name, readings);
            if let Some(decision) = decision {
                let reason = describe(&decision, rollout);
                decisions.push(Command::Rollout {
                    model: model.name.clone(),
                    id: Some(rollout.id),
                    decision,
                    reason,
                });
            }
        }
        self.clocks.retain(|model, _| live.contains(model));
        decisions
    }

    fn evaluate(
        &mut self,
        model: &str,
        rollout: &Rollout,
        routes: &ModelRoutes,
    ) -> (Option<crate::registry::Decision>, Readings) {
        let snapshot = |stage: ServedStage, version: &str| {
            routes
                .route(version, stage)
                .map(|r| r.stats.snapshot())
                .unwrap_or_else(|| crate::routing::stats::RouteStats::default().snapshot())
        };
        let candidate = snapshot(ServedStage::Canary, &rollout.candidate);
        let stable_version = routes
            .production()
            .map(|r| r.version().to_string())
            .unwrap_or_default();
        let stable = snapshot(ServedStage::Production, &stable_version);
        let key = (rollout.id, rollout.step, rollout.phase);
        let fresh = |stable_p99| StepClock {
            key,
            started: Instant::now(),
            candidate: candidate.clone(),
            stable: stable.clone(),
            stable_p99,
        };
        let clock = self
            .clocks
            .entry(model.to_string())
            .or_insert_with(|| fresh(None));
        if clock.key != key {
            let carried = if clock.key.0 == rollout.id {
                clock.stable_p99
            } else {
                None
            };
            *clock = fresh(carried);
        }
        let stable_step = stable.since(&clock.stable);
        let shadow = routes
            .shadow()
            .report(&rollout.candidate)
            .map(|r| r.agreement());
        let measured = gates::Measured {
            elapsed: clock.started.elapsed(),
            candidate: &candidate.since(&clock.candidate),
            stable: &stable_step,
            shadow,
            stable_p99_before: clock.stable_p99,
        };
        if let Some(p99) = gates::stable_p99(&stable_step) {
            clock.stable_p99 = Some(p99);
        }
        gates::evaluate(rollout, &measured)
    }
}

/// The journal's reason for a controller decision.
fn describe(decision: &crate::registry::Decision, rollout: &Rollout) -> String {
    use crate::registry::Decision;
    let steps = &rollout.plan.steps;
    match decision {
        Decision::Advance { from_step: None } => format!(
            "shadow gate passed; canary at {}%",
            steps.first().copied().unwrap_or(0.0)
        ),
        Decision::Advance {
            from_step: Some(step),
        } => match steps.get(step + 1) {
            Some(next) => format!(
                "step {} at {}% passed its gates; canary at {next}%",
                step + 1,
                steps[*step]
            ),
            None => format!("last step at {}% passed its gates; promoting", steps[*step]),
        },
        Decision::Fail { failure: f, .. } => format!(
            "gate {} failed: reading {:.4} against threshold {:.4}",
            f.gate, f.reading, f.threshold
        ),
        other => other.name().to_string(),
    }
}
