//! The `swap-loop` case: stagegate under a 64-connection closed loop while a thread
//! flips the canary weight of version 2 between 0 and 10 through the admin API at
//! 100 calls per second (each call is a journaled, fsynced change and a routing
//! table swap). Rounds alternate a steady run (weight 10, no calls) with a
//! swapping run, on the same gateway process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::cases::{self, CANARY_WEIGHT, Case, set_canary};
use super::measure::{Generator, Load, Sample};
use super::proxies::{ProxyKind, RunningProxy};
use super::report::{AdminCalls, CaseResult, Series};
use super::{CompareError, Context, http};

/// Admin calls per second, all together.
const CALL_RATE: u32 = 100;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
pub const STEADY: &str = "steady (weight 10)";
pub const SWAPPING: &str = "swapping 0 <-> 10";

pub fn run(ctx: &Context, threads: usize) -> Result<CaseResult, CompareError> {
    let setup = cases::setup(ctx, Case::SwapLoop, threads);
    let (proxies, notes) = cases::start_all(ctx, &[ProxyKind::Stagegate], &setup);
    let Some(proxy) = proxies.first() else {
        return Ok(CaseResult::new(Case::SwapLoop, Vec::new(), notes));
    };
    let admin = proxy
        .admin
        .ok_or_else(|| CompareError::Setup("stagegate has no admin address".into()))?;
    let load = Load {
        connections: Case::SwapLoop.connections(),
        duration: ctx.settings.duration,
        rate: None,
        random_user: true,
        grpc_streams: None,
        sse_events: None,
    };
    let generator = ctx.generator();
    set_canary(admin, CANARY_WEIGHT)?;
    if !ctx.settings.warmup.is_zero() {
        let warmup = Load {
            duration: ctx.settings.warmup,
            ..load
        };
        generator.run(proxy.target, &warmup)?;
    }
    let mut steady = Series::new(ProxyKind::Stagegate, STEADY);
    let mut swapping = Series::new(ProxyKind::Stagegate, SWAPPING);
    let mut calls = AdminCalls::default();
    for round in 1..=ctx.settings.runs {
        set_canary(admin, CANARY_WEIGHT)?;
        let sample = generator.measure(proxy, &load)?;
        cases::progress(Case::SwapLoop, round, STEADY, &sample);
        steady.samples.push(sample);
        let (sample, made) = measure_swapping(&generator, proxy, &load, admin)?;
        cases::progress(Case::SwapLoop, round, SWAPPING, &sample);
        eprintln!(
            "    admin calls: {} made, {} failed",
            made.made, made.failed
        );
        swapping.samples.push(sample);
        calls.add(made);
    }
    let mut result = CaseResult::new(Case::SwapLoop, vec![steady, swapping], notes);
    result.admin_calls = Some(calls);
    Ok(result)
}

/// One measured run with the swapping thread running alongside it.
fn measure_swapping(
    generator: &Generator<'_>,
    proxy: &RunningProxy,
    load: &Load,
    admin: SocketAddr,
) -> Result<(Sample, AdminCalls), CompareError> {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let swapper = scope.spawn(|| flip(admin, &stop));
        let sample = generator.measure(proxy, load);
        stop.store(true, Ordering::Relaxed);
        let calls = swapper
            .join()
            .map_err(|_| CompareError::Setup("the swapping thread panicked".into()))?;
        Ok((sample?, calls))
    })
}

/// Flips the weight 0, 10, 0, ... on a fixed timetable until `stop`; a late call
/// is made at once (no catching up beyond that).
fn flip(admin: SocketAddr, stop: &AtomicBool) -> AdminCalls {
    let interval = Duration::from_secs(1) / CALL_RATE;
    let start = Instant::now();
    let mut calls = AdminCalls::default();
    let mut next = start;
    while !stop.load(Ordering::Relaxed) {
        let weight = if calls.made.is_multiple_of(2) {
            0
        } else {
            CANARY_WEIGHT
        };
        let body = format!(r#"{{"version": "2", "weight": {weight}}}"#);
        let ok = http::call(
            admin,
            "POST",
            "/api/v1/models/m/canary",
            Some(&body),
            CALL_TIMEOUT,
        )
        .is_ok_and(|response| response.is_success());
        calls.made += 1;
        calls.failed += u64::from(!ok);
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    calls
}
