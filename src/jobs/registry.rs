//! The registry of deferred jobs: every job whose client got a `202 Accepted`, looked up by id
//! from any worker (`GET /_sluice/jobs/<id>`), until its retention time runs out.
//!
//! This is the one piece of job state shared between cores. It is touched only off the direct
//! proxy path: when a job is deferred, when a deferred job changes state, and when someone asks
//! for it. A sharded `Mutex<HashMap>` is therefore enough: the locks are short (no I/O, no
//! await while held) and the direct path (answer before the deadline) never takes them.
//!
//! Job ids are 128 random bits from the operating system's CSPRNG, as 32 hex characters: the id
//! is a capability (whoever knows it can read the result), so it must not be guessable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// Shards of the registry (a power of two); enough that workers rarely meet on one lock.
const SHARDS: usize = 16;

/// A job id: 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    /// A fresh unguessable id. Falls back to a time-and-counter id only if the OS random source
    /// fails (it does not on Linux after boot).
    pub fn random() -> JobId {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            b[..8].copy_from_slice(&t.to_le_bytes());
            b[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        }
        JobId(b)
    }

    /// Parses 32 lowercase or uppercase hex characters.
    pub fn parse(s: &[u8]) -> Option<JobId> {
        if s.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0])?;
            let lo = hex_val(pair[1])?;
            b[i] = (hi << 4) | lo;
        }
        Some(JobId(b))
    }

    /// The 32-character lowercase hex form.
    pub fn to_hex(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = HEX[(byte >> 4) as usize];
            out[2 * i + 1] = HEX[(byte & 0xf) as usize];
        }
        out
    }

    pub fn as_string(&self) -> String {
        String::from_utf8_lossy(&self.to_hex()).into_owned()
    }

    fn shard(&self) -> usize {
        self.0[0] as usize % SHARDS
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for its first attempt (rate-limit slot) or its first answer.
    Pending,
    /// At least one attempt failed in a retriable way; another is scheduled.
    Retrying,
    /// Finished with a 2xx upstream answer.
    Succeeded,
    /// Finished otherwise: a non-2xx terminal answer, retries exhausted, or TTL passed.
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

/// A final answer kept for `/result` and the callback: a complete HTTP/1.1 response head
/// (status line and forwarded headers with `Content-Length`, ending in the blank line) and
/// the body.
#[derive(Clone, Debug)]
pub struct StoredResponse {
    pub status: u16,
    pub head: Bytes,
    pub body: Bytes,
    pub content_type: Option<String>,
    /// True when the answer came from the upstream (false: sluice's own error, e.g. a
    /// connection failure after the last attempt).
    pub from_upstream: bool,
}

impl StoredResponse {
    /// A sluice-generated JSON error kept as a job's answer (when no upstream answer could be
    /// had).
    pub fn sluice_error(status: u16, code: &str, message: &str) -> StoredResponse {
        let mut full = Vec::new();
        crate::error::write_error_response(&mut full, status, code, message, true);
        let split = full
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(full.len(), |p| p + 4);
        let body = Bytes::copy_from_slice(&full[split..]);
        full.truncate(split);
        StoredResponse {
            status,
            head: Bytes::from(full),
            body,
            content_type: Some("application/json".to_string()),
            from_upstream: false,
        }
    }
}

/// The callback of a job and how its delivery went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackState {
    None,
    Pending,
    Delivered,
    Failed(String),
}

/// Everything the status endpoint shows about one deferred job.
#[derive(Clone, Debug)]
pub struct JobState {
    pub status: JobStatus,
    pub attempts: u32,
    pub last_upstream_status: Option<u16>,
    pub next_attempt_at: Option<SystemTime>,
    pub created_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub result: Option<StoredResponse>,
    pub callback: CallbackState,
}

/// One deferred job as seen by the registry.
#[derive(Debug)]
pub struct JobRecord {
    pub id: JobId,
    state: Mutex<JobState>,
}

impl JobRecord {
    pub fn lock(&self) -> MutexGuard<'_, JobState> {
        // A poisoned lock only means another thread panicked while holding it; the state
        // itself is plain data and still consistent enough to report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All deferred jobs, by id.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<JobId, Arc<JobRecord>>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, id: &JobId) -> MutexGuard<'_, HashMap<JobId, Arc<JobRecord>>> {
        self.shards[id.shard()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a job under the id it was created with (a job's id exists from its first
    /// attempt: it is the `Idempotency-Key`). Replaces an entry with the same id, which only a
    /// restore can produce.
    pub fn insert_with_id(&self, id: JobId, state: JobState) -> Arc<JobRecord> {
        let record = Arc::new(JobRecord {
            id,
            state: Mutex::new(state),
        });
        self.shard(&id).insert(id, record.clone());
        record
    }

    pub fn get(&self, id: &JobId) -> Option<Arc<JobRecord>> {
        self.shard(id).get(id).cloned()
    }

    /// Removes jobs that finished `retention` or longer before `now` (`--job-retention`, read
    /// by the caller so that a reload applies). Returns how many were removed.
    pub fn sweep(&self, now: SystemTime, retention: Duration) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, record| {
                let state = record.lock();
                let expired = match state.finished_at {
                    Some(t) => now.duration_since(t).unwrap_or_default() >= retention,
                    None => false,
                };
                if expired {
                    removed += 1;
                }
                !expired
            });
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records a webhook delivery report on the job it belongs to (called on the worker thread that
/// made the delivery attempt, so it only takes short locks).
pub fn record_delivery(registry: &Registry, report: &crate::webhook::DeliveryReport) {
    use crate::webhook::DeliveryOutcome;
    let Some(id) = JobId::parse(report.job_id.as_bytes()) else {
        return;
    };
    let Some(record) = registry.get(&id) else {
        return;
    };
    let state = match &report.outcome {
        DeliveryOutcome::Delivered { .. } => CallbackState::Delivered,
        DeliveryOutcome::Retrying { .. } => CallbackState::Pending,
        DeliveryOutcome::GaveUp { reason, .. } | DeliveryOutcome::Rejected { reason } => {
            CallbackState::Failed(reason.clone())
        }
    };
    record.lock().callback = state;
}

/// Formats a time as RFC 3339 UTC with millisecond precision (`2026-11-25T17:00:00.000Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The status document of a job, as served at `/_sluice/jobs/<id>`.
pub fn status_json(record: &JobRecord) -> String {
    let id = record.id.as_string();
    let s = record.lock();
    let opt_time = |t: Option<SystemTime>| match t {
        Some(t) => format!("\"{}\"", rfc3339(t)),
        None => "null".to_string(),
    };
    let last = match s.last_upstream_status {
        Some(code) => code.to_string(),
        None => "null".to_string(),
    };
    let callback = match &s.callback {
        CallbackState::None => "null".to_string(),
        CallbackState::Pending => "\"pending\"".to_string(),
        CallbackState::Delivered => "\"delivered\"".to_string(),
        CallbackState::Failed(_) => "\"failed\"".to_string(),
    };
    format!(
        "{{\"id\":\"{id}\",\"status\":\"{}\",\"attempts\":{},\"last_upstream_status\":{last},\
         \"next_attempt_at\":{},\"created_at\":\"{}\",\"finished_at\":{},\"callback\":{callback},\
         \"status_url\":\"/_sluice/jobs/{id}\",\"result_url\":\"/_sluice/jobs/{id}/result\"}}\n",
        s.status.as_str(),
        s.attempts,
        opt_time(s.next_attempt_at),
        rfc3339(s.created_at),
        opt_time(s.finished_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> JobState {
        JobState {
            status: JobStatus::Pending,
            attempts: 0,
            last_upstream_status: None,
            next_attempt_at: None,
            created_at: SystemTime::UNIX_EPOCH,
            finished_at: None,
            result: None,
            callback: CallbackState::None,
        }
    }

    #[test]
    fn ids_round_trip_and_differ() {
        let a = JobId::random();
        let b = JobId::random();
        assert_ne!(a, b);
        assert_eq!(JobId::parse(&a.to_hex()), Some(a));
        assert_eq!(JobId::parse(b"zz"), None);
        assert_eq!(JobId::parse(&[b'g'; 32]), None);
    }

    #[test]
    fn retention_sweep_keeps_open_and_recent_jobs() {
        let reg = Registry::new();
        let open = reg.insert_with_id(JobId::random(), state());
        let done = reg.insert_with_id(JobId::random(), state());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        {
            let mut s = done.lock();
            s.status = JobStatus::Succeeded;
            s.finished_at = Some(t0);
        }
        assert_eq!(
            reg.sweep(t0 + Duration::from_secs(59), Duration::from_secs(60)),
            0
        );
        assert_eq!(
            reg.sweep(t0 + Duration::from_secs(60), Duration::from_secs(60)),
            1
        );
        assert!(reg.get(&open.id).is_some());
        assert!(reg.get(&done.id).is_none());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_614_265_330_123);
        assert_eq!(rfc3339(t), "2021-02-25T15:02:10.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn status_document() {
        let reg = Registry::new();
        let r = reg.insert_with_id(JobId::random(), state());
        r.lock().attempts = 2;
        r.lock().last_upstream_status = Some(502);
        let json = status_json(&r);
        let id = r.id.as_string();
        assert!(json.starts_with(&format!("{{\"id\":\"{id}\",\"status\":\"pending\",\"attempts\":2,\"last_upstream_status\":502,")), "{json}");
        assert!(json.contains("\"next_attempt_at\":null"));
    }
}
