//! Validation of `[server]` and `[admin]`: addresses, threads, limits and timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAdmin, RawServer};
use super::validate::{Errors, positive, usize_or_max};
use super::{
    AdminConfig, CpuShareOfCore, EjectionPolicy, Limits, ServerConfig, ShadowPriority,
    ShadowThreads, defaults,
};

/// hyper refuses header buffers smaller than this.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
const MAX_WORKER_THREADS: u64 = 1024;

pub(super) fn validate_server(raw: &RawServer, errors: &mut Errors) -> ServerConfig {
    let listen = socket_addr(&raw.listen, defaults::LISTEN, "server.listen", errors);
    let admin_listen = socket_addr(
        &raw.admin_listen,
        defaults::ADMIN_LISTEN,
        "server.admin_listen",
        errors,
    );
    if listen == admin_listen && listen.port() != 0 {
        errors.push(
            "server.admin_listen",
            format!("is the same address as server.listen ({listen})"),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let worker_threads = raw.worker_threads.unwrap_or(cores);
    if !(1..=MAX_WORKER_THREADS).contains(&worker_threads) {
        errors.push(
            "server.worker_threads",
            format!("must be between 1 and {MAX_WORKER_THREADS}, got {worker_threads}"),
        );
    }
    let shadow_threads = validate_shadow_threads(raw, worker_threads, errors);
    let max_header_bytes = raw.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES);
    if max_header_bytes < MIN_HEADER_BYTES {
        errors.push(
            "server.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES}, got {max_header_bytes}"),
        );
    }
    let mut millis = |value: Option<u64>, default: u64, path: &str| {
        positive(value, default, path, errors).map_or(Duration::ZERO, Duration::from_millis)
    };
    let header_read_timeout = millis(
        raw.header_read_timeout_ms,
        defaults::HEADER_READ_TIMEOUT_MS,
        "server.header_read_timeout_ms",
    );
    let connect_timeout = millis(
        raw.connect_timeout_ms,
        defaults::CONNECT_TIMEOUT_MS,
        "server.connect_timeout_ms",
    );
    let request_timeout = millis(
        raw.request_timeout_ms,
        defaults::REQUEST_TIMEOUT_MS,
        "server.request_timeout_ms",
    );
    let llm_first_byte_timeout = millis(
        raw.llm_first_byte_timeout_ms,
        defaults::LLM_FIRST_BYTE_TIMEOUT_MS,
        "server.llm_first_byte_timeout_ms",
    );
    let llm_idle_timeout = millis(
        raw.llm_idle_timeout_ms,
        defaults::LLM_IDLE_TIMEOUT_MS,
        "server.llm_idle_timeout_ms",
    );
    let drain_timeout = millis(
        raw.drain_timeout_ms,
        defaults::DRAIN_TIMEOUT_MS,
        "server.drain_timeout_ms",
    );
    let max_body_bytes = positive(
        raw.max_body_bytes,
        defaults::MAX_BODY_BYTES,
        "server.max_body_bytes",
        errors,
    );
    let max_buffered_body_bytes = positive(
        raw.max_buffered_body_bytes,
        defaults::MAX_BUFFERED_BODY_BYTES,
        "server.max_buffered_body_bytes",
        errors,
    );
    let max_concurrent_requests = positive(
        raw.max_concurrent_requests,
        defaults::MAX_CONCURRENT_REQUESTS,
        "server.max_concurrent_requests",
        errors,
    );
    let eject_after = positive(
        raw.eject_after_failures,
        defaults::EJECT_AFTER_FAILURES,
        "server.eject_after_failures",
        errors,
    );
    let eject_backoff = positive(
        raw.eject_backoff_ms,
        defaults::EJECT_BACKOFF_MS,
        "server.eject_backoff_ms",
        errors,
    )
    .map_or(Duration::ZERO, Duration::from_millis);
    ServerConfig {
        listen,
        admin_listen,
        worker_threads: worker_threads as usize,
        shadow_threads,
        state_dir: PathBuf::from(raw.state_dir.as_deref().unwrap_or(defaults::STATE_DIR)),
        limits: Limits {
            header_read_timeout,
            connect_timeout,
            request_timeout,
            llm_first_byte_timeout,
            llm_idle_timeout,
            drain_timeout,
            max_body_bytes: usize_or_max(max_body_bytes),
            max_buffered_body_bytes: usize_or_max(max_buffered_body_bytes),
            max_header_bytes: usize_or_max(Some(max_header_bytes)),
            max_concurrent_requests: usize_or_max(max_concurrent_requests),
            ejection: EjectionPolicy {
                failures: eject_after.map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                base: eject_backoff,
                max: eject_backoff.saturating_mul(30),
            },
        },
    }
}

pub(super) fn validate_admin(raw: &RawAdmin, errors: &mut Errors) -> AdminConfig {
    if raw.token_file.as_deref() == Some("") {
        errors.push(
            "admin.token_file",
            "must not be empty (leave it out for no token)",
        );
    }
    AdminConfig {
        token_file: raw
            .token_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from),
    }
}

fn socket_addr(
    value: &Option<String>,
    default: &str,
    path: &str,
    errors: &mut Errors,
) -> SocketAddr {
    let text = value.as_deref().unwrap_or(default);
    text.parse().unwrap_or_else(|_| {
        errors.push(
            path,
            format!("not a socket address: {text:?} (expected e.g. \"127.0.0.1:8080\")"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// `shadow_worker_threads` (as many as `worker_threads` by default),
/// `shadow_priority` and `shadow_cpu_share`.
fn validate_shadow_threads(raw: &RawServer, workers: u64, errors: &mut Errors) -> ShadowThreads {
    // An invalid `worker_threads` is reported once, under its own name.
    let count = raw
        .shadow_worker_threads
        .unwrap_or(workers.clamp(1, MAX_WORKER_THREADS));
    if !(1..=MAX_WORKER_THREADS).contains(&count) {
        errors.push(
            "server.shadow_worker_threads",
            format!("must be between 1 and {MAX_WORKER_THREADS}, got {count}"),
        );
    }
    let priority = match raw.shadow_priority.as_deref() {
        None | Some("normal") => ShadowPriority::Normal,
        Some("idle") => ShadowPriority::Idle,
        Some(other) => {
            errors.push(
                "server.shadow_priority",
                format!("unknown priority {other:?} (expected normal or idle)"),
            );
            ShadowPriority::Normal
        }
    };
    let count = count.clamp(1, MAX_WORKER_THREADS) as usize;
    // The mirror threads and the comparison thread.
    let cores = count + 1;
    let cpu_share = match raw.shadow_cpu_share {
        None => CpuShareOfCore::DEFAULT,
        Some(share) => CpuShareOfCore::new(share, cores).unwrap_or_else(|| {
            errors.push(
                "server.shadow_cpu_share",
                format!("must be a share of one core greater than 0 and at most {cores} (the shadow threads and the comparison thread), got {share}"),
            );
            CpuShareOfCore::DEFAULT
        }),
    };
    ShadowThreads {
        count,
        priority,
        cpu_share,
    }
}
