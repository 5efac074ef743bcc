//! `/metrics` after known traffic: the real server (two workers, so the counts are summed over
//! shards) against an in-process origin and webhook receiver; every count asserted exactly, and
//! every scrape checked by the strict text-format checker (`common::prom`) and by
//! `prometheus-parse`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::prom::Scrape;
use common::webhook::{Answer, MockReceiver};
use common::*;

/// Scrapes until `ready` holds for the scrape (the counters of an answer are updated right
/// after its last byte is written, so a scrape may briefly trail the client), bounded.
fn scrape_until(sluice: &Sluice, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = sluice.scrape();
        if ready(&scrape) || Instant::now() > until {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sluice on `origin` with the allowlist `/a,/b/*`, the admin listener on, and `extra` flags.
fn start(origin: &MockOrigin, extra: &[&str], legacy: bool) -> Sluice {
    let url = origin.url();
    let mut args = vec![
        "-t",
        "tok",
        "--paths",
        "/a,/b/*",
        "-o",
        &url,
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Sluice::start(&args, legacy)
}

fn v(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .value(name, labels)
        .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

#[test]
fn a_scrape_counts_exactly_what_was_served() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| Reply::ok("fine"));
        let sluice = start(&origin, &["--max-request-body-bytes", "16"], legacy);
        let before = sluice.scrape();
        assert_eq!(
            v(
                &before,
                "sluice_io_driver",
                &[("driver", &sluice.startup().driver)]
            ),
            1.0
        );
        assert_eq!(
            before.sum("sluice_requests_total", &[]),
            Some(0.0),
            "nothing served yet"
        );

        // Three forwarded GETs, each on its own connection (they land on both workers).
        for _ in 0..3 {
            let resp = sluice.connect().get("/a");
            assert_eq!(resp.status, 200);
        }
        // Refused: a path off the allowlist, a body over the limit, a malformed head.
        assert_eq!(sluice.connect().get("/nope").status, 404);
        let big = sluice
            .connect()
            .request(with_body("POST", "/a", &[b'x'; 100]));
        assert_eq!(big.status, 413);
        let mut bad = sluice.connect();
        bad.send("GARBAGE\r\n\r\n");
        assert_eq!(bad.response().status, 400);
        drop(bad);

        let s = scrape_until(&sluice, |s| {
            s.sum("sluice_requests_total", &[]) == Some(6.0)
                && s.value("sluice_client_connections_open", &[]) == Some(0.0)
        });
        let req = "sluice_requests_total";
        assert_eq!(v(&s, req, &[("endpoint", "/a"), ("class", "2xx")]), 3.0);
        assert_eq!(v(&s, req, &[("endpoint", "/a"), ("class", "4xx")]), 1.0);
        assert_eq!(v(&s, req, &[("endpoint", "(none)"), ("class", "4xx")]), 2.0);
        assert_eq!(s.sum(req, &[("endpoint", "/b/*")]), Some(0.0));
        assert_eq!(s.sum(req, &[("class", "5xx")]), Some(0.0));

        let rej = "sluice_rejected_total";
        assert_eq!(v(&s, rej, &[("reason", "not_allowlisted")]), 1.0);
        assert_eq!(v(&s, rej, &[("reason", "too_large")]), 1.0);
        assert_eq!(v(&s, rej, &[("reason", "bad_request")]), 1.0);
        assert_eq!(s.sum(rej, &[]), Some(3.0));

        let att = "sluice_upstream_attempts_total";
        assert_eq!(v(&s, att, &[("endpoint", "/a"), ("result", "2xx")]), 3.0);
        assert_eq!(s.sum(att, &[]), Some(3.0));
        assert_eq!(
            v(
                &s,
                "sluice_upstream_duration_seconds_count",
                &[("endpoint", "/a")]
            ),
            3.0
        );
        assert_eq!(s.sum("sluice_ratelimit_wait_seconds_count", &[]), Some(3.0));
        assert_eq!(s.sum("sluice_ratelimit_queue_depth", &[]), Some(0.0));
        assert_eq!(s.sum("sluice_retries_total", &[]), Some(0.0));

        assert_eq!(
            v(&s, "sluice_jobs_finished_total", &[("result", "succeeded")]),
            3.0
        );
        assert_eq!(
            v(&s, "sluice_jobs_finished_total", &[("result", "failed")]),
            0.0
        );
        assert_eq!(s.sum("sluice_jobs_open", &[]), Some(0.0));
        assert_eq!(v(&s, "sluice_jobs_deferred_total", &[]), 0.0);

        assert_eq!(v(&s, "sluice_client_connections_total", &[]), 6.0);
        assert_eq!(v(&s, "sluice_client_connections_open", &[]), 0.0);
        let connects = v(&s, "sluice_upstream_connects_total", &[]);
        assert!((1.0..=3.0).contains(&connects), "{connects} connects");
        assert_eq!(
            v(&s, "sluice_upstream_connections", &[("state", "active")]),
            0.0
        );
        assert_eq!(
            v(&s, "sluice_upstream_connections", &[("state", "idle")]),
            connects,
            "every upstream connection went back to its pool"
        );
        assert_eq!(v(&s, "sluice_workers", &[]), 2.0);
    });
}

#[test]
fn a_deferred_job_counts_its_attempts_retries_and_callback() {
    // The first two attempts fail with 502 (the first one slowly, so the client gets its 202
    // at its 50 ms deadline); the third succeeds; the callback is delivered once.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let origin = MockOrigin::start(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
        0 => Reply {
            steps: vec![Step::Sleep(Duration::from_millis(300))],
        }
        .then_write("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"),
        1 => Reply::response(502, "Bad Gateway", &[], ""),
        _ => Reply::ok("signed"),
    });
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let hook = hooks.url("/done").replace(':', "%3A").replace('/', "%2F");
    let sluice = start(
        &origin,
        &[
            "--ingress-request-timeout-ms",
            "50",
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "40",
        ],
        false,
    );
    let resp = sluice
        .connect()
        .get(&format!("/b/sign?message=m&callback={hook}"));
    assert_eq!(resp.status, 202, "{}", resp.head_text());
    let delivered = hooks.wait_for(1, Duration::from_secs(10));
    assert_eq!(delivered.len(), 1);

    let s = scrape_until(&sluice, |s| {
        s.value(
            "sluice_callback_deliveries_total",
            &[("result", "delivered")],
        ) == Some(1.0)
            && s.value("sluice_jobs_finished_total", &[("result", "succeeded")]) == Some(1.0)
    });
    let att = "sluice_upstream_attempts_total";
    assert_eq!(v(&s, att, &[("endpoint", "/b/*"), ("result", "5xx")]), 2.0);
    assert_eq!(v(&s, att, &[("endpoint", "/b/*"), ("result", "2xx")]), 1.0);
    assert_eq!(s.sum(att, &[]), Some(3.0));
    assert_eq!(v(&s, "sluice_retries_total", &[("endpoint", "/b/*")]), 2.0);
    assert_eq!(v(&s, "sluice_jobs_deferred_total", &[]), 1.0);
    assert_eq!(
        v(&s, "sluice_jobs_finished_total", &[("result", "succeeded")]),
        1.0
    );
    assert_eq!(s.sum("sluice_jobs_open", &[]), Some(0.0));
    assert_eq!(
        v(
            &s,
            "sluice_requests_total",
            &[("endpoint", "/b/*"), ("class", "2xx")]
        ),
        1.0,
        "the 202"
    );
    assert_eq!(
        v(
            &s,
            "sluice_callback_deliveries_total",
            &[("result", "delivered")]
        ),
        1.0
    );
    assert_eq!(s.sum("sluice_callback_deliveries_total", &[]), Some(1.0));
    assert_eq!(
        s.sum("sluice_ratelimit_wait_seconds_count", &[]),
        Some(3.0),
        "every attempt took a slot"
    );
    assert_eq!(
        v(
            &s,
            "sluice_upstream_duration_seconds_count",
            &[("endpoint", "/b/*")]
        ),
        3.0
    );
    // The slow first attempt (300 ms) is above the 0.25 s bound, the other two below it.
    let le = |bound: &str| {
        v(
            &s,
            "sluice_upstream_duration_seconds_bucket",
            &[("endpoint", "/b/*"), ("le", bound)],
        )
    };
    assert_eq!(le("0.25"), 2.0);
    assert_eq!(le("+Inf"), 3.0);
}
