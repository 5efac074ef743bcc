//! Invariant checks shared by the fuzz targets in `fuzz/` and the regression test
//! `tests/fuzz_regression.rs`: one `check(input)` per target, which panics when an invariant
//! breaks and returns quietly otherwise (also for inputs that are simply refused).
//!
//! The fuzz targets are one line each (`fuzz_target!(|input| check(input))`), so libFuzzer and
//! `cargo test` run exactly the same oracle, and a crash file reproduces under `cargo test`
//! (see `fuzz/README.md`). This module owns the oracles only: it is test support, never on a
//! request's path, and nothing in the proxy calls it.
//!
//! - [`request_head`]: request head parsing, the upstream head edits, the allowlist.
//! - [`response_head`]: response head parsing and the client head edits.
//! - [`chunked`]: the chunked decoder gives the same result however its input is split, and
//!   its output re-encodes as the proxy re-encodes it.
//! - [`pipeline`]: one client connection through the proxy's per-request steps, over in-memory
//!   byte streams split at chosen points (not the socket loop itself; see its docs).
//!
//! Panicking is the point of this module (a panic is how libFuzzer and libtest see a broken
//! invariant), so its functions assert instead of returning errors; they never `unwrap` a value
//! derived from the input without saying which invariant it is.

pub mod chunked;
pub mod pipeline;
pub mod request_head;
pub mod response_head;

use crate::http::chunked::{Chunk, ChunkedDecoder, ChunkedError};
use crate::http::{BodyFraming, HeadLimits, MAX_HEADERS_CAP};

/// Limits for parsing a head sluice wrote: it may have grown past the default limits by the
/// fields sluice adds, and the field count is capped only by the httparse array.
/// The fields of `headers` (spans into `buf`) as `(name, value)` pairs, in order, leaving out
/// the names in `generated` (fields a writer makes itself; compared case-insensitively).
fn fields_except<'a>(
    headers: &[crate::http::HeaderSpan],
    buf: &'a [u8],
    generated: &[&[u8]],
) -> Vec<(&'a [u8], &'a [u8])> {
    headers
        .iter()
        .filter(|h| !is_generated(h.name.get(buf), generated))
        .map(|h| (h.name.get(buf), h.value.get(buf)))
        .collect()
}

/// Whether `name` is one of `generated` (case-insensitively).
fn is_generated(name: &[u8], generated: &[&[u8]]) -> bool {
    generated
        .iter()
        .any(|g| crate::http::eq_ignore_case(g, name))
}

fn roomy_limits(len: usize) -> HeadLimits {
    HeadLimits {
        max_head_bytes: len.saturating_add(1),
        max_headers: MAX_HEADERS_CAP,
    }
}

/// The prefix cuts every head check tries: the head minus its last byte, minus two bytes, half
/// of it, and its first byte. Every one of them must parse as incomplete.
fn prefix_cuts(head_len: usize) -> [usize; 4] {
    [
        head_len.saturating_sub(1),
        head_len.saturating_sub(2),
        head_len / 2,
        1,
    ]
}

/// What decoding a chunked body fed as one slice gives: the data, and `Ok(Some(consumed))`
/// when the body ended after `consumed` bytes, `Ok(None)` when it needs more, or the error.
pub type ChunkedOutcome = (Vec<u8>, Result<Option<usize>, ChunkedError>);

/// Decodes `body` fed whole (the reference every other decoding is compared with).
pub fn decode_chunked_whole(body: &[u8]) -> ChunkedOutcome {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut at = 0usize;
    loop {
        let rest = body.get(at..).unwrap_or(&[]);
        match decoder.decode(rest) {
            Err(e) => return (data, Err(e)),
            Ok((n, Chunk::Data(range))) => {
                data.extend_from_slice(rest.get(range).unwrap_or(&[]));
                at += n;
            }
            Ok((_, Chunk::NeedMore)) => return (data, Ok(None)),
            Ok((n, Chunk::Done)) => return (data, Ok(Some(at + n))),
        }
    }
}

/// A message body as a reader of `buf` sees it after the head: the decoded bytes, how many
/// bytes of `buf` it spans, and whether it is complete (`false`: the bytes ran out, or the
/// chunked framing is invalid). `CloseDelimited` takes everything and is complete.
pub struct Body {
    pub data: Vec<u8>,
    pub consumed: usize,
    pub complete: bool,
}

/// Reads one body framed as `framing` from the start of `buf`.
pub fn read_body(framing: BodyFraming, buf: &[u8]) -> Body {
    match framing {
        BodyFraming::None => Body {
            data: Vec::new(),
            consumed: 0,
            complete: true,
        },
        BodyFraming::Length(n) => {
            let take = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
            Body {
                data: buf[..take].to_vec(),
                consumed: take,
                complete: take as u64 == n,
            }
        }
        BodyFraming::Chunked => {
            let (data, verdict) = decode_chunked_whole(buf);
            match verdict {
                Ok(Some(consumed)) => Body {
                    data,
                    consumed,
                    complete: true,
                },
                Ok(None) | Err(_) => Body {
                    data,
                    consumed: buf.len(),
                    complete: false,
                },
            }
        }
        BodyFraming::CloseDelimited => Body {
            data: buf.to_vec(),
            consumed: buf.len(),
            complete: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_reader() {
        let b = read_body(BodyFraming::Length(3), b"abcd");
        assert_eq!(
            (&b.data[..], b.consumed, b.complete),
            (&b"abc"[..], 3, true)
        );
        let b = read_body(BodyFraming::Length(9), b"abcd");
        assert_eq!((b.consumed, b.complete), (4, false));
        let b = read_body(BodyFraming::Chunked, b"2\r\nab\r\n0\r\n\r\nGET");
        assert_eq!(
            (&b.data[..], b.consumed, b.complete),
            (&b"ab"[..], 12, true)
        );
        let b = read_body(BodyFraming::Chunked, b"2\r\nab\r\n");
        assert_eq!((&b.data[..], b.complete), (&b"ab"[..], false));
        assert!(!read_body(BodyFraming::Chunked, b"2\r\nabc").complete);
        let b = read_body(BodyFraming::CloseDelimited, b"xyz");
        assert_eq!((&b.data[..], b.complete), (&b"xyz"[..], true));
        assert_eq!(read_body(BodyFraming::None, b"xyz").consumed, 0);
    }
}
