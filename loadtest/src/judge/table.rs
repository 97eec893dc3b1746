//! What became of each simulated rollout, counted per case and printed as
//! Markdown.

use std::collections::BTreeMap;

use stagegate::registry::Plan;

use super::{Case, JudgeArgs};

/// How one simulated rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Promoted {
        after_s: f64,
    },
    RolledBack {
        step: usize,
        gate: String,
        after_s: f64,
        /// After the step was held for want of evidence.
        while_held: bool,
    },
    /// Held for want of evidence at `step` (0-based).
    Held {
        step: usize,
    },
}

/// The outcomes of one case.
pub struct Tally {
    case: Case,
    outcomes: Vec<Outcome>,
}

impl Tally {
    pub fn of(case: Case, outcomes: Vec<Outcome>) -> Tally {
        Tally { case, outcomes }
    }

    fn share(&self, count: usize) -> String {
        percent(count, self.outcomes.len())
    }

    fn promoted(&self) -> Vec<f64> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Promoted { after_s } => Some(*after_s),
                _ => None,
            })
            .collect()
    }

    /// Rollbacks per step (1-based), and per gate.
    fn rollbacks(&self) -> (BTreeMap<usize, usize>, BTreeMap<String, usize>, Vec<f64>) {
        let (mut steps, mut gates, mut times) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        for outcome in &self.outcomes {
            if let Outcome::RolledBack {
                step,
                gate,
                after_s,
                while_held,
            } = outcome
            {
                *steps.entry(step + 1).or_default() += 1;
                let held = if *while_held { " while held" } else { "" };
                *gates.entry(format!("{gate}{held}")).or_default() += 1;
                times.push(*after_s);
            }
        }
        (steps, gates, times)
    }

    fn held(&self) -> BTreeMap<usize, usize> {
        let mut steps = BTreeMap::new();
        for outcome in &self.outcomes {
            if let Outcome::Held { step } = outcome {
                *steps.entry(step + 1).or_default() += 1;
            }
        }
        steps
    }

    /// Rolled back at the first step (a hold there keeps the candidate's
    /// share, so it does not count as stopped).
    pub fn stopped_at_first_step(&self) -> usize {
        let (rolled, _, _) = self.rollbacks();
        rolled.get(&1).copied().unwrap_or(0)
    }

    fn row(&self) -> String {
        let promoted = self.promoted();
        let (rolled, gates, rolled_times) = self.rollbacks();
        let held = self.held();
        let by_step = |counts: &BTreeMap<usize, usize>| {
            let total: usize = counts.values().sum();
            if total == 0 {
                return "0".to_string();
            }
            let parts: Vec<String> = counts
                .iter()
                .map(|(step, n)| format!("{n} at {step}"))
                .collect();
            format!("{} ({})", self.share(total), parts.join(", "))
        };
        let gate_list: Vec<String> = gates.iter().map(|(g, n)| format!("{g} {n}")).collect();
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.case.name,
            if self.case.good { "promote" } else { "stop" },
            self.share(promoted.len()),
            median(&promoted),
            by_step(&rolled),
            median(&rolled_times),
            if gate_list.is_empty() {
                "-".into()
            } else {
                gate_list.join(", ")
            },
            by_step(&held),
        )
    }
}

fn percent(count: usize, total: usize) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}%", count as f64 * 100.0 / total as f64)
}

fn median(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!("{:.0} s", sorted[sorted.len() / 2])
}

/// The table, with the settings it was run with and the targets checked.
pub fn render(args: &JudgeArgs, plan: &Plan, tallies: &[Tally]) -> String {
    let mut out = format!(
        "{} simulated rollouts per case, {} req/s, steps {:?} every {} s (held after {} s), \
         min_requests {}, max_error_rate {}, max_p99_ratio {}, max_latency_increase {}, \
         confidence {}, a look every {} s, seeds from {}\n\n",
        args.rollouts,
        args.rate,
        plan.steps,
        plan.step_interval_s,
        plan.max_step_duration_s(),
        plan.min_requests,
        number(plan.gates.max_error_rate),
        number(plan.gates.max_p99_ratio),
        number(plan.gates.max_latency_increase),
        plan.confidence,
        args.tick_s,
        args.seed,
    );
    out.push_str(
        "| candidate | should | promoted | median time to promote | rolled back (at step) \
         | median time to roll back | by gate | held (at step) |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for tally in tallies {
        out.push_str(&tally.row());
        out.push('\n');
    }
    out.push('\n');
    for tally in tallies {
        let total = tally.outcomes.len();
        let (rolled, _, _) = tally.rollbacks();
        let target = match tally.case.name {
            name if name.starts_with("identical") => {
                let rolled: usize = rolled.values().sum();
                Some((
                    rolled * 1000 <= total * 5,
                    format!(
                        "rolled back {} (target at most 0.5%)",
                        percent(rolled, total)
                    ),
                ))
            }
            "2x slower" | "+5% errors" => {
                let stopped = tally.stopped_at_first_step();
                Some((
                    stopped * 100 >= total * 99,
                    format!(
                        "rolled back at the first step {} (target at least 99%)",
                        percent(stopped, total)
                    ),
                ))
            }
            _ => None,
        };
        if let Some((met, text)) = target {
            let verdict = if met { "met" } else { "NOT MET" };
            out.push_str(&format!("- {}: {text}: {verdict}\n", tally.case.name));
        }
    }
    out
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "off".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::cases;

    #[test]
    fn a_row_counts_outcomes_by_step_and_gate_and_checks_the_targets() {
        let slow = cases::all()
            .into_iter()
            .find(|c| c.name == "2x slower")
            .unwrap();
        let rolled = |step, while_held| Outcome::RolledBack {
            step,
            gate: "p99_ratio".into(),
            after_s: 40.0,
            while_held,
        };
        let outcomes = vec![
            rolled(0, false),
            rolled(0, true),
            rolled(1, false),
            Outcome::Held { step: 0 },
        ];
        let tally = Tally::of(slow, outcomes);
        assert_eq!(tally.stopped_at_first_step(), 2, "a hold is not a stop");
        assert_eq!(
            tally.row(),
            "| 2x slower | stop | 0.0% | - | 75.0% (2 at 1, 1 at 2) | 40 s | p99_ratio 2, p99_ratio while held 1 | 25.0% (1 at 1) |"
        );
    }
}
