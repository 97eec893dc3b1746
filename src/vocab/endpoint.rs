//! [`EndpointUrl`]: the validated base URL of one model server.

use std::fmt;

use http::uri::{Authority, Scheme, Uri};

/// The base URL of a model server, e.g. `http://10.0.0.7:8080` or
/// `http://host:8080/serving` (a path prefix put in front of every forwarded path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl {
    authority: Authority,
    path_prefix: String,
}

/// Why a string is not a usable endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointUrlError {
    #[error("not an http URL: {0:?} (expected e.g. http://127.0.0.1:9001)")]
    NotHttp(String),
    #[error(
        "https endpoints are not supported yet: {0:?} (use http, or put a TLS sidecar beside the model server)"
    )]
    Https(String),
    #[error("endpoint URL must not carry credentials: {0:?}")]
    Credentials(String),
    #[error("endpoint URL must not have a query or fragment: {0:?}")]
    Query(String),
}

impl EndpointUrl {
    pub fn parse(text: &str) -> Result<EndpointUrl, EndpointUrlError> {
        let not_http = || EndpointUrlError::NotHttp(text.to_string());
        if text.contains('#') {
            return Err(EndpointUrlError::Query(text.to_string()));
        }
        let uri: Uri = text.parse().map_err(|_| not_http())?;
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => {}
            Some(scheme) if *scheme == Scheme::HTTPS => {
                return Err(EndpointUrlError::Https(text.to_string()));
            }
            _ => return Err(not_http()),
        }
        let authority = uri.authority().ok_or_else(not_http)?.clone();
        if authority.as_str().contains('@') {
            return Err(EndpointUrlError::Credentials(text.to_string()));
        }
        if authority.host().is_empty() {
            return Err(not_http());
        }
        if uri.query().is_some() {
            return Err(EndpointUrlError::Query(text.to_string()));
        }
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(EndpointUrl {
            authority,
            path_prefix,
        })
    }

    /// `host:port` as it goes into the upstream request's URI and `Host` header.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The path put in front of every forwarded path; empty or `/something`.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_with_and_without_prefix() {
        let plain = EndpointUrl::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!(plain.authority().as_str(), "127.0.0.1:9001");
        assert_eq!(plain.path_prefix(), "");
        let prefixed = EndpointUrl::parse("http://model:8080/serving/").unwrap();
        assert_eq!(prefixed.path_prefix(), "/serving");
        assert_eq!(prefixed.to_string(), "http://model:8080/serving");
    }

    #[test]
    fn rejects_what_cannot_be_forwarded_to() {
        let cases = [
            ("127.0.0.1:9001", "not an http URL"),
            ("ftp://host", "not an http URL"),
            ("http://", "not an http URL"),
            ("not a url", "not an http URL"),
            ("https://host", "https endpoints"),
            ("http://u:p@host", "credentials"),
            ("http://host/?a=1", "query"),
            ("http://host/#x", "query"),
        ];
        for (text, expected) in cases {
            let error = EndpointUrl::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
