//! The fuzz targets' regression run under `cargo test` (stable, no libFuzzer): every committed
//! corpus file and crash reproducer in `fuzz/`, the llhttp vectors, and a fixed sequence of
//! pseudo-random mutations of them go through the same oracles as the fuzz targets
//! (`sluice::fuzz_checks`), so a bug the fuzzer once found, or a seed it once grew, keeps being
//! checked without running the fuzzer.
//!
//! Invariants: those of each oracle (see `src/fuzz_checks/`). The mutations are a fixed
//! xorshift sequence, so a failure names a round that reproduces; the rounds per target are
//! sized to take a few seconds in all with `cargo test --release`.

use std::fs;
use std::path::{Path, PathBuf};

use sluice::fuzz_checks::{chunked, pipeline, request_head, response_head};

const VECTORS: &str = include_str!("data/llhttp-strict.json");

/// Pseudo-random mutations per target (each one oracle call on a mutated corpus input).
const MUTATION_ROUNDS: usize = 50_000;

/// Bytes the mutations insert: the ones HTTP framing turns on, plus a few that must be refused.
const ALPHABET: &[u8] = b"\r\n\0 \t:;,=\"/?#%*-0159aAfFxX\x7f\x80\xff";

/// Upstream answers paired with the request vectors in the pipeline replay.
const CANNED_RESPONSES: [&[u8]; 3] = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
];

/// Client requests paired with the response vectors in the pipeline replay.
const CANNED_REQUESTS: [&[u8]; 3] = [
    b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /v1/y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
];

/// Split patterns the pipeline replay uses for the vectors (see `pipeline::Input`).
const PATTERNS: [&[u8]; 3] = [b"", b"\x01", b"\x05\x00\x02"];

struct Target {
    name: &'static str,
    check: fn(&[u8]),
}

const TARGETS: [Target; 4] = [
    Target {
        name: "request_head",
        check: request_head::check,
    },
    Target {
        name: "response_head",
        check: response_head::check,
    },
    Target {
        name: "chunked",
        check: chunked::check,
    },
    Target {
        name: "proxy_pipeline",
        check: pipeline::check,
    },
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir` (sorted, so runs are reproducible); none when it does not exist.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// The committed corpus of a target; it must not be empty (a missing corpus would make this
/// test pass vacuously).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let found = files(&dir);
    assert!(!found.is_empty(), "no corpus files in {}", dir.display());
    found
}

/// Runs `check` on `input`, naming `what` if it panics.
fn run(check: fn(&[u8]), what: &str, input: &[u8]) {
    if std::panic::catch_unwind(|| check(input)).is_err() {
        panic!(
            "{what} broke an invariant (input: {:?})",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn committed_corpus_and_reproducers_pass() {
    for target in &TARGETS {
        let mut inputs = corpus(target.name);
        // Crash reproducers kept under fuzz/artifacts/<target>/ (see fuzz/README.md).
        inputs.extend(files(&fuzz_dir().join("artifacts").join(target.name)));
        for (path, bytes) in &inputs {
            run(target.check, &path.display().to_string(), bytes);
        }
        eprintln!("{}: {} files", target.name, inputs.len());
    }
}

/// The vectors as each target sees them, built here rather than read from the corpus (which
/// keeps only a sample of them).
#[test]
fn llhttp_vectors_pass() {
    let vectors: Vec<serde_json::Value> = match serde_json::from_str(VECTORS) {
        Ok(v) => v,
        Err(e) => panic!("vector file: {e}"),
    };
    for (i, v) in vectors.iter().enumerate() {
        let raw = hex(v["raw_hex"].as_str().unwrap_or(""));
        let is_request = v["kind"] == "request";
        let what = format!("vector {i}");
        for raw in [raw.clone(), [&raw[..], b"\r\n"].concat()] {
            if is_request {
                run(request_head::check, &what, &raw);
            } else {
                run(response_head::check, &what, &raw);
            }
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let body = &raw[end + 4..];
                for split in [0u16, 1, (body.len() / 2) as u16, u16::MAX] {
                    let input = [&split.to_le_bytes()[..], body].concat();
                    run(chunked::check, &what, &input);
                }
            }
            for pattern in PATTERNS {
                let (client, upstream) = if is_request {
                    (
                        with_host(&raw),
                        CANNED_RESPONSES[i % CANNED_RESPONSES.len()].to_vec(),
                    )
                } else {
                    (
                        CANNED_REQUESTS[i % CANNED_REQUESTS.len()].to_vec(),
                        raw.clone(),
                    )
                };
                let input = pipeline::Input {
                    client_pattern: pattern,
                    upstream_pattern: pattern,
                    client: &client,
                    upstream: &upstream,
                }
                .encode();
                run(pipeline::check, &what, &input);
            }
        }
    }
}

#[test]
fn mutated_corpus_passes() {
    let mut rng = XorShift(0x5eed_f00d_cafe_d00d);
    for target in &TARGETS {
        let corpus = corpus(target.name);
        for round in 0..MUTATION_ROUNDS {
            let (path, base) = &corpus[rng.below(corpus.len())];
            let (_, other) = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, base, other);
            let what = format!("{} round {round} (from {})", target.name, path.display());
            run(target.check, &what, &input);
        }
    }
}

/// A few libFuzzer-like edits: overwrite, insert or delete a byte from [`ALPHABET`], duplicate
/// a run, or splice in a run of another corpus input.
fn mutate(rng: &mut XorShift, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        let byte = ALPHABET[rng.below(ALPHABET.len())];
        match rng.below(5) {
            0 if at < out.len() => out[at] = byte,
            1 if at < out.len() => {
                out.remove(at);
            }
            2 => {
                let len = rng.below(16).min(out.len() - at);
                let run = out[at..at + len].to_vec();
                out.splice(at..at, run);
            }
            3 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(64).min(other.len() - from);
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => out.insert(at, byte),
        }
    }
    out
}

/// `request` with `Host: h` after its first line when it is HTTP/1.1 and has none (the
/// pipeline would stop at the 400 otherwise), as `fuzz/seed_corpus.py` does.
fn with_host(request: &[u8]) -> Vec<u8> {
    let Some(end) = request.windows(2).position(|w| w == b"\r\n") else {
        return request.to_vec();
    };
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(request.len());
    let has_host = request[..head_end]
        .split(|&b| b == b'\n')
        .any(|line| line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"host:"));
    if has_host || !request[..end].ends_with(b"HTTP/1.1") {
        return request.to_vec();
    }
    [&request[..end + 2], b"Host: h\r\n", &request[end + 2..]].concat()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// xorshift64: a fixed sequence, so a failing round reproduces.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            (self.0 % n as u64) as usize
        }
    }
}
