//! Streaming a message body from one connection to another with bounded memory: the same code
//! moves request bodies (client to origin) and response bodies (origin to client).
//!
//! The source's read buffer holds whatever was read past the head; the pump consumes exactly
//! the body from it (Content-Length count, chunked decoder, or everything until EOF for a
//! close-delimited response) and leaves any following bytes (a pipelined request) in place.
//! Output is re-framed as the destination needs: raw bytes, or re-encoded chunks (trailers
//! are dropped, extensions normalised away). Memory per pump is one read buffer of
//! [`READ_CHUNK_BYTES`] plus one output buffer of about the same size, whatever the body size;
//! once a body passed [`LARGE_BODY_AFTER_BYTES`], reads take up to [`LARGE_READ_CHUNK_BYTES`]
//! (fewer system calls per byte), and the buffers shrink back when the connection idles.
//!
//! Raw bytes bound for a socket are not copied: the pump hands views of the source's read
//! buffer to the sink ([`BodySink::ZERO_COPY`]), which writes the head and the body in one
//! `writev` (the response path: origin buffer to client socket). Chunk re-encoding and the
//! in-memory and upstream sinks copy into the output buffer.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::http::chunked::{write_chunk_header, Chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::BodyFraming;
use crate::timer::Timers;

/// Free space guaranteed in a read buffer before each body read: 16 KiB per read keeps syscalls
/// per MiB low without holding much memory per connection.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Free space per read once a body has moved [`LARGE_BODY_AFTER_BYTES`].
pub const LARGE_READ_CHUNK_BYTES: usize = 128 * 1024;
/// A sized body missing at most this much is read to its end before the pump writes (see
/// `pump`).
pub const SMALL_REST_BYTES: u64 = 4 * 1024;
/// Body bytes after which reads use [`LARGE_READ_CHUNK_BYTES`].
pub const LARGE_BODY_AFTER_BYTES: u64 = 64 * 1024;

/// How the destination receives the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encode {
    /// The decoded bytes as they are (Content-Length or close-delimited destination).
    Raw,
    /// Re-encoded as chunks, ending with the last chunk.
    Chunked,
}

/// Why a pump stopped early. `Read*` faults belong to the source, `Write` to the destination.
#[derive(Debug)]
pub enum PumpError {
    ReadTimeout,
    ReadIo(io::Error),
    /// The source closed before the body was complete.
    ReadEof,
    /// The source's chunked framing is invalid.
    Framing(&'static str),
    /// The body exceeded the byte limit given to the pump.
    TooLarge,
    Write(io::Error),
}

/// Reads more bytes from `src`, appended to `buf`, within `timeout`. Returns the number of bytes
/// read (0 at end of stream). On timeout the read is dropped and `buf` is left empty: the caller
/// must close this connection (bytes may have been lost, and monoio-rustls cannot read again).
pub async fn read_more<R: AsyncReadRent>(
    src: &mut R,
    buf: &mut BytesMut,
    min_free: usize,
    timers: &Rc<Timers>,
    timeout: Duration,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < min_free {
        buf.reserve(min_free);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let read = std::pin::pin!(src.read(owned.slice_mut(len..cap)));
    match timers.within(timeout, read).await {
        Some((res, slice)) => {
            *buf = slice.into_inner();
            res
        }
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
    }
}

/// Writes all of `out` to `dst` and clears it, keeping its allocation.
pub async fn flush_out<W: AsyncWriteRent>(dst: &mut W, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let (res, mut buf) = dst.write_all(std::mem::take(out)).await;
    buf.clear();
    *out = buf;
    res.map(|_| ())
}

/// Where a pumped body goes: a socket, or memory (a job keeps its final answer).
pub trait BodySink {
    /// Whether [`BodySink::take_with`] writes the body without copying it (then `pump` hands
    /// raw body bytes over as views of the source's buffer instead of copying them to `out`).
    const ZERO_COPY: bool = false;

    /// Takes everything in `out` and clears it.
    fn take(&mut self, out: &mut Vec<u8>) -> impl std::future::Future<Output = io::Result<()>>;

    /// Takes `out` (maybe empty: a head) followed by `body` (raw body bytes still in the
    /// source's read buffer) and clears `out`. A socket writes both in one `writev` without
    /// copying the body; the default copies it into `out`.
    fn take_with(
        &mut self,
        out: &mut Vec<u8>,
        body: BytesMut,
    ) -> impl std::future::Future<Output = io::Result<()>> {
        out.extend_from_slice(&body);
        drop(body);
        self.take(out)
    }
}

impl BodySink for monoio::net::TcpStream {
    const ZERO_COPY: bool = true;

    async fn take(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        flush_out(self, out).await
    }

    async fn take_with(&mut self, out: &mut Vec<u8>, body: BytesMut) -> io::Result<()> {
        if body.is_empty() {
            return flush_out(self, out).await;
        }
        let (res, mut head) = write_head_body(self, std::mem::take(out), body).await;
        head.clear();
        *out = head;
        res
    }
}

impl BodySink for crate::upstream::UpstreamStream {
    async fn take(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        flush_out(self, out).await
    }
}

/// Two buffers written by one `writev`: a head (maybe empty) and body bytes. The iovec pair
/// lives on the heap (io_uring reads it after the operation value has moved) and comes from a
/// per-thread free list, so a write allocates nothing in steady state.
struct HeadBody {
    iov: Box<[libc::iovec; 2]>,
    head: Vec<u8>,
    body: BytesMut,
}

thread_local! {
    // Boxed on purpose: each pair is handed to the kernel and must keep its address while its
    // `HeadBody` moves.
    #[allow(clippy::vec_box)]
    static IOVECS: std::cell::RefCell<Vec<Box<[libc::iovec; 2]>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Free iovec pairs kept per thread: one per write in flight on this core is enough; more
/// are freed.
const IOVECS_KEPT: usize = 64;

impl HeadBody {
    fn new(head: Vec<u8>, body: BytesMut) -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = IOVECS
            .with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| Box::new([empty, empty]));
        iov[0] = libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        };
        iov[1] = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        HeadBody { iov, head, body }
    }

    fn into_parts(self) -> (Vec<u8>, BytesMut) {
        let HeadBody { iov, head, body } = self;
        IOVECS.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < IOVECS_KEPT {
                free.push(iov);
            }
        });
        (head, body)
    }
}

// SAFETY: the iovecs point into `head` and `body`, which the value owns and never touches
// while the runtime holds it; both the iovec array (boxed) and the two buffers (heap) keep
// their addresses when the value moves.
unsafe impl monoio::buf::IoVecBuf for HeadBody {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        if self.head.is_empty() {
            // Only the body: its iovec alone (a zero-length first entry is legal but useless).
            1
        } else {
            2
        }
    }
}

/// Writes `head` then `body` to `dst`: one `writev` in the common case, and after a short
/// write the rest with plain writes. Returns the head's allocation for reuse.
async fn write_head_body(
    dst: &mut monoio::net::TcpStream,
    head: Vec<u8>,
    body: BytesMut,
) -> (io::Result<()>, Vec<u8>) {
    if head.is_empty() {
        let (res, _) = dst.write_all(body).await;
        return (res.map(|_| ()), head);
    }
    let (res, parts) = dst.writev(HeadBody::new(head, body)).await;
    let (head, body) = parts.into_parts();
    let written = match res {
        Ok(0) => {
            let e = io::Error::new(io::ErrorKind::WriteZero, "writev wrote nothing");
            return (Err(e), head);
        }
        Ok(n) => n,
        Err(e) => return (Err(e), head),
    };
    // A short write (a slow reader's full socket buffer): finish with plain writes.
    let head = if written < head.len() {
        let (res, rest) = dst.write_all(IoBuf::slice(head, written..)).await;
        let head = rest.into_inner();
        if let Err(e) = res {
            return (Err(e), head);
        }
        head
    } else {
        head
    };
    let from = written.saturating_sub(head.len());
    if from < body.len() {
        let (res, _) = dst.write_all(IoBuf::slice(body, from..)).await;
        if let Err(e) = res {
            return (Err(e), head);
        }
    }
    (Ok(()), head)
}

/// Collects a body in memory, up to a limit.
pub struct Collect {
    pub body: Vec<u8>,
    pub limit: usize,
}

impl BodySink for Collect {
    async fn take(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if self.body.len().saturating_add(out.len()) > self.limit {
            out.clear();
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "body over the limit",
            ));
        }
        self.body.extend_from_slice(out);
        out.clear();
        Ok(())
    }
}

/// Incremental state of one body being moved.
enum Progress {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilEof,
}

/// Moves one body from `src` to `dst`. `pending` holds bytes already read from `src` (the
/// start of the body, maybe more); on success it keeps the bytes after the body. `out` may hold
/// bytes to send before the body (a head); they go out with the first body bytes, in one write.
/// Returns the number of body bytes moved.
#[allow(clippy::too_many_arguments)]
pub async fn pump<R: AsyncReadRent, W: BodySink>(
    src: &mut R,
    pending: &mut BytesMut,
    framing: BodyFraming,
    encode: Encode,
    dst: &mut W,
    out: &mut Vec<u8>,
    timers: &Rc<Timers>,
    read_timeout: Duration,
    limit: u64,
) -> Result<u64, PumpError> {
    let mut progress = match framing {
        BodyFraming::None | BodyFraming::Length(0) => {
            if encode == Encode::Chunked && framing != BodyFraming::None {
                out.extend_from_slice(LAST_CHUNK);
            }
            dst.take(out).await.map_err(PumpError::Write)?;
            return Ok(0);
        }
        BodyFraming::Length(n) => {
            if n > limit {
                return Err(PumpError::TooLarge);
            }
            Progress::Length { remaining: n }
        }
        BodyFraming::Chunked => Progress::Chunked(ChunkedDecoder::new()),
        BodyFraming::CloseDelimited => Progress::UntilEof,
    };
    let mut moved: u64 = 0;
    // Raw body bytes for a zero-copy sink: views of `pending`'s buffer, sent after `out`.
    let zero_copy = W::ZERO_COPY && encode == Encode::Raw;
    let mut held = BytesMut::new();
    loop {
        // 1. Consume what is buffered.
        let done = match &mut progress {
            Progress::Length { remaining } => {
                let take = pending
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                if take > 0 {
                    consume(pending, take, zero_copy, &mut held, out, encode);
                    *remaining -= take as u64;
                    moved += take as u64;
                }
                *remaining == 0
            }
            Progress::UntilEof => {
                let take = pending.len();
                if take > 0 {
                    consume(pending, take, zero_copy, &mut held, out, encode);
                    moved += take as u64;
                }
                false
            }
            Progress::Chunked(decoder) => {
                let mut done = false;
                loop {
                    let (consumed, event) = decoder
                        .decode(pending)
                        .map_err(|e| PumpError::Framing(e.message()))?;
                    match event {
                        Chunk::Data(range) => {
                            moved += range.len() as u64;
                            if moved > limit {
                                return Err(PumpError::TooLarge);
                            }
                            emit(out, encode, &pending[range]);
                            pending.advance(consumed);
                        }
                        Chunk::NeedMore => {
                            pending.advance(consumed);
                            break;
                        }
                        Chunk::Done => {
                            pending.advance(consumed);
                            done = true;
                            break;
                        }
                    }
                }
                done
            }
        };
        if moved > limit {
            return Err(PumpError::TooLarge);
        }
        if done {
            if encode == Encode::Chunked {
                out.extend_from_slice(LAST_CHUNK);
            }
            send(dst, out, &mut held).await.map_err(PumpError::Write)?;
            return Ok(moved);
        }
        // 2. Send what was produced, then read more. When only a small rest of a sized body is
        // missing (a response just over one read), it is read first and sent with the rest:
        // one write instead of two (and, zero-copy, the rest lands right after the held bytes
        // in the same buffer).
        let small_rest = match progress {
            Progress::Length { remaining } if remaining <= SMALL_REST_BYTES => {
                Some(remaining as usize)
            }
            _ => None,
        }
        .filter(|&rest| {
            out.len() + held.len() < LARGE_READ_CHUNK_BYTES
                // Held views pin `pending`'s buffer: the rest must fit in its free tail, or
                // the read would need a new buffer and the held bytes a copy. Then the held
                // bytes go out first and the rest follows in a second write.
                && (held.is_empty() || pending.capacity() - pending.len() >= rest)
        });
        if small_rest.is_none() {
            send(dst, out, &mut held).await.map_err(PumpError::Write)?;
        }
        // A large body is moved in larger pieces: fewer reads and writes per byte, and the
        // origin's socket drains faster. Small bodies never grow the buffers.
        let chunk = match small_rest {
            // The held bytes share `pending`'s buffer: asking for only what is missing keeps
            // the read in that buffer's free tail when it fits.
            Some(rest) => rest,
            None if moved >= LARGE_BODY_AFTER_BYTES => LARGE_READ_CHUNK_BYTES,
            None => READ_CHUNK_BYTES,
        };
        let failed = match read_more(src, pending, chunk, timers, read_timeout).await {
            Ok(0) => {
                if matches!(progress, Progress::UntilEof) {
                    if encode == Encode::Chunked {
                        out.extend_from_slice(LAST_CHUNK);
                    }
                    send(dst, out, &mut held).await.map_err(PumpError::Write)?;
                    return Ok(moved);
                }
                PumpError::ReadEof
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => PumpError::ReadTimeout,
            Err(e) => PumpError::ReadIo(e),
        };
        // What was held back for a small rest still goes out (the destination sees the body
        // cut where the source failed, as without the hold-back).
        if small_rest.is_some() && !(out.is_empty() && held.is_empty()) {
            let _ = send(dst, out, &mut held).await;
        }
        return Err(failed);
    }
}

/// Moves `take` raw body bytes from the front of `pending` to the output: as a view appended
/// to `held` (zero-copy sinks; contiguous views merge without copying) or copied into `out`.
fn consume(
    pending: &mut BytesMut,
    take: usize,
    zero_copy: bool,
    held: &mut BytesMut,
    out: &mut Vec<u8>,
    encode: Encode,
) {
    if zero_copy {
        held.unsplit(pending.split_to(take));
    } else {
        emit(out, encode, &pending[..take]);
        pending.advance(take);
    }
}

/// Sends `out` and then the held body bytes, leaving both empty.
async fn send<W: BodySink>(dst: &mut W, out: &mut Vec<u8>, held: &mut BytesMut) -> io::Result<()> {
    if held.is_empty() {
        dst.take(out).await
    } else {
        dst.take_with(out, std::mem::take(held)).await
    }
}

/// Appends body bytes to `out` in the destination's framing.
fn emit(out: &mut Vec<u8>, encode: Encode, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if encode == Encode::Chunked {
        write_chunk_header(data.len(), out);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes head + body through `take_with` into a socket whose peer reads nothing yet, so
    /// the writev comes back short: the buffers are full before it starts and the head (8 MiB)
    /// is longer than one write takes (short inside the head), and the body is larger than
    /// every buffer on the way (short inside the body).
    /// The peer must receive the filler, head and body exactly. `block_on` runs the write on
    /// one driver.
    fn short_writes_resume_exactly(
        block_on: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>),
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        // Fill every buffer between the two sockets before the write starts.
        client.set_nonblocking(true).unwrap();
        let filler = pattern(64 * 1024, 1);
        let mut filled = Vec::new();
        loop {
            match (&client).write(&filler) {
                Ok(n) => filled.extend_from_slice(&filler[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        let head = pattern(8 << 20, 2);
        let body = pattern(24 << 20, 3);
        let mut expected = filled;
        expected.extend_from_slice(&head);
        expected.extend_from_slice(&body);
        let want = expected.len();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut got = vec![0u8; want];
            peer.read_exact(&mut got).unwrap();
            got
        });
        block_on(Box::pin(async move {
            let mut stream = monoio::net::TcpStream::from_std(client).unwrap();
            let mut out = head;
            stream
                .take_with(&mut out, BytesMut::from(&body[..]))
                .await
                .unwrap();
            assert!(out.is_empty());
        }));
        let got = reader.join().unwrap();
        assert!(
            got == expected,
            "bytes differ from the first one at {:?}",
            { got.iter().zip(&expected).position(|(a, b)| a != b) }
        );
    }

    #[test]
    fn short_writes_resume_exactly_legacy() {
        short_writes_resume_exactly(|write| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .expect("a monoio runtime")
                .block_on(write)
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn short_writes_resume_exactly_io_uring() {
        if monoio::utils::detect_uring() {
            short_writes_resume_exactly(|write| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .build()
                    .expect("a monoio runtime")
                    .block_on(write)
            });
        }
    }
}
