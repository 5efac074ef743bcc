//! The delivery record, the per-attempt results and the reports handed to the owner of the
//! sender; plus [`settle`], the pure step that turns one attempt's result into the record's next
//! state and a report.
//!
//! [`Delivery`] is plain data (strings, numbers, bytes, `SystemTime`s) so that a later issue can
//! persist it as is: everything needed to resume a delivery after a restart is in it, and every
//! [`DeliveryReport`] carries the record as it stands after the attempt.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::schedule::{next_delay, Jitter, RetryPolicy};
use super::url::CallbackUrl;

/// How the job ended, sent as `Sluice-Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    Succeeded,
    Failed,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Failed => "failed",
        }
    }
}

/// One webhook to deliver, and how far its delivery got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The job id: `Sluice-Job-Id` and the stable `webhook-id` (the receiver's dedup key).
    pub job_id: String,
    pub url: CallbackUrl,
    /// The final upstream body, sent verbatim.
    pub body: Bytes,
    /// The upstream's `Content-Type`; `None` sends no `Content-Type` at all.
    pub content_type: Option<String>,
    pub status: JobOutcome,
    /// The final upstream status (`None`: no upstream answer, e.g. connection failures).
    pub upstream_status: Option<u16>,
    /// Upstream attempts the job took (`Sluice-Attempts`).
    pub attempts: u32,
    /// Delivery attempts made so far.
    pub delivery_attempts: u32,
    /// When the delivery was created; the give-up cap counts from here (wall clock, so that it
    /// survives a restart).
    pub first_try_at: SystemTime,
    /// When the next attempt is due; `None` means as soon as possible.
    pub next_attempt_at: Option<SystemTime>,
}

impl Delivery {
    /// A new delivery, due now, created at `now`. (One argument per field of the record: a
    /// parameter struct would only repeat it.)
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: String,
        url: CallbackUrl,
        body: Bytes,
        content_type: Option<String>,
        status: JobOutcome,
        upstream_status: Option<u16>,
        attempts: u32,
        now: SystemTime,
    ) -> Delivery {
        Delivery {
            job_id,
            url,
            body,
            content_type,
            status,
            upstream_status,
            attempts,
            delivery_attempts: 0,
            first_try_at: now,
            next_attempt_at: None,
        }
    }
}

/// Why one attempt did not deliver. All of these are retried (unless the schedule is over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The receiver answered, but not 2xx (redirects included: they are not followed).
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The host name did not resolve (or resolved to nothing).
    Resolve(String),
    /// No TCP connection to any address.
    Connect(String),
    /// TLS handshake or certificate failure.
    Tls(String),
    /// The request timeout expired; the phase it expired in.
    Timeout(&'static str),
    /// The connection failed while sending or receiving.
    Io(String),
    /// The receiver's response head was not valid HTTP/1.x.
    BadResponse(&'static str),
    /// A bug in sluice (a panic during the attempt); retried so the record is not lost.
    Internal(&'static str),
}

impl AttemptFailure {
    /// The receiver's status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptFailure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptFailure::Status {
                status,
                retry_after: None,
            } => write!(f, "receiver answered {status}"),
            AttemptFailure::Status {
                status,
                retry_after: Some(after),
            } => write!(
                f,
                "receiver answered {status} with Retry-After {}s",
                after.as_secs()
            ),
            AttemptFailure::Resolve(e) => write!(f, "cannot resolve callback host: {e}"),
            AttemptFailure::Connect(e) => write!(f, "cannot connect to callback: {e}"),
            AttemptFailure::Tls(e) => write!(f, "TLS with callback failed: {e}"),
            AttemptFailure::Timeout(phase) => write!(f, "callback timed out {phase}"),
            AttemptFailure::Io(e) => write!(f, "callback connection failed: {e}"),
            AttemptFailure::BadResponse(e) => write!(f, "callback sent an invalid response: {e}"),
            AttemptFailure::Internal(e) => write!(f, "internal error during delivery: {e}"),
        }
    }
}

/// The result of one attempt, before the schedule is consulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// `410 Gone`: the receiver asks us to stop for good.
    Gone,
    /// Try again later (if the schedule allows).
    Failed(AttemptFailure),
    /// Never deliverable: a target outside `--callback-allow`, or a record whose fields cannot
    /// be sent (e.g. a job id with a CR in it). Nothing was sent.
    Rejected(String),
}

/// What happened to a delivery after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx. Done.
    Delivered { status: u16 },
    /// Failed; the next attempt is due in `next_in` (the record is back in the queue).
    Retrying {
        failure: AttemptFailure,
        next_in: Duration,
    },
    /// Stopped for good after `410 Gone` or at the end of the schedule. `last` is the failure
    /// of the final attempt.
    GaveUp {
        reason: String,
        last: AttemptFailure,
    },
    /// Not allowed or not sendable; nothing was sent. Permanent.
    Rejected { reason: String },
}

impl DeliveryOutcome {
    /// Whether the delivery is finished (the record can be forgotten).
    pub fn is_final(&self) -> bool {
        !matches!(self, DeliveryOutcome::Retrying { .. })
    }
}

/// Handed to the report hook after every attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReport {
    pub job_id: String,
    pub url: CallbackUrl,
    /// Which attempt this was (1 for the first).
    pub attempt: u32,
    pub outcome: DeliveryOutcome,
    /// The record after this attempt (`delivery_attempts == attempt`, `next_attempt_at` set
    /// when retrying): what a persistence layer stores while the outcome is `Retrying`.
    pub record: Delivery,
}

/// Applies one attempt's result to the record: counts the attempt, asks the schedule for the
/// next delay on failure, and words the report. `now` is the wall-clock time the attempt ended.
pub fn settle(
    mut record: Delivery,
    result: AttemptResult,
    policy: &RetryPolicy,
    now: SystemTime,
    rng: &mut impl Jitter,
) -> DeliveryReport {
    record.delivery_attempts = record.delivery_attempts.saturating_add(1);
    record.next_attempt_at = None;
    let attempt = record.delivery_attempts;
    let outcome = match result {
        AttemptResult::Delivered { status } => DeliveryOutcome::Delivered { status },
        AttemptResult::Gone => DeliveryOutcome::GaveUp {
            reason: "receiver answered 410 Gone: not retried".to_string(),
            last: AttemptFailure::Status {
                status: 410,
                retry_after: None,
            },
        },
        AttemptResult::Rejected(reason) => DeliveryOutcome::Rejected { reason },
        AttemptResult::Failed(failure) => {
            let elapsed = now
                .duration_since(record.first_try_at)
                .unwrap_or(Duration::ZERO);
            let retry_after = match &failure {
                AttemptFailure::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            match next_delay(policy, attempt, elapsed, retry_after, rng) {
                Some(next_in) => {
                    record.next_attempt_at = now.checked_add(next_in);
                    DeliveryOutcome::Retrying { failure, next_in }
                }
                None => DeliveryOutcome::GaveUp {
                    reason: format!(
                        "no 2xx after {attempt} attempt{} over {}s (give-up cap {}s); last: {failure}",
                        if attempt == 1 { "" } else { "s" },
                        elapsed.as_secs(),
                        policy.give_up_after.as_secs()
                    ),
                    last: failure,
                },
            }
        }
    };
    DeliveryReport {
        job_id: record.job_id.clone(),
        url: record.url.clone(),
        attempt,
        outcome,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::schedule::SplitMix64;
    use std::time::UNIX_EPOCH;

    fn record(at: SystemTime) -> Delivery {
        Delivery::new(
            "job_1".into(),
            CallbackUrl::parse_str("http://h.example/cb").unwrap(),
            Bytes::from_static(b"sig"),
            Some("text/plain".into()),
            JobOutcome::Succeeded,
            Some(200),
            3,
            at,
        )
    }

    #[test]
    fn delivered_and_rejected_are_final() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(1);
        let r = settle(
            record(t0),
            AttemptResult::Delivered { status: 204 },
            &p,
            t0,
            &mut rng,
        );
        assert_eq!(r.outcome, DeliveryOutcome::Delivered { status: 204 });
        assert_eq!((r.attempt, r.record.delivery_attempts), (1, 1));
        assert!(r.outcome.is_final());
        let r = settle(
            record(t0),
            AttemptResult::Rejected("no".into()),
            &p,
            t0,
            &mut rng,
        );
        assert_eq!(
            r.outcome,
            DeliveryOutcome::Rejected {
                reason: "no".into()
            }
        );
        let r = settle(record(t0), AttemptResult::Gone, &p, t0, &mut rng);
        assert!(
            matches!(&r.outcome, DeliveryOutcome::GaveUp { reason, last }
            if reason.contains("410") && last.status() == Some(410))
        );
    }

    #[test]
    fn failures_are_scheduled_until_the_cap() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(1);
        let fail = || {
            AttemptResult::Failed(AttemptFailure::Status {
                status: 503,
                retry_after: Some(Duration::from_secs(30)),
            })
        };
        let d = record(t0);
        let now = t0 + Duration::from_secs(60);
        let r = settle(d, fail(), &p, now, &mut rng);
        let DeliveryOutcome::Retrying { next_in, failure } = &r.outcome else {
            panic!("{r:?}")
        };
        // The first retry's window is at most 5 s: Retry-After is larger and wins.
        assert_eq!(*next_in, Duration::from_secs(30));
        assert_eq!(failure.status(), Some(503));
        assert_eq!(r.attempt, 1);
        assert_eq!(r.record.next_attempt_at, Some(now + *next_in));
        assert!(!r.outcome.is_final());

        let late = t0 + p.give_up_after;
        let r = settle(
            r.record,
            AttemptResult::Failed(AttemptFailure::Timeout("waiting for the response head")),
            &p,
            late,
            &mut rng,
        );
        let DeliveryOutcome::GaveUp { reason, last } = &r.outcome else {
            panic!("{r:?}")
        };
        assert_eq!(reason, "no 2xx after 2 attempts over 86400s (give-up cap 86400s); last: callback timed out waiting for the response head");
        assert_eq!(
            last,
            &AttemptFailure::Timeout("waiting for the response head")
        );
        assert_eq!(r.record.next_attempt_at, None);
    }

    #[test]
    fn failure_texts() {
        assert_eq!(
            AttemptFailure::Status {
                status: 500,
                retry_after: None
            }
            .to_string(),
            "receiver answered 500"
        );
        assert_eq!(
            AttemptFailure::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(7))
            }
            .to_string(),
            "receiver answered 429 with Retry-After 7s"
        );
        assert_eq!(
            AttemptFailure::Connect("refused".into()).to_string(),
            "cannot connect to callback: refused"
        );
    }
}
