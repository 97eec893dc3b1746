//! [`ClientIo`]: an accepted connection's IO as hyper sees it, watched on the
//! way in for what hyper does not show.
//!
//! First, a deadline for the first request head. The auto builder first waits,
//! without any timeout, for enough bytes to tell HTTP/1 from the HTTP/2 preface,
//! and hyper's own HTTP/1 `header_read_timeout` is off: it allocates, arms and
//! drops a timer for every request head of every keep-alive connection, about
//! 1,600 instructions of the gateway's 45,000 per request (`instructions.sh`).
//! Reads fail once the deadline passes, until the bytes read complete the HTTP/2
//! preface or, for HTTP/1, the first request head. After the first request, the
//! connection's watchdog closes a connection on which nothing is started or in
//! flight, which is where a later head that never completes ends
//! ([`super::connection`]).
//!
//! Second, every byte read goes through a [`HeadScanner`], which finds the
//! requests whose framing hyper would quietly settle (see [`super::framing`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::framing::HeadScanner;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct ClientIo<I> {
    io: I,
    /// Armed until the HTTP/2 preface or the first HTTP/1 head is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, all of them matching the HTTP/2 preface.
    preface_seen: usize,
    /// The bytes read are no HTTP/2 preface.
    http1: bool,
    heads: HeadScanner,
}

impl<I> ClientIo<I> {
    /// `io` with a deadline of `timeout` for its first request head, and its
    /// reads followed by `heads`.
    pub fn new(io: I, timeout: Duration, heads: HeadScanner) -> ClientIo<I> {
        ClientIo {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            preface_seen: 0,
            http1: false,
            heads,
        }
    }

    /// Looks at newly read bytes (already scanned for heads) and disarms the
    /// deadline once the first request has arrived, or the client closed.
    fn observe(&mut self, fresh: &[u8]) {
        if !self.http1 {
            let expected = &H2_PREFACE[self.preface_seen..];
            let compared = fresh.len().min(expected.len());
            self.http1 = fresh[..compared] != expected[..compared];
            self.preface_seen += compared;
        }
        // Disarmed too where the scanner stops: then hyper refuses the bytes and
        // closes, and a scanner that stopped where hyper goes on must not cut a
        // connection hyper serves.
        let arrived = if self.http1 {
            self.heads.head_read_or_stopped()
        } else {
            self.preface_seen == H2_PREFACE.len()
        };
        if fresh.is_empty() || arrived {
            self.deadline = None;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client sent no request within the header read timeout",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        this.heads.observe(fresh);
        if this.deadline.is_some() {
            this.observe(fresh);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::framing::ConflictingRequest;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn wrap(server: DuplexStream) -> (ClientIo<DuplexStream>, Arc<ConflictingRequest>) {
        let conflict = Arc::new(ConflictingRequest::default());
        let heads = HeadScanner::new(1024, Arc::clone(&conflict));
        (
            ClientIo::new(server, Duration::from_secs(5), heads),
            conflict,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let (_client, server) = duplex(64);
        let (mut wrapped, _) = wrap(server);
        let mut buf = [0u8; 8];
        let error = wrapped.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// Reads `opening` through the wrapper, then expects the deadline to cut
    /// the connection.
    async fn times_out_after(opening: &[u8]) {
        let (mut client, server) = duplex(64);
        let (mut wrapped, _) = wrap(server);
        client.write_all(opening).await.unwrap();
        let mut buf = [0u8; 24];
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), opening.len());
        assert!(wrapped.deadline.is_some());
        assert_eq!(
            wrapped.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn partial_preface_still_times_out() {
        times_out_after(b"PRI * ").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_http1_head_still_times_out() {
        times_out_after(b"GET / HT").await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_http1_head_disarms_the_deadline() {
        let (mut client, server) = duplex(64);
        let (mut wrapped, _) = wrap(server);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 24];
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), 16);
        client.write_all(b"\r\n").await.unwrap();
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), 2);
        assert!(wrapped.deadline.is_none());
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_hyper_refuses_disarm_the_deadline() {
        let (mut client, server) = duplex(64);
        let (mut wrapped, _) = wrap(server);
        let garbage = b"\x01\x02 not http\r\n\r\n";
        client.write_all(garbage).await.unwrap();
        let mut buf = [0u8; 24];
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), garbage.len());
        assert!(
            wrapped.deadline.is_none(),
            "the scanner stopped, so the deadline must not cut what hyper does next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_h2_preface_disarms_the_deadline() {
        let (mut client, server) = duplex(64);
        let (mut wrapped, _) = wrap(server);
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 24];
        wrapped.read_exact(&mut buf).await.unwrap();
        assert!(wrapped.deadline.is_none());
    }

    #[tokio::test]
    async fn every_read_reaches_the_head_scanner() {
        let (mut client, server) = duplex(256);
        let (mut wrapped, conflict) = wrap(server);
        let request = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\n\
                        transfer-encoding: chunked\r\n\r\n";
        client.write_all(request).await.unwrap();
        drop(client);
        let mut sink = Vec::new();
        wrapped.read_to_end(&mut sink).await.unwrap();
        assert!(conflict.is(1) && !conflict.is(0));
    }
}
