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
/// The canary weight of the `canary` and `swap-loop` cases, in percent.
pub const CANARY_WEIGHT: u32 = 10;

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
    SwapLoop,
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
    pub const ALL: [Case; 9] = [
        Case::Plain64,
        Case::Plain256,
        Case::Canary,
        Case::ShadowHealthy,
        Case::ShadowSlow,
        Case::ShadowHang,
        Case::ShadowRefused,
        Case::FixedRate,
        Case::SwapLoop,
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
            Case::SwapLoop => "swap-loop",
        }
    }

    pub fn connections(self) -> usize {
        if self == Case::Plain256 { 256 } else { 64 }
    }

    /// The proxies a case runs, in the order of every round.
    pub fn proxies(self) -> &'static [ProxyKind] {
        match self {
            Case::Plain64 | Case::Plain256 | Case::FixedRate => &ProxyKind::ALL,
            Case::Canary | Case::SwapLoop => &[ProxyKind::Stagegate],
            _ => &[ProxyKind::Stagegate, ProxyKind::Nginx],
        }
    }

    /// The mirror target of a shadow case; `None` when nothing is mirrored.
    pub fn shadow(self) -> Option<Secondary> {
        match self {
            Case::ShadowHealthy => Some(Secondary::Healthy),
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
        !matches!(self, Case::FixedRate | Case::SwapLoop)
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
        Case::FixedRate => fixed_rate(ctx, threads, earlier),
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
        primary: backends.primary,
        secondary,
        shadow: case.shadow().is_some(),
        canary: case.canary(),
    }
}

fn closed_loop(ctx: &Context, case: Case, threads: usize) -> Result<CaseResult, CompareError> {
    let setup = setup(ctx, case, threads);
    let (mut proxies, mut notes) = start_all(ctx, case.proxies(), &setup);
    if setup.shadow {
        // The machine's speed drifts over minutes; the shadow's cost is measured
        // against a stagegate without mirroring interleaved in the same rounds,
        // not against plain-64 from minutes before.
        let plain = Setup {
            shadow: false,
            ..setup
        };
        match proxies::start(ProxyKind::Stagegate, &plain, &ctx.programs, &ctx.pin) {
            Ok(mut baseline) => {
                baseline.label = NO_SHADOW;
                proxies.insert(0, baseline);
            }
            Err(err) => notes.push(format!("{NO_SHADOW}: failed to start: {err}")),
        }
    }
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

fn fixed_rate(
    ctx: &Context,
    threads: usize,
    earlier: &[CaseResult],
) -> Result<CaseResult, CompareError> {
    let reference = if ctx.unavailable(ProxyKind::Nginx).is_none() {
        ProxyKind::Nginx
    } else {
        ProxyKind::Stagegate
    };
    let reference_rps = reference_rps(ctx, reference, threads, earlier)?;
    let rate = (reference_rps / 2.0).max(1.0);
    eprintln!(
        "  fixed-rate: {reference} plain-64 max {reference_rps:.0} req/s; open loop at {rate:.0} req/s"
    );
    let (proxies, notes) = start_all(
        ctx,
        Case::FixedRate.proxies(),
        &setup(ctx, Case::FixedRate, threads),
    );
    let load = Load {
        connections: Case::FixedRate.connections(),
        duration: ctx.settings.duration,
        rate: Some(rate),
        random_user: false,
    };
    let series = interleave(ctx, Case::FixedRate, &proxies, &load)?;
    let mut result = CaseResult::new(Case::FixedRate, series, notes);
    result.fixed_rate = Some(FixedRate {
        reference,
        reference_rps,
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
        assert_eq!(Case::Plain256.proxies().len(), 4);
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
    }
}
