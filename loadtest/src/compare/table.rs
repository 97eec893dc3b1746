//! The Markdown rendering of a [`Comparison`]: a header (machine, command line,
//! placement), then per thread count the main table, the fixed-rate section and
//! the swap-loop section.

use std::fmt::Write;

use super::cases::{Case, IDLE_PRIORITY, NO_SHADOW};
use super::proxies::ProxyKind;
use super::report::{
    CaseResult, Comparison, Series, Summary, ThreadResults, errors_cell, number, ratio,
};
use super::swap::{STEADY, SWAPPING};

const MAIN_HEADER: &str = "| case | proxy | req/s (median) | vs nginx | vs direct | p50 ms | p99 ms \
     | CPU µs/req | vs nginx CPU | peak RSS MB | errors |\n\
     |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";

pub fn render(comparison: &Comparison) -> String {
    let mut out = header(comparison);
    for results in &comparison.results {
        out.push_str(&thread_section(results));
    }
    out
}

fn header(c: &Comparison) -> String {
    let mut out = String::from("# loadtest compare\n\n");
    let m = &c.machine;
    let _ = writeln!(
        out,
        "- machine: {} cores, {}, kernel {}",
        m.nproc, m.cpu_model, m.kernel
    );
    let _ = writeln!(out, "- command: `{}`", c.command);
    let _ = writeln!(out, "- placement: {}", c.pinning);
    let _ = writeln!(
        out,
        "- each case: its proxies started fresh and kept running through the case; one \
         {:.1}s warmup run per proxy, then {} round(s) of {:.1}s runs, proxies interleaved \
         within each round",
        c.warmup_s, c.runs, c.duration_s
    );
    let _ = writeln!(
        out,
        "- request: POST of a ~1 KB JSON body to /v2/models/m/infer; backends answer ~200 bytes"
    );
    for tool in &c.tools {
        let _ = writeln!(out, "- {tool}");
    }
    out.push('\n');
    out
}

fn thread_section(results: &ThreadResults) -> String {
    let threads = results.threads;
    let mut out = format!("## {threads} worker thread(s) per proxy\n\n");
    if threads > 1 {
        let _ = writeln!(
            out,
            "All {threads} proxy threads/workers share core 1 (the other core runs the load \
             generator and backends).\n"
        );
    }
    let tabulated: Vec<&CaseResult> = results
        .cases
        .iter()
        .filter(|r| r.case.tabulated())
        .collect();
    if !tabulated.is_empty() {
        out.push_str(&main_table(&tabulated));
    }
    let shadow_cases: Vec<&CaseResult> = results
        .cases
        .iter()
        .filter(|r| r.case.shadow().is_some())
        .collect();
    out.push_str(&shadow_cost_section(&shadow_cases));
    for result in &results.cases {
        match result.case {
            Case::FixedRate | Case::ShadowFixedRate => out.push_str(&fixed_rate_section(result)),
            Case::SwapLoop => out.push_str(&swap_section(result)),
            _ => {}
        }
    }
    out
}

/// The baseline for a ratio: `proxy` in the same case, else in plain-64 (marked
/// with `*`), which has the same connection count as every case without it.
fn baseline(
    cases: &[&CaseResult],
    case: &CaseResult,
    proxy: ProxyKind,
) -> (Option<Summary>, &'static str) {
    if let Some(summary) = case.summary(proxy) {
        return (Some(summary), "");
    }
    let fallback = cases
        .iter()
        .filter(|other| other.case == Case::Plain64)
        .find_map(|other| other.summary(proxy));
    match fallback {
        Some(summary) if case.case.connections() == Case::Plain64.connections() => {
            (Some(summary), "*")
        }
        _ => (None, ""),
    }
}

pub fn main_table(cases: &[&CaseResult]) -> String {
    let mut out = String::from(MAIN_HEADER);
    let mut notes = Vec::new();
    let mut starred = false;
    for case in cases {
        let (nginx, nginx_mark) = baseline(cases, case, ProxyKind::Nginx);
        let (direct, direct_mark) = baseline(cases, case, ProxyKind::Direct);
        for series in &case.series {
            let Some(row) = series.summary() else {
                continue;
            };
            let nginx_cpu = nginx.as_ref().and_then(|s| s.cpu_us_per_request);
            let cells = [
                case.case.name().to_string(),
                series.label.clone(),
                format!("{:.0}", row.rps),
                mark(
                    ratio(Some(row.rps), nginx.as_ref().map(|s| s.rps)),
                    nginx_mark,
                ),
                mark(
                    ratio(Some(row.rps), direct.as_ref().map(|s| s.rps)),
                    direct_mark,
                ),
                format!("{:.2}", row.p50_ms),
                format!("{:.2}", row.p99_ms),
                number(row.cpu_us_per_request, 1),
                mark(ratio(row.cpu_us_per_request, nginx_cpu), nginx_mark),
                number(row.peak_rss_kib.map(|kib| kib as f64 / 1024.0), 1),
                errors_cell(&row.errors),
            ];
            starred |= cells.iter().any(|cell| cell.ends_with('*'));
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        notes.extend(
            case.notes
                .iter()
                .map(|note| format!("{}: {note}", case.case.name())),
        );
    }
    out.push('\n');
    if starred {
        out.push_str("\\* baseline from plain-64 (same 64 connections): the case does not run that proxy.\n\n");
    }
    out.push_str(
        "Ratios: req/s over the baseline's (higher is better); CPU over nginx's CPU per \
         request (lower is better). CPU is user+system time of the proxy's whole process \
         tree per completed request; RSS is the summed VmHWM of that tree.\n\n",
    );
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

fn mark(cell: String, marker: &str) -> String {
    if cell == "—" { cell } else { cell + marker }
}

/// Each shadow case's mirroring stagegates (shadow threads at normal priority
/// within their CPU share, the default, and at idle priority) against the stagegate without mirroring that
/// ran in the same rounds; empty when no shadow case has both.
pub fn shadow_cost_section(cases: &[&CaseResult]) -> String {
    let mut rows = String::new();
    for case in cases.iter().filter(|case| case.case.shadow().is_some()) {
        let find = |label: &str| {
            case.series
                .iter()
                .find(|series| series.label == label)
                .and_then(Series::summary)
        };
        let Some(plain) = find(NO_SHADOW) else {
            continue;
        };
        for (label, priority) in [
            (ProxyKind::Stagegate.name(), "share 0.2"),
            (IDLE_PRIORITY, "idle"),
        ] {
            let Some(mirroring) = find(label) else {
                continue;
            };
            let _ = writeln!(
                rows,
                "| {} | {priority} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {} | {} |",
                case.case.name(),
                mirroring.rps,
                plain.rps,
                ratio(Some(mirroring.rps), Some(plain.rps)),
                mirroring.p99_ms,
                plain.p99_ms,
                ratio(Some(mirroring.p99_ms), Some(plain.p99_ms)),
                mirroring
                    .mirrored_share
                    .map_or_else(|| "—".to_string(), percent),
            );
        }
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "### shadow cost\n\n\
         stagegate mirroring 100% of requests against a stagegate without mirroring, run in \
         the same rounds of the same case. Shadow threads: `share 0.2` (the default) runs \
         them at normal priority within `shadow_cpu_share = 0.2` of one core, past which \
         mirrors are dropped; `idle` (`shadow_priority = \"idle\"`) gives them only CPU \
         time nothing else wants. Mirrored: the share of production requests mirrored to the staging \
         version, answered or not (median of the runs). shadow-fixed-rate is open loop: \
         its throughput is set by the schedule and its p99 counts from each request's \
         scheduled send time.\n\n\
         | case | shadow threads | req/s mirroring | req/s no shadow | throughput kept | \
         p99 ms mirroring | p99 ms no shadow | p99 ratio | mirrored |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|\n{rows}\n"
    )
}

/// A share as a percentage, with a decimal below 10% (where 0% would hide that
/// some requests were mirrored).
fn percent(share: f64) -> String {
    let percent = share * 100.0;
    if percent < 10.0 {
        format!("{percent:.1}%")
    } else {
        format!("{percent:.0}%")
    }
}

/// An open-loop case; added latency is over the direct path, or for a shadow
/// case over the stagegate without mirroring.
pub fn fixed_rate_section(case: &CaseResult) -> String {
    let mut out = format!("### {}\n\n", case.case.name());
    if let Some(fixed) = &case.fixed_rate {
        let _ = writeln!(
            out,
            "Open loop at {:.0} req/s ({:.0}% of {}'s plain-64 max, {:.0} req/s), 64 \
             connections; latency from the scheduled send time.\n",
            fixed.rate,
            fixed.share * 100.0,
            fixed.reference,
            fixed.reference_rps
        );
    }
    // Over the direct path; in a shadow case, stagegate's series over the
    // stagegate without mirroring (another proxy's rows get no difference).
    let (base, base_name, base_proxy) = match case.summary(ProxyKind::Direct) {
        Some(direct) => (Some(direct), "direct", None),
        None => (
            case.series
                .iter()
                .find(|series| series.label == NO_SHADOW)
                .and_then(Series::summary),
            "no shadow",
            Some(ProxyKind::Stagegate),
        ),
    };
    let _ = writeln!(
        out,
        "| proxy | req/s (median) | p50 ms | p99 ms | p50 ms over {base_name} | \
         p99 ms over {base_name} | CPU µs/req | errors |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|"
    );
    for series in &case.series {
        let Some(row) = series.summary() else {
            continue;
        };
        let comparable = base_proxy.is_none_or(|proxy| proxy == series.proxy);
        let added =
            |f: fn(&Summary) -> f64| base.as_ref().filter(|_| comparable).map(|b| f(&row) - f(b));
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} |",
            series.label,
            row.rps,
            row.p50_ms,
            row.p99_ms,
            number(added(|s| s.p50_ms), 3),
            number(added(|s| s.p99_ms), 3),
            number(row.cpu_us_per_request, 1),
            errors_cell(&row.errors)
        );
    }
    out.push('\n');
    push_notes(&mut out, case);
    out
}

pub fn swap_section(case: &CaseResult) -> String {
    let mut out = String::from(
        "### swap-loop\n\nstagegate, 64 connections, random x-user-id; during the swapping runs \
         a thread flips version 2's canary weight 0 <-> 10 through the admin API at 100 \
         calls/s.\n\n\
         | run | req/s (median) | p50 ms | p99 ms | CPU µs/req | errors |\n|---|--:|--:|--:|--:|--:|\n",
    );
    let find = |label: &str| {
        case.series
            .iter()
            .find(|s| s.label == label)
            .and_then(|s| s.summary())
    };
    let (steady, swapping) = (find(STEADY), find(SWAPPING));
    for (label, row) in [(STEADY, &steady), (SWAPPING, &swapping)] {
        let Some(row) = row else { continue };
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.3} | {:.3} | {} | {} |",
            row.rps,
            row.p50_ms,
            row.p99_ms,
            number(row.cpu_us_per_request, 1),
            errors_cell(&row.errors)
        );
    }
    let failed = swapping.as_ref().map(Summary::error_total);
    let _ = writeln!(
        out,
        "\nThroughput with swaps / without: {}. Failed requests while swapping: {} (must be 0).",
        ratio(swapping.map(|s| s.rps), steady.map(|s| s.rps)),
        failed.map_or_else(|| "—".to_string(), |n| n.to_string()),
    );
    if let Some(calls) = case.admin_calls {
        let _ = writeln!(
            out,
            "Admin calls: {} made, {} failed.",
            calls.made, calls.failed
        );
    }
    out.push('\n');
    push_notes(&mut out, case);
    out
}

fn push_notes(out: &mut String, case: &CaseResult) {
    for note in &case.notes {
        let _ = writeln!(out, "- {note}");
    }
    if !case.notes.is_empty() {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::report::tests::sample;
    use crate::compare::report::{AdminCalls, FixedRate, Machine, Series};

    fn series(proxy: ProxyKind, label: &str, rps: f64, cpu: Option<f64>) -> Series {
        let mut series = Series::new(proxy, label);
        series
            .samples
            .push(sample(rps, cpu, cpu.map(|_| 10 * 1024)));
        series
    }

    fn plain() -> CaseResult {
        CaseResult::new(
            Case::Plain64,
            vec![
                series(ProxyKind::Direct, "direct", 40000.0, None),
                series(ProxyKind::Stagegate, "stagegate", 20000.0, Some(40.0)),
                series(ProxyKind::Nginx, "nginx", 16000.0, Some(50.0)),
            ],
            vec!["haproxy: not installed".to_string()],
        )
    }

    #[test]
    fn shadow_cost_compares_with_the_no_shadow_run_of_the_same_case() {
        let mut shared = series(ProxyKind::Stagegate, "stagegate", 18000.0, Some(44.0));
        shared.samples[0].mirrored = Some(9000);
        let mut idle = series(ProxyKind::Stagegate, IDLE_PRIORITY, 10000.0, Some(80.0));
        idle.samples[0].mirrored = Some(10000);
        let hang = CaseResult::new(
            Case::ShadowHang,
            vec![
                series(ProxyKind::Stagegate, NO_SHADOW, 20000.0, Some(40.0)),
                shared,
                idle,
                series(ProxyKind::Nginx, "nginx", 40.0, Some(50.0)),
            ],
            Vec::new(),
        );
        let plain = plain();
        let text = shadow_cost_section(&[&plain, &hang]);
        assert!(
            text.starts_with("### shadow cost\n\nstagegate mirroring"),
            "{text}"
        );
        assert!(
            text.contains("\n| case | shadow threads | req/s mirroring |"),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("| shadow-hang"))
            .collect();
        // p99 is rps/100 in the fixture.
        assert_eq!(
            rows,
            [
                "| shadow-hang | share 0.2 | 18000 | 20000 | 0.90x | 180.00 | 200.00 | 0.90x | 50% |",
                "| shadow-hang | idle | 10000 | 20000 | 0.50x | 100.00 | 200.00 | 0.50x | 100% |",
            ]
        );
        assert_eq!(shadow_cost_section(&[&plain]), "");
    }

    #[test]
    fn small_shares_keep_a_decimal() {
        assert_eq!(percent(0.004), "0.4%");
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(1.0), "100%");
    }

    #[test]
    fn main_table_rows_and_ratios() {
        let plain = plain();
        let canary = CaseResult::new(
            Case::Canary,
            vec![series(
                ProxyKind::Stagegate,
                "stagegate",
                17600.0,
                Some(45.0),
            )],
            Vec::new(),
        );
        let text = main_table(&[&plain, &canary]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("| case | proxy | req/s (median) | vs nginx | vs direct"));
        assert_eq!(
            lines[3],
            "| plain-64 | stagegate | 20000 | 1.25x | 0.50x | 20.00 | 200.00 | 40.0 | 0.80x | 10.0 | 0 |"
        );
        assert_eq!(
            lines[2],
            "| plain-64 | direct | 40000 | 2.50x | 1.00x | 40.00 | 400.00 | — | — | — | 0 |"
        );
        // The canary case has neither nginx nor direct: plain-64's, starred.
        assert!(
            lines[5].starts_with("| canary | stagegate | 17600 | 1.10x* | 0.44x* |"),
            "{}",
            lines[5]
        );
        assert!(text.contains("\\* baseline from plain-64"));
        assert!(text.contains("- plain-64: haproxy: not installed"));
    }

    #[test]
    fn fixed_rate_reports_added_latency() {
        let mut case = CaseResult::new(
            Case::FixedRate,
            vec![
                series(ProxyKind::Direct, "direct", 8000.0, None),
                series(ProxyKind::Nginx, "nginx", 8100.0, Some(50.0)),
            ],
            Vec::new(),
        );
        case.fixed_rate = Some(FixedRate {
            reference: ProxyKind::Nginx,
            reference_rps: 16000.0,
            share: 0.5,
            rate: 8000.0,
        });
        let text = fixed_rate_section(&case);
        assert!(
            text.contains("Open loop at 8000 req/s (50% of nginx's plain-64 max, 16000 req/s)")
        );
        // p50 is rps/1000 in the fixture: 8.1 - 8.0.
        assert!(text.starts_with("### fixed-rate\n"));
        assert!(text.contains("| p50 ms over direct | p99 ms over direct |"));
        assert!(
            text.contains("| nginx | 8100 | 8.100 | 81.000 | 0.100 | 1.000 | 50.0 | 0 |"),
            "{text}"
        );
    }

    #[test]
    fn shadow_fixed_rate_adds_latency_over_the_no_shadow_stagegate() {
        let case = CaseResult::new(
            Case::ShadowFixedRate,
            vec![
                series(ProxyKind::Stagegate, NO_SHADOW, 8000.0, Some(40.0)),
                series(ProxyKind::Stagegate, "stagegate", 8200.0, Some(60.0)),
                series(ProxyKind::Nginx, "nginx", 7000.0, Some(90.0)),
            ],
            Vec::new(),
        );
        let text = fixed_rate_section(&case);
        assert!(
            text.contains("| nginx | 7000 | 7.000 | 70.000 | — | — | 90.0 | 0 |"),
            "another proxy is not compared with stagegate: {text}"
        );
        assert!(text.starts_with("### shadow-fixed-rate\n"));
        assert!(text.contains("| p50 ms over no shadow | p99 ms over no shadow |"));
        assert!(
            text.contains("| stagegate | 8200 | 8.200 | 82.000 | 0.200 | 2.000 | 60.0 | 0 |"),
            "{text}"
        );
    }

    #[test]
    fn swap_section_compares_with_and_without() {
        let mut swapping = series(ProxyKind::Stagegate, SWAPPING, 19000.0, Some(41.0));
        swapping.samples[0]
            .errors
            .insert("status_5xx".to_string(), 1);
        let mut case = CaseResult::new(
            Case::SwapLoop,
            vec![
                series(ProxyKind::Stagegate, STEADY, 20000.0, Some(40.0)),
                swapping,
            ],
            Vec::new(),
        );
        case.admin_calls = Some(AdminCalls {
            made: 500,
            failed: 0,
        });
        let text = swap_section(&case);
        assert!(text.contains("Throughput with swaps / without: 0.95x."));
        assert!(text.contains("Failed requests while swapping: 1 (must be 0)."));
        assert!(text.contains("Admin calls: 500 made, 0 failed."));
    }

    #[test]
    fn full_render_has_header_and_sections() {
        let comparison = Comparison {
            command: "loadtest compare --quick".to_string(),
            machine: Machine {
                nproc: 2,
                cpu_model: "AMD EPYC".to_string(),
                kernel: "6.1".to_string(),
            },
            pinning: "pinned".to_string(),
            duration_s: 2.0,
            warmup_s: 1.0,
            runs: 1,
            tools: vec!["haproxy: not installed (apt-get install -y haproxy)".to_string()],
            results: vec![ThreadResults {
                threads: 2,
                cases: vec![plain()],
            }],
        };
        let text = render(&comparison);
        assert!(text.contains("- machine: 2 cores, AMD EPYC, kernel 6.1"));
        assert!(text.contains("- command: `loadtest compare --quick`"));
        assert!(text.contains("- haproxy: not installed"));
        assert!(text.contains("## 2 worker thread(s) per proxy"));
        assert!(text.contains("share core 1"));
        assert!(!text.contains("### swap-loop"));
    }
}
