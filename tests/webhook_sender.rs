//! The per-core webhook sender against in-process mock receivers on 127.0.0.1: what a delivery
//! looks like on the wire, retries with stable ids and fresh signatures, 410, giving up at the
//! total cap, `Retry-After`, redirects, timeouts (plain and TLS), `--callback-allow` refusals
//! without any connection, https with a test CA, a hanging receiver not holding up a fast one,
//! and shutdown handing back undelivered records.
//!
//! Each scenario runs on a monoio runtime built like a worker's (timer enabled, a blocking pool
//! for host-name lookups, the per-core timer driver spawned), once with the epoll driver and once
//! with the default one (io_uring when the kernel allows it). Reports come through a channel fed
//! by the report hook and polled on the timer wheel; nothing in a scenario blocks the runtime
//! thread while the sender has work (the mock receivers run on their own threads). The schedule
//! is scaled down (milliseconds instead of seconds) and every wait is bounded, so a hang fails
//! the test.

mod common;

use std::future::Future;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::tls::TestCa;
use common::webhook::{Answer, MockReceiver, Received};
use common::IO_TIMEOUT;
use monoio::blocking::DefaultThreadPool;
use monoio::{FusionDriver, LegacyDriver, RuntimeBuilder};
use sluice::timer::{Timers, DEFAULT_TICK};
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

/// How often a scenario looks for new reports or requests.
const POLL: Duration = Duration::from_millis(2);

/// Bound on one whole scenario on one driver.
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);

/// Threads of the test runtime's blocking pool (as in the gateway).
const BLOCKING_THREADS: usize = 2;

/// Runs `scenario` on a fresh worker-like runtime, with the epoll driver and then with the
/// default one. The scenario gets this runtime's timer service (its driver already spawned).
fn on_both_drivers<F, Fut>(scenario: F)
where
    F: Fn(Rc<Timers>) -> Fut,
    Fut: Future<Output = ()>,
{
    let run = |timers_epoch: Instant| {
        let scenario = &scenario;
        async move {
            let timers = Timers::new(timers_epoch, DEFAULT_TICK);
            monoio::spawn(Rc::clone(&timers).run());
            monoio::time::timeout(SCENARIO_LIMIT, scenario(timers))
                .await
                .expect("the scenario did not finish in time");
        }
    };
    eprintln!("=== scenario on the epoll (legacy) driver");
    let mut legacy = RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(DefaultThreadPool::new(BLOCKING_THREADS)))
        .build()
        .expect("an epoll runtime");
    legacy.block_on(run(Instant::now()));
    drop(legacy);
    let mut default = RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(DefaultThreadPool::new(BLOCKING_THREADS)))
        .build()
        .expect("a default runtime");
    let name = match &default {
        monoio::FusionRuntime::Uring(_) => "io_uring",
        monoio::FusionRuntime::Legacy(_) => "epoll (io_uring unavailable)",
    };
    eprintln!("=== scenario on the default driver: {name}");
    default.block_on(run(Instant::now()));
}

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

/// A sender on this core and the reports it makes.
struct Harness {
    sender: Sender,
    reports: Receiver<DeliveryReport>,
    timers: Rc<Timers>,
}

fn start(timers: &Rc<Timers>, config: SenderConfig) -> Harness {
    config.validate().expect("a valid test config");
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let sender = Sender::new(
        Arc::new(config),
        Rc::clone(timers),
        Arc::new(move |report| {
            let _ = tx.lock().unwrap().send(report);
        }),
        Rc::new(sluice::metrics::Shard::detached()),
    );
    Harness {
        sender,
        reports: rx,
        timers: Rc::clone(timers),
    }
}

impl Harness {
    /// Sleeps on the timer wheel (the sender's tasks run meanwhile).
    async fn sleep(&self, d: Duration) {
        self.timers.sleep(d).await;
    }

    /// The next report, waiting at most [`IO_TIMEOUT`].
    async fn next_report(&self) -> DeliveryReport {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match self.reports.try_recv() {
                Ok(report) => return report,
                Err(TryRecvError::Disconnected) => panic!("the report hook was dropped"),
                Err(TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "no delivery report within the I/O timeout"
            );
            self.sleep(POLL).await;
        }
    }

    /// Reports until (and including) the first final one.
    async fn reports_until_final(&self) -> Vec<DeliveryReport> {
        let mut all = Vec::new();
        loop {
            let report = self.next_report().await;
            let done = report.outcome.is_final();
            all.push(report);
            if done {
                return all;
            }
        }
    }

    /// Waits until `receiver` got at least `n` requests (fails after [`IO_TIMEOUT`]); all of
    /// them. (`MockReceiver::wait_for` would block this runtime, and with it the sender.)
    async fn requests(&self, receiver: &MockReceiver, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let got = receiver.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} requests, expected {n}",
                got.len()
            );
            self.sleep(POLL).await;
        }
    }
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
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(200)]);
        let h = start(&timers, config(FAST_RETRY));
        const BODY: &[u8] = b"line1\r\nline2\0\xff\xfe binary \"json\": {}";
        let d = delivery(&receiver.url("/hooks/in?token=a%20b&x=1"), "job_7Hx", BODY);
        h.sender.submit(d).unwrap();
        assert_eq!(h.sender.pending(), 1);

        let report = h.next_report().await;
        assert_eq!(report.outcome, DeliveryOutcome::Delivered { status: 200 });
        assert_eq!((report.attempt, report.record.delivery_attempts), (1, 1));
        assert_eq!(report.job_id, "job_7Hx");

        let reqs = h.requests(&receiver, 1).await;
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
        assert_eq!(h.sender.pending(), 0);
        assert!(h.sender.shutdown(IO_TIMEOUT).await.is_empty());
        // The task ended: nothing is left on the wheel.
        assert_eq!(timers.pending(), 0);
    });
}

#[test]
fn large_body_is_sent_exactly() {
    on_both_drivers(|timers| async move {
        // Larger than what goes out in one write with the head.
        static BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let body = BODY.get_or_init(|| common::pattern(300 * 1024));
        let receiver = MockReceiver::start(vec![Answer::Status(200)]);
        let h = start(&timers, config(FAST_RETRY));
        h.sender
            .submit(delivery(&receiver.url("/big"), "job_big", body))
            .unwrap();
        assert_eq!(
            h.next_report().await.outcome,
            DeliveryOutcome::Delivered { status: 200 }
        );
        let req = &h.requests(&receiver, 1).await[0];
        assert_eq!(req.expect_header("content-length"), body.len().to_string());
        assert!(req.body == *body, "the large body arrived altered");
        assert!(req.trailing.is_empty());
        assert_signed(req, "job_big");
    });
}

#[test]
fn failed_job_without_content_type_or_upstream_status_and_unsigned() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(204)]);
        let mut config = config(FAST_RETRY);
        config.secret = None;
        let h = start(&timers, config);
        let mut d = delivery(&receiver.url("/"), "job_f", b"");
        d.content_type = None;
        d.upstream_status = None;
        d.status = JobOutcome::Failed;
        h.sender.submit(d).unwrap();
        assert_eq!(
            h.next_report().await.outcome,
            DeliveryOutcome::Delivered { status: 204 }
        );
        let req = &h.requests(&receiver, 1).await[0];
        assert!(req.header("content-type").is_none());
        assert_eq!(req.expect_header("content-length"), "0");
        assert_eq!(req.expect_header("sluice-status"), "failed");
        assert_eq!(req.expect_header("sluice-upstream-status"), "");
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert!(req.header(name).is_none(), "unsigned delivery has {name}");
        }
    });
}

#[test]
fn retries_until_2xx_with_stable_id_and_fresh_signatures() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![
            Answer::Status(500),
            Answer::Status(503),
            Answer::Status(200),
        ]);
        let h = start(&timers, config(FAST_RETRY));
        h.sender
            .submit(delivery(
                &receiver.url("/cb"),
                "job_retry",
                b"{\"signature\":\"abc\"}",
            ))
            .unwrap();

        let reports = h.reports_until_final().await;
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

        let reqs = h.requests(&receiver, 3).await;
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
        assert_eq!(h.sender.pending(), 0);
    });
}

#[test]
fn a_delivery_due_later_waits_on_the_wheel() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(200)]);
        let h = start(&timers, config(FAST_RETRY));
        let wait = Duration::from_millis(150);
        let mut d = delivery(&receiver.url("/"), "job_later", b"x");
        d.next_attempt_at = Some(SystemTime::now() + wait);
        let t0 = Instant::now();
        h.sender.submit(d).unwrap();
        // Waiting on this core's wheel, not on a socket.
        h.sleep(Duration::from_millis(20)).await;
        assert_eq!(timers.pending(), 1, "the delivery's timer is on the wheel");
        assert!(receiver.requests().is_empty());
        assert_eq!(
            h.next_report().await.outcome,
            DeliveryOutcome::Delivered { status: 200 }
        );
        let reqs = h.requests(&receiver, 1).await;
        let waited = reqs[0].at - t0;
        // The wall clock and the timer clock may differ by a tick.
        assert!(
            waited >= wait - Duration::from_millis(2),
            "sent after {waited:?}"
        );
        assert!(
            waited < wait + Duration::from_secs(1),
            "sent late: {waited:?}"
        );
    });
}

#[test]
fn gone_stops_after_one_attempt() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(410), Answer::Status(200)]);
        let h = start(&timers, config(FAST_RETRY));
        h.sender
            .submit(delivery(&receiver.url("/"), "job_gone", b"x"))
            .unwrap();
        let report = h.next_report().await;
        match &report.outcome {
            DeliveryOutcome::GaveUp { reason, last } => {
                assert!(reason.contains("410"), "{reason}");
                assert_eq!(last.status(), Some(410));
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        // Several retry windows later (the sender's tasks run meanwhile), still one request.
        h.sleep(FAST_RETRY.max_delay * 3).await;
        assert_eq!(receiver.requests().len(), 1);
        assert!(h.reports.try_recv().is_err());
        assert_eq!(h.sender.pending(), 0);
    });
}

#[test]
fn never_succeeding_receiver_is_given_up_at_the_cap() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(500)]);
        let cap = Duration::from_millis(400);
        let h = start(
            &timers,
            config(RetryPolicy {
                give_up_after: cap,
                ..FAST_RETRY
            }),
        );
        let started = SystemTime::now();
        h.sender
            .submit(delivery(&receiver.url("/"), "job_cap", b"x"))
            .unwrap();
        let reports = h.reports_until_final().await;
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
        // At least a few attempts, each reported.
        let reqs = receiver.requests();
        assert!(reqs.len() >= 4, "only {} attempts", reqs.len());
        assert_eq!(reqs.len(), reports.len());
        assert_eq!(last.attempt as usize, reqs.len());
        h.sleep(FAST_RETRY.max_delay * 2).await;
        assert_eq!(
            receiver.requests().len(),
            reqs.len(),
            "attempts after giving up"
        );
        assert_eq!(h.sender.pending(), 0);
        assert_eq!(timers.pending(), 0);
    });
}

#[test]
fn retry_after_is_honoured() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![
            Answer::StatusWith(503, vec![("Retry-After".into(), "1".into())]),
            Answer::Status(200),
        ]);
        let h = start(&timers, config(FAST_RETRY));
        h.sender
            .submit(delivery(&receiver.url("/"), "job_ra", b"x"))
            .unwrap();
        let reports = h.reports_until_final().await;
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
        let reqs = h.requests(&receiver, 2).await;
        let gap = reqs[1].at - reqs[0].at;
        assert!(
            gap >= Duration::from_millis(950),
            "Retry-After 1 s ignored: {gap:?}"
        );
    });
}

#[test]
fn redirects_are_not_followed() {
    on_both_drivers(|timers| async move {
        let other = MockReceiver::start(vec![Answer::Status(200)]);
        let receiver = MockReceiver::start(vec![
            Answer::StatusWith(307, vec![("Location".into(), other.url("/moved"))]),
            Answer::Status(200),
        ]);
        let h = start(&timers, config(FAST_RETRY));
        h.sender
            .submit(delivery(&receiver.url("/"), "job_redirect", b"x"))
            .unwrap();
        let reports = h.reports_until_final().await;
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
    });
}

#[test]
fn hanging_receiver_times_out_and_is_retried() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Hang, Answer::Status(200)]);
        let mut config = config(FAST_RETRY);
        config.request_timeout = Duration::from_millis(300);
        let h = start(&timers, config);
        let t0 = Instant::now();
        h.sender
            .submit(delivery(&receiver.url("/"), "job_hang", b"x"))
            .unwrap();
        let first = h.next_report().await;
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
            h.next_report().await.outcome,
            DeliveryOutcome::Delivered { status: 200 }
        );
    });
}

#[test]
fn hanging_tls_receiver_times_out_and_is_retried() {
    // A TLS read dropped by the timeout: the stream is dropped with it (monoio-rustls panics on
    // a read after a dropped read), and the next attempt uses a new connection.
    on_both_drivers(|timers| async move {
        let ca = TestCa::new();
        let receiver = MockReceiver::start_tls(
            vec![Answer::Hang, Answer::Status(200)],
            ca.server_config(&["127.0.0.1"]),
        );
        let mut config = config(FAST_RETRY);
        config.tls = tls_config(Some(&ca));
        config.request_timeout = Duration::from_millis(300);
        let h = start(&timers, config);
        h.sender
            .submit(delivery(&receiver.url("/"), "job_tls_hang", b"x"))
            .unwrap();
        match h.next_report().await.outcome {
            DeliveryOutcome::Retrying { failure, .. } => assert_eq!(
                failure,
                AttemptFailure::Timeout("waiting for the response head")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.next_report().await.outcome,
            DeliveryOutcome::Delivered { status: 200 }
        );
        let reqs = h.requests(&receiver, 2).await;
        assert_eq!((reqs[0].conn, reqs[1].conn), (0, 1));
    });
}

#[test]
fn a_hanging_receiver_does_not_hold_up_a_fast_one() {
    on_both_drivers(|timers| async move {
        const HANGING: usize = 4;
        let slow = MockReceiver::start(vec![Answer::Hang]);
        let fast = MockReceiver::start(vec![Answer::Status(200)]);
        let mut config = config(SLOW_RETRY);
        let timeout = Duration::from_secs(3);
        config.request_timeout = timeout;
        let h = start(&timers, config);
        // More hanging deliveries than the old sender had threads, submitted first.
        for i in 0..HANGING {
            h.sender
                .submit(delivery(&slow.url("/"), &format!("job_slow_{i}"), b"x"))
                .unwrap();
        }
        // All of them are waiting on their receiver at once.
        h.requests(&slow, HANGING).await;
        let t0 = Instant::now();
        h.sender
            .submit(delivery(&fast.url("/"), "job_fast", b"x"))
            .unwrap();
        let report = h.next_report().await;
        let took = t0.elapsed();
        assert_eq!(report.job_id, "job_fast", "{report:?}");
        assert_eq!(report.outcome, DeliveryOutcome::Delivered { status: 200 });
        assert!(
            took < timeout / 3,
            "the fast delivery waited {took:?} behind hanging ones"
        );
        assert_eq!(
            h.sender.pending(),
            HANGING,
            "the hanging ones are in flight"
        );
        assert!(h.reports.try_recv().is_err());
        // And they time out on their own schedule.
        for _ in 0..HANGING {
            match h.next_report().await.outcome {
                DeliveryOutcome::Retrying { failure, .. } => assert_eq!(
                    failure,
                    AttemptFailure::Timeout("waiting for the response head")
                ),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(h.sender.take_undelivered().len(), HANGING);
    });
}

#[test]
fn refused_connection_is_retried() {
    on_both_drivers(|timers| async move {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let h = start(&timers, config(FAST_RETRY));
        h.sender
            .submit(delivery(
                &format!("http://127.0.0.1:{port}/"),
                "job_refused",
                b"x",
            ))
            .unwrap();
        match h.next_report().await.outcome {
            DeliveryOutcome::Retrying {
                failure: AttemptFailure::Connect(e),
                ..
            } => assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}"),
            other => panic!("{other:?}"),
        }
        let records = h.sender.shutdown(IO_TIMEOUT).await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].job_id, "job_refused");
    });
}

#[test]
fn disallowed_targets_are_rejected_without_any_connection() {
    on_both_drivers(|timers| async move {
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
            let h = start(&timers, config);
            h.sender.submit(delivery(&url, "job_ssrf", b"x")).unwrap();
            let report = h.next_report().await;
            match &report.outcome {
                DeliveryOutcome::Rejected { reason } => {
                    assert!(reason.contains("--callback-allow"), "{list}: {reason}")
                }
                other => panic!("{list} {url}: expected Rejected, got {other:?}"),
            }
            assert_eq!(report.attempt, 1);
            assert_eq!(h.sender.pending(), 0);
            assert!(h.sender.shutdown(IO_TIMEOUT).await.is_empty());
        }
        assert_eq!(
            receiver.connections(),
            0,
            "a disallowed target was contacted"
        );
    });
}

#[test]
fn allowed_targets_are_delivered() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(200)]);
        for (list, url) in [
            ("127.0.0.0/8", receiver.url("/")),
            // A name: resolved on the blocking pool.
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
            let h = start(&timers, config);
            h.sender.submit(delivery(&url, "job_ok", b"x")).unwrap();
            assert_eq!(
                h.next_report().await.outcome,
                DeliveryOutcome::Delivered { status: 200 },
                "{list} {url}"
            );
        }
        assert_eq!(receiver.requests().len(), 3);
    });
}

#[test]
fn https_receiver_with_test_ca() {
    on_both_drivers(|timers| async move {
        let ca = TestCa::new();
        let receiver = MockReceiver::start_tls(
            vec![Answer::Status(202)],
            ca.server_config(&["localhost", "127.0.0.1"]),
        );
        let mut config = config(FAST_RETRY);
        config.tls = tls_config(Some(&ca));
        let h = start(&timers, config);
        for url in [
            receiver.url("/secure"),
            format!("https://localhost:{}/secure", receiver.port()),
        ] {
            h.sender
                .submit(delivery(&url, "job_tls", b"secret body"))
                .unwrap();
            assert_eq!(
                h.next_report().await.outcome,
                DeliveryOutcome::Delivered { status: 202 },
                "{url}"
            );
        }
        let reqs = h.requests(&receiver, 2).await;
        for req in &reqs {
            assert_eq!(req.target, "/secure");
            assert_eq!(req.body, b"secret body");
            assert_signed(req, "job_tls");
        }
        // No SNI for an IP address; the host name for a name.
        assert_eq!(reqs[0].sni, None);
        assert_eq!(reqs[1].sni.as_deref(), Some("localhost"));
    });
}

#[test]
fn https_receiver_with_unknown_ca_is_a_tls_failure() {
    on_both_drivers(|timers| async move {
        let ca = TestCa::new();
        let receiver =
            MockReceiver::start_tls(vec![Answer::Status(200)], ca.server_config(&["127.0.0.1"]));
        // The sender trusts only the web PKI, not this CA.
        let h = start(&timers, config(SLOW_RETRY));
        h.sender
            .submit(delivery(&receiver.url("/"), "job_badtls", b"x"))
            .unwrap();
        match h.next_report().await.outcome {
            DeliveryOutcome::Retrying {
                failure: AttemptFailure::Tls(e),
                ..
            } => assert!(e.to_lowercase().contains("certificate"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(receiver.requests().is_empty());
        assert_eq!(h.sender.shutdown(IO_TIMEOUT).await.len(), 1);
    });
}

#[test]
fn shutdown_returns_undelivered_records() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(500)]);
        let h = start(&timers, config(SLOW_RETRY));
        let handle = h.sender.clone();
        handle
            .submit(delivery(&receiver.url("/"), "job_a", b"a"))
            .unwrap();
        // Wait for its first (failed) attempt; it now sleeps 30 s on the wheel.
        assert!(matches!(
            h.next_report().await.outcome,
            DeliveryOutcome::Retrying { .. }
        ));
        // A second one due far in the future never starts.
        let mut later = delivery(&receiver.url("/"), "job_b", b"b");
        later.next_attempt_at = Some(SystemTime::now() + Duration::from_secs(3600));
        handle.submit(later).unwrap();
        assert_eq!(handle.pending(), 2);
        h.sleep(Duration::from_millis(10)).await;
        assert_eq!(timers.pending(), 2, "both sleep on the wheel");

        let t0 = Instant::now();
        let records = h.sender.shutdown(IO_TIMEOUT).await;
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
        assert_eq!(handle.pending(), 0);
        // The tasks ended and cancelled their timers.
        h.sleep(Duration::from_millis(10)).await;
        assert_eq!(timers.pending(), 0, "a task still sleeps after shutdown");

        // After shutdown, submissions come back instead of being lost.
        let refused = handle
            .submit(delivery(&receiver.url("/"), "job_c", b"c"))
            .unwrap_err();
        assert_eq!(refused.0.job_id, "job_c");
        assert!(h.reports.try_recv().is_err(), "a report after shutdown");
    });
}

#[test]
fn shutdown_waits_for_attempts_under_way_within_the_grace() {
    on_both_drivers(|timers| async move {
        // The attempt times out (300 ms) inside the grace: its report is made, and the record,
        // due for a retry, is handed back instead of requeued.
        let receiver = MockReceiver::start(vec![Answer::Hang]);
        let mut config = config(FAST_RETRY);
        config.request_timeout = Duration::from_millis(300);
        let h = start(&timers, config);
        h.sender
            .submit(delivery(&receiver.url("/"), "job_grace", b"x"))
            .unwrap();
        h.requests(&receiver, 1).await;
        let t0 = Instant::now();
        let records = h.sender.shutdown(Duration::from_secs(3)).await;
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        let report = h.next_report().await;
        assert!(
            matches!(&report.outcome, DeliveryOutcome::Retrying { failure, .. }
                if *failure == AttemptFailure::Timeout("waiting for the response head")),
            "{report:?}"
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].delivery_attempts, 1);
        assert_eq!(records[0], report.record);
        h.sleep(FAST_RETRY.max_delay * 2).await;
        assert_eq!(receiver.requests().len(), 1, "retried after shutdown");
    });
}

#[test]
fn shutdown_hands_back_attempts_that_outlive_the_grace() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Hang]);
        let mut config = config(FAST_RETRY);
        config.request_timeout = Duration::from_secs(3);
        let h = start(&timers, config);
        h.sender
            .submit(delivery(&receiver.url("/"), "job_slow", b"x"))
            .unwrap();
        h.requests(&receiver, 1).await;
        let t0 = Instant::now();
        let records = h.sender.shutdown(Duration::from_millis(200)).await;
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].job_id, "job_slow");
        assert_eq!(records[0].delivery_attempts, 0);
        // The abandoned attempt never reports, and its timer is gone from the wheel.
        h.sleep(Duration::from_millis(50)).await;
        assert!(h.reports.try_recv().is_err());
        assert_eq!(timers.pending(), 0);
    });
}

#[test]
fn many_deliveries_run_side_by_side() {
    on_both_drivers(|timers| async move {
        let receiver = MockReceiver::start(vec![Answer::Status(200)]);
        let h = start(&timers, config(FAST_RETRY));
        const N: usize = 20;
        for i in 0..N {
            h.sender
                .submit(delivery(
                    &receiver.url(&format!("/n/{i}")),
                    &format!("job_{i}"),
                    b"x",
                ))
                .unwrap();
        }
        assert_eq!(h.sender.pending(), N);
        let mut ids = Vec::new();
        for _ in 0..N {
            ids.push(h.next_report().await.job_id);
        }
        ids.sort();
        let mut want: Vec<String> = (0..N).map(|i| format!("job_{i}")).collect();
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(receiver.requests().len(), N);
        assert_eq!(h.sender.pending(), 0);
    });
}
