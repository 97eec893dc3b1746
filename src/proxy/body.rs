//! [`ResponseBody`]: what the gateway sends back, either the model server's body
//! streamed through or a body of its own (errors), plus the guards that keep a
//! request counted until its last byte is sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

use super::admission::Permit;
use crate::routing::{EndpointGuard, VersionRoute};
use crate::telemetry::UpstreamErrorKind;

pin_project! {
    /// The body of every data-plane response.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        hold: Hold,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream { #[pin] body: Incoming },
        Local { #[pin] body: Full<Bytes> },
    }
}

/// Dropped when the response body is: the admission permit and the endpoint's
/// outstanding count end with the last byte, not with the response head.
enum Hold {
    None,
    Forwarded {
        _permit: Permit,
        _endpoint: EndpointGuard,
        route: Arc<VersionRoute>,
    },
}

impl ResponseBody {
    /// A body the gateway produced itself.
    pub fn local(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            kind: Kind::Local {
                body: Full::new(bytes),
            },
            hold: Hold::None,
        }
    }

    /// A model server's body, streamed through.
    pub fn upstream(
        body: Incoming,
        permit: Permit,
        endpoint: EndpointGuard,
        route: Arc<VersionRoute>,
    ) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream { body },
            hold: Hold::Forwarded {
                _permit: permit,
                _endpoint: endpoint,
                route,
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Local { body } => match ready!(body.poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(Err(never)) => match never {},
                None => Poll::Ready(None),
            },
            KindProj::Upstream { body } => {
                let frame = ready!(body.poll_frame(cx));
                if let (Some(Err(_)), Hold::Forwarded { route, .. }) = (&frame, &*this.hold) {
                    route.metrics.upstream_error(UpstreamErrorKind::Protocol);
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Local { body } => body.size_hint(),
        }
    }
}
