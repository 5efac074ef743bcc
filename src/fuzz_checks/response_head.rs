//! The `response_head` oracle: response head parsing and the client head edits.
//!
//! Invariant: `parse_response` never panics on any bytes, whatever the request method. When it
//! returns a head (tried for a GET and for a HEAD request):
//!
//! - every span lies inside the head (`head_len <= input.len()`), and the head alone parses to
//!   the same head while shorter prefixes of it are incomplete (`Ok(None)`);
//! - the head `write_client_response` makes from it, for an HTTP/1.1 and an HTTP/1.0 client that
//!   does or does not keep the connection open (framing and persistence chosen by the proxy's
//!   own `forward::client_framing`), parses again to the same status and reason phrase, the
//!   framing and persistence the edits asked for, the `Content-Length` it should announce, and
//!   otherwise exactly the upstream's forwarded fields, in order, byte for byte (no framing or
//!   hop-by-hop field from the upstream leaks). [`check_client_head`] holds these checks; the
//!   `pipeline` oracle applies them to the heads in its client stream.

use crate::http::request::Method;
use crate::http::response::{parse_response, ResponseHead};
use crate::http::writer::{write_client_response, ClientResponseEdits};
use crate::http::{is_hop_by_hop, BodyFraming, HeadLimits, Version};
use crate::proxy::forward::client_framing;

use super::{prefix_cuts, roomy_limits};

/// Fields the writer sets itself (so they are not compared with the upstream's fields).
const GENERATED: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"connection"];

/// Runs every check of this oracle on `input` (raw bytes from an upstream).
pub fn check(input: &[u8]) {
    let limits = HeadLimits::default();
    for method in [Method::Get, Method::Head] {
        let Ok(Some(head)) = parse_response(input, &limits, method) else {
            continue;
        };
        check_spans(&head, input);
        check_prefixes(&head, input, &limits, method);
        for client_version in [Version::Http11, Version::Http10] {
            for client_keep_alive in [true, false] {
                let (framing, _, keep_alive) =
                    client_framing(head.framing, client_version, client_keep_alive);
                let edits = ClientResponseEdits {
                    framing,
                    keep_alive,
                    client_version,
                    keep_content_length: method == Method::Head || head.status == 304,
                };
                let mut out = Vec::new();
                write_client_response(&mut out, &head, input, &edits);
                check_client_head(&head, input, &edits, &out, method);
            }
        }
    }
}

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
    for cut in prefix_cuts(head.head_len) {
        if cut < head.head_len {
            assert_eq!(
                parse_response(&input[..cut], limits, method),
                Ok(None),
                "prefix of {cut} bytes of a valid head is not incomplete"
            );
        }
    }
}

/// Checks `out`, the client head sluice wrote for the upstream's `head` (spans into `input`)
/// with `edits`, as a client that sent `method` reads it, and returns it parsed again. `out`
/// must start with the head; bytes after it (the body) are ignored.
pub fn check_client_head(
    head: &ResponseHead,
    input: &[u8],
    edits: &ClientResponseEdits,
    out: &[u8],
    method: Method,
) -> ResponseHead {
    let again = match parse_response(out, &roomy_limits(out.len()), method) {
        Ok(Some(h)) => h,
        other => panic!(
            "client head does not parse again: {other:?}\n{}",
            String::from_utf8_lossy(out)
        ),
    };
    let out = &out[..again.head_len];
    assert_eq!(again.version, Version::Http11);
    assert_eq!(again.status, head.status);
    assert_eq!(
        again.reason.get(out),
        head.reason.get(input),
        "reason changed"
    );
    // A client that sent HEAD reads no body whatever the head says.
    let want_framing = if method == Method::Head {
        BodyFraming::None
    } else {
        edits.framing
    };
    assert_eq!(
        again.framing, want_framing,
        "framing is not the one asked for"
    );
    assert_eq!(
        again.keep_alive, edits.keep_alive,
        "persistence is not the one asked for"
    );
    let want_length = match edits.framing {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::None if edits.keep_content_length => head.content_length,
        _ => None,
    };
    assert_eq!(
        again.content_length, want_length,
        "Content-Length announced wrongly"
    );

    let sent = super::fields_except(&again.headers, out, &GENERATED);
    let forwarded: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .filter(|h| h.forward)
        .map(|h| (h.name.get(input), h.value.get(input)))
        .collect();
    assert_eq!(sent, forwarded, "forwarded fields differ");
    for (name, _) in &forwarded {
        assert!(
            !is_hop_by_hop(name),
            "hop-by-hop field {:?} sent to the client",
            String::from_utf8_lossy(name)
        );
    }
    again
}
