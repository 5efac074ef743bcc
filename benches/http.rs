//! Benchmarks of the sans-IO HTTP hot path, one exchange's worth of work each: parse a request
//! head and write the upstream head (a GET with the headers a browser-ish client sends, a POST
//! with `Content-Length`), parse a response head and write the client head, decode a 64 KiB
//! chunked body sent in 4 KiB chunks, and match paths against the allowlist.
//!
//! Not measured here: sockets, TLS, the runtime (see `tests/` for end-to-end behaviour). The
//! settings are small so that `cargo bench` stays quick; the numbers are for spotting
//! regressions on one machine, not for comparing machines.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::http::chunked::{write_chunk_header, Chunk, ChunkedDecoder, LAST_CHUNK};
use sluice::http::request::{parse_request, Method};
use sluice::http::response::parse_response;
use sluice::http::writer::{
    write_client_response, write_upstream_request, ClientResponseEdits, UpstreamRequestEdits,
};
use sluice::http::{BodyFraming, HeadLimits, Version};
use sluice::routing::Allowlist;

/// Samples per benchmark (criterion's minimum is 10): enough for a stable median of
/// sub-microsecond work, few enough to keep the whole run short.
const SAMPLE_SIZE: usize = 20;
/// Time spent measuring each benchmark.
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
/// Time spent warming each benchmark up (caches, branch predictors, CPU clock).
const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// The chunked body: 64 KiB of data ...
const BODY_BYTES: usize = 64 * 1024;
/// ... sent in chunks of 4 KiB (a typical read size on the sending side).
const CHUNK_BYTES: usize = 4 * 1024;
/// ... and read in pieces of one Ethernet MTU, which do not line up with the chunks.
const READ_BYTES: usize = 1500;

const GET: &[u8] = b"GET /v1/accounts/42/balance?currency=EUR&verbose=1 HTTP/1.1\r\n\
    Host: gateway.internal:8080\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
    Accept: application/json, text/plain;q=0.9, */*;q=0.8\r\n\
    Accept-Language: en-GB,en;q=0.5\r\n\
    Accept-Encoding: gzip, deflate, br\r\n\
    Authorization: Bearer client-side-token-that-sluice-replaces\r\n\
    Connection: keep-alive\r\n\
    X-Request-Id: 7f9c2ba4-e88f-11ee-a951-0242ac120002\r\n\r\n";

const POST: &[u8] = b"POST /crypto/sign HTTP/1.1\r\n\
    Host: gateway.internal:8080\r\n\
    User-Agent: sluice-bench/1.0\r\n\
    Accept: application/json\r\n\
    Content-Type: application/json\r\n\
    Content-Length: 27\r\n\
    X-Forwarded-For: 192.0.2.10\r\n\r\n\
    {\"payload\":\"aGVsbG8gd29y\"}";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Date: Tue, 14 Apr 2026 10:00:00 GMT\r\n\
    Content-Type: application/json; charset=utf-8\r\n\
    Content-Length: 48\r\n\
    Connection: keep-alive\r\n\
    Keep-Alive: timeout=5\r\n\
    Cache-Control: no-store\r\n\
    X-RateLimit-Remaining: 97\r\n\
    X-Request-Id: 7f9c2ba4-e88f-11ee-a951-0242ac120002\r\n\r\n\
    {\"balance\":\"1234.56\",\"currency\":\"EUR\",\"ok\":true}";

/// Header array for the httparse baseline (the benchmark heads have fewer fields).
const HTTPARSE_FIELDS: usize = 16;

const ALLOWLIST: &str = "/crypto/sign,/crypto/verify,/v1/*,/health";

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
}

fn upstream_edits(framing: BodyFraming) -> UpstreamRequestEdits<'static> {
    UpstreamRequestEdits {
        path_prefix: b"/api",
        host: b"origin.example.com",
        authorization: b"Bearer origin-credential-from-config",
        client_ip: b"203.0.113.7",
        proto: b"http",
        framing,
        extra_headers: &[],
    }
}

fn request_heads(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let mut group = c.benchmark_group("request_head");
    for (name, raw) in [("get_8_headers", GET), ("post_content_length", POST)] {
        group.throughput(Throughput::Elements(1));
        // Baseline: httparse alone, without sluice's pre-scan, framing rules and header marking.
        group.bench_function(format!("{name}/httparse_only"), |b| {
            b.iter(|| {
                let mut fields = [httparse::EMPTY_HEADER; HTTPARSE_FIELDS];
                let mut req = httparse::Request::new(&mut fields);
                req.parse(black_box(raw)).map(|status| status.is_complete())
            })
        });
        group.bench_function(format!("{name}/parse"), |b| {
            b.iter(|| parse_request(black_box(raw), &limits))
        });
        let mut out = Vec::with_capacity(1024);
        group.bench_function(format!("{name}/parse_edit_write"), |b| {
            b.iter(|| {
                let Ok(Some(head)) = parse_request(black_box(raw), &limits) else {
                    panic!("benchmark request does not parse");
                };
                out.clear();
                write_upstream_request(&mut out, &head, raw, &upstream_edits(head.framing));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn response_head(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let edits = ClientResponseEdits {
        framing: BodyFraming::Length(48),
        keep_alive: true,
        client_version: Version::Http11,
        keep_content_length: false,
    };
    let mut group = c.benchmark_group("response_head");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| parse_response(black_box(RESPONSE), &limits, Method::Get))
    });
    let mut out = Vec::with_capacity(1024);
    group.bench_function("parse_edit_write", |b| {
        b.iter(|| {
            let Ok(Some(head)) = parse_response(black_box(RESPONSE), &limits, Method::Get) else {
                panic!("benchmark response does not parse");
            };
            out.clear();
            write_client_response(&mut out, &head, RESPONSE, &edits);
            black_box(out.len())
        })
    });
    group.finish();
}

/// A chunked body of `BODY_BYTES` in `CHUNK_BYTES` chunks, with the last chunk.
fn chunked_body() -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_BYTES + BODY_BYTES / CHUNK_BYTES * 8 + 8);
    for i in 0..BODY_BYTES / CHUNK_BYTES {
        write_chunk_header(CHUNK_BYTES, &mut body);
        body.extend((0..CHUNK_BYTES).map(|j| b'a' + ((i + j) % 26) as u8));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(LAST_CHUNK);
    body
}

/// Decode `body` fed as reads of `read_size` bytes; returns the data bytes seen. With `out`, the
/// data is also copied there (as the relay copies it into a write buffer); without, the decoder
/// only walks the framing: it never reads the data bytes, so that throughput is framing overhead.
fn decode(body: &[u8], read_size: usize, mut out: Option<&mut Vec<u8>>) -> usize {
    let mut decoder = ChunkedDecoder::new();
    let mut data = 0;
    for read in body.chunks(read_size) {
        let mut rest = read;
        loop {
            match decoder.decode(rest) {
                Ok((n, Chunk::Data(range))) => {
                    let part = &rest[range];
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(part);
                    }
                    data += black_box(part).len();
                    rest = &rest[n..];
                }
                Ok((_, Chunk::NeedMore)) => break,
                Ok((_, Chunk::Done)) => return data,
                Err(e) => panic!("benchmark body does not decode: {e}"),
            }
        }
    }
    data
}

fn chunked(c: &mut Criterion) {
    let body = chunked_body();
    assert_eq!(decode(&body, body.len(), None), BODY_BYTES);
    let mut group = c.benchmark_group("chunked_decode_64k_in_4k_chunks");
    group.throughput(Throughput::Bytes(BODY_BYTES as u64));
    group.bench_function("whole_buffer", |b| {
        b.iter(|| decode(black_box(&body), body.len(), None))
    });
    // Reads that do not line up with chunk boundaries, as off a socket.
    group.bench_function("reads_of_1500_bytes", |b| {
        b.iter(|| decode(black_box(&body), READ_BYTES, None))
    });
    // The same, copying the data out: what relaying the body costs besides the syscalls.
    let mut out = Vec::with_capacity(BODY_BYTES);
    group.bench_function("reads_of_1500_bytes_copy_out", |b| {
        b.iter(|| {
            out.clear();
            decode(black_box(&body), READ_BYTES, Some(&mut out))
        })
    });
    group.finish();
}

fn allowlist(c: &mut Criterion) {
    let list = match Allowlist::parse(ALLOWLIST) {
        Ok(list) => list,
        Err(e) => panic!("benchmark allowlist: {e}"),
    };
    let mut group = c.benchmark_group("allowlist_match");
    group.throughput(Throughput::Elements(1));
    for (name, path) in [
        ("exact_hit", &b"/crypto/verify"[..]),
        ("prefix_hit", b"/v1/accounts/42/balance"),
        ("encoded_hit", b"/v1/accounts/%34%32/balance"),
        ("miss", b"/admin/users/42"),
        ("dot_segment_refused", b"/v1/../admin"),
    ] {
        group.bench_function(name, |b| b.iter(|| list.match_path(black_box(path))));
    }
    group.finish();
    // Parsing happens once at start-up; measured only to show it is negligible.
    c.bench_function("allowlist_parse", |b| {
        b.iter_batched(|| ALLOWLIST, Allowlist::parse, BatchSize::SmallInput)
    });
}

criterion_group! {
    name = benches;
    config = quick();
    targets = request_heads, response_head, chunked, allowlist
}
criterion_main!(benches);
