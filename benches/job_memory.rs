//! Memory per open job: starts the real `sluice` binary against an origin that accepts
//! connections and never answers, opens N deferred jobs (each client gets its 202 and leaves),
//! and reports the growth of sluice's resident memory per open job. Every job then holds what a
//! real stuck job holds: its upstream connection and read buffer, its request bytes, its
//! suspended driver, its registry record.
//!
//! Run: `cargo bench --bench job_memory` (prints one table; no criterion statistics, since
//! this measures bytes, not time). `JOBS=5000` changes the count.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo test --benches` runs bench binaries with no arguments too; keep that quick.
    let jobs: usize = std::env::var("JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            2000
        } else {
            50
        });

    // An origin that accepts and never answers (connections kept open).
    let origin = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let origin_addr = origin.local_addr().expect("origin addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in origin.incoming().flatten() {
            held.push(conn);
        }
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "-t",
            "tok",
            "--paths",
            "/crypto/sign",
            "-o",
            &format!("http://{origin_addr}"),
            "--listen",
            "127.0.0.1",
            "-p",
            "0",
            "--workers",
            "1",
            "--rate-limit",
            "1000000/1s",
            "--ingress-request-timeout-ms",
            "20",
            "--upstream-response-timeout-ms",
            "600000",
            "--max-inflight",
            "1000000",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let addr = line
        .split(" listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("start-up line")
        .to_string();
    std::thread::spawn(move || for _ in lines {});

    let send = |i: usize| {
        let mut c = TcpStream::connect(&addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            c,
            "GET /crypto/sign?message=m{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut resp = Vec::new();
        let _ = c.read_to_end(&mut resp);
        assert!(
            resp.starts_with(b"HTTP/1.1 202"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    };
    // Warm up pools and allocator arenas, then measure.
    for i in 0..50 {
        send(1_000_000 + i);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(pid);
    for i in 0..jobs {
        send(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let per_job = (after.saturating_sub(before) as f64 * 1024.0) / jobs as f64;
    println!("open deferred jobs: {jobs}");
    println!("sluice RSS before: {before} KiB, after: {after} KiB");
    println!("memory per open job: {:.1} KiB", per_job / 1024.0);
}
