//! Mock webhook receiver: std threads, blocking sockets, optional TLS, scripted answers.
//!
//! Records every request it gets (raw head, parsed headers, exact body bytes, arrival time) and
//! answers the n-th request with the n-th [`Answer`] of its script (the last one repeats; an
//! empty script answers 200). It also counts accepted connections, so a test can prove that
//! nothing connected at all. Only listens on 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::IO_TIMEOUT;

/// Largest request head the mock accepts, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header fields the mock parses.
const MAX_HEADERS: usize = 64;

/// How a request is answered.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This status, a short body, `Connection: close`.
    Status(u16),
    /// This status plus extra header fields.
    StatusWith(u16, Vec<(String, String)>),
    /// Read the request, never answer; hold the connection until the client gives up.
    Hang,
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Names as sent; values as bytes made into strings (lossy).
    pub headers: Vec<(String, String)>,
    /// Raw head, request line to the empty line inclusive.
    pub head: Vec<u8>,
    /// The body, exactly (Content-Length framed).
    pub body: Vec<u8>,
    /// When the head was complete.
    pub at: Instant,
    /// Which accepted connection (0, 1, ...) carried it.
    pub conn: usize,
    /// The SNI the client sent (TLS only).
    pub sni: Option<String>,
    /// Bytes that followed the Content-Length body on the connection (should be none).
    pub trailing: Vec<u8>,
}

impl Received {
    /// The only value of `name` (case-insensitive); panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "receiver got header {name} {} times:\n{}",
            all.len(),
            String::from_utf8_lossy(&self.head)
        );
        all.into_iter().next()
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The header `name`, which must be present.
    pub fn expect_header(&self, name: &str) -> String {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "receiver got no {name} header:\n{}",
                String::from_utf8_lossy(&self.head)
            )
        })
    }
}

struct Inner {
    script: Vec<Answer>,
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    accepted: AtomicUsize,
    /// Requests seen (answer index), including ones that failed to parse.
    requests: AtomicUsize,
    stop: AtomicBool,
    tls: Option<Arc<ServerConfig>>,
}

pub struct MockReceiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    acceptor: Option<JoinHandle<()>>,
}

impl MockReceiver {
    /// A plain HTTP receiver on 127.0.0.1, port chosen by the OS.
    pub fn start(script: Vec<Answer>) -> MockReceiver {
        Self::spawn(script, None)
    }

    /// An https receiver presenting `config`'s certificate.
    pub fn start_tls(script: Vec<Answer>, config: Arc<ServerConfig>) -> MockReceiver {
        Self::spawn(script, Some(config))
    }

    fn spawn(script: Vec<Answer>, tls: Option<Arc<ServerConfig>>) -> MockReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock receiver");
        let addr = listener.local_addr().expect("receiver address");
        let inner = Arc::new(Inner {
            script,
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            accepted: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            tls,
        });
        let acceptor_inner = Arc::clone(&inner);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if acceptor_inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let conn = acceptor_inner.accepted.fetch_add(1, Ordering::SeqCst);
                let conn_inner = Arc::clone(&acceptor_inner);
                thread::spawn(move || serve(&conn_inner, stream, conn));
            }
        });
        MockReceiver {
            addr,
            inner,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http(s)://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.port())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`), returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = self.inner.received.lock().unwrap();
        while got.len() < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "receiver got {} requests, expected {n} within {timeout:?}",
                got.len()
            );
            got = self
                .inner
                .arrived
                .wait_timeout(got, deadline - now)
                .unwrap()
                .0;
        }
        got.clone()
    }

    /// Connections accepted so far (TLS handshakes that failed included).
    pub fn connections(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for MockReceiver {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

fn serve(inner: &Inner, tcp: TcpStream, conn: usize) {
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
    let mut sni = None;
    let mut io: Box<dyn Io> = match &inner.tls {
        None => Box::new(tcp),
        Some(config) => {
            let Ok(server) = ServerConnection::new(Arc::clone(config)) else {
                return;
            };
            let mut stream = StreamOwned::new(server, tcp);
            while stream.conn.is_handshaking() {
                let StreamOwned { conn, sock } = &mut stream;
                if conn.complete_io(sock).is_err() {
                    return;
                }
            }
            sni = stream.conn.server_name().map(str::to_string);
            Box::new(stream)
        }
    };
    let Some(mut received) = read_request(&mut io) else {
        return;
    };
    received.conn = conn;
    received.sni = sni;
    let index = inner.requests.fetch_add(1, Ordering::SeqCst);
    let answer = inner
        .script
        .get(index)
        .or(inner.script.last())
        .cloned()
        .unwrap_or(Answer::Status(200));
    {
        let mut got = inner.received.lock().unwrap();
        got.push(received);
        inner.arrived.notify_all();
    }
    match answer {
        Answer::Hang => {
            // Hold the connection until the client closes it (or the socket timeout).
            let mut sink = [0u8; 256];
            while matches!(io.read(&mut sink), Ok(n) if n > 0) {}
        }
        Answer::Status(status) => respond(&mut io, status, &[]),
        Answer::StatusWith(status, extra) => respond(&mut io, status, &extra),
    }
}

fn respond(io: &mut Box<dyn Io>, status: u16, extra: &[(String, String)]) {
    let body = format!("mock receiver says {status}\n");
    let mut head = format!(
        "HTTP/1.1 {status} Mock\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    let _ = io.write_all(head.as_bytes());
    let _ = io.flush();
}

/// Reads one Content-Length framed request. `None` when the client went away or sent
/// something this mock does not understand (the test then sees no request).
fn read_request(io: &mut Box<dyn Io>) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return None;
        }
        match io.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let at = Instant::now();
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(&buf[..head_len]) else {
        return None;
    };
    let method = req.method?.to_string();
    let target = req.path?.to_string();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let head = buf[..head_len].to_vec();
    let mut body = buf[head_len..].to_vec();
    while body.len() < length {
        match io.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let trailing = body.split_off(length);
    Some(Received {
        method,
        target,
        headers,
        head,
        body,
        at,
        conn: 0,
        sni: None,
        trailing,
    })
}
