//! The job executor end to end: deadline and 202, job status and result, retries through the
//! limiter, exact rate limits summed over workers, callbacks (signed, retried), and the
//! original's scenario, against an in-process mock of the real signing API and a webhook
//! receiver. Time is scaled down through the flags (windows of a few hundred milliseconds).

mod common;

use std::time::{Duration, Instant};

use common::signing::{signature_of, SigningApi, SigningConfig};
use common::webhook::{Answer, MockReceiver};
use common::*;

const KEY: &str = "6f6b94ab1205cf14b80eb62617d59c17";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn never(_: &str) -> bool {
    false
}

fn odd(m: &str) -> bool {
    m.bytes().map(|b| b as u32).sum::<u32>() % 2 == 1
}

fn always(_: &str) -> bool {
    true
}

fn signing(
    limit: usize,
    window_ms: u64,
    degraded: fn(&str) -> bool,
    degraded_ms: u64,
) -> SigningApi {
    SigningApi::start(SigningConfig {
        key: KEY.to_string(),
        limit,
        window: Duration::from_millis(window_ms),
        degraded_for: Duration::from_millis(degraded_ms),
        latency: Duration::from_millis(5),
        degraded,
    })
}

fn start(api_url: &str, extra: &[&str], legacy: bool) -> Sluice {
    let mut args = vec![
        "-t",
        KEY,
        "--paths",
        "/crypto/sign,/crypto/verify",
        "-o",
        api_url,
    ];
    args.extend_from_slice(extra);
    Sluice::start(&args, legacy)
}

/// Polls a job's status document until `done` holds (bounded).
fn poll_status(
    sluice: &Sluice,
    location: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = sluice.connect().get(location);
        assert_eq!(resp.status, 200, "{}", resp.head_text());
        let json = resp.json();
        if done(&json) {
            return json;
        }
        assert!(
            Instant::now() < until,
            "job never reached the expected state: {json}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminal(json: &serde_json::Value) -> bool {
    matches!(json["status"].as_str(), Some("succeeded") | Some("failed"))
}

#[test]
fn answer_before_the_deadline_goes_straight_to_the_client() {
    for_both_drivers(|legacy| {
        let api = signing(100, 1000, never, 0);
        let sluice = start(&api.origin.url(), &["--rate-limit", "100/1s"], legacy);
        let resp = sluice.connect().get("/crypto/sign?message=hello");
        assert_eq!(resp.status, 200, "{}", resp.head_text());
        assert_eq!(resp.body_text(), signature_of("hello"));
        assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
        let bad = sluice
            .connect()
            .get("/crypto/verify?message=hello&signature=nope");
        assert_eq!(bad.status, 400, "a non-retriable answer passes through");
        assert_eq!(
            bad.body_text(),
            "Error 400: Invalid signature for message!\n"
        );
        assert_eq!(api.answers().len(), 2, "one upstream call each");
    });
}

#[test]
fn slow_upstream_gets_202_then_status_and_result() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|_| {
            let mut r = Reply::response(
                201,
                "Created",
                &[("Content-Type", "text/plain"), ("X-Job", "1")],
                "made it",
            );
            r.steps.insert(0, Step::Sleep(Duration::from_millis(400)));
            r
        });
        let sluice = start(
            &origin.url(),
            &["--ingress-request-timeout-ms", "100"],
            legacy,
        );
        let mut client = sluice.connect();
        let resp = client.get("/crypto/sign?message=slow");
        assert_eq!(resp.status, 202, "{}", resp.head_text());
        let location = resp.header("location").expect("Location");
        let json = resp.json();
        let id = json["id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/_sluice/jobs/{id}"));
        assert_eq!(json["status"], "pending");
        assert_eq!(json["status_url"], location.as_str());
        assert_eq!(id.len(), 32);

        // The connection stays usable while the job runs elsewhere.
        let status = client.get(&location);
        assert_eq!(status.status, 200);
        assert!(matches!(status.json()["status"].as_str(), Some("pending")));
        let early = client.get(&format!("{location}/result"));
        assert_eq!(early.status, 409, "{}", early.head_text());
        assert_json_error(&early, 409, "not_finished");

        let done = poll_status(&sluice, &location, terminal);
        assert_eq!(done["status"], "succeeded");
        assert_eq!(done["attempts"], 1);
        assert_eq!(done["last_upstream_status"], 201);
        let result = client.get(&format!("{location}/result"));
        assert_eq!(result.status, 201);
        assert_eq!(result.header("x-job").as_deref(), Some("1"));
        assert_eq!(result.body_text(), "made it");
        assert_eq!(origin.requests().len(), 1);
    });
}

#[test]
fn retriable_failures_are_retried_until_success() {
    for_both_drivers(|legacy| {
        let api = signing(100, 1000, always, 150);
        let sluice = start(
            &api.origin.url(),
            &[
                "--rate-limit",
                "100/1s",
                "--retry-base-ms",
                "40",
                "--retry-max-ms",
                "80",
            ],
            legacy,
        );
        let resp = sluice.connect().get("/crypto/sign?message=flaky");
        assert_eq!(resp.status, 200, "{}", resp.head_text());
        assert_eq!(resp.body_text(), signature_of("flaky"));
        let answers = api.answers();
        assert!(answers.len() >= 2, "retried: {answers:?}");
        assert!(answers[..answers.len() - 1].iter().all(|a| a.status == 502));
        assert_eq!(answers.last().unwrap().status, 200);
    });
}

#[test]
fn a_retry_later_than_the_deadline_answers_202_early_and_keeps_going() {
    for_both_drivers(|legacy| {
        let api = signing(100, 1000, always, 300);
        let sluice = start(
            &api.origin.url(),
            &[
                "--rate-limit",
                "100/1s",
                "--retry-base-ms",
                "400",
                "--retry-max-ms",
                "400",
                "--ingress-request-timeout-ms",
                "60000",
            ],
            legacy,
        );
        let resp = sluice.connect().get("/crypto/sign?message=later");
        // The deadline is a minute away; the 202 comes as soon as the first retry is planned
        // beyond it... unless the jittered delay was short and the retry succeeded. Either
        // way the client is not held for the whole minute.
        if resp.status == 202 {
            let location = resp.header("location").unwrap();
            let json = poll_status(&sluice, &location, terminal);
            assert_eq!(json["status"], "succeeded");
            assert!(json["attempts"].as_u64().unwrap() >= 2);
        } else {
            assert_eq!(resp.status, 200);
        }
    });
}

#[test]
fn retries_exhausted_while_waiting_give_the_last_answer() {
    for_both_drivers(|legacy| {
        let api = signing(100, 1000, always, 60_000);
        let sluice = start(
            &api.origin.url(),
            &[
                "--rate-limit",
                "100/1s",
                "--retry-max-attempts",
                "2",
                "--retry-base-ms",
                "10",
                "--retry-max-ms",
                "10",
            ],
            legacy,
        );
        let resp = sluice.connect().get("/crypto/sign?message=doomed");
        assert_eq!(resp.status, 502, "{}", resp.head_text());
        assert_eq!(
            resp.body_text(),
            "Error 502: Failed to sign message due to simulated service degradation.\n"
        );
        assert_eq!(api.answers().len(), 2);
    });
}

#[test]
fn sluice_paths_are_reserved_and_unknown_jobs_404() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        assert_json_error(
            &client.get("/_sluice/jobs/0123456789abcdef0123456789abcdef"),
            404,
            "not_found",
        );
        assert_json_error(&client.get("/_sluice/jobs/nope/result"), 404, "not_found");
        assert_json_error(&client.get("/_sluice/other"), 404, "not_found");
        let post = client.request(with_body("POST", "/_sluice/jobs/x", b"x"));
        assert_eq!(post.status, 405);
        assert!(origin.requests().is_empty());
    });
}

#[test]
fn callback_parameter_is_validated_and_stripped() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        let resp =
            client.get("/crypto/sign?message=a&callback=http%3A%2F%2F127.0.0.1%3A9%2Fhook&x=1");
        assert_eq!(resp.status, 200, "{}", resp.head_text());
        assert_eq!(resp.body_text(), "GET /crypto/sign?message=a&x=1");
        let only = client.get("/crypto/sign?callback=http%3A%2F%2F127.0.0.1%3A9%2Fhook");
        assert_eq!(only.body_text(), "GET /crypto/sign");
        for bad in [
            "/crypto/sign?message=a&callback=ftp%3A%2F%2Fx",
            "/crypto/sign?message=a&callback=not-a-url",
            "/crypto/sign?callback=http%3A%2F%2Fa%2F&callback=http%3A%2F%2Fb%2F",
        ] {
            assert_json_error(&client.get(bad), 400, "bad_request");
        }
        assert_eq!(
            origin.requests().len(),
            2,
            "invalid callbacks never reach the origin"
        );
    });
}

#[test]
fn sliding_window_holds_over_two_workers() {
    for_both_drivers(|legacy| {
        // The mock counts 5 per 400 ms window; sluice is told the same limit.
        let api = signing(5, 400, never, 0);
        let sluice = start(
            &api.origin.url(),
            &[
                "--rate-limit",
                "5/400ms",
                // Scaled-down margin for receipt-time jitter on a loaded CI machine.
                "--rate-limit-margin-ms",
                "60",
                "--workers",
                "2",
                "--ingress-request-timeout-ms",
                "20000",
            ],
            legacy,
        );
        let threads: Vec<_> = (0..15)
            .map(|i| {
                let addr = sluice.addr();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    c.get(&format!("/crypto/sign?message=m{i}"))
                })
            })
            .collect();
        for t in threads {
            let resp = t.join().unwrap();
            assert_eq!(resp.status, 200, "{}", resp.head_text());
        }
        let answers = api.answers();
        assert_eq!(answers.len(), 15);
        assert!(
            answers.iter().all(|a| a.status == 200),
            "the upstream never answered 429"
        );
        assert!(api.max_in_window(Duration::from_millis(400)) <= 5);
    });
}

#[test]
fn burst_of_60_with_degradation_all_terminal_all_called_back_no_429() {
    // Scaled: the real API allows 10 per 60 s; here 10 per 300 ms. Half the messages degrade
    // (502) for 400 ms after first seen.
    let api = signing(10, 300, odd, 400);
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let hook = hooks.url("/hook");
    let sluice = start(
        &api.origin.url(),
        &[
            "--rate-limit",
            "10/300ms",
            "--rate-limit-margin-ms",
            "60",
            "--rate-limit-scope",
            "origin",
            "--ingress-request-timeout-ms",
            "50",
            "--retry-base-ms",
            "100",
            "--retry-max-ms",
            "300",
            "--webhook-secret",
            SECRET,
        ],
        false,
    );
    let encoded_hook = hook.replace(':', "%3A").replace('/', "%2F");
    let mut locations = Vec::new();
    for i in 0..60 {
        let resp = sluice.connect().get(&format!(
            "/crypto/sign?message=msg{i}&callback={encoded_hook}"
        ));
        assert!(matches!(resp.status, 200 | 202), "{}", resp.head_text());
        if resp.status == 202 {
            locations.push((i, resp.header("location").unwrap()));
        }
    }
    assert!(locations.len() >= 40, "most of a burst of 60 is deferred");
    for (_, location) in &locations {
        let json = poll_status(&sluice, location, |j| {
            terminal(j) && j["callback"] == "delivered"
        });
        assert_eq!(json["status"], "succeeded");
    }
    let received = hooks.wait_for(locations.len(), Duration::from_secs(20));
    assert_eq!(
        received.len(),
        locations.len(),
        "one callback per deferred job"
    );
    for r in &received {
        assert_eq!(r.header("sluice-status").as_deref(), Some("succeeded"));
        let id = r.header("webhook-id").unwrap();
        assert_eq!(r.header("sluice-job-id").as_deref(), Some(id.as_str()));
        assert!(r.header("webhook-signature").unwrap().starts_with("v1,"));
        assert_eq!(r.body.len(), 344);
    }
    let answers = api.answers();
    assert!(
        answers.iter().all(|a| a.status != 429),
        "the upstream never answered 429"
    );
    assert!(api.max_in_window(Duration::from_millis(300)) <= 10);
}

#[test]
fn the_original_scenario_ends_in_exactly_one_callback() {
    // --rate-limit 10/1m scaled to 10/600ms; the message is degraded for a while.
    let api = signing(10, 600, always, 500);
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let hook = hooks.url("/done").replace(':', "%3A").replace('/', "%2F");
    let sluice = start(
        &api.origin.url(),
        &[
            "--rate-limit",
            "10/600ms",
            "--ingress-request-timeout-ms",
            "100",
            "--retry-base-ms",
            "100",
            "--retry-max-ms",
            "200",
        ],
        false,
    );
    let resp = sluice
        .connect()
        .get(&format!("/crypto/sign?message=original&callback={hook}"));
    assert_eq!(resp.status, 202, "{}", resp.head_text());
    let location = resp.header("location").unwrap();
    let json = poll_status(&sluice, &location, |j| {
        terminal(j) && j["callback"] == "delivered"
    });
    assert_eq!(json["status"], "succeeded");
    std::thread::sleep(Duration::from_millis(300));
    let received = hooks.requests();
    assert_eq!(received.len(), 1, "exactly one callback");
    assert_eq!(received[0].body, signature_of("original").as_bytes());
    assert_eq!(
        received[0].header("sluice-upstream-status").as_deref(),
        Some("200")
    );
    let attempts: u64 = received[0]
        .header("sluice-attempts")
        .unwrap()
        .parse()
        .unwrap();
    assert!(attempts >= 2);
    assert_eq!(json["attempts"].as_u64(), Some(attempts));
}

#[test]
fn failures_are_reported_by_callback_too() {
    let api = signing(100, 1000, always, 60_000);
    let hooks = MockReceiver::start(vec![Answer::Status(500), Answer::Status(200)]);
    let hook = hooks.url("/fail").replace(':', "%3A").replace('/', "%2F");
    let sluice = start(
        &api.origin.url(),
        &[
            "--rate-limit",
            "100/1s",
            "--ingress-request-timeout-ms",
            "1",
            "--retry-max-attempts",
            "2",
            "--retry-base-ms",
            "50",
            "--retry-max-ms",
            "50",
            "--webhook-retry-base-ms",
            "20",
            "--webhook-retry-max-ms",
            "40",
        ],
        false,
    );
    let resp = sluice
        .connect()
        .get(&format!("/crypto/sign?message=bad&callback={hook}"));
    assert_eq!(resp.status, 202, "{}", resp.head_text());
    let received = hooks.wait_for(2, Duration::from_secs(10));
    assert_eq!(received.len(), 2, "the 500 was retried");
    for r in &received {
        assert_eq!(r.header("sluice-status").as_deref(), Some("failed"));
        assert_eq!(r.header("sluice-upstream-status").as_deref(), Some("502"));
        assert_eq!(r.header("sluice-attempts").as_deref(), Some("2"));
    }
    assert_eq!(
        received[0].header("sluice-job-id"),
        received[1].header("sluice-job-id")
    );
    let location = resp.header("location").unwrap();
    let json = poll_status(&sluice, &location, |j| j["callback"] == "delivered");
    assert_eq!(json["status"], "failed");
}

#[test]
fn max_inflight_caps_open_jobs_across_workers() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::start(|req| {
            let mut r = Reply::ok(format!("done {}", req.target));
            if req.target.contains("slow") {
                r.steps.insert(0, Step::Sleep(Duration::from_millis(600)));
            }
            r
        });
        let sluice = start(
            &origin.url(),
            &["--max-inflight", "1", "--ingress-request-timeout-ms", "100"],
            legacy,
        );
        let first = sluice.connect().get("/crypto/sign?message=slow");
        assert_eq!(first.status, 202, "{}", first.head_text());
        // The deferred job is still open: the cap is reached, on any worker.
        for _ in 0..4 {
            let resp = sluice.connect().get("/crypto/sign?message=other");
            assert_json_error(&resp, 503, "over_capacity");
            assert_eq!(resp.header("retry-after").as_deref(), Some("1"));
        }
        let location = first.header("location").unwrap();
        poll_status(&sluice, &location, terminal);
        let after = sluice.connect().get("/crypto/sign?message=other");
        assert_eq!(
            after.status, 200,
            "the slot is free again once the job ended"
        );
        assert_eq!(origin.requests().len(), 2);
    });
}

fn slow_counter_origin(ms: u64) -> MockOrigin {
    MockOrigin::start(move |req| {
        let mut r = Reply::ok(format!("answer for {}", req.target));
        r.steps.insert(0, Step::Sleep(Duration::from_millis(ms)));
        r
    })
}

/// Sends `n` identical requests at once (each on its own connection) and returns the responses.
fn concurrent_gets(sluice: &Sluice, targets: Vec<String>) -> Vec<Response> {
    let threads: Vec<_> = targets
        .into_iter()
        .map(|t| {
            let addr = sluice.addr();
            std::thread::spawn(move || Client::connect(addr).get(&t))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn identical_requests_share_one_upstream_call() {
    for_both_drivers(|legacy| {
        let origin = slow_counter_origin(300);
        let sluice = start(&origin.url(), &["--workers", "1"], legacy);
        let target = "/crypto/sign?message=same".to_string();
        let responses = concurrent_gets(&sluice, vec![target.clone(); 4]);
        for r in &responses {
            assert_eq!(r.status, 200, "{}", r.head_text());
            assert_eq!(r.body_text(), "answer for /crypto/sign?message=same");
        }
        assert_eq!(
            origin.requests().len(),
            1,
            "one upstream call for four identical requests"
        );
        // A different message is a different job.
        let other = sluice.connect().get("/crypto/sign?message=other");
        assert_eq!(other.status, 200);
        assert_eq!(origin.requests().len(), 2);
    });
}

#[test]
fn identical_requests_share_one_upstream_call_across_workers() {
    for_both_drivers(|legacy| {
        let origin = slow_counter_origin(300);
        // Sixteen connections spread over two workers by SO_REUSEPORT: without cross-core
        // dedup, each worker that got one would call the upstream (all sixteen landing on one
        // worker has a chance of 2^-15).
        let sluice = start(&origin.url(), &["--workers", "2"], legacy);
        let target = "/crypto/sign?message=spread".to_string();
        let responses = concurrent_gets(&sluice, vec![target.clone(); 16]);
        for r in &responses {
            assert_eq!(r.status, 200, "{}", r.head_text());
            assert_eq!(r.body_text(), "answer for /crypto/sign?message=spread");
        }
        assert_eq!(
            origin.requests().len(),
            1,
            "one upstream call for sixteen identical requests on two workers"
        );
        // Once the job ended, its key is free on every worker: the next one calls again.
        let again = concurrent_gets(&sluice, vec![target; 4]);
        assert!(again.iter().all(|r| r.status == 200));
        assert_eq!(origin.requests().len(), 2);
    });
}

#[test]
fn deferred_duplicates_across_workers_share_the_job_and_every_callback() {
    let origin = slow_counter_origin(500);
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let enc = |p: &str| hooks.url(p).replace(':', "%3A").replace('/', "%2F");
    let sluice = start(
        &origin.url(),
        &["--workers", "2", "--ingress-request-timeout-ms", "100"],
        false,
    );
    let targets: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "/crypto/sign?message=xdup&callback={}",
                enc(&format!("/c{i}"))
            )
        })
        .collect();
    let responses = concurrent_gets(&sluice, targets);
    let ids: Vec<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.head_text());
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one job: {ids:?}");
    hooks.wait_for(16, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let received = hooks.requests();
    let mut paths: Vec<String> = received.iter().map(|r| r.target.clone()).collect();
    paths.sort();
    let mut expected: Vec<String> = (0..16).map(|i| format!("/c{i}")).collect();
    expected.sort();
    assert_eq!(paths, expected, "one callback per distinct URL");
    for r in &received {
        assert_eq!(r.header("sluice-job-id").as_deref(), Some(ids[0].as_str()));
        assert_eq!(r.body, b"answer for /crypto/sign?message=xdup");
    }
    assert_eq!(origin.requests().len(), 1);
    // The job's status document shows it finished, with one attempt.
    let status = sluice.connect().get(&format!("/_sluice/jobs/{}", ids[0]));
    assert_eq!(status.json()["status"], "succeeded");
    assert_eq!(status.json()["attempts"], 1);
}

#[test]
fn dedup_off_and_unsafe_methods_call_upstream_each_time() {
    for_both_drivers(|legacy| {
        let origin = slow_counter_origin(200);
        let sluice = start(&origin.url(), &["--workers", "1", "--dedup", "off"], legacy);
        let responses = concurrent_gets(&sluice, vec!["/crypto/sign?message=x".to_string(); 2]);
        assert!(responses.iter().all(|r| r.status == 200));
        assert_eq!(origin.requests().len(), 2);

        let origin = slow_counter_origin(200);
        let sluice = start(&origin.url(), &["--workers", "1"], legacy);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let addr = sluice.addr();
                std::thread::spawn(move || {
                    Client::connect(addr).request(with_body("POST", "/crypto/sign", b"same"))
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().status, 200);
        }
        assert_eq!(
            origin.requests().len(),
            2,
            "POST is not deduplicated under --dedup safe"
        );
    });
}

#[test]
fn deferred_duplicates_get_the_same_job_and_every_callback_is_notified() {
    let origin = slow_counter_origin(400);
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let enc = |p: &str| hooks.url(p).replace(':', "%3A").replace('/', "%2F");
    let sluice = start(
        &origin.url(),
        &["--workers", "1", "--ingress-request-timeout-ms", "100"],
        false,
    );
    let targets = vec![
        format!("/crypto/sign?message=dup&callback={}", enc("/a")),
        format!("/crypto/sign?message=dup&callback={}", enc("/b")),
        format!("/crypto/sign?message=dup&callback={}", enc("/a")),
    ];
    let responses = concurrent_gets(&sluice, targets);
    let ids: Vec<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.head_text());
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one job: {ids:?}");
    let received = hooks.wait_for(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let received_now = hooks.requests();
    assert_eq!(
        received_now.len(),
        2,
        "one callback per distinct URL: {received:?}"
    );
    let mut targets: Vec<String> = received_now.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    assert_eq!(targets, vec!["/a", "/b"]);
    for r in &received_now {
        assert_eq!(r.header("sluice-job-id").as_deref(), Some(ids[0].as_str()));
        assert_eq!(r.body, b"answer for /crypto/sign?message=dup");
    }
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn a_client_leaving_before_the_send_cancels_its_job_unless_it_has_a_callback() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let hooks = MockReceiver::start(vec![Answer::Status(200)]);
        let hook = hooks.url("/kept").replace(':', "%3A").replace('/', "%2F");
        let sluice = start(
            &origin.url(),
            &[
                "--rate-limit",
                "1/700ms",
                "--workers",
                "1",
                "--ingress-request-timeout-ms",
                "5000",
            ],
            legacy,
        );
        // Takes the only slot of this window.
        assert_eq!(
            sluice.connect().get("/crypto/sign?message=first").status,
            200
        );
        // Queued behind the limit, then the client leaves: cancelled, never sent.
        let mut gone = sluice.connect();
        gone.send(get("/crypto/sign?message=abandoned"));
        std::thread::sleep(Duration::from_millis(100));
        drop(gone);
        // Queued too, with a callback: it survives its client and calls back.
        let mut kept = sluice.connect();
        kept.send(get(&format!("/crypto/sign?message=kept&callback={hook}")));
        std::thread::sleep(Duration::from_millis(100));
        drop(kept);
        let received = hooks.wait_for(1, Duration::from_secs(10));
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].body, b"GET /crypto/sign?message=kept");
        // A later request still works, and the abandoned one never reached the origin.
        assert_eq!(
            sluice.connect().get("/crypto/sign?message=last").status,
            200
        );
        let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(
            targets,
            vec![
                "/crypto/sign?message=first",
                "/crypto/sign?message=kept",
                "/crypto/sign?message=last"
            ]
        );
    });
}

#[test]
fn head_requests_get_sluice_answers_without_a_body() {
    for_both_drivers(|legacy| {
        let origin = MockOrigin::echo();
        let sluice = start(&origin.url(), &[], legacy);
        let mut client = sluice.connect();
        // Pipelined: if a HEAD answer carried a body, the next response would be misread.
        client.send(
            "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD /_sluice/jobs/00000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let first = client.head_response();
        assert_eq!(first.status, 404);
        assert!(first.header("content-length").is_some());
        let second = client.head_response();
        assert_eq!(second.status, 404);
        let third = client.response();
        assert_json_error(&third, 404, "not_found");
    });
}

#[test]
fn a_callback_to_a_host_name_is_resolved_and_delivered_on_both_drivers() {
    // The name is looked up on the worker runtime's blocking pool (never on the I/O thread);
    // without that pool the lookup could not run and the callback would never arrive.
    for_both_drivers(|legacy| {
        let origin = slow_counter_origin(300);
        let hooks = MockReceiver::start(vec![Answer::Status(200)]);
        let hook = format!("http://localhost:{}/named", hooks.port())
            .replace(':', "%3A")
            .replace('/', "%2F");
        let sluice = start(
            &origin.url(),
            &[
                "--ingress-request-timeout-ms",
                "50",
                "--callback-allow",
                "localhost",
            ],
            legacy,
        );
        let resp = sluice
            .connect()
            .get(&format!("/crypto/sign?message=named&callback={hook}"));
        assert_eq!(resp.status, 202, "{}", resp.head_text());
        let location = resp.header("location").unwrap();
        let json = poll_status(&sluice, &location, |j| {
            terminal(j) && j["callback"] == "delivered"
        });
        assert_eq!(json["status"], "succeeded");
        let received = hooks.wait_for(1, IO_TIMEOUT);
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].target, "/named");
        assert_eq!(
            received[0].header("host"),
            Some(format!("localhost:{}", hooks.port()))
        );
        assert_eq!(received[0].body, b"answer for /crypto/sign?message=named");
    });
}
