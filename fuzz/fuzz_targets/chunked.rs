//! The chunked decoder: the same result for every split of its input, and its output survives the
//! proxy's re-encoding.
//!
//! The invariant and the input layout are documented, and checked, in
//! `sluice::fuzz_checks::chunked`, which `tests/fuzz_regression.rs` runs too (on the committed
//! corpus under `cargo test`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice::fuzz_checks::chunked::check(input));
