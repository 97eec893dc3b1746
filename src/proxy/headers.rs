//! Header hygiene between client, gateway and model server.
//!
//! Hop-by-hop headers describe one connection and must not cross the proxy, in
//! either direction (RFC 9110 §7.6.1); that includes every header a `Connection`
//! header nominates, which is how a client could otherwise smuggle a header past
//! us (`Connection: x-secret`).

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Client-supplied claims about the original request that we do not maintain:
/// dropped rather than passed on as if we vouched for them.
const UNVOUCHED: [HeaderName; 2] = [header::FORWARDED, HeaderName::from_static("x-real-ip")];
/// Request headers that stop at the gateway besides the hop-by-hop ones: its own
/// pin headers, `Expect` (answered here), the client's forwarding claims.
/// (`x-stagegate-*` are `routing::PIN_STAGE` and `PIN_VERSION`, which are statics;
/// a test checks they stay the same names.)
const ENDS_HERE: [HeaderName; 4] = [
    HeaderName::from_static("x-stagegate-stage"),
    HeaderName::from_static("x-stagegate-version"),
    header::EXPECT,
    X_FORWARDED_HOST,
];

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the few names present is
    // cheaper than hashing nine names to find nothing.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in nominated {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares the request headers the model server will see: hygiene, the gateway's
/// own pin headers removed, `Host` set to the endpoint, `x-forwarded-host` set to
/// the host the client asked for (its `Host`, or the HTTP/2 `:authority`; never a
/// client-sent `x-forwarded-host`), `x-forwarded-proto`, and the socket peer
/// appended to `x-forwarded-for`.
///
/// `Expect: 100-continue` is answered by the gateway itself (hyper sends the 100
/// when the body is read), and the body is complete before it is forwarded, so the
/// model server must not be asked to wait for it.
pub fn prepare_upstream_request(
    headers: &mut HeaderMap,
    host: &HeaderValue,
    peer: &HeaderValue,
    authority: Option<&Authority>,
) {
    strip_hop_by_hop(headers);
    let ends_here = |name: &HeaderName| ENDS_HERE.contains(name) || UNVOUCHED.contains(name);
    if headers.keys().any(ends_here) {
        for name in ENDS_HERE.iter().chain(&UNVOUCHED) {
            headers.remove(name);
        }
    }
    let client_host = headers
        .insert(header::HOST, host.clone())
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    if let Some(client_host) = client_host {
        headers.insert(X_FORWARDED_HOST, client_host);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    append_forwarded_for(headers, peer);
}

/// Appends the real peer to `x-forwarded-for`. The client's own entries stay (they
/// may come from a trusted proxy in front of us) but the last entry is always the
/// address we saw, so it cannot be forged.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    // One entry lookup: each lookup by a name that is not a standard one hashes it.
    let mut client_list = match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(vacant) => {
            vacant.insert(peer.clone());
            return;
        }
        Entry::Occupied(occupied) => occupied,
    };
    let mut joined = Vec::with_capacity(64);
    for value in client_list.iter() {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    // A client value that cannot be joined is dropped rather than trusted.
    let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone());
    client_list.insert(value);
}

/// The `x-forwarded-for` entry of a peer address.
pub fn peer_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string())
        .unwrap_or_else(|_| unreachable!("an IP address is a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{PIN_STAGE, PIN_VERSION};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn strips_standard_and_nominated_hop_by_hop_headers() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("connection", "X-Other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn the_gateways_own_pin_headers_end_here() {
        assert!(ENDS_HERE.contains(&PIN_STAGE) && ENDS_HERE.contains(&PIN_VERSION));
    }

    #[test]
    fn forwarded_for_appends_the_peer_last() {
        let peer = peer_header("10.1.2.3".parse().unwrap());
        let mut fresh = HeaderMap::new();
        append_forwarded_for(&mut fresh, &peer);
        assert_eq!(fresh[&X_FORWARDED_FOR], "10.1.2.3");

        let mut forged = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        append_forwarded_for(&mut forged, &peer);
        assert_eq!(forged[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(forged.get_all(&X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn upstream_request_gets_endpoint_host_and_loses_pins() {
        let mut map = headers(&[
            ("host", "gateway.example"),
            ("x-stagegate-version", "3"),
            ("x-stagegate-stage", "staging"),
        ]);
        let host = HeaderValue::from_static("10.0.0.7:9001");
        prepare_upstream_request(&mut map, &host, &peer_header("::1".parse().unwrap()), None);
        assert_eq!(map[header::HOST], "10.0.0.7:9001");
        assert_eq!(map[&X_FORWARDED_HOST], "gateway.example");
        assert_eq!(map[&X_FORWARDED_FOR], "::1");
        assert!(!map.contains_key(&PIN_STAGE) && !map.contains_key(&PIN_VERSION));
        assert!(!map.contains_key(header::EXPECT));
        assert!(!map.contains_key(header::FORWARDED) && !map.contains_key("x-real-ip"));
        assert_eq!(map[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn http2_authority_becomes_the_forwarded_host() {
        let mut map = headers(&[("x-forwarded-host", "evil.example")]);
        let authority: Authority = "gateway.example:8080".parse().unwrap();
        let host = HeaderValue::from_static("10.0.0.7:9001");
        prepare_upstream_request(
            &mut map,
            &host,
            &peer_header("::1".parse().unwrap()),
            Some(&authority),
        );
        assert_eq!(map[&X_FORWARDED_HOST], "gateway.example:8080");
        assert_eq!(map.get_all(&X_FORWARDED_HOST).iter().count(), 1);
    }
}
