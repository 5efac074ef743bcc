//! The chunked transfer coding (RFC 9112 section 7.1): a strict, incremental decoder and the two
//! small encoding helpers the body relay needs.
//!
//! The decoder is sans-IO: it is fed whatever bytes have arrived and reports data ranges inside
//! them, so body bytes are relayed without copying. It owns nothing but its state; the caller
//! keeps the buffer. It produces the same data and the same verdict however the input is split.
//!
//! Strict means: hex sizes without whitespace (checked against overflow), extensions only as
//! `;name[=token|quoted-string]` without whitespace, CRLF (never a bare CR or LF) after every
//! size line, data part and trailer line, and trailer fields that are valid field lines. Those
//! are the places where lenient parsers have disagreed in published smuggling attacks. Trailer
//! fields are consumed and dropped (sluice never forwards trailers).

use std::fmt;
use std::ops::Range;

use super::is_tchar;

/// Longest chunk-size line accepted, size digits and extensions included, CRLF excluded, in bytes.
/// Real senders use a few bytes; extensions are almost never sent.
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// Largest trailer section accepted, in bytes (all trailer lines with their CRLFs).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// The last chunk with an empty trailer section: ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What follows the data of every chunk.
pub const CHUNK_DATA_END: &[u8] = b"\r\n";

/// A u64 has 16 hex digits; a 17th significant digit overflows.
const HEX_DIGITS_PER_U64: u32 = 16;

/// One decoder event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes: this range of the input passed to `decode`.
    Data(Range<usize>),
    /// All input consumed; more bytes are needed.
    NeedMore,
    /// The body ended (last chunk and trailer section consumed).
    Done,
}

/// Why a chunked body was refused. The connection cannot be reused after any of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// A byte other than a hex digit, `;` or CR in the size (this includes whitespace).
    InvalidSize,
    /// The size does not fit in a u64.
    SizeOverflow,
    /// A malformed chunk extension.
    InvalidExtension,
    /// A chunk-size line longer than [`MAX_CHUNK_LINE_BYTES`].
    LineTooLong,
    /// A CR not followed by LF, or an LF without CR, where a line must end.
    BadLineEnding,
    /// The data part was not followed by CRLF.
    MissingDataCrlf,
    /// A malformed trailer field line.
    InvalidTrailer,
    /// A trailer section longer than [`MAX_TRAILER_BYTES`].
    TrailerTooLarge,
}

impl ChunkedError {
    pub fn message(&self) -> &'static str {
        match self {
            ChunkedError::InvalidSize => "invalid character in chunk size",
            ChunkedError::SizeOverflow => "chunk size overflows 64 bits",
            ChunkedError::InvalidExtension => "invalid chunk extension",
            ChunkedError::LineTooLong => "chunk size line too long",
            ChunkedError::BadLineEnding => "chunk line not terminated by CRLF",
            ChunkedError::MissingDataCrlf => "chunk data not followed by CRLF",
            ChunkedError::InvalidTrailer => "invalid trailer field",
            ChunkedError::TrailerTooLarge => "trailer section too large",
        }
    }
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ChunkedError {}

/// Where inside a chunk extension (`;name=value`) the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// Just after `;`: a name must start.
    NameStart,
    Name,
    /// Just after `=`: a token or a quoted string must start.
    ValueStart,
    Token,
    Quoted,
    /// After a backslash inside a quoted string.
    QuotedPair,
    /// After the closing quote: `;` or CR.
    AfterQuoted,
}

/// Where inside a trailer field line the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` counts significant (non-leading-zero) digits seen,
    /// `any` whether any digit was seen.
    Size {
        size: u64,
        digits: u32,
        any: bool,
        line: usize,
    },
    /// Inside the extensions of a size line.
    Extension {
        size: u64,
        ext: Ext,
        line: usize,
    },
    /// Saw the CR that ends the size line.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// Data done: expect CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the empty line ending the body).
    TrailerLineStart {
        total: usize,
    },
    TrailerField {
        field: Field,
        total: usize,
    },
    /// Saw the CR ending a trailer field line.
    TrailerFieldLf {
        total: usize,
    },
    /// Saw the CR of the final empty line.
    FinalLf,
    Done,
    /// An error was returned; every later call returns it again.
    Failed(ChunkedError),
}

/// Result of feeding one byte to a line state.
enum Step {
    Continue,
    Done,
}

/// Strict incremental decoder for a chunked body. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: Self::size_start(),
        }
    }

    fn size_start() -> State {
        State::Size {
            size: 0,
            digits: 0,
            any: false,
            line: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume from `input`; returns (consumed, event). A Data range lies inside
    /// `input[..consumed]`. Call again with the rest until `NeedMore` (all consumed, need more
    /// bytes) or `Done` (consumed = bytes up to and including the final CRLF after trailers;
    /// anything after belongs to the next message). After `Done`, returns `(0, Done)`.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Chunk), ChunkedError> {
        match self.state {
            State::Done => return Ok((0, Chunk::Done)),
            State::Failed(e) => return Err(e),
            _ => {}
        }
        let mut pos = 0;
        while pos < input.len() {
            if let State::Data { remaining } = self.state {
                let available = input.len() - pos;
                // If remaining does not fit in usize it is larger than `available` anyway.
                let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                let start = pos;
                pos += take;
                return Ok((pos, Chunk::Data(start..pos)));
            }
            let b = input[pos];
            pos += 1;
            match self.step(b) {
                Ok(Step::Continue) => {}
                Ok(Step::Done) => return Ok((pos, Chunk::Done)),
                Err(e) => {
                    self.state = State::Failed(e);
                    return Err(e);
                }
            }
        }
        Ok((pos, Chunk::NeedMore))
    }

    /// Feed one byte outside of chunk data.
    fn step(&mut self, b: u8) -> Result<Step, ChunkedError> {
        self.state = match self.state {
            State::Size {
                size,
                digits,
                any,
                line,
            } => on_size(b, size, digits, any, line)?,
            State::Extension { size, ext, line } => on_extension(b, size, ext, line)?,
            State::SizeLf { size } => on_size_lf(b, size)?,
            State::DataCr => expect(b, b'\r', State::DataLf, ChunkedError::MissingDataCrlf)?,
            State::DataLf => expect(b, b'\n', Self::size_start(), ChunkedError::MissingDataCrlf)?,
            State::TrailerLineStart { total } => on_trailer_line_start(b, total)?,
            State::TrailerField { field, total } => on_trailer_field(b, field, total)?,
            State::TrailerFieldLf { total } => expect(
                b,
                b'\n',
                State::TrailerLineStart {
                    total: add_trailer(total)?,
                },
                ChunkedError::BadLineEnding,
            )?,
            State::FinalLf => expect(b, b'\n', State::Done, ChunkedError::BadLineEnding)?,
            // Handled by `decode` before any byte is fed here.
            State::Data { .. } | State::Done => return Ok(Step::Done),
            State::Failed(e) => return Err(e),
        };
        Ok(if self.state == State::Done {
            Step::Done
        } else {
            Step::Continue
        })
    }
}

fn expect(b: u8, want: u8, next: State, err: ChunkedError) -> Result<State, ChunkedError> {
    if b == want {
        Ok(next)
    } else {
        Err(err)
    }
}

/// Count `b` towards the size-line length (the CR that ends the line does not count).
fn next_line_len(line: usize, b: u8) -> Result<usize, ChunkedError> {
    if b == b'\r' {
        return Ok(line);
    }
    match line.checked_add(1) {
        Some(n) if n <= MAX_CHUNK_LINE_BYTES => Ok(n),
        _ => Err(ChunkedError::LineTooLong),
    }
}

fn add_trailer(total: usize) -> Result<usize, ChunkedError> {
    match total.checked_add(1) {
        Some(n) if n <= MAX_TRAILER_BYTES => Ok(n),
        _ => Err(ChunkedError::TrailerTooLarge),
    }
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

fn on_size(b: u8, size: u64, digits: u32, any: bool, line: usize) -> Result<State, ChunkedError> {
    let line = next_line_len(line, b)?;
    if let Some(v) = hex_value(b) {
        let digits = if size == 0 && v == 0 {
            digits
        } else {
            digits + 1
        };
        if digits > HEX_DIGITS_PER_U64 {
            return Err(ChunkedError::SizeOverflow);
        }
        let size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .ok_or(ChunkedError::SizeOverflow)?;
        return Ok(State::Size {
            size,
            digits,
            any: true,
            line,
        });
    }
    if !any {
        return Err(ChunkedError::InvalidSize);
    }
    match b {
        b';' => Ok(State::Extension {
            size,
            ext: Ext::NameStart,
            line,
        }),
        b'\r' => Ok(State::SizeLf { size }),
        b'\n' => Err(ChunkedError::BadLineEnding),
        _ => Err(ChunkedError::InvalidSize),
    }
}

/// `;name[=token|quoted-string]`, repeated. No whitespace (llhttp strict agrees).
fn on_extension(b: u8, size: u64, ext: Ext, line: usize) -> Result<State, ChunkedError> {
    let line = next_line_len(line, b)?;
    let next = |ext| Ok(State::Extension { size, ext, line });
    let end_of_line = |b: u8| match b {
        b'\r' => Some(Ok(State::SizeLf { size })),
        b'\n' => Some(Err(ChunkedError::BadLineEnding)),
        _ => None,
    };
    match ext {
        Ext::NameStart => {
            if is_tchar(b) {
                next(Ext::Name)
            } else {
                Err(ChunkedError::InvalidExtension)
            }
        }
        Ext::Name => match b {
            _ if is_tchar(b) => next(Ext::Name),
            b';' => next(Ext::NameStart),
            b'=' => next(Ext::ValueStart),
            _ => end_of_line(b).unwrap_or(Err(ChunkedError::InvalidExtension)),
        },
        Ext::ValueStart => match b {
            b'"' => next(Ext::Quoted),
            _ if is_tchar(b) => next(Ext::Token),
            _ => Err(ChunkedError::InvalidExtension),
        },
        Ext::Token => match b {
            _ if is_tchar(b) => next(Ext::Token),
            b';' => next(Ext::NameStart),
            _ => end_of_line(b).unwrap_or(Err(ChunkedError::InvalidExtension)),
        },
        Ext::Quoted => match b {
            b'"' => next(Ext::AfterQuoted),
            b'\\' => next(Ext::QuotedPair),
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => next(Ext::Quoted),
            _ => Err(ChunkedError::InvalidExtension),
        },
        Ext::QuotedPair => match b {
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => next(Ext::Quoted),
            _ => Err(ChunkedError::InvalidExtension),
        },
        Ext::AfterQuoted => match b {
            b';' => next(Ext::NameStart),
            _ => end_of_line(b).unwrap_or(Err(ChunkedError::InvalidExtension)),
        },
    }
}

fn on_size_lf(b: u8, size: u64) -> Result<State, ChunkedError> {
    if b != b'\n' {
        return Err(ChunkedError::BadLineEnding);
    }
    Ok(if size == 0 {
        State::TrailerLineStart { total: 0 }
    } else {
        State::Data { remaining: size }
    })
}

/// A trailer line starts with a field name, or is the empty line that ends the body.
fn on_trailer_line_start(b: u8, total: usize) -> Result<State, ChunkedError> {
    match b {
        b'\r' => Ok(State::FinalLf),
        b'\n' => Err(ChunkedError::BadLineEnding),
        // Includes SP/HTAB (obs-fold) and an empty name.
        _ if !is_tchar(b) => Err(ChunkedError::InvalidTrailer),
        _ => Ok(State::TrailerField {
            field: Field::Name,
            total: add_trailer(total)?,
        }),
    }
}

fn on_trailer_field(b: u8, field: Field, total: usize) -> Result<State, ChunkedError> {
    let total = add_trailer(total)?;
    match (field, b) {
        (Field::Name, b':') => Ok(State::TrailerField {
            field: Field::Value,
            total,
        }),
        (Field::Name, _) if is_tchar(b) => Ok(State::TrailerField {
            field: Field::Name,
            total,
        }),
        // Whitespace before the colon, or any other non-token byte.
        (Field::Name, _) => Err(ChunkedError::InvalidTrailer),
        (Field::Value, b'\r') => Ok(State::TrailerFieldLf { total }),
        (Field::Value, b'\n') => Err(ChunkedError::BadLineEnding),
        (Field::Value, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => Ok(State::TrailerField {
            field: Field::Value,
            total,
        }),
        (Field::Value, _) => Err(ChunkedError::InvalidTrailer),
    }
}

/// Append a chunk header for a data part of `len` bytes: lowercase hex, then CRLF.
pub fn write_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // usize has at most 16 hex digits on 64-bit targets.
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in the given pieces; returns the data and the outcome:
    /// Ok(Some(consumed)) when done, Ok(None) when more is needed.
    type Run = (Vec<u8>, Result<Option<usize>, ChunkedError>);

    fn run(pieces: &[&[u8]]) -> Run {
        run_with_state(pieces).0
    }

    /// Like `run`, also returning the decoder's final state.
    fn run_with_state(pieces: &[&[u8]]) -> (Run, ChunkedDecoder) {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut total = 0;
        for piece in pieces {
            let mut rest: &[u8] = piece;
            loop {
                match d.decode(rest) {
                    Err(e) => return ((data, Err(e)), d),
                    Ok((n, Chunk::Data(r))) => {
                        assert!(r.end <= n);
                        data.extend_from_slice(&rest[r]);
                        total += n;
                        rest = &rest[n..];
                    }
                    Ok((n, Chunk::NeedMore)) => {
                        assert_eq!(n, rest.len());
                        total += n;
                        break;
                    }
                    Ok((n, Chunk::Done)) => {
                        assert!(d.is_done());
                        return ((data, Ok(Some(total + n))), d);
                    }
                }
            }
        }
        ((data, Ok(None)), d)
    }

    fn whole(input: &[u8]) -> Run {
        run(&[input])
    }

    /// Every two-way split and a byte-at-a-time feed give the same data and verdict.
    fn assert_split_invariant(input: &[u8]) {
        let want = run_with_state(&[input]);
        for i in 0..=input.len() {
            let got = run_with_state(&[&input[..i], &input[i..]]);
            assert_eq!(
                got,
                want,
                "split at {i} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run_with_state(&bytes),
            want,
            "one byte at a time: {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn simple_body() {
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        let (data, res) = whole(input);
        assert_eq!(data, b"hello world");
        assert_eq!(res, Ok(Some(input.len() - 4)));
    }

    #[test]
    fn sizes() {
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n").0, b"0123456789");
        assert_eq!(whole(b"a\r\n0123456789\r\n000\r\n\r\n").1, Ok(Some(22)));
        assert_eq!(
            whole(b"0010\r\n0123456789abcdef\r\n0\r\n\r\n").0,
            b"0123456789abcdef"
        );
        // Leading zeros do not count towards the 16-digit limit.
        assert_eq!(whole(b"00000000000000000000001\r\nx\r\n0\r\n\r\n").0, b"x");
        // 16 significant digits parse (then wait for data); 17 overflow.
        assert_eq!(whole(b"ffffffffffffffff\r\n").1, Ok(None));
        assert_eq!(
            whole(b"10000000000000000\r\n").1,
            Err(ChunkedError::SizeOverflow)
        );
        for bad in [
            &b"\r\n"[..],
            b";a\r\n",
            b"5 ;a\r\n",
            b"x\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x1\r\n",
            b" 1\r\n",
            b"1 \r\n",
            b"1\t\r\n",
            b"a \r\n",
        ] {
            assert_eq!(
                whole(bad).1,
                Err(ChunkedError::InvalidSize),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn line_endings() {
        for bad in [
            &b"1\nx\r\n0\r\n\r\n"[..],
            b"1\rx",
            b"3 \n  \r\nfoo\r\n",
            b"1;a\nx",
            b"1;a=\"b\"\n",
        ] {
            let res = whole(bad).1;
            assert!(res.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(whole(b"1\r\nxy").1, Err(ChunkedError::MissingDataCrlf));
        assert_eq!(
            whole(b"1\r\nx\n0\r\n\r\n").1,
            Err(ChunkedError::MissingDataCrlf)
        );
        assert_eq!(
            whole(b"1\r\nx\r0\r\n\r\n").1,
            Err(ChunkedError::MissingDataCrlf)
        );
        assert_eq!(whole(b"0\r\n\n").1, Err(ChunkedError::BadLineEnding));
        assert_eq!(whole(b"0\r\n\rX").1, Err(ChunkedError::BadLineEnding));
        assert_eq!(
            whole(b"0\r\nA: b\n\r\n").1,
            Err(ChunkedError::BadLineEnding)
        );
    }

    #[test]
    fn extensions() {
        for good in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b;c;d=e\r\nhello\r\n0;x=y\r\n\r\n",
            b"5;ilovew3=\"I \\\"love\\\"; \\\\extensions\\\\\";somuchlove=\"x\";blah;foo=bar\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"\xff\t \"\r\nhello\r\n0\r\n\r\n",
        ] {
            let (data, res) = whole(good);
            assert_eq!((data.as_slice(), res), (&b"hello"[..], Ok(Some(good.len()))), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"5;\r\nhello\r\n0\r\n\r\n"[..],
            b"5; a\r\n",
            b"5;a =b\r\n",
            b"5;a= b\r\n",
            b"5;a=\r\n",
            b"5;=b\r\n",
            b"5;;a\r\n",
            b"5;a=b c\r\n",
            b"5;a=\"b\r\n",
            b"5;a=\"b\"c\r\n",
            b"5;a=\"b\x01\"\r\n",
            b"5;a=\"b\\\x01\"\r\n",
            b"5;a@b\r\n",
        ] {
            let res = whole(bad).1;
            assert!(
                matches!(res, Err(ChunkedError::InvalidExtension)),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                res
            );
        }
    }

    #[test]
    fn line_length_cap() {
        let mut line = b"1;a=".to_vec();
        line.resize(MAX_CHUNK_LINE_BYTES, b'b');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(whole(&line).0, b"x");
        let mut long = b"1;a=".to_vec();
        long.resize(MAX_CHUNK_LINE_BYTES + 1, b'b');
        long.extend_from_slice(b"\r\n");
        assert_eq!(whole(&long).1, Err(ChunkedError::LineTooLong));
        let zeros = vec![b'0'; MAX_CHUNK_LINE_BYTES + 1];
        assert_eq!(whole(&zeros).1, Err(ChunkedError::LineTooLong));
    }

    #[test]
    fn trailers() {
        let input =
            b"5\r\nhello\r\n0\r\nVary: *\r\nContent-Type: text/plain\r\nX-Empty:\r\n\r\nNEXT";
        let (data, res) = whole(input);
        assert_eq!(data, b"hello");
        assert_eq!(res, Ok(Some(input.len() - 4)));
        for bad in [
            &b"0\r\n Folded: x\r\n\r\n"[..],
            b"0\r\nA: b\r\n c\r\n\r\n",
            b"0\r\nA : b\r\n\r\n",
            b"0\r\n: b\r\n\r\n",
            b"0\r\nA@: b\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nA: b\x00\r\n\r\n",
            b"0\r\nA: b\x7f\r\n\r\n",
        ] {
            assert_eq!(
                whole(bad).1,
                Err(ChunkedError::InvalidTrailer),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = b"0\r\n".to_vec();
        while big.len() < MAX_TRAILER_BYTES + 100 {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(whole(&big).1, Err(ChunkedError::TrailerTooLarge));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b"1\r\nxy"), Ok((4, Chunk::Data(3..4))));
        assert_eq!(d.decode(b"y"), Err(ChunkedError::MissingDataCrlf));
        assert_eq!(
            d.decode(b"\r\n0\r\n\r\n"),
            Err(ChunkedError::MissingDataCrlf)
        );
        assert!(!d.is_done());
    }

    #[test]
    fn done_is_sticky() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b"0\r\n\r\nGET"), Ok((5, Chunk::Done)));
        assert!(d.is_done());
        assert_eq!(d.decode(b"GET"), Ok((0, Chunk::Done)));
        assert_eq!(d.decode(b""), Ok((0, Chunk::Done)));
        let mut d = ChunkedDecoder::default();
        assert_eq!(d.decode(b""), Ok((0, Chunk::NeedMore)));
        assert!(!d.is_done());
    }

    #[test]
    fn data_ranges_are_relative_to_input() {
        let mut d = ChunkedDecoder::new();
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(d.decode(input), Ok((6, Chunk::Data(3..6))));
        assert_eq!(d.decode(&input[6..]), Ok((7, Chunk::Data(5..7))));
        assert_eq!(d.decode(&input[13..]), Ok((7, Chunk::Done)));
        // Large declared sizes hand out what is there.
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.decode(b"ffffffffffffffff\r\nab"),
            Ok((20, Chunk::Data(18..20)))
        );
        assert_eq!(d.decode(b"cd"), Ok((2, Chunk::Data(0..2))));
    }

    #[test]
    fn split_invariance() {
        for input in [
            &b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT"[..],
            b"1e\r\nall your base are belong to us\r\n0\r\n\r\n",
            b"5;ilovew3=\"I love; extensions\";somuchlove=\"x\";blah;foo=bar\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nVary: *\r\nContent-Type: text/plain\r\n\r\nX",
            b"000\r\n\r\n",
            b"3\r\nfoo\r\n",
            b"2 erfrferferf\r\naa\r\n0 rrrr\r\n\r\n",
            b"2;\r\naa\r\n0\r\n\r\n",
            b"25  \r\nThis is the data in the first chunk\r\n",
            b"5\r\nhello\r\n0\r\n A: b\r\n\r\n",
            b"10000000000000000\r\n",
            b"5\r\nhelloX",
            b"5\r\nhello\r\n0\r\n\r",
        ] {
            assert_split_invariant(input);
        }
    }

    #[test]
    fn chunk_header_writer() {
        let mut out = Vec::new();
        for (n, want) in [
            (0usize, &b"0\r\n"[..]),
            (1, b"1\r\n"),
            (10, b"a\r\n"),
            (255, b"ff\r\n"),
            (4096, b"1000\r\n"),
        ] {
            out.clear();
            write_chunk_header(n, &mut out);
            assert_eq!(out, want);
        }
        out.clear();
        write_chunk_header(usize::MAX, &mut out);
        assert_eq!(out.len(), 2 * std::mem::size_of::<usize>() + 2);
        // Round trip through the decoder.
        let mut body = Vec::new();
        write_chunk_header(3, &mut body);
        body.extend_from_slice(b"abc");
        body.extend_from_slice(CHUNK_DATA_END);
        body.extend_from_slice(LAST_CHUNK);
        assert_eq!(whole(&body), (b"abc".to_vec(), Ok(Some(body.len()))));
    }
}
