//! [`HeadScanner`]: finds HTTP/1 requests that carry both `Transfer-Encoding`
//! and `Content-Length`, in the bytes hyper reads.
//!
//! hyper 1 reads such a request as chunked, drops its Content-Length and closes
//! the connection after it (RFC 9112 §6.3), so a handler cannot tell it from a
//! plain chunked request. Front ends that disagree on which framing wins are
//! how request smuggling works, so the gateway refuses it, as nginx and Envoy
//! do. The scanner parses every request head with hyper's own parser and
//! configuration (httparse), skips each body by the same framing rules, and
//! records in [`ConflictingRequest`] which request of the connection has both
//! headers; the connection's service refuses that request before routing it.
//!
//! Scanning stops where hyper stops reading requests: at a head or body hyper
//! refuses (the HTTP/2 preface among them, which is no HTTP/1 head), at a head
//! that outgrows hyper's read buffer, and after the conflicting head, as hyper
//! closes the connection after that request.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::chunked::ChunkedBody;

/// hyper's default limit on header fields; a head with more is refused by both.
const MAX_HEADERS: usize = 100;
/// A partial-head buffer larger than this is freed, not kept for the next head.
const KEPT_CAPACITY: usize = 4 * 1024;
const NO_REQUEST: u64 = u64::MAX;

/// Which request of a connection (counted from 0) has both framings; written by
/// the connection's IO, read by its service.
#[derive(Debug)]
pub struct ConflictingRequest(AtomicU64);

impl Default for ConflictingRequest {
    fn default() -> ConflictingRequest {
        ConflictingRequest(AtomicU64::new(NO_REQUEST))
    }
}

impl ConflictingRequest {
    fn record(&self, index: u64) {
        self.0.store(index, Ordering::Release);
    }

    /// The request with both framings, if one was found.
    pub fn index(&self) -> Option<u64> {
        let index = self.0.load(Ordering::Acquire);
        (index != NO_REQUEST).then_some(index)
    }

    /// Whether request `index` carries both `Transfer-Encoding` and `Content-Length`.
    pub fn is(&self, index: u64) -> bool {
        index != NO_REQUEST && self.0.load(Ordering::Acquire) == index
    }
}

/// How a request head says its body is framed, by hyper's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Both Transfer-Encoding and Content-Length.
    Conflicting,
    /// Framing hyper refuses with a 400 before closing the connection.
    Refused,
}

/// What parsing the start of the buffered bytes found.
enum Parsed {
    /// A head of this many bytes.
    Complete(usize, Framing),
    Partial,
    /// Not an HTTP/1 request head.
    Refused,
}

enum State {
    Head,
    Length(u64),
    Chunked(ChunkedBody),
    Stopped,
}

/// Follows the requests of one connection through the bytes read from it.
pub struct HeadScanner {
    state: State,
    /// The start of a head that did not arrive in one read.
    partial: Vec<u8>,
    /// Complete heads so far, which is the index of the next request.
    heads: u64,
    /// hyper's read buffer limit: hyper refuses a head not complete within it.
    max_head_bytes: usize,
    conflict: Arc<ConflictingRequest>,
}

impl HeadScanner {
    pub fn new(max_head_bytes: usize, conflict: Arc<ConflictingRequest>) -> HeadScanner {
        HeadScanner {
            state: State::Head,
            partial: Vec::new(),
            heads: 0,
            max_head_bytes,
            conflict,
        }
    }

    /// Whether a request head has been read whole, or scanning stopped (where
    /// hyper refuses the connection's bytes, so it will not wait for a head).
    pub fn head_read_or_stopped(&self) -> bool {
        self.heads > 0 || matches!(self.state, State::Stopped)
    }

    /// Follows the requests on through newly read bytes.
    pub fn observe(&mut self, mut fresh: &[u8]) {
        while !fresh.is_empty() {
            fresh = match &mut self.state {
                State::Stopped => return,
                State::Head => self.read_head(fresh),
                State::Length(left) => {
                    let skipped =
                        usize::try_from(*left).map_or(fresh.len(), |l| l.min(fresh.len()));
                    *left -= skipped as u64;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                    &fresh[skipped..]
                }
                State::Chunked(body) => match body.advance(fresh) {
                    Ok(Some(end)) => {
                        self.state = State::Head;
                        &fresh[end..]
                    }
                    Ok(None) => return,
                    Err(_) => {
                        self.stop();
                        return;
                    }
                },
            };
        }
    }

    /// Reads a head from `fresh` (after what earlier reads left of it); returns
    /// the bytes after the head, or none when it needs more.
    fn read_head<'a>(&mut self, fresh: &'a [u8]) -> &'a [u8] {
        if self.partial.is_empty() {
            // The common case: the whole head in one read, parsed where it lies.
            return match parse_head(fresh) {
                // More than hyper's buffer holds: hyper refuses it.
                Parsed::Complete(len, _) if len > self.max_head_bytes => {
                    self.stop();
                    &[]
                }
                Parsed::Complete(len, framing) => {
                    self.start_body(framing);
                    &fresh[len..]
                }
                Parsed::Partial => {
                    self.hold(fresh);
                    &[]
                }
                Parsed::Refused => {
                    self.stop();
                    &[]
                }
            };
        }
        let held = self.partial.len();
        let taken = fresh.len().min(self.max_head_bytes.saturating_sub(held));
        self.partial.extend_from_slice(&fresh[..taken]);
        let parsed = if may_end_head(&self.partial, held) {
            parse_head(&self.partial)
        } else {
            Parsed::Partial
        };
        match parsed {
            Parsed::Complete(len, framing) => {
                self.release_partial();
                self.start_body(framing);
                // The head ends in `fresh`: an earlier read would have completed it.
                match len.checked_sub(held) {
                    Some(used) => &fresh[used..],
                    None => {
                        self.stop();
                        &[]
                    }
                }
            }
            Parsed::Partial if self.partial.len() < self.max_head_bytes => &[],
            Parsed::Partial | Parsed::Refused => {
                self.stop();
                &[]
            }
        }
    }

    /// Keeps the start of a head for the next read, unless hyper would refuse it.
    fn hold(&mut self, start: &[u8]) {
        if start.len() >= self.max_head_bytes {
            self.stop();
        } else {
            self.partial.extend_from_slice(start);
        }
    }

    fn start_body(&mut self, framing: Framing) {
        let index = self.heads;
        self.heads += 1;
        self.state = match framing {
            Framing::Length(0) => State::Head,
            Framing::Length(len) => State::Length(len),
            Framing::Chunked => State::Chunked(ChunkedBody::default()),
            Framing::Conflicting => {
                self.conflict.record(index);
                State::Stopped
            }
            Framing::Refused => State::Stopped,
        };
        if matches!(self.state, State::Stopped) {
            self.stop();
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.partial = Vec::new();
    }

    fn release_partial(&mut self) {
        if self.partial.capacity() > KEPT_CAPACITY {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
        }
    }
}

/// Whether bytes from `from` on may hold the empty line that ends a head
/// (`\n\n` or `\n\r\n`), which is the only way it can have become complete.
fn may_end_head(head: &[u8], from: usize) -> bool {
    let tail = &head[from.saturating_sub(2)..];
    tail.windows(2).any(|pair| pair == b"\n\n") || tail.windows(3).any(|three| three == b"\n\r\n")
}

fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(len)) => Parsed::Complete(len, framing(&request)),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Refused,
    }
}

/// A request's Content-Length lines, taken together as hyper does.
#[derive(Clone, Copy)]
enum ContentLength {
    Agreed(u64),
    /// Not a number, or lines that disagree.
    Broken,
}

/// The body's framing, as hyper 1's server decides it (`proto/h1/role.rs`).
fn framing(request: &httparse::Request<'_, '_>) -> Framing {
    let mut chunked = None;
    let mut length = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last line decides, as in hyper.
            chunked = Some(ends_in_chunked(header.value));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            length = Some(match (length, decimal(header.value)) {
                (None, Some(len)) => ContentLength::Agreed(len),
                (Some(ContentLength::Agreed(seen)), Some(len)) if seen == len => {
                    ContentLength::Agreed(len)
                }
                _ => ContentLength::Broken,
            });
        }
    }
    let http_11 = request.version == Some(1);
    match (chunked, length) {
        (Some(_), Some(_)) => Framing::Conflicting,
        (Some(true), None) if http_11 => Framing::Chunked,
        (Some(_), None) | (None, Some(ContentLength::Broken)) => Framing::Refused,
        (None, Some(ContentLength::Agreed(len))) => Framing::Length(len),
        (None, None) => Framing::Length(0),
    }
}

/// hyper's test: visible ASCII whose last comma-separated coding is `chunked`.
fn ends_in_chunked(value: &[u8]) -> bool {
    let visible = value
        .iter()
        .all(|&byte| byte == b'\t' || (b' '..0x7f).contains(&byte));
    let last = value.rsplit(|&byte| byte == b',').next().unwrap_or(value);
    visible && last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// A Content-Length value: decimal digits only (no sign), as hyper parses it.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |total, &byte| {
        let digit = char::from(byte).to_digit(10)?;
        total.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
