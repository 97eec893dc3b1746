//! The fake model servers behind the proxies: `loadtest backend` processes on the
//! load core, each on an ephemeral port read back from its "listening on" line,
//! plus an address nothing listens on.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use super::CompareError;
use super::procs::{Core, Pinning, ProcessGuard, free_addr};

/// Where each kind of backend answers. The guards keep the processes alive.
#[derive(Debug)]
pub struct Backends {
    /// Answers every request with ~200 bytes of JSON at once.
    pub primary: SocketAddr,
    /// The same, as a healthy shadow (or canary) target.
    pub shadow: SocketAddr,
    /// Answers after 50 ms.
    pub slow: SocketAddr,
    /// Reads each request and never answers.
    pub hang: SocketAddr,
    /// Was bound and closed: connections are refused.
    pub refused: SocketAddr,
    /// Answers gRPC `ModelInfer` calls after 5 ms.
    pub grpc: SocketAddr,
    /// Streams chat completions: 64 events, 5 ms apart.
    pub llm: SocketAddr,
    _processes: Vec<ProcessGuard>,
}

impl Backends {
    pub fn start(exe: &Path, pin: &Pinning) -> Result<Self, CompareError> {
        let mut processes = Vec::new();
        let mut start = |name: &str, extra: &[&str]| -> Result<SocketAddr, CompareError> {
            let (guard, addr) = start_backend(exe, pin, name, extra)?;
            processes.push(guard);
            Ok(addr)
        };
        let primary = start("primary backend", &[])?;
        let shadow = start("shadow backend", &[])?;
        let slow = start("slow backend", &["--latency-ms", "50"])?;
        let hang = start("hanging backend", &["--mode", "hang"])?;
        let grpc = start("gRPC backend", &["--grpc", "--latency-ms", "5"])?;
        let events = super::cases::LLM_EVENTS.to_string();
        let llm = start(
            "streaming LLM backend",
            &["--sse-events", &events, "--sse-gap-ms", "5"],
        )?;
        let refused = free_addr()?;
        Ok(Backends {
            primary,
            shadow,
            slow,
            hang,
            refused,
            grpc,
            llm,
            _processes: processes,
        })
    }
}

fn start_backend(
    exe: &Path,
    pin: &Pinning,
    name: &str,
    extra: &[&str],
) -> Result<(ProcessGuard, SocketAddr), CompareError> {
    let mut command = pin.command(Core::Load, exe);
    command
        .args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--response-bytes",
            "200",
        ])
        .args(["--threads", "1"])
        .args(extra);
    spawn_announcing(name, &mut command)
}

/// Starts a server that prints `listening on ADDR` first, and reads that line.
pub fn spawn_announcing(
    name: &str,
    command: &mut std::process::Command,
) -> Result<(ProcessGuard, SocketAddr), CompareError> {
    command.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut guard = ProcessGuard::spawn(name, command)?;
    let stdout = guard
        .child_mut()
        .stdout
        .take()
        .ok_or_else(|| CompareError::Setup(format!("{name}: no stdout pipe")))?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|source| CompareError::io(format!("reading the address of the {name}"), source))?;
    let addr = parse_listening(&line).ok_or_else(|| {
        CompareError::Setup(format!(
            "{name} did not announce its address (got {:?})",
            line.trim()
        ))
    })?;
    Ok((guard, addr))
}

/// The address in a backend's `listening on ADDR` line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("listening on ")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        assert_eq!(
            parse_listening("listening on 127.0.0.1:4321\n"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(parse_listening("listening on nowhere"), None);
        assert_eq!(parse_listening(""), None);
    }
}
