//! A mock of the real upstream the original proxy fronted (see
//! `shared/reference/upstream-api.md`), scaled down in time for tests:
//! - `GET /crypto/sign?message=M`: 200 `text/plain` with a 344-character signature;
//! - `GET /crypto/verify?message=M&signature=S`: 200 when S is M's signature, else 400;
//! - auth: `Authorization: <key>` must be the expected key (else 401);
//! - a rolling-window limit per key shared by both endpoints: more than `limit` requests in any
//!   `window` answers 429 (and the 429 is counted, as on the real API);
//! - per-message degradation: a message chosen as "degraded" answers 502 for `degraded_for`
//!   after it is first seen, then signs;
//! - latency: `latency` before each answer.
//!
//! Every answer is recorded with its receipt time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::origin::{MockOrigin, Reply, Step};

#[derive(Clone, Debug)]
pub struct SigningConfig {
    pub key: String,
    pub limit: usize,
    pub window: Duration,
    pub degraded_for: Duration,
    pub latency: Duration,
    /// Which messages degrade.
    pub degraded: fn(&str) -> bool,
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub at: Instant,
    pub path: String,
    pub message: String,
    pub status: u16,
}

#[derive(Default)]
struct State {
    /// Receipt times of requests counted by the rolling window.
    window: Vec<Instant>,
    /// First time each message was seen.
    first_seen: Vec<(String, Instant)>,
    answers: Vec<Answer>,
}

pub struct SigningApi {
    pub origin: MockOrigin,
    state: Arc<Mutex<State>>,
}

/// The signature the mock gives a message: 344 URL-safe base64 characters derived from it.
pub fn signature_of(message: &str) -> String {
    let mut sig = String::with_capacity(344);
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in message.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    while sig.len() < 343 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sig.push(ALPHA[(x % 64) as usize] as char);
    }
    sig.push('=');
    sig
}

fn query_param(target: &str, name: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

impl SigningApi {
    pub fn start(cfg: SigningConfig) -> SigningApi {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let origin = MockOrigin::start(move |req| {
            let now = Instant::now();
            let path = req.target.split('?').next().unwrap_or("").to_string();
            let message = query_param(&req.target, "message").unwrap_or_default();
            let mut s = st.lock().unwrap();
            let (status, body): (u16, String) = if req.header("authorization").as_deref()
                != Some(cfg.key.as_str())
            {
                (401, "Error 401: Unauthorized\n".to_string())
            } else {
                s.window.retain(|t| now.duration_since(*t) < cfg.window);
                s.window.push(now);
                if s.window.len() > cfg.limit {
                    (429, "Error 429: Too Many Requests\n".to_string())
                } else if path == "/crypto/sign" {
                    let first = match s.first_seen.iter().find(|(m, _)| *m == message) {
                        Some((_, t)) => *t,
                        None => {
                            s.first_seen.push((message.clone(), now));
                            now
                        }
                    };
                    if (cfg.degraded)(&message) && now.duration_since(first) < cfg.degraded_for {
                        (
                            502,
                            "Error 502: Failed to sign message due to simulated service degradation.\n"
                                .to_string(),
                        )
                    } else {
                        (200, signature_of(&message))
                    }
                } else if path == "/crypto/verify" {
                    let sig = query_param(&req.target, "signature").unwrap_or_default();
                    if sig == signature_of(&message) {
                        (200, "OK".to_string())
                    } else {
                        (
                            400,
                            "Error 400: Invalid signature for message!\n".to_string(),
                        )
                    }
                } else {
                    (404, "Not found\n".to_string())
                }
            };
            s.answers.push(Answer {
                at: now,
                path,
                message,
                status,
            });
            drop(s);
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                401 => "Unauthorized",
                429 => "Too Many Requests",
                502 => "Bad Gateway",
                _ => "Not Found",
            };
            let mut reply =
                Reply::response(status, reason, &[("Content-Type", "text/plain")], body);
            reply.steps.insert(0, Step::Sleep(cfg.latency));
            reply
        });
        SigningApi { origin, state }
    }

    pub fn answers(&self) -> Vec<Answer> {
        self.state.lock().unwrap().answers.clone()
    }

    /// The most requests received inside any window of length `window` (checked at every
    /// receipt time).
    pub fn max_in_window(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.answers().iter().map(|a| a.at).collect();
        times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && t.duration_since(*start) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}
