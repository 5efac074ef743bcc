//! Durability end to end: jobs that got a 202 survive `kill -9` and a restart with the same
//! data dir, callbacks are not lost, the rate limit holds across a crash, attempts carry
//! `Idempotency-Key`, and a corrupt store stops start-up with an error naming the file.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::webhook::{Answer, MockReceiver};
use common::*;

fn enc(url: &str) -> String {
    url.replace(':', "%3A").replace('/', "%2F")
}

fn start_with(origin: &str, dir: &str, extra: &[&str]) -> Sluice {
    let mut args = vec![
        "-t",
        "tok",
        "--paths",
        "/crypto/sign",
        "-o",
        origin,
        "--data-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    Sluice::start(&args, false)
}

/// Every promised job is called back after `kill -9` in the middle of a burst and a restart.
#[test]
fn promised_jobs_survive_kill_9_and_every_callback_arrives() {
    let origin = MockOrigin::start(|req| {
        let mut r = Reply::ok(format!("signed {}", req.target));
        r.steps.insert(0, Step::Sleep(Duration::from_millis(120)));
        r
    });
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let dir = temp_data_dir("kill9");
    let dir_text = dir.to_string_lossy().into_owned();
    // 5 per second: a burst of 30 takes ~6 s, so the kill lands with most jobs still open.
    let flags = [
        "--rate-limit",
        "5/1s",
        "--rate-limit-margin-ms",
        "20",
        "--ingress-request-timeout-ms",
        "50",
        "--retry-max-attempts",
        "3",
    ];
    let sluice = start_with(&origin.url(), &dir_text, &flags);
    let mut ids = BTreeSet::new();
    for i in 0..30 {
        let cb = enc(&hooks.url(&format!("/cb/{i}")));
        let r = sluice
            .connect()
            .get(&format!("/crypto/sign?message=m{i}&callback={cb}"));
        assert_eq!(r.status, 202, "{}", r.head_text());
        ids.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 30);
    // Let a few finish, then kill -9 (Drop sends SIGKILL; our data dir is kept).
    hooks.wait_for(3, Duration::from_secs(10));
    let before_kill = origin.requests().len();
    drop(sluice);
    assert!(
        before_kill < 30,
        "the kill should land mid-burst ({before_kill} sent)"
    );

    let sluice = start_with(&origin.url(), &dir_text, &flags);
    let deadline = Instant::now() + Duration::from_secs(30);
    let called_back = loop {
        let got: BTreeSet<String> = hooks
            .requests()
            .iter()
            .filter_map(|r| r.header("sluice-job-id"))
            .collect();
        if got.len() >= ids.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(called_back, ids, "every promised job called back");
    for r in hooks.requests() {
        let id = r.header("sluice-job-id").unwrap();
        assert_eq!(
            r.header("sluice-status").as_deref(),
            Some("succeeded"),
            "{id}"
        );
        assert!(String::from_utf8_lossy(&r.body).starts_with("signed /crypto/sign?message=m"));
    }
    // A job's status survives too.
    let first = ids.iter().next().unwrap();
    let status = sluice.connect().get(&format!("/_sluice/jobs/{first}"));
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "succeeded");
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sliding window holds across a crash: sends before the kill still count after restart.
#[test]
fn rate_limit_holds_across_kill_9() {
    let origin = MockOrigin::start(|_| Reply::ok("ok"));
    let dir = temp_data_dir("rate");
    let dir_text = dir.to_string_lossy().into_owned();
    let flags = [
        "--rate-limit",
        "3/2s",
        "--rate-limit-margin-ms",
        "0",
        "--ingress-request-timeout-ms",
        "3000",
        "--dedup",
        "off",
    ];
    let sluice = start_with(&origin.url(), &dir_text, &flags);
    for i in 0..3 {
        let r = sluice.connect().get(&format!("/crypto/sign?message=a{i}"));
        assert_eq!(r.status, 200);
    }
    drop(sluice);
    let sluice = start_with(&origin.url(), &dir_text, &flags);
    for i in 0..3 {
        let r = sluice.connect().get(&format!("/crypto/sign?message=b{i}"));
        assert_eq!(r.status, 200, "{}", r.head_text());
    }
    let times = origin.request_times();
    assert_eq!(times.len(), 6);
    for (i, t) in times.iter().enumerate().skip(3) {
        let gap = t.duration_since(times[i - 3]);
        assert!(
            gap >= Duration::from_millis(1990),
            "4 sends within 2 s across the restart: {gap:?}"
        );
    }
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each attempt carries `Idempotency-Key: <job id>`, the same on every retry; a client's own
/// key is forwarded instead; `--idempotency-key off` sends none.
#[test]
fn attempts_carry_the_job_id_as_idempotency_key() {
    let origin = MockOrigin::start(|req| {
        if req.target.contains("flaky") && req.seq == 0 && req.conn == 0 {
            Reply::response(503, "Service Unavailable", &[], "busy")
        } else {
            Reply::ok("ok")
        }
    });
    let sluice = Sluice::start(
        &[
            "-t",
            "tok",
            "--paths",
            "/crypto/sign",
            "-o",
            &origin.url(),
            "--retry-base-ms",
            "10",
            "--retry-max-ms",
            "20",
            "--ingress-request-timeout-ms",
            "1",
            "--retry-max-attempts",
            "3",
        ],
        false,
    );
    let r = sluice.connect().get("/crypto/sign?message=flaky");
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let sent = origin.wait_requests(2);
    assert_eq!(sent[0].header("idempotency-key"), Some(id.clone()));
    assert_eq!(sent[1].header("idempotency-key"), Some(id));
    let own = sluice.connect().request(
        "GET /crypto/sign?message=own HTTP/1.1\r\nHost: x\r\nIdempotency-Key: mine\r\n\r\n",
    );
    assert!(matches!(own.status, 200 | 202), "{}", own.head_text());
    let sent = origin.wait_requests(3);
    assert_eq!(
        sent[2].header_all("idempotency-key"),
        vec!["mine".to_string()]
    );

    let origin = MockOrigin::start(|_| Reply::ok("ok"));
    let sluice = Sluice::start(
        &[
            "-t",
            "tok",
            "--paths",
            "/crypto/sign",
            "-o",
            &origin.url(),
            "--idempotency-key",
            "off",
        ],
        false,
    );
    assert_eq!(sluice.connect().get("/crypto/sign").status, 200);
    assert!(!origin.requests()[0].has_header("idempotency-key"));
}

/// A store that is not a store stops start-up, naming the file, and is left as it was.
#[test]
fn a_corrupt_store_stops_start_up_naming_the_file() {
    let dir = temp_data_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sluice.redb");
    let garbage = vec![0x5au8; 64 * 1024];
    std::fs::write(&file, &garbage).unwrap();
    let out = sluice_command(false)
        .args([
            "-t",
            "tok",
            "--paths",
            "/a",
            "-o",
            "http://127.0.0.1:9",
            "-p",
            "0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&file.to_string_lossy().into_owned()),
        "error names the file: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "left untouched");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finished jobs leave the store after `--job-retention`: after a restart they are gone too.
#[test]
fn finished_jobs_leave_the_store_after_their_retention() {
    let origin = MockOrigin::start(|_| {
        let mut r = Reply::ok("late");
        r.steps.insert(0, Step::Sleep(Duration::from_millis(100)));
        r
    });
    let dir = temp_data_dir("retention");
    let dir_text = dir.to_string_lossy().into_owned();
    let flags = [
        "--ingress-request-timeout-ms",
        "20",
        "--job-retention",
        "1s",
    ];
    let sluice = start_with(&origin.url(), &dir_text, &flags);
    let kept = sluice.connect().get("/crypto/sign?message=kept");
    assert_eq!(kept.status, 202);
    let id = kept.json()["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(400));
    // Finished, and still there across a restart while within its retention.
    drop(sluice);
    let long = [
        "--ingress-request-timeout-ms",
        "20",
        "--job-retention",
        "1h",
    ];
    let sluice = start_with(&origin.url(), &dir_text, &long);
    let status = sluice.connect().get(&format!("/_sluice/jobs/{id}"));
    assert_eq!(status.json()["status"], "succeeded");
    drop(sluice);
    // Past its retention: swept from the store, so a restart no longer knows it.
    let sluice = start_with(&origin.url(), &dir_text, &flags);
    std::thread::sleep(Duration::from_millis(2500));
    drop(sluice);
    let sluice = start_with(&origin.url(), &dir_text, &long);
    assert_eq!(
        sluice.connect().get(&format!("/_sluice/jobs/{id}")).status,
        404
    );
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job resumed after `kill -9` goes on under its endpoint's own retry policy (found by its
/// stored path, under the origin's path prefix), not the global one.
#[test]
fn a_resumed_job_keeps_its_endpoints_retry_policy() {
    let origin = MockOrigin::start(|_| Reply::response(502, "Bad Gateway", &[], b"down"));
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let dir = temp_data_dir("resume-policy");
    let dir_text = dir.to_string_lossy().into_owned();
    std::fs::create_dir_all(&dir).expect("data dir");
    let config = dir.join("sluice.toml");
    // Globally one attempt; /a tries five times, 0.8 s apart at most.
    std::fs::write(
        &config,
        format!(
            "token = \"tok\"\norigin = \"{}/base\"\nrate_limit = \"1000/1s\"\n\
             ingress_request_timeout_ms = 100\nretry_max_attempts = 1\n\
             [[endpoint]]\npath = \"/a\"\n\
             retry = {{ base_ms = 800, max_ms = 800, max_attempts = 5, on = \"502\" }}\n",
            origin.url()
        ),
    )
    .expect("write config");
    let config_text = config.to_string_lossy().into_owned();
    let args = ["--config", config_text.as_str(), "--data-dir", &dir_text];
    let sluice = Sluice::start(&args, false);
    let cb = enc(&hooks.url("/cb"));
    let r = sluice.connect().get(&format!("/a?callback={cb}"));
    assert_eq!(r.status, 202, "{}", r.head_text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    // Kill right after the first attempt (the next is at most 0.8 s away).
    origin.wait_requests(1);
    drop(sluice);
    let before = origin.requests().len();
    assert!(before < 5, "all attempts made before the kill ({before})");

    let sluice = Sluice::start(&args, false);
    let received = hooks.wait_for(1, Duration::from_secs(20));
    assert_eq!(received.len(), 1, "the resumed job is called back");
    assert_eq!(received[0].header("sluice-job-id"), Some(id.clone()));
    assert_eq!(
        received[0].header("sluice-status").as_deref(),
        Some("failed")
    );
    let attempts = origin.requests();
    assert_eq!(
        attempts.len(),
        5,
        "five attempts in all under /a's policy ({before} before the kill)"
    );
    for a in &attempts {
        assert!(
            a.request_line().starts_with("GET /base/a "),
            "{}",
            a.head_text()
        );
    }
    let status = sluice.connect().get(&format!("/_sluice/jobs/{id}"));
    assert_eq!(status.json()["attempts"], 5);
    drop(sluice);
    let _ = std::fs::remove_dir_all(&dir);
}
