//! The store's rows and their binary encoding: sans-IO, no database and no threads here.
//!
//! Every row is plain owned data ([`JobRow`], [`ResultRow`], [`DeliveryRow`], [`SendsRow`]) so
//! that the executor maps its own types to and from them without this module knowing them.
//!
//! # Encoding
//! A row is `kind: u8, version: u8`, then its fields in declaration order:
//! - fixed-width integers little-endian (`u16`, `u32`, `u64`), a job id as its 16 bytes;
//! - byte strings and UTF-8 strings as a length (an unsigned LEB128 varint) and the bytes;
//! - lists as a varint count and the items;
//! - `Option<T>` and `bool` as a tag byte that must be 0 or 1 (then the value when 1);
//! - enums as their one-byte code ([`JobStatus`], [`Outcome`], [`CallbackState`]).
//!
//! Decoding is strict, so that a damaged row is reported rather than half-read: an unknown kind
//! or version, a tag or code out of range, a non-canonical or overflowing varint, a length past
//! the end, invalid UTF-8 and trailing bytes are all a [`DecodeError`]. Decoding never panics and
//! never allocates more than the input can back (counts are checked against the bytes left
//! before anything is reserved); all offset arithmetic is checked.
//!
//! A new field means a new version: [`ROW_VERSION`] goes up and the decoder keeps reading the
//! old version(s), so a store written by an older sluice still opens.

use std::fmt;

/// The version written into every row. Rows of any other version are refused.
pub const ROW_VERSION: u8 = 1;

/// The first byte of each kind of row: a row read from the wrong table is refused, not misread.
const KIND_JOB: u8 = 1;
const KIND_DELIVERY: u8 = 2;
const KIND_SENDS: u8 = 3;

/// The longest LEB128 encoding of a `u64`: 10 groups of 7 bits.
const MAX_VARINT_BYTES: usize = 10;

/// Where a job is in its life (the same four states as the job registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting for its first attempt (rate-limit slot) or its first answer.
    Pending = 0,
    /// At least one attempt failed in a retriable way; another is scheduled.
    Retrying = 1,
    /// Finished with a 2xx upstream answer.
    Succeeded = 2,
    /// Finished otherwise.
    Failed = 3,
}

impl JobStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<JobStatus> {
        match code {
            0 => Some(JobStatus::Pending),
            1 => Some(JobStatus::Retrying),
            2 => Some(JobStatus::Succeeded),
            3 => Some(JobStatus::Failed),
            _ => None,
        }
    }

    /// Succeeded or failed: nothing more will be attempted.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

/// How a finished job ended, as a delivery reports it (`Sluice-Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded = 0,
    Failed = 1,
}

impl Outcome {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Outcome> {
        match code {
            0 => Some(Outcome::Succeeded),
            1 => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// How a job's callbacks went, as the status endpoint shows it (mirrors the registry's
/// `CallbackState`), so that it still reads right after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallbackState {
    /// The job has no callback.
    None,
    /// Not yet delivered (or not yet due: the job is still open).
    Pending,
    /// Acknowledged by the receiver.
    Delivered,
    /// Given up, with the reason shown to the caller.
    Failed(String),
}

impl CallbackState {
    fn code(&self) -> u8 {
        match self {
            CallbackState::None => 0,
            CallbackState::Pending => 1,
            CallbackState::Delivered => 2,
            CallbackState::Failed(_) => 3,
        }
    }
}

/// A final answer kept for `/result` and the callback.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResultRow {
    pub status: u16,
    /// The complete HTTP/1.1 response head as it will be served (ends in the blank line).
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// True when the answer came from the upstream, false for sluice's own error.
    pub from_upstream: bool,
}

/// One job that got (or is about to get) a `202 Accepted`: everything needed to carry it on
/// after a restart, and to answer `/_sluice/jobs/<id>` for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobRow {
    pub id: [u8; 16],
    /// Wall clock, unix milliseconds (as are all `_ms` fields).
    pub created_at_ms: u64,
    pub method: String,
    /// The allowlisted path the request matched.
    pub endpoint: String,
    /// Opaque to the store: the executor's encoding of the request to forward (head and body).
    pub request: Vec<u8>,
    /// Callback URLs.
    pub callbacks: Vec<String>,
    /// Upstream attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due; `None`: as soon as a rate-limit slot allows.
    pub next_attempt_at_ms: Option<u64>,
    pub status: JobStatus,
    pub last_upstream_status: Option<u16>,
    pub finished_at_ms: Option<u64>,
    pub result: Option<ResultRow>,
    pub callback_state: CallbackState,
}

/// One webhook still to deliver, keyed by `(job_id, url)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryRow {
    pub job_id: [u8; 16],
    pub url: String,
    /// The final upstream body, sent verbatim.
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub outcome: Outcome,
    pub upstream_status: Option<u16>,
    /// Upstream attempts the job took (`Sluice-Attempts`).
    pub attempts: u32,
    /// Delivery attempts made so far.
    pub delivery_attempts: u32,
    /// When the delivery was created (the give-up cap counts from here).
    pub first_try_at_ms: u64,
    /// When the next delivery attempt is due; `None`: now.
    pub next_attempt_at_ms: Option<u64>,
}

/// One limiter's recent send history (the limiter name is the row's key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SendsRow {
    /// Send times, wall clock, unix nanoseconds.
    pub sends_ns: Vec<u64>,
}

/// Why bytes could not be decoded into a row. Offsets are from the start of the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The row ends before the field that starts (or the length that points past the end) at
    /// `at`.
    Truncated { at: usize },
    /// The row is complete at `at` but `extra` bytes follow.
    TrailingBytes { at: usize, extra: usize },
    /// The first byte names another kind of row.
    WrongKind { expected: &'static str, found: u8 },
    /// A version this sluice does not read.
    UnknownVersion { kind: &'static str, version: u8 },
    /// A tag, flag or enum code out of range.
    BadTag {
        field: &'static str,
        tag: u8,
        at: usize,
    },
    /// A varint longer than a `u64` allows, or not in its shortest form.
    BadVarint { at: usize },
    /// A string field that is not UTF-8.
    BadUtf8 { field: &'static str, at: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { at } => write!(f, "row truncated at byte {at}"),
            DecodeError::TrailingBytes { at, extra } => {
                write!(
                    f,
                    "{extra} unexpected bytes after the row's end at byte {at}"
                )
            }
            DecodeError::WrongKind { expected, found } => {
                write!(f, "expected a {expected} row, found kind {found}")
            }
            DecodeError::UnknownVersion { kind, version } => {
                write!(
                    f,
                    "unknown {kind} row version {version} (this sluice reads {ROW_VERSION})"
                )
            }
            DecodeError::BadTag { field, tag, at } => {
                write!(f, "invalid value {tag} for {field} at byte {at}")
            }
            DecodeError::BadVarint { at } => write!(f, "invalid varint at byte {at}"),
            DecodeError::BadUtf8 { field, at } => write!(f, "{field} at byte {at} is not UTF-8"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A row type the store keeps: its encoding and its strict decoding.
pub trait Record: Sized {
    /// The row kind's name, for errors.
    const NAME: &'static str;

    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes exactly one row: all of `buf`, nothing more, nothing less.
    fn decode(buf: &[u8]) -> Result<Self, DecodeError>;
}

impl Record for JobRow {
    const NAME: &'static str = "job";

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(KIND_JOB);
        out.push(ROW_VERSION);
        out.extend_from_slice(&self.id);
        put_u64(out, self.created_at_ms);
        put_bytes(out, self.method.as_bytes());
        put_bytes(out, self.endpoint.as_bytes());
        put_bytes(out, &self.request);
        put_varint(out, self.callbacks.len() as u64);
        for url in &self.callbacks {
            put_bytes(out, url.as_bytes());
        }
        put_u32(out, self.attempts);
        put_opt_u64(out, self.next_attempt_at_ms);
        out.push(self.status.code());
        put_opt_u16(out, self.last_upstream_status);
        put_opt_u64(out, self.finished_at_ms);
        match &self.result {
            None => out.push(0),
            Some(result) => {
                out.push(1);
                put_u16(out, result.status);
                put_bytes(out, &result.head);
                put_bytes(out, &result.body);
                put_opt_str(out, result.content_type.as_deref());
                out.push(u8::from(result.from_upstream));
            }
        }
        out.push(self.callback_state.code());
        if let CallbackState::Failed(reason) = &self.callback_state {
            put_bytes(out, reason.as_bytes());
        }
    }

    fn decode(buf: &[u8]) -> Result<JobRow, DecodeError> {
        let mut r = Reader::new(buf);
        r.header(KIND_JOB, Self::NAME)?;
        let id = r.id()?;
        let created_at_ms = r.u64()?;
        let method = r.string("method")?;
        let endpoint = r.string("endpoint")?;
        let request = r.bytes()?.to_vec();
        // Each callback takes at least its one-byte length.
        let count = r.count(1)?;
        let mut callbacks = Vec::with_capacity(count);
        for _ in 0..count {
            callbacks.push(r.string("callback")?);
        }
        let attempts = r.u32()?;
        let next_attempt_at_ms = r.opt_u64("next_attempt_at")?;
        let status = r.job_status()?;
        let last_upstream_status = r.opt_u16("last_upstream_status")?;
        let finished_at_ms = r.opt_u64("finished_at")?;
        let result = if r.flag("result")? {
            Some(ResultRow {
                status: r.u16()?,
                head: r.bytes()?.to_vec(),
                body: r.bytes()?.to_vec(),
                content_type: r.opt_string("content_type")?,
                from_upstream: r.flag("from_upstream")?,
            })
        } else {
            None
        };
        let callback_state = r.callback_state()?;
        r.finish()?;
        Ok(JobRow {
            id,
            created_at_ms,
            method,
            endpoint,
            request,
            callbacks,
            attempts,
            next_attempt_at_ms,
            status,
            last_upstream_status,
            finished_at_ms,
            result,
            callback_state,
        })
    }
}

impl Record for DeliveryRow {
    const NAME: &'static str = "delivery";

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(KIND_DELIVERY);
        out.push(ROW_VERSION);
        out.extend_from_slice(&self.job_id);
        put_bytes(out, self.url.as_bytes());
        put_bytes(out, &self.body);
        put_opt_str(out, self.content_type.as_deref());
        out.push(self.outcome.code());
        put_opt_u16(out, self.upstream_status);
        put_u32(out, self.attempts);
        put_u32(out, self.delivery_attempts);
        put_u64(out, self.first_try_at_ms);
        put_opt_u64(out, self.next_attempt_at_ms);
    }

    fn decode(buf: &[u8]) -> Result<DeliveryRow, DecodeError> {
        let mut r = Reader::new(buf);
        r.header(KIND_DELIVERY, Self::NAME)?;
        let row = DeliveryRow {
            job_id: r.id()?,
            url: r.string("url")?,
            body: r.bytes()?.to_vec(),
            content_type: r.opt_string("content_type")?,
            outcome: r.outcome()?,
            upstream_status: r.opt_u16("upstream_status")?,
            attempts: r.u32()?,
            delivery_attempts: r.u32()?,
            first_try_at_ms: r.u64()?,
            next_attempt_at_ms: r.opt_u64("next_attempt_at")?,
        };
        r.finish()?;
        Ok(row)
    }
}

impl Record for SendsRow {
    const NAME: &'static str = "send history";

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(KIND_SENDS);
        out.push(ROW_VERSION);
        put_varint(out, self.sends_ns.len() as u64);
        for &t in &self.sends_ns {
            put_u64(out, t);
        }
    }

    fn decode(buf: &[u8]) -> Result<SendsRow, DecodeError> {
        let mut r = Reader::new(buf);
        r.header(KIND_SENDS, Self::NAME)?;
        let count = r.count(8)?;
        let mut sends_ns = Vec::with_capacity(count);
        for _ in 0..count {
            sends_ns.push(r.u64()?);
        }
        r.finish()?;
        Ok(SendsRow { sends_ns })
    }
}

/// A bare `u64` (the store's metadata values): exactly 8 bytes, little-endian.
pub fn encode_u64(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

/// Decodes [`encode_u64`]'s output; any other length is an error.
pub fn decode_u64(buf: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(buf);
    let value = r.u64()?;
    r.finish()?;
    Ok(value)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_opt_u16(out: &mut Vec<u8>, v: Option<u16>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u16(out, v);
        }
    }
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
    }
}

fn put_opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_bytes(out, v.as_bytes());
        }
    }
}

/// A cursor over one row's bytes; every read checks what is left.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let end = at.checked_add(n).ok_or(DecodeError::Truncated { at })?;
        let slice = self.buf.get(at..end).ok_or(DecodeError::Truncated { at })?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let at = self.pos;
        self.take(N)?
            .try_into()
            .map_err(|_| DecodeError::Truncated { at })
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn id(&mut self) -> Result<[u8; 16], DecodeError> {
        self.array()
    }

    fn header(&mut self, kind: u8, name: &'static str) -> Result<(), DecodeError> {
        let found = self.u8()?;
        if found != kind {
            return Err(DecodeError::WrongKind {
                expected: name,
                found,
            });
        }
        let version = self.u8()?;
        if version != ROW_VERSION {
            return Err(DecodeError::UnknownVersion {
                kind: name,
                version,
            });
        }
        Ok(())
    }

    /// An unsigned LEB128 `u64` in its shortest form.
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let mut value: u64 = 0;
        for i in 0..MAX_VARINT_BYTES {
            let byte = self.u8()?;
            let group = u64::from(byte & 0x7f);
            let shift = 7 * i as u32;
            // The tenth group holds only the top bit of a u64.
            if i == MAX_VARINT_BYTES - 1 && group > 1 {
                return Err(DecodeError::BadVarint { at });
            }
            value |= group << shift;
            if byte & 0x80 == 0 {
                // A zero last group (other than a lone zero) is an overlong form.
                if byte == 0 && i > 0 {
                    return Err(DecodeError::BadVarint { at });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { at })
    }

    /// A length or count that must fit in what is left of the row, each item taking at least
    /// `min_item` bytes: checked before anything is allocated for it.
    fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated { at })?;
        let needed = n
            .checked_mul(min_item)
            .ok_or(DecodeError::Truncated { at })?;
        if needed > self.remaining() {
            return Err(DecodeError::Truncated { at });
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count(1)?;
        self.take(n)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8 { field, at })
    }

    /// A 0/1 byte: an `Option` tag or a `bool`.
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::BadTag { field, tag, at }),
        }
    }

    fn opt_u16(&mut self, field: &'static str) -> Result<Option<u16>, DecodeError> {
        Ok(if self.flag(field)? {
            Some(self.u16()?)
        } else {
            None
        })
    }

    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        Ok(if self.flag(field)? {
            Some(self.u64()?)
        } else {
            None
        })
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        Ok(if self.flag(field)? {
            Some(self.string(field)?)
        } else {
            None
        })
    }

    fn job_status(&mut self) -> Result<JobStatus, DecodeError> {
        let at = self.pos;
        let tag = self.u8()?;
        JobStatus::from_code(tag).ok_or(DecodeError::BadTag {
            field: "status",
            tag,
            at,
        })
    }

    fn outcome(&mut self) -> Result<Outcome, DecodeError> {
        let at = self.pos;
        let tag = self.u8()?;
        Outcome::from_code(tag).ok_or(DecodeError::BadTag {
            field: "outcome",
            tag,
            at,
        })
    }

    fn callback_state(&mut self) -> Result<CallbackState, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(CallbackState::None),
            1 => Ok(CallbackState::Pending),
            2 => Ok(CallbackState::Delivered),
            3 => Ok(CallbackState::Failed(self.string("callback failure")?)),
            tag => Err(DecodeError::BadTag {
                field: "callback_state",
                tag,
                at,
            }),
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                at: self.pos,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_row() -> ResultRow {
        ResultRow {
            status: 200,
            head: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".to_vec(),
            body: b"ok".to_vec(),
            content_type: Some("application/json".into()),
            from_upstream: true,
        }
    }

    fn job(seed: u8) -> JobRow {
        JobRow {
            id: [seed; 16],
            created_at_ms: 1_700_000_000_000 + u64::from(seed),
            method: "POST".into(),
            endpoint: "/v1/charge".into(),
            request: vec![seed; 300],
            callbacks: vec![
                "https://hooks.example/a".into(),
                "https://b.example/".into(),
            ],
            attempts: 3,
            next_attempt_at_ms: Some(1_700_000_005_000),
            status: JobStatus::Retrying,
            last_upstream_status: Some(503),
            finished_at_ms: None,
            result: None,
            callback_state: CallbackState::Pending,
        }
    }

    /// Rows that between them take every branch of the encoder: empty and large fields, every
    /// `None` and `Some`, every enum value, extreme integers.
    fn jobs() -> Vec<JobRow> {
        let mut all = vec![job(1)];
        all.push(JobRow {
            id: [0; 16],
            created_at_ms: 0,
            method: String::new(),
            endpoint: String::new(),
            request: Vec::new(),
            callbacks: Vec::new(),
            attempts: 0,
            next_attempt_at_ms: None,
            status: JobStatus::Pending,
            last_upstream_status: None,
            finished_at_ms: None,
            result: None,
            callback_state: CallbackState::None,
        });
        all.push(JobRow {
            id: [0xff; 16],
            created_at_ms: u64::MAX,
            method: "PÄTCH".into(),
            // Large fields: lengths that need multi-byte varints.
            request: (0..200_000u32).map(|i| i as u8).collect(),
            callbacks: vec![String::new(); 130],
            attempts: u32::MAX,
            next_attempt_at_ms: Some(u64::MAX),
            status: JobStatus::Succeeded,
            last_upstream_status: Some(u16::MAX),
            finished_at_ms: Some(u64::MAX),
            result: Some(result_row()),
            callback_state: CallbackState::Delivered,
            ..job(2)
        });
        all.push(JobRow {
            status: JobStatus::Failed,
            finished_at_ms: Some(5),
            result: Some(ResultRow {
                status: 0,
                head: Vec::new(),
                body: vec![7; 70_000],
                content_type: None,
                from_upstream: false,
            }),
            callback_state: CallbackState::Failed("gave up after 24h: 500".into()),
            ..job(3)
        });
        all.push(JobRow {
            callback_state: CallbackState::Failed(String::new()),
            ..job(4)
        });
        all
    }

    fn deliveries() -> Vec<DeliveryRow> {
        let base = DeliveryRow {
            job_id: [9; 16],
            url: "https://hooks.example/a".into(),
            body: b"{\"ok\":true}".to_vec(),
            content_type: Some("application/json".into()),
            outcome: Outcome::Succeeded,
            upstream_status: Some(201),
            attempts: 1,
            delivery_attempts: 4,
            first_try_at_ms: 1_700_000_000_000,
            next_attempt_at_ms: Some(1_700_000_060_000),
        };
        vec![
            base.clone(),
            DeliveryRow {
                job_id: [0; 16],
                url: String::new(),
                body: Vec::new(),
                content_type: None,
                outcome: Outcome::Failed,
                upstream_status: None,
                attempts: 0,
                delivery_attempts: 0,
                first_try_at_ms: 0,
                next_attempt_at_ms: None,
            },
            DeliveryRow {
                body: vec![0xab; 1 << 17],
                attempts: u32::MAX,
                delivery_attempts: u32::MAX,
                first_try_at_ms: u64::MAX,
                ..base
            },
        ]
    }

    fn sends() -> Vec<SendsRow> {
        vec![
            SendsRow { sends_ns: vec![] },
            SendsRow {
                sends_ns: vec![0, 1, u64::MAX],
            },
            SendsRow {
                sends_ns: (0..1000).map(|i| 1_700_000_000_000_000_000 + i).collect(),
            },
        ]
    }

    fn encoded<R: Record>(row: &R) -> Vec<u8> {
        let mut out = Vec::new();
        row.encode(&mut out);
        out
    }

    /// Roundtrip, every strict prefix fails, a trailing byte fails, and encoding appends.
    fn check_all<R: Record + PartialEq + fmt::Debug>(rows: &[R]) {
        for row in rows {
            let bytes = encoded(row);
            assert_eq!(&R::decode(&bytes).unwrap(), row);

            // Appends to what is already in the buffer.
            let mut out = vec![0xee; 3];
            row.encode(&mut out);
            assert_eq!(&out[3..], &bytes[..]);

            // Large rows: every prefix would be quadratic; check all near the start and the end
            // and a stride through the middle (every field boundary of the small rows is
            // covered by the small rows themselves).
            let cuts: Vec<usize> = if bytes.len() <= 4096 {
                (0..bytes.len()).collect()
            } else {
                (0..2048)
                    .chain((2048..bytes.len() - 2048).step_by(997))
                    .chain(bytes.len() - 2048..bytes.len())
                    .collect()
            };
            for cut in cuts {
                assert!(
                    R::decode(&bytes[..cut]).is_err(),
                    "{} prefix of {cut}/{} bytes decoded",
                    R::NAME,
                    bytes.len()
                );
            }

            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(
                R::decode(&long),
                Err(DecodeError::TrailingBytes {
                    at: bytes.len(),
                    extra: 1
                })
            );
        }
    }

    #[test]
    fn job_rows_roundtrip_and_reject_truncation_and_trailing_bytes() {
        check_all(&jobs());
    }

    #[test]
    fn delivery_rows_roundtrip_and_reject_truncation_and_trailing_bytes() {
        check_all(&deliveries());
    }

    #[test]
    fn send_rows_roundtrip_and_reject_truncation_and_trailing_bytes() {
        check_all(&sends());
    }

    #[test]
    fn u64_values_are_exactly_eight_bytes() {
        assert_eq!(decode_u64(&encode_u64(u64::MAX)), Ok(u64::MAX));
        assert_eq!(decode_u64(&encode_u64(42)), Ok(42));
        assert!(decode_u64(&[1; 7]).is_err());
        assert!(decode_u64(&[1; 9]).is_err());
        assert!(decode_u64(&[]).is_err());
    }

    #[test]
    fn wrong_kind_and_unknown_version_are_refused() {
        let bytes = encoded(&job(1));
        assert_eq!(
            DeliveryRow::decode(&bytes),
            Err(DecodeError::WrongKind {
                expected: "delivery",
                found: KIND_JOB
            })
        );
        let mut newer = bytes.clone();
        newer[1] = ROW_VERSION + 1;
        assert_eq!(
            JobRow::decode(&newer),
            Err(DecodeError::UnknownVersion {
                kind: "job",
                version: ROW_VERSION + 1
            })
        );
    }

    #[test]
    fn tags_out_of_range_are_refused() {
        // SendsRow is too simple to have tags; the delivery's content_type tag sits right after
        // the body: kind, version, id (16), url, body.
        let row = &deliveries()[1]; // empty url and body: one length byte each
        let mut bytes = encoded(row);
        let tag_at = 2 + 16 + 1 + 1;
        assert_eq!(bytes[tag_at], 0);
        bytes[tag_at] = 2;
        assert_eq!(
            DeliveryRow::decode(&bytes),
            Err(DecodeError::BadTag {
                field: "content_type",
                tag: 2,
                at: tag_at
            })
        );
        // The outcome code right after it.
        let mut bytes = encoded(row);
        bytes[tag_at + 1] = 2;
        assert!(matches!(
            DeliveryRow::decode(&bytes),
            Err(DecodeError::BadTag {
                field: "outcome",
                ..
            })
        ));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let row = DeliveryRow {
            url: "x".into(),
            ..deliveries()[1].clone()
        };
        let mut bytes = encoded(&row);
        let url_at = 2 + 16 + 1;
        assert_eq!(bytes[url_at], b'x');
        bytes[url_at] = 0xff;
        assert_eq!(
            DeliveryRow::decode(&bytes),
            Err(DecodeError::BadUtf8 {
                field: "url",
                at: url_at - 1
            })
        );
    }

    #[test]
    fn varints_must_be_canonical_and_fit_u64() {
        fn read(bytes: &[u8]) -> Result<u64, DecodeError> {
            let mut r = Reader::new(bytes);
            let v = r.varint()?;
            r.finish()?;
            Ok(v)
        }
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(read(&out), Ok(v), "{v}");
        }
        // Overlong forms of 0 and 1.
        assert_eq!(read(&[0x80, 0x00]), Err(DecodeError::BadVarint { at: 0 }));
        assert_eq!(
            read(&[0x81, 0x80, 0x00]),
            Err(DecodeError::BadVarint { at: 0 })
        );
        // 2^64: the tenth group may only be 0 or 1.
        let mut too_big = vec![0x80; 9];
        too_big.push(0x02);
        assert_eq!(read(&too_big), Err(DecodeError::BadVarint { at: 0 }));
        // Eleven bytes.
        assert_eq!(read(&[0xff; 11]), Err(DecodeError::BadVarint { at: 0 }));
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // A send history that claims u64::MAX entries in a few bytes.
        let mut bytes = vec![KIND_SENDS, ROW_VERSION];
        put_varint(&mut bytes, u64::MAX);
        assert_eq!(
            SendsRow::decode(&bytes),
            Err(DecodeError::Truncated { at: 2 })
        );
        // A count that fits in the bytes only if items were smaller than they are.
        let mut bytes = vec![KIND_SENDS, ROW_VERSION];
        put_varint(&mut bytes, 2);
        bytes.extend_from_slice(&[0; 15]);
        assert_eq!(
            SendsRow::decode(&bytes),
            Err(DecodeError::Truncated { at: 2 })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic generator (xorshift): mutations of valid rows and pure noise.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = vec![
            encoded(&job(1)),
            encoded(&jobs()[3]),
            encoded(&deliveries()[0]),
            encoded(&sends()[1]),
        ];
        for _ in 0..20_000 {
            let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = next() as u8;
            }
            let _ = JobRow::decode(&bytes);
            let _ = DeliveryRow::decode(&bytes);
            let _ = SendsRow::decode(&bytes);
            let noise: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let _ = JobRow::decode(&noise);
            let _ = DeliveryRow::decode(&noise);
            let _ = SendsRow::decode(&noise);
        }
    }
}
