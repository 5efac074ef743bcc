//! Blocking, strict HTTP/1.1 message reading shared by the mock origin and the raw client.
//!
//! `Wire` buffers a stream and hands out whole heads, exact-length bodies, chunked bodies and
//! close-delimited bodies. It is deliberately strict (CRLF only, hex-only chunk sizes) so that a
//! malformed message written by sluice fails the test instead of being silently accepted. It knows
//! nothing about requests or responses: `framing` decides which body reader applies.

use std::io::{self, ErrorKind, Read, Write};

/// Largest head either side accepts before calling the peer broken.
const MAX_HEAD_BYTES: usize = 1 << 20;
/// Bytes asked from the socket per read call.
const READ_CHUNK: usize = 64 * 1024;

/// How a message body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Read until the peer closes (responses only).
    Eof,
}

/// A decoded chunked body.
#[derive(Debug, Default)]
pub struct Chunked {
    pub body: Vec<u8>,
    /// Raw trailer section (header lines without the final empty line).
    pub trailers: Vec<u8>,
}

pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    /// Every byte consumed since the last `take_captured`, for raw-byte assertions.
    captured: Vec<u8>,
}

impl<S: Read + Write> Wire<S> {
    pub fn new(stream: S) -> Self {
        Wire {
            stream,
            buf: Vec::new(),
            captured: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream back; bytes still buffered are lost.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Bytes read from the socket but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Consumed bytes since the previous call (what a message looked like on the wire).
    pub fn take_captured(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.captured)
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)?;
        self.stream.flush()
    }

    /// One read from the socket; returns 0 at end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = vec![0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        let out: Vec<u8> = self.buf.drain(..n).collect();
        self.captured.extend_from_slice(&out);
        out
    }

    /// Reads until at least `n` bytes are buffered (or the stream ends).
    pub fn read_some(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                break;
            }
        }
        Ok(&self.buf)
    }

    /// A complete head including the final CRLFCRLF; `None` on a clean end of stream before
    /// any byte of a new message.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut searched = 0;
        loop {
            if let Some(i) = find(&self.buf[searched..], b"\r\n\r\n") {
                return Ok(Some(self.consume(searched + i + 4)));
            }
            searched = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid("head larger than 1 MiB"));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!(
                            "stream ended inside a head: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ))
                };
            }
        }
    }

    pub fn read_exact_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("stream ended after {} of {} body bytes", self.buf.len(), n),
                ));
            }
        }
        Ok(self.consume(n))
    }

    /// One CRLF-terminated line, returned without the CRLF. A bare LF or CR is an error.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.consume(i + 1);
                line.pop();
                if line.pop() != Some(b'\r') {
                    return Err(invalid("line ends with a bare LF"));
                }
                if line.contains(&b'\r') {
                    return Err(invalid("bare CR inside a line"));
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid("line longer than 1 MiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "stream ended inside a line",
                ));
            }
        }
    }

    /// A whole chunked body, decoded, with the trailer section.
    pub fn read_chunked(&mut self) -> io::Result<Chunked> {
        let mut out = Chunked::default();
        loop {
            let line = self.read_line()?;
            let size = parse_chunk_size(&line)?;
            if size == 0 {
                loop {
                    let trailer = self.read_line()?;
                    if trailer.is_empty() {
                        return Ok(out);
                    }
                    out.trailers.extend_from_slice(&trailer);
                    out.trailers.extend_from_slice(b"\r\n");
                }
            }
            let size = usize::try_from(size).map_err(|_| invalid("chunk size too large"))?;
            let data = self.read_exact_vec(size)?;
            out.body.extend_from_slice(&data);
            if self.read_exact_vec(2)? != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    }

    /// Everything until the peer closes. A reset counts as the end of the stream.
    pub fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        let n = self.buf.len();
        Ok(self.consume(n))
    }

    pub fn read_body(&mut self, framing: Framing) -> io::Result<(Vec<u8>, Vec<u8>)> {
        match framing {
            Framing::None => Ok((Vec::new(), Vec::new())),
            Framing::Length(n) => {
                let n = usize::try_from(n).map_err(|_| invalid("Content-Length too large"))?;
                Ok((self.read_exact_vec(n)?, Vec::new()))
            }
            Framing::Chunked => {
                let c = self.read_chunked()?;
                Ok((c.body, c.trailers))
            }
            Framing::Eof => Ok((self.read_to_eof()?, Vec::new())),
        }
    }
}

/// Strict chunk-size line: hex digits, optional `;extensions`, optional spaces/tabs before `;`.
pub fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let size_part = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let size_part = trim_ows(size_part);
    if size_part.is_empty() || !size_part.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid(format!(
            "bad chunk-size line {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let text = std::str::from_utf8(size_part).map_err(|_| invalid("chunk size not ASCII"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("chunk size overflows u64"))
}

pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Header list as owned (name, raw value) pairs, in wire order.
pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect()
}

pub fn values<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Body framing of a message from its headers (RFC 9112 section 6), strict: CL together with
/// TE, several different Content-Lengths, or a TE whose last coding is not `chunked` are errors.
/// `eof_allowed` is true for responses, where a body without CL/TE runs to the end of stream.
pub fn framing_from_headers(
    headers: &[(String, Vec<u8>)],
    eof_allowed: bool,
) -> io::Result<Framing> {
    let te: Vec<&[u8]> = values(headers, "transfer-encoding").collect();
    let cl: Vec<&[u8]> = values(headers, "content-length").collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(invalid("both Transfer-Encoding and Content-Length"));
        }
        let joined = te
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let last = joined.rsplit(',').next().unwrap_or("").trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked)
        } else if eof_allowed {
            Ok(Framing::Eof)
        } else {
            Err(invalid(format!(
                "request Transfer-Encoding {joined:?} does not end in chunked"
            )))
        };
    }
    if let Some(first) = cl.first() {
        if cl.iter().any(|v| v != first) {
            return Err(invalid("several different Content-Length headers"));
        }
        let text = std::str::from_utf8(first).map_err(|_| invalid("Content-Length not ASCII"))?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("bad Content-Length {text:?}")));
        }
        return text
            .parse()
            .map(Framing::Length)
            .map_err(|_| invalid("Content-Length overflows"));
    }
    Ok(if eof_allowed {
        Framing::Eof
    } else {
        Framing::None
    })
}
