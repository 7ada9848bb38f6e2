//! What a client connection's writes have done, for `send_timeout`: whether a write is waiting
//! for room because the client is not reading its answer, and whether bytes went since that
//! wait began. Under TLS a write the session accepts is not yet a write that went — rustls
//! buffers up to 64 KiB of records of its own while the socket is full — so there the
//! progress is counted at the socket, under the session ([`CountedTcp`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client's TCP stream under TLS, counting the bytes its socket took.
#[derive(Debug)]
pub struct CountedTcp {
    tcp: TcpStream,
    sent: u64,
}

impl CountedTcp {
    pub fn new(tcp: TcpStream) -> CountedTcp {
        CountedTcp { tcp, sent: 0 }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Bytes the socket has taken so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn count(&mut self, result: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result {
            self.sent += *n as u64;
        }
    }
}

impl AsyncRead for CountedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.count(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.count(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Which kind of call to the transport returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendCall {
    Write,
    /// A flush or a shutdown: ready means nothing is left inside the transport.
    Flush,
}

/// The waits of one serving stretch's writes.
#[derive(Debug, Default)]
pub struct SendProgress {
    /// Writes that returned ready: the progress mark of a transport that says nothing of its
    /// socket (plain TCP takes a write whole or not at all).
    writes: u64,
    /// The progress mark when the current wait for room began; `None`: nothing is waiting.
    waiting_since: Option<u64>,
    /// Waits so far, to tell each from the one before.
    waits: u64,
}

impl SendProgress {
    /// Notes one call's outcome; `socket_sent` is the transport's count of bytes its socket
    /// took, where it buffers on its own. Returns the wait now going on (its number), `None`
    /// when none is, and whether that changed (the caller publishes it only then).
    pub fn note(
        &mut self,
        call: SendCall,
        pending: bool,
        socket_sent: Option<u64>,
    ) -> Option<Option<u64>> {
        if !pending && call == SendCall::Write {
            self.writes += 1;
        }
        let mark = socket_sent.unwrap_or(self.writes);
        match (pending, self.waiting_since) {
            // The same wait goes on: nothing reached the socket since it began.
            (true, Some(since)) if since == mark => None,
            // A wait begins, or begins again after some bytes went.
            (true, _) => {
                self.waits += 1;
                self.waiting_since = Some(mark);
                Some(Some(self.waits))
            }
            (false, None) => None,
            // Ready, and bytes went (or all went: a flush): the wait is over. A write the
            // session only buffered, its socket taking nothing, is not.
            (false, Some(since)) if call == SendCall::Flush || since != mark => {
                self.waiting_since = None;
                Some(None)
            }
            (false, Some(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the socket took is counted, written whole or in vectors, and reads pass through.
    #[tokio::test]
    async fn counted_tcp_counts_what_its_socket_took() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut counted = CountedTcp::new(client.unwrap());
        let (mut peer, _) = accepted.unwrap();
        counted.write_all(b"hello").await.unwrap();
        let parts = [
            std::io::IoSlice::new(b" wide"),
            std::io::IoSlice::new(b" world"),
        ];
        let written = counted.write_vectored(&parts).await.unwrap();
        assert_eq!(
            written, 11,
            "an empty loopback socket takes 11 bytes in one call"
        );
        assert_eq!(counted.sent(), 16);
        let mut got = [0u8; 16];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello wide world");
        peer.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        counted.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        assert_eq!(counted.sent(), 16, "reading sends nothing");
    }

    #[test]
    fn a_plain_write_that_goes_ends_the_wait_and_the_next_wait_is_a_new_one() {
        let mut p = SendProgress::default();
        assert_eq!(p.note(SendCall::Write, false, None), None);
        assert_eq!(p.note(SendCall::Write, true, None), Some(Some(1)));
        assert_eq!(p.note(SendCall::Write, true, None), None, "the same wait");
        assert_eq!(p.note(SendCall::Write, false, None), Some(None));
        assert_eq!(p.note(SendCall::Flush, false, None), None);
        assert_eq!(p.note(SendCall::Write, true, None), Some(Some(2)));
    }

    #[test]
    fn a_write_the_session_only_buffered_does_not_end_the_wait() {
        let mut p = SendProgress::default();
        // The socket is full: the flush waits with 1 000 bytes sent.
        assert_eq!(p.note(SendCall::Flush, true, Some(1_000)), Some(Some(1)));
        // rustls takes the next piece of the answer into its buffer; the socket took nothing.
        assert_eq!(p.note(SendCall::Write, false, Some(1_000)), None);
        assert_eq!(
            p.note(SendCall::Flush, true, Some(1_000)),
            None,
            "the same wait"
        );
        // The client reads: bytes go, even though the call still has to wait.
        assert_eq!(p.note(SendCall::Flush, true, Some(5_000)), Some(Some(2)));
        assert_eq!(p.note(SendCall::Write, false, Some(9_000)), Some(None));
    }

    #[test]
    fn a_flush_that_completes_ends_the_wait() {
        let mut p = SendProgress::default();
        assert_eq!(p.note(SendCall::Write, true, Some(10)), Some(Some(1)));
        assert_eq!(p.note(SendCall::Flush, false, Some(10)), Some(None));
    }
}
