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
use stagegate::registry::{Decision, GateLimit, OnFailure, Phase, Plan, Rollout, default_plan};
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
    /// Seconds between two looks, as the gateway's controller does.
    #[arg(long, default_value = "0.1")]
    pub tick_s: f64,
    /// The median gate's limit (`max_latency_increase`), or "off"
    /// [default: the model defaults'].
    #[arg(long, value_parser = gate_limit)]
    pub max_latency_increase: Option<GateLimit>,
    /// The p99 gate's limit (`max_p99_ratio`), or "off" [default: the model
    /// defaults'].
    #[arg(long, value_parser = gate_limit)]
    pub max_p99_ratio: Option<GateLimit>,
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
        let gates = &mut plan.gates;
        gates.max_latency_increase = self
            .max_latency_increase
            .map_or(gates.max_latency_increase, GateLimit::limit);
        gates.max_p99_ratio = self
            .max_p99_ratio
            .map_or(gates.max_p99_ratio, GateLimit::limit);
        plan.on_failure = OnFailure::Rollback;
        plan
    }
}

/// A gate's limit on the command line: a number, or "off".
fn gate_limit(text: &str) -> Result<GateLimit, String> {
    match text {
        "off" => Ok(GateLimit::Off),
        number => number
            .parse()
            .map(GateLimit::Limit)
            .map_err(|_| format!("{number:?} is not a number or \"off\"")),
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
            // A worker that panicked has a bug to show, not rollouts to drop.
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    Tally::of(case, outcomes)
}

/// Requests stable served before the rollout began: a minute at the full rate.
const HISTORY_S: f64 = 60.0;

/// Who sends a request: its bucket in the sticky split and its cost factor.
struct Senders {
    pool: Vec<(f64, f64)>,
}

impl Senders {
    fn new(case: &Case, rng: &mut Rng) -> Senders {
        Senders {
            pool: case
                .users
                .map(|u| cases::user_pool(u, rng))
                .unwrap_or_default(),
        }
    }

    fn pick(&self, rng: &mut Rng) -> (f64, f64) {
        if self.pool.is_empty() {
            (rng.f64(), 1.0)
        } else {
            self.pool[rng.usize(..self.pool.len())]
        }
    }
}

/// The simulated traffic and time of one rollout.
struct World<'a> {
    args: &'a JudgeArgs,
    case: &'a Case,
    rng: Rng,
    senders: Senders,
    stalls: [cases::Stalls; 2],
    candidate: StatsSnapshot,
    stable: StatsSnapshot,
    now: f64,
}

impl World<'_> {
    /// One tick of traffic at `weight` (0-1) to the candidate.
    fn tick(&mut self, weight: f64, shifted: bool) {
        let tick = self.args.tick_s;
        for (stalls, version) in self
            .stalls
            .iter_mut()
            .zip([&self.case.stable, &self.case.candidate])
        {
            stalls.next_tick(version, &mut self.rng, self.now, tick);
        }
        for _ in 0..poisson(&mut self.rng, self.args.rate * tick) {
            let (bucket, cost) = self.senders.pick(&mut self.rng);
            let at = self.now + self.rng.f64() * tick;
            let to_candidate = bucket < weight;
            let version = if to_candidate {
                &self.case.candidate
            } else {
                &self.case.stable
            };
            let stalled = self.stalls[usize::from(to_candidate)].held_ms(at);
            let (error, latency) = version.request(&mut self.rng, shifted, stalled, cost);
            let route = if to_candidate {
                &mut self.candidate
            } else {
                &mut self.stable
            };
            route.record(error, latency);
        }
        self.now += tick;
    }
}

/// One rollout from its start to promotion, rollback or hold. A held rollout
/// keeps its candidate's share and its gates armed, as in the gateway, for
/// another `max_step_duration_s`: a failure then still counts.
fn simulate(args: &JudgeArgs, plan: &Plan, case: &Case, seed: u64) -> Outcome {
    let mut rng = Rng::with_seed(seed);
    let senders = Senders::new(case, &mut rng);
    let mut world = World {
        args,
        case,
        rng,
        senders,
        stalls: Default::default(),
        candidate: StatsSnapshot::default(),
        stable: StatsSnapshot::default(),
        now: -HISTORY_S,
    };
    let mut windows = Windows::default();
    while world.now < 0.0 {
        world.tick(0.0, false);
        let at = Duration::from_secs_f64(world.now + HISTORY_S);
        windows.remember("m", "1", at, || world.stable.clone());
    }
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
    let mut held_until = None;
    let give_up = plan.max_step_duration_s() * (plan.steps.len() as f64 + 1.0);
    while world.now < held_until.unwrap_or(give_up) {
        let shifted = world.now >= plan.step_interval_s / 2.0;
        world.tick(rollout.weight() / 100.0, shifted);
        let counters = Counters {
            candidate: &world.candidate,
            stable_version: "1",
            stable: &world.stable,
            shadow: None,
        };
        let now = Duration::from_secs_f64(world.now + HISTORY_S);
        match windows.look("m", &rollout, now, &counters).0 {
            Some(Decision::Advance { .. }) if rollout.step + 1 < plan.steps.len() => {
                rollout.step += 1;
            }
            Some(Decision::Advance { .. }) => return Outcome::Promoted { after_s: world.now },
            Some(Decision::Fail { failure, at_step }) => {
                return Outcome::RolledBack {
                    step: at_step.unwrap_or(0),
                    gate: failure.gate,
                    after_s: world.now,
                    while_held: rollout.held,
                };
            }
            Some(Decision::Hold { .. }) => {
                rollout.phase = Phase::Paused;
                rollout.held = true;
                held_until = Some(world.now + plan.max_step_duration_s());
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        judge: JudgeArgs,
    }

    fn args(extra: &[&str]) -> JudgeArgs {
        let argv = ["judge"].iter().chain(extra).copied();
        Cli::parse_from(argv).judge
    }

    fn case(name: &str) -> Case {
        cases::all()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case {name:?}"))
    }

    #[test]
    fn seeded_rollouts_end_the_same_way_every_time() {
        let args = args(&["--rate", "1000", "--step-interval-s", "10"]);
        let plan = args.plan();
        let good = simulate(&args, &plan, &case("identical (bimodal)"), 7);
        assert!(matches!(good, Outcome::Promoted { .. }), "{good:?}");
        assert_eq!(
            good,
            simulate(&args, &plan, &case("identical (bimodal)"), 7)
        );
        let failing = simulate(&args, &plan, &case("+5% errors"), 7);
        assert!(
            matches!(&failing, Outcome::RolledBack { step: 0, gate, while_held: false, .. } if gate == "error_rate"),
            "{failing:?}"
        );
    }

    #[test]
    fn a_rollout_with_too_little_traffic_is_held_not_promoted() {
        let args = args(&["--rate", "2", "--step-interval-s", "5"]);
        let held = simulate(&args, &args.plan(), &case("identical (bimodal)"), 1);
        assert_eq!(held, Outcome::Held { step: 0 });
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            run(&args(&["--steps", "50,25"])),
            Err(JudgeError::Plan(_))
        ));
        assert!(matches!(
            run(&args(&["--rate", "0"])),
            Err(JudgeError::Pace { .. })
        ));
    }

    #[test]
    fn poisson_draws_have_the_asked_mean() {
        let mut rng = Rng::with_seed(3);
        for mean in [0.5, 20.0, 200.0] {
            let total: u64 = (0..4_000).map(|_| poisson(&mut rng, mean)).sum();
            let measured = total as f64 / 4_000.0;
            assert!(
                (measured - mean).abs() < 0.05 * mean + 0.05,
                "{mean}: {measured}"
            );
        }
    }
}
