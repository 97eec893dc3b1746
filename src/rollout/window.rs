//! [`Windows`]: where each rollout's current window began, so every look
//! measures candidate and stable over the same stretch of time.
//!
//! A window is a step, the wait for shadow evidence, or a pause; a new one
//! begins whenever the rollout's step or phase changes, from the counters at
//! that moment. The clock is passed in, so the controller and the judgement
//! harness (`loadtest judge`) drive the same code. Windows live in memory:
//! after a restart a step's evidence counts from the restart.

use std::collections::HashMap;
use std::time::Duration;

use crate::registry::{Decision, Phase, Rollout};
use crate::routing::stats::StatsSnapshot;
use crate::shadow::Agreement;

use super::step::{self, Evidence, Readings, ShadowCounts, StableWindow};

/// Cumulative counters of one model, read at one moment.
pub struct Counters<'a> {
    pub candidate: &'a StatsSnapshot,
    pub stable: &'a StatsSnapshot,
    /// The candidate's shadow report, when it is mirrored to.
    pub shadow: Option<Agreement>,
}

/// Per model, the window its running rollout is in.
#[derive(Default)]
pub struct Windows {
    models: HashMap<String, Window>,
}

struct Window {
    key: (u64, usize, Phase),
    started: Duration,
    candidate: StatsSnapshot,
    stable: StatsSnapshot,
    shadow: Option<Agreement>,
    /// Stable's requests in the latest window in which it served, for steps in
    /// which it serves nothing.
    reference: (StatsSnapshot, StableWindow),
}

impl Windows {
    /// Judges `rollout` of `model` at time `now` (any fixed origin) on the
    /// counters read now.
    pub fn look(
        &mut self,
        model: &str,
        rollout: &Rollout,
        now: Duration,
        counters: &Counters<'_>,
    ) -> (Option<Decision>, Readings) {
        let key = (rollout.id, rollout.step, rollout.phase);
        let window = match self.models.remove(model) {
            Some(old) if old.key == key => old,
            Some(old) if old.key.0 == rollout.id => old.next(key, now, counters, rollout),
            _ => Window::first(key, now, counters),
        };
        let candidate = counters.candidate.since(&window.candidate);
        let stable_now = counters.stable.since(&window.stable);
        let (stable, stable_window) = if rollout.weight() >= 100.0 {
            (&window.reference.0, window.reference.1)
        } else {
            (&stable_now, StableWindow::ThisStep)
        };
        let shadow = counters
            .shadow
            .map(|now| shadow_since(window.shadow.as_ref(), &now));
        let evidence = Evidence {
            elapsed: now.saturating_sub(window.started),
            candidate: &candidate,
            stable,
            stable_window,
            shadow,
        };
        let judged = step::judge(rollout, &evidence);
        self.models.insert(model.to_string(), window);
        judged
    }

    /// Forgets models whose rollouts are no longer running.
    pub fn retain(&mut self, running: impl Fn(&str) -> bool) {
        self.models.retain(|model, _| running(model));
    }
}

impl Window {
    fn first(key: (u64, usize, Phase), now: Duration, counters: &Counters<'_>) -> Window {
        Window {
            key,
            started: now,
            candidate: counters.candidate.clone(),
            stable: counters.stable.clone(),
            shadow: counters.shadow,
            reference: (counters.stable.clone(), StableWindow::BeforeRollout),
        }
    }

    /// The window after this one, in the same rollout.
    fn next(
        self,
        key: (u64, usize, Phase),
        now: Duration,
        counters: &Counters<'_>,
        rollout: &Rollout,
    ) -> Window {
        let served = counters.stable.since(&self.stable);
        let reference = if served.requests >= rollout.plan.min_requests.max(1) {
            (served, StableWindow::EarlierStep)
        } else {
            self.reference
        };
        Window {
            reference,
            ..Window::first(key, now, counters)
        }
    }
}

/// Comparisons since the window began; all of them if the report was reset.
fn shadow_since(start: Option<&Agreement>, now: &Agreement) -> ShadowCounts {
    match start {
        Some(start) if start.since_ms == now.since_ms && start.judged <= now.judged => {
            ShadowCounts {
                agreed: now.agreed.saturating_sub(start.agreed),
                judged: now.judged - start.judged,
            }
        }
        _ => ShadowCounts {
            agreed: now.agreed,
            judged: now.judged,
        },
    }
}
