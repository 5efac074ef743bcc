//! The rate-limit settings as values: [`RateSpec`] (`N/PERIOD`, e.g. `10/1m`), the
//! [`Algorithm`] that enforces it and the [`Scope`] one budget covers, with their parsers,
//! their `Display` forms (which parse back to the same value) and the default safety margin.
//!
//! Not here: the flags themselves (`crate::config`) and the limiters (`super`).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// The `--rate-limit` default: the signing API's own limit, 10 per rolling minute.
pub const DEFAULT_RATE_LIMIT: &str = "10/1m";
/// Largest N (requests per period). The sliding window keeps one 8-byte slot per request it
/// may send in a window, so this caps one limiter at 80 MB; a larger N is a typo, not an API.
pub const MAX_LIMIT: u32 = 10_000_000;
/// Shortest PERIOD: 1 ms. Periods are whole milliseconds, and a sub-millisecond window is far
/// below the jitter of any network send.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Longest PERIOD: 7 days (`168h`). Covers daily and weekly quotas, keeps every window sum far
/// inside `u64` nanoseconds, and turns a typo such as `10/1000000h` into an error.
pub const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The default margin is PERIOD divided by this (5 %): enough for the difference between our
/// send time and the upstream's receipt time at any sane period.
const MARGIN_DIVISOR: u32 = 20;
/// ... but never more than 1 s: network jitter does not grow with the period (10/1m -> 1 s).
pub const MAX_DEFAULT_MARGIN: Duration = Duration::from_secs(1);

/// The form every parse error names.
const EXPECTED_FORM: &str =
    "expected N/PERIOD such as 10/1m, 5/2s or 1/500ms (PERIOD is [count]ms|s|m|h)";

/// Period units, longest name first where one is a prefix of another (`ms` before `m`); the
/// `Display` form uses the largest unit that divides the period exactly.
const UNITS: [(&str, Duration); 4] = [
    ("ms", Duration::from_millis(1)),
    ("s", Duration::from_secs(1)),
    ("m", Duration::from_secs(60)),
    ("h", Duration::from_secs(60 * 60)),
];

/// At most `limit` requests in any rolling `period`. Always valid: built only by
/// [`RateSpec::new`] or [`RateSpec::parse`], so `limit <= MAX_LIMIT` and `period` is a whole
/// number of milliseconds within `MIN_PERIOD..=MAX_PERIOD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateSpec {
    limit: NonZeroU32,
    period: Duration,
}

impl RateSpec {
    /// Validates a limit and a period, naming the rule that fails.
    pub fn new(limit: u32, period: Duration) -> Result<RateSpec, String> {
        let limit = match NonZeroU32::new(limit) {
            Some(l) if l.get() <= MAX_LIMIT => l,
            _ => {
                return Err(format!(
                    "the limit must be between 1 and {MAX_LIMIT} requests"
                ))
            }
        };
        if period < MIN_PERIOD || period > MAX_PERIOD {
            return Err("the period must be between 1ms and 168h".to_string());
        }
        if !period.subsec_nanos().is_multiple_of(1_000_000) {
            return Err("the period must be a whole number of milliseconds".to_string());
        }
        Ok(RateSpec { limit, period })
    }

    /// Parses `N/PERIOD`: N is a decimal count of requests, PERIOD an optional decimal count
    /// followed by one unit of `ms`, `s`, `m` or `h` (`10/1m`, `5/2s`, `20000/1s`, `1/500ms`;
    /// a bare unit means 1, so `10/m` is `10/1m`). No signs, spaces or fractions.
    pub fn parse(s: &str) -> Result<RateSpec, String> {
        let malformed = || format!("invalid rate limit {s:?}: {EXPECTED_FORM}");
        let (limit, period) = s.split_once('/').ok_or_else(malformed)?;
        if !is_decimal(limit) {
            return Err(malformed());
        }
        let (count, unit) = UNITS
            .iter()
            .find_map(|&(name, unit)| period.strip_suffix(name).map(|count| (count, unit)))
            .ok_or_else(malformed)?;
        let count = match count {
            "" => 1,
            digits if is_decimal(digits) => digits.parse::<u64>().unwrap_or(u64::MAX),
            _ => return Err(malformed()),
        };
        let rule = |rule: String| format!("invalid rate limit {s:?}: {rule}");
        // Out-of-range numbers become values the range checks in `new` reject, so the message
        // names the rule rather than the form.
        let limit = u32::try_from(limit.parse::<u64>().unwrap_or(u64::MAX)).unwrap_or(u32::MAX);
        let period = u32::try_from(count)
            .ok()
            .and_then(|count| unit.checked_mul(count))
            .unwrap_or(Duration::MAX);
        RateSpec::new(limit, period).map_err(rule)
    }

    /// N: requests allowed in any rolling period.
    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// The rolling period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The margin added to the sliding window's period when no `--rate-limit-margin-ms` is
    /// given: PERIOD/20, at most 1 s (10/1m -> 1 s, 5/2s -> 100 ms, 20000/1s -> 50 ms).
    pub fn default_margin(&self) -> Duration {
        self.period
            .checked_div(MARGIN_DIVISOR)
            .unwrap_or(Duration::ZERO)
            .min(MAX_DEFAULT_MARGIN)
    }
}

impl Default for RateSpec {
    /// [`DEFAULT_RATE_LIMIT`], 10 per minute.
    fn default() -> RateSpec {
        RateSpec {
            limit: NonZeroU32::MIN.saturating_add(9),
            period: Duration::from_secs(60),
        }
    }
}

impl fmt::Display for RateSpec {
    /// `10/1m` style: the largest unit that divides the period exactly, with its count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.period.as_millis();
        let (name, unit_millis) = UNITS
            .iter()
            .rev()
            .map(|&(name, unit)| (name, unit.as_millis()))
            .find(|&(_, unit)| unit != 0 && millis.is_multiple_of(unit))
            .unwrap_or(("ms", 1));
        let count = millis.checked_div(unit_millis).unwrap_or(millis);
        write!(f, "{}/{count}{name}", self.limit)
    }
}

impl FromStr for RateSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<RateSpec, String> {
        RateSpec::parse(s)
    }
}

/// A non-empty run of ASCII digits (what `u64::from_str` accepts minus its `+` sign).
fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// How a limiter decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Exact: in no rolling PERIOD (+ margin) are more than N sends let through.
    #[default]
    SlidingWindow,
    /// GCRA: a burst of N, then N per PERIOD; up to 2N may fall in one rolling period.
    TokenBucket,
}

impl Algorithm {
    /// `sliding-window` or `token-bucket`.
    pub fn parse(s: &str) -> Result<Algorithm, String> {
        match s {
            "sliding-window" => Ok(Algorithm::SlidingWindow),
            "token-bucket" => Ok(Algorithm::TokenBucket),
            _ => Err(format!(
                "invalid rate-limit algorithm {s:?}: expected sliding-window or token-bucket"
            )),
        }
    }

    /// The flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding-window",
            Algorithm::TokenBucket => "token-bucket",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        Algorithm::parse(s)
    }
}

/// What one budget covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One limiter per allowlisted endpoint (the original proxy's behaviour).
    #[default]
    Endpoint,
    /// One limiter shared by every endpoint (the upstream counts per API key).
    Origin,
}

impl Scope {
    /// `endpoint` or `origin`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "endpoint" => Ok(Scope::Endpoint),
            "origin" => Ok(Scope::Origin),
            _ => Err(format!(
                "invalid rate-limit scope {s:?}: expected endpoint or origin"
            )),
        }
    }

    /// The flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Endpoint => "endpoint",
            Scope::Origin => "origin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32, period: Duration) -> RateSpec {
        RateSpec::new(limit, period).unwrap()
    }

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("10/1m", 10, Duration::from_secs(60)),
            ("5/2s", 5, Duration::from_secs(2)),
            ("20000/1s", 20_000, Duration::from_secs(1)),
            ("1/500ms", 1, Duration::from_millis(500)),
            ("3/1h", 3, Duration::from_secs(3600)),
            ("10/m", 10, Duration::from_secs(60)),
            ("7/s", 7, Duration::from_secs(1)),
            ("7/ms", 7, Duration::from_millis(1)),
            ("2/h", 2, Duration::from_secs(3600)),
            ("10000000/1s", MAX_LIMIT, Duration::from_secs(1)),
            ("1/168h", 1, MAX_PERIOD),
            ("010/01m", 10, Duration::from_secs(60)),
        ];
        for (text, limit, period) in cases {
            let parsed = RateSpec::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.limit().get(), limit, "{text}");
            assert_eq!(parsed.period(), period, "{text}");
            assert_eq!(text.parse::<RateSpec>(), Ok(parsed));
        }
    }

    #[test]
    fn rejects_malformed_and_out_of_range() {
        let malformed = [
            "", "10", "10/", "/1m", "10/1", "10/1d", "10/1.5s", "1.5/1s", "-1/1m", "+1/1m",
            "10/+1m", "10/-1m", " 10/1m", "10/1m ", "10 /1m", "10/ 1m", "10/1 m", "10/1M",
            "ten/1m", "10/1m/2", "10/1mss", "10//1m", "10/ms1",
        ];
        for text in malformed {
            let err = RateSpec::parse(text).expect_err(text);
            assert!(err.contains("expected N/PERIOD"), "{text}: {err}");
        }
        let out_of_range = [
            ("0/1m", "limit"),
            ("10000001/1s", "limit"),
            ("99999999999999999999999/1s", "limit"),
            ("10/0s", "period"),
            ("10/0ms", "period"),
            ("1/169h", "period"),
            ("1/99999999999h", "period"),
            ("1/999999999999999999999999ms", "period"),
        ];
        for (text, rule) in out_of_range {
            let err = RateSpec::parse(text).expect_err(text);
            assert!(err.contains(rule), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn new_enforces_whole_milliseconds() {
        assert!(RateSpec::new(1, Duration::from_micros(1500)).is_err());
        assert!(RateSpec::new(1, Duration::from_micros(999)).is_err());
        assert!(RateSpec::new(1, Duration::from_micros(2000)).is_ok());
    }

    #[test]
    fn display_uses_the_largest_exact_unit_and_round_trips() {
        let cases = [
            ("10/60s", "10/1m"),
            ("10/1m", "10/1m"),
            ("1/1000ms", "1/1s"),
            ("1/90s", "1/90s"),
            ("1/1500ms", "1/1500ms"),
            ("4/120m", "4/2h"),
            ("4/90m", "4/90m"),
            ("5/2s", "5/2s"),
            ("3/h", "3/1h"),
        ];
        for (input, shown) in cases {
            let parsed = RateSpec::parse(input).unwrap();
            assert_eq!(parsed.to_string(), shown, "{input}");
            assert_eq!(RateSpec::parse(shown), Ok(parsed), "{input}");
        }
        // Every millisecond count up to a few minutes round-trips.
        for millis in (1..200_000).step_by(7) {
            let s = spec(3, Duration::from_millis(millis));
            assert_eq!(RateSpec::parse(&s.to_string()), Ok(s));
        }
    }

    #[test]
    fn default_is_ten_per_minute() {
        assert_eq!(
            RateSpec::default(),
            RateSpec::parse(DEFAULT_RATE_LIMIT).unwrap()
        );
    }

    #[test]
    fn default_margin_is_a_twentieth_capped_at_one_second() {
        let cases = [
            ("10/1m", Duration::from_secs(1)),
            ("5/2s", Duration::from_millis(100)),
            ("20000/1s", Duration::from_millis(50)),
            ("1/20s", Duration::from_secs(1)),
            ("1/1h", Duration::from_secs(1)),
            ("1/1ms", Duration::from_micros(50)),
        ];
        for (text, margin) in cases {
            assert_eq!(
                RateSpec::parse(text).unwrap().default_margin(),
                margin,
                "{text}"
            );
        }
    }

    #[test]
    fn algorithm_and_scope_parse_and_display() {
        for a in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            assert_eq!(Algorithm::parse(&a.to_string()), Ok(a));
        }
        for s in [Scope::Endpoint, Scope::Origin] {
            assert_eq!(Scope::parse(&s.to_string()), Ok(s));
        }
        assert_eq!(Algorithm::default(), Algorithm::SlidingWindow);
        assert_eq!(Scope::default(), Scope::Endpoint);
        let err = Algorithm::parse("leaky").unwrap_err();
        assert!(err.contains("sliding-window or token-bucket"), "{err}");
        let err = Scope::parse("Origin").unwrap_err();
        assert!(err.contains("endpoint or origin"), "{err}");
        assert_eq!(
            "token-bucket".parse::<Algorithm>(),
            Ok(Algorithm::TokenBucket)
        );
        assert_eq!("origin".parse::<Scope>(), Ok(Scope::Origin));
    }
}
