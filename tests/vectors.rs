//! Table-driven check of sluice's HTTP/1.1 parsers against llhttp's strict-mode test vectors
//! (`tests/data/llhttp-strict.json`, see `tests/data/README.md`).
//!
//! Invariant: where llhttp rejects a byte stream, sluice rejects it too, no later than the
//! message llhttp stopped at (`messages + 1`), so nothing llhttp considers ambiguous is ever
//! forwarded; where llhttp accepts, sluice accepts at least as many complete messages. Every
//! deliberate difference is listed below with its reason, and a listed vector that stops
//! differing fails the test (so the lists cannot go stale).
//!
//! Each stream is run the way the connection code runs it: parse a head, consume the body as
//! framed (Content-Length bytes or the chunked decoder), repeat for pipelined messages, and stop
//! after a message that does not keep the connection alive (bytes after it are never read, which
//! counts as refusing them).
//!
//! Two harness rules, applied uniformly rather than listed per vector:
//!
//! * The vector file lost the final CRLF of 132 of its 200 inputs (its extraction script removed
//!   the trailing newline of each markdown code block twice: Python's `re.sub(r'\n$', ...)` also
//!   matches before a final newline, unlike the JavaScript regex in llhttp's `md-test.ts`). The
//!   file does not say which ones, so every vector is run both as stored and with CRLF appended,
//!   and llhttp's verdict must hold for at least one of the two.
//! * RFC 9112 section 3.2 requires a 400 for an HTTP/1.1 request without Host; llhttp leaves that
//!   to the application, and most request vectors have no Host. When sluice refuses a message for
//!   that reason alone, the harness inserts `Host: vectors.test` after its request line and runs
//!   the stream again, so the rest of the vector is still checked. The count is printed.

use sluice::http::chunked::{Chunk, ChunkedDecoder};
use sluice::http::request::{parse_request, Method, RequestError};
use sluice::http::response::parse_response;
use sluice::http::{BodyFraming, HeadLimits};

const VECTORS: &str = include_str!("data/llhttp-strict.json");

/// The error sluice gives for a missing Host (see the second harness rule).
const MISSING_HOST: RequestError = RequestError::BadRequest("HTTP/1.1 request without Host");

/// Inserted by the harness when a request lacks Host.
const PATCH_HOST: &[u8] = b"Host: vectors.test\r\n";

/// llhttp ran these response tests with `skipBody` (the application declares that the message
/// has no body), which is how a response to HEAD is parsed: the harness passes `Method::Head`.
const HEAD_RESPONSES: &[usize] = &[143];

/// llhttp rejects these; sluice does not reject them within `messages + 1` messages.
/// Each entry: (vector index, why that is safe).
const LLHTTP_REJECTS_SLUICE_DOES_NOT: &[(usize, &str)] = &[
    (
        3,
        "extraction artifact: the stored bytes run on into the markdown log text, and the \
         recorded verdict is not the one llhttp's log gives for this test (POST then GET, both \
         accepted). sluice reads the POST (Content-Length 4) as llhttp does, then refuses the \
         log text as the second message (a '```' header line)",
    ),
    (
        9,
        "llhttp pauses after a request carrying Upgrade because the bytes after it may be \
         another protocol. sluice never forwards Upgrade (hop-by-hop), so the origin never \
         switches protocols: the request is a complete, unambiguous HTTP request, and non-HTTP \
         bytes after it would be refused as the next request",
    ),
    (
        15,
        "the head stops before its end; sluice checks Content-Length once the head is complete, \
         and refuses this overflowing value then (unit test content_length_rules)",
    ),
    (
        16,
        "the head stops before its end; complete, this pair of differing Content-Length fields \
         is refused (unit test content_length_rules)",
    ),
    (
        31,
        "llhttp only allows RTSP methods such as ANNOUNCE with RTSP/x.y; sluice accepts any \
         token method (RFC 9110 section 9.1) and forwards it verbatim, which no parser can split \
         differently (the path must still match the allowlist)",
    ),
    (
        40,
        "llhttp knows a fixed list of methods and refuses MKCOLA; sluice accepts any token \
         method (RFC 9110 section 9.1) and forwards it verbatim",
    ),
    (
        44,
        "the bytes stop inside the head (HTTP/5.6, no empty line): sluice answers a well-formed \
         unsupported version with 505 once the head is complete, since a bare CR later in the \
         head makes it a 400 and the answer must not depend on how the bytes arrived (unit test \
         versions); nothing is forwarded meanwhile",
    ),
];

/// llhttp accepts these (at least `messages` messages); sluice does not. Mostly deliberate
/// refusals. Each entry: (vector index, reason).
const LLHTTP_ACCEPTS_SLUICE_DOES_NOT: &[(usize, &str)] = &[
    (
        6,
        "extraction artifact: the stored bytes run on into the markdown log text, and the \
         recorded verdict is not llhttp's: its log for this test ends with the error 'Data after \
         Connection: close' after one message, which is what sluice does (reads the POST, closes)",
    ),
    (
        26,
        "llhttp ran this test with skipBody (the application declares the body absent), which \
         has no meaning for a request: sluice reads the 123 body bytes the head announces, so the \
         second head is body and the stream is incomplete (no refusal, no second message)",
    ),
    (
        53,
        "asterisk-form target with a method other than OPTIONS (M-SEARCH *)",
    ),
    (
        60,
        "ICE/1.0 is not HTTP; sluice speaks HTTP/1.0 and HTTP/1.1 only",
    ),
    (61, "RTSP/1.0 is not HTTP"),
    (62, "RTSP/1.0 is not HTTP"),
    (88, "HTTP/0.9 simple request (no version)"),
    (
        108,
        "Transfer-Encoding other than exactly 'chunked' in a request (deflate, chunked); also a \
         fragment in the target",
    ),
    (
        109,
        "Transfer-Encoding other than exactly 'chunked' in a request (deflate, then chunked); \
         also a fragment in the target",
    ),
    (
        116,
        "absolute-form target: sluice is a reverse gateway, not a forward proxy",
    ),
    (117, "absolute-form target"),
    (119, "absolute-form target"),
    (
        121,
        "fragment ('#') in the request target: clients never send one, and an origin could cut \
         the path there",
    ),
    (123, "absolute-form target (with userinfo)"),
    (174, "RTSP/1.1 response is not HTTP"),
    (175, "ICE/1.1 response is not HTTP"),
    (
        178,
        "extraction artifact: the stored body runs on into the markdown log text; sluice reads \
         the response (Content-Length 219) like llhttp, one message, then refuses the log text as \
         the next response",
    ),
    (188, "HTTP/0.9 status line"),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Every byte consumed, at a message boundary.
    Clean,
    /// Waiting for more bytes (mid-head, mid-body, or a body delimited by connection close).
    Incomplete,
    /// sluice refused the next message.
    Rejected(String),
    /// A message ended the connection and bytes followed it (they are never read).
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    /// Complete messages before `end`.
    completed: usize,
    end: End,
    /// How many Host fields the harness inserted.
    host_patches: usize,
}

impl Outcome {
    fn refused(&self) -> bool {
        matches!(self.end, End::Rejected(_) | End::Closed)
    }
}

fn limits() -> HeadLimits {
    HeadLimits::default()
}

enum Body {
    Done(usize),
    Incomplete,
    Rejected(String),
}

/// Consume one body from the start of `input`.
fn consume_body(input: &[u8], framing: BodyFraming) -> Body {
    match framing {
        BodyFraming::None => Body::Done(0),
        BodyFraming::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= input.len() => Body::Done(n),
            _ => Body::Incomplete,
        },
        BodyFraming::CloseDelimited => Body::Incomplete,
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut pos = 0;
            loop {
                match decoder.decode(&input[pos..]) {
                    Err(e) => return Body::Rejected(e.to_string()),
                    Ok((n, Chunk::Data(_))) => pos += n,
                    Ok((_, Chunk::NeedMore)) => return Body::Incomplete,
                    Ok((n, Chunk::Done)) => return Body::Done(pos + n),
                }
            }
        }
    }
}

/// Run a request stream; on a missing Host, patch it in and start over.
fn run_requests(stored: &[u8]) -> Outcome {
    let mut input = stored.to_vec();
    let mut host_patches = 0;
    loop {
        match run_requests_once(&input) {
            Err(insert_at) => {
                input.splice(insert_at..insert_at, PATCH_HOST.iter().copied());
                host_patches += 1;
            }
            Ok((completed, end)) => {
                return Outcome {
                    completed,
                    end,
                    host_patches,
                }
            }
        }
    }
}

/// `Err(offset)`: a request lacks Host; insert one at `offset` (after its request line).
fn run_requests_once(input: &[u8]) -> Result<(usize, End), usize> {
    let mut pos = 0;
    let mut completed = 0;
    loop {
        let rest = &input[pos..];
        if rest.is_empty() {
            return Ok((completed, End::Clean));
        }
        let head = match parse_request(rest, &limits()) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok((completed, End::Incomplete)),
            Err(e) if e == MISSING_HOST => return Err(pos + after_first_line(rest)),
            Err(e) => return Ok((completed, End::Rejected(e.to_string()))),
        };
        pos += head.head_len;
        match consume_body(&input[pos..], head.framing) {
            Body::Done(n) => pos += n,
            Body::Incomplete => return Ok((completed, End::Incomplete)),
            Body::Rejected(why) => return Ok((completed, End::Rejected(why))),
        }
        completed += 1;
        if !head.keep_alive {
            return Ok((
                completed,
                if pos < input.len() {
                    End::Closed
                } else {
                    End::Clean
                },
            ));
        }
    }
}

/// Offset just past the request line (after leading empty lines) of a complete head.
fn after_first_line(head: &[u8]) -> usize {
    let mut start = 0;
    while head[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let line_end = head[start..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("complete head");
    start + line_end + 2
}

/// Run a response stream answering `method` requests. A 101 ends the run as a
/// refusal: sluice never asks the origin for an upgrade (Upgrade is hop-by-hop and not
/// forwarded), so a 101 is a protocol error the connection code answers with 502.
fn run_responses(input: &[u8], method: Method) -> Outcome {
    let mut pos = 0;
    let mut completed = 0;
    let end = loop {
        let rest = &input[pos..];
        if rest.is_empty() {
            break End::Clean;
        }
        let head = match parse_response(rest, &limits(), method) {
            Ok(Some(head)) => head,
            Ok(None) => break End::Incomplete,
            Err(e) => break End::Rejected(e.to_string()),
        };
        if head.status == 101 {
            break End::Rejected("unsolicited 101 Switching Protocols".to_string());
        }
        pos += head.head_len;
        match consume_body(&input[pos..], head.framing) {
            Body::Done(n) => pos += n,
            Body::Incomplete => break End::Incomplete,
            Body::Rejected(why) => break End::Rejected(why),
        }
        completed += 1;
        if !head.keep_alive {
            break if pos < input.len() {
                End::Closed
            } else {
                End::Clean
            };
        }
    };
    Outcome {
        completed,
        end,
        host_patches: 0,
    }
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Does `outcome` match llhttp's verdict?
fn agrees(outcome: &Outcome, llhttp_rejects: bool, messages: usize) -> bool {
    if llhttp_rejects {
        outcome.refused() && outcome.completed <= messages
    } else {
        !outcome.refused() && outcome.completed >= messages
    }
}

#[test]
fn llhttp_strict_vectors() {
    let vectors: Vec<serde_json::Value> = serde_json::from_str(VECTORS).expect("valid JSON");
    assert_eq!(
        vectors.len(),
        200,
        "vector file changed: review the exception lists"
    );

    // VECTORS_VERBOSE=1 cargo test --test vectors -- --nocapture: one line per vector.
    let verbose = std::env::var_os("VECTORS_VERBOSE").is_some();
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    let (mut agreed, mut both_reject, mut both_accept, mut host_patched) = (0, 0, 0, 0);
    let (mut only_llhttp_rejects, mut only_llhttp_accepts) = (0, 0);

    for (i, v) in vectors.iter().enumerate() {
        let kind = v["kind"].as_str().expect("kind");
        let stored = from_hex(v["raw_hex"].as_str().expect("raw_hex"));
        let llhttp_error = v["expect_error"].as_str();
        let messages = v["messages"].as_u64().expect("messages") as usize;

        let mut restored = stored.clone();
        restored.extend_from_slice(b"\r\n");
        let run = |bytes: &[u8]| match kind {
            "request" => run_requests(bytes),
            "response" if HEAD_RESPONSES.contains(&i) => run_responses(bytes, Method::Head),
            "response" => run_responses(bytes, Method::Get),
            other => panic!("vector {i}: unknown kind {other:?}"),
        };
        let outcomes = [run(&stored), run(&restored)];
        let matched = outcomes
            .iter()
            .find(|o| agrees(o, llhttp_error.is_some(), messages));

        if verbose {
            println!(
                "#{i} {kind} llhttp={llhttp_error:?}/{messages} stored={:?} crlf={:?}",
                outcomes[0], outcomes[1]
            );
        }
        let excuse = if llhttp_error.is_some() {
            LLHTTP_REJECTS_SLUICE_DOES_NOT.iter().find(|(n, _)| *n == i)
        } else {
            LLHTTP_ACCEPTS_SLUICE_DOES_NOT.iter().find(|(n, _)| *n == i)
        };
        let listed = LLHTTP_REJECTS_SLUICE_DOES_NOT
            .iter()
            .chain(LLHTTP_ACCEPTS_SLUICE_DOES_NOT)
            .any(|(n, _)| *n == i);

        match (matched, excuse) {
            (Some(o), None) => {
                agreed += 1;
                if llhttp_error.is_some() {
                    both_reject += 1;
                } else {
                    both_accept += 1;
                }
                if o.host_patches > 0 {
                    host_patched += 1;
                }
                if listed {
                    stale.push(format!("#{i}: listed under the wrong verdict"));
                }
            }
            (Some(_), Some((_, why))) => {
                stale.push(format!(
                    "#{i}: agrees with llhttp now, drop the exception ({why})"
                ));
            }
            (None, Some(_)) => {
                if llhttp_error.is_some() {
                    only_llhttp_rejects += 1;
                } else {
                    only_llhttp_accepts += 1;
                }
            }
            (None, None) => {
                let source = v["source"].as_str().unwrap_or("?");
                let verdict =
                    llhttp_error.map_or("accepts".to_string(), |e| format!("rejects ({e})"));
                let bytes = String::from_utf8_lossy(&stored[..stored.len().min(160)]);
                failures.push(format!(
                    "#{i} {source} {kind}: llhttp {verdict} after {messages} message(s)\n    \
                     sluice: stored {:?}, +CRLF {:?}\n    bytes: {bytes:?}",
                    outcomes[0], outcomes[1],
                ));
            }
        }
    }

    println!(
        "llhttp strict vectors: {} total; {agreed} agree ({both_reject} rejected by both, \
         {both_accept} accepted by both, {host_patched} with a Host field inserted); \
         listed differences: {only_llhttp_accepts} accepted by llhttp only, \
         {only_llhttp_rejects} rejected by llhttp only",
        vectors.len()
    );
    assert!(
        stale.is_empty(),
        "stale exception entries:\n{}",
        stale.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} vector(s) disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
