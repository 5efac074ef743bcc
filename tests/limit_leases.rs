//! The sliding window through the real server with leases in play: a limit large enough that
//! each of two workers leases small batches of grants (`src/limit/sliding.rs`), hammered by
//! many concurrent clients, against the in-process mock of the signing API, which counts every
//! request it receives in a rolling window (and would answer 429 past the limit).

mod common;

use std::time::Duration;

use ::sluice::limit::{Algorithm, Limiter, RateSpec};
use common::signing::{SigningApi, SigningConfig};
use common::*;

const KEY: &str = "6f6b94ab1205cf14b80eb62617d59c17";
/// The limit under test: 1000 per 100 ms, i.e. 10 000/s, with a 20 ms margin for receipt-time
/// jitter on a loaded machine.
const LIMIT: &str = "1000/100ms";
const MARGIN_MS: u64 = 20;
/// Concurrent clients, each sending this many distinct messages one after another: about
/// three windows' budget, so the limit binds.
const CLIENTS: usize = 48;
const PER_CLIENT: usize = 60;

fn never(_: &str) -> bool {
    false
}

#[test]
fn leased_sliding_window_holds_over_two_workers() {
    // This configuration does lease (the point of the test).
    let spec = RateSpec::parse(LIMIT).unwrap();
    let margin = Duration::from_millis(MARGIN_MS);
    let lease = Limiter::with_workers(spec, Algorithm::SlidingWindow, margin, 2).lease_size();
    assert!(lease > 1, "{LIMIT} over 2 workers leases {lease}");
    for_both_drivers(|legacy| {
        let api = SigningApi::start(SigningConfig {
            key: KEY.to_string(),
            limit: 1000,
            window: Duration::from_millis(100),
            degraded_for: Duration::ZERO,
            latency: Duration::from_millis(1),
            degraded: never,
        });
        let margin = MARGIN_MS.to_string();
        let sluice = Sluice::start(
            &[
                "-t",
                KEY,
                "--paths",
                "/crypto/sign",
                "-o",
                &api.origin.url(),
                "--rate-limit",
                LIMIT,
                "--rate-limit-margin-ms",
                &margin,
                "--workers",
                "2",
                "--ingress-request-timeout-ms",
                "20000",
            ],
            legacy,
        );
        let threads: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let addr = sluice.addr();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    (0..PER_CLIENT)
                        .map(|j| c.get(&format!("/crypto/sign?message=m{i}-{j}")).status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap().iter().all(|&s| s == 200));
        }
        let answers = api.answers();
        assert_eq!(answers.len(), CLIENTS * PER_CLIENT);
        assert!(
            answers.iter().all(|a| a.status == 200),
            "the upstream never answered 429"
        );
        assert!(api.max_in_window(Duration::from_millis(100)) <= 1000);
    });
}
