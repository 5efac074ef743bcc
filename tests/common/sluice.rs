//! Starting the real `sluice` binary and reading its start-up line.
//!
//! `Sluice::start` adds `--listen 127.0.0.1 -p 0 --workers 2` unless the test gave them, waits
//! (bounded) for the start-up line on stderr (so the `server` target must log at `info`),
//! parses the bound address and driver (and the admin address, with `--admin-listen`) out of
//! it and keeps draining stderr on a thread so the child never blocks on a full pipe. The child
//! is killed on drop, and its stderr is printed when the test is failing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::client::Client;

/// How long sluice may take to print its start-up line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A `Command` for the binary with a clean environment for the variables sluice reads.
pub fn sluice_command(legacy: bool) -> Command {
    let mut cmd = Command::new(sluice_bin());
    cmd.env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_WEBHOOK_SECRET")
        .env_remove("RUST_LOG")
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER");
    if legacy {
        cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn has_flag(args: &[&str], names: &[&str]) -> bool {
    args.iter().any(|a| {
        names
            .iter()
            .any(|n| a == n || (n.starts_with("--") && a.starts_with(&format!("{n}="))))
    })
}

fn flag_value<'a>(args: &[&'a str], names: &[&str]) -> Option<&'a str> {
    for (i, a) in args.iter().enumerate() {
        for n in names {
            if a == n {
                return args.get(i + 1).copied();
            }
            if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                return Some(v);
            }
        }
    }
    None
}

/// The parsed start-up line, a log line (time, level, target) whose message is
/// `sluice 0.1.0 listening on 127.0.0.1:40123 workers=2 driver=io_uring origin=http://127.0.0.1:5000 ...`
/// (`parse` tolerates extra trailing `key=value` fields; `tests/cli.rs` and `tests/logs.rs`
/// assert the exact line).
#[derive(Clone, Debug)]
pub struct StartupLine {
    /// The message, from `sluice VERSION listening on` to the end.
    pub line: String,
    /// The whole line as written (with the log line's time, level and target in front).
    pub raw: String,
    pub addr: SocketAddr,
    pub workers: usize,
    pub driver: String,
    pub origin: String,
    /// The `admin=ADDR` field, printed when `--admin-listen` is on.
    pub admin: Option<SocketAddr>,
}

impl StartupLine {
    pub fn parse(line: &str) -> Option<StartupLine> {
        let prefix = format!("sluice {} listening on ", env!("CARGO_PKG_VERSION"));
        let at = line.find(&prefix)?;
        let message = &line[at..];
        let rest = &message[prefix.len()..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // Later `key=value` fields are tolerated here; `tests/cli.rs` pins the exact line.
        let [addr, workers, driver, origin, extra @ ..] = fields.as_slice() else {
            return None;
        };
        if !extra.iter().all(|f| f.contains('=')) {
            return None;
        }
        let admin = match extra.iter().find_map(|f| f.strip_prefix("admin=")) {
            Some(a) => Some(a.parse().ok()?),
            None => None,
        };
        Some(StartupLine {
            line: message.to_string(),
            raw: line.to_string(),
            addr: addr.parse().ok()?,
            workers: workers.strip_prefix("workers=")?.parse().ok()?,
            driver: driver.strip_prefix("driver=")?.to_string(),
            origin: origin.strip_prefix("origin=")?.to_string(),
            admin,
        })
    }
}

pub struct Sluice {
    child: Child,
    startup: StartupLine,
    stderr: Arc<Mutex<String>>,
    /// The data dir this harness made up (removed on drop); tests that restart sluice pass
    /// their own `--data-dir`.
    own_data_dir: Option<std::path::PathBuf>,
}

/// A fresh, unique directory path under the system temp dir (not created).
pub fn temp_data_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "sluice-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Sluice {
    /// Starts sluice with `args` (plus the defaults above); `legacy` forces the epoll driver.
    pub fn start(args: &[&str], legacy: bool) -> Sluice {
        Self::start_env(args, legacy, &[])
    }

    /// Like `start`, with extra environment variables (e.g. `SLUICE_TOKEN`).
    pub fn start_env(args: &[&str], legacy: bool, env: &[(&str, &str)]) -> Sluice {
        let mut all: Vec<&str> = args.to_vec();
        if !has_flag(args, &["--listen"]) {
            all.extend(["--listen", "127.0.0.1"]);
        }
        if !has_flag(args, &["-p", "--port"]) {
            all.extend(["-p", "0"]);
        }
        if !has_flag(args, &["--workers"]) {
            all.extend(["--workers", "2"]);
        }
        // Every test gets a data dir of its own (parallel tests must not share a store).
        let mut own_data_dir = None;
        let data_dir_text;
        if !has_flag(args, &["--data-dir", "--no-persist"]) {
            let dir = temp_data_dir("run");
            data_dir_text = dir.to_string_lossy().into_owned();
            own_data_dir = Some(dir);
            all.extend(["--data-dir", data_dir_text.as_str()]);
        }
        let workers: usize = flag_value(&all, &["--workers"])
            .and_then(|w| w.parse().ok())
            .unwrap_or(2);

        let mut cmd = sluice_command(legacy);
        cmd.args(&all)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", sluice_bin()));

        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let pipe = child.stderr.take().expect("piped stderr");
        let collected = stderr.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw).into_owned();
                        collected
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_str(&line);
                        // The receiver is gone once start-up is over; keep draining anyway.
                        let _ = lines_tx.send(line.trim_end_matches(['\r', '\n']).to_string());
                    }
                }
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let startup = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(parsed) = StartupLine::parse(&line) {
                        break parsed;
                    }
                    assert!(
                        !line.contains(" listening on "),
                        "start-up line does not have the expected format \
                         `sluice VERSION listening on ADDR workers=N driver=D origin=URL`: {line:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "sluice {all:?} printed no start-up line within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                        stderr.lock().unwrap_or_else(|p| p.into_inner())
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "sluice {all:?} exited ({status:?}) before its start-up line; stderr:\n{}",
                        stderr.lock().unwrap_or_else(|p| p.into_inner())
                    );
                }
            }
        };
        let sluice = Sluice {
            own_data_dir,
            child,
            startup,
            stderr,
        };
        let s = &sluice.startup;
        assert_eq!(
            s.addr.ip().to_string(),
            "127.0.0.1",
            "start-up line: {}",
            s.line
        );
        assert_ne!(
            s.addr.port(),
            0,
            "start-up line must show the bound port: {}",
            s.line
        );
        assert_eq!(s.workers, workers, "start-up line: {}", s.line);
        assert!(
            s.driver == "io_uring" || s.driver == "epoll",
            "unknown driver in start-up line: {}",
            s.line
        );
        assert!(
            s.admin.is_some() || !has_flag(&all, &["--admin-listen"]),
            "start-up line must show admin=ADDR with --admin-listen: {}",
            s.line
        );
        if legacy {
            assert_eq!(
                s.driver, "epoll",
                "MONOIO_FORCE_LEGACY_DRIVER=1 must select epoll: {}",
                s.line
            );
        }
        sluice
    }

    pub fn addr(&self) -> SocketAddr {
        self.startup.addr
    }

    /// `io_uring` or `epoll`.
    pub fn driver(&self) -> &str {
        &self.startup.driver
    }

    pub fn startup(&self) -> &StartupLine {
        &self.startup
    }

    /// Everything sluice wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new raw client connection to sluice.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// The admin listener's address; panics unless sluice was started with `--admin-listen`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.startup
            .admin
            .unwrap_or_else(|| panic!("no admin=ADDR in the start-up line: {}", self.startup.line))
    }

    /// A new raw client connection to the admin listener.
    pub fn admin(&self) -> Client {
        Client::connect(self.admin_addr())
    }

    /// `GET /metrics` on the admin listener: asserts a 200 with the exposition content type,
    /// checks the body strictly (`prom::parse`) and against `prometheus-parse`
    /// (`prom::cross_check`), and returns the scrape.
    pub fn scrape(&self) -> super::prom::Scrape {
        let resp = self.admin().get("/metrics");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = String::from_utf8(resp.body).expect("/metrics is UTF-8");
        let scrape = super::prom::parse(&text)
            .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{text}"));
        if let Err(e) = super::prom::cross_check(&text, &scrape) {
            panic!("/metrics read differently by prometheus-parse: {e}\n{text}");
        }
        scrape
    }

    /// The exit status if the child has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the sluice process.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if thread::panicking() {
            eprintln!(
                "--- sluice ({}) stderr ---\n{}--- end of sluice stderr ---",
                self.startup.line,
                self.stderr()
            );
        }
    }
}
