//! Upstream failures and the connection pool: refused, silent, garbage and truncating origins,
//! stale and half-read pooled connections, the pool's idle timeout. Every scenario runs on both
//! drivers.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn refused_origin_gives_502() {
    for_both_drivers(|legacy| {
        let sluice = start_proxy(&format!("http://127.0.0.1:{}", closed_port()), &[], legacy);
        let mut client = sluice.connect();
        assert_json_error(&client.get("/crypto/sign?message=hi"), 502, "bad_gateway");
        let resp = sluice
            .connect()
            .request(with_body("POST", "/crypto/sign", b"hello"));
        assert_json_error(&resp, 502, "bad_gateway");
    });
}

#[test]
fn failed_post_keeps_the_connection_in_step() {
    // The body of a failed request was read in full, so the connection stays usable and the
    // next request on it is parsed from its own first byte (not from the failed body).
    for_both_drivers(|legacy| {
        let sluice = start_proxy(&format!("http://127.0.0.1:{}", closed_port()), &[], legacy);
        let mut client = sluice.connect();
        for _ in 0..2 {
            let resp = client.request(with_body("POST", "/crypto/sign", b"GET / HTTP/1.1\r\n\r\n"));
            assert_json_error(&resp, 502, "bad_gateway");
            assert!(!resp.connection_close(), "{}", resp.head_text());
        }
    });
}

#[test]
fn silent_origin_gives_504() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| Reply::hang());
        let sluice = start_proxy(
            &origin.url(),
            &["--upstream-response-timeout-ms", "300"],
            legacy,
        );
        let resp = sluice.connect().get("/crypto/sign?message=hi");
        assert_json_error(&resp, 504, "gateway_timeout");
        assert_eq!(origin.requests().len(), 1);
    });
}

#[test]
fn malformed_origin_responses_give_502() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| {
            match req.target.as_str() {
            "/crypto/sign?garbage" => Reply::raw("NOT HTTP\r\n\r\n").then_close(),
            "/crypto/sign?two-lengths" => {
                Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").then_close()
            }
            "/crypto/sign?cl-and-te" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            .then_close(),
            _ => echo_reply(req),
        }
        });
        let sluice = start_proxy(&origin.url(), &[], legacy);
        for query in ["garbage", "two-lengths"] {
            eprintln!("case: {query}");
            let resp = sluice.connect().get(&format!("/crypto/sign?{query}"));
            assert_json_error(&resp, 502, "bad_gateway");
        }
        // CL together with TE from the origin: never passed on as is.
        let resp = sluice.connect().get("/crypto/sign?cl-and-te");
        assert!(
            resp.status == 502 || resp.body == b"hello",
            "{}",
            String::from_utf8_lossy(&resp.raw)
        );
        // sluice keeps serving.
        assert_eq!(
            sluice.connect().get("/crypto/sign?fine").body_text(),
            "GET /crypto/sign?fine"
        );
    });
}

#[test]
fn stale_pooled_connection_is_replaced() {
    for_both_drivers(|legacy| {
        // Answers one request per connection, then closes it without saying so.
        let origin = MockOrigin::start(|req| echo_reply(req).then_close());
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();

        assert_eq!(
            client.get("/crypto/sign?n=1").body_text(),
            "GET /crypto/sign?n=1"
        );
        origin.wait_closed(1);
        let resp = client.get("/crypto/sign?n=2");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        assert_eq!(resp.body_text(), "GET /crypto/sign?n=2");
        origin.wait_closed(2);
        let resp = client.request(with_body("POST", "/crypto/sign?n=3", b"small"));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        assert_eq!(resp.body_text(), "POST /crypto/sign?n=3");

        let requests = origin.requests();
        let seen: Vec<(String, usize)> = requests
            .iter()
            .map(|r| (r.request_line(), r.conn))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("GET /crypto/sign?n=1 HTTP/1.1".to_string(), 0),
                ("GET /crypto/sign?n=2 HTTP/1.1".to_string(), 1),
                ("POST /crypto/sign?n=3 HTTP/1.1".to_string(), 2),
            ]
        );
        assert_eq!(requests[2].body, b"small");
        assert_eq!(origin.connections(), 3);
    });
}

#[test]
fn origin_connection_close_is_honoured_not_forwarded() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| {
            Reply::response(200, "OK", &[("Connection", "close")], "bye").then_close()
        });
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        for _ in 0..2 {
            let resp = client.get("/crypto/sign");
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, b"bye");
            assert!(
                !resp.connection_close(),
                "the origin's Connection: close is hop-by-hop:\n{}",
                resp.head_text()
            );
        }
        assert_eq!(origin.connections(), 2);
        let conns: Vec<usize> = origin.requests().iter().map(|r| r.conn).collect();
        assert_eq!(conns, [0, 1]);
    });
}

#[test]
fn half_read_upstream_connection_is_not_reused() {
    /// Far more than the socket buffers between origin, sluice and client can hold.
    const BIG: usize = 8 << 20;
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| {
            if req.target.ends_with("big") {
                Reply::ok(pattern(BIG))
            } else {
                echo_reply(req)
            }
        });
        // One worker: both client connections share one pool.
        let sluice = start_proxy(&origin.url(), &["--workers", "1"], legacy);
        let mut client = sluice.connect();
        client.send(get("/crypto/sign?big"));
        client.read_at_least(64 * 1024);
        drop(client);

        for n in 0..3 {
            let target = format!("/crypto/sign?small={n}");
            let resp = sluice.connect().get(&target);
            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
            assert_eq!(resp.body_text(), format!("GET {target}"));
        }
        let requests = origin.requests();
        assert_eq!(requests.len(), 4);
        assert_eq!(requests[0].target, "/crypto/sign?big");
    });
}

#[test]
fn idle_pooled_connections_expire() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(
            &origin.url(),
            &["--upstream-idle-timeout-ms", "200"],
            legacy,
        );
        let mut client = sluice.connect();
        assert_eq!(client.get("/crypto/sign?n=1").status, 200);
        // The subject of the test: stay idle three times the pool's idle timeout.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(client.get("/crypto/sign?n=2").status, 200);
        assert_eq!(
            origin.connections(),
            2,
            "an expired pooled connection was reused"
        );
        let conns: Vec<usize> = origin.requests().iter().map(|r| r.conn).collect();
        assert_eq!(conns, [0, 1]);
        // sluice closed the expired connection itself (the origin never closes).
        origin.wait_closed(1);
    });
}

#[test]
fn origin_dying_mid_body_truncates_the_response() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| {
            if req.target.ends_with("chunked") {
                Reply::raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    .then_close()
            } else {
                Reply::raw("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n0123456789")
                    .then_close()
            }
        });
        let sluice = start_proxy(&origin.url(), &[], legacy);
        for target in ["/crypto/sign?length", "/crypto/sign?chunked"] {
            eprintln!("case: {target}");
            let mut client = sluice.connect();
            client.send(get(target));
            match client.try_response(false) {
                // The head was not sent yet: a clean error is fine.
                Ok(resp) => assert_json_error(&resp, 502, "bad_gateway"),
                Err(failure) => {
                    assert!(
                        failure.is_closed(),
                        "expected sluice to close the connection: {failure:?}"
                    );
                    assert!(
                        failure.received.starts_with(b"HTTP/1.1 200"),
                        "{:?}",
                        String::from_utf8_lossy(&failure.received)
                    );
                }
            }
        }
    });
}

#[test]
fn stalled_origin_body_is_cut_off() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| {
            Reply::raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").then_hang()
        });
        let sluice = start_proxy(
            &origin.url(),
            &["--upstream-read-timeout-ms", "300"],
            legacy,
        );
        let mut client = sluice.connect();
        client.send(get("/crypto/sign?stall"));
        match client.try_response(false) {
            Ok(resp) => assert_json_error(&resp, 504, "gateway_timeout"),
            Err(failure) => {
                assert!(
                    failure.is_closed(),
                    "expected sluice to close the connection: {failure:?}"
                );
                assert!(failure.received.starts_with(b"HTTP/1.1 200"), "{failure:?}");
            }
        }
        // The stalled upstream connection is closed, not pooled.
        origin.wait_closed(1);
    });
}
