//! `loadtest`: the command line over the `loadtest` library. `backend` runs a fast
//! fake model server; `run` generates load against a URL and reports latency and
//! errors; `compare` runs proxies side by side and prints a Markdown table;
//! `judge` simulates rollouts through the gates and prints what became of them;
//! `rollouts` runs real ones against Python model servers.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use loadtest::compare::{self, CompareArgs};
use loadtest::judge::{self, JudgeArgs};
use loadtest::parse::{parse_duration, parse_fraction, parse_header, parse_rate};
use loadtest::rollouts::{self, RolloutsArgs};
use loadtest::{
    BackendOptions, LoadError, LoadOptions, Mode, Stop, backend, floor, grpc, load, sse,
};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "Load testing for stagegate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fast fake model server until SIGINT or SIGTERM.
    Backend(BackendArgs),
    /// Send load to a URL and report throughput, latency and errors.
    Run(Box<RunArgs>),
    /// Run stagegate, nginx and haproxy side by side on pinned cores and print a
    /// Markdown comparison.
    Compare(CompareArgs),
    /// Simulate thousands of rollouts through stagegate's gates and print how
    /// often good candidates are promoted and bad ones stopped.
    Judge(JudgeArgs),
    /// Run rollouts end to end: the stagegate binary in front of Python model
    /// servers, under load, and print how each kind of candidate fared.
    Rollouts(RolloutsArgs),
    /// Run the hyper floor: the cheapest HTTP/1.1 proxy on hyper and Tokio, one
    /// upstream connection per client connection and nothing else, to measure
    /// what a proxy built on them costs before any proxy logic.
    Floor(FloorArgs),
}

#[derive(Debug, Args)]
struct FloorArgs {
    /// Address to listen on; port 0 picks a free one (printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The server every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads, each with a current-thread runtime of its own.
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// Address to listen on; port 0 picks a free one (printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before each answer, in milliseconds (tokio's timer may add up to ~1 ms).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Approximate size of each 200 response body.
    #[arg(long, default_value_t = 200)]
    response_bytes: usize,
    /// Fraction of requests (0 to 1) answered with a 500.
    #[arg(long, default_value = "0", value_parser = parse_fraction)]
    fail_rate: f64,
    #[arg(long, value_enum, default_value_t = Mode::Ok)]
    mode: Mode,
    /// Serve gRPC instead (HTTP/2 cleartext): every `ModelInfer` call is
    /// answered with a `ModelInferResponse` of about --response-bytes.
    #[arg(long, conflicts_with_all = ["fail_rate", "mode"])]
    grpc: bool,
    /// Serve streamed chat completions instead: every call is answered with
    /// this many server-sent events, --sse-gap-ms apart, then `[DONE]`.
    #[arg(long, conflicts_with_all = ["fail_rate", "mode", "grpc"])]
    sse_events: Option<usize>,
    #[arg(long, default_value_t = 5, requires = "sse_events")]
    sse_gap_ms: u64,
    /// Runtime worker threads.
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Target, e.g. http://127.0.0.1:8080/v2/models/m/infer (http only).
    #[arg(long)]
    url: Uri,
    #[arg(long, default_value = "POST")]
    method: Method,
    /// Request body; defaults to a ~1 KB JSON inference request (none for GET/HEAD).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Extra request header, 'name: value'; repeatable.
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Header set to a new random value on every request (e.g. a user id for sticky
    /// canary routing); repeatable.
    #[arg(long = "random-header", value_name = "NAME")]
    random_headers: Vec<HeaderName>,
    /// Concurrent keep-alive connections, one worker each.
    #[arg(long, default_value = "64")]
    connections: NonZeroUsize,
    /// How long to measure, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "requests")]
    duration: Duration,
    /// Stop after this many measured requests instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Unrecorded load before measuring starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Open loop at this many requests per second in total; closed loop without it.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime worker threads.
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Send gRPC `ModelInfer` calls (to the URL's host and port) instead, this
    /// many in flight on each of --connections HTTP/2 connections.
    #[arg(long, conflicts_with_all = ["rate", "requests", "random_headers", "body_file"])]
    grpc_streams: Option<NonZeroUsize>,
    /// The model the gRPC calls name.
    #[arg(long, default_value = "m", requires = "grpc_streams")]
    grpc_model: String,
    /// Send streamed chat completions (`POST /v1/chat/completions` to the URL's
    /// host and port, `"stream": true`) instead, each answer read to its end
    /// and required to bring this many events; latency is to the first event.
    #[arg(long, conflicts_with_all = ["rate", "requests", "random_headers", "body_file", "grpc_streams"])]
    sse_events: Option<usize>,
    /// The model the chat calls name.
    #[arg(long, default_value = "m", requires = "sse_events")]
    sse_model: String,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("cannot read body file {path}: {source}")]
    BodyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Compare(compare::CompareError),
    #[error(transparent)]
    Judge(judge::JudgeError),
    #[error("the hyper floor stopped: {0}")]
    Floor(#[source] io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backend(args) => {
            runtime(args.threads).and_then(|rt| rt.block_on(backend_command(args)))
        }
        Command::Run(args) => runtime(args.threads).and_then(|rt| rt.block_on(run_command(*args))),
        Command::Compare(args) => compare::run(&args).map_err(CliError::Compare),
        Command::Judge(args) => judge::run(&args).map_err(CliError::Judge),
        Command::Rollouts(args) => rollouts::run(&args).map_err(CliError::Compare),
        Command::Floor(args) => floor_command(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadtest: {err}");
            ExitCode::FAILURE
        }
    }
}

fn floor_command(args: &FloorArgs) -> Result<(), CliError> {
    let listener = std::net::TcpListener::bind(args.listen).map_err(listen_failed(args.listen))?;
    let addr = listener.local_addr().map_err(listen_failed(args.listen))?;
    announce(addr)?;
    floor::run(listener, args.upstream, args.threads.get()).map_err(CliError::Floor)
}

fn listen_failed(addr: SocketAddr) -> impl FnOnce(io::Error) -> CliError {
    move |source| CliError::Listen { addr, source }
}

/// The line whoever started a server reads to learn its address.
fn announce(addr: SocketAddr) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(CliError::Stdout)
}

fn runtime(threads: NonZeroUsize) -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.get())
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

async fn backend_command(args: BackendArgs) -> Result<(), CliError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(listen_failed(args.listen))?;
    let addr = listener.local_addr().map_err(listen_failed(args.listen))?;
    // Installed before announcing the address, so a signal sent by whoever reads
    // that line is never missed.
    let shutdown = shutdown_signal()?;
    announce(addr)?;
    if let Some(events) = args.sse_events {
        tokio::select! {
            () = sse::serve(listener, events, Duration::from_millis(args.sse_gap_ms)) => {}
            () = shutdown => {}
        }
        return Ok(());
    }
    if args.grpc {
        tokio::select! {
            () = grpc::serve(
                listener,
                grpc::infer_response(args.response_bytes),
                Duration::from_millis(args.latency_ms),
            ) => {}
            () = shutdown => {}
        }
        return Ok(());
    }
    let options = BackendOptions {
        latency: Duration::from_millis(args.latency_ms),
        response_bytes: args.response_bytes,
        fail_rate: args.fail_rate,
        mode: args.mode,
    };
    backend::serve(listener, options, shutdown).await;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()>, CliError> {
    Ok(async {
        // Without a handler the process would still die on Ctrl-C; an error here
        // means no handler, so waiting forever is the same outcome.
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn run_command(args: RunArgs) -> Result<(), CliError> {
    if let Some(streams) = args.grpc_streams {
        return grpc_run_command(&args, streams.get()).await;
    }
    if let Some(events) = args.sse_events {
        return sse_run_command(&args, events).await;
    }
    let body = match &args.body_file {
        Some(path) => Bytes::from(std::fs::read(path).map_err(|source| CliError::BodyFile {
            path: path.clone(),
            source,
        })?),
        None if matches!(args.method, Method::GET | Method::HEAD) => Bytes::new(),
        None => load::default_body(),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in args.headers {
        headers.append(name, value);
    }
    let options = LoadOptions {
        url: args.url,
        method: args.method,
        headers,
        random_headers: args.random_headers,
        body,
        connections: args.connections.get(),
        stop: args
            .requests
            .map_or(Stop::Duration(args.duration), Stop::Requests),
        warmup: args.warmup,
        rate: args.rate,
        timeout: args.timeout,
    };
    let report = load::run(options).await?;
    print_report(&report, args.json)
}

/// The address of the URL's host and port.
async fn address_of(url: &http::Uri) -> Result<SocketAddr, LoadError> {
    let host = url.host().unwrap_or("127.0.0.1");
    let port = url.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| LoadError::NoAddress(format!("{host}:{port}")))
}

async fn sse_run_command(args: &RunArgs, events: usize) -> Result<(), CliError> {
    let load = sse::SseLoad {
        addr: address_of(&args.url).await?,
        model: args.sse_model.clone(),
        events,
        connections: args.connections.get(),
        duration: args.duration,
        warmup: args.warmup,
        timeout: args.timeout,
    };
    let report = sse::run(load).await?;
    print_report(&report, args.json)
}

async fn grpc_run_command(args: &RunArgs, streams: usize) -> Result<(), CliError> {
    let addr = address_of(&args.url).await?;
    let load = grpc::GrpcLoad {
        addr,
        model: args.grpc_model.clone(),
        connections: args.connections.get(),
        streams,
        duration: args.duration,
        warmup: args.warmup,
        timeout: args.timeout,
        request_bytes: 1024,
    };
    let report = grpc::run(load).await?;
    print_report(&report, args.json)
}

fn print_report(report: &loadtest::Report, json: bool) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    if json {
        serde_json::to_writer(&mut stdout, &report.to_json())?;
        writeln!(stdout).map_err(CliError::Stdout)?;
    } else {
        write!(stdout, "{report}").map_err(CliError::Stdout)?;
    }
    stdout.flush().map_err(CliError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn duration_and_requests_conflict() {
        let parsed = Cli::try_parse_from([
            "loadtest",
            "run",
            "--url",
            "http://x/",
            "--duration",
            "1s",
            "--requests",
            "5",
        ]);
        assert!(parsed.is_err());
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "run",
            "--url",
            "http://127.0.0.1:1/",
            "--header",
            "a: b",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.connections.get(), 64);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.warmup, Duration::from_secs(2));
        assert_eq!(args.rate, None);
        assert_eq!(args.headers.len(), 1);
    }
}
