//! Raw HTTP/1.1 client for talking to sluice byte by byte.
//!
//! Requests are written exactly as the test spells them; responses are parsed strictly (one
//! framing per message, CRLF only) and returned with their raw bytes. Every socket has read and
//! write timeouts, so a hung proxy fails the test instead of blocking it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::wire::{framing_from_headers, invalid, owned_headers, values, Framing, Wire};
use super::IO_TIMEOUT;

/// One response as the client saw it.
#[derive(Clone, Debug)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Raw head bytes, status line to the empty line inclusive.
    pub head: Vec<u8>,
    /// Decoded body.
    pub body: Vec<u8>,
    /// Head and body exactly as received (chunk framing included).
    pub raw: Vec<u8>,
    pub framing: Framing,
    /// Interim (1xx) responses received before this one.
    pub informational: Vec<Response>,
}

impl Response {
    /// The only value of header `name` (case-insensitive); panics if it appears several times.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times in {}",
            all.len(),
            self.head_text()
        );
        all.into_iter().next()
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        values(&self.headers, name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        values(&self.headers, name).next().is_some()
    }

    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the raw response when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.raw)
            )
        })
    }

    /// True when the response asks for the connection to be closed.
    pub fn connection_close(&self) -> bool {
        self.header_all("connection")
            .iter()
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .any(|t| t == "close")
    }
}

/// A read that failed part-way, with what had arrived by then.
#[derive(Debug)]
pub struct ReadFailure {
    pub error: io::Error,
    pub received: Vec<u8>,
}

impl ReadFailure {
    /// True when the server closed (or reset) the connection, as opposed to a timeout or a
    /// malformed message.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.error.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        )
    }
}

pub struct Client {
    wire: Wire<TcpStream>,
}

impl Client {
    /// The raw socket, for reading what the server does after the last response.
    pub fn into_stream(self) -> TcpStream {
        self.wire.into_inner()
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            wire: Wire::new(stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.wire.get_ref()
    }

    /// Writes `data` in one `write_all`.
    pub fn send(&mut self, data: impl AsRef<[u8]>) {
        let data = data.as_ref();
        self.wire
            .write_all(data)
            .unwrap_or_else(|e| panic!("writing {} bytes to sluice: {e}", data.len()));
    }

    /// Like `send` but returns the error (the server may legitimately have closed already).
    pub fn try_send(&mut self, data: impl AsRef<[u8]>) -> io::Result<()> {
        self.wire.write_all(data.as_ref())
    }

    /// Sends `data` and reads the final response (1xx collected into `informational`).
    pub fn request(&mut self, data: impl AsRef<[u8]>) -> Response {
        self.send(data);
        self.response()
    }

    /// `GET target HTTP/1.1` with a Host header, and its response.
    pub fn get(&mut self, target: &str) -> Response {
        self.request(format!(
            "GET {target} HTTP/1.1\r\nHost: sluice.test\r\n\r\n"
        ))
    }

    /// The next final response to a non-HEAD request.
    pub fn response(&mut self) -> Response {
        self.try_response(false)
            .unwrap_or_else(|f| panic!("reading a response: {f:?}"))
    }

    /// The next final response to a HEAD request (no body whatever the headers say).
    pub fn head_response(&mut self) -> Response {
        self.try_response(true)
            .unwrap_or_else(|f| panic!("reading a HEAD response: {f:?}"))
    }

    /// The next final response, 1xx responses collected on the way.
    pub fn try_response(&mut self, head_request: bool) -> Result<Response, ReadFailure> {
        let mut informational = Vec::new();
        loop {
            let mut resp = self.try_one(head_request)?;
            if (100..200).contains(&resp.status) && resp.status != 101 {
                informational.push(resp);
                continue;
            }
            resp.informational = informational;
            return Ok(resp);
        }
    }

    /// Exactly one message (may be a 1xx).
    pub fn try_one(&mut self, head_request: bool) -> Result<Response, ReadFailure> {
        self.wire.take_captured();
        match read_response(&mut self.wire, head_request) {
            Ok(r) => Ok(r),
            Err(error) => {
                let mut received = self.wire.take_captured();
                received.extend_from_slice(self.wire.buffered());
                Err(ReadFailure { error, received })
            }
        }
    }

    /// Exactly `n` bytes (e.g. an interim `100 Continue`).
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        self.wire.take_captured();
        self.wire.read_exact_vec(n).unwrap_or_else(|e| {
            panic!(
                "reading {n} bytes: {e}; got {:?}",
                String::from_utf8_lossy(self.wire.buffered())
            )
        })
    }

    /// Reads until at least `n` bytes are buffered; returns how many are.
    pub fn read_at_least(&mut self, n: usize) -> usize {
        self.wire
            .read_some(n)
            .unwrap_or_else(|e| panic!("reading: {e}"))
            .len()
    }

    /// Everything until the server closes; panics on a timeout (the connection stayed open).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        self.wire.read_to_eof().unwrap_or_else(|e| {
            panic!("expected sluice to close the connection within {IO_TIMEOUT:?}: {e}")
        })
    }

    /// Asserts the server closes the connection without sending anything more.
    pub fn expect_closed(&mut self) {
        let rest = self.read_to_close();
        assert!(
            rest.is_empty(),
            "expected the connection to close, got more bytes: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Reads one message (possibly a 1xx) from `wire`.
pub fn read_response<S: Read + Write>(
    wire: &mut Wire<S>,
    head_request: bool,
) -> io::Result<Response> {
    let head = wire.read_head()?.ok_or_else(|| {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )
    })?;
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut storage);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => {
            return Err(invalid(format!(
                "unparsable response head ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            )))
        }
    }
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err(invalid(format!(
            "bare LF in response head: {:?}",
            String::from_utf8_lossy(&head)
        )));
    }
    let status = parsed.code.unwrap_or(0);
    let version = if parsed.version == Some(0) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let reason = parsed.reason.unwrap_or("").to_string();
    let headers = owned_headers(parsed.headers);
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else {
        framing_from_headers(&headers, true)?
    };
    let (body, _trailers) = wire.read_body(framing)?;
    let raw = wire.take_captured();
    Ok(Response {
        version,
        status,
        reason,
        headers,
        head,
        body,
        raw,
        framing,
        informational: Vec::new(),
    })
}

/// Parses one complete response from bytes already received (e.g. by `read_to_close`).
pub fn parse_response(bytes: &[u8]) -> io::Result<Response> {
    let mut wire = Wire::new(io::Cursor::new(bytes.to_vec()));
    read_response(&mut wire, false)
}
