//! HTTPS origins: a test CA given with `--ca-file`, keep-alive over TLS, and certificate
//! failures (untrusted issuer, wrong name) that must become 502s. Every scenario runs on both
//! drivers.

mod common;

use common::tls::TestCa;
use common::*;

fn echo_with_body(req: &Request) -> Reply {
    Reply::ok(format!(
        "{} {} {}",
        req.method,
        req.target,
        String::from_utf8_lossy(&req.body)
    ))
}

#[test]
fn https_origin_with_ca_file() {
    let ca = TestCa::new();
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start_tls(
            ca.server_config(&["localhost", "127.0.0.1"]),
            echo_with_body,
        );
        let sluice = start_proxy(&origin.url(), &["--ca-file", ca.ca_path()], legacy);
        let mut client = sluice.connect();

        let resp = client.get("/crypto/sign?message=tls");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        assert_eq!(resp.body_text(), "GET /crypto/sign?message=tls ");
        let resp = client.request(with_body("POST", "/crypto/verify", b"signed-body"));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        assert_eq!(resp.body_text(), "POST /crypto/verify signed-body");

        let requests = origin.requests();
        assert_eq!(requests.len(), 2);
        for req in &requests {
            assert_eq!(req.sni.as_deref(), Some("localhost"));
            assert_eq!(
                req.header_all("host"),
                vec![format!("localhost:{}", origin.port())],
                "{}",
                req.head_text()
            );
            req.assert_line(&format!("Host: localhost:{}", origin.port()));
            assert_eq!(
                req.header_all("authorization"),
                vec![TOKEN],
                "{}",
                req.head_text()
            );
            assert_eq!(
                req.header_all("x-forwarded-proto"),
                vec!["http"],
                "{}",
                req.head_text()
            );
        }
        assert_eq!(requests[1].body, b"signed-body");
        assert_eq!(origin.connections(), 1, "the TLS connection was not reused");
        assert!(requests.iter().all(|r| r.conn == 0));
        assert!(
            origin.tls_failures().is_empty(),
            "{:?}",
            origin.tls_failures()
        );
    });
}

#[test]
fn untrusted_origin_certificate_gives_502() {
    let ca = TestCa::new();
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start_tls(
            ca.server_config(&["localhost", "127.0.0.1"]),
            echo_with_body,
        );
        // No --ca-file: the test CA is not among the trusted roots.
        let sluice = start_proxy(&origin.url(), &[], legacy);
        let resp = sluice.connect().get("/crypto/sign?message=untrusted");
        assert_json_error(&resp, 502, "bad_gateway");
        assert!(
            origin.requests().is_empty(),
            "a request crossed an untrusted TLS connection"
        );
        if !sluice.stderr().to_ascii_lowercase().contains("certificate") {
            eprintln!(
                "note: sluice's stderr does not mention the certificate problem:\n{}",
                sluice.stderr()
            );
        }
    });
}

#[test]
fn wrong_name_certificate_gives_502() {
    let ca = TestCa::new();
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start_tls(ca.server_config(&["example.com"]), echo_with_body);
        let sluice = start_proxy(&origin.url(), &["--ca-file", ca.ca_path()], legacy);
        let resp = sluice.connect().get("/crypto/sign?message=wrong-name");
        assert_json_error(&resp, 502, "bad_gateway");
        assert!(
            origin.requests().is_empty(),
            "a request crossed a TLS connection to the wrong name"
        );
    });
}
