//! Message framing through the proxy: request bodies (Content-Length, chunked, 100-continue,
//! size limit) and response bodies (Content-Length, chunked, close-delimited, HEAD, 204/304,
//! interim 1xx), checked byte for byte on both sides. Every scenario runs on both drivers.

mod common;

use common::*;

/// 300 KiB: larger than any single socket read, smaller than the 1 MiB default body limit.
const LARGE_REQUEST_BODY: usize = 300 * 1024;
/// 1 MiB response body.
const LARGE_RESPONSE_BODY: usize = 1 << 20;
/// Body the close-delimited responses carry.
const CLOSE_DELIMITED_BODY: usize = 100 * 1024;

#[test]
fn content_length_request_bodies_arrive_intact() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| Reply::ok(format!("got {}", req.body.len())));
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();

        let small = b"hello world".to_vec();
        let large = pattern(LARGE_REQUEST_BODY);
        for body in [&small, &large] {
            let resp = client.request(with_body("POST", "/crypto/sign", body));
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body_text(), format!("got {}", body.len()));
        }
        let requests = origin.requests();
        assert_eq!(requests[0].body, small);
        assert_eq!(requests[0].header_all("content-length"), vec!["11"]);
        assert!(requests[1].body == large, "300 KiB body corrupted");
        assert_eq!(
            requests[1].header_all("content-length"),
            vec![LARGE_REQUEST_BODY.to_string()]
        );
    });
}

#[test]
fn chunked_request_body_is_decoded_and_reframed() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| Reply::ok(format!("got {}", req.body.len())));
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        client.send(
            "POST /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        client.send("5;ext=1\r\nhello\r\n");
        client.send("6\r\n world\r\nA;a=b;c=d\r\n0123");
        let tail = "-the last chunk, longer than fifteen bytes-";
        client.send(format!("456789\r\n{:x}\r\n", tail.len()));
        client.send(format!("{tail}\r\n0\r\nX-Trailer: t\r\n\r\n"));
        let resp = client.response();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        let expected = format!("hello world0123456789{tail}").into_bytes();
        assert_eq!(resp.body_text(), format!("got {}", expected.len()));

        let req = &origin.requests()[0];
        assert_eq!(req.body, expected);
        assert_eq!(req.framing, Framing::Chunked, "{}", req.head_text());
        assert_eq!(
            req.header_all("transfer-encoding"),
            vec!["chunked"],
            "{}",
            req.head_text()
        );
        assert!(!req.has_header("content-length"), "{}", req.head_text());

        // The connection is in a clean state afterwards.
        assert_eq!(client.get("/crypto/verify?after").status, 200);
    });
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| {
            Reply::ok(format!("got {}", String::from_utf8_lossy(&req.body)))
        });
        let sluice = start_proxy(&origin.url(), &[], legacy);

        let mut client = sluice.connect();
        client.send("POST /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        let interim = client.read_exact_bytes(b"HTTP/1.1 100 Continue\r\n\r\n".len());
        assert_eq!(
            String::from_utf8_lossy(&interim),
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
        client.send("hello");
        let resp = client.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_text(), "got hello");
        let req = &origin.requests()[0];
        assert_eq!(req.body, b"hello");
        assert!(!req.has_header("expect"), "{}", req.head_text());

        // Not allowlisted: the 404 comes without an interim 100.
        let mut client = sluice.connect();
        client.send("POST /nope HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        let resp = client.try_one(false).unwrap_or_else(|f| panic!("{f:?}"));
        assert_json_error(&resp, 404, "not_found");
        assert_eq!(origin.requests().len(), 1);
    });
}

/// Origin answers chosen by the request's query string.
fn framing_origin() -> MockOrigin {
    MockOrigin::start(|req| {
        let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        match query {
            "cl" => Reply::ok("content-length body"),
            "chunked" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                 4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
            "big" => Reply::ok(pattern(LARGE_RESPONSE_BODY)),
            "close-delimited" => {
                let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
                raw.extend_from_slice(&pattern(CLOSE_DELIMITED_BODY));
                Reply::raw(raw).then_close()
            }
            "head" => Reply::raw(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n",
            ),
            "204" => Reply::raw("HTTP/1.1 204 No Content\r\nX-Status: 204\r\n\r\n"),
            "304" => Reply::raw("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
            "early-hints" => Reply::raw(
                "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            ),
            _ => echo_reply(req),
        }
    })
}

#[test]
fn response_bodies_reach_http11_clients_intact() {
    for_both_drivers(|legacy| {
        let origin = framing_origin();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();

        let resp = client.get("/crypto/sign?cl");
        assert_eq!(resp.body, b"content-length body");
        assert_eq!(resp.header("content-length").as_deref(), Some("19"));

        let resp = client.get("/crypto/sign?chunked");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.framing, Framing::Chunked, "{}", resp.head_text());
        assert_eq!(resp.body, b"Wikipedia");

        let resp = client.get("/crypto/sign?big");
        assert_eq!(resp.status, 200);
        assert!(
            resp.body == pattern(LARGE_RESPONSE_BODY),
            "1 MiB body corrupted ({} bytes)",
            resp.body.len()
        );

        // Close-delimited upstream body: re-framed as chunked, client connection kept.
        let resp = client.get("/crypto/sign?close-delimited");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.framing, Framing::Chunked, "{}", resp.head_text());
        assert!(
            resp.body == pattern(CLOSE_DELIMITED_BODY),
            "close-delimited body corrupted ({} bytes)",
            resp.body.len()
        );
        assert!(!resp.connection_close());

        let resp = client.get("/crypto/sign?after");
        assert_eq!(resp.body_text(), "GET /crypto/sign?after");
    });
}

#[test]
fn large_bodies_reach_a_slow_reader_intact_after_short_writes() {
    // The client reads nothing until two pipelined 1 MiB responses have filled every socket
    // buffer on the way: sluice's writes of head + body (one writev, the body not copied) come
    // back short and must resume exactly where they stopped.
    for_both_drivers(|legacy| {
        let origin = framing_origin();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        client.send(
            "GET /crypto/sign?big HTTP/1.1\r\nHost: sluice.test\r\n\r\n\
             GET /crypto/sign?cl HTTP/1.1\r\nHost: sluice.test\r\n\r\n\
             GET /crypto/sign?big HTTP/1.1\r\nHost: sluice.test\r\n\r\n",
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        for (n, expected) in [
            pattern(LARGE_RESPONSE_BODY),
            b"content-length body".to_vec(),
            pattern(LARGE_RESPONSE_BODY),
        ]
        .into_iter()
        .enumerate()
        {
            let resp = client.response();
            assert_eq!(resp.status, 200, "response {n}");
            assert!(
                resp.body == expected,
                "response {n} corrupted ({} bytes, wanted {})",
                resp.body.len(),
                expected.len()
            );
        }
        // HTTP/1.0 and a close-delimited origin: raw bytes until the end, same path.
        let mut client = sluice.connect();
        client.send("GET /crypto/sign?close-delimited HTTP/1.0\r\nHost: sluice.test\r\n\r\n");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let resp = client.response();
        assert!(
            resp.body == pattern(CLOSE_DELIMITED_BODY),
            "close-delimited body corrupted"
        );
    });
}

#[test]
fn http10_clients_never_get_chunked_responses() {
    for_both_drivers(|legacy| {
        let origin = framing_origin();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        for (query, expected) in [
            ("close-delimited", pattern(CLOSE_DELIMITED_BODY)),
            ("chunked", b"Wikipedia".to_vec()),
        ] {
            let mut client = sluice.connect();
            let resp = client.request(format!(
                "GET /crypto/sign?{query} HTTP/1.0\r\nHost: sluice.test\r\n\r\n"
            ));
            assert_eq!(resp.status, 200, "{query}");
            assert_ne!(
                resp.framing,
                Framing::Chunked,
                "{query}: {}",
                resp.head_text()
            );
            assert!(
                !resp.has_header("transfer-encoding"),
                "{query}: {}",
                resp.head_text()
            );
            assert!(
                resp.body == expected,
                "{query}: body corrupted ({} bytes)",
                resp.body.len()
            );
            client.expect_closed();
        }
    });
}

#[test]
fn bodiless_responses_keep_the_connection_in_sync() {
    for_both_drivers(|legacy| {
        let origin = framing_origin();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();

        client.send("HEAD /crypto/sign?head HTTP/1.1\r\nHost: sluice.test\r\n\r\n");
        let resp = client.head_response();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-length").as_deref(),
            Some("1234"),
            "{}",
            resp.head_text()
        );
        assert_eq!(resp.raw, resp.head);
        // Any stray body byte would corrupt the next response.
        assert_eq!(
            client.get("/crypto/sign?after-head").body_text(),
            "GET /crypto/sign?after-head"
        );

        let resp = client.get("/crypto/sign?204");
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("x-status").as_deref(), Some("204"));
        assert!(
            !resp.has_header("transfer-encoding"),
            "{}",
            resp.head_text()
        );
        assert_eq!(
            client.get("/crypto/sign?after-204").body_text(),
            "GET /crypto/sign?after-204"
        );

        let resp = client.get("/crypto/sign?304");
        assert_eq!(resp.status, 304);
        assert_eq!(resp.header("etag").as_deref(), Some("\"v1\""));
        assert!(
            !resp.has_header("transfer-encoding"),
            "{}",
            resp.head_text()
        );
        assert_eq!(
            client.get("/crypto/sign?after-304").body_text(),
            "GET /crypto/sign?after-304"
        );

        let resp = client.get("/crypto/sign?early-hints");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"final");
        for interim in &resp.informational {
            assert_eq!(interim.status, 103);
        }
        assert_eq!(
            client.get("/crypto/sign?after-103").body_text(),
            "GET /crypto/sign?after-103"
        );

        // The origin connection stayed in sync too: one connection for all of it.
        assert_eq!(origin.connections(), 1);
    });
}

#[test]
fn request_body_over_the_limit_gets_413() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &["--max-request-body-bytes", "1000"], legacy);
        let mut client = sluice.connect();
        let resp = client.request(with_body("POST", "/crypto/sign", &pattern(2000)));
        assert_json_error(&resp, 413, "payload_too_large");
        assert_origin_untouched(&sluice, &origin);

        // Exactly at the limit is fine.
        let resp = sluice
            .connect()
            .request(with_body("POST", "/crypto/sign", &pattern(1000)));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        assert_eq!(origin.requests().last().unwrap().body, pattern(1000));
    });
}
