//! In-process mock origin: std threads, blocking sockets, optional TLS.
//!
//! Every accepted connection gets a thread that reads requests strictly (see `wire`), records each
//! one (raw head, decoded body, connection id) and writes whatever the handler's `Reply` says.
//! A request that sluice frames badly (CL and TE, bare LF, bad chunk) is recorded as a protocol
//! error, and dropping the origin fails the test if there was one.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{framing_from_headers, invalid, owned_headers, values, Framing, Wire};
use super::IO_TIMEOUT;

/// How long an origin socket may sit idle before the mock gives up on it (bounds every thread;
/// far above any keep-alive a test relies on).
const ORIGIN_SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Request target exactly as sent (path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Raw head bytes, request line to the empty line inclusive.
    pub head: Vec<u8>,
    /// Decoded body.
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Raw trailer lines of a chunked body.
    pub trailers: Vec<u8>,
    /// Which accepted connection (0, 1, ...) carried it.
    pub conn: usize,
    /// Position of the request on its connection (0 for the first).
    pub seq: usize,
    /// SNI the TLS client sent (TLS origins only).
    pub sni: Option<String>,
    /// When the whole request had arrived.
    pub received_at: Instant,
}

impl Request {
    /// The only value of header `name` (case-insensitive); panics if it appears several times.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "origin got header {name} {} times:\n{}",
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

    /// The request line without CRLF.
    pub fn request_line(&self) -> String {
        let text = self.head_text();
        text.split("\r\n").next().unwrap_or("").to_string()
    }

    /// Asserts the raw head contains exactly this header line (`Name: value`).
    pub fn assert_line(&self, line: &str) {
        let needle = format!("\r\n{line}\r\n");
        assert!(
            self.head_text().contains(&needle),
            "origin head lacks the line {line:?}:\n{}",
            self.head_text()
        );
    }
}

/// One action of the origin's answer.
#[derive(Clone, Debug)]
pub enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    /// Close the connection (TLS: after close_notify).
    Close,
    /// Never answer: read and discard until the peer closes.
    Hang,
}

/// What the origin does for one request; steps run in order.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub steps: Vec<Step>,
}

impl Reply {
    /// Raw bytes, written as given.
    pub fn raw(bytes: impl AsRef<[u8]>) -> Reply {
        Reply {
            steps: vec![Step::Write(bytes.as_ref().to_vec())],
        }
    }

    /// `status reason`, the extra headers, a Content-Length and the body.
    pub fn response(
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Reply {
        let body = body.as_ref();
        let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
        for (name, value) in headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        Reply::raw(out)
    }

    /// 200 with `Content-Type: text/plain` and a Content-Length body.
    pub fn ok(body: impl AsRef<[u8]>) -> Reply {
        Reply::response(200, "OK", &[("Content-Type", "text/plain")], body)
    }

    /// Never answers.
    pub fn hang() -> Reply {
        Reply {
            steps: vec![Step::Hang],
        }
    }

    /// Closes without answering.
    pub fn close() -> Reply {
        Reply {
            steps: vec![Step::Close],
        }
    }

    pub fn then_write(mut self, bytes: impl AsRef<[u8]>) -> Reply {
        self.steps.push(Step::Write(bytes.as_ref().to_vec()));
        self
    }

    pub fn then_sleep(mut self, d: Duration) -> Reply {
        self.steps.push(Step::Sleep(d));
        self
    }

    pub fn then_close(mut self) -> Reply {
        self.steps.push(Step::Close);
        self
    }

    pub fn then_hang(mut self) -> Reply {
        self.steps.push(Step::Hang);
        self
    }
}

/// 200 `text/plain` whose body is `METHOD TARGET`.
pub fn echo_reply(req: &Request) -> Reply {
    Reply::ok(format!("{} {}", req.method, req.target))
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    accepted: usize,
    closed: usize,
    /// Malformed requests received from sluice.
    errors: Vec<String>,
    /// TLS handshakes that failed (expected in the certificate tests).
    tls_failures: Vec<String>,
    /// Clones of the open sockets, so `Drop` can unblock their threads.
    open: HashMap<usize, TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    handler: Handler,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

pub struct MockOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockOrigin {
    /// A plain-HTTP origin on 127.0.0.1:0 answering every request with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> MockOrigin {
        Self::spawn(Arc::new(handler), None)
    }

    /// A plain-HTTP origin answering with `echo_reply`.
    pub fn echo() -> MockOrigin {
        Self::start(echo_reply)
    }

    /// A TLS origin on 127.0.0.1:0 (sluice reaches it as `localhost`).
    pub fn start_tls(
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> MockOrigin {
        Self::spawn(Arc::new(handler), Some(config))
    }

    fn spawn(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> MockOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock origin");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            handler,
            tls,
        });
        let accept_shared = shared.clone();
        thread::spawn(move || accept_loop(listener, accept_shared));
        MockOrigin { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What sluice must send as Host: `127.0.0.1:PORT`, or `localhost:PORT` for TLS.
    pub fn authority(&self) -> String {
        if self.shared.tls.is_some() {
            format!("localhost:{}", self.port())
        } else {
            format!("127.0.0.1:{}", self.port())
        }
    }

    /// The `-o` value: `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.authority())
    }

    /// Requests received so far, in arrival order.
    /// Arrival times of the requests so far, in order.
    pub fn request_times(&self) -> Vec<Instant> {
        self.requests().iter().map(|r| r.received_at).collect()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Waits (bounded) until at least `n` requests arrived; returns all of them.
    pub fn wait_requests(&self, n: usize) -> Vec<Request> {
        self.wait_for(&format!("{n} requests"), |s| s.requests.len() >= n);
        self.requests()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().accepted
    }

    /// Connections that ended (either side closed) so far.
    pub fn closed(&self) -> usize {
        self.shared.lock().closed
    }

    /// Waits (bounded) until at least `n` connections ended.
    pub fn wait_closed(&self, n: usize) {
        self.wait_for(&format!("{n} closed connections"), |s| s.closed >= n);
    }

    pub fn tls_failures(&self) -> Vec<String> {
        self.shared.lock().tls_failures.clone()
    }

    /// Malformed requests sluice sent (also checked when the origin is dropped).
    pub fn protocol_errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut state = self.shared.lock();
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "mock origin: timed out waiting for {what}; have {} requests, {} accepted, {} closed",
                state.requests.len(),
                state.accepted,
                state.closed
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for MockOrigin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblock the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let errors = {
            let mut state = self.shared.lock();
            for (_, s) in state.open.drain() {
                let _ = s.shutdown(Shutdown::Both);
            }
            state.errors.clone()
        };
        if !thread::panicking() {
            assert!(
                errors.is_empty(),
                "sluice sent malformed requests to the origin: {errors:#?}"
            );
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(tcp) = stream else { continue };
        let _ = tcp.set_read_timeout(Some(ORIGIN_SOCKET_TIMEOUT));
        let _ = tcp.set_write_timeout(Some(ORIGIN_SOCKET_TIMEOUT));
        let _ = tcp.set_nodelay(true);
        let mut id = 0;
        shared.update(|s| {
            id = s.accepted;
            s.accepted += 1;
            if let Ok(clone) = tcp.try_clone() {
                s.open.insert(id, clone);
            }
        });
        let conn_shared = shared.clone();
        thread::spawn(move || {
            let closer = tcp.try_clone().ok();
            handle_connection(&conn_shared, tcp, id);
            // Really close the socket: the clone in `open` would otherwise keep it alive.
            if let Some(c) = closer {
                let _ = c.shutdown(Shutdown::Both);
            }
            conn_shared.update(|s| {
                s.open.remove(&id);
                s.closed += 1;
            });
        });
    }
}

fn handle_connection(shared: &Shared, mut tcp: TcpStream, id: usize) {
    let Some(config) = shared.tls.clone() else {
        serve(shared, Wire::new(tcp), id, None, |s: &mut TcpStream| {
            let _ = s.shutdown(Shutdown::Both);
        });
        return;
    };
    let mut conn = match rustls::ServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => return shared.update(|s| s.tls_failures.push(e.to_string())),
    };
    while conn.is_handshaking() {
        match conn.complete_io(&mut tcp) {
            Ok((0, 0)) => {
                return shared.update(|s| s.tls_failures.push("eof during handshake".into()))
            }
            Ok(_) => {}
            Err(e) => return shared.update(|s| s.tls_failures.push(e.to_string())),
        }
    }
    let sni = conn.server_name().map(str::to_string);
    let stream = rustls::StreamOwned::new(conn, tcp);
    serve(
        shared,
        Wire::new(stream),
        id,
        sni,
        |s: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>| {
            s.conn.send_close_notify();
            let _ = s.flush();
            let _ = s.sock.shutdown(Shutdown::Both);
        },
    );
}

fn serve<S: Read + Write>(
    shared: &Shared,
    mut wire: Wire<S>,
    conn: usize,
    sni: Option<String>,
    close: impl Fn(&mut S),
) {
    let record_error = |e: io::Error| {
        // A truncated request means sluice gave up on it, which is not a framing error.
        if !matches!(
            e.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::WouldBlock
                | ErrorKind::TimedOut
        ) {
            shared.update(|s| s.errors.push(format!("connection {conn}: {e}")));
        }
    };
    for seq in 0.. {
        let head = match wire.read_head() {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return record_error(e),
        };
        let parsed = match parse_request(&head) {
            Ok(p) => p,
            Err(e) => return record_error(e),
        };
        let (method, target, version, headers) = parsed;
        let framing = match framing_from_headers(&headers, false) {
            Ok(f) => f,
            Err(e) => return record_error(e),
        };
        let (body, trailers) = match wire.read_body(framing) {
            Ok(b) => b,
            Err(e) => return record_error(e),
        };
        let request = Request {
            method,
            target,
            version,
            headers,
            head,
            body,
            framing,
            trailers,
            conn,
            seq,
            sni: sni.clone(),
            received_at: Instant::now(),
        };
        let reply = (shared.handler)(&request);
        shared.update(|s| s.requests.push(request));
        for step in reply.steps {
            match step {
                Step::Write(bytes) => {
                    if wire.write_all(&bytes).is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => thread::sleep(d),
                Step::Close => return close(wire.get_mut()),
                Step::Hang => {
                    let _ = wire.read_to_eof();
                    return;
                }
            }
        }
    }
}

type ParsedRequest = (String, String, u8, Vec<(String, Vec<u8>)>);

fn parse_request(head: &[u8]) -> io::Result<ParsedRequest> {
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err(invalid(format!(
            "bare LF in request head: {:?}",
            String::from_utf8_lossy(head)
        )));
    }
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => {
            return Err(invalid(format!(
                "unparsable request head ({other:?}): {:?}",
                String::from_utf8_lossy(head)
            )))
        }
    }
    Ok((
        req.method.unwrap_or("").to_string(),
        req.path.unwrap_or("").to_string(),
        req.version.unwrap_or(1),
        owned_headers(req.headers),
    ))
}
