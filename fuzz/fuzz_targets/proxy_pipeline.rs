//! One client connection through the proxy's per-request steps (head parse, allowlist, upstream
//! edits, the real body pump over in-memory streams split at fuzzer-chosen points, response head,
//! client edits, stored results). Not the socket loop: see the oracle's docs for what is real and
//! what is mirrored.
//!
//! The invariant and the input layout are documented, and checked, in
//! `sluice::fuzz_checks::pipeline`, which `tests/fuzz_regression.rs` runs too (on the committed
//! corpus under `cargo test`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice::fuzz_checks::pipeline::check(input));
