//! [`Balance`]: which endpoint of the routed version a request goes to, picked
//! once its body has been read ahead (so a client still uploading holds no
//! endpoint and no ejected endpoint's probe). The URI it is sent at there is
//! built here, and the headers are made what the model server gets (hop-by-hop
//! ones dropped, `Host` and `x-forwarded-*` set), before mirroring, so mirrors
//! carry the same headers and no mirror goes out for a request production
//! refuses.

use std::task::{Context, Poll};

use http::Version;
use tower::{Layer, Service};

use super::ProxyError;
use super::headers::prepare_upstream_request;
use super::read_ahead::Ahead;
use super::stack::{Answer, Refusal, Routed, Step, Target, always_ready};
use crate::upstream::client::upstream_uri;

pub struct BalanceLayer;

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, next: S) -> Balance<S> {
        Balance { next }
    }
}

pub struct Balance<S> {
    next: S,
}

impl<S> Balance<S> {
    /// Picks the endpoint, or says why none can take the request.
    fn balance(&self, routed: Routed<Ahead>) -> Result<Routed<Ahead, Target>, Refusal> {
        let Some(endpoint) = routed.route.pick_endpoint().map(|e| e.begin()) else {
            let version = routed.route.version().to_string();
            let error = ProxyError::NoHealthyEndpoint { version };
            return Err(Refusal::on(routed.route, error));
        };
        let uri = match upstream_uri(endpoint.endpoint(), &routed.parts.uri, routed.strip) {
            Ok(uri) => uri,
            Err(e) => {
                let error =
                    ProxyError::BadRequest(format!("request path cannot be forwarded: {e}"));
                return Err(Refusal::on(routed.route, error));
            }
        };
        let mut routed = routed.with_target(Target { endpoint, uri });
        let client_authority = routed.parts.uri.authority().cloned();
        routed.parts.version = Version::HTTP_11;
        let host = routed.target.endpoint.endpoint().host_header();
        prepare_upstream_request(
            &mut routed.parts.headers,
            host,
            &routed.peer,
            client_authority.as_ref(),
        );
        Ok(routed)
    }
}

impl<'a, S> Service<Routed<Ahead>> for &'a Balance<S>
where
    &'a S: Service<Routed<Ahead, Target>, Response = Answer, Error = Refusal>,
{
    type Response = Answer;
    type Error = Refusal;
    type Future = Step<<&'a S as Service<Routed<Ahead, Target>>>::Future, ()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        always_ready(cx)
    }

    fn call(&mut self, routed: Routed<Ahead>) -> Self::Future {
        let this: &'a Balance<S> = self;
        match this.balance(routed) {
            Ok(routed) => {
                let mut next = &this.next;
                Step::calling(next.call(routed), ())
            }
            Err(refusal) => Step::refused(refusal),
        }
    }
}
