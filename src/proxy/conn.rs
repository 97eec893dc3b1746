//! [`FirstBytesDeadline`]: closes connections that never say which protocol they
//! speak.
//!
//! hyper's `header_read_timeout` only starts once HTTP/1 parsing starts, and the
//! auto builder first waits, without any timeout, for enough bytes to tell HTTP/1
//! from the HTTP/2 preface. A client that connects and stays silent (or sends
//! `P` and stops) would hold its connection forever. This wrapper fails reads once
//! the deadline passes, until the bytes read rule the HTTP/2 preface out (HTTP/1,
//! whose header timer hyper runs from then on) or complete it (HTTP/2).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct FirstBytesDeadline<I> {
    io: I,
    /// Armed until the protocol is known.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, all of them matching the HTTP/2 preface.
    preface_seen: usize,
}

impl<I> FirstBytesDeadline<I> {
    pub fn new(io: I, timeout: Duration) -> FirstBytesDeadline<I> {
        FirstBytesDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            preface_seen: 0,
        }
    }

    /// Looks at newly read bytes and disarms the deadline once the protocol is known.
    fn observe(&mut self, fresh: &[u8]) {
        let expected = &H2_PREFACE[self.preface_seen..];
        let compared = fresh.len().min(expected.len());
        let still_h2 = fresh[..compared] == expected[..compared];
        self.preface_seen += compared;
        if fresh.is_empty() || !still_h2 || self.preface_seen == H2_PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
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
        if this.deadline.is_some() {
            this.observe(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let (_client, server) = duplex(64);
        let mut wrapped = FirstBytesDeadline::new(server, Duration::from_secs(5));
        let mut buf = [0u8; 8];
        let error = wrapped.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_preface_still_times_out() {
        let (mut client, server) = duplex(64);
        let mut wrapped = FirstBytesDeadline::new(server, Duration::from_secs(5));
        client.write_all(b"PRI * ").await.unwrap();
        let mut buf = [0u8; 24];
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), 6);
        assert!(wrapped.deadline.is_some());
        assert_eq!(
            wrapped.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http1_bytes_disarm_the_deadline() {
        let (mut client, server) = duplex(64);
        let mut wrapped = FirstBytesDeadline::new(server, Duration::from_secs(5));
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 24];
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), 8);
        assert!(wrapped.deadline.is_none());
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"TP/1.1").await.unwrap();
        assert_eq!(wrapped.read(&mut buf).await.unwrap(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn full_h2_preface_disarms_the_deadline() {
        let (mut client, server) = duplex(64);
        let mut wrapped = FirstBytesDeadline::new(server, Duration::from_secs(5));
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 24];
        wrapped.read_exact(&mut buf).await.unwrap();
        assert!(wrapped.deadline.is_none());
    }
}
