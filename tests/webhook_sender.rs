//! The webhook sender against in-process mock receivers on 127.0.0.1: what a delivery looks like
//! on the wire, retries with stable ids and fresh signatures, 410, giving up at the total cap,
//! `Retry-After`, redirects, timeouts, `--callback-allow` refusals without any connection, https
//! with a test CA, and shutdown handing back undelivered records.
//!
//! The schedule is scaled down (milliseconds instead of seconds) so every test is bounded by a
//! few seconds; each wait has a timeout and a hang fails the test.

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::tls::TestCa;
use common::webhook::{Answer, MockReceiver, Received};
use common::IO_TIMEOUT;
use sluice::webhook::{
    verify, AttemptFailure, CallbackAllow, CallbackUrl, Delivery, DeliveryOutcome, DeliveryReport,
    JobOutcome, RetryPolicy, Sender, SenderConfig, WebhookSecret,
};

/// A secret for the tests (Standard Webhooks example secret).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The retry schedule scaled down: first retry within 20 ms, at most 100 ms apart.
const FAST_RETRY: RetryPolicy = RetryPolicy {
    first_delay: Duration::from_millis(20),
    min_delay: Duration::from_millis(5),
    max_delay: Duration::from_millis(100),
    give_up_after: Duration::from_secs(5),
};

/// Long enough that a test never sees a retry it did not wait for.
const SLOW_RETRY: RetryPolicy = RetryPolicy {
    first_delay: Duration::from_secs(30),
    min_delay: Duration::from_secs(30),
    max_delay: Duration::from_secs(60),
    give_up_after: Duration::from_secs(3600),
};

fn tls_config(ca: Option<&TestCa>) -> Arc<rustls::ClientConfig> {
    let path = ca.map(|ca| ca.file.path());
    Arc::new(sluice::upstream::tls::client_config(path).expect("client TLS config"))
}

fn config(retry: RetryPolicy) -> SenderConfig {
    let mut config = SenderConfig::new(tls_config(None));
    config.retry = retry;
    config.request_timeout = Duration::from_secs(2);
    config.secret = Some(WebhookSecret::parse(SECRET).unwrap());
    config
}

fn start(config: SenderConfig) -> (Sender, Receiver<DeliveryReport>) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let sender = Sender::start(
        config,
        Arc::new(move |report| {
            let _ = tx.lock().unwrap().send(report);
        }),
    )
    .expect("start sender");
    (sender, rx)
}

fn delivery(url: &str, job_id: &str, body: &'static [u8]) -> Delivery {
    Delivery::new(
        job_id.to_string(),
        CallbackUrl::parse_str(url).expect("test callback URL"),
        Bytes::from_static(body),
        Some("text/plain".to_string()),
        JobOutcome::Succeeded,
        Some(200),
        3,
        SystemTime::now(),
    )
}

fn next_report(rx: &Receiver<DeliveryReport>) -> DeliveryReport {
    rx.recv_timeout(IO_TIMEOUT)
        .expect("no delivery report within the I/O timeout")
}

/// Reports until (and including) the first final one.
fn reports_until_final(rx: &Receiver<DeliveryReport>) -> Vec<DeliveryReport> {
    let mut all = Vec::new();
    loop {
        let report = next_report(rx);
        let done = report.outcome.is_final();
        all.push(report);
        if done {
            return all;
        }
    }
}

/// Asserts the Standard Webhooks headers of `req` verify for `job_id` and return the timestamp.
fn assert_signed(req: &Received, job_id: &str) -> u64 {
    let secret = WebhookSecret::parse(SECRET).unwrap();
    assert_eq!(req.expect_header("webhook-id"), job_id);
    let ts: u64 = req
        .expect_header("webhook-timestamp")
        .parse()
        .expect("numeric timestamp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ts <= now && now - ts < 60,
        "timestamp {ts} is not now ({now})"
    );
    let sig = req.expect_header("webhook-signature");
    assert!(
        verify(&secret, job_id, ts, &req.body, &sig),
        "signature {sig} does not verify for id {job_id}, ts {ts}"
    );
    ts
}

#[test]
fn delivery_has_headers_and_exact_body() {
    let receiver = MockReceiver::start(vec![Answer::Status(200)]);
    let (sender, rx) = start(config(FAST_RETRY));
    const BODY: &[u8] = b"line1\r\nline2\0\xff\xfe binary \"json\": {}";
    let d = delivery(&receiver.url("/hooks/in?token=a%20b&x=1"), "job_7Hx", BODY);
    sender.submit(d).unwrap();

    let report = next_report(&rx);
    assert_eq!(report.outcome, DeliveryOutcome::Delivered { status: 200 });
    assert_eq!((report.attempt, report.record.delivery_attempts), (1, 1));
    assert_eq!(report.job_id, "job_7Hx");

    let reqs = receiver.wait_for(1, IO_TIMEOUT);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/hooks/in?token=a%20b&x=1");
    assert_eq!(req.body, BODY);
    assert!(req.trailing.is_empty());
    assert_eq!(
        req.expect_header("host"),
        format!("127.0.0.1:{}", receiver.port())
    );
    assert_eq!(
        req.expect_header("user-agent"),
        format!("sluice/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(req.expect_header("content-type"), "text/plain");
    assert_eq!(req.expect_header("content-length"), BODY.len().to_string());
    assert_eq!(req.expect_header("connection"), "close");
    assert_eq!(req.expect_header("sluice-job-id"), "job_7Hx");
    assert_eq!(req.expect_header("sluice-status"), "succeeded");
    assert_eq!(req.expect_header("sluice-upstream-status"), "200");
    assert_eq!(req.expect_header("sluice-attempts"), "3");
    assert!(req.header("transfer-encoding").is_none());
    assert_signed(req, "job_7Hx");
    assert_eq!(sender.pending(), 0);
    assert!(sender.shutdown(IO_TIMEOUT).is_empty());
}

#[test]
fn failed_job_without_content_type_or_upstream_status_and_unsigned() {
    let receiver = MockReceiver::start(vec![Answer::Status(204)]);
    let mut config = config(FAST_RETRY);
    config.secret = None;
    let (sender, rx) = start(config);
    let mut d = delivery(&receiver.url("/"), "job_f", b"");
    d.content_type = None;
    d.upstream_status = None;
    d.status = JobOutcome::Failed;
    sender.submit(d).unwrap();
    assert_eq!(
        next_report(&rx).outcome,
        DeliveryOutcome::Delivered { status: 204 }
    );
    let req = &receiver.wait_for(1, IO_TIMEOUT)[0];
    assert!(req.header("content-type").is_none());
    assert_eq!(req.expect_header("content-length"), "0");
    assert_eq!(req.expect_header("sluice-status"), "failed");
    assert_eq!(req.expect_header("sluice-upstream-status"), "");
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(req.header(name).is_none(), "unsigned delivery has {name}");
    }
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn retries_until_2xx_with_stable_id_and_fresh_signatures() {
    let receiver = MockReceiver::start(vec![
        Answer::Status(500),
        Answer::Status(503),
        Answer::Status(200),
    ]);
    let (sender, rx) = start(config(FAST_RETRY));
    sender
        .submit(delivery(
            &receiver.url("/cb"),
            "job_retry",
            b"{\"signature\":\"abc\"}",
        ))
        .unwrap();

    let reports = reports_until_final(&rx);
    let outcomes: Vec<String> = reports
        .iter()
        .map(|r| match &r.outcome {
            DeliveryOutcome::Retrying { failure, next_in } => {
                assert!(
                    *next_in >= FAST_RETRY.min_delay && *next_in <= FAST_RETRY.max_delay,
                    "{next_in:?}"
                );
                format!("retry {:?}", failure.status())
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "retry Some(500)",
            "retry Some(503)",
            "Delivered { status: 200 }"
        ]
    );
    let attempts: Vec<u32> = reports.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    // While retrying, the report's record says when the next attempt is due.
    assert!(reports[0].record.next_attempt_at.is_some());
    assert_eq!(reports[2].record.next_attempt_at, None);

    let reqs = receiver.wait_for(3, IO_TIMEOUT);
    assert_eq!(reqs.len(), 3);
    for (i, req) in reqs.iter().enumerate() {
        assert_eq!(req.conn, i, "one connection per attempt");
        assert_eq!(req.body, b"{\"signature\":\"abc\"}");
        assert_signed(req, "job_retry");
        assert_eq!(req.expect_header("sluice-job-id"), "job_retry");
    }
    for pair in reqs.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= FAST_RETRY.min_delay, "retry after only {gap:?}");
    }
    assert_eq!(sender.pending(), 0);
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn gone_stops_after_one_attempt() {
    let receiver = MockReceiver::start(vec![Answer::Status(410), Answer::Status(200)]);
    let (sender, rx) = start(config(FAST_RETRY));
    sender
        .submit(delivery(&receiver.url("/"), "job_gone", b"x"))
        .unwrap();
    let report = next_report(&rx);
    match &report.outcome {
        DeliveryOutcome::GaveUp { reason, last } => {
            assert!(reason.contains("410"), "{reason}");
            assert_eq!(last.status(), Some(410));
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    // Several retry windows later, still one request.
    std::thread::sleep(FAST_RETRY.max_delay * 3);
    assert_eq!(receiver.requests().len(), 1);
    assert!(rx.try_recv().is_err());
    assert_eq!(sender.pending(), 0);
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn never_succeeding_receiver_is_given_up_at_the_cap() {
    let receiver = MockReceiver::start(vec![Answer::Status(500)]);
    let cap = Duration::from_millis(400);
    let (sender, rx) = start(config(RetryPolicy {
        give_up_after: cap,
        ..FAST_RETRY
    }));
    let started = SystemTime::now();
    sender
        .submit(delivery(&receiver.url("/"), "job_cap", b"x"))
        .unwrap();
    let reports = reports_until_final(&rx);
    let given_up_after = started.elapsed().unwrap();
    let last = reports.last().unwrap();
    match &last.outcome {
        DeliveryOutcome::GaveUp {
            reason,
            last: failure,
        } => {
            assert!(reason.starts_with("no 2xx after"), "{reason}");
            assert!(reason.contains("receiver answered 500"), "{reason}");
            assert_eq!(failure.status(), Some(500));
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(given_up_after >= cap, "gave up after {given_up_after:?}");
    assert!(
        given_up_after < cap + Duration::from_secs(2),
        "gave up late: {given_up_after:?}"
    );
    // At least a few attempts, each reported; every request arrived before the cap (plus the
    // time of one exchange).
    let reqs = receiver.requests();
    assert!(reqs.len() >= 4, "only {} attempts", reqs.len());
    assert_eq!(reqs.len(), reports.len());
    assert_eq!(last.attempt as usize, reqs.len());
    std::thread::sleep(FAST_RETRY.max_delay * 2);
    assert_eq!(
        receiver.requests().len(),
        reqs.len(),
        "attempts after giving up"
    );
    assert_eq!(sender.pending(), 0);
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn retry_after_is_honoured() {
    let receiver = MockReceiver::start(vec![
        Answer::StatusWith(503, vec![("Retry-After".into(), "1".into())]),
        Answer::Status(200),
    ]);
    let (sender, rx) = start(config(FAST_RETRY));
    sender
        .submit(delivery(&receiver.url("/"), "job_ra", b"x"))
        .unwrap();
    let reports = reports_until_final(&rx);
    match &reports[0].outcome {
        DeliveryOutcome::Retrying { failure, next_in } => {
            assert_eq!(
                failure,
                &AttemptFailure::Status {
                    status: 503,
                    retry_after: Some(Duration::from_secs(1))
                }
            );
            assert_eq!(*next_in, Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reports[1].outcome,
        DeliveryOutcome::Delivered { status: 200 }
    );
    let reqs = receiver.wait_for(2, IO_TIMEOUT);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After 1 s ignored: {gap:?}"
    );
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn redirects_are_not_followed() {
    let other = MockReceiver::start(vec![Answer::Status(200)]);
    let receiver = MockReceiver::start(vec![
        Answer::StatusWith(307, vec![("Location".into(), other.url("/moved"))]),
        Answer::Status(200),
    ]);
    let (sender, rx) = start(config(FAST_RETRY));
    sender
        .submit(delivery(&receiver.url("/"), "job_redirect", b"x"))
        .unwrap();
    let reports = reports_until_final(&rx);
    assert!(
        matches!(&reports[0].outcome, DeliveryOutcome::Retrying { failure, .. } if failure.status() == Some(307)),
        "{reports:?}"
    );
    assert_eq!(
        reports[1].outcome,
        DeliveryOutcome::Delivered { status: 200 }
    );
    assert_eq!(receiver.requests().len(), 2);
    assert_eq!(other.connections(), 0, "the redirect target was contacted");
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn hanging_receiver_times_out_and_is_retried() {
    let receiver = MockReceiver::start(vec![Answer::Hang, Answer::Status(200)]);
    let mut config = config(FAST_RETRY);
    config.request_timeout = Duration::from_millis(300);
    let (sender, rx) = start(config);
    let t0 = Instant::now();
    sender
        .submit(delivery(&receiver.url("/"), "job_hang", b"x"))
        .unwrap();
    let first = next_report(&rx);
    let waited = t0.elapsed();
    match &first.outcome {
        DeliveryOutcome::Retrying { failure, .. } => assert_eq!(
            failure,
            &AttemptFailure::Timeout("waiting for the response head")
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(
        next_report(&rx).outcome,
        DeliveryOutcome::Delivered { status: 200 }
    );
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn refused_connection_is_retried() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (sender, rx) = start(config(FAST_RETRY));
    sender
        .submit(delivery(
            &format!("http://127.0.0.1:{port}/"),
            "job_refused",
            b"x",
        ))
        .unwrap();
    match next_report(&rx).outcome {
        DeliveryOutcome::Retrying {
            failure: AttemptFailure::Connect(e),
            ..
        } => assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}"),
        other => panic!("{other:?}"),
    }
    let records = sender.shutdown(IO_TIMEOUT);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].job_id, "job_refused");
}

#[test]
fn disallowed_targets_are_rejected_without_any_connection() {
    let receiver = MockReceiver::start(vec![Answer::Status(200)]);
    let cases = [
        // A name rule never matches an IP literal; no address rule covers 127.0.0.1.
        ("*.example.com", receiver.url("/")),
        // An address rule that does not cover 127.0.0.1.
        ("10.0.0.0/8,::2", receiver.url("/")),
        // A name outside the name rules, and no address rules: refused before resolving.
        (
            "hooks.example.com",
            format!("http://localhost:{}/", receiver.port()),
        ),
        // localhost resolves only to loopback addresses, none of them allowed.
        (
            "10.0.0.0/8",
            format!("http://localhost:{}/", receiver.port()),
        ),
    ];
    for (list, url) in cases {
        let mut config = config(FAST_RETRY);
        config.allow = CallbackAllow::parse(list).unwrap();
        let (sender, rx) = start(config);
        sender.submit(delivery(&url, "job_ssrf", b"x")).unwrap();
        let report = next_report(&rx);
        match &report.outcome {
            DeliveryOutcome::Rejected { reason } => {
                assert!(reason.contains("--callback-allow"), "{list}: {reason}")
            }
            other => panic!("{list} {url}: expected Rejected, got {other:?}"),
        }
        assert_eq!(report.attempt, 1);
        assert_eq!(sender.pending(), 0);
        assert!(sender.shutdown(IO_TIMEOUT).is_empty());
    }
    assert_eq!(
        receiver.connections(),
        0,
        "a disallowed target was contacted"
    );
}

#[test]
fn allowed_targets_are_delivered() {
    let receiver = MockReceiver::start(vec![Answer::Status(200)]);
    for (list, url) in [
        ("127.0.0.0/8", receiver.url("/")),
        (
            "LocalHost",
            format!("http://localhost:{}/", receiver.port()),
        ),
        // Only 127.0.0.1 of localhost's addresses is allowed (and dialled).
        (
            "127.0.0.1,10.0.0.0/8",
            format!("http://localhost:{}/", receiver.port()),
        ),
    ] {
        let mut config = config(FAST_RETRY);
        config.allow = CallbackAllow::parse(list).unwrap();
        let (sender, rx) = start(config);
        sender.submit(delivery(&url, "job_ok", b"x")).unwrap();
        assert_eq!(
            next_report(&rx).outcome,
            DeliveryOutcome::Delivered { status: 200 },
            "{list} {url}"
        );
        sender.shutdown(IO_TIMEOUT);
    }
    assert_eq!(receiver.requests().len(), 3);
}

#[test]
fn https_receiver_with_test_ca() {
    let ca = TestCa::new();
    let receiver = MockReceiver::start_tls(
        vec![Answer::Status(202)],
        ca.server_config(&["localhost", "127.0.0.1"]),
    );
    let mut config = config(FAST_RETRY);
    config.tls = tls_config(Some(&ca));
    let (sender, rx) = start(config);
    for url in [
        receiver.url("/secure"),
        format!("https://localhost:{}/secure", receiver.port()),
    ] {
        sender
            .submit(delivery(&url, "job_tls", b"secret body"))
            .unwrap();
        assert_eq!(
            next_report(&rx).outcome,
            DeliveryOutcome::Delivered { status: 202 },
            "{url}"
        );
    }
    let reqs = receiver.wait_for(2, IO_TIMEOUT);
    for req in &reqs {
        assert_eq!(req.target, "/secure");
        assert_eq!(req.body, b"secret body");
        assert_signed(req, "job_tls");
    }
    // No SNI for an IP address; the host name for a name.
    assert_eq!(reqs[0].sni, None);
    assert_eq!(reqs[1].sni.as_deref(), Some("localhost"));
    sender.shutdown(IO_TIMEOUT);
}

#[test]
fn https_receiver_with_unknown_ca_is_a_tls_failure() {
    let ca = TestCa::new();
    let receiver =
        MockReceiver::start_tls(vec![Answer::Status(200)], ca.server_config(&["127.0.0.1"]));
    // The sender trusts only the web PKI, not this CA.
    let (sender, rx) = start(config(SLOW_RETRY));
    sender
        .submit(delivery(&receiver.url("/"), "job_badtls", b"x"))
        .unwrap();
    match next_report(&rx).outcome {
        DeliveryOutcome::Retrying {
            failure: AttemptFailure::Tls(e),
            ..
        } => assert!(e.to_lowercase().contains("certificate"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(receiver.requests().is_empty());
    assert_eq!(sender.shutdown(IO_TIMEOUT).len(), 1);
}

#[test]
fn shutdown_returns_undelivered_records() {
    let receiver = MockReceiver::start(vec![Answer::Status(500)]);
    let (sender, rx) = start(config(SLOW_RETRY));
    let handle = sender.handle();
    handle
        .submit(delivery(&receiver.url("/"), "job_a", b"a"))
        .unwrap();
    // Wait for its first (failed) attempt; it is now queued 30 s out.
    assert!(matches!(
        next_report(&rx).outcome,
        DeliveryOutcome::Retrying { .. }
    ));
    // A second one due far in the future never starts.
    let mut later = delivery(&receiver.url("/"), "job_b", b"b");
    later.next_attempt_at = Some(SystemTime::now() + Duration::from_secs(3600));
    handle.submit(later).unwrap();
    assert_eq!(handle.pending(), 2);

    let t0 = Instant::now();
    let records = sender.shutdown(IO_TIMEOUT);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "shutdown waited for queued work"
    );
    let ids: Vec<(&str, u32)> = records
        .iter()
        .map(|r| (r.job_id.as_str(), r.delivery_attempts))
        .collect();
    assert_eq!(ids, [("job_a", 1), ("job_b", 0)]);
    assert!(records[0].next_attempt_at.unwrap() > SystemTime::now());
    assert_eq!(receiver.requests().len(), 1);

    // After shutdown, submissions come back instead of being lost.
    let refused = handle
        .submit(delivery(&receiver.url("/"), "job_c", b"c"))
        .unwrap_err();
    assert_eq!(refused.0.job_id, "job_c");
}

#[test]
fn shutdown_hands_back_attempts_that_outlive_the_grace() {
    let receiver = MockReceiver::start(vec![Answer::Hang]);
    let mut config = config(FAST_RETRY);
    config.request_timeout = Duration::from_secs(3);
    let (sender, _rx) = start(config);
    sender
        .submit(delivery(&receiver.url("/"), "job_slow", b"x"))
        .unwrap();
    receiver.wait_for(1, IO_TIMEOUT);
    let t0 = Instant::now();
    let records = sender.shutdown(Duration::from_millis(200));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].job_id, "job_slow");
}

#[test]
fn many_deliveries_share_the_threads() {
    let receiver = MockReceiver::start(vec![Answer::Status(200)]);
    let (sender, rx) = start(config(FAST_RETRY));
    const N: usize = 20;
    for i in 0..N {
        sender
            .submit(delivery(
                &receiver.url(&format!("/n/{i}")),
                &format!("job_{i}"),
                b"x",
            ))
            .unwrap();
    }
    let mut ids: Vec<String> = (0..N).map(|_| next_report(&rx).job_id).collect();
    ids.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("job_{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(receiver.requests().len(), N);
    sender.shutdown(IO_TIMEOUT);
}
