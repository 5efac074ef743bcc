//! The admin listener (`--admin-listen`): `GET /metrics` (Prometheus text exposition),
//! `GET /health` (live) and `GET /ready` (ready for traffic), on their own port, served by one
//! plain std thread (`sluice-admin`), never by the I/O workers.
//!
//! Why a blocking thread: scrapes and probes come a few times a second at most, and keeping
//! them off the monoio workers means a scrape never takes time, locks or allocations from the
//! request path. The handlers ([`AdminHandlers`]) are closures the binary passes in: the
//! metrics renderer (aggregating the workers' counters) and the readiness rule ([`Readiness`]).
//!
//! One connection at a time, one request per connection: every answer says
//! `Connection: close`. Scrapers and probes open a connection per request anyway, and serving
//! them in turn needs no pool and no per-connection state. A client that connects and stalls
//! holds the thread for at most [`READ_TIMEOUT`] (then it gets 408, or is closed if it sent
//! nothing); the port is meant for a trusted network (a scraper and the orchestrator's
//! probes), never for the public.
//!
//! Heads are parsed by the proxy's own strict parser (`crate::http::request`), limited to
//! [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`]; the answers are built sans-IO in [`answer`]. A panic
//! in a handler is caught: that request gets a 500 and the thread goes on.
//!
//! [`Admin::stop`] (at the end of a graceful shutdown, so that `/ready` reports the drain while
//! it lasts) wakes the blocked `accept` and waits at most [`STOP_WAIT`] for the thread: it never
//! delays the process exit by more.

pub mod answer;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::request::{parse_request, Method};
use crate::http::HeadLimits;

/// Largest request head the admin server reads, in bytes. Its requests are a request line and a
/// few headers; 8 KiB is ample and bounds what one connection can make the thread buffer.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields in an admin request head (more answers 431).
pub const MAX_HEADERS: usize = 64;
/// How long a client has to send its whole request head. Connections are served one at a time,
/// so this bounds how long a stalled client can hold up the next scrape or probe.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one answer may take to write (a client that does not read).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads wait at most this long at a time, so that the thread notices [`Admin::stop`] while a
/// client is slow, without waiting for [`READ_TIMEOUT`].
const READ_SLICE: Duration = Duration::from_millis(50);
/// After answering, the thread reads (and discards) what the client still sends until it
/// closes, for at most this long: closing with unread input makes the kernel send a reset, which
/// can destroy the answer before the client read it (a request with a body, pipelined bytes).
/// Clients close at once after a `Connection: close` answer.
const LINGER: Duration = Duration::from_millis(500);
/// At most this many bytes are discarded while lingering.
const LINGER_MAX_BYTES: usize = 64 * 1024;
/// How long [`Admin::stop`] waits for the thread to end. A thread still writing to a client that
/// does not read (up to [`WRITE_TIMEOUT`]) is left to the process exit.
pub const STOP_WAIT: Duration = Duration::from_millis(500);
/// How long the accept loop pauses after a failed `accept` (EMFILE and the like), instead of
/// spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The admin thread's name (shows in `top -H`; not a worker name, so `tests/zero_alloc.rs`
/// does not count it).
pub const THREAD_NAME: &str = "sluice-admin";

/// Appends the Prometheus text exposition of every metric to the buffer.
pub type MetricsHandler = Arc<dyn Fn(&mut String) + Send + Sync>;
/// `Ok` when the proxy should get traffic; otherwise why not (shown in `/ready`'s answer).
pub type ReadyHandler = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin endpoints call. They run on the admin thread.
#[derive(Clone)]
pub struct AdminHandlers {
    pub metrics: MetricsHandler,
    pub ready: ReadyHandler,
}

/// The process's readiness as `/ready` reports it: starting (until the listeners are bound and
/// the store is open), serving, then shutting down (from SIGTERM/SIGINT on; final).
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

impl Readiness {
    /// The listeners are up and the store is open. Does nothing once shutting down.
    pub fn serving(&self) {
        self.0.fetch_max(SERVING, Ordering::SeqCst);
    }

    /// The graceful shutdown began (callable from the signal thread).
    pub fn shutting_down(&self) {
        self.0.store(SHUTTING_DOWN, Ordering::SeqCst);
    }

    /// `Ok` while serving; otherwise `"starting"` or `"shutting down"`.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.0.load(Ordering::SeqCst) {
            STARTING => Err("starting"),
            SERVING => Ok(()),
            _ => Err("shutting down"),
        }
    }
}

/// A running admin server.
pub struct Admin {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Closed (sender dropped) when the thread ends.
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Binds `addr` and starts serving on the admin thread. The error is one line naming
    /// `--admin-listen` and the address.
    pub fn start(addr: SocketAddr, handlers: AdminHandlers) -> Result<Admin, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("--admin-listen: cannot listen on {addr}: {e}"))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("--admin-listen: cannot read the bound address: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel::<()>();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let _done = done_tx;
                serve(listener, handlers, &thread_stop);
            })
            .map_err(|e| format!("--admin-listen: cannot start the admin thread: {e}"))?;
        Ok(Admin {
            local_addr,
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when `--admin-listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving: the listener closes, a request in progress is abandoned. Waits at most
    /// [`STOP_WAIT`] for the thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // `accept` blocks until a connection comes: make one. Failing is harmless (the thread
        // is then busy with a client and sees the flag within a read slice).
        let _ = TcpStream::connect_timeout(&wake_addr(self.local_addr), STOP_WAIT);
        match self.done.recv_timeout(STOP_WAIT) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
            }
            // Still writing to a client that does not read: the process exit ends it.
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Where to connect to reach a listener bound to `addr` (an unspecified address listens on
/// loopback too).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Buffers the admin thread reuses for every connection.
struct Buffers {
    head: Vec<u8>,
    body: String,
    out: Vec<u8>,
}

/// The admin thread: accept, answer, close; until `stop`.
fn serve(listener: TcpListener, handlers: AdminHandlers, stop: &AtomicBool) {
    let mut buffers = Buffers {
        head: vec![0; MAX_HEAD_BYTES],
        body: String::new(),
        out: Vec::new(),
    };
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _peer)) => {
                let served = catch_unwind(AssertUnwindSafe(|| {
                    serve_connection(stream, &handlers, &mut buffers, stop)
                }));
                if served.is_err() {
                    crate::log::error(format_args!(
                        "admin: serving a connection panicked; it was closed, the admin listener goes on"
                    ));
                }
            }
            Err(e) => {
                crate::log::warn(format_args!("admin: accept failed: {e}"));
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// How reading a request head ended.
enum Head {
    /// A complete head at the start of the buffer (boxed: it is large next to the other
    /// variants, and this is one allocation per admin request, off the I/O threads).
    Parsed(Box<crate::http::request::RequestHead>),
    Refused(crate::http::request::RequestError),
    TimedOut,
    /// The client closed or failed, sent nothing within the timeout, or the admin server stops:
    /// nothing to answer.
    Gone,
}

/// Reads one request, writes its answer, closes.
fn serve_connection(
    mut stream: TcpStream,
    handlers: &AdminHandlers,
    buffers: &mut Buffers,
    stop: &AtomicBool,
) {
    if stream.set_read_timeout(Some(READ_SLICE)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let Buffers { head, body, out } = buffers;
    out.clear();
    let (filled, outcome) = read_head(&mut stream, head, stop);
    match outcome {
        Head::Parsed(parsed) => {
            let answered = catch_unwind(AssertUnwindSafe(|| {
                answer::write_answer(&parsed, &head[..filled], handlers, body, out)
            }));
            if answered.is_err() {
                crate::log::error(format_args!(
                    "admin: the handler of {} panicked; answered 500",
                    String::from_utf8_lossy(parsed.path.get(&head[..filled]))
                ));
                out.clear();
                answer::write_panic(parsed.method == Method::Head, body, out);
            }
        }
        Head::Refused(err) => answer::write_refusal(&err, body, out),
        Head::TimedOut => answer::write_timeout(body, out),
        Head::Gone => return,
    }
    if stream.write_all(out).is_err() {
        return;
    }
    // The answer is out: send FIN, then let the client close first (see LINGER).
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut discarded = 0usize;
    while Instant::now() < until && discarded < LINGER_MAX_BYTES && !stop.load(Ordering::SeqCst) {
        match stream.read(head) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Reads until `buf` starts with a complete head, the head is refused, [`READ_TIMEOUT`] passes,
/// or the client leaves. Returns how many bytes were read, and the outcome.
fn read_head(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> (usize, Head) {
    let limits = HeadLimits {
        max_head_bytes: buf.len(),
        max_headers: MAX_HEADERS,
    };
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut filled = 0usize;
    loop {
        let Some(free) = buf.get_mut(filled..) else {
            return (filled, Head::Gone);
        };
        if free.is_empty() {
            // The parser refuses a full buffer; this is its answer for a head that is too long.
            let outcome = match parse_request(&buf[..filled], &limits) {
                Err(e) => Head::Refused(e),
                Ok(_) => Head::Refused(crate::http::request::RequestError::HeadTooLarge),
            };
            return (filled, outcome);
        }
        match stream.read(free) {
            Ok(0) => return (filled, Head::Gone),
            Ok(n) => {
                filled += n;
                match parse_request(&buf[..filled], &limits) {
                    Ok(Some(parsed)) => return (filled, Head::Parsed(Box::new(parsed))),
                    Ok(None) => {}
                    Err(e) => return (filled, Head::Refused(e)),
                }
            }
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::SeqCst) {
                    return (filled, Head::Gone);
                }
                if Instant::now() >= deadline {
                    let outcome = if filled == 0 {
                        Head::Gone
                    } else {
                        Head::TimedOut
                    };
                    return (filled, outcome);
                }
            }
            Err(_) => return (filled, Head::Gone),
        }
    }
}

/// A read that timed out (`SO_RCVTIMEO` reports `WouldBlock` on Unix) or was interrupted.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers() -> AdminHandlers {
        AdminHandlers {
            metrics: Arc::new(|out: &mut String| {
                crate::metrics::text::family(out, "t_up", crate::metrics::text::Kind::Gauge, "Up.");
                crate::metrics::text::sample(out, "t_up", &[], 1);
            }),
            ready: Arc::new(|| Ok(())),
        }
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Sends `request` on a new connection and reads until the server closes.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn serves_metrics_and_a_panicking_handler_answers_500_and_the_thread_goes_on() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let admin = Admin::start(
            loopback(),
            AdminHandlers {
                metrics: Arc::new(move |out: &mut String| {
                    if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                        out.push_str("half a scrape");
                        panic!("metrics handler bug");
                    }
                    out.push_str("# HELP t_up Up.\n# TYPE t_up gauge\nt_up 1\n");
                }),
                ready: Arc::new(|| Ok(())),
            },
        )
        .unwrap();
        let addr = admin.local_addr();
        let first = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            first.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{first}"
        );
        assert!(!first.contains("half a scrape"), "{first}");
        let second = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
        assert!(
            second.ends_with("\r\n\r\n# HELP t_up Up.\n# TYPE t_up gauge\nt_up 1\n"),
            "{second}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        admin.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn a_head_split_over_many_writes_and_a_body_are_served() {
        let admin = Admin::start(loopback(), handlers()).unwrap();
        let mut s = TcpStream::connect(admin.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for b in b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
        }
        s.write_all(b"hello").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n{\"status\":\"live\"}\n"), "{got}");
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let admin = Admin::start(loopback(), handlers()).unwrap();
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 100, b'a');
        let got = exchange(admin.local_addr(), &big);
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
        assert!(got.contains("\"error\":\"header_too_large\""), "{got}");
        let got = exchange(admin.local_addr(), b"NOT HTTP AT ALL\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        // Still serving.
        let got = exchange(
            admin.local_addr(),
            b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }

    #[test]
    fn stop_does_not_wait_for_a_stalled_client() {
        let admin = Admin::start(loopback(), handlers()).unwrap();
        let addr = admin.local_addr();
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled.write_all(b"GET /metr").unwrap();
        // Let the thread pick the connection up and block reading it.
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        admin.stop();
        // Bounded by the stop wait, not by the 5 s read timeout.
        assert!(started.elapsed() < READ_TIMEOUT, "{:?}", started.elapsed());
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = stalled.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn bind_errors_name_the_flag_and_the_address() {
        let taken = TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = match Admin::start(addr, handlers()) {
            Err(e) => e,
            Ok(_) => panic!("bound {addr} twice"),
        };
        assert!(
            err.starts_with(&format!("--admin-listen: cannot listen on {addr}: ")),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn readiness_moves_forward_only() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err("starting"));
        r.serving();
        assert_eq!(r.check(), Ok(()));
        r.shutting_down();
        r.serving();
        assert_eq!(r.check(), Err("shutting down"));
    }

    #[test]
    fn wake_address_of_an_unspecified_bind_is_loopback() {
        assert_eq!(
            wake_addr("0.0.0.0:9".parse().unwrap()),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(
            wake_addr("[::]:9".parse().unwrap()),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            wake_addr("10.1.2.3:9".parse().unwrap()),
            "10.1.2.3:9".parse().unwrap()
        );
    }
}
