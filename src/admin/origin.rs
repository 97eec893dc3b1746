//! Browsers are admin clients (the status page), so the admin API refuses what a
//! page from elsewhere could make a browser send: a call whose `Origin` is not
//! this listener (cross-site requests need no preflight for a plain POST), and,
//! when no token is configured, a call addressed to a name other than loopback
//! (a DNS-rebinding page would reach a loopback listener through its own name,
//! and with no token it would need nothing else).

use http::HeaderMap;
use http::header::{HOST, ORIGIN};

/// Why a call was refused, for its 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    CrossOrigin,
    NotLoopbackHost,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::CrossOrigin => {
                "a page from another origin may not call the admin API (its Origin is not this listener)"
            }
            Refused::NotLoopbackHost => {
                "with no admin token configured, the admin API answers only calls addressed to \
                 127.0.0.1, [::1] or localhost; configure a token to use another name"
            }
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refused::CrossOrigin => "cross_origin",
            Refused::NotLoopbackHost => "not_loopback_host",
        }
    }
}

/// Checks a call's `Origin` against its `Host`; `tokenless` is true when the
/// admin API needs no token. Calls without these headers (curl, `stagegate ctl`)
/// pass.
pub fn check(headers: &HeaderMap, tokenless: bool) -> Result<(), Refused> {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
        if !same {
            return Err(Refused::CrossOrigin);
        }
    }
    match host {
        Some(host) if tokenless && !is_loopback_name(host) => Err(Refused::NotLoopbackHost),
        _ => Ok(()),
    }
}

fn is_loopback_name(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:8081`, `127.0.0.1:8081`; a bare IPv6 literal has no port here.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(host: Option<&'static str>, origin: Option<&'static str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(host) = host {
            map.insert(HOST, HeaderValue::from_static(host));
        }
        if let Some(origin) = origin {
            map.insert(ORIGIN, HeaderValue::from_static(origin));
        }
        map
    }

    #[test]
    fn a_page_may_call_its_own_listener_only() {
        let own = headers(Some("127.0.0.1:8081"), Some("http://127.0.0.1:8081"));
        assert_eq!(check(&own, true), Ok(()));
        let other = headers(Some("127.0.0.1:8081"), Some("https://evil.example"));
        assert_eq!(check(&other, false), Err(Refused::CrossOrigin));
        let sandboxed = headers(Some("127.0.0.1:8081"), Some("null"));
        assert_eq!(check(&sandboxed, false), Err(Refused::CrossOrigin));
        assert_eq!(check(&headers(Some("127.0.0.1:8081"), None), true), Ok(()));
        assert_eq!(check(&headers(None, None), true), Ok(()));
    }

    #[test]
    fn without_tokens_only_loopback_names_are_answered() {
        for host in [
            "127.0.0.1:8081",
            "[::1]:8081",
            "localhost:8081",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert_eq!(check(&headers(Some(host), None), true), Ok(()), "{host}");
        }
        // A rebinding page: its own name resolves to 127.0.0.1, and its Origin matches.
        let rebound = headers(Some("evil.example:8081"), Some("http://evil.example:8081"));
        assert_eq!(check(&rebound, true), Err(Refused::NotLoopbackHost));
        assert_eq!(
            check(&rebound, false),
            Ok(()),
            "a token is still needed then"
        );
        let gateway_name = headers(Some("gateway.internal:8081"), None);
        assert_eq!(check(&gateway_name, true), Err(Refused::NotLoopbackHost));
    }
}
