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
//! - At a 100% step stable serves nothing, and the candidate is compared with
//!   stable's **record**: its last ten minutes before the rollout began, when
//!   it served all traffic, as the candidate now does (a model server's latency
//!   grows with its load, so an earlier step at 50% would flatter stable). A
//!   record with fewer requests than stable's part of the step before (a
//!   rollout started right after the last one) gives way to that step.
//!
//! The clock is passed in, so the controller and the judgement harness
//! (`loadtest judge`) drive the same code. Windows live in memory: after a
//! restart a step's evidence counts from the restart.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::registry::{Decision, Phase, Rollout};
use crate::routing::stats::StatsSnapshot;
use crate::shadow::Agreement;

use super::step::{self, Evidence, Readings, ShadowCounts, StableWindow};

/// How far back stable's record reaches, and how often it is marked.
const RECORD_SPAN: Duration = Duration::from_secs(600);
const MARK_EVERY: Duration = Duration::from_secs(30);

/// Cumulative counters of one model, read at one moment.
pub struct Counters<'a> {
    pub candidate: &'a StatsSnapshot,
    /// The production version, and its counters.
    pub stable_version: &'a str,
    pub stable: &'a StatsSnapshot,
    /// The candidate's shadow report, when it is mirrored to.
    pub shadow: Option<Agreement>,
}

/// Per model, the window its running rollout is in, and production's record
/// while no rollout runs.
#[derive(Default)]
pub struct Windows {
    models: HashMap<String, Window>,
    records: HashMap<String, StableRecord>,
}

/// Production's counters every `MARK_EVERY`, for `RECORD_SPAN`.
struct StableRecord {
    version: String,
    marks: VecDeque<(Duration, StatsSnapshot)>,
}

impl StableRecord {
    /// What stable served since the oldest mark, if the record is of `version`.
    fn since_oldest(&self, version: &str, now: &StatsSnapshot) -> Option<StatsSnapshot> {
        let (_, oldest) = self.marks.front().filter(|_| self.version == version)?;
        Some(now.since(oldest))
    }
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
    /// Stable's record before the rollout, and its requests in the step
    /// before this one, for steps in which it serves nothing.
    reference: StatsSnapshot,
    previous: Option<StatsSnapshot>,
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
            _ => {
                let record = self.records.get(model);
                Window::first(rollout, now, counters, record)
            }
        };
        let candidate = counters.candidate.since(&window.candidate);
        let stable_now = counters.stable.since(&window.stable);
        let (stable, stable_window) = match &window.previous {
            _ if rollout.weight() < 100.0 => (&stable_now, StableWindow::ThisStep),
            Some(previous) if previous.requests > window.reference.requests => {
                (previous, StableWindow::EarlierStep)
            }
            _ => (&window.reference, StableWindow::BeforeRollout),
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

    /// Marks production's counters of a model with no rollout running, when a
    /// mark is due; `stable` is read only then.
    pub fn remember(
        &mut self,
        model: &str,
        version: &str,
        now: Duration,
        stable: impl FnOnce() -> StatsSnapshot,
    ) {
        let record = self
            .records
            .entry(model.to_string())
            .or_insert_with(|| StableRecord {
                version: version.to_string(),
                marks: VecDeque::new(),
            });
        if record.version != version {
            record.version = version.to_string();
            record.marks.clear();
        }
        let due = record
            .marks
            .back()
            .is_none_or(|(at, _)| now.saturating_sub(*at) >= MARK_EVERY);
        if !due {
            return;
        }
        record.marks.push_back((now, stable()));
        while record
            .marks
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > RECORD_SPAN)
        {
            record.marks.pop_front();
        }
    }

    /// Forgets the windows of models whose rollouts are no longer running, and
    /// the records of models that are gone.
    pub fn retain(&mut self, running: impl Fn(&str) -> bool, exists: impl Fn(&str) -> bool) {
        self.models.retain(|model, _| running(model));
        self.records.retain(|model, _| exists(model));
    }
}

/// Whether the rollout is paused with the candidate's share taken away.
fn share_taken(rollout: &Rollout) -> bool {
    rollout.phase == Phase::Paused && !rollout.held
}

impl Window {
    /// A rollout's first window. Stable's reference is its record before the
    /// rollout (all it served, when there is no record of it, as after a
    /// restart), and a wait for shadow evidence counts the whole report.
    fn first(
        rollout: &Rollout,
        now: Duration,
        counters: &Counters<'_>,
        record: Option<&StableRecord>,
    ) -> Window {
        let mut window = Window::starting(rollout, now, counters);
        window.reference = record
            .and_then(|r| r.since_oldest(counters.stable_version, counters.stable))
            .unwrap_or_else(|| counters.stable.clone());
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
            reference: StatsSnapshot::default(),
            previous: None,
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
        Window {
            previous: (served.requests > 0).then_some(served).or(self.previous),
            reference: self.reference,
            ..Window::starting(rollout, now, counters)
        }
    }
}

/// Comparisons since the window began; all of them if the report was reset.
fn shadow_since(start: Option<&Agreement>, now: &Agreement) -> ShadowCounts {
    match start {
        Some(start) if start.basis == now.basis && start.judged <= now.judged => ShadowCounts {
            agreed: now.agreed.saturating_sub(start.agreed),
            judged: now.judged - start.judged,
        },
        _ => ShadowCounts {
            agreed: now.agreed,
            judged: now.judged,
        },
    }
}
