//! gRPC status codes and how a status travels: `grpc-status` and a
//! percent-encoded `grpc-message`, in the trailers of an answer, or in the
//! headers of a trailers-only answer (an error the gateway gives without asking
//! a model server).

use http::{HeaderMap, HeaderValue, Response, StatusCode};

pub const CONTENT_TYPE: &str = "application/grpc";
pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";

/// The status codes of gRPC's specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A trailers-only answer: HTTP 200 with the status in its headers and no
/// body, as gRPC answers a call it refuses before any message.
pub fn trailers_only<B>(code: Code, message: &str, body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    put_status(headers, code, message);
    response
}

/// Sets `grpc-status` and `grpc-message` in `headers` (or trailers).
pub fn put_status(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code.as_u8())));
    if !message.is_empty()
        && let Ok(value) = HeaderValue::from_str(&percent_encode(message))
    {
        headers.insert(GRPC_MESSAGE, value);
    }
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays,
/// everything else is `%XX` of its UTF-8 bytes.
pub fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded_as_the_specification_says() {
        assert_eq!(
            percent_encode("model \"x\" not found"),
            "model \"x\" not found"
        );
        assert_eq!(percent_encode("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn a_trailers_only_answer_carries_its_status_in_the_headers() {
        let response = trailers_only(Code::NotFound, "no model \"x\"", ());
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], CONTENT_TYPE);
        assert_eq!(headers[GRPC_STATUS], "5");
        assert_eq!(headers[GRPC_MESSAGE], "no model \"x\"");
    }
}
