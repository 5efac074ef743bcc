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
//!   exactly the client's forwarded fields, in order, byte for byte;
//! - `Allowlist::match_path` on its path never panics, and a match is an entry (exact or
//!   prefix) of the independently decoded path, which has no empty or dot segments, no encoded
//!   slash or backslash and no NUL.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::http::request::{parse_request, Method, RequestHead};
use sluice::http::writer::{write_upstream_request, UpstreamRequestEdits};
use sluice::http::{eq_ignore_case, is_hop_by_hop, BodyFraming, HeadLimits, MAX_HEADERS_CAP};
use sluice::routing::Allowlist;

const PATH_PREFIX: &[u8] = b"/api";
const HOST: &[u8] = b"origin.example";
const TOKEN: &[u8] = b"Bearer fuzz-secret";
const CLIENT_IP: &[u8] = b"10.0.0.7";
const PROTO: &[u8] = b"http";
const ALLOWLIST: &str = "/crypto/sign,/v1/*,/a/b/,/";

/// Fields the writer sets itself (so they are not compared with the client's fields).
const GENERATED: [&[u8]; 6] = [
    b"host",
    b"authorization",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"content-length",
    b"transfer-encoding",
];

fuzz_target!(|input: &[u8]| {
    let limits = HeadLimits::default();
    let Ok(Some(head)) = parse_request(input, &limits) else {
        return;
    };
    check_spans(&head, input);
    check_prefixes(&head, input, &limits);
    check_rewrite(&head, input);
    check_allowlist(head.path.get(input));
});

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
    let n = head.head_len;
    for cut in [n - 1, n.saturating_sub(2), n / 2, 1] {
        if cut < n {
            let got = parse_request(&input[..cut], limits);
            assert_eq!(
                got,
                Ok(None),
                "prefix of {cut} bytes of a valid head is not incomplete"
            );
        }
    }
}

fn check_rewrite(head: &RequestHead, input: &[u8]) {
    let edits = UpstreamRequestEdits {
        path_prefix: PATH_PREFIX,
        host: HOST,
        authorization: TOKEN,
        client_ip: CLIENT_IP,
        proto: PROTO,
        framing: head.framing,
        extra_headers: &[],
    };
    let mut out = Vec::new();
    write_upstream_request(&mut out, head, input, &edits);

    // The rewrite adds a few fields and bytes: parse it with room for them.
    let roomy = HeadLimits {
        max_head_bytes: out.len() + 1,
        max_headers: MAX_HEADERS_CAP,
    };
    let again = match parse_request(&out, &roomy) {
        Ok(Some(h)) => h,
        other => panic!(
            "upstream head does not parse again: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.method, head.method);
    assert_eq!(again.method_span.get(&out), head.method_span.get(input));
    let asterisk = head.method == Method::Options && head.target.get(input) == b"*";
    let want_path = if asterisk {
        b"*".to_vec()
    } else {
        [PATH_PREFIX, head.path.get(input)].concat()
    };
    assert_eq!(again.path.get(&out), &want_path[..], "path changed");
    assert_eq!(
        again.query.map(|q| q.get(&out)),
        head.query.map(|q| q.get(input)),
        "query changed"
    );
    assert_eq!(again.framing, head.framing, "framing changed");
    assert!(again.keep_alive && !again.expect_continue);

    let named = |name: &[u8]| -> Vec<&[u8]> {
        again
            .headers
            .iter()
            .filter(|h| eq_ignore_case(h.name.get(&out), name))
            .map(|h| h.value.get(&out))
            .collect()
    };
    assert_eq!(named(b"host"), [HOST]);
    assert_eq!(
        named(b"authorization"),
        [TOKEN],
        "not exactly one Authorization = token"
    );
    assert_eq!(named(b"x-forwarded-proto"), [PROTO]);
    let client_chain: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|h| h.forward && eq_ignore_case(h.name.get(input), b"x-forwarded-for"))
        .map(|h| h.value.get(input))
        .chain([CLIENT_IP])
        .filter(|v| !v.is_empty())
        .collect();
    assert_eq!(
        named(b"x-forwarded-for"),
        [&client_chain.join(&b", "[..])[..]]
    );

    for h in &again.headers {
        let name = h.name.get(&out);
        if is_hop_by_hop(name) {
            assert!(
                eq_ignore_case(name, b"transfer-encoding")
                    && h.value.get(&out) == b"chunked"
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
    }

    let passed = |h: &&sluice::http::HeaderSpan, buf: &[u8]| {
        !GENERATED.iter().any(|g| eq_ignore_case(g, h.name.get(buf)))
    };
    let sent: Vec<(&[u8], &[u8])> = again
        .headers
        .iter()
        .filter(|h| passed(h, &out))
        .map(|h| (h.name.get(&out), h.value.get(&out)))
        .collect();
    let forwarded: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .filter(|h| h.forward && passed(h, input))
        .map(|h| (h.name.get(input), h.value.get(input)))
        .collect();
    assert_eq!(sent, forwarded, "forwarded fields differ");
}

fn named_by_client_connection(head: &RequestHead, input: &[u8], name: &[u8]) -> bool {
    head.headers
        .iter()
        .filter(|h| eq_ignore_case(h.name.get(input), b"connection"))
        .flat_map(|h| h.value.get(input).split(|&b| b == b','))
        .any(|token| eq_ignore_case(token.trim_ascii(), name))
}

fn check_allowlist(path: &[u8]) {
    static LIST: OnceLock<Allowlist> = OnceLock::new();
    let list = LIST.get_or_init(|| match Allowlist::parse(ALLOWLIST) {
        Ok(list) => list,
        Err(e) => panic!("the fuzz allowlist is invalid: {e}"),
    });
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
