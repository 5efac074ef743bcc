//! Process lifecycle end to end: SIGTERM during load answers every waiting client, closes idle
//! keep-alive connections, keeps every promised job (it resumes after a restart) and exits 0;
//! a second signal exits at once.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::webhook::{Answer, MockReceiver};
use common::*;

fn slow_origin(ms: u64) -> MockOrigin {
    MockOrigin::start(move |req| {
        let mut r = Reply::ok(format!("signed {}", req.target));
        r.steps.insert(0, Step::Sleep(Duration::from_millis(ms)));
        r
    })
}

fn args<'a>(origin: &'a str, dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "-t",
        "tok",
        "--paths",
        "/crypto/sign",
        "-o",
        origin,
        "--data-dir",
        dir,
        "--rate-limit",
        "1000/1s",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn sigterm_answers_waiting_clients_keeps_promises_and_exits_0() {
    let origin = slow_origin(400);
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let dir = temp_data_dir("sigterm");
    let dir_text = dir.to_string_lossy().into_owned();
    let url = origin.url();
    let mut sluice = Sluice::start(
        &args(&url, &dir_text, &["--ingress-request-timeout-ms", "2000"]),
        false,
    );
    // Deferred jobs first: a 202 each (short deadline given per request is not a flag, so
    // these use a second instance below); here: clients that wait for their answers.
    let waiting: Vec<_> = (0..6)
        .map(|i| {
            let addr = sluice.addr();
            std::thread::spawn(move || Client::connect(addr).get(&format!("/crypto/sign?m=w{i}")))
        })
        .collect();
    // An idle keep-alive connection: served once, then idle when the signal comes.
    let mut idle = sluice.connect();
    assert_eq!(
        idle.get("/_sluice/jobs/00000000000000000000000000000000")
            .status,
        404
    );
    std::thread::sleep(Duration::from_millis(150));
    sluice.signal(libc::SIGTERM);
    for (i, t) in waiting.into_iter().enumerate() {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "waiting client {i}: {}", r.head_text());
        assert_eq!(r.body_text(), format!("signed /crypto/sign?m=w{i}"));
    }
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        sluice.stderr()
    );
    // The idle connection was closed, not left hanging.
    let mut raw = idle.into_stream();
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
    assert!(
        TcpStream::connect(sluice.addr()).is_err(),
        "no longer listening"
    );
    assert!(sluice.stderr().contains("shut down cleanly"));

    // Promised jobs: deferred ones survive a graceful shutdown and finish after a restart.
    let mut sluice = Sluice::start(
        &args(
            &url,
            &dir_text,
            &[
                "--ingress-request-timeout-ms",
                "50",
                "--shutdown-grace",
                "1s",
            ],
        ),
        false,
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let cb = hooks
            .url(&format!("/p{i}"))
            .replace(':', "%3A")
            .replace('/', "%2F");
        let r = sluice
            .connect()
            .get(&format!("/crypto/sign?m=p{i}&callback={cb}"));
        assert_eq!(r.status, 202, "{}", r.head_text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    sluice.signal(libc::SIGTERM);
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        sluice.stderr()
    );
    let sluice = Sluice::start(&args(&url, &dir_text, &[]), false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut got: Vec<String> = hooks
            .requests()
            .iter()
            .filter_map(|r| r.header("sluice-job-id"))
            .collect();
        got.sort();
        got.dedup();
        let mut want = ids.clone();
        want.sort();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "callbacks {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_signal_exits_at_once() {
    let origin = slow_origin(5_000);
    let dir = temp_data_dir("second");
    let dir_text = dir.to_string_lossy().into_owned();
    let url = origin.url();
    let mut sluice = Sluice::start(
        &args(
            &url,
            &dir_text,
            &[
                "--ingress-request-timeout-ms",
                "10000",
                "--shutdown-grace",
                "60s",
            ],
        ),
        false,
    );
    let addr = sluice.addr();
    let _waiting = std::thread::spawn(move || Client::connect(addr).get("/crypto/sign?m=slow"));
    origin.wait_requests(1);
    sluice.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(sluice.try_exit_status().is_none(), "still draining");
    let started = Instant::now();
    sluice.signal(libc::SIGTERM);
    let status = sluice.wait_exit(Duration::from_secs(5));
    assert_eq!(status.map(|s| s.code()), Some(Some(1)));
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(sluice);
    // The store is still usable after the forced exit.
    let sluice = Sluice::start(&args(&url, &dir_text, &[]), false);
    assert_eq!(sluice.connect().get("/_sluice/jobs/x").status, 404);
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request parsed after the drain began gets `Connection: close`, and the connection ends.
#[test]
fn answers_during_the_drain_say_connection_close() {
    let origin = slow_origin(400);
    let dir = temp_data_dir("drainclose");
    let dir_text = dir.to_string_lossy().into_owned();
    let url = origin.url();
    let mut sluice = Sluice::start(&args(&url, &dir_text, &["--workers", "1"]), false);
    let mut client = sluice.connect();
    // Two pipelined requests: the first is in flight when the signal comes, the second is
    // parsed after it, during the drain.
    client.send(
        "GET /crypto/sign?m=first HTTP/1.1\r\nHost: x\r\n\r\nGET /crypto/sign?m=second HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    origin.wait_requests(1);
    sluice.signal(libc::SIGTERM);
    let first = client.response();
    assert_eq!(first.status, 200);
    assert_eq!(first.body_text(), "signed /crypto/sign?m=first");
    let second = client.response();
    assert_eq!(second.status, 200, "{}", second.head_text());
    assert_eq!(second.body_text(), "signed /crypto/sign?m=second");
    assert_eq!(second.header("connection").as_deref(), Some("close"));
    let mut raw = client.into_stream();
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        sluice.stderr()
    );
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}
