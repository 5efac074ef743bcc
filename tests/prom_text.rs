//! The strict Prometheus text-format checker of `tests/common/prom.rs`: it accepts what
//! `sluice::metrics::text` writes (and `prometheus-parse` reads the same samples from it), and
//! each of its rules refuses an example that breaks only that rule.

mod common;

use common::prom::{self, Kind};
use sluice::metrics::text;

/// A valid exposition with one family of each type; the failing cases below each break one
/// rule of it.
const GOOD: &str = "\
# HELP a_total A counter.
# TYPE a_total counter
a_total{k=\"v\"} 3
a_total{k=\"w\"} 4
# HELP g A gauge.
# TYPE g gauge
g 2.5
# HELP h_seconds A histogram.
# TYPE h_seconds histogram
h_seconds_bucket{le=\"0.1\"} 1
h_seconds_bucket{le=\"1\"} 2
h_seconds_bucket{le=\"+Inf\"} 3
h_seconds_sum 1.5
h_seconds_count 3
";

/// Asserts `text` is refused with a message containing `why`.
#[track_caller]
fn refused(text: &str, why: &str) {
    match prom::parse(text) {
        Ok(_) => panic!("accepted, but should fail with {why:?}:\n{text}"),
        Err(e) => assert!(
            e.contains(why),
            "failed with {e:?}, expected {why:?}:\n{text}"
        ),
    }
}

/// `GOOD` with `from` replaced by `to` (which must occur).
#[track_caller]
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    GOOD.replacen(from, to, 1)
}

#[test]
fn accepts_the_good_text_and_looks_values_up() {
    let s = prom::parse(GOOD).unwrap();
    assert_eq!(s.families.len(), 3);
    assert_eq!(s.family("a_total").unwrap().kind, Kind::Counter);
    assert_eq!(s.family("a_total").unwrap().help, "A counter.");
    assert_eq!(s.family("h_seconds").unwrap().kind, Kind::Histogram);
    assert_eq!(s.value("a_total", &[("k", "v")]), Some(3.0));
    assert_eq!(s.value("a_total", &[]), None, "exact label set");
    assert_eq!(s.sum("a_total", &[]), Some(7.0));
    assert_eq!(s.sum("a_total", &[("k", "w")]), Some(4.0));
    assert_eq!(s.sum("a_total", &[("k", "x")]), None);
    assert_eq!(s.sum("nope_total", &[]), None);
    assert_eq!(s.value("g", &[]), Some(2.5));
    assert_eq!(s.value("h_seconds_bucket", &[("le", "1")]), Some(2.0));
    assert_eq!(s.value("h_seconds_count", &[]), Some(3.0));
    prom::cross_check(GOOD, &s).unwrap();
}

#[test]
fn accepts_what_the_metrics_writer_writes() {
    let mut out = String::new();
    text::family(
        &mut out,
        "sluice_requests_total",
        text::Kind::Counter,
        "Requests \\ seen\nso far.",
    );
    text::sample(
        &mut out,
        "sluice_requests_total",
        &[("endpoint", "/a"), ("class", "2xx")],
        7,
    );
    text::sample(
        &mut out,
        "sluice_requests_total",
        &[("endpoint", "/b"), ("class", "2xx")],
        0,
    );
    text::family(&mut out, "sluice_open", text::Kind::Gauge, "Open things.");
    text::sample_i64(&mut out, "sluice_open", &[], -2);
    text::sample_f64(&mut out, "sluice_open_ratio", &[], 0.25);
    // (`sluice_open_ratio` has no family: added below to show that it is refused.)
    let without_stray = out.replace("sluice_open_ratio 0.25\n", "");
    text::family(&mut out, "x", text::Kind::Gauge, "x");
    let histogram = |out: &mut String| {
        text::family(
            out,
            "sluice_latency_seconds",
            text::Kind::Histogram,
            "Latency.",
        );
        for endpoint in ["/a", "/b"] {
            text::histogram(
                out,
                "sluice_latency_seconds",
                &[("endpoint", endpoint)],
                &[0.005, 0.5, 2.0],
                &[1, 0, 2],
                3.75,
                4,
            );
        }
    };
    let mut good = without_stray.clone();
    histogram(&mut good);
    let s = prom::parse(&good).unwrap_or_else(|e| panic!("{e}\n{good}"));
    assert_eq!(
        s.family("sluice_requests_total").unwrap().help,
        "Requests \\ seen\nso far."
    );
    assert_eq!(
        s.value(
            "sluice_requests_total",
            &[("class", "2xx"), ("endpoint", "/a")]
        ),
        Some(7.0)
    );
    assert_eq!(
        s.sum("sluice_requests_total", &[("class", "2xx")]),
        Some(7.0)
    );
    assert_eq!(s.value("sluice_open", &[]), Some(-2.0));
    assert_eq!(
        s.value(
            "sluice_latency_seconds_bucket",
            &[("endpoint", "/b"), ("le", "0.005")]
        ),
        Some(1.0)
    );
    assert_eq!(s.sum("sluice_latency_seconds_count", &[]), Some(8.0));
    assert_eq!(s.sum("sluice_latency_seconds_sum", &[]), Some(7.5));
    prom::cross_check(&good, &s).unwrap();
    refused(
        &out,
        "sample sluice_open_ratio has no # HELP and # TYPE before it",
    );

    // Escaped label values are read back unescaped (and are beyond prometheus-parse).
    let mut escaped = String::new();
    text::family(&mut escaped, "e_total", text::Kind::Counter, "E.");
    text::sample(&mut escaped, "e_total", &[("path", "/a\"b\\c\nd,e=f}")], 1);
    let s = prom::parse(&escaped).unwrap_or_else(|e| panic!("{e}\n{escaped}"));
    assert_eq!(
        s.value("e_total", &[("path", "/a\"b\\c\nd,e=f}")]),
        Some(1.0)
    );
    let err = prom::cross_check(&escaped, &s).unwrap_err();
    assert!(err.contains("beyond what prometheus-parse reads"), "{err}");
}

#[test]
fn accepts_every_value_form_and_timestamps() {
    let text = "# HELP v V.\n# TYPE v gauge\nv{a=\"1\"} +Inf\nv{a=\"2\"} -Inf\nv{a=\"3\"} NaN\n\
                v{a=\"4\"} -1.5e-3\nv{a=\"5\"} 1E6 1700000000000\nv{a=\"6\"} .5\nv{a=\"7\"} 7. -5\n";
    let s = prom::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.value("v", &[("a", "1")]), Some(f64::INFINITY));
    assert!(s.value("v", &[("a", "3")]).unwrap().is_nan());
    assert_eq!(s.value("v", &[("a", "4")]), Some(-0.0015));
    assert_eq!(s.value("v", &[("a", "5")]), Some(1e6));
    assert_eq!(s.value("v", &[("a", "6")]), Some(0.5));
    assert_eq!(prom::parse("").unwrap().samples.len(), 0);
}

#[test]
fn line_rules() {
    refused(GOOD.trim_end_matches('\n'), "does not end with a newline");
    refused(&good_with("g 2.5\n", "g 2.5\r\n"), "carriage return");
    refused(&good_with("g 2.5\n", "g 2.5\n\n"), "blank line");
    refused(
        &good_with("g 2.5\n", "g 2.5\n# just a comment\n"),
        "a comment other than",
    );
    refused(
        &good_with("# HELP g A gauge.\n", "# HELP g\n"),
        "needs a name, a space and a text",
    );
    refused(&good_with("A gauge.", "A \\t gauge."), "invalid escape");
}

#[test]
fn family_rules() {
    refused(
        &good_with("# HELP g A gauge.\n# TYPE g gauge\n", ""),
        "sample g has no # HELP and # TYPE",
    );
    refused(
        &good_with("# HELP g A gauge.\n", ""),
        "needs both # HELP and # TYPE before its samples",
    );
    refused(
        &good_with("# TYPE g gauge\n", ""),
        "needs both # HELP and # TYPE before its samples",
    );
    refused(
        &good_with("# TYPE g gauge\ng 2.5\n", "g 2.5\n# TYPE g gauge\n"),
        "needs both # HELP and # TYPE before its samples",
    );
    refused(
        &good_with("g 2.5\n", "g 2.5\n# TYPE g gauge\n"),
        "# TYPE for g after its samples",
    );
    refused(
        &good_with("# TYPE g gauge\n", "# TYPE g gauge\n# HELP g Again.\n"),
        "second # HELP for g",
    );
    refused(
        &good_with("# TYPE g gauge\n", "# TYPE g gauge\n# TYPE g gauge\n"),
        "second # TYPE for g",
    );
    refused(
        &format!("{GOOD}g{{x=\"1\"}} 1\n"),
        "sample g is outside its family's group",
    );
    refused(
        &format!("{GOOD}# HELP g More.\n"),
        "family g is split into two groups",
    );
    refused(
        &format!("{GOOD}# HELP lonely Only help.\n"),
        "family lonely needs both # HELP and # TYPE",
    );
    refused(
        &good_with("# TYPE g gauge", "# TYPE g summary"),
        "unknown type \"summary\"",
    );
}

#[test]
fn name_and_label_rules() {
    refused(
        &good_with("g 2.5", "g-x 2.5"),
        "invalid metric name \"g-x\"",
    );
    refused(
        &good_with("# HELP g A", "# HELP 9g A"),
        "invalid metric name \"9g\"",
    );
    refused(
        &good_with("{k=\"v\"}", "{1k=\"v\"}"),
        "invalid label name \"1k\"",
    );
    refused(&good_with("{k=\"v\"}", "{__name__=\"v\"}"), "reserved");
    refused(
        &good_with("{k=\"v\"}", "{k=\"v\",k=\"u\"}"),
        "label k given twice",
    );
    refused(&good_with("{k=\"v\"}", "{k=v}"), "not quoted");
    refused(&good_with("{k=\"v\"}", "{k=\"v\\t\"}"), "invalid escape");
    refused(
        &good_with("{k=\"v\"}", "{k=\"v\"w\"}"),
        "expected , or } after label k",
    );
    refused(&good_with("{k=\"v\"} 3", "{k=\"v} 3"), "not closed");
    refused(&good_with("{k=\"v\"}", "{k=\"v\",}"), "trailing comma");
    refused(&good_with("{k=\"v\"}", "{}"), "empty label set");
    refused(&good_with("{k=\"v\"}", "{k}"), "a label without =");
}

#[test]
fn value_and_series_rules() {
    refused(&good_with("g 2.5", "g  2.5"), "invalid value \"\"");
    refused(&good_with("g 2.5", "g\t2.5"), "invalid metric name");
    refused(&good_with("g 2.5", "g 2,5"), "invalid value \"2,5\"");
    refused(&good_with("g 2.5", "g inf"), "invalid value \"inf\"");
    refused(&good_with("g 2.5", "g 0x10"), "invalid value \"0x10\"");
    refused(&good_with("g 2.5", "g 1e"), "invalid value \"1e\"");
    refused(&good_with("g 2.5", "g 2.5 soon"), "invalid timestamp");
    refused(&good_with("g 2.5", "g 2.5 1 2"), "invalid timestamp");
    refused(&good_with("{k=\"w\"} 4", "{k=\"v\"} 4"), "duplicate series");
    refused(
        &good_with("g 2.5\n", "g{a=\"1\",b=\"2\"} 1\ng{b=\"2\",a=\"1\"} 2\n"),
        "duplicate series",
    );
}

#[test]
fn counter_rules() {
    let renamed = GOOD.replace("a_total", "a");
    refused(&renamed, "counter sample a does not end in _total");
    refused(
        &good_with("a_total{k=\"v\"} 3", "a_total{k=\"v\"} -3"),
        "negative",
    );
    refused(
        &good_with("a_total{k=\"v\"} 3", "a_total{k=\"v\"} NaN"),
        "negative or NaN",
    );
}

#[test]
fn histogram_rules() {
    refused(
        &good_with("{le=\"1\"} 2", "{le=\"1\"} 0"),
        "not a whole number at least the previous",
    );
    refused(
        &good_with("{le=\"1\"} 2", "{le=\"1\"} 1.5"),
        "not a whole number",
    );
    refused(
        &good_with("{le=\"1\"} 2", "{le=\"0.05\"} 2"),
        "is not above the previous bucket's",
    );
    refused(
        &good_with("{le=\"1\"} 2", "{le=\"0.1\"} 2"),
        "duplicate series",
    );
    refused(
        &good_with("{le=\"1\"} 2", "{le=\"one\"} 2"),
        "is not a number",
    );
    refused(
        &good_with("h_seconds_bucket{le=\"+Inf\"} 3\n", ""),
        "no le=\"+Inf\" bucket last",
    );
    refused(
        &good_with("h_seconds_count 3", "h_seconds_count 4"),
        "_count 4 differs from the +Inf bucket 3",
    );
    refused(&good_with("h_seconds_count 3\n", ""), "no _count");
    refused(&good_with("h_seconds_sum 1.5\n", ""), "no _sum");
    refused(
        &good_with("h_seconds_bucket{le=\"1\"}", "h_seconds_bucket{l=\"1\"}"),
        "needs an le label",
    );
    refused(
        &good_with("h_seconds_sum 1.5", "h_seconds_sum{le=\"1\"} 1.5"),
        "must not have an le label",
    );
    refused(
        &good_with("h_seconds_sum 1.5", "h_seconds 1.5"),
        "histogram sample h_seconds must be _bucket, _sum or _count",
    );
    // A second label set must be complete on its own.
    refused(
        &good_with(
            "h_seconds_sum 1.5\n",
            "h_seconds_sum 1.5\nh_seconds_bucket{x=\"1\",le=\"+Inf\"} 1\n",
        ),
        "no _count",
    );
}

#[test]
fn cross_check_catches_a_disagreement() {
    let s = prom::parse(GOOD).unwrap();
    let other = GOOD.replace("g 2.5", "g 3.5");
    let err = prom::cross_check(&other, &s).unwrap_err();
    assert!(err.contains("prometheus-parse read other samples"), "{err}");
}
