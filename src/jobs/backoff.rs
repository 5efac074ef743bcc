//! Retry policy of the job executor: which failures are retried ([`RetryOn`]), how long to wait
//! before the next attempt (exponential backoff with full jitter, raised to the origin's
//! `Retry-After`), and when to give up (attempt cap, job TTL).
//!
//! Sans-IO: time is passed in (`u64` nanoseconds since the caller's epoch, Unix seconds for HTTP
//! dates) and randomness comes from a seeded [`Rng`], so every rule is tested without sleeping.
//! This module does not schedule anything; the executor feeds the delays to the per-core timers.

use std::fmt;
use std::time::Duration;

/// Default base of the exponential backoff: the first retry waits up to 1 s.
pub const DEFAULT_BASE: Duration = Duration::from_millis(1_000);
/// Default cap of one backoff delay (before `Retry-After`): 60 s, so a long outage is polled at
/// least once a minute.
pub const DEFAULT_MAX: Duration = Duration::from_millis(60_000);
/// Default cap on attempts (first one included): 100, the cap of the service this gateway
/// replaces. With the default base and cap, 100 attempts take about 47 minutes on average (full
/// jitter averages half the 60 s cap), so the cap, not the TTL, usually ends a job that keeps
/// failing; the TTL bounds jobs that the origin keeps deferring with long `Retry-After`s.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 100;
/// Default job lifetime: no attempt starts 24 h or more after the job was created.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Lowest HTTP status code a [`RetryOn`] can name.
const MIN_STATUS: u16 = 100;
/// Highest HTTP status code a [`RetryOn`] can name.
const MAX_STATUS: u16 = 599;
/// Words in the status bitset: one bit per code in `MIN_STATUS..=MAX_STATUS` (500 bits).
const STATUS_WORDS: usize = (MAX_STATUS - MIN_STATUS) as usize / 64 + 1;
/// The `--retry-on` default.
pub const DEFAULT_RETRY_ON: &str = "connect-error,timeout,429,502,503,504";

/// When to retry, with the jitter and Retry-After rules of [`RetryPolicy::delay`].
///
/// Expected (and checked by the config layer): `base <= max` and `max_attempts >= 1`. Other
/// values do not panic: the delay is `min(max, base * 2^n)` whatever they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff ceiling of the first retry; doubles with each failed attempt.
    pub base: Duration,
    /// Largest backoff ceiling (a longer `Retry-After` is still honoured, up to `ttl`).
    pub max: Duration,
    /// Attempts allowed, the first one included.
    pub max_attempts: u32,
    /// No attempt starts at or after `created + ttl`.
    pub ttl: Duration,
    /// Failures that may be retried.
    pub retry_on: RetryOn,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: DEFAULT_BASE,
            max: DEFAULT_MAX,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            ttl: DEFAULT_TTL,
            retry_on: RetryOn::default(),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` after `attempt` failed attempts (`attempt >= 1`;
    /// 0 is treated as 1). Full jitter: uniform in `[0, min(max, base * 2^(attempt-1))]`
    /// (saturating, so huge attempt numbers just give the cap). When the origin sent
    /// `Retry-After` and asked for longer, its value wins, capped at `ttl`: a job cannot be
    /// asked to wait past its whole lifetime (and [`RetryPolicy::may_retry`] then refuses the
    /// attempt anyway).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut Rng) -> Duration {
        let doublings = attempt.max(1) - 1;
        let ceiling = 1u64
            .checked_shl(doublings)
            .and_then(|factor| nanos(self.base).checked_mul(factor))
            .unwrap_or(u64::MAX)
            .min(nanos(self.max));
        let jitter = match ceiling.checked_add(1) {
            Some(bound) => rng.below(bound),
            None => rng.next_u64(),
        };
        let delay = Duration::from_nanos(jitter);
        match retry_after {
            Some(asked) => delay.max(asked.min(self.ttl)),
            None => delay,
        }
    }

    /// Whether another attempt may be made after `attempts` attempts of a job created at
    /// `created`, the next one starting at `next_attempt_at` (both nanoseconds since the same
    /// epoch): fewer than `max_attempts` so far, and the next one starts before `created + ttl`.
    pub fn may_retry(&self, attempts: u32, created: u64, next_attempt_at: u64) -> bool {
        attempts < self.max_attempts && next_attempt_at < created.saturating_add(nanos(self.ttl))
    }
}

/// A duration in nanoseconds, saturating after 584 years.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The failures worth retrying: a set of response statuses plus connect errors and timeouts.
/// Parsed from `--retry-on` (see [`RetryOn::parse`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// Bit `code - MIN_STATUS` set when `code` is retried.
    statuses: [u64; STATUS_WORDS],
    connect_error: bool,
    timeout: bool,
}

impl Default for RetryOn {
    /// `connect-error,timeout,429,502,503,504`: failures where the request most likely did not
    /// take effect or the origin asked to come back later.
    fn default() -> Self {
        let mut retry_on = RetryOn::none();
        retry_on.connect_error = true;
        retry_on.timeout = true;
        for code in [429, 502, 503, 504] {
            retry_on.insert(code);
        }
        retry_on
    }
}

impl RetryOn {
    /// Nothing is retried.
    pub fn none() -> RetryOn {
        RetryOn {
            statuses: [0; STATUS_WORDS],
            connect_error: false,
            timeout: false,
        }
    }

    /// Parses a comma-separated list (spaces around entries allowed) of:
    /// - a status code `100`..=`599`;
    /// - `5xx`: every 5xx status;
    /// - `connect-error`: the origin could not be reached (refused, DNS, TLS handshake);
    /// - `timeout`: no response in time.
    ///
    /// Words are case-insensitive. There is deliberately no `4xx`: a 4xx says the request itself
    /// is wrong, and sending it again unchanged does not help; name `408` or `429` explicitly.
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut retry_on = RetryOn::none();
        for entry in s.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(format!(
                    "`{s}`: the retry-on list must not have empty entries"
                ));
            }
            if entry.eq_ignore_ascii_case("connect-error") {
                retry_on.connect_error = true;
            } else if entry.eq_ignore_ascii_case("timeout") {
                retry_on.timeout = true;
            } else if entry.eq_ignore_ascii_case("5xx") {
                for code in 500..=599 {
                    retry_on.insert(code);
                }
            } else {
                match parse_status(entry) {
                    Some(code) => retry_on.insert(code),
                    None => {
                        return Err(format!(
                            "unknown retry-on entry `{entry}`: expected a status code \
                             {MIN_STATUS}-{MAX_STATUS}, `5xx`, `connect-error` or `timeout`"
                        ))
                    }
                }
            }
        }
        Ok(retry_on)
    }

    /// Whether a response with status `code` is retried.
    pub fn status(&self, code: u16) -> bool {
        match status_bit(code) {
            Some((word, bit)) => self.statuses[word] & bit != 0,
            None => false,
        }
    }

    /// Whether a failed connection to the origin is retried.
    pub fn connect_error(&self) -> bool {
        self.connect_error
    }

    /// Whether a timed-out attempt is retried.
    pub fn timeout(&self) -> bool {
        self.timeout
    }

    fn insert(&mut self, code: u16) {
        if let Some((word, bit)) = status_bit(code) {
            self.statuses[word] |= bit;
        }
    }
}

/// The word and bit of `code` in the status bitset, `None` outside `MIN_STATUS..=MAX_STATUS`.
fn status_bit(code: u16) -> Option<(usize, u64)> {
    if !(MIN_STATUS..=MAX_STATUS).contains(&code) {
        return None;
    }
    let offset = usize::from(code - MIN_STATUS);
    Some((offset / 64, 1 << (offset % 64)))
}

/// Exactly three ASCII digits naming a code in `MIN_STATUS..=MAX_STATUS`.
fn parse_status(s: &str) -> Option<u16> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = s.parse().ok()?;
    (MIN_STATUS..=MAX_STATUS).contains(&code).then_some(code)
}

/// The canonical `--retry-on` form: `connect-error`, `timeout`, `5xx` when every 5xx is set,
/// then the other codes in order.
impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all_5xx = (500..=599).all(|code| self.status(code));
        let mut entries: Vec<String> = Vec::new();
        if self.connect_error {
            entries.push("connect-error".into());
        }
        if self.timeout {
            entries.push("timeout".into());
        }
        if all_5xx {
            entries.push("5xx".into());
        }
        for code in MIN_STATUS..=MAX_STATUS {
            if self.status(code) && !(all_5xx && (500..=599).contains(&code)) {
                entries.push(code.to_string());
            }
        }
        f.write_str(&entries.join(","))
    }
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryOn({self})")
    }
}

/// Parses a `Retry-After` value received at `now_unix_secs`: delay-seconds (`120`) or an
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7), with optional surrounding
/// whitespace. A date in the past gives zero; the obsolete RFC 850 and asctime date forms, and
/// anything else, give `None` (no hint). Huge delay-seconds saturate; the policy caps them.
pub fn parse_retry_after(value: &[u8], now_unix_secs: u64) -> Option<Duration> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    if value.iter().all(u8::is_ascii_digit) {
        let secs = value.iter().fold(0u64, |acc, &digit| {
            acc.saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
        });
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    let now = i64::try_from(now_unix_secs).unwrap_or(i64::MAX);
    let wait = at.saturating_sub(now).max(0);
    Some(Duration::from_secs(u64::try_from(wait).unwrap_or(0)))
}

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
const IMF_FIXDATE_LEN: usize = 29;
const DAY_NAMES: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];
/// Seconds per day, minute and hour, for the date arithmetic.
const SECS_PER_DAY: i64 = 86_400;
const SECS_PER_HOUR: i64 = 3_600;
const SECS_PER_MINUTE: i64 = 60;

/// Unix seconds of an IMF-fixdate (case-sensitive names and `GMT`, as RFC 9110 specifies). The
/// day name must be a day name but need not match the date. Second 60 (a leap second) is
/// accepted and counted as the next second.
fn parse_imf_fixdate(s: &[u8]) -> Option<i64> {
    if s.len() != IMF_FIXDATE_LEN {
        return None;
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    //  0         1         2
    //  01234567890123456789012345678
    let separators = [
        (3, b','),
        (4, b' '),
        (7, b' '),
        (11, b' '),
        (16, b' '),
        (19, b':'),
        (22, b':'),
        (25, b' '),
    ];
    if separators.iter().any(|&(at, byte)| s[at] != byte) {
        return None;
    }
    if &s[26..] != b"GMT" || !DAY_NAMES.iter().any(|name| s[..3] == name[..]) {
        return None;
    }
    let day = digits(&s[5..7])?;
    let month = MONTH_NAMES.iter().position(|name| s[8..11] == name[..])?;
    let year = digits(&s[12..16])?;
    let (hour, minute, second) = (
        digits(&s[17..19])?,
        digits(&s[20..22])?,
        digits(&s[23..25])?,
    );
    let month = i64::try_from(month).ok()? + 1;
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * SECS_PER_DAY + hour * SECS_PER_HOUR + minute * SECS_PER_MINUTE + second)
}

/// The value of a run of ASCII digits (at most four here, so no overflow).
fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
/// Years here are 0..=9999, so nothing overflows.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// xorshift64* (Vigna): small, fast, good enough for jitter, not for secrets. Seeded by the
/// caller so that tests are deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (0 included: the seed is scrambled with splitmix64 and a zero
    /// state, the one xorshift cannot leave, is replaced).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x9E37_79B9_7F4A_7C15 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject); 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Products whose low half falls below `2^64 mod n` would over-represent some results.
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            // Truncation intended: the low and high 64 bits of the product.
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's example) in Unix seconds.
    const RFC_EXAMPLE: u64 = 784_111_777;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn jitter_stays_within_the_exponential_ceiling() {
        let p = policy();
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            for attempt in 1..=12u32 {
                let ceiling = (p.base * 2u32.pow(attempt - 1)).min(p.max);
                let delay = p.delay(attempt, None, &mut rng);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_covers_the_whole_range() {
        // Full jitter: over many seeds the delays of attempt 3 (ceiling 4 s) reach both ends.
        let p = policy();
        let ceiling = Duration::from_secs(4);
        let delays: Vec<Duration> = (0..2_000)
            .map(|seed| p.delay(3, None, &mut Rng::new(seed)))
            .collect();
        assert!(delays.iter().any(|&d| d < ceiling / 20));
        assert!(delays.iter().any(|&d| d > ceiling * 19 / 20));
        let mean = delays.iter().sum::<Duration>() / 2_000;
        assert!(
            mean > ceiling * 4 / 10 && mean < ceiling * 6 / 10,
            "{mean:?}"
        );
    }

    #[test]
    fn the_ceiling_doubles_then_caps() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            ..policy()
        };
        let max_over_seeds = |attempt| {
            (0..500)
                .map(|seed| p.delay(attempt, None, &mut Rng::new(seed)))
                .max()
                .unwrap_or_default()
        };
        assert!(max_over_seeds(1) <= Duration::from_millis(100));
        assert!(max_over_seeds(2) > Duration::from_millis(100));
        assert!(max_over_seeds(2) <= Duration::from_millis(200));
        assert!(max_over_seeds(4) > Duration::from_millis(400));
        assert!(max_over_seeds(5) <= Duration::from_millis(1_000));
        assert!(max_over_seeds(5) > Duration::from_millis(800));
    }

    #[test]
    fn huge_attempts_and_durations_do_not_overflow() {
        let mut rng = Rng::new(1);
        let p = policy();
        for attempt in [0, 1, 63, 64, 65, 1_000, u32::MAX] {
            assert!(p.delay(attempt, None, &mut rng) <= p.max);
        }
        let huge = RetryPolicy {
            base: Duration::MAX,
            max: Duration::MAX,
            ttl: Duration::MAX,
            ..policy()
        };
        huge.delay(u32::MAX, Some(Duration::MAX), &mut rng);
        assert!(huge.may_retry(0, u64::MAX, u64::MAX - 1));
    }

    #[test]
    fn attempt_zero_is_attempt_one() {
        let p = policy();
        assert_eq!(
            p.delay(0, None, &mut Rng::new(9)),
            p.delay(1, None, &mut Rng::new(9))
        );
    }

    #[test]
    fn a_longer_retry_after_wins_up_to_the_ttl() {
        let p = policy();
        let mut rng = Rng::new(3);
        // Longer than any jitter of attempt 1 (at most 1 s), even beyond `max`.
        let asked = Duration::from_secs(120);
        assert_eq!(p.delay(1, Some(asked), &mut rng), asked);
        // Shorter than the jitter: the jitter stands (at least the asked time).
        let short = Duration::from_millis(1);
        for seed in 0..100 {
            let delay = p.delay(7, Some(short), &mut Rng::new(seed));
            assert!(delay >= short && delay <= p.max);
        }
        // Capped at the TTL.
        let forever = Duration::from_secs(10 * 24 * 60 * 60);
        assert_eq!(p.delay(1, Some(forever), &mut rng), p.ttl);
    }

    #[test]
    fn may_retry_edges() {
        let p = RetryPolicy {
            max_attempts: 3,
            ttl: Duration::from_secs(10),
            ..policy()
        };
        let created = 5_000_000_000;
        let ttl_end = created + 10_000_000_000;
        assert!(p.may_retry(1, created, created));
        assert!(p.may_retry(2, created, ttl_end - 1));
        assert!(!p.may_retry(3, created, created), "attempt cap reached");
        assert!(!p.may_retry(2, created, ttl_end), "at the TTL end");
        assert!(!p.may_retry(0, created, u64::MAX));
        let single = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert!(!single.may_retry(1, 0, 0));
    }

    #[test]
    fn rng_is_deterministic_and_below_is_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        // A zero seed works (xorshift's fixed point is avoided).
        let mut zero = Rng::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64());
        let mut rng = Rng::new(7);
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
        let mut seen = [0u32; 6];
        for _ in 0..6_000 {
            let v = rng.below(6);
            seen[usize::try_from(v).unwrap_or(0)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1_200).contains(&n)), "{seen:?}");
        for n in [3, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(n) < n);
            }
        }
    }

    #[test]
    fn retry_on_default_matches_the_documented_list() {
        let default = RetryOn::default();
        assert_eq!(RetryOn::parse(DEFAULT_RETRY_ON), Ok(default.clone()));
        assert!(default.connect_error() && default.timeout());
        for code in [429, 502, 503, 504] {
            assert!(default.status(code));
        }
        for code in [0, 99, 200, 404, 500, 501, 505, 600, u16::MAX] {
            assert!(!default.status(code), "{code}");
        }
        assert_eq!(default.to_string(), DEFAULT_RETRY_ON);
    }

    #[test]
    fn retry_on_parses_codes_classes_and_words() {
        let r = RetryOn::parse(" 5XX , 408,Timeout").unwrap_or_else(|e| panic!("{e}"));
        assert!((500..=599).all(|code| r.status(code)));
        assert!(r.status(408) && !r.status(429) && !r.status(499));
        assert!(r.timeout() && !r.connect_error());
        assert_eq!(r.to_string(), "timeout,5xx,408");
        assert_eq!(format!("{r:?}"), "RetryOn(timeout,5xx,408)");
        let r = RetryOn::parse("100,599").unwrap_or_else(|e| panic!("{e}"));
        assert!(r.status(100) && r.status(599) && !r.status(101));
    }

    #[test]
    fn retry_on_rejects_garbage() {
        for bad in [
            "",
            ",",
            "429,",
            "4xx",
            "600",
            "099",
            "42",
            "4290",
            "+429",
            "connect_error",
            "5xx;",
            "timeouts",
        ] {
            let err = RetryOn::parse(bad).err();
            assert!(err.is_some(), "`{bad}` accepted");
        }
        let message = RetryOn::parse("429,bogus").err().unwrap_or_default();
        assert!(message.contains("`bogus`"), "{message}");
    }

    #[test]
    fn retry_after_delay_seconds() {
        assert_eq!(parse_retry_after(b"120", 0), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 0\t", 0), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"99999999999999999999999999", 0),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_dates() {
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse_retry_after(date, RFC_EXAMPLE - 30),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after(date, RFC_EXAMPLE), Some(Duration::ZERO));
        // Whitespace around a field value is not part of it.
        assert_eq!(
            parse_retry_after(b" Sun, 06 Nov 1994 08:49:37 GMT\t", RFC_EXAMPLE - 1),
            Some(Duration::from_secs(1))
        );
        // In the past: retry now.
        assert_eq!(
            parse_retry_after(date, RFC_EXAMPLE + 5),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(date, u64::MAX), Some(Duration::ZERO));
        // The epoch, a leap day, the last second of a year, a leap second.
        let at = |s: &[u8]| parse_retry_after(s, 0).map(|d| d.as_secs());
        assert_eq!(at(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(at(b"Thu, 29 Feb 2024 12:00:00 GMT"), Some(1_709_208_000));
        assert_eq!(at(b"Fri, 31 Dec 1999 23:59:59 GMT"), Some(946_684_799));
        assert_eq!(at(b"Sat, 31 Dec 2016 23:59:60 GMT"), Some(1_483_228_800));
        assert_eq!(at(b"Fri, 31 Dec 9999 23:59:59 GMT"), Some(253_402_300_799));
        // Before the epoch: in the past.
        assert_eq!(at(b"Mon, 01 Jan 1900 00:00:00 GMT"), Some(0));
    }

    #[test]
    fn retry_after_garbage_is_no_hint() {
        for bad in [
            &b""[..],
            b"   ",
            b"-5",
            b"1.5",
            b"12s",
            b"soon",
            // The obsolete forms.
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
            // Broken IMF-fixdates.
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 nov 1994 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 08:60:00 GMT",
            b"Sun, 06 Nov 1994 08:49:61 GMT",
            b"Sun, 00 Nov 1994 08:49:37 GMT",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sun, 29 Feb 1900 08:49:37 GMT",
            b"Sun, 06 Nov 19a4 08:49:37 GMT",
            b"Sun; 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08-49-37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GM\u{e9}".as_bytes(),
        ] {
            assert_eq!(
                parse_retry_after(bad, RFC_EXAMPLE),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
