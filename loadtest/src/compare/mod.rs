//! `loadtest compare`: stagegate, nginx and haproxy side by side (and the backend
//! with no proxy, "direct") on a two-core machine, printed as Markdown.
//!
//! Placement: this harness, the load generator (`loadtest run`, one thread) and
//! the fake backends run on core 0; the proxy under test runs on core 1, with all
//! of its threads or worker processes. Each case starts its proxies fresh, keeps
//! them running through the case, gives each one warmup run, then interleaves the
//! measured runs (round 1: direct, stagegate, nginx, haproxy; round 2: ...). A
//! shadow case also runs in its rounds a stagegate without mirroring (the
//! baseline of the shadow-cost table) and one with its shadow threads at idle
//! priority, and reads from stagegate's shadow report how many requests each run
//! mirrored.

pub(crate) mod backends;
mod cases;
mod configs;
mod host;
pub(crate) mod http;
mod measure;
pub(crate) mod procs;
mod proxies;
mod report;
mod swap;
mod table;

use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cases::Case;

use crate::parse::parse_duration;
use backends::Backends;
use host::{command_line, machine, pinning, tool_lines};
use measure::Generator;
use procs::{Pinning, clock_ticks, which};
use proxies::{Programs, ProxyKind};
use report::{Comparison, ThreadResults};

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The stagegate binary [default: `stagegate` next to this executable].
    #[arg(long)]
    pub stagegate: Option<PathBuf>,
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of the warmup run each proxy gets at the start of each case.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measured runs per proxy per case, interleaved across proxies.
    #[arg(long, default_value = "3")]
    pub runs: NonZeroUsize,
    /// Worker threads of every proxy (stagegate worker_threads, nginx
    /// worker_processes, haproxy nbthread); one table per value.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<NonZeroUsize>,
    /// Cases to run [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub cases: Vec<Case>,
    /// Also write every run's raw measurements here as JSON.
    #[arg(long)]
    pub out_json: Option<PathBuf>,
    /// Smoke test: 1 run of 2s per proxy, warmup at most 1s.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} did not become ready: {detail}")]
    NotReady { what: String, detail: String },
    #[error("the load generator failed: {0}")]
    Generator(String),
    #[error("unreadable load generator output ({source}): {output}")]
    GeneratorOutput {
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("admin API: {0}")]
    Admin(String),
    #[error("{0}")]
    Setup(String),
    #[error(
        "no stagegate binary at {0} (run `cargo build --release --workspace`, or pass --stagegate)"
    )]
    NoStagegate(PathBuf),
    #[error("cannot encode the results: {0}")]
    Json(#[from] serde_json::Error),
}

impl CompareError {
    pub(crate) fn spawn(what: &str, source: io::Error) -> Self {
        CompareError::Spawn {
            what: what.to_string(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        CompareError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The run lengths, after `--quick`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub runs: usize,
    pub threads: Vec<usize>,
    /// In the canonical order (plain-64 before fixed-rate, which reuses it).
    pub cases: Vec<Case>,
}

impl Settings {
    fn from_args(args: &CompareArgs) -> Self {
        let cases = Case::ALL
            .into_iter()
            .filter(|case| args.cases.is_empty() || args.cases.contains(case))
            .collect();
        let mut threads: Vec<usize> = args.threads.iter().map(|t| t.get()).collect();
        threads.dedup();
        let (duration, warmup, runs) = if args.quick {
            (
                Duration::from_secs(2),
                args.warmup.min(Duration::from_secs(1)),
                1,
            )
        } else {
            (args.duration, args.warmup, args.runs.get())
        };
        Settings {
            duration,
            warmup,
            runs,
            threads,
            cases,
        }
    }
}

/// What every case needs.
pub(crate) struct Context {
    pub settings: Settings,
    pub programs: Programs,
    pub pin: Pinning,
    pub exe: PathBuf,
    pub ticks_per_second: f64,
    // Last, so the backends outlive nothing that uses them.
    pub backends: Backends,
}

impl Context {
    pub fn generator(&self) -> Generator<'_> {
        Generator {
            exe: &self.exe,
            pin: &self.pin,
            ticks_per_second: self.ticks_per_second,
        }
    }

    /// Why `kind` cannot run here, if it cannot.
    pub fn unavailable(&self, kind: ProxyKind) -> Option<&'static str> {
        match kind {
            ProxyKind::Nginx if self.programs.nginx.is_none() => {
                Some("not installed (apt-get install -y nginx-light)")
            }
            ProxyKind::Haproxy if self.programs.haproxy.is_none() => {
                Some("not installed (apt-get install -y haproxy)")
            }
            _ => None,
        }
    }
}

pub fn run(args: &CompareArgs) -> Result<(), CompareError> {
    let exe = std::env::current_exe()
        .map_err(|source| CompareError::io("locating this executable", source))?;
    let stagegate = procs::stagegate_binary(args.stagegate.as_deref())?;
    // Before pinning this process, which would make it see one core.
    let machine = machine();
    let (pin, placement) = pinning(machine.nproc);
    eprintln!("loadtest compare: {placement}");
    let programs = Programs {
        nginx: which("nginx"),
        haproxy: which("haproxy"),
        stagegate,
        loadtest: exe.clone(),
    };
    let tools = tool_lines(&programs);
    pin.pin_self()?;
    let backends = Backends::start(&exe, &pin)?;
    let ctx = Context {
        settings: Settings::from_args(args),
        programs,
        pin,
        exe,
        ticks_per_second: clock_ticks(),
        backends,
    };
    let results = run_all(&ctx)?;
    let comparison = Comparison {
        command: command_line(),
        machine,
        pinning: placement,
        duration_s: ctx.settings.duration.as_secs_f64(),
        warmup_s: ctx.settings.warmup.as_secs_f64(),
        runs: ctx.settings.runs,
        tools,
        results,
    };
    print!("{}", table::render(&comparison));
    match &args.out_json {
        Some(path) => write_json(path, &comparison),
        None => Ok(()),
    }
}

fn run_all(ctx: &Context) -> Result<Vec<ThreadResults>, CompareError> {
    let mut all = Vec::new();
    for &threads in &ctx.settings.threads {
        let mut cases = Vec::new();
        for &case in &ctx.settings.cases {
            eprintln!("[{threads} thread(s)] {}", case.name());
            let result = cases::run(ctx, case, threads, &cases)?;
            cases.push(result);
        }
        all.push(ThreadResults { threads, cases });
    }
    Ok(all)
}

fn write_json(path: &Path, comparison: &Comparison) -> Result<(), CompareError> {
    let text = serde_json::to_string_pretty(comparison)?;
    std::fs::write(path, text + "\n")
        .map_err(|source| CompareError::io(format!("writing {}", path.display()), source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CompareArgs,
    }

    fn parse(args: &[&str]) -> CompareArgs {
        let mut argv = vec!["compare"];
        argv.extend_from_slice(args);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn defaults_and_quick() {
        let settings = Settings::from_args(&parse(&[]));
        assert_eq!(settings.duration, Duration::from_secs(5));
        assert_eq!(settings.warmup, Duration::from_secs(2));
        assert_eq!(settings.runs, 3);
        assert_eq!(settings.threads, [1, 2]);
        assert_eq!(settings.cases, Case::ALL);
        let quick = Settings::from_args(&parse(&["--quick", "--threads", "2"]));
        assert_eq!((quick.duration, quick.runs), (Duration::from_secs(2), 1));
        assert_eq!(quick.warmup, Duration::from_secs(1));
        assert_eq!(quick.threads, [2]);
    }

    #[test]
    fn cases_keep_the_canonical_order() {
        let settings = Settings::from_args(&parse(&["--cases", "fixed-rate,plain-64,shadow-hang"]));
        assert_eq!(
            settings.cases,
            [Case::Plain64, Case::ShadowHang, Case::FixedRate]
        );
        let bad = Wrapper::try_parse_from(["compare", "--cases", "nope"]);
        assert!(bad.is_err());
    }
}
