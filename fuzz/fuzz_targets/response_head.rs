//! Response head parsing and the client head edits.
//!
//! The invariant and the input layout are documented, and checked, in
//! `sluice::fuzz_checks::response_head`, which `tests/fuzz_regression.rs` runs too (on the committed
//! corpus under `cargo test`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice::fuzz_checks::response_head::check(input));
