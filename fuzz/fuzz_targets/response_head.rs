//! Invariant: `parse_response` never panics on any bytes, whatever the request method. When it
//! returns a head (tried for a GET and for a HEAD request):
//!
//! - every span lies inside the head (`head_len <= input.len()`), and the head alone parses to
//!   the same head while shorter prefixes of it are incomplete (`Ok(None)`);
//! - the head `write_client_response` makes from it, for an HTTP/1.1 and an HTTP/1.0 client that
//!   does or does not keep the connection open (edits chosen as the proxy chooses them), parses
//!   again to the same status and reason phrase, the framing and persistence the edits asked
//!   for, the `Content-Length` it should announce, and otherwise exactly the upstream's forwarded
//!   fields, in order, byte for byte (no framing or hop-by-hop field from the upstream leaks).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::request::Method;
use sluice::http::response::{parse_response, ResponseHead};
use sluice::http::writer::{write_client_response, ClientResponseEdits};
use sluice::http::{eq_ignore_case, BodyFraming, HeadLimits, HeaderSpan, Version, MAX_HEADERS_CAP};

/// Fields the writer sets itself (so they are not compared with the upstream's fields).
const GENERATED: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"connection"];

fuzz_target!(|input: &[u8]| {
    let limits = HeadLimits::default();
    for method in [Method::Get, Method::Head] {
        let Ok(Some(head)) = parse_response(input, &limits, method) else {
            continue;
        };
        check_spans(&head, input);
        check_prefixes(&head, input, &limits, method);
        for client_version in [Version::Http11, Version::Http10] {
            for client_keep_alive in [true, false] {
                check_rewrite(&head, input, method, client_version, client_keep_alive);
            }
        }
    }
});

fn check_spans(head: &ResponseHead, input: &[u8]) {
    assert!(head.head_len <= input.len(), "head_len past the input");
    let spans = [head.reason]
        .into_iter()
        .chain(head.headers.iter().flat_map(|h| [h.name, h.value]));
    for span in spans {
        assert!(
            span.start <= span.end && span.end as usize <= head.head_len,
            "span {span:?} outside the head of {} bytes",
            head.head_len
        );
    }
    assert!((100..=599).contains(&head.status));
}

fn check_prefixes(head: &ResponseHead, input: &[u8], limits: &HeadLimits, method: Method) {
    let exact = parse_response(&input[..head.head_len], limits, method);
    assert_eq!(
        exact.as_ref(),
        Ok(&Some(head.clone())),
        "head alone parses differently"
    );
    let n = head.head_len;
    for cut in [n - 1, n.saturating_sub(2), n / 2, 1] {
        if cut < n {
            let got = parse_response(&input[..cut], limits, method);
            assert_eq!(
                got,
                Ok(None),
                "prefix of {cut} bytes of a valid head is not incomplete"
            );
        }
    }
}

/// The framing and persistence the proxy picks for the client (mirrors `proxy::forward`).
fn client_framing(
    upstream: BodyFraming,
    version: Version,
    keep_alive: bool,
) -> (BodyFraming, bool) {
    match (upstream, version) {
        (BodyFraming::None | BodyFraming::Length(_), _) => (upstream, keep_alive),
        (BodyFraming::Chunked | BodyFraming::CloseDelimited, Version::Http11) => {
            (BodyFraming::Chunked, keep_alive)
        }
        (BodyFraming::Chunked | BodyFraming::CloseDelimited, Version::Http10) => {
            (BodyFraming::CloseDelimited, false)
        }
    }
}

fn check_rewrite(
    head: &ResponseHead,
    input: &[u8],
    method: Method,
    client_version: Version,
    client_keep_alive: bool,
) {
    let (framing, keep_alive) = client_framing(head.framing, client_version, client_keep_alive);
    let edits = ClientResponseEdits {
        framing,
        keep_alive,
        client_version,
        keep_content_length: method == Method::Head || head.status == 304,
    };
    let mut out = Vec::new();
    write_client_response(&mut out, head, input, &edits);

    let roomy = HeadLimits {
        max_head_bytes: out.len() + 1,
        max_headers: MAX_HEADERS_CAP,
    };
    let again = match parse_response(&out, &roomy, method) {
        Ok(Some(h)) => h,
        other => panic!(
            "client head does not parse again: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.version, Version::Http11);
    assert_eq!(again.status, head.status);
    assert_eq!(
        again.reason.get(&out),
        head.reason.get(input),
        "reason changed"
    );
    assert_eq!(again.framing, framing, "framing is not the one asked for");
    assert_eq!(
        again.keep_alive, keep_alive,
        "persistence is not the one asked for"
    );
    let want_length = match framing {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::None if edits.keep_content_length => head.content_length,
        _ => None,
    };
    assert_eq!(
        again.content_length, want_length,
        "Content-Length announced wrongly"
    );

    let passed =
        |h: &&HeaderSpan, buf: &[u8]| !GENERATED.iter().any(|g| eq_ignore_case(g, h.name.get(buf)));
    let sent: Vec<(&[u8], &[u8])> = again
        .headers
        .iter()
        .filter(|h| passed(h, &out))
        .map(|h| (h.name.get(&out), h.value.get(&out)))
        .collect();
    let forwarded: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .filter(|h| h.forward)
        .map(|h| (h.name.get(input), h.value.get(input)))
        .collect();
    assert_eq!(sent, forwarded, "forwarded fields differ");
}
