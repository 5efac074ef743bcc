//! Invariant: `ChunkedDecoder` never panics, and how the body arrives does not matter. Fed the
//! body whole, split in two at a fuzzer-chosen offset, and one byte at a time, it gives the same
//! decoded bytes and the same verdict: the same error, or "needs more", or done after the same
//! number of consumed bytes. Along the way every `Data` range lies inside the consumed part of
//! the slice it was given, `NeedMore` consumes the whole slice, and a finished decoder keeps
//! answering `(0, Done)`.
//!
//! Input layout: two bytes (little-endian u16) choose the split offset (modulo the body length
//! plus one); the rest is the body. `fuzz/seed_corpus.py` writes seeds in this layout.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::chunked::{Chunk, ChunkedDecoder, ChunkedError};

/// Bytes of the input taken by the split offset.
const SPLIT_PREFIX_BYTES: usize = 2;

/// The decoded bytes, and `Ok(Some(consumed))` when the body ended, `Ok(None)` when it needs
/// more bytes, or the error.
type Outcome = (Vec<u8>, Result<Option<usize>, ChunkedError>);

fuzz_target!(|input: &[u8]| {
    let Some((split, body)) = input.split_first_chunk::<SPLIT_PREFIX_BYTES>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*split)) % (body.len() + 1);

    let whole = run(&[body]);
    let halves = run(&[&body[..split], &body[split..]]);
    assert_eq!(
        halves, whole,
        "split at {split} differs from the whole body"
    );
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let one_by_one = run(&bytes);
    assert_eq!(
        one_by_one, whole,
        "byte-at-a-time feed differs from the whole body"
    );

    if let (_, Ok(Some(consumed))) = &whole {
        assert!(*consumed <= body.len());
    }
});

/// Feed `pieces` in order, each until the decoder has consumed it, stopping at the end of the
/// body or at an error.
fn run(pieces: &[&[u8]]) -> Outcome {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut consumed = 0usize;
    for piece in pieces {
        let mut rest: &[u8] = piece;
        loop {
            match decoder.decode(rest) {
                Err(e) => {
                    assert_eq!(decoder.decode(b"0\r\n\r\n"), Err(e), "error not sticky");
                    return (data, Err(e));
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
                            data.extend_from_slice(&rest[range]);
                        }
                        Chunk::NeedMore => {
                            assert_eq!(n, rest.len(), "NeedMore left bytes unconsumed");
                            consumed += n;
                            break;
                        }
                        Chunk::Done => {
                            assert!(decoder.is_done());
                            assert_eq!(decoder.decode(b"1\r\nx\r\n"), Ok((0, Chunk::Done)));
                            return (data, Ok(Some(consumed + n)));
                        }
                    }
                    consumed += n;
                    rest = &rest[n..];
                }
            }
        }
    }
    (data, Ok(None))
}
