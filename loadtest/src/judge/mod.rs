//! `loadtest judge`: the rollout gates' judgement harness. Thousands of
//! simulated rollouts per case, each driven through stagegate's own gate code
//! (`stagegate::rollout::window::Windows`) on seeded latency and error
//! distributions, report how often good candidates are promoted and bad ones
//! stopped, and at which step.
//!
//! Time is simulated: each tick adds a Poisson number of requests at `--rate`
//! per second, split by the step's weight, then looks at the rollout as the
//! controller does. Nothing here sleeps or opens a socket.

mod cases;
mod table;

use std::num::NonZeroUsize;
use std::time::Duration;

use fastrand::Rng;
use stagegate::registry::{Decision, OnFailure, Phase, Plan, Rollout, default_plan};
use stagegate::rollout::window::{Counters, Windows};
use stagegate::routing::stats::StatsSnapshot;

pub use cases::Case;
use table::{Outcome, Tally};

#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// Simulated rollouts per case.
    #[arg(long, default_value = "1000")]
    pub rollouts: NonZeroUsize,
    /// Requests per second reaching the model, split between stable and the
    /// candidate by the step's weight.
    #[arg(long, default_value = "200")]
    pub rate: f64,
    /// Canary weights of the plan.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    pub steps: Vec<f64>,
    #[arg(long, default_value = "30")]
    pub step_interval_s: f64,
    /// Seconds between two looks (the gateway's controller looks every 0.1 s).
    #[arg(long, default_value = "1")]
    pub tick_s: f64,
    /// Also judge every step's latency median (`max_latency_increase`).
    #[arg(long)]
    pub max_latency_increase: Option<f64>,
    /// Seed of the first rollout; rollout i uses seed + i.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Threads to run rollouts on.
    #[arg(long, default_value = "2")]
    pub threads: NonZeroUsize,
}

impl JudgeArgs {
    /// The model defaults' plan with the harness's steps and interval.
    fn plan(&self) -> Plan {
        let mut plan = default_plan();
        plan.steps.clone_from(&self.steps);
        plan.step_interval_s = self.step_interval_s;
        plan.gates.max_latency_increase = self.max_latency_increase;
        plan.on_failure = OnFailure::Rollback;
        plan
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error("--rate and --tick-s must be positive, got {rate} and {tick}")]
    Pace { rate: f64, tick: f64 },
}

/// Runs every case and prints the Markdown table.
pub fn run(args: &JudgeArgs) -> Result<(), JudgeError> {
    let plan = args.plan();
    let problems: Vec<String> = plan
        .problems()
        .into_iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect();
    if !problems.is_empty() {
        return Err(JudgeError::Plan(problems.join("; ")));
    }
    if !(args.rate > 0.0 && args.tick_s > 0.0) {
        return Err(JudgeError::Pace {
            rate: args.rate,
            tick: args.tick_s,
        });
    }
    let tallies: Vec<Tally> = cases::all()
        .into_iter()
        .map(|case| judge_case(args, &plan, case))
        .collect();
    println!("{}", table::render(args, &plan, &tallies));
    Ok(())
}

fn judge_case(args: &JudgeArgs, plan: &Plan, case: Case) -> Tally {
    let rollouts = args.rollouts.get();
    let threads = args.threads.get().min(rollouts);
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    (worker..rollouts)
                        .step_by(threads)
                        .map(|i| simulate(args, plan, &case, args.seed + i as u64))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    Tally::of(case, outcomes)
}

/// Requests stable served before the rollout began: a minute at the full rate.
const HISTORY_S: f64 = 60.0;

/// One rollout from its start to promotion, rollback or hold.
fn simulate(args: &JudgeArgs, plan: &Plan, case: &Case, seed: u64) -> Outcome {
    let mut rng = Rng::with_seed(seed);
    let mut rollout = Rollout {
        id: 1,
        candidate: "2".into(),
        plan: plan.clone(),
        phase: Phase::Progressing,
        step: 0,
        reason: String::new(),
        failed_gate: None,
        evidence: Vec::new(),
        held: false,
        progressed: true,
        salt: seed,
    };
    let (mut candidate, mut stable) = (StatsSnapshot::default(), StatsSnapshot::default());
    for _ in 0..poisson(&mut rng, args.rate * HISTORY_S) {
        let (error, latency) = case.stable.request(&mut rng, false);
        stable.record(error, latency);
    }
    let mut windows = Windows::default();
    let (mut now, mut step_started) = (0.0, 0.0);
    let give_up = plan.max_step_duration_s() * (plan.steps.len() as f64 + 1.0);
    while now < give_up {
        let weight = rollout.weight() / 100.0;
        let late = now - step_started >= plan.step_interval_s / 2.0;
        for _ in 0..poisson(&mut rng, args.rate * args.tick_s) {
            let (version, route) = if rng.f64() < weight {
                (&case.candidate, &mut candidate)
            } else {
                (&case.stable, &mut stable)
            };
            let (error, latency) = version.request(&mut rng, late);
            route.record(error, latency);
        }
        now += args.tick_s;
        let counters = Counters {
            candidate: &candidate,
            stable: &stable,
            shadow: None,
        };
        let (decision, _) = windows.look("m", &rollout, Duration::from_secs_f64(now), &counters);
        match decision {
            Some(Decision::Advance { .. }) if rollout.step + 1 < plan.steps.len() => {
                rollout.step += 1;
                step_started = now;
            }
            Some(Decision::Advance { .. }) => return Outcome::Promoted { after_s: now },
            Some(Decision::Fail { failure, at_step }) => {
                return Outcome::RolledBack {
                    step: at_step.unwrap_or(0),
                    gate: failure.gate,
                    after_s: now,
                };
            }
            Some(Decision::Hold { at_step }) => {
                return Outcome::Held {
                    step: at_step.unwrap_or(0),
                };
            }
            _ => {}
        }
    }
    Outcome::Held { step: rollout.step }
}

/// A Poisson draw: Knuth's product of uniforms for small means, a rounded
/// normal for large ones (where the two agree to well under a request).
fn poisson(rng: &mut Rng, mean: f64) -> u64 {
    if mean > 30.0 {
        let (u, v) = (1.0 - rng.f64(), rng.f64());
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        return (mean + mean.sqrt() * z).round().max(0.0) as u64;
    }
    let (limit, mut product, mut count) = ((-mean).exp(), rng.f64(), 0);
    while product > limit {
        product *= rng.f64();
        count += 1;
    }
    count
}
