//! One measured run: `loadtest run --json` as a subprocess pinned to the load core,
//! with the proxy's CPU time read before and after it and its peak RSS after.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CompareError;
use super::procs::{Core, Pinning};
use super::proxies::{INFER_PATH, RunningProxy};

/// The header a canary case varies per request.
pub const USER_HEADER: &str = "x-user-id";

/// What load one run sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub connections: usize,
    pub duration: Duration,
    /// Open loop at this many requests per second; closed loop without.
    pub rate: Option<f64>,
    /// A random `x-user-id` on every request.
    pub random_user: bool,
    /// gRPC `ModelInfer` calls, this many in flight per connection, instead of
    /// HTTP requests.
    pub grpc_streams: Option<usize>,
    /// Streamed chat calls whose answers bring this many events, instead of
    /// plain HTTP requests (latency is then to the first event).
    pub sse_events: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
}

/// The fields of the generator's JSON report that a comparison uses.
#[derive(Debug, Clone, Deserialize)]
pub struct GeneratorReport {
    requests: u64,
    rps: f64,
    latency_ms: Latency,
    errors: BTreeMap<String, u64>,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Only the kinds that happened.
    pub errors: BTreeMap<String, u64>,
    /// Proxy CPU (user + system, whole process tree) per request; none for direct.
    pub cpu_us_per_request: Option<f64>,
    /// Peak RSS of the proxy's process tree so far.
    pub peak_rss_kib: Option<u64>,
    /// Mirrors sent during the run; stagegate with mirroring on only.
    pub mirrored: Option<u64>,
}

impl Sample {
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn new(report: GeneratorReport, cpu_seconds: Option<f64>, rss: Option<u64>) -> Self {
        let requests = report.requests;
        let cpu_us_per_request = cpu_seconds
            .filter(|_| requests > 0)
            .map(|secs| secs * 1e6 / requests as f64);
        Sample {
            rps: report.rps,
            p50_ms: report.latency_ms.p50,
            p99_ms: report.latency_ms.p99,
            requests,
            errors: report.errors.into_iter().filter(|&(_, n)| n > 0).collect(),
            cpu_us_per_request,
            peak_rss_kib: rss,
            mirrored: None,
        }
    }

    /// The share of requests that were mirrored, when that was counted.
    pub fn mirrored_share(&self) -> Option<f64> {
        self.mirrored
            .filter(|_| self.requests > 0)
            .map(|mirrored| mirrored as f64 / self.requests as f64)
    }
}

/// Runs the load generator (this executable) against proxies.
#[derive(Debug, Clone)]
pub struct Generator<'a> {
    pub exe: &'a Path,
    pub pin: &'a Pinning,
    pub ticks_per_second: f64,
}

impl Generator<'_> {
    /// One run against `proxy`, with its CPU, memory and mirrors sent.
    pub fn measure(&self, proxy: &RunningProxy, load: &Load) -> Result<Sample, CompareError> {
        let mirrored_before = proxy.mirrored();
        let before = proxy.cpu_seconds(self.ticks_per_second);
        let report = self.run(proxy.target, load)?;
        let after = proxy.cpu_seconds(self.ticks_per_second);
        let cpu = before.zip(after).map(|(b, a)| (a - b).max(0.0));
        let mut sample = Sample::new(report, cpu, proxy.peak_rss_kib());
        sample.mirrored = mirrored_before
            .zip(proxy.mirrored())
            .map(|(before, after)| after.saturating_sub(before));
        Ok(sample)
    }

    /// One run against `target`; the generator warms up by itself for no time at
    /// all (each case has warmup runs of its own).
    pub fn run(&self, target: SocketAddr, load: &Load) -> Result<GeneratorReport, CompareError> {
        let output = self
            .pin
            .command(Core::Load, self.exe)
            .args(generator_args(target, load))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CompareError::spawn("loadtest run", source))?;
        if !output.status.success() {
            return Err(CompareError::Generator(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        parse_report(&output.stdout)
    }
}

pub fn generator_args(target: SocketAddr, load: &Load) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--url",
        &format!("http://{target}{INFER_PATH}"),
        "--connections",
        &load.connections.to_string(),
        "--duration",
        &format!("{}ms", load.duration.as_millis()),
        "--warmup",
        "0s",
        "--threads",
        "1",
        "--json",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    if let Some(rate) = load.rate {
        args.extend(["--rate".to_string(), format!("{rate:.1}")]);
    }
    if let Some(streams) = load.grpc_streams {
        args.extend(["--grpc-streams".to_string(), streams.to_string()]);
    }
    if let Some(events) = load.sse_events {
        args.extend(["--sse-events".to_string(), events.to_string()]);
    }
    if load.random_user {
        args.extend(["--random-header".to_string(), USER_HEADER.to_string()]);
    }
    args
}

pub fn parse_report(stdout: &[u8]) -> Result<GeneratorReport, CompareError> {
    serde_json::from_slice(stdout).map_err(|source| CompareError::GeneratorOutput {
        output: String::from_utf8_lossy(stdout).chars().take(500).collect(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"requests":20000,"successes":19990,"duration_s":2.0,
        "rps":10000.0,"latency_ms":{"p50":1.5,"p90":2.0,"p99":4.25,"p999":9.0,
        "max":12.0,"mean":1.7},"errors":{"connect":0,"timeout":10,"status_5xx":0},
        "connections":64,"rate":null}"#;

    #[test]
    fn sample_from_a_generator_report() {
        let report = parse_report(REPORT.as_bytes()).unwrap();
        let sample = Sample::new(report, Some(0.5), Some(2048));
        assert_eq!(sample.rps, 10000.0);
        assert_eq!(sample.p50_ms, 1.5);
        assert_eq!(sample.p99_ms, 4.25);
        assert_eq!(sample.requests, 20000);
        assert_eq!(sample.errors, BTreeMap::from([("timeout".to_string(), 10)]));
        assert_eq!(sample.error_total(), 10);
        // 0.5 s of CPU over 20,000 requests.
        assert_eq!(sample.cpu_us_per_request, Some(25.0));
        assert_eq!(sample.peak_rss_kib, Some(2048));
        assert_eq!(sample.mirrored_share(), None);
        let mirrored = Sample {
            mirrored: Some(5000),
            ..sample
        };
        assert_eq!(mirrored.mirrored_share(), Some(0.25));
    }

    #[test]
    fn no_requests_means_no_cpu_per_request() {
        let report = parse_report(REPORT.replace("20000", "0").as_bytes()).unwrap();
        assert_eq!(
            Sample::new(report, Some(1.0), None).cpu_us_per_request,
            None
        );
        assert!(parse_report(b"not json").is_err());
    }

    #[test]
    fn generator_arguments() {
        let target: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let closed = Load {
            connections: 64,
            duration: Duration::from_secs(5),
            rate: None,
            random_user: false,
            grpc_streams: None,
            sse_events: None,
        };
        let args = generator_args(target, &closed).join(" ");
        assert_eq!(
            args,
            "run --url http://127.0.0.1:9000/v2/models/m/infer --connections 64 \
             --duration 5000ms --warmup 0s --threads 1 --json"
        );
        let open = Load {
            rate: Some(12345.0),
            random_user: true,
            ..closed
        };
        let args = generator_args(target, &open).join(" ");
        assert!(args.ends_with("--json --rate 12345.0 --random-header x-user-id"));
    }
}
