//! The head scanner on hand-made byte streams, split every way reads can split them.

use std::sync::Arc;

use super::{ConflictingRequest, HeadScanner};

const MAX_HEAD: usize = 1024;

const GET: &str = "GET /v2/models/fraud/ready HTTP/1.1\r\nhost: gw\r\n\r\n";
const POST_LENGTH: &str = "POST /infer HTTP/1.1\r\nHost: gw\r\nContent-Length: 39\r\n\r\n\
                           POST / HTTP/1.1\r\ncontent-length: 1\r\n\r\nx";
const POST_CHUNKED: &str = "POST /infer HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip, Chunked\r\n\r\n\
                            4;name=\"v\"\r\n{}{}\r\n1A \r\nGET / HTTP/1.1\r\nx: y\r\n\r\n\r\n\r\n\
                            0;last\r\nx-checksum: 7\r\n\r\n";
const CONFLICT: &str = "POST /infer HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n\
                        transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";

/// The index of the conflicting request `stream` has, read in pieces that end
/// at `cuts`.
fn conflict_in(stream: &[u8], cuts: &[usize]) -> Option<u64> {
    let conflict = Arc::new(ConflictingRequest::default());
    let mut scanner = HeadScanner::new(MAX_HEAD, Arc::clone(&conflict));
    let mut start = 0;
    for &cut in cuts.iter().chain([stream.len()].iter()) {
        scanner.observe(&stream[start..cut]);
        start = cut;
    }
    (0..64).find(|&index| conflict.is(index))
}

/// The conflict found when `stream` is read whole, byte by byte, in two pieces
/// cut at every offset, and in pieces of every size; all must agree.
fn conflict_read_every_way(stream: &str) -> Option<u64> {
    let stream = stream.as_bytes();
    let whole = conflict_in(stream, &[]);
    for cut in 0..=stream.len() {
        assert_eq!(conflict_in(stream, &[cut]), whole, "cut at {cut}");
    }
    for size in 1..=stream.len() {
        let cuts: Vec<usize> = (size..stream.len()).step_by(size).collect();
        assert_eq!(conflict_in(stream, &cuts), whole, "pieces of {size}");
    }
    whole
}

#[test]
fn both_framings_in_either_order_and_any_case_are_found() {
    let heads = [
        "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nTRANSFER-ENCODING: CHUNKED\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-length: banana\r\nTransfer-Encoding: gzip\r\n\r\n",
    ];
    for head in heads {
        assert_eq!(conflict_read_every_way(head), Some(0), "{head:?}");
    }
}

#[test]
fn requests_are_counted_through_length_and_chunked_bodies() {
    let stream = format!("{GET}{POST_LENGTH}{POST_CHUNKED}{GET}{CONFLICT}{GET}");
    assert_eq!(conflict_read_every_way(&stream), Some(4));
}

#[test]
fn well_framed_requests_have_no_conflict() {
    let stream = format!("{GET}{POST_LENGTH}{POST_CHUNKED}{GET}");
    assert_eq!(conflict_read_every_way(&stream), None);
}

#[test]
fn a_conflict_hidden_in_a_body_is_only_body() {
    let body = CONFLICT.len();
    let stream = format!("POST / HTTP/1.1\r\ncontent-length: {body}\r\n\r\n{CONFLICT}{GET}");
    assert_eq!(conflict_read_every_way(&stream), None);
}

#[test]
fn empty_lines_between_requests_are_skipped_like_hyper_does() {
    let stream = format!("{POST_LENGTH}\r\n\r\n{GET}\r\n{CONFLICT}");
    assert_eq!(conflict_read_every_way(&stream), Some(2));
}

#[test]
fn an_http2_connection_is_not_scanned() {
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(
        conflict_read_every_way(&format!("{preface}{CONFLICT}")),
        None
    );
}

#[test]
fn scanning_stops_where_hyper_refuses_the_connection() {
    let refused = [
        // Content-Length lines that disagree, or are no number.
        "POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        "POST / HTTP/1.1\r\ncontent-length: +2\r\n\r\n{}",
        // Transfer-Encoding that does not end in chunked, or on HTTP/1.0.
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        // A broken chunked body, and a head httparse refuses.
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "POST / HTTP/1.1\r\nx-folded: a\r\n  b\r\n\r\n",
    ];
    for opening in refused {
        let stream = format!("{opening}{CONFLICT}");
        assert_eq!(conflict_read_every_way(&stream), None, "{opening:?}");
    }
}

#[test]
fn a_head_over_the_limit_stops_the_scan() {
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(
        conflict_in(format!("{big}{CONFLICT}").as_bytes(), &[]),
        None
    );
    assert_eq!(
        conflict_in(format!("{big}{CONFLICT}").as_bytes(), &[10]),
        None
    );
    // Just under the limit, split or not, it is still followed.
    let fits = format!(
        "GET / HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD - 40)
    );
    let stream = format!("{fits}{CONFLICT}");
    assert_eq!(conflict_in(stream.as_bytes(), &[]), Some(1));
    assert_eq!(conflict_in(stream.as_bytes(), &[10, 500]), Some(1));
}

#[test]
fn too_many_header_fields_stop_the_scan() {
    let fields: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    let stream = format!("GET / HTTP/1.1\r\n{fields}\r\n{CONFLICT}");
    assert_eq!(conflict_in(stream.as_bytes(), &[]), None);
}

#[test]
fn a_long_head_held_between_reads_is_freed_after_it_completes() {
    let conflict = Arc::new(ConflictingRequest::default());
    let mut scanner = HeadScanner::new(64 * 1024, conflict);
    let head = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    let (first, rest) = head.as_bytes().split_at(100);
    scanner.observe(first);
    scanner.observe(rest);
    assert_eq!(scanner.partial.capacity(), 0);
    assert_eq!(scanner.heads, 1);
}

#[test]
fn no_request_index_matches_before_a_conflict() {
    let conflict = ConflictingRequest::default();
    assert!(!(0..10).any(|index| conflict.is(index)));
    assert!(!conflict.is(u64::MAX));
}
