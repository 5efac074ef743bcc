//! Hostile and broken clients: request smuggling vectors, malformed heads and chunked bodies,
//! oversized heads, unsupported versions and expectations, slow and idle clients.
//!
//! Every rejection must be a JSON error with `Connection: close`, the connection must then close
//! without answering the request smuggled behind the bad one, and the origin must receive
//! nothing (checked with a barrier request on a fresh connection).

mod common;

use common::client::parse_response;
use common::*;

/// Appended to every bad request in the same write: it must never be processed.
const SMUGGLED: &str = "GET /crypto/verify?smuggled=1 HTTP/1.1\r\nHost: sluice.test\r\n\r\n";

/// Sends `raw` followed by `SMUGGLED`, expects a `status` JSON error (`error` when given, any
/// string otherwise) with `Connection: close`, then the close, and an untouched origin.
fn assert_rejected(
    sluice: &Sluice,
    origin: &MockOrigin,
    name: &str,
    raw: &[u8],
    status: u16,
    error: Option<&str>,
) {
    eprintln!("case: {name}");
    let mut client = sluice.connect();
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(SMUGGLED.as_bytes());
    // sluice may close before reading everything; the response is what matters.
    let _ = client.try_send(&bytes);
    let resp = client
        .try_response(false)
        .unwrap_or_else(|f| panic!("{name}: no response: {f:?}"));
    assert_eq!(
        resp.status,
        status,
        "{name}: {}",
        String::from_utf8_lossy(&resp.raw)
    );
    match error {
        Some(error) => assert_json_body(&resp, error),
        None => {
            assert_eq!(
                resp.header("content-type").as_deref(),
                Some("application/json"),
                "{name}"
            );
            assert!(
                resp.json()["error"].is_string(),
                "{name}: {}",
                resp.body_text()
            );
        }
    }
    assert!(
        resp.connection_close(),
        "{name}: rejection lacks Connection: close:\n{}",
        resp.head_text()
    );
    client.expect_closed();
    assert_origin_untouched(sluice, origin);
}

fn assert_bad_request(sluice: &Sluice, origin: &MockOrigin, name: &str, raw: &[u8]) {
    assert_rejected(sluice, origin, name, raw, 400, Some("bad_request"));
}

/// A POST head with the given extra header lines, then `body`.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\n{headers}\r\n{body}").into_bytes()
}

#[test]
fn ambiguous_body_framing_is_rejected() {
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CL then TE", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunked_body)),
        ("TE then CL", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", chunked_body)),
        ("two different CLs", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")),
        ("CL list", post("Content-Length: 5, 6\r\n", "hello!")),
        ("CL -1", post("Content-Length: -1\r\n", "hello")),
        ("CL +5", post("Content-Length: +5\r\n", "hello")),
        ("CL 5 5", post("Content-Length: 5 5\r\n", "hello")),
        ("CL 0x10", post("Content-Length: 0x10\r\n", "hello")),
        ("CL huge", post("Content-Length: 99999999999999999999999\r\n", "hello")),
        ("TE chunked, identity", post("Transfer-Encoding: chunked, identity\r\n", chunked_body)),
        ("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", chunked_body)),
        ("TE xchunked", post("Transfer-Encoding: xchunked\r\n", chunked_body)),
        ("TE twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked_body)),
        (
            "chunked on HTTP/1.0",
            format!("POST /crypto/sign HTTP/1.0\r\nHost: sluice.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}")
                .into_bytes(),
        ),
    ];
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        for (name, raw) in &cases {
            assert_bad_request(&sluice, &origin, name, raw);
        }
    });
}

#[test]
fn malformed_heads_are_rejected() {
    let cases: [(&str, &[u8]); 11] = [
        (
            "obs-fold",
            b"GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nX-A: b\r\n c\r\n\r\n",
        ),
        (
            "space before colon in Host",
            b"GET /crypto/sign HTTP/1.1\r\nHost : sluice.test\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nX-A : b\r\n\r\n",
        ),
        (
            "bare LF between headers",
            b"GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\nX-A: b\r\n\r\n",
        ),
        (
            "bare LF after request line",
            b"GET /crypto/sign HTTP/1.1\nHost: sluice.test\r\n\r\n",
        ),
        (
            "bare CR in value",
            b"GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nX-A: b\rc\r\n\r\n",
        ),
        (
            "NUL in value",
            b"GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "missing Host",
            b"GET /crypto/sign HTTP/1.1\r\nX-A: b\r\n\r\n",
        ),
        (
            "two Hosts",
            b"GET /crypto/sign HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        ),
        (
            "absolute-form target",
            b"GET http://evil/crypto/sign HTTP/1.1\r\nHost: evil\r\n\r\n",
        ),
        (
            "empty header name",
            b"GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\n: b\r\n\r\n",
        ),
    ];
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        for (name, raw) in cases {
            assert_bad_request(&sluice, &origin, name, raw);
        }
    });
}

/// A refused head right after a HEAD request on the same connection: the 400 still carries its
/// JSON body (the HEAD's "no body" must not stick to the connection's next answer).
#[test]
fn a_bad_head_after_a_head_request_gets_its_body() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        client.send("HEAD /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\n\r\n");
        let head = client.head_response();
        assert_eq!(head.status, 200, "{}", head.head_text());
        client.send("GET /crypto/sign HTTP/1.1\r\nHost : sluice.test\r\n\r\n");
        let resp = client.response();
        assert_json_error(&resp, 400, "bad_request");
        assert!(resp.connection_close(), "{}", resp.head_text());
        client.expect_closed();
    });
}

#[test]
fn malformed_chunked_bodies_are_rejected() {
    let te = "Transfer-Encoding: chunked\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("non-hex chunk size", post(te, "zz\r\nhello\r\n0\r\n\r\n")),
        ("negative chunk size", post(te, "-5\r\nhello\r\n0\r\n\r\n")),
        ("0x chunk size", post(te, "0x5\r\nhello\r\n0\r\n\r\n")),
        ("empty chunk-size line", post(te, "\r\nhello\r\n0\r\n\r\n")),
        ("chunk data without CRLF", post(te, "5\r\nhelloXX0\r\n\r\n")),
        (
            "bare LF in chunk-size line",
            post(te, "5\nhello\r\n0\r\n\r\n"),
        ),
    ];
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        for (name, raw) in &cases {
            assert_bad_request(&sluice, &origin, name, raw);
        }
    });
}

/// A GET head of at least `size` bytes, padded with `X-Pad-N` headers of 1000 bytes.
fn head_of_size(size: usize) -> Vec<u8> {
    let mut head = String::from("GET /crypto/sign?big-head HTTP/1.1\r\nHost: sluice.test\r\n");
    let mut n = 0;
    while head.len() + 2 < size {
        head.push_str(&format!("X-Pad-{n}: {}\r\n", "p".repeat(1000)));
        n += 1;
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[test]
fn oversized_heads_get_431() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let raw = head_of_size(17 * 1024);
        assert_rejected(
            &sluice,
            &origin,
            "17 KiB head",
            &raw,
            431,
            Some("header_too_large"),
        );
        // Below the default limit is fine.
        let resp = sluice.connect().request(head_of_size(12 * 1024));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        drop(sluice);

        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &["--max-head-bytes", "2048"], legacy);
        let raw = head_of_size(3 * 1024);
        assert_rejected(
            &sluice,
            &origin,
            "3 KiB head, 2 KiB limit",
            &raw,
            431,
            Some("header_too_large"),
        );
        let resp = sluice.connect().request(head_of_size(1024));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
    });
}

#[test]
fn unsupported_version_and_expectation_are_rejected() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        eprintln!("case: HTTP/2.0");
        let mut client = sluice.connect();
        let _ = client.try_send(format!(
            "GET /crypto/sign HTTP/2.0\r\nHost: sluice.test\r\n\r\n{SMUGGLED}"
        ));
        let resp = client.response();
        assert!(
            resp.status == 505 || resp.status == 400,
            "{}",
            String::from_utf8_lossy(&resp.raw)
        );
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
        assert!(resp.json()["error"].is_string(), "{}", resp.body_text());
        client.expect_closed();
        assert_origin_untouched(&sluice, &origin);

        let raw = b"POST /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 5\r\nExpect: something-else\r\n\r\nhello";
        assert_rejected(&sluice, &origin, "Expect: something-else", raw, 417, None);
    });
}

/// What a slow client got: nothing (a bare close) or one 408 JSON response, then the close.
fn assert_timed_out(received: &[u8]) {
    if received.is_empty() {
        return;
    }
    let resp = parse_response(received).unwrap_or_else(|e| {
        panic!(
            "unparsable bytes before close ({e}): {:?}",
            String::from_utf8_lossy(received)
        )
    });
    assert_json_error(&resp, 408, "request_timeout");
    assert_eq!(
        resp.raw.len(),
        received.len(),
        "bytes after the 408: {:?}",
        String::from_utf8_lossy(received)
    );
}

#[test]
fn slow_heads_time_out() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(
            &origin.url(),
            &["--client-header-timeout-ms", "300"],
            legacy,
        );

        // Half a head, then silence.
        let mut client = sluice.connect();
        client.send("GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\n");
        let received = client.read_to_close();
        assert_timed_out(&received);

        // A head trickled one byte at a time: the timeout covers the whole head, so sluice cuts
        // it off long before the 60 bytes (6 s) are sent.
        let mut client = sluice.connect();
        client.send("GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nX-Slow: ");
        let mut cut_off = false;
        for _ in 0..60 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if client.try_send("s").is_err() {
                cut_off = true;
                break;
            }
        }
        assert!(
            cut_off,
            "a head trickled over 6 s was not cut off by a 300 ms header timeout"
        );
        let received = client.read_to_close();
        assert_timed_out(&received);

        assert_origin_untouched(&sluice, &origin);
    });
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &["--client-idle-timeout-ms", "300"], legacy);
        let mut client = sluice.connect();
        assert_eq!(client.get("/crypto/sign?before-idle").status, 200);
        client.expect_closed();
    });
}

/// An idle keep-alive connection parks after `--client-park-ms` (50 ms: it gives back its read
/// buffer and request task, see `src/proxy/mod.rs`) and wakes for the next request. Gaps around
/// the park moment catch a request lost while the idle read is cancelled.
#[test]
fn parked_keep_alive_connections_serve_the_next_request() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        let gaps = [0u64, 30, 45, 50, 52, 55, 60, 100, 48, 51, 300, 0];
        for (i, gap) in gaps.iter().enumerate() {
            std::thread::sleep(std::time::Duration::from_millis(*gap));
            let resp = client.get(&format!("/crypto/sign?n={i}"));
            assert_eq!(resp.status, 200, "request {i} after {gap} ms idle");
            assert!(
                resp.body_text().contains(&format!("n={i}")),
                "{}",
                resp.body_text()
            );
        }
        // Pipelined after a long idle: both answered, in order.
        std::thread::sleep(std::time::Duration::from_millis(300));
        client.send(format!(
            "{}{}",
            get("/crypto/sign?p=1"),
            get("/crypto/sign?p=2")
        ));
        assert!(client.response().body_text().contains("p=1"));
        assert!(client.response().body_text().contains("p=2"));
        assert_eq!(origin.connections(), 1, "one upstream connection, reused");
    });
}

#[test]
fn stalled_request_bodies_time_out() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &["--client-body-timeout-ms", "300"], legacy);
        let mut client = sluice.connect();
        client.send("POST /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 100\r\n\r\n0123456789");
        let received = client.read_to_close();
        assert_timed_out(&received);
        assert_origin_untouched(&sluice, &origin);
    });
}
