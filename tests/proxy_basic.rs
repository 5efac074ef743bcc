//! Forwarding basics against a plain-HTTP mock origin: request rewriting (Host, token,
//! X-Forwarded-*), the path allowlist, methods, keep-alive and pipelining, HTTP/1.0 clients and
//! hop-by-hop header removal. Every scenario runs on both drivers.

mod common;

use common::*;

/// The standard request of the spec, with a hostile Authorization header.
const SIGN_WITH_EVIL_AUTH: &str =
    "GET /crypto/sign?message=hi HTTP/1.1\r\nHost: sluice.test\r\nAuthorization: Bearer evil\r\nUser-Agent: raw-test\r\n\r\n";

#[test]
fn get_is_forwarded_with_origin_host_token_and_forwarded_headers() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| {
            Reply::raw("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin: yes\r\nContent-Length: 9\r\n\r\nsignature")
        });
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();

        let resp = client.request(SIGN_WITH_EVIL_AUTH);
        assert!(
            resp.raw.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            resp.head_text()
        );
        assert_eq!(resp.header("x-origin").as_deref(), Some("yes"));
        assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
        assert_eq!(resp.header("content-length").as_deref(), Some("9"));
        assert_eq!(resp.body, b"signature");

        // Same connection, no client Authorization at all: the token is still sent once.
        let resp = client.get("/crypto/verify?message=hi&signature=abc");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"signature");

        let requests = origin.wait_requests(2);
        assert_eq!(requests.len(), 2);
        let lines = [
            "GET /crypto/sign?message=hi HTTP/1.1",
            "GET /crypto/verify?message=hi&signature=abc HTTP/1.1",
        ];
        for (req, line) in requests.iter().zip(lines) {
            assert_eq!(req.request_line(), line);
            assert_eq!(
                req.header_all("host"),
                vec![origin.authority()],
                "{}",
                req.head_text()
            );
            req.assert_line(&format!("Host: {}", origin.authority()));
            assert_eq!(
                req.header_all("authorization"),
                vec![TOKEN.to_string()],
                "{}",
                req.head_text()
            );
            req.assert_line("Authorization: testtoken");
            assert_eq!(
                req.header_all("x-forwarded-for"),
                vec!["127.0.0.1"],
                "{}",
                req.head_text()
            );
            req.assert_line("X-Forwarded-For: 127.0.0.1");
            assert_eq!(
                req.header_all("x-forwarded-proto"),
                vec!["http"],
                "{}",
                req.head_text()
            );
            req.assert_line("X-Forwarded-Proto: http");
            assert!(
                !req.head_text().contains("evil"),
                "client credentials leaked:\n{}",
                req.head_text()
            );
            assert!(
                !req.head_text().contains("sluice.test"),
                "client Host leaked:\n{}",
                req.head_text()
            );
            assert!(req.body.is_empty());
        }
        assert_eq!(requests[0].header_all("user-agent"), vec!["raw-test"]);
    });
}

#[test]
fn query_string_passes_unchanged() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        let targets = [
            "/crypto/sign?message=a%20b",
            "/crypto/sign?a=1&b=2",
            "/crypto/verify?message=x%2By%3D&signature=AbC-_w==",
            "/crypto/sign?q=/../x?y=%2F&z=.",
            "/v1/search?q=%E2%9C%93&empty=&flag",
        ];
        for target in targets {
            let resp = client.get(target);
            assert_eq!(resp.status, 200, "{target}");
            assert_eq!(resp.body_text(), format!("GET {target}"));
        }
        let seen: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(seen, targets);
    });
}

#[test]
fn origin_path_is_prepended() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&format!("{}/base", origin.url()), &[], legacy);
        let mut client = sluice.connect();
        assert_eq!(
            client.get("/crypto/sign?message=hi").body_text(),
            "GET /base/crypto/sign?message=hi"
        );
        assert_eq!(client.get("/v1/x/y").body_text(), "GET /base/v1/x/y");
        let requests = origin.requests();
        assert_eq!(
            requests[0].request_line(),
            "GET /base/crypto/sign?message=hi HTTP/1.1"
        );
        assert_eq!(requests[0].header_all("host"), vec![origin.authority()]);
        assert_eq!(requests[1].request_line(), "GET /base/v1/x/y HTTP/1.1");
    });
}

#[test]
fn prefix_entry_forwards_deeper_paths_only() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        for target in ["/v1/anything/deep", "/v1/x?y=1"] {
            let resp = client.get(target);
            assert_eq!(resp.status, 200, "{target}");
            assert_eq!(resp.body_text(), format!("GET {target}"));
        }
        for target in ["/v1x/a", "/v2/a"] {
            assert_json_error(&sluice.connect().get(target), 404, "not_found");
        }
        let seen: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(seen, ["/v1/anything/deep", "/v1/x?y=1"]);
    });
}

#[test]
fn paths_outside_the_allowlist_get_404_json() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let refused = [
            "/",
            "/crypto",
            "/crypto/sign/",
            "/crypto//sign",
            "/crypto/./sign",
            "/x/../crypto/sign",
            "/crypto%2Fsign",
            "/crypto/%2e/sign",
            "/crypto/sign2",
            "/v1/../secret",
            "/v1/%2e%2e/secret",
            "/Crypto/sign?message=hi",
        ];
        for target in refused {
            eprintln!("target {target}");
            let mut client = sluice.connect();
            let resp = client.get(target);
            assert_json_error(&resp, 404, "not_found");
        }
        assert_origin_untouched(&sluice, &origin);

        // Percent-encoded unreserved characters decode to an allowlisted path.
        let resp = sluice.connect().get("/crypto/%73ign?message=hi");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        let forwarded = origin.requests().pop().expect("forwarded").target;
        assert!(
            forwarded == "/crypto/%73ign?message=hi" || forwarded == "/crypto/sign?message=hi",
            "forwarded as {forwarded}"
        );
    });
}

#[test]
fn any_method_is_forwarded_with_its_body() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        let cases: [(&str, &[u8]); 5] = [
            ("POST", b"message=hello"),
            ("PUT", b"{\"a\":1}"),
            ("PATCH", b"patch-body"),
            ("DELETE", b"del"),
            ("OPTIONS", b""),
        ];
        for (method, body) in cases {
            let resp = client.request(with_body(method, "/crypto/sign", body));
            assert_eq!(resp.status, 200, "{method}");
            assert_eq!(resp.body_text(), format!("{method} /crypto/sign"));
        }
        let requests = origin.requests();
        assert_eq!(requests.len(), cases.len());
        for (req, (method, body)) in requests.iter().zip(cases) {
            assert_eq!(
                req.request_line(),
                format!("{method} /crypto/sign HTTP/1.1")
            );
            assert_eq!(req.body, body, "{method}");
            if !body.is_empty() {
                assert_eq!(
                    req.header_all("content-length"),
                    vec![body.len().to_string()],
                    "{method}"
                );
            }
            assert!(
                !req.has_header("transfer-encoding"),
                "{method}: {}",
                req.head_text()
            );
        }
    });
}

#[test]
fn keep_alive_reuses_one_upstream_connection() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        for n in 1..=3 {
            let resp = client.get(&format!("/crypto/sign?n={n}"));
            assert_eq!(resp.status, 200);
            assert!(!resp.connection_close(), "{}", resp.head_text());
            assert_eq!(resp.body_text(), format!("GET /crypto/sign?n={n}"));
        }
        let requests = origin.requests();
        assert_eq!(requests.len(), 3);
        assert!(
            requests.iter().all(|r| r.conn == requests[0].conn),
            "requests spread over connections"
        );
        assert_eq!(
            origin.connections(),
            1,
            "the upstream connection was not reused"
        );
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        let mut batch = String::new();
        for n in 1..=3 {
            batch.push_str(&get(&format!("/crypto/sign?pipelined={n}")));
        }
        client.send(batch);
        for n in 1..=3 {
            let resp = client.response();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body_text(), format!("GET /crypto/sign?pipelined={n}"));
        }
        // Still usable afterwards.
        assert_eq!(
            client.get("/crypto/verify?after").body_text(),
            "GET /crypto/verify?after"
        );
        assert_eq!(origin.requests().len(), 4);
    });
}

#[test]
fn http10_clients_get_close_or_keep_alive() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);

        let mut client = sluice.connect();
        let resp = client.request("GET /crypto/sign?v=10 HTTP/1.0\r\nHost: sluice.test\r\n\r\n");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_text(), "GET /crypto/sign?v=10");
        assert_ne!(
            resp.framing,
            Framing::Chunked,
            "an HTTP/1.0 client cannot read chunked"
        );
        client.expect_closed();

        let mut client = sluice.connect();
        let request = "GET /crypto/sign?v=10ka HTTP/1.0\r\nHost: sluice.test\r\nConnection: keep-alive\r\n\r\n";
        for _ in 0..2 {
            let resp = client.request(request);
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body_text(), "GET /crypto/sign?v=10ka");
            assert_ne!(resp.framing, Framing::Chunked);
            let connection = resp.header("connection").unwrap_or_default();
            assert!(
                connection.eq_ignore_ascii_case("keep-alive"),
                "{}",
                resp.head_text()
            );
        }

        for req in origin.requests() {
            assert!(
                req.request_line().ends_with(" HTTP/1.1"),
                "{}",
                req.head_text()
            );
            assert!(!req.has_header("connection"), "{}", req.head_text());
        }
    });
}

#[test]
fn hop_by_hop_request_headers_are_not_forwarded() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        let resp = client.request(
            "GET /crypto/sign?hop=1 HTTP/1.1\r\nHost: sluice.test\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nUpgrade: foo\r\nX-Keep: yes\r\n\r\n",
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_text(), "GET /crypto/sign?hop=1");
        client.expect_closed(); // the client asked for close

        let req = &origin.requests()[0];
        for name in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ] {
            assert!(
                !req.has_header(name),
                "{name} reached the origin:\n{}",
                req.head_text()
            );
        }
        assert_eq!(req.header_all("x-keep"), vec!["yes"]);
    });
}

#[test]
fn hop_by_hop_response_headers_are_not_forwarded() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| {
            Reply::raw(
                "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: X-Foo\r\nX-Foo: 1\r\nX-Bar: 2\r\n\
                 Content-Length: 2\r\n\r\nok",
            )
        });
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        for _ in 0..2 {
            let resp = client.get("/crypto/sign");
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, b"ok");
            assert!(!resp.has_header("keep-alive"), "{}", resp.head_text());
            assert!(!resp.has_header("x-foo"), "{}", resp.head_text());
            assert!(
                !resp.head_text().to_ascii_lowercase().contains("x-foo"),
                "{}",
                resp.head_text()
            );
            assert_eq!(resp.header("x-bar").as_deref(), Some("2"));
        }
    });
}

#[test]
fn x_forwarded_for_is_appended() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let resp = sluice.connect().request(
            "GET /crypto/sign HTTP/1.1\r\nHost: sluice.test\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        );
        assert_eq!(resp.status, 200);
        let req = &origin.requests()[0];
        assert_eq!(
            req.header_all("x-forwarded-for"),
            vec!["10.0.0.1, 127.0.0.1"],
            "{}",
            req.head_text()
        );
        req.assert_line("X-Forwarded-For: 10.0.0.1, 127.0.0.1");
    });
}
