//! The status page: one HTML document with its stylesheet and script, embedded in
//! the binary and served on the admin listener at `/` and `/ui/...`. The page holds
//! no data of its own: it reads and changes state through the admin API, with the
//! bearer token the person gives it, like any other client.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Only the page's own files, and calls back to this listener: answers shown on
/// the page (model outputs, request bodies) can never load or run anything.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self' data:; connect-src 'self'; form-action 'none'; \
                      base-uri 'none'; frame-ancestors 'none'";

/// The page's file at `path`, ready to send.
pub fn serve(path: &str) -> Option<Response<Bytes>> {
    let (body, content_type) = file(path)?;
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_TYPE, content_type),
        // The files change with the binary: always revalidated, never stale.
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Some(response)
}

fn file(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "/ui/app.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "/ui/app.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_its_files_with_a_strict_policy() {
        let page = serve("/").unwrap();
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        let html = std::str::from_utf8(page.body()).unwrap();
        for linked in ["/ui/app.js", "/ui/app.css"] {
            assert!(html.contains(linked), "the page links {linked}");
            assert!(serve(linked).is_some(), "{linked} is served");
        }
        // Nothing from elsewhere: the page works with no internet.
        for text in [INDEX, SCRIPT, STYLE] {
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "SVG");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(serve("/ui/other.js").is_none() && serve("/api/v1/models").is_none());
    }
}
