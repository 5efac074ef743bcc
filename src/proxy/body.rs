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

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
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
    /// Takes everything in `out` and clears it.
    fn take(&mut self, out: &mut Vec<u8>) -> impl std::future::Future<Output = io::Result<()>>;
}

impl BodySink for monoio::net::TcpStream {
    async fn take(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        flush_out(self, out).await
    }
}

impl BodySink for crate::upstream::UpstreamStream {
    async fn take(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        flush_out(self, out).await
    }
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
    loop {
        // 1. Consume what is buffered.
        let done = match &mut progress {
            Progress::Length { remaining } => {
                let take = pending
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                if take > 0 {
                    emit(out, encode, &pending[..take]);
                    pending.advance(take);
                    *remaining -= take as u64;
                    moved += take as u64;
                }
                *remaining == 0
            }
            Progress::UntilEof => {
                let take = pending.len();
                if take > 0 {
                    emit(out, encode, &pending[..take]);
                    pending.advance(take);
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
            dst.take(out).await.map_err(PumpError::Write)?;
            return Ok(moved);
        }
        // 2. Send what was produced, then read more. When only a small rest of a sized body is
        // missing (a response just over one read), it is read first and sent with the rest:
        // one write instead of two.
        let small_rest = matches!(progress, Progress::Length { remaining }
            if remaining <= SMALL_REST_BYTES)
            && out.len() < LARGE_READ_CHUNK_BYTES;
        if !small_rest {
            dst.take(out).await.map_err(PumpError::Write)?;
        }
        // A large body is moved in larger pieces: fewer reads and writes per byte, and the
        // origin's socket drains faster. Small bodies never grow the buffers.
        let chunk = if moved >= LARGE_BODY_AFTER_BYTES {
            LARGE_READ_CHUNK_BYTES
        } else {
            READ_CHUNK_BYTES
        };
        let failed = match read_more(src, pending, chunk, timers, read_timeout).await {
            Ok(0) => {
                if matches!(progress, Progress::UntilEof) {
                    if encode == Encode::Chunked {
                        out.extend_from_slice(LAST_CHUNK);
                    }
                    dst.take(out).await.map_err(PumpError::Write)?;
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
        if small_rest && !out.is_empty() {
            let _ = dst.take(out).await;
        }
        return Err(failed);
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
