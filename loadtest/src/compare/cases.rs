//! The comparison cases and how each is run: start the case's proxies (fresh, per
//! case), one warmup run each, then `runs` rounds in which every proxy gets one
//! measured run in turn. The proxies keep running across a case's rounds.

use std::time::Duration;

use serde::Serialize;

use super::configs::Setup;
use super::measure::{Load, Sample};
use super::proxies::{self, ProxyKind, RunningProxy};
use super::report::{CaseResult, FixedRate, Series};
use super::{CompareError, Context, http, swap};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The label of the stagegate that a shadow case runs without mirroring, in the
/// same rounds as the mirroring one, as the baseline of the shadow's cost.
pub const NO_SHADOW: &str = "stagegate, no shadow";
/// The label of the stagegate that a shadow case runs with its shadow threads at
/// idle priority (`shadow_priority = "idle"`), using only CPU nothing else wants.
pub const IDLE_PRIORITY: &str = "stagegate, shadow at idle priority";
/// The canary weight of the `canary` and `swap-loop` cases, in percent.
pub const CANARY_WEIGHT: u32 = 10;
/// The `grpc` case: HTTP/2 connections, and calls in flight on each.
const GRPC_CONNECTIONS: usize = 4;
const GRPC_STREAMS: usize = 16;
/// The `llm-stream` case: events per answer (the backend sends them 5 ms apart).
pub const LLM_EVENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    #[value(name = "plain-64")]
    #[serde(rename = "plain-64")]
    Plain64,
    #[value(name = "plain-256")]
    #[serde(rename = "plain-256")]
    Plain256,
    Canary,
    ShadowHealthy,
    ShadowSlow,
    ShadowHang,
    ShadowRefused,
    FixedRate,
    ShadowFixedRate,
    SwapLoop,
    /// Unary gRPC `ModelInfer` calls, many streams on few HTTP/2 connections,
    /// to a backend that takes 5 ms per call (the backend is the limit).
    Grpc,
    /// Streamed chat completions (OpenAI-style, routed by the body's
    /// `model`): 64 events 5 ms apart per answer; latency is the time to the
    /// first event, and events per second are 64 per request.
    LlmStream,
}

/// Where a case's mirrored (or canary) traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secondary {
    Healthy,
    Slow,
    Hang,
    Refused,
}

impl Case {
    pub const ALL: [Case; 12] = [
        Case::Plain64,
        Case::Plain256,
        Case::Canary,
        Case::ShadowHealthy,
        Case::ShadowSlow,
        Case::ShadowHang,
        Case::ShadowRefused,
        Case::FixedRate,
        Case::ShadowFixedRate,
        Case::SwapLoop,
        Case::Grpc,
        Case::LlmStream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Plain64 => "plain-64",
            Case::Plain256 => "plain-256",
            Case::Canary => "canary",
            Case::ShadowHealthy => "shadow-healthy",
            Case::ShadowSlow => "shadow-slow",
            Case::ShadowHang => "shadow-hang",
            Case::ShadowRefused => "shadow-refused",
            Case::FixedRate => "fixed-rate",
            Case::ShadowFixedRate => "shadow-fixed-rate",
            Case::SwapLoop => "swap-loop",
            Case::Grpc => "grpc",
            Case::LlmStream => "llm-stream",
        }
    }

    pub fn connections(self) -> usize {
        match self {
            Case::Plain256 => 256,
            Case::Grpc => GRPC_CONNECTIONS,
            _ => 64,
        }
    }

    /// gRPC calls in flight per connection; `None` for HTTP cases.
    pub fn grpc_streams(self) -> Option<usize> {
        (self == Case::Grpc).then_some(GRPC_STREAMS)
    }

    /// Events per streamed answer, for the streamed LLM case.
    pub fn sse_events(self) -> Option<usize> {
        (self == Case::LlmStream).then_some(LLM_EVENTS)
    }

    /// The proxies a case runs, in the order of every round.
    pub fn proxies(self) -> &'static [ProxyKind] {
        match self {
            Case::Plain64 | Case::Plain256 | Case::FixedRate => &ProxyKind::ALL,
            Case::Canary | Case::SwapLoop => &[ProxyKind::Stagegate],
            // nginx and haproxy are not set up for gRPC here.
            Case::Grpc | Case::LlmStream => &[ProxyKind::Direct, ProxyKind::Stagegate],
            _ => &[ProxyKind::Stagegate, ProxyKind::Nginx],
        }
    }

    /// The mirror target of a shadow case; `None` when nothing is mirrored.
    pub fn shadow(self) -> Option<Secondary> {
        match self {
            Case::ShadowHealthy | Case::ShadowFixedRate => Some(Secondary::Healthy),
            Case::ShadowSlow => Some(Secondary::Slow),
            Case::ShadowHang => Some(Secondary::Hang),
            Case::ShadowRefused => Some(Secondary::Refused),
            _ => None,
        }
    }

    pub fn canary(self) -> bool {
        matches!(self, Case::Canary | Case::SwapLoop)
    }

    /// Shown in the main table (the others have sections of their own).
    pub fn tabulated(self) -> bool {
        !matches!(
            self,
            Case::FixedRate | Case::ShadowFixedRate | Case::SwapLoop
        )
    }

    /// The share of the reference proxy's plain-64 throughput an open-loop case
    /// sends; `None` for closed-loop cases. The shadow case sends half as much
    /// as fixed-rate: its mirrors double the work of the core that also runs the
    /// load generator and both model servers, and at half of nginx's maximum that
    /// core saturates, which would show as production latency that is no
    /// proxy's doing.
    pub fn open_loop_share(self) -> Option<f64> {
        match self {
            Case::FixedRate => Some(0.5),
            Case::ShadowFixedRate => Some(0.25),
            _ => None,
        }
    }
}

/// Runs one case at one thread count. `earlier` holds this thread count's results
/// so far (fixed-rate reuses plain-64's measurement of its reference proxy).
pub fn run(
    ctx: &Context,
    case: Case,
    threads: usize,
    earlier: &[CaseResult],
) -> Result<CaseResult, CompareError> {
    match case {
        Case::FixedRate | Case::ShadowFixedRate => fixed_rate(ctx, case, threads, earlier),
        Case::SwapLoop => swap::run(ctx, threads),
        _ => closed_loop(ctx, case, threads),
    }
}

pub fn setup(ctx: &Context, case: Case, threads: usize) -> Setup {
    let backends = &ctx.backends;
    let secondary = match case.shadow() {
        None | Some(Secondary::Healthy) => backends.shadow,
        Some(Secondary::Slow) => backends.slow,
        Some(Secondary::Hang) => backends.hang,
        Some(Secondary::Refused) => backends.refused,
    };
    Setup {
        threads,
        // The streamed case's model serves chat completions.
        primary: if case == Case::LlmStream {
            backends.llm
        } else {
            backends.primary
        },
        grpc: (case == Case::Grpc).then_some(backends.grpc),
        secondary,
        shadow: case.shadow().is_some(),
        idle_priority: false,
        canary: case.canary(),
    }
}

/// Starts a shadow case's proxies: the case's own, plus, interleaved in the same
/// rounds, a stagegate without mirroring (the baseline of the shadow's cost; the
/// machine's speed drifts over minutes, so plain-64 from minutes before is no
/// baseline) and one mirroring with its shadow threads at idle priority.
fn start_case(ctx: &Context, case: Case, setup: &Setup) -> (Vec<RunningProxy>, Vec<String>) {
    let (mut proxies, mut notes) = start_all(ctx, case.proxies(), setup);
    if !setup.shadow {
        return (proxies, notes);
    }
    let variants = [
        (
            NO_SHADOW,
            Setup {
                shadow: false,
                ..*setup
            },
        ),
        (
            IDLE_PRIORITY,
            Setup {
                idle_priority: true,
                ..*setup
            },
        ),
    ];
    for (label, variant) in variants {
        match proxies::start(ProxyKind::Stagegate, &variant, &ctx.programs, &ctx.pin) {
            Ok(mut proxy) => {
                proxy.label = label;
                // Rounds run: no shadow, mirroring (default), mirroring (idle), others.
                let mirroring = proxies
                    .iter()
                    .position(|p| p.label == ProxyKind::Stagegate.name());
                let at = match (label, mirroring) {
                    (NO_SHADOW, _) => 0,
                    (_, Some(mirroring)) => mirroring + 1,
                    (_, None) => proxies.len(),
                };
                proxies.insert(at, proxy);
            }
            Err(err) => notes.push(format!("{label}: failed to start: {err}")),
        }
    }
    (proxies, notes)
}

fn closed_loop(ctx: &Context, case: Case, threads: usize) -> Result<CaseResult, CompareError> {
    let setup = setup(ctx, case, threads);
    let (proxies, notes) = start_case(ctx, case, &setup);
    if case == Case::Canary
        && let Some(admin) = proxies.iter().find_map(|proxy| proxy.admin)
    {
        set_canary(admin, CANARY_WEIGHT)?;
    }
    let load = Load {
        connections: case.connections(),
        duration: ctx.settings.duration,
        rate: None,
        random_user: case == Case::Canary,
        grpc_streams: case.grpc_streams(),
        sse_events: case.sse_events(),
    };
    let series = interleave(ctx, case, &proxies, &load)?;
    Ok(CaseResult::new(case, series, notes))
}

/// Starts each available proxy; one that is missing or fails to start becomes a
/// note instead of stopping the comparison.
pub fn start_all(
    ctx: &Context,
    kinds: &[ProxyKind],
    setup: &Setup,
) -> (Vec<RunningProxy>, Vec<String>) {
    let mut started = Vec::new();
    let mut notes = Vec::new();
    for &kind in kinds {
        if let Some(reason) = ctx.unavailable(kind) {
            notes.push(format!("{kind}: {reason}"));
            continue;
        }
        match proxies::start(kind, setup, &ctx.programs, &ctx.pin) {
            Ok(proxy) => started.push(proxy),
            Err(err) => {
                eprintln!("loadtest compare: {err}");
                notes.push(format!("{kind}: failed to start: {err}"));
            }
        }
    }
    (started, notes)
}

/// One warmup run per proxy, then `runs` rounds over all of them.
pub fn interleave(
    ctx: &Context,
    case: Case,
    proxies: &[RunningProxy],
    load: &Load,
) -> Result<Vec<Series>, CompareError> {
    let generator = ctx.generator();
    if !ctx.settings.warmup.is_zero() {
        let warmup = Load {
            duration: ctx.settings.warmup,
            ..*load
        };
        for proxy in proxies {
            generator.run(proxy.target, &warmup)?;
        }
    }
    let mut series: Vec<Series> = proxies
        .iter()
        .map(|proxy| Series::new(proxy.kind, proxy.label))
        .collect();
    for round in 1..=ctx.settings.runs {
        for (proxy, series) in proxies.iter().zip(&mut series) {
            let sample = generator.measure(proxy, load)?;
            progress(case, round, &series.label, &sample);
            series.samples.push(sample);
        }
    }
    Ok(series)
}

pub fn progress(case: Case, round: usize, label: &str, sample: &Sample) {
    eprintln!(
        "  {} run {round} {label}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        case.name(),
        sample.rps,
        sample.p50_ms,
        sample.p99_ms,
        sample.error_total()
    );
}

/// Sets the canary weight of version 2 of model `m` through the admin API.
pub fn set_canary(admin: std::net::SocketAddr, weight: u32) -> Result<(), CompareError> {
    let body = format!(r#"{{"version": "2", "weight": {weight}}}"#);
    let path = "/api/v1/models/m/canary";
    let response = http::call(admin, "POST", path, Some(&body), ADMIN_TIMEOUT)
        .map_err(|source| CompareError::io(format!("POST {path}"), source))?;
    if response.is_success() {
        Ok(())
    } else {
        Err(CompareError::Admin(format!(
            "POST {path} {body} answered {}: {}",
            response.status, response.body
        )))
    }
}

/// The reference proxy's plain-64 throughput: from this thread count's plain-64
/// case if it ran, else measured now (one warmup and one run).
fn reference_rps(
    ctx: &Context,
    reference: ProxyKind,
    threads: usize,
    earlier: &[CaseResult],
) -> Result<f64, CompareError> {
    let measured = earlier
        .iter()
        .filter(|result| result.case == Case::Plain64)
        .find_map(|result| result.summary(reference));
    if let Some(summary) = measured {
        return Ok(summary.rps);
    }
    let setup = setup(ctx, Case::Plain64, threads);
    let proxy = proxies::start(reference, &setup, &ctx.programs, &ctx.pin)?;
    let load = Load {
        connections: Case::Plain64.connections(),
        duration: ctx.settings.duration,
        rate: None,
        random_user: false,
        grpc_streams: None,
        sse_events: None,
    };
    let generator = ctx.generator();
    if !ctx.settings.warmup.is_zero() {
        generator.run(
            proxy.target,
            &Load {
                duration: ctx.settings.warmup,
                ..load
            },
        )?;
    }
    Ok(generator.measure(&proxy, &load)?.rps)
}

/// An open-loop case: `fixed-rate`, or `shadow-fixed-rate` (mirroring to a
/// healthy staging version, at half fixed-rate's rate).
fn fixed_rate(
    ctx: &Context,
    case: Case,
    threads: usize,
    earlier: &[CaseResult],
) -> Result<CaseResult, CompareError> {
    let reference = if ctx.unavailable(ProxyKind::Nginx).is_none() {
        ProxyKind::Nginx
    } else {
        ProxyKind::Stagegate
    };
    let reference_rps = reference_rps(ctx, reference, threads, earlier)?;
    let share = case.open_loop_share().unwrap_or(0.5);
    let rate = (reference_rps * share).max(1.0);
    eprintln!(
        "  {}: {reference} plain-64 max {reference_rps:.0} req/s; open loop at {rate:.0} req/s",
        case.name()
    );
    let (proxies, notes) = start_case(ctx, case, &setup(ctx, case, threads));
    let load = Load {
        connections: case.connections(),
        duration: ctx.settings.duration,
        rate: Some(rate),
        random_user: false,
        grpc_streams: None,
        sse_events: None,
    };
    let series = interleave(ctx, case, &proxies, &load)?;
    let mut result = CaseResult::new(case, series, notes);
    result.fixed_rate = Some(FixedRate {
        reference,
        reference_rps,
        share,
        rate,
    });
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn case_names_round_trip() {
        for case in Case::ALL {
            assert_eq!(Case::from_str(case.name(), false), Ok(case));
            assert_eq!(serde_json::to_value(case).unwrap(), case.name());
        }
        assert_eq!(Case::value_variants().len(), Case::ALL.len());
    }

    #[test]
    fn which_proxies_run_which_case() {
        assert_eq!(Case::Plain256.proxies().len(), 5);
        assert!(Case::Plain64.proxies().contains(&ProxyKind::Floor));
        assert_eq!(Case::Plain256.connections(), 256);
        assert_eq!(Case::ShadowHang.connections(), 64);
        assert_eq!(
            Case::ShadowRefused.proxies(),
            [ProxyKind::Stagegate, ProxyKind::Nginx]
        );
        assert_eq!(Case::Canary.proxies(), [ProxyKind::Stagegate]);
        assert_eq!(Case::ShadowSlow.shadow(), Some(Secondary::Slow));
        assert_eq!(Case::Plain64.shadow(), None);
        assert!(Case::SwapLoop.canary() && !Case::SwapLoop.tabulated());
        assert_eq!(Case::ShadowFixedRate.shadow(), Some(Secondary::Healthy));
        assert_eq!(Case::ShadowFixedRate.open_loop_share(), Some(0.25));
        assert_eq!(Case::FixedRate.open_loop_share(), Some(0.5));
        assert_eq!(Case::ShadowHealthy.open_loop_share(), None);
        assert!(!Case::ShadowFixedRate.tabulated());
        assert_eq!(
            Case::ShadowFixedRate.proxies(),
            [ProxyKind::Stagegate, ProxyKind::Nginx]
        );
    }
}
