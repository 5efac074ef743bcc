//! Writing the Prometheus text exposition format (version 0.0.4): family headers (`# HELP`,
//! `# TYPE`), samples with escaped label values, and histograms (`_bucket` lines with
//! cumulative counts ending at `le="+Inf"`, then `_sum` and `_count`).
//!
//! Everything appends to one `String` the scrape reuses; numbers are written with `fmt`, which
//! allocates nothing.

use std::fmt::Write;

/// The Content-Type of a scrape answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines; its samples follow.
pub fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

/// Writes `name{labels} value` with an integer value.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    series(out, name, "", labels, None);
    let _ = writeln!(out, " {value}");
}

/// Writes `name{labels} value` with a signed value (a gauge that counts up and down).
pub fn sample_i64(out: &mut String, name: &str, labels: &[(&str, &str)], value: i64) {
    series(out, name, "", labels, None);
    let _ = writeln!(out, " {value}");
}

/// Writes `name{labels} value` with a float value.
pub fn sample_f64(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    series(out, name, "", labels, None);
    out.push(' ');
    float(out, value);
    out.push('\n');
}

/// Writes one histogram series: `counts[i]` observations fell at or below `bounds[i]` (not
/// cumulative: this function sums them), `count` in all (the `+Inf` bucket), `sum` their
/// total in the histogram's unit.
pub fn histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
    count: u64,
) {
    let mut cumulative: u64 = 0;
    let mut le = String::new();
    for (bound, n) in bounds.iter().zip(counts) {
        cumulative = cumulative.saturating_add(*n);
        le.clear();
        float(&mut le, *bound);
        series(out, name, "_bucket", labels, Some(&le));
        let _ = writeln!(out, " {cumulative}");
    }
    series(out, name, "_bucket", labels, Some("+Inf"));
    let _ = writeln!(out, " {count}");
    series(out, name, "_sum", labels, None);
    out.push(' ');
    float(out, sum);
    out.push('\n');
    series(out, name, "_count", labels, None);
    let _ = writeln!(out, " {count}");
}

/// Writes `name` + `suffix` and the label set (with `le` last when given).
fn series(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], le: Option<&str>) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (key, value) in labels.iter().copied().chain(le.map(|v| ("le", v))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Writes a float as Prometheus reads it (`+Inf`, `-Inf`, `NaN`, or the shortest decimal).
fn float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut out = String::new();
        family(
            &mut out,
            "sluice_x_total",
            Kind::Counter,
            "Things \\ done\nlately.",
        );
        sample(&mut out, "sluice_x_total", &[], 3);
        sample(
            &mut out,
            "sluice_x_total",
            &[("endpoint", "/a\"b\\c\nd"), ("class", "2xx")],
            7,
        );
        family(&mut out, "sluice_g", Kind::Gauge, "A gauge.");
        sample_i64(&mut out, "sluice_g", &[("k", "v")], -2);
        sample_f64(&mut out, "sluice_g", &[("k", "w")], 0.25);
        assert_eq!(
            out,
            "# HELP sluice_x_total Things \\\\ done\\nlately.\n\
             # TYPE sluice_x_total counter\n\
             sluice_x_total 3\n\
             sluice_x_total{endpoint=\"/a\\\"b\\\\c\\nd\",class=\"2xx\"} 7\n\
             # HELP sluice_g A gauge.\n\
             # TYPE sluice_g gauge\n\
             sluice_g{k=\"v\"} -2\n\
             sluice_g{k=\"w\"} 0.25\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_inf() {
        let mut out = String::new();
        histogram(
            &mut out,
            "sluice_h_seconds",
            &[("endpoint", "/a")],
            &[0.001, 0.5, 2.0],
            &[1, 0, 2],
            3.75,
            4,
        );
        assert_eq!(
            out,
            "sluice_h_seconds_bucket{endpoint=\"/a\",le=\"0.001\"} 1\n\
             sluice_h_seconds_bucket{endpoint=\"/a\",le=\"0.5\"} 1\n\
             sluice_h_seconds_bucket{endpoint=\"/a\",le=\"2\"} 3\n\
             sluice_h_seconds_bucket{endpoint=\"/a\",le=\"+Inf\"} 4\n\
             sluice_h_seconds_sum{endpoint=\"/a\"} 3.75\n\
             sluice_h_seconds_count{endpoint=\"/a\"} 4\n"
        );
        let mut out = String::new();
        histogram(&mut out, "h", &[], &[1.0], &[0], 0.0, 0);
        assert_eq!(
            out,
            "h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"
        );
    }
}
