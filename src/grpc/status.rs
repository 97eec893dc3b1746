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

    /// The code of a `grpc-status` value; values past the specification's are
    /// `Unknown`, as gRPC reads them.
    pub fn from_u8(value: u8) -> Code {
        const CODES: [Code; 17] = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        CODES
            .get(usize::from(value))
            .copied()
            .unwrap_or(Code::Unknown)
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

/// The `grpc-status` in `headers` (trailers, or the head of a trailers-only
/// answer), if there is one; one that is not a status is `Unknown`.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?;
    // A status that is not a number is UNKNOWN, as gRPC reads it.
    let code = value.to_str().ok().and_then(|v| v.parse::<u8>().ok());
    Some(code.map_or(Code::Unknown, Code::from_u8))
}

/// The HTTP status a gRPC outcome counts as in the metrics and the rollout
/// gates (gRPC answers are always HTTP 200), as gRPC's HTTP mapping has it.
pub fn http_equivalent(code: Code, http: StatusCode) -> StatusCode {
    match code {
        Code::Ok => http,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
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
    fn codes_read_back_and_map_to_http_as_grpc_says() {
        for value in 0..=16 {
            assert_eq!(Code::from_u8(value).as_u8(), value);
        }
        assert_eq!(Code::from_u8(99), Code::Unknown);
        assert_eq!(
            http_equivalent(Code::Unavailable, StatusCode::OK),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_equivalent(Code::Ok, StatusCode::OK), StatusCode::OK);
        let mut trailers = HeaderMap::new();
        put_status(&mut trailers, Code::NotFound, "gone");
        assert_eq!(grpc_status(&trailers), Some(Code::NotFound));
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&trailers), Some(Code::Unknown));
        assert_eq!(grpc_status(&HeaderMap::new()), None);
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
