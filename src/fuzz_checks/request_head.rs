//! The `request_head` oracle: request head parsing, the upstream head edits and the allowlist.
//!
//! Invariant: `parse_request` never panics on any bytes. When it returns a head:
//!
//! - every span lies inside the head (`head_len <= input.len()`), and the head alone
//!   (`input[..head_len]`) parses to the same head while shorter prefixes of it are incomplete
//!   (`Ok(None)`): the verdict does not depend on how the bytes arrived;
//! - the head `write_upstream_request` makes from it (fixed edits, framing as parsed) parses
//!   again to the same method, prefixed path and query and the same framing, with exactly one
//!   `Host` and one `Authorization` (the configured ones), one `X-Forwarded-For` (the client's
//!   chain, then the peer), no hop-by-hop field other than the writer's own
//!   `Transfer-Encoding: chunked`, no field the client named in `Connection`, and otherwise
//!   exactly the client's forwarded fields, in order, byte for byte, then the extra fields
//!   ([`check_upstream_head`], which the `pipeline` oracle uses too);
//! - `Allowlist::match_path` on its path never panics, and a match is an entry (exact or
//!   prefix) of the independently decoded path, which has no empty or dot segments, no encoded
//!   slash or backslash and no NUL.

use std::sync::OnceLock;

use crate::http::request::{parse_request, Method, RequestHead};
use crate::http::writer::{write_upstream_request, UpstreamRequestEdits};
use crate::http::{eq_ignore_case, is_hop_by_hop, BodyFraming, HeadLimits};
use crate::routing::Allowlist;

use super::{prefix_cuts, roomy_limits};

/// The edits of the fuzzed deployment (an origin behind a path prefix, with a token).
pub const PATH_PREFIX: &[u8] = b"/api";
pub const HOST: &[u8] = b"origin.example";
pub const TOKEN: &[u8] = b"Bearer fuzz-secret";
pub const CLIENT_IP: &[u8] = b"10.0.0.7";
pub const PROTO: &[u8] = b"http";
/// Exact, prefix and root entries, so each kind of match is reached.
pub const ALLOWLIST: &str = "/crypto/sign,/v1/*,/a/b/,/";

/// Fields the writer sets itself (so they are not compared with the client's fields).
const GENERATED: [&[u8]; 6] = [
    b"host",
    b"authorization",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"content-length",
    b"transfer-encoding",
];

/// Runs every check of this oracle on `input` (raw bytes from a client).
pub fn check(input: &[u8]) {
    let limits = HeadLimits::default();
    let Ok(Some(head)) = parse_request(input, &limits) else {
        return;
    };
    check_spans(&head, input);
    check_prefixes(&head, input, &limits);
    let edits = UpstreamRequestEdits {
        framing: head.framing,
        ..fuzz_edits()
    };
    let mut out = Vec::new();
    write_upstream_request(&mut out, &head, input, &edits);
    check_upstream_head(&head, input, &out, &edits, None);
    check_allowlist(allowlist(), head.path.get(input));
}

/// The fixed edits (framing `None`, no extra fields): set `framing` per request.
pub fn fuzz_edits() -> UpstreamRequestEdits<'static> {
    UpstreamRequestEdits {
        path_prefix: PATH_PREFIX,
        host: HOST,
        authorization: TOKEN,
        client_ip: CLIENT_IP,
        proto: PROTO,
        framing: BodyFraming::None,
        extra_headers: &[],
    }
}

fn allowlist() -> &'static Allowlist {
    static LIST: OnceLock<Allowlist> = OnceLock::new();
    LIST.get_or_init(|| match Allowlist::parse(ALLOWLIST) {
        Ok(list) => list,
        Err(e) => panic!("the fuzz allowlist is invalid: {e}"),
    })
}

fn check_spans(head: &RequestHead, input: &[u8]) {
    assert!(head.head_len <= input.len(), "head_len past the input");
    let spans = [head.method_span, head.target, head.path]
        .into_iter()
        .chain(head.query)
        .chain(head.headers.iter().flat_map(|h| [h.name, h.value]));
    for span in spans {
        assert!(
            span.start <= span.end && span.end as usize <= head.head_len,
            "span {span:?} outside the head of {} bytes",
            head.head_len
        );
    }
    assert!(!head.method_span.is_empty() && !head.target.is_empty());
    assert_ne!(head.framing, BodyFraming::CloseDelimited);
}

fn check_prefixes(head: &RequestHead, input: &[u8], limits: &HeadLimits) {
    let exact = parse_request(&input[..head.head_len], limits);
    assert_eq!(
        exact.as_ref(),
        Ok(&Some(head.clone())),
        "head alone parses differently"
    );
    for cut in prefix_cuts(head.head_len) {
        if cut < head.head_len {
            assert_eq!(
                parse_request(&input[..cut], limits),
                Ok(None),
                "prefix of {cut} bytes of a valid head is not incomplete"
            );
        }
    }
}

/// Checks `out`, the upstream head sluice wrote for the client's `head` (spans into `input`)
/// with `edits` and the query replacement `query` (as `write_upstream_request_with_query` takes
/// it), and returns it parsed again. `out` must hold exactly the head.
pub fn check_upstream_head(
    head: &RequestHead,
    input: &[u8],
    out: &[u8],
    edits: &UpstreamRequestEdits,
    query: Option<&[u8]>,
) -> RequestHead {
    let again = match parse_request(out, &roomy_limits(out.len())) {
        Ok(Some(h)) => h,
        other => panic!(
            "upstream head does not parse again: {other:?}\n{}",
            String::from_utf8_lossy(out)
        ),
    };
    assert_eq!(
        again.head_len,
        out.len(),
        "upstream head has bytes after it"
    );
    assert_eq!(again.method, head.method);
    assert_eq!(again.method_span.get(out), head.method_span.get(input));
    let asterisk = head.method == Method::Options && head.target.get(input) == b"*";
    let want_path = if asterisk {
        b"*".to_vec()
    } else {
        [edits.path_prefix, head.path.get(input)].concat()
    };
    assert_eq!(again.path.get(out), &want_path[..], "path changed");
    let want_query = match query {
        None => head.query.map(|q| q.get(input)),
        Some([]) => None,
        Some(q) => Some(q),
    };
    assert_eq!(again.query.map(|q| q.get(out)), want_query, "query changed");
    assert_eq!(
        again.framing, edits.framing,
        "framing is not the one asked for"
    );
    assert!(again.keep_alive && !again.expect_continue);

    let named = |name: &[u8]| -> Vec<&[u8]> {
        again
            .headers
            .iter()
            .filter(|h| eq_ignore_case(h.name.get(out), name))
            .map(|h| h.value.get(out))
            .collect()
    };
    assert_eq!(named(b"host"), [edits.host]);
    assert_eq!(
        named(b"authorization"),
        [edits.authorization],
        "not exactly one Authorization = token"
    );
    assert_eq!(named(b"x-forwarded-proto"), [edits.proto]);
    let client_chain: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|h| h.forward && eq_ignore_case(h.name.get(input), b"x-forwarded-for"))
        .map(|h| h.value.get(input))
        .chain([edits.client_ip])
        .filter(|v| !v.is_empty())
        .collect();
    assert_eq!(
        named(b"x-forwarded-for"),
        [&client_chain.join(&b", "[..])[..]]
    );

    for h in &again.headers {
        let name = h.name.get(out);
        if is_hop_by_hop(name) {
            assert!(
                eq_ignore_case(name, b"transfer-encoding")
                    && h.value.get(out) == b"chunked"
                    && head.framing == BodyFraming::Chunked,
                "hop-by-hop field {:?} sent upstream",
                String::from_utf8_lossy(name)
            );
        }
        let generated = GENERATED.iter().any(|g| eq_ignore_case(g, name));
        assert!(
            generated || !named_by_client_connection(head, input, name),
            "field {:?} named in the client's Connection sent upstream",
            String::from_utf8_lossy(name)
        );
        assert!(
            !eq_ignore_case(name, b"expect"),
            "Expect sent upstream (sluice answers it itself)"
        );
    }

    let sent = super::fields_except(&again.headers, out, &GENERATED);
    let expected: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .filter(|h| h.forward && !super::is_generated(h.name.get(input), &GENERATED))
        .map(|h| (h.name.get(input), h.value.get(input)))
        .chain(edits.extra_headers.iter().copied())
        .collect();
    assert_eq!(sent, expected, "forwarded fields differ");
    again
}

fn named_by_client_connection(head: &RequestHead, input: &[u8], name: &[u8]) -> bool {
    head.headers
        .iter()
        .filter(|h| eq_ignore_case(h.name.get(input), b"connection"))
        .flat_map(|h| h.value.get(input).split(|&b| b == b','))
        .any(|token| eq_ignore_case(token.trim_ascii(), name))
}

/// `match_path` on `path` never panics, and a match is checked against an independent
/// decoding of the path.
pub fn check_allowlist(list: &Allowlist, path: &[u8]) {
    let Some(i) = list.match_path(path) else {
        return;
    };
    assert!(i < list.len());
    let Some(segments) = decode_segments(path) else {
        panic!("matched a path with a malformed escape: {path:?}");
    };
    let count = segments.len();
    for (n, seg) in segments.iter().enumerate() {
        assert!(
            n + 1 == count || !seg.is_empty(),
            "matched an empty segment: {path:?}"
        );
        assert!(
            !seg.iter().any(|&b| b == 0 || b == b'/' || b == b'\\'),
            "matched NUL or an encoded slash/backslash: {path:?}"
        );
        let before_params = seg.split(|&b| b == b';').next().unwrap_or(&[]);
        assert!(
            before_params != b"." && before_params != b"..",
            "matched a dot segment: {path:?}"
        );
    }
    let decoded = [&b"/"[..], &segments.join(&b'/')].concat();
    let entry = list.entry(i).as_bytes();
    if list.is_prefix(i) {
        let dir = &entry[..entry.len() - 1];
        assert!(
            decoded.len() > dir.len() && decoded.starts_with(dir),
            "{decoded:?} matched prefix entry {entry:?}"
        );
    } else {
        assert_eq!(&decoded[..], entry, "matched exact entry {entry:?}");
    }
}

/// The percent-decoded segments of `/seg/seg/...`, each decoded on its own (so `%2F` stays
/// inside its segment); `None` for a malformed escape or a path not starting with `/`.
fn decode_segments(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let rest = path.strip_prefix(b"/")?;
    rest.split(|&b| b == b'/')
        .map(|seg| {
            let mut out = Vec::with_capacity(seg.len());
            let mut i = 0;
            while i < seg.len() {
                if seg[i] == b'%' {
                    let hi = hex_digit(*seg.get(i + 1)?)?;
                    let lo = hex_digit(*seg.get(i + 2)?)?;
                    out.push(hi << 4 | lo);
                    i += 3;
                } else {
                    out.push(seg[i]);
                    i += 1;
                }
            }
            Some(out)
        })
        .collect()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
