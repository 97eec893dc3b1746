//! A minimal blocking HTTP/1.1 client for the few control calls a comparison makes
//! (readiness probes, admin API calls): one connection per call, the body read by
//! `Content-Length` (so a proxy that keeps the connection open does not stall it).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response's status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request with a JSON body (if any) and reads the response.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut writer = &stream;
    writer.write_all(request_bytes(addr, method, path, body).as_bytes())?;
    read_response(BufReader::new(&stream))
}

fn request_bytes(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Parses a status line, headers and a body (by `Content-Length`, else to EOF).
pub fn read_response(mut reader: impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no HTTP status line"))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("response head cut short"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| invalid("bad Content-Length"))?,
            );
        }
    }
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_request_has_length_and_type() {
        let addr: SocketAddr = "127.0.0.1:81".parse().unwrap();
        let text = request_bytes(addr, "POST", "/api/v1/models/m/canary", Some("{}"));
        assert!(text.starts_with("POST /api/v1/models/m/canary HTTP/1.1\r\n"));
        assert!(text.contains("Host: 127.0.0.1:81\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
        let get = request_bytes(addr, "GET", "/readyz", None);
        assert!(!get.contains("Content-Length"));
    }

    #[test]
    fn response_by_content_length_ignores_what_follows() {
        let raw = "HTTP/1.1 201 Created\r\ncontent-length: 5\r\nX: y\r\n\r\nhelloEXTRA";
        let response = read_response(raw.as_bytes()).unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.body, "hello");
        assert!(response.is_success());
    }

    #[test]
    fn response_without_length_reads_to_eof() {
        let raw = "HTTP/1.1 503 Service Unavailable\r\n\r\nbusy";
        let response = read_response(raw.as_bytes()).unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "busy");
        assert!(!response.is_success());
        assert!(read_response("garbage\r\n".as_bytes()).is_err());
        assert!(read_response("HTTP/1.1 200 OK\r\n".as_bytes()).is_err());
    }
}
