//! The `chunked` oracle: the chunked decoder does not care how its input is split, and what it
//! decodes survives the proxy's re-encoding.
//!
//! Invariant: `ChunkedDecoder` never panics, and how the body arrives does not matter. Fed the
//! body whole, split in two at a chosen offset, split in two at *every* offset (bodies up to
//! [`EVERY_SPLIT_MAX_BYTES`]), and one byte at a time, it gives the same decoded bytes and the
//! same verdict: the same error, or "needs more", or done after the same number of consumed
//! bytes. Along the way every `Data` range lies inside the consumed part of the slice it was
//! given and is not empty, `NeedMore` consumes the whole slice, an error is sticky and a finished
//! decoder keeps answering `(0, Done)`. Re-encoding the `Data` events as the body pump does (one
//! chunk each, `write_chunk_header`, then `LAST_CHUNK`) decodes again to the same bytes and
//! ends exactly at its end.
//!
//! Input layout: two bytes (little-endian u16) choose the split offset (modulo the body length
//! plus one); the rest is the body. `fuzz/seed_corpus.py` writes seeds in this layout.

use crate::http::chunked::{write_chunk_header, Chunk, ChunkedDecoder, ChunkedError, LAST_CHUNK};

use super::{decode_chunked_whole, ChunkedOutcome};

/// Bytes of the input taken by the split offset.
pub const SPLIT_PREFIX_BYTES: usize = 2;

/// Bodies up to this many bytes are also split in two at every offset (quadratic: kept small so
/// the fuzzer keeps its pace).
pub const EVERY_SPLIT_MAX_BYTES: usize = 128;

/// Runs every check of this oracle on `input` (split offset, then a chunked body).
pub fn check(input: &[u8]) {
    let Some((split, body)) = input.split_first_chunk::<SPLIT_PREFIX_BYTES>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*split)) % (body.len() + 1);

    let whole = run(&[body]);
    assert_eq!(
        whole.outcome(),
        decode_chunked_whole(body),
        "event loop and reference decoding differ"
    );
    let halves = run(&[&body[..split], &body[split..]]);
    assert_eq!(
        halves.outcome(),
        whole.outcome(),
        "split at {split} differs from the whole body"
    );
    if body.len() <= EVERY_SPLIT_MAX_BYTES {
        for at in 0..=body.len() {
            assert_eq!(
                run(&[&body[..at], &body[at..]]).outcome(),
                whole.outcome(),
                "split at {at} differs from the whole body"
            );
        }
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let one_by_one = run(&bytes);
    assert_eq!(
        one_by_one.outcome(),
        whole.outcome(),
        "byte-at-a-time feed differs from the whole body"
    );

    if let Ok(Some(consumed)) = whole.verdict {
        assert!(consumed <= body.len());
        for events in [&whole.events, &one_by_one.events] {
            check_reencoded(events, &whole.data);
        }
    }
}

/// One decoding run: the data, the verdict and the data events (the bytes of each `Data`).
struct Run {
    data: Vec<u8>,
    verdict: Result<Option<usize>, ChunkedError>,
    events: Vec<Vec<u8>>,
}

impl Run {
    fn outcome(&self) -> ChunkedOutcome {
        (self.data.clone(), self.verdict)
    }
}

/// Feeds `pieces` in order, each until the decoder has consumed it, stopping at the end of the
/// body or at an error.
fn run(pieces: &[&[u8]]) -> Run {
    let mut decoder = ChunkedDecoder::new();
    let mut out = Run {
        data: Vec::new(),
        verdict: Ok(None),
        events: Vec::new(),
    };
    let mut consumed = 0usize;
    for piece in pieces {
        let mut rest: &[u8] = piece;
        loop {
            match decoder.decode(rest) {
                Err(e) => {
                    assert_eq!(decoder.decode(LAST_CHUNK), Err(e), "error not sticky");
                    out.verdict = Err(e);
                    return out;
                }
                Ok((n, event)) => {
                    assert!(n <= rest.len(), "consumed more than given");
                    match event {
                        Chunk::Data(range) => {
                            assert!(
                                range.start <= range.end && range.end <= n,
                                "data range {range:?} outside the {n} consumed bytes"
                            );
                            assert!(!range.is_empty(), "empty data event (would loop forever)");
                            out.data.extend_from_slice(&rest[range.clone()]);
                            out.events.push(rest[range].to_vec());
                        }
                        Chunk::NeedMore => {
                            assert_eq!(n, rest.len(), "NeedMore left bytes unconsumed");
                            consumed += n;
                            break;
                        }
                        Chunk::Done => {
                            assert!(decoder.is_done());
                            assert_eq!(decoder.decode(b"1\r\nx\r\n"), Ok((0, Chunk::Done)));
                            out.verdict = Ok(Some(consumed + n));
                            return out;
                        }
                    }
                    consumed += n;
                    rest = &rest[n..];
                }
            }
        }
    }
    out
}

/// Re-encodes `events` as the body pump does and checks that it decodes back to `data`.
fn check_reencoded(events: &[Vec<u8>], data: &[u8]) {
    let mut encoded = Vec::new();
    for event in events {
        write_chunk_header(event.len(), &mut encoded);
        encoded.extend_from_slice(event);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(LAST_CHUNK);
    let (again, verdict) = decode_chunked_whole(&encoded);
    assert_eq!(
        verdict,
        Ok(Some(encoded.len())),
        "re-encoded body does not end at its end"
    );
    assert_eq!(again, data, "re-encoded body decodes differently");
}
