//! Spreading a version's requests over its endpoints: power of two choices on
//! outstanding requests.
//!
//! Each [`Endpoint`] counts the requests it is serving. A pick draws two distinct
//! endpoints at random and takes the one with fewer in flight, which keeps a slow
//! server from piling up work without the cost of scanning every endpoint.
//! Endpoints ejected by passive health ([`super::health`]) are skipped; when all
//! are, there is no pick and the request fails fast.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;
use http::uri::Authority;

use super::health::Health;
use super::multiplexed::Multiplexed;
use super::pool::EndpointPools;
use crate::vocab::EndpointUrl;

/// One model server. Shared across routing tables, so its counters survive swaps.
#[derive(Debug)]
pub struct Endpoint {
    url: EndpointUrl,
    host: HeaderValue,
    outstanding: AtomicUsize,
    pub health: Health,
    /// Idle keep-alive connections to this server.
    pub pools: EndpointPools,
    /// The HTTP/2 connection gRPC calls share (gRPC endpoints only).
    pub h2: Multiplexed,
}

impl Endpoint {
    pub fn new(url: EndpointUrl) -> Endpoint {
        let host = HeaderValue::from_str(url.authority().as_str())
            .unwrap_or_else(|_| unreachable!("an Authority is a valid header value"));
        Endpoint {
            url,
            host,
            outstanding: AtomicUsize::new(0),
            health: Health::default(),
            pools: EndpointPools::default(),
            h2: Multiplexed::default(),
        }
    }

    pub fn url(&self) -> &EndpointUrl {
        &self.url
    }

    pub fn authority(&self) -> &Authority {
        self.url.authority()
    }

    /// The `Host` header the model server receives.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }

    /// Requests this endpoint is serving now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a request against this endpoint until the guard drops.
    pub fn begin(self: &Arc<Self>) -> EndpointGuard {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        EndpointGuard(Arc::clone(self))
    }
}

/// Holds one outstanding request on an endpoint.
#[derive(Debug)]
pub struct EndpointGuard(Arc<Endpoint>);

impl EndpointGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks the endpoint for the next request, or `None` when every one is ejected.
pub fn pick(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    if endpoints.iter().any(|e| e.health.is_ejected()) {
        return pick_healthy(endpoints);
    }
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => {
            let a = rand::random_range(0..n);
            // A second index distinct from the first, uniformly.
            let b = (a + 1 + rand::random_range(0..n - 1)) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            Some(if eb.outstanding() < ea.outstanding() {
                eb
            } else {
                ea
            })
        }
    }
}

/// The slow path while some endpoint is ejected: the least busy of those that
/// admit a request (an endpoint past its back-off admits exactly one probe).
fn pick_healthy(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    let start = rand::random_range(0..endpoints.len().max(1));
    let mut best: Option<&Arc<Endpoint>> = None;
    for endpoint in endpoints.iter().cycle().skip(start).take(endpoints.len()) {
        if endpoint.health.is_ejected() {
            if endpoint.health.admits() {
                return Some(endpoint);
            }
            continue;
        }
        if best.is_none_or(|b| endpoint.outstanding() < b.outstanding()) {
            best = Some(endpoint);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let url = EndpointUrl::parse(&format!("http://127.0.0.1:{}", 9000 + i)).unwrap();
                Arc::new(Endpoint::new(url))
            })
            .collect()
    }

    #[test]
    fn guard_counts_outstanding_requests() {
        let eps = endpoints(1);
        let first = eps[0].begin();
        let second = eps[0].begin();
        assert_eq!(eps[0].outstanding(), 2);
        drop(first);
        drop(second);
        assert_eq!(eps[0].outstanding(), 0);
    }

    #[test]
    fn busy_endpoint_is_avoided_with_two_choices() {
        let eps = endpoints(2);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].begin()).collect();
        for _ in 0..100 {
            assert!(Arc::ptr_eq(pick(&eps).unwrap(), &eps[1]));
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_and_none_left_means_no_pick() {
        let eps = endpoints(2);
        let policy = crate::upstream::health::EjectionPolicy {
            failures: 1,
            ..Default::default()
        };
        eps[0].health.record_failure(&policy);
        for _ in 0..50 {
            assert!(Arc::ptr_eq(pick(&eps).unwrap(), &eps[1]));
        }
        eps[1].health.record_failure(&policy);
        assert!(pick(&eps).is_none());
    }

    #[test]
    fn idle_endpoints_all_get_traffic() {
        let eps = endpoints(3);
        let mut hits = [0usize; 3];
        for _ in 0..3000 {
            let chosen = pick(&eps).unwrap();
            let index = eps.iter().position(|e| Arc::ptr_eq(e, chosen)).unwrap();
            hits[index] += 1;
        }
        assert!(hits.iter().all(|&h| h > 500), "uneven spread: {hits:?}");
    }
}
