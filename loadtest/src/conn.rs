//! One worker's HTTP/1 connection: connecting, sending the prebuilt request,
//! reading the response through, and naming what went wrong.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::load::{LoadError, LoadOptions};
use crate::report::ErrorKind;

/// The request every worker sends, built once; sending clones it (the body is
/// `Bytes`, so its clone is a reference count).
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    random_headers: Vec<HeaderName>,
    body: Bytes,
}

impl RequestTemplate {
    pub(crate) fn new(options: &LoadOptions) -> Result<Self, LoadError> {
        let url = &options.url;
        let authority = url
            .authority()
            .ok_or_else(|| LoadError::NoHost(url.clone()))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| LoadError::HostHeader(url.clone()))?;
        let mut headers = options.headers.clone();
        // HTTP/1.1 requires Host, and hyper's low-level client does not add it.
        headers.entry(HOST).or_insert(host);
        if !options.body.is_empty() {
            headers
                .entry(CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
        }
        // Over a direct connection the request target is origin-form: path and query.
        let path = url
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(RequestTemplate {
            method: options.method.clone(),
            uri: Uri::from(path),
            headers,
            random_headers: options.random_headers.clone(),
            body: options.body.clone(),
        })
    }

    pub(crate) fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        for name in &self.random_headers {
            request
                .headers_mut()
                .insert(name.clone(), HeaderValue::from(fastrand::u64(..)));
        }
        request
    }
}

/// An open HTTP/1 connection; dropping it closes the socket.
pub(crate) struct Conn {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver owns the socket; a connection dropped mid-request (timeout) would
        // otherwise stay open until the server answered.
        self.driver.abort();
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> Option<Conn> {
    let stream = TcpStream::connect(addr).await.ok()?;
    // Small requests would otherwise wait for Nagle plus the peer's delayed ACK.
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    let driver = tokio::spawn(async move {
        // Its errors surface on the request in flight, where they are counted.
        let _ = connection.await;
    });
    Some(Conn { sender, driver })
}

/// Sends `request` and reads the whole response body, discarding it.
pub(crate) async fn send(
    conn: &mut Conn,
    request: Request<Full<Bytes>>,
) -> Result<StatusCode, ErrorKind> {
    let response = conn.sender.send_request(request).await.map_err(classify)?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(classify)?;
    }
    Ok(status)
}

fn classify(err: hyper::Error) -> ErrorKind {
    if err.is_incomplete_message() {
        return ErrorKind::Reset;
    }
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(io_err) = cause.downcast_ref::<io::Error>() {
            return match io_err.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => ErrorKind::Reset,
                _ => ErrorKind::Io,
            };
        }
        source = cause.source();
    }
    ErrorKind::Io
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_adds_host_and_content_type() {
        let mut options = LoadOptions::new(
            "http://127.0.0.1:9000/v2/models/m/infer?x=1"
                .parse()
                .unwrap(),
        );
        options
            .headers
            .insert("x-stagegate-stage", HeaderValue::from_static("staging"));
        let request = RequestTemplate::new(&options).unwrap().build();
        assert_eq!(request.uri(), "/v2/models/m/infer?x=1");
        assert_eq!(request.headers()[HOST], "127.0.0.1:9000");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(request.headers()["x-stagegate-stage"], "staging");
    }

    #[test]
    fn random_headers_change_on_every_request() {
        let mut options = LoadOptions::new("http://127.0.0.1:9000/".parse().unwrap());
        let name = HeaderName::from_static("x-user-id");
        options
            .headers
            .insert(name.clone(), HeaderValue::from_static("fixed"));
        options.random_headers.push(name.clone());
        let template = RequestTemplate::new(&options).unwrap();
        let values: std::collections::HashSet<HeaderValue> = (0..100)
            .map(|_| {
                let request = template.build();
                assert_eq!(request.headers().get_all(&name).iter().count(), 1);
                request.headers()[&name].clone()
            })
            .collect();
        assert!(!values.contains(&HeaderValue::from_static("fixed")));
        // 100 draws of a u64: a repeat would be a broken generator, not bad luck.
        assert_eq!(values.len(), 100);
    }

    #[test]
    fn template_keeps_a_given_host() {
        let mut options = LoadOptions::new("http://127.0.0.1:9000".parse().unwrap());
        options
            .headers
            .insert(HOST, HeaderValue::from_static("models.example"));
        let request = RequestTemplate::new(&options).unwrap().build();
        assert_eq!(request.uri(), "/");
        assert_eq!(request.headers()[HOST], "models.example");
    }
}
