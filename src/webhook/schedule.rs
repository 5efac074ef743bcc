//! The retry schedule of webhook deliveries: exponential backoff with full jitter, a floor, a
//! ceiling, a total give-up cap, and `Retry-After`.
//!
//! Pure functions of their inputs: time arrives as durations (`elapsed` since the delivery was
//! created) and randomness through the [`Jitter`] trait, so every rule is unit-tested without
//! sleeping. The per-core senders feed them real time and a [`SplitMix64`] seeded from the OS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default ceiling of the first retry's jitter window: the first retry comes within ~5 s.
pub const DEFAULT_FIRST_DELAY: Duration = Duration::from_secs(5);

/// Default floor of every retry delay: full jitter may draw ~0, and hammering a receiver that
/// just failed helps nobody.
pub const DEFAULT_MIN_DELAY: Duration = Duration::from_secs(1);

/// Default ceiling of any one delay (before `Retry-After`): 10 minutes, so a receiver that comes
/// back is noticed within minutes even late in the schedule.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10 * 60);

/// Default total time after which a delivery is given up: 24 hours (the Standard Webhooks and
/// Svix practice of retrying over hours to days).
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest `Retry-After` delta-seconds value parsed (digits beyond this are an overflow); far
/// beyond any give-up cap, so anything this large simply means "give up".
const MAX_RETRY_AFTER_DIGITS: usize = 12;

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
const IMF_FIXDATE_LEN: usize = 29;

const SECS_PER_DAY: i64 = 86_400;

/// When deliveries are retried. All durations validated by [`RetryPolicy::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the jitter window of the first retry; doubles with every further attempt.
    pub first_delay: Duration,
    /// Floor of every delay.
    pub min_delay: Duration,
    /// Ceiling of the jitter window (reached after a few doublings).
    pub max_delay: Duration,
    /// No attempt starts later than this after the delivery was created (`first_try_at`).
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: DEFAULT_FIRST_DELAY,
            min_delay: DEFAULT_MIN_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }
}

impl RetryPolicy {
    /// Checks `min_delay <= first_delay <= max_delay` and a non-zero `first_delay` and
    /// `give_up_after`.
    pub fn validate(&self) -> Result<(), String> {
        if self.first_delay.is_zero() {
            return Err("webhook retry: the first delay must be more than 0".into());
        }
        if self.give_up_after.is_zero() {
            return Err("webhook retry: the give-up time must be more than 0".into());
        }
        if self.min_delay > self.first_delay || self.first_delay > self.max_delay {
            return Err(format!(
                "webhook retry: delays must satisfy min <= first <= max (got {:?} <= {:?} <= {:?})",
                self.min_delay, self.first_delay, self.max_delay
            ));
        }
        Ok(())
    }
}

/// A source of uniformly distributed 64-bit values.
pub trait Jitter {
    fn next_u64(&mut self) -> u64;
}

/// SplitMix64: tiny, fast, good enough for spreading retries (not for secrets).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// Seeded from the OS (ring's `SystemRandom`), falling back to the clock if that fails: the
    /// only purpose is that two sluice processes do not retry in lockstep.
    pub fn from_entropy() -> SplitMix64 {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 8];
        if ring::rand::SystemRandom::new().fill(&mut seed).is_err() {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            seed = nanos.to_le_bytes();
        }
        SplitMix64::new(u64::from_le_bytes(seed))
    }
}

impl Jitter for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The delay before the next attempt, or `None` to give up.
///
/// `attempt` is the number of attempts made so far (1 after the first failure); `elapsed` is the
/// time since the delivery was created; `retry_after` what the receiver asked for, if anything.
///
/// Full jitter: a uniform draw from `[0, min(max_delay, first_delay * 2^(attempt-1))]`, raised to
/// `min_delay`, then to `retry_after` when that is larger (a receiver that names a time gets at
/// least that). The next attempt never starts after `give_up_after`: a delay that would cross it
/// is cut to end exactly there (one last try at the cap), except when `retry_after` alone crosses
/// it, which gives up (the receiver asked us not to come back before then). Once `elapsed` has
/// reached the cap, `None`.
pub fn next_delay(
    policy: &RetryPolicy,
    attempt: u32,
    elapsed: Duration,
    retry_after: Option<Duration>,
    rng: &mut impl Jitter,
) -> Option<Duration> {
    let remaining = policy
        .give_up_after
        .checked_sub(elapsed)
        .filter(|r| !r.is_zero())?;
    // first_delay * 2^(attempt-1), saturating at max_delay (and at 2^31 doublings' overflow).
    let doublings = attempt.saturating_sub(1);
    let window = 1u32
        .checked_shl(doublings)
        .and_then(|factor| policy.first_delay.checked_mul(factor))
        .map_or(policy.max_delay, |d| d.min(policy.max_delay));
    let window_nanos = window.as_nanos().min(u128::from(u64::MAX)) as u64;
    // Multiply-shift maps a u64 uniformly onto [0, window] (0 -> 0, u64::MAX -> window).
    let draw = ((u128::from(rng.next_u64()) * (u128::from(window_nanos) + 1)) >> 64) as u64;
    let mut delay = Duration::from_nanos(draw).max(policy.min_delay);
    if let Some(asked) = retry_after {
        if asked > remaining {
            return None;
        }
        delay = delay.max(asked);
    }
    Some(delay.min(remaining))
}

/// Parses a `Retry-After` value (RFC 9110 section 10.2.3): delta-seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`; the two obsolete date formats are not accepted), as a delay
/// from `now`. A date in the past is zero. Anything else is `None` (ignored).
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = value.trim_ascii();
    if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
        if value.len() > MAX_RETRY_AFTER_DIGITS {
            return Some(Duration::MAX);
        }
        let secs: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, strictly.
fn parse_imf_fixdate(v: &[u8]) -> Option<SystemTime> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if v.len() != IMF_FIXDATE_LEN
        || !DAYS.contains(&&v[0..3])
        || &v[3..5] != b", "
        || v[7] != b' '
        || v[11] != b' '
        || v[16] != b' '
        || v[19] != b':'
        || v[22] != b':'
        || &v[25..] != b" GMT"
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &v[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| *m == &v[8..11])? as i64 + 1;
    let year = num(12..16)?;
    let (hour, minute, second) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * SECS_PER_DAY + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always returns the same value: 0 draws the window's bottom, u64::MAX its top.
    struct Fixed(u64);

    impl Jitter for Fixed {
        fn next_u64(&mut self) -> u64 {
            self.0
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
    }

    #[test]
    fn validation_names_the_rule() {
        let p = RetryPolicy {
            first_delay: S(20),
            ..RetryPolicy::default()
        };
        assert_eq!(p.validate(), Ok(()));
        let bad = RetryPolicy {
            min_delay: S(6),
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("min <= first <= max"));
        let bad = RetryPolicy {
            first_delay: S(601),
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("min <= first <= max"));
        let bad = RetryPolicy {
            first_delay: Duration::ZERO,
            min_delay: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("first delay"));
        let bad = RetryPolicy {
            give_up_after: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("give-up"));
    }

    #[test]
    fn window_doubles_up_to_the_ceiling() {
        let p = RetryPolicy::default();
        let top = |attempt| next_delay(&p, attempt, S(0), None, &mut Fixed(u64::MAX)).unwrap();
        assert_eq!(top(1), S(5));
        assert_eq!(top(2), S(10));
        assert_eq!(top(3), S(20));
        assert_eq!(top(7), S(320));
        assert_eq!(top(8), S(600));
        assert_eq!(top(9), S(600));
        assert_eq!(top(40), S(600));
        assert_eq!(top(u32::MAX), S(600));
        // attempt 0 (nothing tried yet) behaves like the first retry.
        assert_eq!(top(0), S(5));
    }

    #[test]
    fn draws_stay_in_bounds() {
        let p = RetryPolicy::default();
        // The bottom of the window is lifted to the floor.
        assert_eq!(next_delay(&p, 5, S(0), None, &mut Fixed(0)), Some(S(1)));
        // The middle of the window.
        let mid = next_delay(&p, 1, S(0), None, &mut Fixed(u64::MAX / 2)).unwrap();
        assert!(
            mid > Duration::from_millis(2400) && mid < Duration::from_millis(2600),
            "{mid:?}"
        );
        let mut rng = SplitMix64::new(42);
        for attempt in 1..30 {
            let window = S(5).saturating_mul(1 << (attempt - 1).min(20)).min(S(600));
            for _ in 0..200 {
                let d = next_delay(&p, attempt, S(0), None, &mut rng).unwrap();
                assert!(d >= S(1) && d <= window, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads() {
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(7);
        let draws: Vec<Duration> = (0..1000)
            .map(|_| next_delay(&p, 9, S(0), None, &mut rng).unwrap())
            .collect();
        let low = draws.iter().filter(|d| **d < S(300)).count();
        assert!((400..600).contains(&low), "{low} of 1000 in the lower half");
    }

    #[test]
    fn retry_after_is_honoured_when_larger() {
        let p = RetryPolicy::default();
        let top = || Fixed(u64::MAX);
        assert_eq!(
            next_delay(&p, 1, S(0), Some(S(60)), &mut top()),
            Some(S(60))
        );
        assert_eq!(next_delay(&p, 1, S(0), Some(S(2)), &mut top()), Some(S(5)));
        // Larger than max_delay is still honoured.
        assert_eq!(
            next_delay(&p, 9, S(0), Some(S(3600)), &mut top()),
            Some(S(3600))
        );
        assert_eq!(
            next_delay(&p, 1, S(0), Some(Duration::ZERO), &mut top()),
            Some(S(5))
        );
    }

    #[test]
    fn total_cap() {
        let p = RetryPolicy::default();
        let day = S(24 * 3600);
        let top = || Fixed(u64::MAX);
        // Well inside the window: untouched.
        assert_eq!(
            next_delay(&p, 20, day - S(3600), None, &mut top()),
            Some(S(600))
        );
        // A delay crossing the cap is cut to end exactly at it: one last attempt there.
        assert_eq!(
            next_delay(&p, 20, day - S(100), None, &mut top()),
            Some(S(100))
        );
        assert_eq!(
            next_delay(&p, 20, day - Duration::from_millis(1), None, &mut Fixed(0)),
            Some(Duration::from_millis(1))
        );
        // At or past the cap: give up.
        assert_eq!(next_delay(&p, 20, day, None, &mut top()), None);
        assert_eq!(next_delay(&p, 20, day + S(1), None, &mut top()), None);
        // A Retry-After beyond the cap gives up; one that fits is kept.
        assert_eq!(
            next_delay(&p, 2, day - S(100), Some(S(101)), &mut top()),
            None
        );
        assert_eq!(
            next_delay(&p, 2, day - S(100), Some(S(100)), &mut top()),
            Some(S(100))
        );
        assert_eq!(
            next_delay(&p, 2, S(0), Some(Duration::MAX), &mut top()),
            None
        );
    }

    #[test]
    fn total_attempts_over_a_day() {
        // Simulate a receiver that never recovers, with the default policy: the schedule ends
        // at 24 h, with the last attempt exactly at the cap.
        let p = RetryPolicy::default();
        let mut rng = SplitMix64::new(1);
        let mut elapsed = Duration::ZERO;
        let mut attempt = 1;
        while let Some(d) = next_delay(&p, attempt, elapsed, None, &mut rng) {
            elapsed += d;
            attempt += 1;
            assert!(attempt < 1000);
        }
        assert_eq!(elapsed, p.give_up_after);
        // About 24 h / 5 min (mean delay once the window is full), a few hundred attempts.
        assert!((150..600).contains(&attempt), "{attempt} attempts");
    }

    #[test]
    fn retry_after_values() {
        let now = UNIX_EPOCH + S(784111777); // Sun, 06 Nov 1994 08:49:37 GMT
        let parse = |v: &str| parse_retry_after(v.as_bytes(), now);
        assert_eq!(parse("120"), Some(S(120)));
        assert_eq!(parse(" 0 "), Some(S(0)));
        assert_eq!(parse("007"), Some(S(7)));
        assert_eq!(parse("9999999999999"), Some(Duration::MAX));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(S(0)));
        assert_eq!(parse("Sun, 06 Nov 1994 08:51:37 GMT"), Some(S(120)));
        assert_eq!(parse("Mon, 07 Nov 1994 08:49:37 GMT"), Some(S(86400)));
        assert_eq!(parse("Sat, 05 Nov 1994 08:49:37 GMT"), Some(S(0)));
        assert_eq!(parse("Thu, 01 Jan 1970 00:00:00 GMT"), Some(S(0)));
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            // (a trailing space is trimmed, so the last one is valid)
            if bad.ends_with("GMT ") {
                assert_eq!(parse(bad), Some(S(0)));
            } else {
                assert_eq!(parse(bad), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(2021, 2, 26), 18684); // 1614265330 is 2021-02-25T15:02:10Z
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
