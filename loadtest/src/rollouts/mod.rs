//! `loadtest rollouts`: the rollout gates end to end. The real stagegate binary
//! in front of Python model servers (`scripts/model_server.py`), closed-loop
//! clients with sticky user ids sending traffic throughout, and rollout after
//! rollout through the admin API: of a candidate identical to production (the
//! two swap places after each promotion), of one twice as slow, and of one that
//! fails 5% more requests. Prints what became of each kind.

mod servers;
mod traffic;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::compare::CompareError;
use crate::compare::http::call;
use servers::{Fleet, Kind};

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutsArgs {
    /// The stagegate binary [default: `stagegate` next to this executable].
    #[arg(long)]
    pub stagegate: Option<PathBuf>,
    /// The Python interpreter that runs the model servers.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// Rollouts of a candidate identical to production.
    #[arg(long, default_value = "20")]
    pub identical: usize,
    /// Rollouts of a candidate twice as slow.
    #[arg(long, default_value = "5")]
    pub slow: usize,
    /// Rollouts of a candidate failing 5% more requests.
    #[arg(long, default_value = "5")]
    pub failing: usize,
    /// Closed-loop clients sending traffic with random sticky user ids.
    #[arg(long, default_value = "16")]
    pub clients: NonZeroUsize,
    /// Median latency of the model servers.
    #[arg(long, default_value = "10")]
    pub median_ms: f64,
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    pub steps: Vec<f64>,
    #[arg(long, default_value = "1")]
    pub step_interval_s: f64,
    #[arg(long, default_value = "120")]
    pub max_step_duration_s: f64,
    /// Seconds production serves alone before each rollout, as between
    /// releases: the record a 100% step compares with.
    #[arg(long, default_value = "10")]
    pub between_s: f64,
}

/// How one rollout ended.
#[derive(Debug, Clone)]
struct Ended {
    kind: Kind,
    phase: String,
    /// 1-based.
    step: u64,
    gate: Option<String>,
    seconds: f64,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(200);

/// Runs the rollouts and prints the table.
pub fn run(args: &RolloutsArgs) -> Result<(), CompareError> {
    let measured = measure(args)?;
    println!("{}", table(args, &measured));
    Ok(())
}

/// What the rollouts of one run came to.
pub struct Measured {
    ended: Vec<Ended>,
    sent: traffic::Sent,
}

impl Measured {
    /// How each rollout ended, in order: the candidate kind's name, the phase
    /// (`succeeded`, `rolled_back` or `held`), the step (1-based) and the gate
    /// that failed, if one did.
    pub fn outcomes(&self) -> Vec<(&'static str, &str, u64, Option<&str>)> {
        self.ended
            .iter()
            .map(|e| (e.kind.name(), e.phase.as_str(), e.step, e.gate.as_deref()))
            .collect()
    }
}

/// Runs the rollouts under traffic, reporting each on stderr as it ends.
pub fn measure(args: &RolloutsArgs) -> Result<Measured, CompareError> {
    let fleet = Fleet::start(args)?;
    let traffic = traffic::Traffic::start(fleet.infer_url(), args.clients.get())?;
    let mut ended = Vec::new();
    let plan: Vec<Kind> = std::iter::repeat_n(Kind::Identical, args.identical)
        .chain(std::iter::repeat_n(Kind::Slow, args.slow))
        .chain(std::iter::repeat_n(Kind::Failing, args.failing))
        .collect();
    for (i, kind) in plan.into_iter().enumerate() {
        thread::sleep(Duration::from_secs_f64(args.between_s));
        let one = roll_out(&fleet, kind, i)?;
        eprintln!(
            "loadtest rollouts: #{} {} -> {} at step {}{} after {:.1} s",
            i + 1,
            kind.name(),
            one.phase,
            one.step,
            one.gate
                .as_deref()
                .map(|g| format!(" ({g})"))
                .unwrap_or_default(),
            one.seconds
        );
        ended.push(one);
    }
    let sent = traffic.stop();
    Ok(Measured { ended, sent })
}

/// Starts a rollout of `kind`'s candidate and follows it to its end.
fn roll_out(fleet: &Fleet, kind: Kind, index: usize) -> Result<Ended, CompareError> {
    let candidate = fleet.prepare_candidate(kind)?;
    let body =
        json!({ "candidate": candidate, "reason": format!("loadtest rollouts #{}", index + 1) });
    let started = fleet.admin("POST", "/rollout", Some(&body))?;
    if started["record"].is_null() {
        return Err(CompareError::Admin(format!(
            "rollout not started: {started}"
        )));
    }
    let began = Instant::now();
    // Every step may wait its longest, and then some.
    let steps = fleet.steps() as f64 + 1.0;
    let deadline = Duration::from_secs_f64(fleet.max_step_duration_s() * steps + 60.0);
    loop {
        thread::sleep(POLL);
        if began.elapsed() > deadline {
            return Err(CompareError::Admin(format!(
                "rollout #{} did not end within {deadline:?}",
                index + 1
            )));
        }
        let status = fleet.admin("GET", "/rollout", None)?;
        let phase = status["phase"].as_str().unwrap_or("").to_string();
        if !matches!(
            phase.as_str(),
            "succeeded" | "rolled_back" | "paused" | "aborted"
        ) {
            continue;
        }
        let rollout = &status["rollout"];
        let one = Ended {
            kind,
            phase: if phase == "paused" {
                "held".into()
            } else {
                phase
            },
            step: rollout["step"].as_u64().unwrap_or(0) + 1,
            gate: rollout["failed_gate"]["gate"].as_str().map(str::to_string),
            seconds: began.elapsed().as_secs_f64(),
        };
        if one.phase == "held" {
            eprintln!("loadtest rollouts: held: {}", rollout["reason"]);
            fleet.admin("POST", "/rollout/abort", Some(&json!({ "reason": "held" })))?;
        }
        return Ok(one);
    }
}

fn table(args: &RolloutsArgs, measured: &Measured) -> String {
    let (ended, sent) = (&measured.ended, &measured.sent);
    let mut out = format!(
        "stagegate in front of Python model servers (median {} ms, lognormal, 0.5% pauses of 10x, 0.1% errors), \
         {} closed-loop clients with sticky user ids ({} requests, {:.0} req/s, {} not 200), \
         steps {:?} every {} s, held after {} s, other gates at the model defaults, \
         {} s of production alone before each rollout\n\n",
        args.median_ms,
        args.clients,
        sent.requests,
        sent.per_second(),
        sent.not_ok,
        args.steps,
        args.step_interval_s,
        args.max_step_duration_s,
        args.between_s,
    );
    out.push_str("| candidate | rollouts | promoted | rolled back (at step) | held (at step) | by gate | median time |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for kind in [Kind::Identical, Kind::Slow, Kind::Failing] {
        let mine: Vec<&Ended> = ended.iter().filter(|e| e.kind == kind).collect();
        if mine.is_empty() {
            continue;
        }
        let count = |phase: &str| {
            let at: Vec<String> = mine
                .iter()
                .filter(|e| e.phase == phase)
                .map(|e| e.step.to_string())
                .collect();
            match at.len() {
                0 => "0".to_string(),
                n => format!("{n} (at {})", at.join(", ")),
            }
        };
        let gates: Vec<String> = mine.iter().filter_map(|e| e.gate.clone()).collect();
        let mut times: Vec<f64> = mine.iter().map(|e| e.seconds).collect();
        times.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s |\n",
            kind.name(),
            mine.len(),
            mine.iter().filter(|e| e.phase == "succeeded").count(),
            count("rolled_back"),
            count("held"),
            if gates.is_empty() {
                "-".to_string()
            } else {
                gates.join(", ")
            },
            times[times.len() / 2],
        ));
    }
    out
}

/// The JSON answer of one admin call, or why not.
fn admin_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CompareError> {
    let text = body.map(Value::to_string);
    let response = call(addr, method, path, text.as_deref(), CALL_TIMEOUT)
        .map_err(|e| CompareError::Admin(format!("{method} {path}: {e}")))?;
    serde_json::from_str(&response.body).map_err(|e| {
        CompareError::Admin(format!(
            "{method} {path} answered {} non-JSON: {e}",
            response.status
        ))
    })
}
