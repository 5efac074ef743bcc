//! The `--config` file with the real binary: per-endpoint methods (405), a start-up error for
//! an unknown key, and a SIGHUP reload that changes the allowlist and a rate limit (and an
//! invalid file on reload that leaves the running configuration in place).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::webhook::{Answer, MockReceiver};
use common::*;

fn header(origin: &MockOrigin) -> String {
    format!(
        "token = \"{TOKEN}\"\norigin = \"{}\"\nrate_limit_margin_ms = 0\nretry_max_attempts = 1\n\
         ingress_request_timeout_ms = 20000\n",
        origin.url()
    )
}

/// Polls `f` every 50 ms until it returns true or `limit` passed.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn sighup_reload_changes_allowlist_and_rate_limit() {
    let origin = MockOrigin::echo();
    let base = header(&origin);
    let path = write_config(
        "reload",
        &format!("{base}[[endpoint]]\npath = \"/a\"\nrate_limit = \"2/1s\"\n"),
    );
    let path_text = path.display().to_string();
    let sluice = Sluice::start(&["--config", &path_text], false);
    let mut client = sluice.connect();
    assert_eq!(client.get("/a").status, 200);
    assert_json_error(&client.get("/b"), 404, "not_found");

    // Allow /b too, and halve /a's limit.
    rewrite(
        &path,
        &format!(
            "{base}[[endpoint]]\npath = \"/a\"\nrate_limit = \"1/1s\"\n\
             [[endpoint]]\npath = \"/b\"\n"
        ),
    );
    sluice.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || sluice
            .connect()
            .get("/b")
            .status
            == 200),
        "/b never forwarded after the reload; stderr:\n{}",
        sluice.stderr()
    );
    assert!(
        sluice.stderr().contains("config reloaded"),
        "{}",
        sluice.stderr()
    );

    // The new limit, measured at the origin: /a's sends are at least a period apart (the old
    // 2/1s would let two through at once).
    let before = origin.requests().len();
    for _ in 0..3 {
        assert_eq!(client.get("/a").status, 200);
    }
    let times: Vec<Instant> = origin
        .requests()
        .iter()
        .zip(origin.request_times())
        .skip(before)
        .filter(|(r, _)| r.request_line().starts_with("GET /a "))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(times.len(), 3, "{times:?}");
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(950),
            "sends to /a only {gap:?} apart under 1/1s"
        );
    }

    // An invalid file: reported, and the running configuration stays.
    rewrite(
        &path,
        &format!("{base}[[endpoint]]\npath = \"/a\"\nrate_limit = \"fast\"\n"),
    );
    sluice.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || sluice
            .stderr()
            .contains("config reload failed")),
        "no reload error reported; stderr:\n{}",
        sluice.stderr()
    );
    let stderr = sluice.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("config reload failed"))
        .unwrap_or_default();
    assert!(line.contains("endpoint[1].rate_limit"), "{line}");
    assert_eq!(sluice.connect().get("/b").status, 200);
}

#[test]
fn endpoint_methods_answer_405_with_allow() {
    let origin = MockOrigin::echo();
    let path = write_config(
        "methods",
        &format!(
            "{}[[endpoint]]\npath = \"/a\"\nmethods = [\"POST\", \"PUT\"]\nrate_limit = \"1000/1s\"\n",
            header(&origin)
        ),
    );
    let path_text = path.display().to_string();
    let sluice = Sluice::start(&["--config", &path_text], false);
    let mut client = sluice.connect();
    let resp = client.get("/a");
    assert_json_error(&resp, 405, "method_not_allowed");
    assert_eq!(resp.header("allow").as_deref(), Some("POST, PUT"));
    assert!(origin.requests().is_empty());
    let resp = client.request(with_body("POST", "/a", b"hi"));
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn unknown_key_stops_start_up_naming_it() {
    let path = write_config(
        "unknown",
        "token = \"t\"\norigin = \"http://127.0.0.1:9\"\npaths = \"/a\"\nrate_limt = \"1/1s\"\n",
    );
    let out = sluice_command(true)
        .args(["--config", &path.display().to_string(), "--no-persist"])
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("sluice: error: ") && lines[0].contains("rate_limt"),
        "{stderr}"
    );
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Whether `signature` (a `webhook-signature` value) is the Standard Webhooks signature of
/// `id.timestamp.body` under [`SECRET`].
fn signed_with_secret(id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let expected = engine.encode(ring::hmac::sign(&key, &message).as_ref());
    signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[test]
fn sighup_reload_applies_every_reloadable_setting_and_open_jobs_keep_theirs() {
    // The first request for `/a?n=flaky` fails with 502 and `Retry-After: 2` (the retry comes
    // after the reload); everything else is echoed.
    let flaky_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = flaky_seen.clone();
    let origin = MockOrigin::start(move |req| {
        if req.request_line().contains("n=flaky")
            && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
        {
            return Reply::response(502, "Bad Gateway", &[("Retry-After", "2")], b"bad gateway");
        }
        echo_reply(req)
    });
    let hooks = MockReceiver::start(vec![Answer::Status(200)]);
    let config = |token: &str, extra: &str| {
        format!(
            "token = \"{token}\"\norigin = \"{}\"\nrate_limit = \"1000/1s\"\n\
             ingress_request_timeout_ms = 300\nretry_max_attempts = 3\n\
             retry_base_ms = 1500\nretry_max_ms = 1500\n{extra}\n\
             [[endpoint]]\npath = \"/a\"\n",
            origin.url()
        )
    };
    let path = write_config(
        "reload-all",
        &config(
            "tok-old",
            "max_request_body_bytes = 64\nidempotency_key = \"on\"",
        ),
    );
    let path_text = path.display().to_string();
    let sluice = Sluice::start(&["--config", &path_text], false);
    let body = [b'x'; 100];
    assert_json_error(
        &sluice.connect().request(with_body("POST", "/a", &body)),
        413,
        "payload_too_large",
    );

    // A job that fails its first attempt and retries 2 s later: deferred (202) before the
    // reload, retried after it.
    let hook = hooks.url("/hook");
    let encoded: String = hook
        .bytes()
        .map(|b| match b {
            b':' => "%3A".to_string(),
            b'/' => "%2F".to_string(),
            _ => (b as char).to_string(),
        })
        .collect();
    let resp = sluice
        .connect()
        .get(&format!("/a?n=flaky&callback={encoded}"));
    assert_eq!(resp.status, 202, "{}", resp.head_text());
    let first = origin.wait_requests(1);
    assert_eq!(first[0].header("authorization").as_deref(), Some("tok-old"));
    let job_key = first[0]
        .header("idempotency-key")
        .expect("attempts carry Idempotency-Key");

    // New token, a bigger body limit, no Idempotency-Key, signed callbacks.
    rewrite(
        &path,
        &config(
            "tok-new",
            &format!(
                "max_request_body_bytes = 1024\nidempotency_key = \"off\"\n\
                 webhook_secret = \"{SECRET}\""
            ),
        ),
    );
    sluice.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || sluice
            .stderr()
            .contains("config reloaded")),
        "no reload; stderr:\n{}",
        sluice.stderr()
    );
    let resp = sluice.connect().request(with_body("POST", "/a", &body));
    assert_eq!(resp.status, 200, "{}", resp.head_text());
    let sent = origin
        .requests()
        .into_iter()
        .find(|r| r.request_line().starts_with("POST /a "))
        .expect("the POST reached the origin");
    assert_eq!(sent.header("authorization").as_deref(), Some("tok-new"));
    assert_eq!(sent.header("idempotency-key"), None, "{}", sent.head_text());

    // The open job kept its own settings: its retry carries the old token and its key.
    let retried = eventually(Duration::from_secs(10), || {
        origin
            .requests()
            .iter()
            .filter(|r| r.request_line().contains("n=flaky"))
            .count()
            == 2
    });
    assert!(retried, "the deferred job was not retried");
    let retry = origin
        .requests()
        .into_iter()
        .filter(|r| r.request_line().contains("n=flaky"))
        .nth(1)
        .expect("second attempt");
    assert_eq!(retry.header("authorization").as_deref(), Some("tok-old"));
    assert_eq!(retry.header("idempotency-key"), Some(job_key));

    // Its callback goes out with the webhook settings of delivery time: signed.
    let received = hooks.wait_for(1, Duration::from_secs(10));
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.header("sluice-status").as_deref(), Some("succeeded"));
    let signature = r.expect_header("webhook-signature");
    assert!(
        signed_with_secret(
            &r.expect_header("webhook-id"),
            &r.expect_header("webhook-timestamp"),
            &r.body,
            &signature
        ),
        "callback not signed with the reloaded secret: {signature}"
    );
}
