//! The `--config` file with the real binary: per-endpoint methods (405), a start-up error for
//! an unknown key, and a SIGHUP reload that changes the allowlist and a rate limit (and an
//! invalid file on reload that leaves the running configuration in place).

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A fresh directory with `sluice.toml` holding `text`; returns the file's path.
fn write_config(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cfg-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let path = dir.join("sluice.toml");
    rewrite(&path, text);
    path
}

/// Replaces the file's content in one step (write then rename), as an editor or a deploy does.
fn rewrite(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

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
