//! Guarded connections to tenant databases: limits enforced on the PostgreSQL wire itself,
//! before any memory is spent or any recursion goes deep.
//!
//! A tenant controls what its database sends and which types its statements use, so the
//! daemon cannot trust either:
//! - **Message size.** tokio-postgres reads a whole protocol message into memory before the
//!   caller sees a row, so `SELECT repeat('x', 300000000)` would cost 300 MB per request no
//!   matter what the caller checks afterwards. [`GuardedStream`] reads each message's length
//!   from its header and fails the connection when one is larger than the limit, before the
//!   body is read.
//! - **Type lookups.** Preparing a statement makes tokio-postgres resolve every unknown type
//!   it mentions, recursively (a domain over a domain over ...), one query per level, on the
//!   stack: a chain of thousands of domains overflows the thread's stack and aborts the whole
//!   process. While a tenant statement is being prepared, [`WireGuard::limit_lookups`] caps the
//!   number of queries the driver may send (each lookup is one `Bind` message); past the cap
//!   the connection fails, so the recursion ends at a fixed depth with an error.
//!
//! A connection that tripped a guard is dead and never returned to a pool; [`WireGuard`] says
//! which limit it hit so the caller can answer 413 or 400 instead of 503.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The state shared between a guarded stream and its owner.
#[derive(Debug)]
pub struct WireGuard {
    max_message: usize,
    too_large: AtomicBool,
    /// Bind messages still allowed; negative means no limit.
    lookups_left: AtomicI64,
    /// The limit set by the last [`WireGuard::limit_lookups`] (for the error message).
    lookup_limit: AtomicI64,
    too_deep: AtomicBool,
    /// The transaction status of the last `ReadyForQuery` the server sent: `I` idle, `T` in a
    /// transaction block, `E` in a failed one.
    status: AtomicU8,
}

/// Which guard a connection tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// A server message was larger than the limit (bytes).
    TooLarge(usize),
    /// Preparing a statement needed more type lookups than allowed.
    TooDeep(i64),
}

impl WireGuard {
    /// A guard allowing server messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Arc<Self> {
        Arc::new(Self {
            max_message,
            too_large: AtomicBool::new(false),
            lookups_left: AtomicI64::new(-1),
            lookup_limit: AtomicI64::new(-1),
            too_deep: AtomicBool::new(false),
            status: AtomicU8::new(b'I'),
        })
    }

    /// True when the last `ReadyForQuery` read from the server said no transaction block is
    /// open. It describes the session as of the last reply read: a request whose reply is
    /// still on its way may have changed it.
    pub fn idle_in_session(&self) -> bool {
        self.status.load(Ordering::SeqCst) == b'I'
    }

    /// From now on the client may send at most `n` more `Bind` messages (the statement being
    /// prepared, then one per type lookup); [`WireGuard::unlimited`] lifts it again.
    pub fn limit_lookups(&self, n: i64) {
        self.lookups_left.store(n.max(0), Ordering::SeqCst);
        self.lookup_limit.store(n.max(0), Ordering::SeqCst);
    }

    /// No limit on `Bind` messages.
    pub fn unlimited(&self) {
        self.lookups_left.store(-1, Ordering::SeqCst);
    }

    /// The limit this connection hit, if any.
    pub fn tripped(&self) -> Option<Tripped> {
        if self.too_large.load(Ordering::SeqCst) {
            Some(Tripped::TooLarge(self.max_message))
        } else if self.too_deep.load(Ordering::SeqCst) {
            Some(Tripped::TooDeep(self.lookup_limit.load(Ordering::SeqCst)))
        } else {
            None
        }
    }
}

/// Type lookups allowed while preparing one tenant statement. Each distinct type the driver
/// has not seen on this connection costs one, and each level of a nested type one more.
pub const MAX_TYPE_LOOKUPS: i64 = 100;

/// Where a frame parser is within a message.
#[derive(Debug, Clone, Copy)]
struct Frames {
    /// Header bytes seen of the current message (type byte + 4 length bytes).
    header: [u8; 5],
    header_len: usize,
    /// Body bytes still to skip.
    body_left: usize,
    /// The next message has no type byte (the client's startup message).
    untyped: bool,
    /// The next body byte is the status byte of a `ReadyForQuery` (server messages only).
    status_next: bool,
}

/// What the parser found in a chunk of bytes.
enum Found {
    /// A message begins at this offset of the chunk, with this type byte.
    Start(usize, u8),
    /// A message header is complete: its body length.
    Header(usize),
    /// The transaction status byte of a `ReadyForQuery` message (`Z`).
    Status(u8),
}

impl Frames {
    fn new(untyped_first: bool) -> Self {
        Self {
            header: [0; 5],
            header_len: usize::from(untyped_first),
            body_left: 0,
            untyped: untyped_first,
            status_next: false,
        }
    }

    /// Feeds bytes, reporting message starts and completed headers as they are found.
    fn feed(&mut self, chunk: &[u8], mut found: impl FnMut(Found) -> io::Result<()>) -> io::Result<()> {
        let mut at = 0;
        while at < chunk.len() {
            if self.body_left > 0 {
                if self.status_next {
                    self.status_next = false;
                    found(Found::Status(chunk[at]))?;
                }
                let n = self.body_left.min(chunk.len() - at);
                self.body_left -= n;
                at += n;
                continue;
            }
            if self.header_len == 0 {
                found(Found::Start(at, chunk[at]))?;
            }
            let n = (5 - self.header_len).min(chunk.len() - at);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[at..at + n]);
            self.header_len += n;
            at += n;
            if self.header_len == 5 {
                let length =
                    u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                let body = (length as usize).saturating_sub(4);
                found(Found::Header(body))?;
                self.status_next = !self.untyped && self.header[0] == b'Z' && body > 0;
                self.untyped = false;
                self.header_len = 0;
                self.body_left = body;
            }
        }
        Ok(())
    }
}

/// A stream to a tenant database that enforces a [`WireGuard`].
pub struct GuardedStream<S> {
    inner: S,
    guard: Arc<WireGuard>,
    reading: Frames,
    writing: Frames,
}

impl<S> GuardedStream<S> {
    /// Wraps `inner`: a stream on which the PostgreSQL messages are in clear (TCP, or the
    /// inside of a TLS session already negotiated).
    pub fn new(inner: S, guard: Arc<WireGuard>) -> Self {
        Self { inner, guard, reading: Frames::new(false), writing: Frames::new(true) }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let guard = &this.guard;
                this.reading.feed(&buf.filled()[before..], |found| match found {
                    Found::Header(body) if body > guard.max_message => {
                        guard.too_large.store(true, Ordering::SeqCst);
                        Err(io::Error::other(format!(
                            "the tenant database sent a message of {body} bytes, over the limit of {}",
                            guard.max_message
                        )))
                    }
                    Found::Status(status) => {
                        guard.status.store(status, Ordering::SeqCst);
                        Ok(())
                    }
                    _ => Ok(()),
                })?;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Under a lookup limit, write only up to the first Bind past the limit: a refused Bind
        // never reaches the server, and one at the very start fails the write.
        let mut len = buf.len();
        let left = this.guard.lookups_left.load(Ordering::SeqCst);
        if left >= 0 {
            let mut probe = this.writing;
            let mut binds = 0;
            let mut cut = None;
            probe.feed(buf, |found| {
                if let Found::Start(at, b'B') = found
                    && cut.is_none()
                {
                    binds += 1;
                    if binds > left {
                        cut = Some(at);
                    }
                }
                Ok(())
            })?;
            if let Some(at) = cut {
                if at == 0 {
                    this.guard.too_deep.store(true, Ordering::SeqCst);
                    return Poll::Ready(Err(io::Error::other(
                        "too many type lookups while preparing a statement",
                    )));
                }
                len = at;
            }
        }
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..len]) {
            Poll::Ready(Ok(n)) => {
                let guard = &this.guard;
                this.writing.feed(&buf[..n], |found| {
                    if let Found::Start(_, b'B') = found {
                        // Count only what was written. Without a limit (-1) or with none left (0)
                        // there is nothing to count down: `fetch_update` declines, as intended.
                        guard
                            .lookups_left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| (l > 0).then_some(l - 1))
                            .ok();
                    }
                    Ok(())
                })?;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: usize) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&u32::try_from(body + 4).unwrap().to_be_bytes());
        m.extend(std::iter::repeat_n(0u8, body));
        m
    }

    #[test]
    fn headers_are_found_across_any_split() {
        // (type, body length) of each message, however the bytes arrive.
        let mut stream = message(b'D', 10);
        stream.extend(message(b'C', 3));
        stream.extend(message(b'Z', 1));
        let at = stream.len() - 1;
        stream[at] = b'T';
        stream.extend(message(b'Z', 1));
        let at = stream.len() - 1;
        stream[at] = b'I';
        for split in 1..stream.len() {
            let mut frames = Frames::new(false);
            let (mut seen, mut kinds, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
            for chunk in stream.chunks(split) {
                frames
                    .feed(chunk, |found| {
                        match found {
                            Found::Start(_, k) => kinds.push(k),
                            Found::Header(b) => seen.push((*kinds.last().unwrap(), b)),
                            Found::Status(s) => statuses.push(s),
                        }
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(seen, vec![(b'D', 10), (b'C', 3), (b'Z', 1), (b'Z', 1)], "split {split}");
            assert_eq!(statuses, b"TI", "split {split}: the status byte of each ReadyForQuery");
        }
    }

    #[test]
    fn the_startup_message_has_no_type_byte() {
        // length 8 + protocol 3.0, then a typed Bind.
        let mut stream = 8u32.to_be_bytes().to_vec();
        stream.extend(196_608u32.to_be_bytes());
        stream.extend(message(b'B', 2));
        let mut frames = Frames::new(true);
        let (mut starts, mut bodies) = (Vec::new(), Vec::new());
        frames
            .feed(&stream, |found| {
                match found {
                    Found::Start(at, k) => starts.push((at, k)),
                    Found::Header(b) => bodies.push(b),
                    Found::Status(_) => unreachable!("no ReadyForQuery here"),
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(starts, vec![(8, b'B')], "the startup message is not a typed message");
        assert_eq!(bodies, vec![4, 2]);
    }
}
