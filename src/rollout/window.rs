//! [`Windows`]: where each rollout's evidence and clock began, so every look
//! measures candidate and stable over the same stretch of time.
//!
//! - The **evidence** of a step counts from the step's start, and keeps counting
//!   through a hold or a person's pause (the candidate keeps its share, so its
//!   samples stay one sequence and the gates' bounds stay valid). It starts over
//!   only when the step does: when the rollout moves to another step, or is
//!   resumed after a failed gate took the candidate's share away.
//! - The **clock** (the step interval, `max_step_duration_s`) restarts whenever
//!   the phase changes, so a resumed step gets its full time again.
//! - Before the first step the shadow gate counts every comparison in the
//!   candidate's shadow report since it was (re)started.
//!
//! The clock is passed in, so the controller and the judgement harness
//! (`loadtest judge`) drive the same code. Windows live in memory: after a
//! restart a step's evidence counts from the restart.

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
    id: u64,
    step: usize,
    /// Whether the window is a canary step's, not the wait for shadow evidence.
    progressed: bool,
    /// The phase last seen, and since when (the clock).
    phase: Phase,
    since: Duration,
    /// Whether the candidate's share was taken away (a failed gate with
    /// `on_failure = "pause"`): a resume then starts the step over.
    share_taken: bool,
    /// The counters when the step's evidence began.
    candidate: StatsSnapshot,
    stable: StatsSnapshot,
    shadow: Option<Agreement>,
    /// Stable's requests in the latest step in which it served, for steps in
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
        let window = match self.models.remove(model) {
            Some(old) if old.id == rollout.id => old.follow(rollout, now, counters),
            _ => Window::first(rollout, now, counters),
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
            elapsed: now.saturating_sub(window.since),
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

/// Whether the rollout is paused with the candidate's share taken away.
fn share_taken(rollout: &Rollout) -> bool {
    rollout.phase == Phase::Paused && !rollout.held
}

impl Window {
    /// A rollout's first window: stable's reference is all it served so far,
    /// and a wait for shadow evidence counts the whole report.
    fn first(rollout: &Rollout, now: Duration, counters: &Counters<'_>) -> Window {
        let mut window = Window::starting(rollout, now, counters);
        window.reference = (counters.stable.clone(), StableWindow::BeforeRollout);
        if rollout.phase == Phase::WaitingForShadow {
            window.shadow = None;
        }
        window
    }

    fn starting(rollout: &Rollout, now: Duration, counters: &Counters<'_>) -> Window {
        Window {
            id: rollout.id,
            step: rollout.step,
            progressed: rollout.progressed,
            phase: rollout.phase,
            since: now,
            share_taken: share_taken(rollout),
            candidate: counters.candidate.clone(),
            stable: counters.stable.clone(),
            shadow: counters.shadow,
            reference: (StatsSnapshot::default(), StableWindow::BeforeRollout),
        }
    }

    /// This window as the rollout is now: the same, with a new clock, or the
    /// next step's.
    fn follow(mut self, rollout: &Rollout, now: Duration, counters: &Counters<'_>) -> Window {
        let same_step = self.step == rollout.step && self.progressed == rollout.progressed;
        let restarted = self.share_taken && !share_taken(rollout);
        if same_step && !restarted {
            if self.phase != rollout.phase {
                self.phase = rollout.phase;
                self.since = now;
            }
            self.share_taken = share_taken(rollout);
            return self;
        }
        let served = counters.stable.since(&self.stable);
        let reference = if served.requests >= rollout.plan.min_requests.max(1) {
            (served, StableWindow::EarlierStep)
        } else {
            self.reference
        };
        Window {
            reference,
            ..Window::starting(rollout, now, counters)
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
